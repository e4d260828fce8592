//! `conformance bench migrate`: the time our calls take in a clean move,
//! against the raw operations they perform, measured in the same lab and
//! run, in host B's netns, with two baselines:
//!
//! * the **kernel floor**, from this process: mkdir, `mount(2)`, `umount(2)`, rmdir of the
//!   same export with the data csi-nfs's node passes (version, port, addr),
//!   in the mount namespace of B's node plugin; and `bench cni`'s kernel
//!   floor over netlink (a veth pair on a bridge, the container end moved
//!   into a scratch netns, addressed, up, its default route; then deleted):
//!   the kernel state cni-bridge, the overlay's delegate, leaves and removes;
//! * the **exec'd commands**: `mount -t nfs4` / `umount` (the mount.nfs4
//!   helper) and seven `ip` processes, timed with bash.
//!
//! Medians over N moves (the pod goes A -> B -> A ...).

use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use testkit::util::{median as med, R};
use testkit::{bail, ensure};

use super::{Opts, World};
use crate::bench::KernelFloor;

/// Bound on one kernel-floor mount + umount (a mount to an unreachable
/// server would block).
const FLOOR_TIMEOUT: Duration = Duration::from_secs(60);

/// Medians (ms) over the moves.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub n: usize,
    pub ours: Vec<f64>,
    pub ours_csi: Vec<f64>,
    pub ours_cni: Vec<f64>,
    /// The exec'd commands: `mount`/`umount`, `ip` x7.
    pub raw_mount: Vec<f64>,
    pub raw_veth: Vec<f64>,
    /// The kernel floor: mount(2) + umount(2); veth ADD and DEL over netlink.
    pub floor_mount: Vec<f64>,
    pub floor_veth: Vec<f64>,
    /// The mount data the floor passed (as csi-nfs's node does).
    pub floor_mount_data: String,
    pub floor_mount_fstype: String,
    pub move_total: Vec<f64>,
}

impl BenchReport {
    fn raw(&self) -> f64 {
        med(&self.raw_mount) + med(&self.raw_veth)
    }

    fn floor(&self) -> f64 {
        med(&self.floor_mount) + med(&self.floor_veth)
    }

    /// Our calls' median over the exec'd commands' median.
    pub fn ratio(&self) -> f64 {
        med(&self.ours) / self.raw().max(1e-9)
    }

    /// Our calls' median over the kernel floor's median.
    pub fn ratio_floor(&self) -> f64 {
        med(&self.ours) / self.floor().max(1e-9)
    }

