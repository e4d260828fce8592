//! Policy files + registry → compiled desired state → the kernel, the one path every writer
//! (the plugin's verbs, `watch`, `label`) takes, always under the state directory's lock.

use std::fs::File;
use std::path::{Path, PathBuf};

use policy::compile::Compiled;
use policy::engine::{ApplyReport, Engine};
use policy::PolicySet;

use crate::registry::{EndpointRecord, StateDir};
use crate::{Error, Result};

/// Reads every policy file of `dir`. A directory that does not exist is an error, never "no
/// policy" (a typo in `policyDir` must not open everything).
pub fn load_policies(dir: &Path) -> Result<PolicySet> {
    if !dir.is_dir() {
        return Err(Error::NoPolicyDir(dir.to_path_buf()));
    }
    Ok(policy::load_dir(dir)?)
}

/// The last policy set that loaded cleanly: `<stateDir>/policy-good/`, a copy of the policy
/// files (byte for byte) and `.source`, the policy directory they came from.
pub const GOOD_DIR: &str = "policy-good";
const GOOD_SOURCE: &str = ".source";

/// What a writer applies: the files of the policy directory, or, when they do not load, the last
/// set that did (`error` says why the directory was not used).
#[derive(Debug)]
pub struct Loaded {
    pub set: PolicySet,
    pub error: Option<Error>,
}

/// The policy files of `dir` as (file name, bytes), in name order: what [`policy::load_dir`]
/// reads ([`policy::dir_files`]).
fn read_files(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    if !dir.is_dir() {
        return Err(Error::NoPolicyDir(dir.to_path_buf()));
    }
    let files = policy::dir_files(dir).map_err(|e| match e {
        policy::Error::Io { source, .. } => Error::io("read policy directory", dir, source),
        e => e.into(),
    })?;
    let mut out = Vec::with_capacity(files.len());
    for path in files {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        out.push((name, std::fs::read(&path).map_err(|e| Error::io("read policy file", &path, e))?));
    }
    Ok(out)
}

/// Parses `files` (as [`read_files`] gave them) from memory, naming them as files of `dir`.
fn parse(dir: &Path, files: &[(String, Vec<u8>)]) -> Result<PolicySet> {
    let mut texts = Vec::with_capacity(files.len());
    for (name, bytes) in files {
        let path = dir.join(name);
        let text = String::from_utf8(bytes.clone()).map_err(|_| policy::Error::Io {
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "stream did not contain valid UTF-8"),
        })?;
        texts.push((path, text));
    }
    Ok(policy::parse_files(&texts)?)
}

/// The files of the last good copy, if it came from `dir`.
fn good_files(state: &StateDir, dir: &Path) -> Option<Vec<(String, Vec<u8>)>> {
    let good = state.root().join(GOOD_DIR);
    let source = std::fs::read(good.join(GOOD_SOURCE)).ok()?;
    (source == dir.as_os_str().as_encoded_bytes()).then(|| read_files(&good).ok()).flatten()
}

/// Loads the files of `dir`; when they load, and `save` is set, a copy of exactly the bytes that
/// loaded becomes the last good set (parsed from the bytes read, written to a temporary
/// directory and exchanged with the old copy by one `renameat2(RENAME_EXCHANGE)`, so a reader
/// sees the old set or the new one whole). The files are read once and parsed from memory. When they do not load (a file that does not parse or validate, a
/// directory that is gone), the last good set of the same directory is used instead and the
/// error returned beside it; without one, the error. The caller holds the lock when `save`.
pub fn load_or_last_good(state: &StateDir, dir: &Path, save: bool) -> Result<Loaded> {
    let fresh = read_files(dir).and_then(|files| {
        if !save || good_files(state, dir).as_ref() == Some(&files) {
            // Unchanged since the last good load (or a reader): parse the bytes just read.
            return parse(dir, &files);
        }
        save_good(state, dir, &files)
    });
    match fresh {
        Ok(set) => Ok(Loaded { set, error: None }),
        Err(e @ (Error::Policy(_) | Error::NoPolicyDir(_))) => {
            let good = state.root().join(GOOD_DIR);
            if good_files(state, dir).is_none() {
                return Err(e);
            }
            let set = match policy::load_dir(&good) {
                Ok(set) => set,
                Err(ge) => {
                    tracing::error!("the last good policy set does not load either: {ge}");
                    return Err(e);
                }
            };
            if save {
                tracing::error!("{e}; applying the last policy set that loaded ({})", good.display());
            }
            Ok(Loaded { set, error: Some(e) })
        }
        Err(e) => Err(e),
    }
}

