//! The engine: the only part of the crate that touches the kernel, through
//! `linux_net::nft`. It applies a compiled desired state (the tables the
//! policy owns, as [`TableState`]s) in one atomic nf_tables transaction,
//! as a delta against the state it applied last when the kernel still has
//! that state, else as a full replace; it checks one endpoint's dispatch
//! and chains against the kernel (CHECK), and removes the tables.
//!
//! The applied state is persisted as JSON in `<state_dir>/applied.json`,
//! written (temp file, rename) only after the kernel accepted the
//! transaction, so the file never describes a state the kernel refused.
//! Its identity is in the kernel too, put there by the same transaction:
//! each table carries the comment `owner <state dir>` and, in its map
//! `gen`, the generation of every apply since the last cleanup (a
//! sequence number and a hash of the state). A delta is computed only
//! against a file whose generation is the newest the kernel has, in a
//! table owned by this state directory; anything else is a full replace,
//! or, for a table another live state directory owns, a refusal. So a lost or torn state write
//! costs a full replace, never a wrong delta, and the file needs no fsync.
//! Callers serialise writers (the registry lock).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use linux_net::nft::state::{map_entries, map_entry, rule_counts_of, table_comment, verdict_map_sizes};
use linux_net::nft::{
    Action, NftError, SetDef, SetElem, SetKey, TableRef, TableState, Transaction, Verdict, MAX_COMMENT_LEN,
};
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

/// What may differ between a desired state and the one applied last: the
/// objects (sets, maps, chains) by table and name, or everything. The
/// incremental compiler (`policy::compile::Compiler`) says it; see
/// [`Engine::apply_changes`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Anything may differ: a whole-state delta.
    pub all: bool,
    /// (table, name) of every set, map or chain that may differ (a name
    /// stands for the object of that name of any kind).
    pub objects: BTreeSet<(TableRef, String)>,
}

impl Changes {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        !self.all && self.objects.is_empty()
    }
}

/// The persisted state: what the last successful apply put in the kernel,
/// and its generation (the key it added to each table's `gen` map; a file
/// without one is never a base for a delta).
#[derive(Debug, Clone, Deserialize)]
struct Applied {
    #[serde(default)]
    gen: String,
    tables: Vec<TableState>,
}

/// The verdict map holding the generations applied to a table: entries
/// `"<7 hex: sequence><8 hex: hash of the state>" : accept` (an ifname
/// key, 15 characters), the newest (highest sequence) being what the
/// kernel has. No rule looks it up. Old entries are only added to, and
/// deleted [`GEN_KEEP`] at a time: after a commit that deletes anything
/// (an element, a chain) closing its netlink socket waits for an RCU grace
/// period, 8-16 ms on this VM, where an added element costs microseconds
/// (an engine keeps its socket open, but the plugin's process exits).
pub const GEN_MAP: &str = "gen";

/// When a table's `gen` map holds this many entries, the apply that adds
/// the next one deletes the others.
pub const GEN_KEEP: usize = 16;

/// Highest sequence number before a wrap, which forces a full replace.
const GEN_SEQ_MAX: u32 = 0x0fff_ffff;

fn gen_seq(gen: &str) -> Option<u32> {
    (gen.len() == 15).then(|| u32::from_str_radix(&gen[..7], 16).ok()).flatten()
}

fn gen_def() -> SetDef {
    SetDef::verdict_map(GEN_MAP, SetKey::IfName)
}

fn gen_elem(gen: &str) -> SetElem {
    SetElem::IfName(gen.to_string())
}
/// Prefix of the table comment naming the owning state directory.
pub const OWNER_PREFIX: &str = "owner ";

/// The generation of the `seq`th state, `json`: 7 hex digits of `seq`,
/// 8 of a hash of the JSON. Only compared with what the same file
/// recorded, so the hash need not be stable across builds.
fn generation(seq: u32, json: &[u8]) -> String {
    use std::hash::{DefaultHasher, Hasher};
    let mut h = DefaultHasher::new();
    h.write(json);
    format!("{seq:07x}{:08x}", h.finish() as u32)
}