    /// (CSI, CNI) ratios to the kernel floor and to the exec'd commands.
    pub fn halves(&self) -> [(f64, f64); 2] {
        let r = |a: &[f64], b: &[f64]| med(a) / med(b).max(1e-9);
        [
            (r(&self.ours_csi, &self.floor_mount), r(&self.ours_csi, &self.raw_mount)),
            (r(&self.ours_cni, &self.floor_veth), r(&self.ours_cni, &self.raw_veth)),
        ]
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "bench migrate: {} clean csi-nfs moves over cni-overlay (medians, ms)", self.n);
        let _ = writeln!(s, "                                  ours   kernel floor   exec'd   ours/floor  ours/exec'd");
        let rows = [
            ("CSI (NodeUnpublish+Publish)", med(&self.ours_csi), med(&self.floor_mount), med(&self.raw_mount)),
            ("CNI (DEL on A + ADD on B)", med(&self.ours_cni), med(&self.floor_veth), med(&self.raw_veth)),
            ("both (our calls per move)", med(&self.ours), self.floor(), self.raw()),
        ];
        for (what, ours, floor, exec) in rows {
            let (f, x) = (ours / floor.max(1e-9), ours / exec.max(1e-9));
            let _ = write!(s, "  {what:<27} {ours:>8.1} {floor:>12.1} {exec:>10.1} {f:>9.2}x {x:>10.2}x");
            let _ = writeln!(s, "{}", if what.starts_with("both") { "  (goal <= 1.2x)" } else { "" });
        }
        let _ = writeln!(
            s,
            "  kernel floor: mkdir, mount(2) -t {} -o {}, umount(2), rmdir; bench cni's kernel floor (netlink)",
            self.floor_mount_fstype, self.floor_mount_data
        );
        let _ = writeln!(s, "  exec'd: mount -t nfs4 + umount (mount.nfs4); ip x7 (veth, address, up, routes, delete)");
        let _ = writeln!(s, "  whole move incl. container    {:>9.1}", med(&self.move_total));
        let _ = writeln!(s, "  our time for a clean move     {:>9.1} (goal < 2000 ms)", med(&self.ours));
        let _ = writeln!(s, "  load average at the end       {}", load_average());
        s
    }

    pub fn to_json(&self) -> Value {
        let [(csi_f, csi_x), (cni_f, cni_x)] = self.halves();
        json!({
            "n": self.n,
            "ours_ms": med(&self.ours),
            "ours_csi_ms": med(&self.ours_csi),
            "ours_cni_ms": med(&self.ours_cni),
            "raw_ms": self.raw(),
            "raw_mount_umount_ms": med(&self.raw_mount),
            "raw_veth_ms": med(&self.raw_veth),
            "ratio": self.ratio(),
            "floor_ms": self.floor(),
            "floor_mount_umount_ms": med(&self.floor_mount),
            "floor_veth_ms": med(&self.floor_veth),
            "floor_mount": format!("-t {} -o {}", self.floor_mount_fstype, self.floor_mount_data),
            "ratio_floor": self.ratio_floor(),
            "ratios": {
                "csi": {"to_floor": csi_f, "to_exec": csi_x},
                "cni": {"to_floor": cni_f, "to_exec": cni_x},
            },
            "move_total_ms": med(&self.move_total),
            "load_average": load_average(),
            "samples": {
                "ours": self.ours, "ours_csi": self.ours_csi, "ours_cni": self.ours_cni,
                "raw_mount": self.raw_mount, "raw_veth": self.raw_veth,
                "floor_mount": self.floor_mount, "floor_veth": self.floor_veth,
            },
        })
    }
}

/// /proc/loadavg's first three fields (of the kernel the bench runs in).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Seconds of a bash `$EPOCHREALTIME` pair printed as `start end`.
fn span_ms(s: &str) -> R<f64> {
    let v: Vec<f64> = s.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    ensure!(v.len() == 2, "timing output {s:?}");
    Ok((v[1] - v[0]) * 1e3)
}

/// N clean moves and the raw operations after each.
pub fn run(o: &Opts, n: usize, out: &mut dyn FnMut(&str)) -> R<BenchReport> {
    let mut w = World::new(o, out)?;
    let r = measure(&mut w, n, out);
    let left = w.teardown();
    if !left.is_empty() {
        bail!("bench migrate left behind: {}", left.join(", "));
    }
    r
}

