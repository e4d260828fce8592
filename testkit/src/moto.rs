//! moto (PyPI `moto[server]`), the AWS API emulator csi-cloud's tests run
//! against: one `moto_server` per fixture on a free loopback port, its state
//! in memory, killed on drop. scripts/testbed.sh installs it in a venv under
//! `/opt/moto`; `MOTO_SERVER` names another binary. A missing moto is a
//! failure, never a skip.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::util::R;

/// Where scripts/testbed.sh installs moto_server.
pub const DEFAULT_BIN: &str = "/opt/moto/bin/moto_server";

/// How long moto may take to answer after start (it imports every service
/// model first: about 2 s on an idle machine).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The region the fixture's clients use.
pub const REGION: &str = "us-east-1";

/// moto_server with three corrections of its EBS direct model (moto 5.2.6),
/// each to what EBS documents and only where a snapshot transfer depends on
/// it; every other request and answer is moto's own (docs/csi-cloud.md,
/// "moto"):
///
/// 1. `BlockSize` is 524288 (moto says 512) in StartSnapshot,
///    ListSnapshotBlocks and ListChangedBlocks;
/// 2. the EC2 snapshot behind an EBS direct snapshot is `pending` until
///    CompleteSnapshot, then `completed` (moto says `completed` from the
///    start), so DescribeSnapshots tells a finished snapshot from one still
///    being written;
/// 3. ListChangedBlocks follows `ParentSnapshotId`: moto ignores the parent
///    and compares only the first snapshot's own blocks with the second's
///    (blocks only in the second are missing, inherited ones come out as
///    changed). Here StartSnapshot records the parent, and ListChangedBlocks
///    lists every index where the two snapshots' blocks, inherited ones
///    included, are not the same stored block, with each side's token (none
///    where that side has no block). ListSnapshotBlocks and GetSnapshotBlock
///    stay moto's (a child lists only its own blocks).
pub const EBS_LAUNCHER: &str = r#"import sys
import threading

import moto.ebs.models as ebs
import moto.ebs.responses as ebs_responses

_init = ebs.EBSSnapshot.__init__


def _init_as_ebs(self, account_id, snapshot):
    _init(self, account_id, snapshot)
    # 1. EBS's block size (moto says 512).
    self.block_size = 524288
    # 2. The EC2 snapshot is pending until CompleteSnapshot.
    self.ec2_snapshot = snapshot
    snapshot.status = "pending"
    self.parent_id = getattr(_request, "parent_id", None)


ebs.EBSSnapshot.__init__ = _init_as_ebs

_complete = ebs.EBSBackend.complete_snapshot


def _complete_as_ebs(self, snapshot_id):
    status = _complete(self, snapshot_id)
    self.snapshots[snapshot_id].ec2_snapshot.status = status
    return status


ebs.EBSBackend.complete_snapshot = _complete_as_ebs

# 3. StartSnapshot's ParentSnapshotId, handed to the snapshot made in this request's thread.
_request = threading.local()
_respond_start = ebs_responses.EBSResponse.start_snapshot


def _respond_start_with_parent(self):
    _request.parent_id = self._get_param("ParentSnapshotId")
    try:
        return _respond_start(self)
    finally:
        _request.parent_id = None


ebs_responses.EBSResponse.start_snapshot = _respond_start_with_parent


def _blocks_with_lineage(backend, snapshot_id):
    chain = []
    while snapshot_id is not None:
        snap = backend.snapshots[snapshot_id]
        chain.append(snap)
        snapshot_id = getattr(snap, "parent_id", None)
    blocks = {}
    for snap in reversed(chain):
        blocks.update(snap.blocks)
    return blocks


def _list_changed_blocks(self, first_snapshot_id, second_snapshot_id):
    first = _blocks_with_lineage(self, first_snapshot_id)
    second = _blocks_with_lineage(self, second_snapshot_id)
    changed = {}
    for idx in sorted(set(first) | set(second)):
        a, b = first.get(idx), second.get(idx)
        if a is not b:
            changed[idx] = (a.block_token if a else None, b.block_token if b else None)
    return changed, self.snapshots[second_snapshot_id]