/// Bytes that differ from one call to the next (time, process, counter): what a deferred
/// state's generation hashes.
fn nonce() -> Vec<u8> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{}.{}.{}", t.as_nanos(), std::process::id(), N.fetch_add(1, Ordering::Relaxed)).into_bytes()
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
    cache: Mutex<Option<Cache>>,
    /// The canonical state directory, once created.
    owner: std::sync::OnceLock<PathBuf>,
    /// One netlink socket for all of this engine's nftables operations,
    /// kept open between them: closing one right after a commit that
    /// deleted anything (a flushed chain, an element) waits for the
    /// kernel's cleanup of the transaction, an RCU grace period
    /// (linux-net's `Session`).
    session: Mutex<linux_net::nft::Session>,
}

/// What the engine applied last, and the version of the state file it
/// read or wrote last (`stamp`). `unsaved`: `applied` is newer than that
/// file ([`Engine::apply_changes`] leaves the write to [`Engine::flush`]).
#[derive(Debug)]
struct Cache {
    /// `None`: there was no file.
    stamp: Option<Stamp>,
    applied: Arc<Applied>,
    unsaved: bool,
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
        Engine {
            state_dir: state_dir.to_path_buf(),
            cache: Mutex::new(None),
            owner: std::sync::OnceLock::new(),
            session: Mutex::new(linux_net::nft::Session::new()),
        }
    }

    /// Runs `f` with this engine's netlink session (see `session`); when
    /// another thread holds it, or this one does further up, `f` runs
    /// without it (then in the caller's session, or with its own sockets).
    fn in_session<T>(&self, f: impl FnOnce() -> T) -> T {
        match self.session.try_lock() {
            Ok(mut s) => s.run(f),
            Err(_) => f(),
        }
    }

    /// The canonical path of the state directory (created if need be):
    /// the owner named in the tables.
    fn owner(&self) -> Result<&Path> {
        if let Some(p) = self.owner.get() {
            return Ok(p);
        }
        let err = |e: std::io::Error| Error::State { path: self.state_dir.clone(), message: e.to_string() };
        fs::create_dir_all(&self.state_dir).map_err(err)?;
        let p = fs::canonicalize(&self.state_dir).map_err(err)?;
        let comment_len = p.to_str().map(|s| OWNER_PREFIX.len() + s.len());
        if comment_len.is_none_or(|n| n > MAX_COMMENT_LEN) {
            return Err(Error::State {
                path: p,
                message: format!(
                    "the state directory's path must be UTF-8 and at most {} bytes: the tables name their owner in a comment",
                    MAX_COMMENT_LEN - OWNER_PREFIX.len()
                ),
            });
        }
        Ok(self.owner.get_or_init(|| p))
    }

    fn owner_comment(&self) -> Result<String> {
        Ok(format!("{OWNER_PREFIX}{}", self.owner()?.display()))
    }

    /// Whether table `t` is ours (`Some(true)`), absent or ours to take over
    /// (`Some(false)`: it must be replaced), or owned by another live state
    /// directory (`Err(Error::Owner)`). A table without our comment is taken
    /// over when it names no owner (made by hand or by an engine before
    /// owners were recorded), when its owner's directory no longer exists,
    /// or when it dispatches nothing (no entry in any of its verdict maps:
    /// no container of the other owner loses protection).
    fn ownership(&self, t: &TableRef, ours: &str) -> Result<bool> {
        let comment = match table_comment(t)? {
            None => return Ok(false),
            Some(Some(c)) if c == ours => return Ok(true),
            Some(c) => c,
        };
        let Some(other) = comment.as_deref().and_then(|c| c.strip_prefix(OWNER_PREFIX)) else {
            tracing::warn!(table = %format!("{} {}", t.family, t.name), comment = ?comment, "policy table names no owner: replacing it");
            return Ok(false);
        };
        let other = PathBuf::from(other);
        if !other.exists() {
            tracing::warn!(table = %format!("{} {}", t.family, t.name), owner = %other.display(), "policy table's owner state directory is gone: taking it over");
            return Ok(false);
        }
        let mut maps = verdict_map_sizes(t)?;
        maps.remove(GEN_MAP);
        if maps.values().all(|&n| n == 0) {
            tracing::warn!(table = %format!("{} {}", t.family, t.name), owner = %other.display(), "policy table of another state directory dispatches no endpoint: taking it over");
            return Ok(false);
        }
        Err(Error::Owner {
            table: format!("{} {}", t.family, t.name),
            owner: other,
            ours: self.owner()?.to_path_buf(),
            entries: maps.values().sum(),
        })
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
            (Some(k), Some(now)) if k.stamp == Some(now) => return Some(k.applied.clone()),
            _ => {}
        }
        *cache = None;
        let text = fs::read(&path).ok()?;
        match serde_json::from_slice::<Applied>(&text) {
            Ok(a) => {
                let a = Arc::new(a);
                // the stamp taken before the read: a concurrent rewrite makes it stale, not wrong
                *cache = now.map(|stamp| Cache { stamp: Some(stamp), applied: a.clone(), unsaved: false });
                Some(a)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "applied policy state unreadable: full replace");
                None
            }
        }
    }

    /// Writes the state atomically (temp file, rename), without fsync: a
    /// file lost or torn by a crash names a generation the kernel does not
    /// have (or does not parse), which means a full replace, not a wrong
    /// delta. `tables_json` is `tables` serialised, `gen` its generation.
    fn store(&self, tables: &[TableState], tables_json: &[u8], gen: &str) -> Result<()> {
        let err = |path: &Path, e: std::io::Error| Error::State { path: path.to_path_buf(), message: e.to_string() };
        fs::create_dir_all(&self.state_dir).map_err(|e| err(&self.state_dir, e))?;
        let path = self.state_path();
        let tmp = self.state_dir.join(format!(".{STATE_FILE}.{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            write!(f, "{{\"gen\":\"{gen}\",\"tables\":")?;
            f.write_all(tables_json)?;
            f.write_all(b"}")?;
            drop(f);
            fs::rename(&tmp, &path)
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        *cache = None;
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            err(&path, e)
        })?;
        *cache = stamp(&path).map(|stamp| Cache {
            stamp: Some(stamp),
            applied: Arc::new(Applied { gen: gen.to_string(), tables: tables.to_vec() }),
            unsaved: false,
        });
        Ok(())
    }

    /// Writes the state [`apply_changes`](Self::apply_changes) left unsaved,
    /// if any: the state file then describes the kernel again (until then it
    /// names an older generation, so another engine reading it replaces the
    /// tables rather than compute a delta from it). Nothing is written when
    /// another writer replaced the file since this engine last read or
    /// wrote it: that file is newer than this engine's state. Callers
    /// serialise writers (the registry lock), as for `apply`.
    pub fn flush(&self) -> Result<()> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let Some(k) = cache.as_ref().filter(|k| k.unsaved) else { return Ok(()) };
        if stamp(&self.state_path()) != k.stamp {
            *cache = None;
            return Ok(());
        }
        let applied = k.applied.clone();
        drop(cache);
        let json = serde_json::to_vec(&applied.tables)
            .map_err(|e| Error::State { path: self.state_path(), message: e.to_string() })?;
        self.store_after_commit(&applied.tables, &json, &applied.gen)
    }

    /// [`store`](Self::store) after a commit: if the new state cannot be
    /// written, the old file no longer describes the kernel, so it is
    /// removed (the next apply is then a full replace) and the error
    /// returned.
    fn store_after_commit(&self, tables: &[TableState], tables_json: &[u8], gen: &str) -> Result<()> {
        self.store(tables, tables_json, gen).inspect_err(|e| {
            tracing::error!(error = %e, "policy applied but its state not saved: the next apply replaces the tables");
            let _ = self.forget();
        })
    }

    /// After a commit of `tables` (generation `gen`): the state file written
    /// from `tables_json`, or, without it, the state kept in memory as
    /// unsaved for [`flush`](Self::flush) (the file, if any, names an older
    /// generation until then: a reader replaces the tables).
    fn record(&self, tables: &[TableState], tables_json: Option<&[u8]>, gen: &str) -> Result<()> {
        if let Some(json) = tables_json {
            return self.store_after_commit(tables, json, gen);
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        *cache = Some(Cache {
            stamp: stamp(&self.state_path()),
            applied: Arc::new(Applied { gen: gen.to_string(), tables: tables.to_vec() }),
            unsaved: true,
        });
        Ok(())
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
    /// table that state knows and the kernel still has as that state left
    /// it (the table is owned by this state directory and the newest entry
    /// of its `gen` map is the state's generation), else a replace of that
    /// table (destroy + create); tables of the previous state that `c` no
    /// longer has are destroyed. All in ONE transaction, which also adds
    /// the new generation to every table. A table owned by another state
    /// directory that still exists and still dispatches endpoints is not
    /// touched: `Error::Owner`, nothing sent. If a delta is refused (the
    /// kernel's table was changed behind our back), the whole apply is
    /// retried once as a full replace. On error the kernel and the
    /// persisted state are unchanged, with one exception: when the kernel
    /// accepted the transaction but the state file cannot be written
    /// (`Error::State`), the new policy is in force and the old file is
    /// removed, so that the next apply is a full replace.
    pub fn apply<D: Desired + ?Sized>(&self, c: &D) -> Result<ApplyReport> {
        self.apply_with(c, false, false)
    }

    /// [`apply`](Self::apply) as a full replace of every table, whatever
    /// the state file says: heals hand edits a delta would not touch (a
    /// rule added to a chain the new state does not change), e.g. after
    /// [`check`](Self::check) found one. The owner rules still apply.
    pub fn apply_full<D: Desired + ?Sized>(&self, c: &D) -> Result<ApplyReport> {
        self.apply_with(c, true, false)
    }

    /// [`apply`](Self::apply) when only the objects `changes` names may
    /// differ from what this engine applied last: only those are compared
    /// and sent, and the state file is not written ([`flush`](Self::flush)
    /// writes it, e.g. once the change is in force). Everything else is as
    /// in `apply`: one transaction, the owner and the newest generation of
    /// every table checked first, the new generation added. Falls back to
    /// `apply` when this engine has no state in memory that is still the
    /// state file's (a new engine, another writer since), when `changes`
    /// says everything changed, or when a changed object cannot be changed in
    /// place; to a full replace when the kernel refuses the delta.
    pub fn apply_changes<D: Desired + ?Sized>(&self, c: &D, changes: &Changes) -> Result<ApplyReport> {
        self.in_session(|| self.apply_changes_in_session(c, changes))
    }

    fn apply_changes_in_session<D: Desired + ?Sized>(&self, c: &D, changes: &Changes) -> Result<ApplyReport> {
        let start = Instant::now();
        if changes.all {
            return self.apply_with(c, false, true);
        }
        let next = c.tables();
        let prev = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.as_ref().filter(|k| stamp(&self.state_path()) == k.stamp).map(|k| k.applied.clone())
        };
        let Some(prev) = prev else { return self.apply_with(c, false, true) };
        let same_tables =
            prev.tables.len() == next.len() && prev.tables.iter().zip(next).all(|(p, n)| p.table == n.table);
        let Some(prev_seq) = gen_seq(&prev.gen).filter(|&s| same_tables && s < GEN_SEQ_MAX) else {
            return self.apply_with(c, false, true);
        };
        // the changed objects of each table, before and after
        let mut subs = Vec::new();
        for (p, n) in prev.tables.iter().zip(next) {
            let names: BTreeSet<&str> =
                changes.objects.iter().filter(|(t, _)| *t == n.table).map(|(_, o)| o.as_str()).collect();
            if names.is_empty() {
                continue;
            }
            let (ps, ns) = parts(p, n, &names)?;
            if ns.maps.contains_key(GEN_MAP) || ns.sets.contains_key(GEN_MAP) {
                return Err(NftError::Invalid(format!(
                    "{GEN_MAP} is the engine's name in table {} {}",
                    n.table.family, n.table.name
                ))
                .into());
            }
            if !TableState::compatible(&ps, &ns) {
                return self.apply_with(c, false, true);
            }
            subs.push((ps, ns));
        }
        let mut x = Transaction::new();
        for (ps, ns) in &subs {
            TableState::diff(ps, ns, &mut x)?;
        }
        if x.is_empty() {
            return Ok(ApplyReport { full: false, ops: 0, elapsed: start.elapsed(), commit: Duration::ZERO });
        }
        // every table must be ours and as the state left it, and gets the new generation
        let ours = self.owner_comment()?;
        // the previous generation and a nonce: serialising the changed objects (an endpoint
        // add changes the 1k-entry dispatch maps) cost milliseconds
        let mut hashed = prev.gen.clone().into_bytes();
        hashed.extend(nonce());
        let gen = generation(prev_seq + 1, &hashed);
        let gen_entry = [(gen_elem(&gen), Verdict::Accept)];
        let prev_entry = gen_elem(&prev.gen);
        for n in next {
            if !self.ownership(&n.table, &ours)? {
                return self.apply_with(c, false, true);
            }
            let have = map_entries(&n.table, &gen_def())?;
            let newest = have
                .iter()
                .filter_map(|(k, _)| match k {
                    SetElem::IfName(g) => gen_seq(g).map(|s| (s, k)),
                    _ => None,
                })
                .max_by_key(|(s, _)| *s)
                .map(|(_, k)| k.clone());
            if newest.as_ref() != Some(&prev_entry) {
                return self.apply_with(c, false, true);
            }
            if have.len() >= GEN_KEEP {
                let old: Vec<SetElem> = have.into_iter().map(|(k, _)| k).collect();
                x.delete_map_entries(&n.table, &gen_def(), &old)?;
            }
            x.add_map_entries(&n.table, &gen_def(), &gen_entry)?;
        }
        let ops = x.len();
        let c0 = Instant::now();
        if let Err(e) = x.commit() {
            tracing::warn!(error = %e, "policy delta refused by the kernel: full replace");
            return self.apply_with(c, true, true);
        }
        let commit = c0.elapsed();
        // the kernel has it: so does the state in memory (the file follows on flush)
        drop(prev);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = cache.as_mut() {
            let a = Arc::make_mut(&mut k.applied);
            for (p, n) in a.tables.iter_mut().zip(next) {
                let Some((ps, ns)) = subs.iter().find(|(_, ns)| ns.table == n.table) else { continue };
                for (t, name) in &changes.objects {
                    if *t == n.table {
                        update_object(p, n, ps, ns, name);
                    }
                }
            }
            a.gen = gen;
            k.unsaved = true;
        }
        Ok(ApplyReport { full: false, ops, elapsed: start.elapsed(), commit })
    }

    /// `apply` (`full`: `apply_full`); `defer`: the state file is left to
    /// [`flush`](Self::flush), as `apply_changes` leaves it, and the
    /// generation's hash is of a nonce rather than of the state's JSON
    /// (serialising a 1k-endpoint state costs milliseconds).
    fn apply_with<D: Desired + ?Sized>(&self, c: &D, full: bool, defer: bool) -> Result<ApplyReport> {
        self.in_session(|| self.apply_with_in_session(c, full, defer))
    }

    fn apply_with_in_session<D: Desired + ?Sized>(&self, c: &D, full: bool, defer: bool) -> Result<ApplyReport> {
        let start = Instant::now();
        let next = c.tables();
        for (i, t) in next.iter().enumerate() {
            t.validate()?;
            if next[..i].iter().any(|o| o.table == t.table) {
                return Err(NftError::Invalid(format!("table {} {} given twice", t.table.family, t.table.name)).into());
            }
        }
        let ours = self.owner_comment()?;
        let json = if defer {
            None
        } else {
            Some(
                serde_json::to_vec(next)
                    .map_err(|e| Error::State { path: self.state_path(), message: e.to_string() })?,
            )
        };
        let prev = if full { None } else { self.load() };
        let prev_seq = prev.as_ref().and_then(|p| gen_seq(&p.gen));
        // a wrapped sequence cannot say which entry is the newest: replace
        let prev_seq = prev_seq.filter(|&s| s < GEN_SEQ_MAX);
        let prev = prev.filter(|_| prev_seq.is_some());
        let gen = generation(prev_seq.map_or(1, |s| s + 1), json.as_deref().unwrap_or(&nonce()));
        let gen_entry = [(gen_elem(&gen), Verdict::Accept)];
        // every table this apply may touch must be ours or free to take over
        let mut owned: BTreeMap<&TableRef, bool> = BTreeMap::new();
        for t in next.iter().map(|n| &n.table).chain(prev.iter().flat_map(|p| p.tables.iter().map(|t| &t.table))) {
            if !owned.contains_key(t) {
                owned.insert(t, self.ownership(t, &ours)?);
            }
        }
        let mut x = Transaction::new();
        if let Some(prev) = &prev {
            let prev_entry = gen_elem(&prev.gen);
            // per delta table: the older generation keys to delete
            let mut gens: Vec<(&TableRef, Vec<SetElem>)> = Vec::new();
            let mut x_delta = Transaction::new();
            let mut all_delta = true;
            for n in next {
                let base = prev
                    .tables
                    .iter()
                    .find(|p| p.table == n.table)
                    .filter(|p| owned[&n.table] && !p.maps.contains_key(GEN_MAP) && TableState::compatible(p, n));
                let base = match base {
                    Some(p) => {
                        // the newest generation in the kernel must be the file's
                        let have = map_entries(&n.table, &gen_def())?;
                        let newest = have.iter().filter_map(|(k, _)| match k {
                            SetElem::IfName(g) => gen_seq(g).map(|s| (s, k)),
                            _ => None,
                        });
                        match newest.max_by_key(|(s, _)| *s) {
                            Some((_, k)) if *k == prev_entry => {
                                Some((p, have.into_iter().map(|(k, _)| k).collect::<Vec<_>>()))
                            }
                            _ => None,
                        }
                    }
                    None => None,
                };
                match base {
                    Some((p, old)) => {
                        TableState::diff(p, n, &mut x_delta)?;
                        gens.push((&n.table, old));
                    }
                    None => {
                        all_delta = false;
                        Self::replace_table(n, &ours, &gen_entry, &mut x_delta)?;
                    }
                }
            }
            for p in &prev.tables {
                if !next.iter().any(|n| n.table == p.table) {
                    x_delta.destroy_table(&p.table)?;
                }
            }
            // something changes: the delta tables record the new generation
            if !x_delta.is_empty() {
                for (t, old) in gens {
                    if old.len() >= GEN_KEEP {
                        x_delta.delete_map_entries(t, &gen_def(), &old)?;
                    }
                    x_delta.add_map_entries(t, &gen_def(), &gen_entry)?;
                }
            }
            let ops = x_delta.len();
            let c0 = Instant::now();
            match x_delta.commit() {
                Ok(()) => {
                    let commit = c0.elapsed();
                    if ops > 0 {
                        self.record(next, json.as_deref(), &gen)?;
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
            Self::replace_table(n, &ours, &gen_entry, &mut x)?;
        }
        let ops = x.len();
        // until the commit succeeds the old file still describes the kernel
        let c0 = Instant::now();
        x.commit()?;
        let commit = c0.elapsed();
        self.record(next, json.as_deref(), &gen)?;
        Ok(ApplyReport { full: true, ops, elapsed: start.elapsed(), commit })
    }

    /// Queues the replace of table `n`: owned by `ours`, marked with the
    /// generation `gen_entry`.
    fn replace_table(n: &TableState, ours: &str, gen_entry: &[(SetElem, Verdict)], x: &mut Transaction) -> Result<()> {
        if n.maps.contains_key(GEN_MAP) || n.sets.contains_key(GEN_MAP) {
            return Err(NftError::Invalid(format!(
                "{GEN_MAP} is the engine's name in table {} {}",
                n.table.family, n.table.name
            ))
            .into());
        }
        TableState::replace_with_comment(n, ours, x)?;
        x.add_set(&n.table, &gen_def())?;
        x.add_map_entries(&n.table, &gen_def(), gen_entry)?;
        Ok(())
    }

    /// Endpoint `ep` is protected as `c` says: each of its dispatch
    /// entries is in the kernel with the verdict `c` gives it, and every
    /// chain that verdict leads to (through jumps, gotos and the verdict
    /// maps rules look up), as well as the base chains of the table, exist
    /// with the rule count `c` gives them.
    pub fn check<D: Desired + ?Sized>(&self, c: &D, ep: &str) -> Result<()> {
        self.in_session(|| self.check_in_session(c, ep))
    }

    fn check_in_session<D: Desired + ?Sized>(&self, c: &D, ep: &str) -> Result<()> {
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
    /// A table another live state directory owns and uses is refused
    /// (`Error::Owner`, nothing destroyed).
    pub fn remove_tables(&self, extra: &[TableRef]) -> Result<()> {
        self.in_session(|| self.remove_tables_in_session(extra))
    }

    fn remove_tables_in_session(&self, extra: &[TableRef]) -> Result<()> {
        let mut x = Transaction::new();
        let mut tables: BTreeSet<TableRef> = extra.iter().cloned().collect();
        if let Some(prev) = self.load() {
            tables.extend(prev.tables.iter().map(|t| t.table.clone()));
        }
        let ours = self.owner_comment()?;
        for t in &tables {
            self.ownership(t, &ours)?;
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

/// The objects named in `names` (of any kind) of `p` (before) and `n`
/// (after), each in a table of its own, as far as they differ: of a set or
/// a map both have with the same definition, only the elements or entries
/// of one and not the other. `TableState::diff` of the two sends what a
/// diff of the whole tables would, without copying a 1,000-entry map for
/// one entry added.
fn parts(p: &TableState, n: &TableState, names: &BTreeSet<&str>) -> Result<(TableState, TableState)> {
    let (mut ps, mut ns) = (TableState::new(p.table.clone()), TableState::new(n.table.clone()));
    let invalid = |m: String| Error::from(NftError::Invalid(m));
    for name in names {
        let name = *name;
        if let Some(c) = p.chains.get(name) {
            ps.chains.insert(name.to_string(), c.clone());
        }
        if let Some(c) = n.chains.get(name) {
            ns.chains.insert(name.to_string(), c.clone());
        }
        // as TableState::validate, for this object
        if n.sets.get(name).is_some_and(|b| b.def.name != name || b.def.verdict_map)
            || n.maps.get(name).is_some_and(|b| b.def.name != name || !b.def.verdict_map)
        {
            return Err(invalid(format!("{name}: name or kind does not match its definition")));
        }
        if n.sets.contains_key(name) && n.maps.contains_key(name) {
            return Err(invalid(format!("{name} is both a set and a map")));
        }
        match (p.sets.get(name), n.sets.get(name)) {
            (Some(a), Some(b)) if a.def == b.def => {
                let (old, new): (HashSet<&SetElem>, HashSet<&SetElem>) =
                    (a.elems.iter().collect(), b.elems.iter().collect());
                let gone = a.elems.iter().filter(|e| !new.contains(e)).cloned().collect();
                let added = b.elems.iter().filter(|e| !old.contains(e)).cloned().collect();
                ps.put_set(a.def.clone(), gone);
                ns.put_set(b.def.clone(), added);
            }
            (a, b) => {
                if let Some(a) = a {
                    ps.sets.insert(name.to_string(), a.clone());
                }
                if let Some(b) = b {
                    ns.sets.insert(name.to_string(), b.clone());
                }
            }
        }
        if let Some(b) = n.maps.get(name) {
            let mut keys = HashSet::with_capacity(b.entries.len());
            if let Some((k, _)) = b.entries.iter().find(|(k, _)| !keys.insert(k)) {
                return Err(invalid(format!("map {name}: key {k:?} appears twice")));
            }
        }
        match (p.maps.get(name), n.maps.get(name)) {
            (Some(a), Some(b)) if a.def == b.def => {
                let old: HashMap<&SetElem, &Verdict> = a.entries.iter().map(|(k, v)| (k, v)).collect();
                let new: HashMap<&SetElem, &Verdict> = b.entries.iter().map(|(k, v)| (k, v)).collect();
                let gone = a.entries.iter().filter(|(k, v)| new.get(k) != Some(&v)).cloned().collect();
                let added = b.entries.iter().filter(|(k, v)| old.get(k) != Some(&v)).cloned().collect();
                ps.put_map(a.def.clone(), gone);
                ns.put_map(b.def.clone(), added);
            }
            (a, b) => {
                if let Some(a) = a {
                    ps.maps.insert(name.to_string(), a.clone());
                }
                if let Some(b) = b {
                    ns.maps.insert(name.to_string(), b.clone());
                }
            }
        }
    }
    Ok((ps, ns))
}

/// Makes the objects named `name` in `to` (the state before) what they are
/// in `from` (after; absent if absent): a set or map `parts` reduced to
/// what differs (`ps` before, `ns` after) by taking out and putting in
/// those elements (their order is of no consequence), the rest copied.
fn update_object(to: &mut TableState, from: &TableState, ps: &TableState, ns: &TableState, name: &str) {
    match (to.sets.get_mut(name), from.sets.get(name)) {
        (Some(a), Some(b)) if a.def == b.def => {
            let gone: HashSet<&SetElem> = ps.sets.get(name).map(|s| s.elems.iter().collect()).unwrap_or_default();
            a.elems.retain(|e| !gone.contains(e));
            a.elems.extend(ns.sets.get(name).map(|s| s.elems.clone()).unwrap_or_default());
        }
        (_, Some(b)) => {
            to.sets.insert(name.to_string(), b.clone());
        }
        (_, None) => {
            to.sets.remove(name);
        }
    }
    match (to.maps.get_mut(name), from.maps.get(name)) {
        (Some(a), Some(b)) if a.def == b.def => {
            let gone: HashSet<&SetElem> =
                ps.maps.get(name).map(|m| m.entries.iter().map(|(k, _)| k).collect()).unwrap_or_default();
            a.entries.retain(|(k, _)| !gone.contains(k));
            a.entries.extend(ns.maps.get(name).map(|m| m.entries.clone()).unwrap_or_default());
        }
        (_, Some(b)) => {
            to.maps.insert(name.to_string(), b.clone());
        }
        (_, None) => {
            to.maps.remove(name);
        }
    }
    match from.chains.get(name) {
        Some(c) => to.chains.insert(name.to_string(), c.clone()),
        None => to.chains.remove(name),
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_fit_an_ifname_and_parse_back() {
        for seq in [1, 2, 0xabc, GEN_SEQ_MAX] {
            let g = generation(seq, b"{}");
            assert_eq!(g.len(), 15, "{g}");
            assert_eq!(gen_seq(&g), Some(seq));
            assert!(matches!(gen_elem(&g), SetElem::IfName(ref n) if n.len() < 16));
        }
        assert_ne!(generation(1, b"{}"), generation(1, b"[]"));
        assert_eq!(gen_seq("0123456789abcdef"), None, "a file from before sequence numbers");
        assert_eq!(gen_seq(""), None);
    }
}