fn measure(w: &mut World, n: usize, out: &mut dyn FnMut(&str)) -> R<BenchReport> {
    let (a, b) = (w.hosts[0], w.hosts[1]);
    let mut pod = w.create_volume(out)?;
    w.first_start(&mut pod, a, out)?;
    let mut rep = BenchReport {
        n,
        ours: Vec::new(),
        ours_csi: Vec::new(),
        ours_cni: Vec::new(),
        raw_mount: Vec::new(),
        raw_veth: Vec::new(),
        floor_mount: Vec::new(),
        floor_veth: Vec::new(),
        floor_mount_data: String::new(),
        floor_mount_fstype: String::new(),
        move_total: Vec::new(),
    };
    // The raw operations: in host B's netns, the same export, a scratch container netns.
    let ctx = &pod.vol.volume_context;
    let src = format!(
        "{}:{}/{}",
        ctx.get("server").cloned().unwrap_or_default(),
        ctx.get("share").cloned().unwrap_or_default(),
        ctx.get("subdir").cloned().unwrap_or_default()
    );
    let (_, node_opts) = w.backend.export();
    let opts = node_opts.clone();
    let mnt = w.o.lab.dir().join("raw-mount");
    let scratch = w.o.lab.container(b)?;
    let sns = w.o.lab.container_id(scratch).to_string();
    let mount_script = format!(
        "mkdir -p {m} && s=$EPOCHREALTIME && mount -t nfs4 -o {opts} {src} {m} && umount {m} && e=$EPOCHREALTIME && echo $s $e",
        m = mnt.display()
    );
    let veth_script = format!(
        "s=$EPOCHREALTIME && ip link add rawm0 type veth peer name eth9 netns {sns} && \
         ip -n {sns} addr add 10.250.0.2/24 dev eth9 && ip -n {sns} link set eth9 up && \
         ip link set rawm0 up && ip route add 10.250.0.2/32 dev rawm0 && \
         ip -n {sns} route add default dev eth9 && ip link del rawm0 && e=$EPOCHREALTIME && echo $s $e"
    );
    // The kernel floor: host B's netns, its node plugin's mount namespace.
    let b_net = PathBuf::from(format!("/var/run/netns/{}", w.o.lab.host_ns(b)));
    let b_mnt =
        PathBuf::from(format!("/proc/{}/ns/mnt", w.node(b)?.proc.as_ref().ok_or("B's node plugin gone")?.pid()));
    let floor_target = w.o.lab.dir().join("floor-mount");
    let plan = csi_nfs::node::MountPlan::new(&pod.vol.volume_id, ctx, &[], &node_opts, false)
        .map_err(|e| format!("mount plan: {e}"))?;
    let addr: std::net::IpAddr = plan.server.parse().map_err(|e| format!("server {:?}: {e}", plan.server))?;
    // csi-nfs tries NFSv4.2, 4.1, 4.0 in turn; the floor times the first the server takes.
    let mut chosen = None;
    for (fstype, data) in plan.attempts(addr) {
        if floor_mount(&b_net, &b_mnt, &plan.source, fstype, plan.flags, &data, &floor_target).is_ok() {
            chosen = Some((fstype, data));
            break;
        }
    }
    let (fstype, data) = chosen.ok_or_else(|| format!("the kernel floor could not mount {} at all", plan.source))?;
    rep.floor_mount_data = data.clone();
    rep.floor_mount_fstype = fstype.to_string();
    let mut kernel = linux_net::netns::spawn_in(&b_net, None, move || KernelFloor::new(n, true))
        .map_err(|e| e.to_string())?
        .join()
        .map_err(|_| "the kernel floor's thread panicked")?
        .map_err(|e| e.to_string())??;
    for i in 0..n {
        let to = if i % 2 == 0 { b } else { a };
        let mut quiet = |_: &str| {};
        let mv = w.clean_move(&mut pod, to, &mut quiet)?;
        ensure!(mv.ok(), "move {i} failed: {:?}", mv.steps.iter().filter(|s| !s.ok).collect::<Vec<_>>());
        let csi: f64 = mv.steps.iter().filter(|s| s.ours && s.name.contains("Volume")).map(|s| s.ms).sum();
        let cni: f64 = mv.steps.iter().filter(|s| s.ours && s.name.starts_with("CNI")).map(|s| s.ms).sum();
        rep.ours.push(mv.ours_ms());
        rep.ours_csi.push(csi);
        rep.ours_cni.push(cni);
        rep.move_total.push(mv.total_ms());
        let m = span_ms(&w.o.lab.exec_ok(b, &["bash", "-c", &mount_script])?)?;
        let v = span_ms(&w.o.lab.exec_ok(b, &["bash", "-c", &veth_script])?)?;
        let fm = floor_mount(&b_net, &b_mnt, &plan.source, fstype, plan.flags, &data, &floor_target)?;
        kernel.add(i)?;
        kernel.del(i)?;
        let (fa, fd) = kernel.last();
        rep.raw_mount.push(m);
        rep.raw_veth.push(v);
        rep.floor_mount.push(fm);
        rep.floor_veth.push(fa + fd);
        out(&format!(
            "move {}/{n}: ours {:.1} ms (CSI {csi:.1}, CNI {cni:.1}); kernel floor mount+umount {fm:.1} ms, \
             veth {:.1} ms; exec'd mount+umount {m:.1} ms, veth {v:.1} ms",
            i + 1,
            mv.ours_ms(),
            fa + fd
        ));
    }
    w.finish(&mut pod)?;
    Ok(rep)
}