ebs.EBSBackend.list_changed_blocks = _list_changed_blocks

from moto.server import main

sys.exit(main())
"#;

/// A running moto_server.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
}

/// The moto_server binary: `$MOTO_SERVER`, else [`DEFAULT_BIN`].
pub fn bin() -> String {
    std::env::var("MOTO_SERVER").unwrap_or_else(|_| DEFAULT_BIN.to_string())
}

impl Moto {
    /// Starts moto_server on a free loopback port and waits until it answers HTTP.
    pub fn start() -> R<Moto> {
        Moto::start_bin(&bin())
    }

    /// Starts moto through [`EBS_LAUNCHER`] (written into `dir`, run by the
    /// python of moto's venv): moto with EBS direct's answers corrected
    /// where they decide what a snapshot transfer does (see there).
    pub fn start_ebs_corrected(dir: &std::path::Path) -> R<Moto> {
        let moto_bin = bin();
        let python = std::path::Path::new(&moto_bin).with_file_name("python3");
        if !python.exists() {
            return Err(format!("{} missing: scripts/testbed.sh installs moto", python.display()));
        }
        let launcher = dir.join("moto_server_ebs_corrected");
        std::fs::write(&launcher, format!("#!{}\n{EBS_LAUNCHER}", python.display()))
            .map_err(|e| format!("write {}: {e}", launcher.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&launcher, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {}: {e}", launcher.display()))?;
        Moto::start_bin(&launcher.display().to_string())
    }

    /// Starts `bin` (a moto_server) on a free loopback port and waits until it answers HTTP.
    pub fn start_bin(bin: &str) -> R<Moto> {
        let bin = bin.to_string();
        let mut last = String::new();
        // The port is free when probed; another process may take it before
        // moto binds: then try another.
        for _ in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("find a free port: {e}"))?
                .port();
            let log = std::env::temp_dir().join(format!("moto-{}-{port}.log", std::process::id()));
            let out = std::fs::File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
            let err = out.try_clone().map_err(|e| format!("{}: {e}", log.display()))?;
            let child = Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .map_err(|e| format!("run {bin} (scripts/testbed.sh installs moto): {e}"))?;
            let mut m = Moto { child, addr: SocketAddr::from(([127, 0, 0, 1], port)), log };
            match m.wait_ready() {
                Ok(()) => return Ok(m),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn wait_ready(&mut self) -> R<()> {
        let end = std::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("moto_server exited ({status}): {}", self.log_tail()));
            }
            if self.get("/").is_ok_and(|r| r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.0 200")) {
                return Ok(());
            }
            if std::time::Instant::now() > end {
                return Err(format!("moto_server on {} not answering after {START_TIMEOUT:?}", self.addr));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn get(&self, path: &str) -> std::io::Result<String> {
        self.request("GET", path)
    }

    fn request(&self, method: &str, path: &str) -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "{method} {path} HTTP/1.0\r\nHost: {}\r\nContent-Length: 0\r\n\r\n", self.addr)?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// Forgets every resource (moto's `/moto-api/reset`).
    pub fn reset(&self) -> R<()> {
        let r = self.request("POST", "/moto-api/reset").map_err(|e| format!("reset moto: {e}"))?;
        if r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.0 200") {
            Ok(())
        } else {
            Err(format!("reset moto: {}", r.lines().next().unwrap_or("")))
        }
    }

    /// `http://127.0.0.1:PORT`, for `--aws-endpoint-url` / `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The environment an AWS client needs to talk to this moto: endpoint,
    /// region and dummy credentials (moto takes any).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ACCESS_KEY_ID", "testing".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        ]
    }

    fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<char> = s.trim().chars().rev().take(2000).collect();
        tail.into_iter().rev().collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
