//! The engine: the only part of the crate that touches the kernel, through
//! `linux_net::nft`. It applies a compiled desired state (the tables the
//! policy owns, as [`TableState`]s) in one atomic nf_tables transaction,
//! as a delta against the state it applied last when the kernel still has
//! that state, else as a full replace; it checks one endpoint's dispatch
//! and chains against the kernel (CHECK), and removes the tables.
//!
//! The applied state is persisted as JSON in `<state_dir>/applied.json`,
//! written (temp file, fsync, rename, fsync of the directory) only after
//! the kernel accepted the transaction, so the file never describes a
//! state the kernel refused. Callers serialise writers (the registry lock).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use linux_net::nft::state::{map_entry, rule_counts_of, table_exists};
use linux_net::nft::{Action, NftError, SetElem, TableRef, TableState, Transaction, Verdict};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What the engine needs of a compiled policy (`policy::compile::Compiled`
/// implements it; tests may hand-build one).
pub trait Desired {
    /// The full desired content of every table the engine owns.
    fn tables(&self) -> &[TableState];
    /// The verdict-map entries that dispatch endpoint `ep` (its name,
    /// `<containerID>/<ifname>`): its address keys in the direction maps
    /// and its interface keys in the anti-spoof maps. `None`: unknown
    /// endpoint.
    fn dispatch_keys(&self, ep: &str) -> Option<Vec<DispatchKey>>;
}

/// One verdict-map entry an endpoint depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchKey {
    pub table: TableRef,
    pub map: String,
    pub key: SetElem,
}

/// What [`Engine::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    /// The tables were replaced from nothing (no usable previous state).
    pub full: bool,
    /// nf_tables messages in the transaction (0: nothing to change).
    pub ops: usize,
    /// Everything: reading the previous state, building and committing
    /// the transaction, persisting the new state.
    pub elapsed: Duration,
    /// The kernel's part: sending the batch and collecting its acks.
    pub commit: Duration,
}

/// The persisted state: what the last successful apply put in the kernel.
#[derive(Debug, Deserialize)]
struct Applied {
    tables: Vec<TableState>,
}

/// [`Applied`] as written, borrowing the tables.
#[derive(Serialize)]
struct AppliedRef<'a> {
    tables: &'a [TableState],
}

/// Identity of one version of the state file: every store renames a new
/// file into place, so (device, inode, size, mtime) changes with it.
type Stamp = (u64, u64, u64, Option<std::time::SystemTime>);

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.len(), m.modified().ok()))
}

/// Applies compiled policy to the kernel of the calling thread's network
/// namespace.
///
/// A long-lived engine (the watch daemon) keeps the state it last wrote in
/// memory and reads the file again only when another writer (the plugin,
/// the label command) replaced it since: parsing the JSON of a 1k-endpoint
/// state costs milliseconds, more than the kernel's part of a delta.
#[derive(Debug)]
pub struct Engine {
    state_dir: PathBuf,
    cache: Mutex<Option<(Stamp, Arc<Applied>)>>,
}

impl Clone for Engine {
    fn clone(&self) -> Self {
        Engine::new(&self.state_dir)
    }
}

/// The state file inside the state directory.
pub const STATE_FILE: &str = "applied.json";

impl Engine {
    /// An engine keeping its applied state in `<state_dir>/applied.json`
    /// (the directory is created on the first apply).
    pub fn new(state_dir: &Path) -> Engine {
        Engine { state_dir: state_dir.to_path_buf(), cache: Mutex::new(None) }
    }

    fn state_path(&self) -> PathBuf {
        self.state_dir.join(STATE_FILE)
    }

