//! Policy files + registry → compiled desired state → the kernel, the one path every writer
//! (the plugin's verbs, `watch`, `label`) takes, always under the state directory's lock.

use std::path::Path;

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

/// The policy model's view of a registered endpoint.
pub fn endpoint(r: &EndpointRecord) -> policy::Endpoint {
    policy::Endpoint {
        name: r.name.clone(),
        namespace: r.namespace.clone(),
        labels: r.labels.clone(),
        addrs: r.addrs.clone(),
        host_ifname: r.host_ifname.clone(),
        bridged: r.bridged,
    }
}

pub fn compile(set: &PolicySet, records: &[EndpointRecord]) -> Compiled {
    let eps: Vec<policy::Endpoint> = records.iter().map(endpoint).collect();
    policy::compile::compile(set, &eps)
}

/// The engine of a state directory (its record of what it applied is `<stateDir>/applied.json`).
/// A long-lived one (`watch`) keeps that record in memory between applies.
pub fn engine(state: &StateDir) -> Engine {
    Engine::new(state.root())
}

/// Applies `c` in one atomic transaction (the engine keeps the kernel unchanged on error).
pub fn apply(engine: &Engine, c: &Compiled) -> Result<ApplyReport> {
    engine.apply(c).map_err(|e| Error::Engine(format!("apply the policy: {e}")))
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
        let c = compile(set, &records);
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

/// Re-applies the registry as it is with the files of `policy_dir` (`watch`, and the verbs that
/// only need the current state in force). The caller holds the lock.
pub fn reapply(state: &StateDir, engine: &Engine, policy_dir: &Path) -> Result<(Compiled, ApplyReport)> {
    let set = load_policies(policy_dir)?;
    commit(state, engine, &set, &Change::default())
}
