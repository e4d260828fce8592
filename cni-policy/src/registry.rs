//! The endpoint registry: `<stateDir>/endpoints/<containerID>@<ifname>.json`, one file per
//! container interface, each written atomically (temporary file, fsync, rename), and the lock
//! `<stateDir>/lock` (flock) every writer holds around registry change + compile + apply.
//! `<stateDir>/config.json` records the policy directory the last writer used, so `label` and
//! `status` compile the same files.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One registered container interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// `<containerID>/<ifname>`: CNI's identity of an attachment, and the endpoint's name in
    /// the compiled policy.
    pub name: String,
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    /// The CNI network (`name` of the config) that added it: GC only collects its own.
    pub network: String,
    /// `K8S_POD_NAMESPACE`, `default` without it.
    pub namespace: String,
    /// `K8S_POD_NAME` when the runtime sent it (also the label `cni-policy/pod-name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub addrs: Vec<IpAddr>,
    /// The host side of the container's link (a veth), for anti-spoofing.
    #[serde(rename = "hostIfname", default, skip_serializing_if = "Option::is_none")]
    pub host_ifname: Option<String>,
    /// The host interface is a bridge port.
    #[serde(default)]
    pub bridged: bool,
    /// Its traffic crosses this host's netfilter (it has a host-side interface). `false` only
    /// for an attachment registered with `allowUnenforceable` (macvlan, ipvlan, host-device,
    /// SR-IOV): selectors see it, but nothing here can filter its packets.
    #[serde(default = "enforced_default")]
    pub enforced: bool,
}

fn enforced_default() -> bool {
    true
}

impl EndpointRecord {
    pub fn key(container_id: &str, ifname: &str) -> String {
        format!("{container_id}/{ifname}")
    }
}

/// What `<stateDir>/config.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateConfig {
    #[serde(rename = "policyDir")]
    pub policy_dir: PathBuf,
}

/// The held lock; released on drop.
pub struct Lock {
    _f: Flock<File>,
}

