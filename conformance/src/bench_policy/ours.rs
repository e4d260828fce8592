//! Our side of a round, run on a thread inside the node namespace, as the `cni-policy watch`
//! daemon does it: one incremental compiler (`policy::compile::Compiler`) and one engine for
//! the whole round; the full apply builds the compiler and applies everything, the edit and
//! the add go through the compiler and `Engine::apply_changes` (only the objects concerned are
//! compiled, compared and sent; the state file is written after, by `Engine::flush`, outside
//! the timed part, as the daemon writes it once the change is in force). The endpoint add is
//! also measured the way the chained plugin's ADD does it: `compile()` from scratch and a new
//! engine that reads the state file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use policy::compile::{compile, Compiled, Compiler};
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

/// The plugin's way: `compile()` from scratch, `apply`.
fn step(engine: &Engine, set: &PolicySet, eps: &[Endpoint]) -> R<(Step, Compiled)> {
    let t = Instant::now();
    let c = compile(set, eps);
    let compile_t = t.elapsed();
    let t = Instant::now();
    let rep = engine.apply(&c).map_err(|e| format!("engine apply: {e}"))?;
    Ok((Step { compile: compile_t, apply: t.elapsed(), commit: rep.commit, full: rep.full, ops: rep.ops }, c))
}

/// The daemon's way: `change` on the compiler (timed as the compile), `apply_changes`, then
/// the state file written (not timed: the change is in force before).
fn incremental(engine: &Engine, c: &mut Compiler, change: impl FnOnce(&mut Compiler)) -> R<Step> {
    let t = Instant::now();
    change(c);
    let compile_t = t.elapsed();
    let t = Instant::now();
    let rep = engine.apply_changes(c.compiled(), &c.changes()).map_err(|e| format!("engine apply: {e}"))?;
    let apply_t = t.elapsed();
    c.applied();
    engine.flush().map_err(|e| format!("write the engine's state: {e}"))?;
    Ok(Step { compile: compile_t, apply: apply_t, commit: rep.commit, full: rep.full, ops: rep.ops })
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
    let compiler = Arc::new(Mutex::new(None));
    let (e, i, cc) = (engine.clone(), inputs.clone(), compiler.clone());
    let (full, rules) = in_node(topo, move || {
        let t = Instant::now();
        let c = Compiler::new(i.set.clone(), &i.endpoints);
        let compile_t = t.elapsed();
        let t = Instant::now();
        let rep = e.apply_changes(c.compiled(), &c.changes()).map_err(|e| format!("engine apply: {e}"))?;
        let s = Step { compile: compile_t, apply: t.elapsed(), commit: rep.commit, full: rep.full, ops: rep.ops };
        let rules = c.compiled().rule_count();
        *cc.lock().map_err(|_| "poisoned")? = Some(c);
        Ok((s, rules))
    })?;
    ensure!(full.full, "the first apply into an empty namespace was not a full replace");
    side.full_compile.push(ms(full.compile));
    side.full_kernel.push(ms(full.apply));
    side.full_commit.push(ms(full.commit));
    side.rules = rules;
    traffic(side)?;

    let (e, i, dir) = (engine.clone(), inputs.clone(), state_dir.to_path_buf());
    let (edit, add, add_fresh) = in_node(topo, move || {
        let mut guard = compiler.lock().map_err(|_| "poisoned")?;
        let c = guard.as_mut().ok_or("no compiler")?;
        c.applied();
        let edited = i.edited.clone();
        let edit = incremental(&e, c, move |c| c.set_policies(edited))?;
        let new_ep = i.more.last().cloned().ok_or("no endpoint added")?;
        let name = new_ep.name.clone();
        let add = incremental(&e, c, move |c| c.put_endpoint(new_ep))?;
        e.check(c.compiled(), &name).map_err(|err| format!("check of the added endpoint {name}: {err}"))?;
        if *c.compiled() != compile(&i.edited, &i.more) {
            bail!("the incremental compiler's tables differ from compile()'s");
        }
        // The plugin's ADD: a new process, so a new engine reading the state file. Undo the
        // add first (long-lived engine), then add again from a fresh one.
        incremental(&e, c, |c| c.remove_endpoint(&name))?;
        let fresh = Engine::new(&PathBuf::from(&dir));
        let (add_fresh, _) = step(&fresh, &i.edited, &i.more)?;
        Ok((edit, add, add_fresh))
    })?;
    for (what, s) in [("edit", &edit), ("endpoint add", &add), ("endpoint add (new engine)", &add_fresh)] {
        if s.full {
            bail!("the {what} was applied as a full replace, not a delta");
        }
        if s.ops == 0 {
            bail!("the {what} changed nothing in the kernel: it measures nothing");
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
