//! The migrated "container"'s program (`conformance migrate-workload`, hidden):
//! run by the runner in the container's network namespace and in a mount
//! namespace derived from its host's CSI node plugin, with the published
//! volume at `--dir`.
//!
//! 1. Verifies every file listed in `<dir>/MANIFEST` (what earlier instances
//!    wrote) against its SHA-256.
//! 2. Writes its own files (`<tag>-small-<k>` and `<tag>-big`), each
//!    fsync'd, and appends them to the manifest (temp file, fsync, rename,
//!    directory fsync): once `READY` is printed the data is on the server.
//! 3. Prints one line `READY {json}` (files verified and written, with their
//!    checksums) on stdout: the runner's readiness handshake.
//! 4. Serves a TCP echo on `--port`: each line `x` is answered `<tag> x`,
//!    so a client knows which instance answered. Runs until killed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};

use testkit::util::{Context as _, R};

/// The manifest file in the volume: `<sha256 hex>  <name>` lines (sha256sum's format).
pub const MANIFEST: &str = "MANIFEST";
/// Small files written per instance.
const SMALL_FILES: usize = 3;
/// Size of each small file.
const SMALL_BYTES: usize = 64 * 1024;

/// The SHA-256 of a file, in hex.
pub fn sha256_file(path: &Path) -> R<String> {
    let mut f = std::fs::File::open(path).ctx(format!("open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).ctx(format!("read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Deterministic bytes from a seed (xorshift64*), so two runs differ only by tag.
fn fill(seed: u64, len: usize) -> Vec<u8> {
    let mut x = testkit::rng::XorShift64Star(seed | 1);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&x.next().to_le_bytes());
    }
    v.truncate(len);
    v
}

fn seed_of(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

fn write_synced(path: &Path, data: &[u8]) -> R<()> {
    let mut f = std::fs::File::create(path).ctx(format!("create {}", path.display()))?;
    f.write_all(data).ctx(format!("write {}", path.display()))?;
    f.sync_all().ctx(format!("fsync {}", path.display()))
}

fn read_manifest(dir: &Path) -> R<Vec<(String, String)>> {
    let p = dir.join(MANIFEST);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("read {}: {e}", p.display())),
    };
    Ok(text.lines().filter_map(|l| l.split_once("  ")).map(|(sum, name)| (name.to_string(), sum.to_string())).collect())
}

/// Steps 1-3; returns the READY record.
pub fn prepare(dir: &Path, tag: &str, big_bytes: usize) -> R<serde_json::Value> {
    let mut manifest = read_manifest(dir)?;
    let mut verified = Vec::new();
    let mut bad = Vec::new();
    for (name, want) in &manifest {
        let got = sha256_file(&dir.join(name)).unwrap_or_else(|e| format!("unreadable: {e}"));
        if &got != want {
            bad.push(json!({"file": name, "want": want, "got": got}));
        }
        verified.push(json!({"file": name, "sha256": got}));
    }
    let mut written = Vec::new();
    let mut files: Vec<(String, Vec<u8>)> = (0..SMALL_FILES)
        .map(|k| (format!("{tag}-small-{k}"), fill(seed_of(&format!("{tag}/{k}")), SMALL_BYTES)))
        .collect();
    files.push((format!("{tag}-big"), fill(seed_of(tag), big_bytes)));
    for (name, data) in files {
        write_synced(&dir.join(&name), &data)?;
        let sum = hex(&Sha256::digest(&data));
        written.push(json!({"file": name, "sha256": sum, "bytes": data.len()}));
        manifest.retain(|(n, _)| n != &name);
        manifest.push((name, sum));
    }
    let text: String = manifest.iter().map(|(n, s)| format!("{s}  {n}\n")).collect();
    let tmp = dir.join(format!(".{MANIFEST}.{tag}.tmp"));
    write_synced(&tmp, text.as_bytes())?;
    std::fs::rename(&tmp, dir.join(MANIFEST)).ctx("rename the manifest")?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).ctx(format!("fsync {}", dir.display()))?;
    Ok(json!({"tag": tag, "verified": verified, "mismatches": bad, "written": written}))
}

/// The whole program; returns only on error.
pub fn run(dir: &Path, tag: &str, port: u16, big_bytes: usize) -> R<()> {
    let ready = prepare(dir, tag, big_bytes)?;
    let listener = TcpListener::bind(("0.0.0.0", port)).ctx(format!("bind TCP port {port}"))?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "READY {ready}").ctx("stdout")?;
        out.flush().ctx("stdout")?;
    }
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        let tag = tag.to_string();
        std::thread::spawn(move || {
            let Ok(r) = s.try_clone() else { return };
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                if writeln!(s, "{tag} {line}").is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_instance_verifies_the_first_ones_files_and_catches_a_change() {
        let d = tempfile::tempdir().unwrap();
        let a = prepare(d.path(), "a", 100_000).unwrap();
        assert_eq!(a["written"].as_array().unwrap().len(), SMALL_FILES + 1);
        assert!(a["verified"].as_array().unwrap().is_empty());
        let b = prepare(d.path(), "b", 1000).unwrap();
        assert_eq!(b["verified"].as_array().unwrap().len(), SMALL_FILES + 1);
        assert!(b["mismatches"].as_array().unwrap().is_empty(), "{b}");
        for (w, v) in a["written"].as_array().unwrap().iter().zip(b["verified"].as_array().unwrap()) {
            assert_eq!(w["sha256"], v["sha256"]);
        }
        // One flipped byte is a mismatch for the next instance.
        let p = d.path().join("a-big");
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[500] ^= 1;
        std::fs::write(&p, bytes).unwrap();
        let c = prepare(d.path(), "c", 1000).unwrap();
        let bad = c["mismatches"].as_array().unwrap();
        assert_eq!(bad.len(), 1, "{c}");
        assert_eq!(bad[0]["file"], "a-big");
    }
}
