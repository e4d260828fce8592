//! `conformance bench migrate`: the time our calls take in a clean move,
//! against the raw operations they perform, measured in the same lab and
//! run: one NFS mount + umount of the same export, and one veth pair
//! created (moved into a container netns, addressed, routed, up) and
//! deleted. Medians over N moves (the pod goes A -> B -> A ...).

use serde_json::{json, Value};
use std::fmt::Write as _;

use testkit::util::{median_p90, R};
use testkit::{bail, ensure};

use super::{Opts, World};

/// Medians (ms) over the moves.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub n: usize,
    pub ours: Vec<f64>,
    pub ours_csi: Vec<f64>,
    pub ours_cni: Vec<f64>,
    pub raw_mount: Vec<f64>,
    pub raw_veth: Vec<f64>,
    pub move_total: Vec<f64>,
}

fn med(v: &[f64]) -> f64 {
    median_p90(v).0
}

impl BenchReport {
    fn raw(&self) -> f64 {
        med(&self.raw_mount) + med(&self.raw_veth)
    }

    /// Our calls' median over the raw operations' median.
    pub fn ratio(&self) -> f64 {
        med(&self.ours) / self.raw().max(1e-9)
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "bench migrate: {} clean csi-nfs moves over cni-overlay (medians, ms)", self.n);
        let _ = writeln!(s, "  our calls per move            {:>9.1}", med(&self.ours));
        let _ = writeln!(s, "    CSI (NodeUnpublish+Publish) {:>9.1}", med(&self.ours_csi));
        let _ = writeln!(s, "    CNI (DEL on A + ADD on B)   {:>9.1}", med(&self.ours_cni));
        let _ = writeln!(s, "  raw operations                {:>9.1}", self.raw());
        let _ = writeln!(s, "    mount + umount, same export {:>9.1}", med(&self.raw_mount));
        let _ = writeln!(s, "    veth create+addr+route+del  {:>9.1}", med(&self.raw_veth));
        let _ = writeln!(s, "  ratio ours / raw              {:>9.2}x (goal <= 1.2x)", self.ratio());
        let _ = writeln!(s, "  whole move incl. container    {:>9.1}", med(&self.move_total));
        let _ = writeln!(s, "  our time for a clean move     {:>9.1} (goal < 2000 ms)", med(&self.ours));
        s
    }

    pub fn to_json(&self) -> Value {
        json!({
            "n": self.n,
            "ours_ms": med(&self.ours),
            "ours_csi_ms": med(&self.ours_csi),
            "ours_cni_ms": med(&self.ours_cni),
            "raw_ms": self.raw(),
            "raw_mount_umount_ms": med(&self.raw_mount),
            "raw_veth_ms": med(&self.raw_veth),
            "ratio": self.ratio(),
            "move_total_ms": med(&self.move_total),
            "samples": {"ours": self.ours, "raw_mount": self.raw_mount, "raw_veth": self.raw_veth},
        })
    }
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
    let opts = format!("port={}", w.backend.server().port());
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
        rep.raw_mount.push(m);
        rep.raw_veth.push(v);
        out(&format!(
            "move {}/{n}: ours {:.1} ms (CSI {csi:.1}, CNI {cni:.1}), raw mount+umount {m:.1} ms, raw veth {v:.1} ms",
            i + 1,
            mv.ours_ms()
        ));
    }
    w.finish(&mut pod)?;
    Ok(rep)
}