/// Parses `files` and, when they load, writes them to a temporary directory in the state
/// directory and swaps that in as the last good set. A parse error names the file of `dir`.
fn save_good(state: &StateDir, dir: &Path, files: &[(String, Vec<u8>)]) -> Result<PolicySet> {
    let set = parse(dir, files)?;
    let root = state.root();
    let tmp = root.join(format!(".{GOOD_DIR}.new.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let io = |what, p: &Path| {
        let p = p.to_path_buf();
        move |e| Error::io(what, p, e)
    };
    std::fs::create_dir_all(&tmp).map_err(io("create", &tmp))?;
    let cleanup = |r: Error| {
        let _ = std::fs::remove_dir_all(&tmp);
        r
    };
    for (name, bytes) in files {
        crate::registry::write_atomic(&tmp.join(name), bytes).map_err(cleanup)?;
    }
    crate::registry::write_atomic(&tmp.join(GOOD_SOURCE), dir.as_os_str().as_encoded_bytes()).map_err(cleanup)?;
    let good = root.join(GOOD_DIR);
    let swap = || -> std::io::Result<()> {
        if good.is_dir() {
            let d = File::open(root)?;
            nix::fcntl::renameat2(&d, &tmp, &d, &good, nix::fcntl::RenameFlags::RENAME_EXCHANGE)
                .map_err(std::io::Error::from)?;
            std::fs::remove_dir_all(&tmp)?;
        } else {
            std::fs::rename(&tmp, &good)?;
        }
        File::open(root)?.sync_all()
    };
    swap().map_err(|e| cleanup(Error::io("keep the last good policy set", good.clone(), e)))?;
    Ok(set)
}

/// Where the last good copy lives.
pub fn good_dir(state: &StateDir) -> PathBuf {
    state.root().join(GOOD_DIR)
}

/// The policy model's view of a registered endpoint.
pub fn endpoint(r: &EndpointRecord) -> policy::Endpoint {
    policy::Endpoint {
        name: r.name.clone(),
        namespace: r.namespace.clone(),
        labels: r.labels.clone(),
        addrs: r.addrs.clone(),
        host_ifname: r.host_ifname.clone(),
        bridged: r.bridged,
        remote: None,
    }
}

/// Compiles the registry's endpoints and `remotes` (other hosts' endpoints,
/// [`crate::cluster::remote_endpoints`]: their addresses enter selector sets only, less those a
/// local endpoint has: the local one wins, [`policy::model::local_first`]).
pub fn compile(set: &PolicySet, records: &[EndpointRecord], remotes: &[policy::Endpoint]) -> Compiled {
    let mut eps: Vec<policy::Endpoint> = records.iter().map(endpoint).collect();
    eps.extend_from_slice(remotes);
    let eps = policy::model::local_first(&eps).unwrap_or(eps);
    policy::compile::compile(set, &eps)
}

/// The engine of a state directory (its record of what it applied is `<stateDir>/applied.json`).
/// A long-lived one (`watch`) keeps that record in memory between applies.
pub fn engine(state: &StateDir) -> Engine {
    Engine::new(state.root())
}

/// Applies `c` in one atomic transaction (the engine keeps the kernel unchanged on error).
pub fn apply(engine: &Engine, c: &Compiled) -> Result<ApplyReport> {
    engine.apply(c).map_err(|e| match e {
        // Kept whole: the plugin answers it as a configuration error (two stateDirs).
        e @ policy::Error::Owner { .. } => Error::Policy(e),
        e => Error::Engine(format!("apply the policy: {e}")),
    })
}

/// Applies what changed in `c` since its last [`policy::compile::Compiler::applied`] (one atomic transaction,
/// only the objects concerned; the engine's state file is left to `Engine::flush`).
pub fn apply_changes(engine: &Engine, c: &policy::compile::Compiler) -> Result<ApplyReport> {
    engine.apply_changes(c.compiled(), &c.changes()).map_err(|e| match e {
        e @ policy::Error::Owner { .. } => Error::Policy(e),
        e => Error::Engine(format!("apply the policy: {e}")),
    })
}

/// Whether endpoint `name`'s chains are in force as `c` says.
pub fn check(engine: &Engine, c: &Compiled, name: &str) -> Result<()> {
    engine.check(c, name).map_err(|e| Error::Check(format!("endpoint {name}: {e}")))
}

/// A registry change: entries to write and entries to drop (by container ID and ifname).
#[derive(Debug, Default, Clone)]
pub struct Change {
    pub put: Vec<EndpointRecord>,
    pub remove: Vec<(String, String)>,
}

/// Makes `change` to the registry, compiles the whole registry with `set` and applies it. Any
/// failure puts every touched entry back as it was (the engine leaves the kernel as it was),
/// so the registry always describes what is in force. The caller holds the lock.
pub fn commit(state: &StateDir, engine: &Engine, set: &PolicySet, change: &Change) -> Result<(Compiled, ApplyReport)> {
    let mut before: Vec<(String, String, Option<EndpointRecord>)> = Vec::new();
    let outcome = (|| -> Result<(Compiled, ApplyReport)> {
        for r in &change.put {
            before.push((r.container_id.clone(), r.ifname.clone(), state.get(&r.container_id, &r.ifname)?));
            state.put(r)?;
        }
        for (cid, ifname) in &change.remove {
            let old = state.remove(cid, ifname)?;
            before.push((cid.clone(), ifname.clone(), old));
        }
        let records = state.list()?;
        let c = compile(set, &records, &crate::cluster::remote_endpoints(state)?);
        let report = apply(engine, &c)?;
        Ok((c, report))
    })();
    if outcome.is_err() {
        // Newest first, so an entry touched twice ends as it was at the start.
        for (cid, ifname, old) in before.iter().rev() {
            if let Err(e) = state.restore(cid, ifname, old.as_ref()) {
                tracing::error!("roll back registry entry {cid}/{ifname}: {e}");
            }
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: g\nspec:\n  selector: all()\n";
    const BAD: &str = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: h\nspec:\n  selector: all()\n  ingress:\n  - action: Frob\n";

    #[test]
    fn the_last_good_set_is_kept_used_for_its_own_directory_only_and_never_written_by_readers() {
        let d = tempfile::tempdir().unwrap();
        let state = StateDir::new(d.path().join("state"));
        std::fs::create_dir_all(state.root()).unwrap();
        let a = d.path().join("a.d");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::write(a.join("10-g.yaml"), GOOD).unwrap();
        std::fs::write(a.join("notes.txt"), "not a policy").unwrap();

        // No good set yet and a bad directory: the error.
        std::fs::write(a.join("20-bad.yaml"), BAD).unwrap();
        let e = load_or_last_good(&state, &a, true).unwrap_err().to_string();
        assert!(e.contains(&format!("{}:8", a.join("20-bad.yaml").display())), "names the operator's file: {e}");
        assert!(!good_dir(&state).exists());

        std::fs::remove_file(a.join("20-bad.yaml")).unwrap();
        let l = load_or_last_good(&state, &a, true).unwrap();
        assert!(l.error.is_none());
        assert_eq!(l.set.policies.len(), 1);
        assert_eq!(std::fs::read_to_string(good_dir(&state).join("10-g.yaml")).unwrap(), GOOD);
        assert!(!good_dir(&state).join("notes.txt").exists(), "only what load_dir reads");

        // A typo: the last good set, with the error beside it.
        std::fs::write(a.join("20-bad.yaml"), BAD).unwrap();
        let l = load_or_last_good(&state, &a, true).unwrap();
        assert_eq!(l.set.policies.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["g"]);
        assert!(l.error.unwrap().to_string().contains("20-bad.yaml:8"));
        // Never another directory's good set.
        let b = d.path().join("b.d");
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join("20-bad.yaml"), BAD).unwrap();
        assert!(load_or_last_good(&state, &b, true).is_err());

        // A reader (save false) loads a new good directory without replacing the copy; a writer
        // replaces it (by exchange: no temporary directory is left).
        std::fs::remove_file(a.join("20-bad.yaml")).unwrap();
        std::fs::write(a.join("30-more.yaml"), GOOD.replace("name: g", "name: m")).unwrap();
        assert_eq!(load_or_last_good(&state, &a, false).unwrap().set.policies.len(), 2);
        assert!(!good_dir(&state).join("30-more.yaml").exists());
        assert_eq!(load_or_last_good(&state, &a, true).unwrap().set.policies.len(), 2);
        assert!(good_dir(&state).join("30-more.yaml").exists());
        let left: Vec<String> = std::fs::read_dir(state.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, [GOOD_DIR], "{left:?}");
    }
}