    /// The persisted state; `None` when missing or unreadable (then the
    /// next apply is a full replace).
    fn load(&self) -> Option<Arc<Applied>> {
        let path = self.state_path();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let now = stamp(&path);
        match (&*cache, now) {
            (_, None) => return None,
            (Some((s, a)), Some(now)) if *s == now => return Some(a.clone()),
            _ => {}
        }
        *cache = None;
        let text = fs::read(&path).ok()?;
        match serde_json::from_slice::<Applied>(&text) {
            Ok(a) => {
                let a = Arc::new(a);
                // the stamp taken before the read: a concurrent rewrite makes it stale, not wrong
                *cache = now.map(|s| (s, a.clone()));
                Some(a)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "applied policy state unreadable: full replace");
                None
            }
        }
    }

    /// Writes the state atomically: temp file, fsync, rename, fsync dir.
    fn store(&self, tables: &[TableState]) -> Result<()> {
        let err = |path: &Path, e: std::io::Error| Error::State { path: path.to_path_buf(), message: e.to_string() };
        fs::create_dir_all(&self.state_dir).map_err(|e| err(&self.state_dir, e))?;
        let path = self.state_path();
        let tmp = self.state_dir.join(format!(".{STATE_FILE}.{}", std::process::id()));
        let json = serde_json::to_vec(&AppliedRef { tables })
            .map_err(|e| Error::State { path: path.clone(), message: e.to_string() })?;
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(&self.state_dir)?.sync_all()
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        *cache = None;
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            err(&path, e)
        })?;
        *cache = stamp(&path).map(|s| (s, Arc::new(Applied { tables: tables.to_vec() })));
        Ok(())
    }

    /// [`store`](Self::store) after a commit: if the new state cannot be
    /// written, the old file no longer describes the kernel, so it is
    /// removed (the next apply is then a full replace) and the error
    /// returned.
    fn store_after_commit(&self, tables: &[TableState]) -> Result<()> {
        self.store(tables).inspect_err(|e| {
            tracing::error!(error = %e, "policy applied but its state not saved: the next apply replaces the tables");
            let _ = self.forget();
        })
    }

    /// Forgets the persisted state (the next apply is a full replace).
    fn forget(&self) -> Result<()> {
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = None;
        match fs::remove_file(self.state_path()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::State { path: self.state_path(), message: e.to_string() })
            }
            _ => Ok(()),
        }
    }

    /// Applies `c`: a delta against the persisted previous state for each
    /// table that state knows and the kernel still has, else a replace of
    /// that table (destroy + create); tables of the previous state that
    /// `c` no longer has are destroyed. All in ONE transaction. If a delta
    /// is refused (the kernel's table was changed behind our back), the
    /// whole apply is retried once as a full replace. On error the kernel
    /// and the persisted state are unchanged, with one exception: when
    /// the kernel accepted the transaction but the state file cannot be
    /// written (`Error::State`), the new policy is in force and the old
    /// file is removed, so that the next apply is a full replace.
    pub fn apply<D: Desired + ?Sized>(&self, c: &D) -> Result<ApplyReport> {
        let start = Instant::now();
        let next = c.tables();
        for (i, t) in next.iter().enumerate() {
            t.validate()?;
            if next[..i].iter().any(|o| o.table == t.table) {
                return Err(NftError::Invalid(format!("table {} {} given twice", t.table.family, t.table.name)).into());
            }
        }
        let prev = self.load();
        let mut x = Transaction::new();
        if let Some(prev) = &prev {
            let mut x_delta = Transaction::new();
            let mut all_delta = true;
            for n in next {
                match prev.tables.iter().find(|p| p.table == n.table) {
                    Some(p) if table_exists(&n.table)? => TableState::diff(p, n, &mut x_delta)?,
                    _ => {
                        all_delta = false;
                        TableState::replace(n, &mut x_delta)?;
                    }
                }
            }
            for p in &prev.tables {
                if !next.iter().any(|n| n.table == p.table) {
                    x_delta.destroy_table(&p.table)?;
                }
            }
            let ops = x_delta.len();
            let c0 = Instant::now();
            match x_delta.commit() {
                Ok(()) => {
                    let commit = c0.elapsed();
                    if ops > 0 {
                        self.store_after_commit(next)?;
                    }
                    return Ok(ApplyReport { full: !all_delta, ops, elapsed: start.elapsed(), commit });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "policy delta refused by the kernel: full replace");
                    for p in &prev.tables {
                        if !next.iter().any(|n| n.table == p.table) {
                            x.destroy_table(&p.table)?;
                        }
                    }
                }
            }
        }
        for n in next {
            TableState::replace(n, &mut x)?;
        }
        let ops = x.len();
        // until the commit succeeds the old file still describes the kernel
        let c0 = Instant::now();
        x.commit()?;
        let commit = c0.elapsed();
        self.store_after_commit(next)?;
        Ok(ApplyReport { full: true, ops, elapsed: start.elapsed(), commit })
    }

    /// Endpoint `ep` is protected as `c` says: each of its dispatch
    /// entries is in the kernel with the verdict `c` gives it, and every
    /// chain that verdict leads to (through jumps, gotos and the verdict
    /// maps rules look up), as well as the base chains of the table, exist
    /// with the rule count `c` gives them.
    pub fn check<D: Desired + ?Sized>(&self, c: &D, ep: &str) -> Result<()> {
        let keys = c.dispatch_keys(ep).ok_or_else(|| Error::Check(format!("endpoint {ep} is not in the policy")))?;
        // per table: the chains to count, from the desired state
        let mut wanted: BTreeMap<TableRef, BTreeSet<String>> = BTreeMap::new();
        for k in &keys {
            let (tf, tn) = (k.table.family, &k.table.name);
            let want_t = c
                .tables()
                .iter()
                .find(|t| t.table == k.table)
                .ok_or_else(|| Error::Check(format!("{ep}: table {tf} {tn} is not compiled")))?;
            let map = want_t
                .maps
                .get(&k.map)
                .ok_or_else(|| Error::Check(format!("{ep}: map {} is not in table {tf} {tn}", k.map)))?;
            let want = map
                .entries
                .iter()
                .find(|(e, _)| *e == k.key)
                .map(|(_, v)| v)
                .ok_or_else(|| Error::Check(format!("{ep}: map {} has no entry for {:?}", k.map, k.key)))?;
            let have = map_entry(&k.table, &map.def, &k.key)?;
            if have.as_ref() != Some(want) {
                return Err(Error::Check(format!(
                    "{ep}: map {} in table {tf} {tn}: entry {:?} is {have:?}, want {want:?}",
                    k.map, k.key
                )));
            }
            // (chain, follow the verdict maps its rules look up): a base
            // chain's dispatch map leads to every endpoint, only ours counts
            let mut todo: Vec<(String, bool)> =
                want_t.chains.iter().filter(|(_, c)| c.base.is_some()).map(|(n, _)| (n.clone(), false)).collect();
            todo.extend(verdict_chain(want).map(|c| (c, true)));
            let seen = wanted.entry(k.table.clone()).or_default();
            let mut followed = BTreeSet::new();
            while let Some((name, follow_maps)) = todo.pop() {
                if !followed.insert((name.clone(), follow_maps)) {
                    continue;
                }
                let chain = want_t
                    .chains
                    .get(&name)
                    .ok_or_else(|| Error::Check(format!("{ep}: chain {name} is referenced but not compiled")))?;
                seen.insert(name);
                for r in &chain.rules {
                    match &r.action {
                        Some(Action::Verdict(v)) => todo.extend(verdict_chain(v).map(|c| (c, true))),
                        Some(Action::IfNameVmap { map, .. }) | Some(Action::AddrVmap { map, .. }) if follow_maps => {
                            if let Some(m) = want_t.maps.get(map) {
                                todo.extend(m.entries.iter().filter_map(|(_, v)| verdict_chain(v)).map(|c| (c, true)));
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        for (t, chains) in &wanted {
            let want_t = c.tables().iter().find(|w| w.table == *t).expect("checked above");
            let names: Vec<&str> = chains.iter().map(String::as_str).collect();
            for (name, have) in rule_counts_of(t, &names)? {
                let want = want_t.chains[&name].rules.len();
                match have {
                    Some(n) if n == want => {}
                    Some(n) => {
                        return Err(Error::Check(format!(
                            "{ep}: chain {name} has {n} rules in the kernel, want {want}"
                        )))
                    }
                    None => return Err(Error::Check(format!("{ep}: chain {name} is missing from the kernel"))),
                }
            }
        }
        Ok(())
    }

    /// Destroys every table of the persisted state and of `extra` (the
    /// tables the policy owns, for when the state file is gone), in one
    /// transaction, then forgets the state.
    pub fn remove_tables(&self, extra: &[TableRef]) -> Result<()> {
        let mut x = Transaction::new();
        let mut tables: BTreeSet<TableRef> = extra.iter().cloned().collect();
        if let Some(prev) = self.load() {
            tables.extend(prev.tables.iter().map(|t| t.table.clone()));
        }
        for t in &tables {
            x.destroy_table(t)?;
        }
        x.commit()?;
        self.forget()
    }

    /// Removes both tables the policy owns (`inet cni-policy` and `bridge
    /// cni-policy`) and whatever else the persisted state names, and
    /// forgets the state (tests, uninstall).
    pub fn remove(&self) -> Result<()> {
        self.remove_tables(&owned_tables())
    }
}

/// The tables of the layout: `inet cni-policy` and `bridge cni-policy`.
pub fn owned_tables() -> Vec<TableRef> {
    use linux_net::nft::Family;
    vec![TableRef::new(Family::Inet, TABLE_NAME), TableRef::new(Family::Bridge, TABLE_NAME)]
}

/// Name of both tables the policy owns.
pub const TABLE_NAME: &str = "cni-policy";

fn verdict_chain(v: &Verdict) -> Option<String> {
    match v {
        Verdict::Jump(c) | Verdict::Goto(c) => Some(c.clone()),
        _ => None,
    }
}