/// A state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn exists(&self) -> bool {
        self.root.is_dir()
    }

    fn endpoints_dir(&self) -> PathBuf {
        self.root.join("endpoints")
    }

    /// The file of an attachment. A container ID has only `[A-Za-z0-9_.-]` (the skel checks),
    /// so the first `@` separates it from the interface name unambiguously.
    pub fn entry_path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.endpoints_dir().join(format!("{container_id}@{ifname}.json"))
    }

    /// Takes the exclusive lock, creating the state directory if needed (blocks while another
    /// writer holds it).
    pub fn lock(&self) -> Result<Lock> {
        std::fs::create_dir_all(self.endpoints_dir())
            .map_err(|e| Error::io("create state directory", self.endpoints_dir(), e))?;
        let path = self.root.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open lock", &path, e))?;
        let f = Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, errno)| Error::io("lock", &path, std::io::Error::from(errno)))?;
        Ok(Lock { _f: f })
    }

    /// Every registered endpoint, by name. A missing state directory is an empty registry.
    pub fn list(&self) -> Result<Vec<EndpointRecord>> {
        let dir = self.endpoints_dir();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(Error::io("read registry", dir, e)),
        };
        let mut out = Vec::new();
        for entry in rd {
            let path = entry.map_err(|e| Error::io("read registry", &dir, e))?.path();
            if path.extension().is_some_and(|x| x == "json") {
                out.push(read_entry(&path)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn get(&self, container_id: &str, ifname: &str) -> Result<Option<EndpointRecord>> {
        let path = self.entry_path(container_id, ifname);
        match std::fs::metadata(&path) {
            Ok(_) => read_entry(&path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read registry entry", path, e)),
        }
    }

    /// Writes (or replaces) an endpoint's entry atomically.
    pub fn put(&self, rec: &EndpointRecord) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(rec)
            .map_err(|source| Error::Entry { path: self.entry_path(&rec.container_id, &rec.ifname), source })?;
        write_atomic(&self.entry_path(&rec.container_id, &rec.ifname), &bytes)
    }

    /// Removes an endpoint's entry; what it held, if it existed.
    pub fn remove(&self, container_id: &str, ifname: &str) -> Result<Option<EndpointRecord>> {
        let old = self.get(container_id, ifname)?;
        if old.is_some() {
            let path = self.entry_path(container_id, ifname);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove registry entry", path, e)),
            }
        }
        Ok(old)
    }

    /// Puts back what an entry held before a change (`None`: it did not exist).
    pub fn restore(&self, container_id: &str, ifname: &str, old: Option<&EndpointRecord>) -> Result<()> {
        match old {
            Some(rec) => self.put(rec),
            None => self.remove(container_id, ifname).map(|_| ()),
        }
    }

    pub fn config(&self) -> Result<Option<StateConfig>> {
        let path = self.root.join("config.json");
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|source| Error::Entry { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", path, e)),
        }
    }

    /// Records the policy directory in use (only written when it changes).
    pub fn set_config(&self, c: &StateConfig) -> Result<()> {
        if self.config().ok().flatten().as_ref() == Some(c) {
            return Ok(());
        }
        let bytes = serde_json::to_vec_pretty(c)
            .map_err(|source| Error::Entry { path: self.root.join("config.json"), source })?;
        write_atomic(&self.root.join("config.json"), &bytes)
    }
}

fn read_entry(path: &Path) -> Result<EndpointRecord> {
    let b = std::fs::read(path).map_err(|e| Error::io("read registry entry", path, e))?;
    serde_json::from_slice(&b).map_err(|source| Error::Entry { path: path.to_path_buf(), source })
}

/// Temporary file beside `path`, fsync, rename over `path`: a reader sees the old or the new
/// content, never a torn one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io("write", path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(cid: &str, ifname: &str) -> EndpointRecord {
        EndpointRecord {
            name: EndpointRecord::key(cid, ifname),
            container_id: cid.into(),
            ifname: ifname.into(),
            network: "net1".into(),
            namespace: "default".into(),
            pod: Some("web-0".into()),
            labels: [("app".to_string(), "web".to_string())].into(),
            addrs: vec!["10.1.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
            host_ifname: Some("veth1234".into()),
            bridged: true,
            enforced: true,
        }
    }

    #[test]
    fn entries_round_trip_and_list_sorted() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path().join("state"));
        assert_eq!(s.list().unwrap(), vec![], "a missing state dir is an empty registry");
        let _l = s.lock().unwrap();
        s.put(&rec("b", "eth0")).unwrap();
        s.put(&rec("a", "eth1")).unwrap();
        s.put(&rec("a", "eth0")).unwrap();
        let names: Vec<String> = s.list().unwrap().into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["a/eth0", "a/eth1", "b/eth0"]);
        assert_eq!(s.get("a", "eth1").unwrap(), Some(rec("a", "eth1")));
        assert_eq!(s.remove("a", "eth1").unwrap(), Some(rec("a", "eth1")));
        assert_eq!(s.remove("a", "eth1").unwrap(), None);
        assert_eq!(s.get("a", "eth1").unwrap(), None);
        // No temporary files are left behind.
        let left: Vec<_> = std::fs::read_dir(d.path().join("state/endpoints")).unwrap().collect();
        assert_eq!(left.len(), 2);
    }

    #[test]
    fn restore_puts_back_or_removes() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path());
        let _l = s.lock().unwrap();
        let old = rec("c", "eth0");
        s.put(&old).unwrap();
        let mut new = old.clone();
        new.labels.insert("x".into(), "y".into());
        s.put(&new).unwrap();
        s.restore("c", "eth0", Some(&old)).unwrap();
        assert_eq!(s.get("c", "eth0").unwrap(), Some(old));
        s.restore("c", "eth0", None).unwrap();
        assert_eq!(s.get("c", "eth0").unwrap(), None);
    }

    #[test]
    fn a_corrupt_entry_is_an_error_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path());
        let _l = s.lock().unwrap();
        std::fs::write(s.entry_path("z", "eth0"), "{").unwrap();
        let e = s.list().unwrap_err().to_string();
        assert!(e.contains("z@eth0.json"), "{e}");
    }

    #[test]
    fn config_records_the_policy_dir() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path());
        assert_eq!(s.config().unwrap(), None);
        let c = StateConfig { policy_dir: "/etc/cni/policy.d".into() };
        s.set_config(&c).unwrap();
        assert_eq!(s.config().unwrap(), Some(c));
    }

    #[test]
    fn the_lock_excludes_a_second_holder() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path());
        let held = s.lock().unwrap();
        let f = OpenOptions::new().write(true).open(d.path().join("lock")).unwrap();
        // A second open file description cannot take it while the first holds it.
        assert!(Flock::lock(f, FlockArg::LockExclusiveNonblock).is_err());
        drop(held);
        let f = OpenOptions::new().write(true).open(d.path().join("lock")).unwrap();
        assert!(Flock::lock(f, FlockArg::LockExclusiveNonblock).is_ok());
    }
}