/// The kernel floor of NodePublish + NodeUnpublish: mkdir, `mount(2)`,
/// `umount(2)`, rmdir of `source` at `target`, from a thread in host B's netns (`net`) and its
/// node plugin's mount namespace (`mnt`), bounded by [`FLOOR_TIMEOUT`].
/// Returns the time of the two calls (ms).
fn floor_mount(
    net: &Path,
    mnt: &Path,
    source: &str,
    fstype: &'static str,
    flags: nix::mount::MsFlags,
    data: &str,
    target: &Path,
) -> R<f64> {
    let (source, data, target) = (source.to_string(), data.to_string(), target.to_path_buf());
    let r = linux_net::netns::run_in_bounded(net, Some(mnt), FLOOR_TIMEOUT, move || -> R<f64> {
        // The target made and removed as the driver does (NodePublish / NodeUnpublish).
        let t = Instant::now();
        std::fs::create_dir(&target).map_err(|e| format!("mkdir {}: {e}", target.display()))?;
        let m = nix::mount::mount(Some(source.as_str()), &target, Some(fstype), flags, Some(data.as_str()))
            .map_err(|e| format!("mount(2) {source} -t {fstype} -o {data}: {e}"));
        let u =
            m.and_then(|()| nix::mount::umount(&target).map_err(|e| format!("umount(2) {}: {e}", target.display())));
        let r = u.and_then(|()| std::fs::remove_dir(&target).map_err(|e| format!("rmdir {}: {e}", target.display())));
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if r.is_err() {
            let _ = std::fs::remove_dir(&target);
        }
        r.map(|()| ms)
    })
    .map_err(|e| e.to_string())?;
    r.ok_or_else(|| format!("kernel floor mount + umount: no return in {FLOOR_TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_baselines_give_a_ratio_per_half_and_for_the_move() {
        let r = BenchReport {
            n: 3,
            ours: vec![300.0, 330.0, 360.0],
            ours_csi: vec![120.0, 130.0, 140.0],
            ours_cni: vec![180.0, 200.0, 220.0],
            raw_mount: vec![260.0; 3],
            raw_veth: vec![200.0; 3],
            floor_mount: vec![100.0; 3],
            floor_veth: vec![10.0, 20.0, 30.0],
            floor_mount_data: "vers=4.2,port=2049,addr=10.0.0.1".into(),
            floor_mount_fstype: "nfs4".into(),
            move_total: vec![900.0; 3],
        };
        // CSI 130 / 100 and 130 / 260; CNI 200 / 20 and 200 / 200; both 330 / 120 and 330 / 460.
        assert_eq!(r.halves(), [(1.3, 0.5), (10.0, 1.0)]);
        assert!((r.ratio_floor() - 2.75).abs() < 1e-9 && (r.ratio() - 330.0 / 460.0).abs() < 1e-9);
        let t = r.table();
        assert!(t.contains("1.30x") && t.contains("0.50x") && t.contains("10.00x") && t.contains("2.75x"), "{t}");
        assert!(t.contains("-t nfs4 -o vers=4.2,port=2049,addr=10.0.0.1"), "{t}");
        let j = r.to_json();
        assert_eq!((j["ratios"]["cni"]["to_floor"].as_f64(), j["floor_ms"].as_f64()), (Some(10.0), Some(120.0)));
    }
}
