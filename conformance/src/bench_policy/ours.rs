//! Our side of a round: `policy::compile` (pure) and `policy::engine::Engine::apply` (one
//! nftables transaction), run on a thread inside the node namespace. One engine serves the
//! whole round, as in the `cni-policy watch` daemon (it keeps the state it wrote in memory);
//! the endpoint add is also measured the way the chained plugin's ADD does it, with a new
//! engine that reads the state file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use policy::compile::{compile, Compiled};
use policy::engine::Engine;
use policy::{Endpoint, PolicySet};
use testkit::util::R;
use testkit::{bail, ensure};

use super::{ms, net::Topology, Side};

/// What a round compiles: the workload, the edited set, one more endpoint.
pub struct Inputs {
    pub set: PolicySet,
    pub endpoints: Vec<Endpoint>,
    pub edited: PolicySet,
    pub more: Vec<Endpoint>,
}

struct Step {
    compile: Duration,
    apply: Duration,
    commit: Duration,
    full: bool,
    ops: usize,
}

fn step(engine: &Engine, set: &PolicySet, eps: &[Endpoint]) -> R<(Step, Compiled)> {
    let t = Instant::now();
    let c = compile(set, eps);
    let compile_t = t.elapsed();
    let t = Instant::now();
    let rep = engine.apply(&c).map_err(|e| format!("engine apply: {e}"))?;
    Ok((Step { compile: compile_t, apply: t.elapsed(), commit: rep.commit, full: rep.full, ops: rep.ops }, c))
}

/// Runs `f` on a thread in the node namespace.
fn in_node<T: Send + 'static>(topo: &Topology, f: impl FnOnce() -> R<T> + Send + 'static) -> R<T> {
    linux_net::netns::spawn_in(Path::new(topo.node.path()), None, f)
        .map_err(|e| e.to_string())?
        .join()
        .map_err(|_| "engine thread panicked")?
        .map_err(|e| e.to_string())?
}

/// Full apply from nothing, `traffic` with it in force, then the edit and the add on top.
pub fn round(
    topo: &Topology,
    inputs: &Arc<Inputs>,
    state_dir: &Path,
    side: &mut Side,
    traffic: impl FnOnce(&mut Side) -> R<()>,
) -> R<()> {
    let engine = Arc::new(Engine::new(state_dir));
    let (e, i) = (engine.clone(), inputs.clone());
    let (full, rules) = in_node(topo, move || {
        let (s, c) = step(&e, &i.set, &i.endpoints)?;
        Ok((s, c.rule_count()))
    })?;
    ensure!(full.full, "the first apply into an empty namespace was not a full replace");
    side.full_compile.push(ms(full.compile));
    side.full_kernel.push(ms(full.apply));
    side.full_commit.push(ms(full.commit));
    side.rules = rules;
    traffic(side)?;

    let (e, i, dir) = (engine.clone(), inputs.clone(), state_dir.to_path_buf());
    let (edit, add, add_fresh) = in_node(topo, move || {
        let (edit, _) = step(&e, &i.edited, &i.endpoints)?;
        let (add, c) = step(&e, &i.edited, &i.more)?;
        let new_ep = i.more.last().map(|x| x.name.clone()).ok_or("no endpoint added")?;
        e.check(&c, &new_ep).map_err(|err| format!("check of the added endpoint {new_ep}: {err}"))?;
        // The plugin's ADD: a new process, so a new engine reading the state file. Undo the
        // add first (long-lived engine), then add again from a fresh one.
        step(&e, &i.edited, &i.endpoints)?;
        let fresh = Engine::new(&PathBuf::from(&dir));
        let (add_fresh, _) = step(&fresh, &i.edited, &i.more)?;
        Ok((edit, add, add_fresh))
    })?;
    for (what, s) in [("edit", &edit), ("endpoint add", &add), ("endpoint add (new engine)", &add_fresh)] {
        if s.full {
            bail!("the {what} was applied as a full replace, not a delta");
        }
    }
    side.edit_compile.push(ms(edit.compile));
    side.edit_kernel.push(ms(edit.apply));
    side.edit_commit.push(ms(edit.commit));
    side.add_compile.push(ms(add.compile));
    side.add_kernel.push(ms(add.apply));
    side.add_commit.push(ms(add.commit));
    side.add_fresh_kernel.push(ms(add_fresh.apply));
    side.edit_touched = edit.ops;
    side.add_touched = add.ops;
    side.deltas = true;
    Ok(())
}
