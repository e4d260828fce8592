//! Command line (clap): `cni`, `csi [list]`, `interop`, `bench cni|overlay|csi-nfs|csi-rbd|csi-cloud|migrate|bgp|policy`,
//! `demo [--overlay]`, `migrate`, `list`, `cleanup`, `completions SHELL`.
//! Tables and JSON go to stdout, progress to stderr. Exit codes: 0 ok, 1 checks
//! failed, 2 usage or setup error (clap's own usage errors included).
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use serde_json::{json, Value};

use crate::{bench, bench_bgp, bench_overlay, bench_policy, demo, migrate};
use cni_suite::checks::{catalog, Suite};
use cni_suite::interop::{self, own_dir};
use csi_core::flags::Endpoint;
use testkit::net;
use testkit::plugin::PluginSet;
use testkit::report::{self, CheckResult};
use testkit::util::R;

/// Conformance suites, interop checks, benchmarks and demos for CNI plugins and CSI drivers.
///
/// Needs root (except `csi`, `list` and `completions`). --plugin-dir defaults to the
/// directory of this binary. Exit status: 0 ok, 1 a check failed, 2 usage or setup error.
#[derive(Parser, Debug)]
#[command(name = "conformance", version, arg_required_else_help = true, args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the conformance checks against the plugin named by the config's "type".
    Cni(CniArgs),
    /// csi-sanity's specs against a CSI driver (unix:///path.sock or tcp://host:port).
    Csi(CsiArgs),
    /// Ours (cni-bridge, cni-ipam) mixed with / chained to the reference plugins.
    Interop(InteropArgs),
    /// Benchmarks, ours side by side with the reference or the raw operations.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Three containers on one bridge, pings, verified teardown; with --overlay,
    /// three lab hosts (one behind a router), etcd, cni-overlay agents, one container
    /// per host, pings, a VXLAN packet, verified teardown.
    Demo(DemoArgs),
    /// A container moves from host A to host B of a 3-host overlay lab with its
    /// csi-nfs volume (clean move, bad sequences, host A crashes); needs a kernel NFS
    /// client (scripts/guest/migrate.sh runs it in a guest kernel).
    Migrate(MigrateArgs),
    /// The migrated container's program (run by `migrate` inside the container).
    #[command(name = "migrate-workload", hide = true)]
    MigrateWorkload {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        tag: String,
        #[arg(long)]
        port: u16,
        #[arg(long)]
        bytes: usize,
    },
    /// The CNI checks and what they verify.
    List {
        /// One markdown table row per check.
        #[arg(long)]
        markdown: bool,
    },
    /// Remove leftovers of dead conformance runs.
    Cleanup,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Args, Debug)]
pub struct CniArgs {
    /// Where the plugin under test is.
    #[arg(long, value_name = "DIR")]
    pub plugin_dir: PathBuf,
    /// The network config (its "type" names the plugin).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Another directory for delegated (IPAM) plugins.
    #[arg(long, value_name = "DIR")]
    pub ipam_plugin_dir: Option<PathBuf>,
    /// Run only these checks (names or `prefix-*`; space- or comma-separated).
    #[arg(long, value_name = "NAME", num_args = 1.., value_delimiter = ',')]
    pub only: Vec<String>,
    /// JSON report instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct CsiArgs {
    #[command(subcommand)]
    pub list: Option<CsiList>,
    /// The driver's socket: unix:///path.sock or tcp://host:port.
    #[arg(long, value_name = "URL", required = true, value_parser = endpoint)]
    pub endpoint: Option<Endpoint>,
    /// A separate controller endpoint (default: --endpoint).
    #[arg(long, value_name = "URL", value_parser = endpoint)]
    pub controller_endpoint: Option<Endpoint>,
    /// CreateVolume parameters (JSON object or key=value lines).
    #[arg(long, value_name = "FILE")]
    pub params: Option<PathBuf>,
    /// Secrets for every RPC that takes them.
    #[arg(long, value_name = "FILE")]
    pub secrets: Option<PathBuf>,
    /// Where the node specs stage and publish.
    #[arg(long, value_name = "DIR")]
    pub mount_dir: Option<PathBuf>,
    /// Run only specs whose name contains this (repeatable).
    #[arg(long, value_name = "SUBSTR")]
    pub focus: Vec<String>,
    /// Skip specs whose name contains this (repeatable).
    #[arg(long, value_name = "SUBSTR")]
    pub skip: Vec<String>,
    /// Capacity asked for in CreateVolume.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(0..=i64::MAX as u64))]
    pub volume_size: Option<u64>,
    /// Capacity asked for in ControllerExpandVolume.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(0..=i64::MAX as u64))]
    pub expand_size: Option<u64>,
    /// Mutable parameters for ControllerModifyVolume.
    #[arg(long, value_name = "FILE")]
    pub mutable_params: Option<PathBuf>,
    /// Deadline of each RPC in seconds (at least 1).
    #[arg(long, value_name = "SECS")]
    pub rpc_timeout: Option<u64>,
    /// Filesystem type every mount capability asks for (default: none, the driver's default).
    #[arg(long, value_name = "TYPE")]
    pub fs_type: Option<String>,
}

/// csi-core's endpoint syntax; clap names the flag, so drop csi-core's own prefix.
fn endpoint(s: &str) -> Result<Endpoint, String> {
    s.parse::<Endpoint>().map_err(|e| {
        let m = e.to_string();
        m.split_once(": ").map(|(_, why)| why.to_string()).unwrap_or(m)
    })
}

#[derive(Subcommand, Debug)]
pub enum CsiList {
    /// The CSI specs and the capabilities each needs.
    List,
}

#[derive(Args, Debug)]
pub struct InteropArgs {
    /// Where our plugins are (default: this binary's directory).
    #[arg(long, value_name = "DIR")]
    pub plugin_dir: Option<PathBuf>,
    /// Where the reference plugins are.
    #[arg(long, value_name = "DIR", default_value = "/usr/lib/cni")]
    pub ref_dir: PathBuf,
    /// JSON report instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// ADD/DEL latency, ours vs reference, ipMasq off/on.
    Cni {
        /// ADDs (then DELs) per configuration.
        #[arg(long, default_value_t = 50)]
        n: usize,
        /// Where our plugins are (default: this binary's directory).
        #[arg(long, value_name = "DIR")]
        plugin_dir: Option<PathBuf>,
        /// Where the reference plugins are.
        #[arg(long, value_name = "DIR", default_value = "/usr/lib/cni")]
        ref_dir: PathBuf,
        /// JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// cni-overlay in a lab: route convergence of a joining host, iperf3 over the
    /// overlay vs a veth pair, allocations/s (etcd txn per IP vs local store).
    Overlay {
        /// Where cni-overlay is (default: this binary's directory).
        #[arg(long, value_name = "DIR")]
        plugin_dir: Option<PathBuf>,
        /// Lab sizes to measure convergence at (each 2..=200).
        #[arg(long, value_name = "N,N,...", value_delimiter = ',', default_value = "3,10,30",
              value_parser = clap::value_parser!(u16).range(2..=200))]
        hosts: Vec<u16>,
        /// Joins measured per lab size (at least 1).
        #[arg(long, default_value_t = 5)]
        joins: usize,
        /// Allocations per allocator (at least 1).
        #[arg(long, default_value_t = 2000)]
        allocs: usize,
        /// JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// csi-nfs vs the raw operations: CreateVolume/DeleteVolume vs NFS mkdir/rmdir
    /// (host, nfs-ganesha), NodePublish/Unpublish vs mount/umount (one guest kernel).
    #[command(name = "csi-nfs")]
    CsiNfs(BenchCsiArgs),
    /// csi-rbd vs the raw operations, in one guest kernel on a throwaway Ceph
    /// cluster: CreateVolume vs `rbd create`, NodeStage vs map + mkfs.ext4 + mount,
    /// NodePublish vs a bind mount, a migration between two node plugins vs
    /// umount + unmap + map + mount, DeleteVolume vs `rbd rm`.
    #[command(name = "csi-rbd")]
    CsiRbd(BenchCsiRbdArgs),
    /// csi-cloud vs the AWS SDK making the same requests to the same moto: controller
    /// call latency (CreateVolume, publish, unpublish, get, list, snapshot, delete) and
    /// snapshot export/import MiB/s vs a sequential SDK loop. Ratios and the goals.
    #[command(name = "csi-cloud")]
    CsiCloud(BenchCsiCloudArgs),
    /// Clean csi-nfs moves in the migration lab: our calls vs the same kernel work done
    /// in-process (kernel floor) and vs the exec'd mount/umount and ip commands, medians
    /// over N moves (needs a kernel NFS client).
    Migrate {
        /// Moves to measure (at least 1).
        #[arg(long, default_value_t = 5)]
        n: usize,
        /// Where cni-overlay and csi-nfs are (default: this binary's directory).
        #[arg(long, value_name = "DIR")]
        plugin_dir: Option<PathBuf>,
        /// The big file's size in MiB.
        #[arg(long, default_value_t = 4)]
        data_mib: usize,
        /// JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// cni-bgp's agent vs BIRD 2 receiving the same feed of N routes from a BIRD:
    /// time until all are in the kernel FIB, RSS, session establishment; and a
    /// node joining an iBGP full mesh (ours with etcd vs BIRDs). Ratios ours/BIRD.
    Bgp {
        /// Where cni-bgp is (default: this binary's directory).
        #[arg(long, value_name = "DIR")]
        plugin_dir: Option<PathBuf>,
        /// IPv4 /32 routes the feeder announces.
        #[arg(long, default_value_t = 100_000,
              value_parser = clap::value_parser!(u32).range(1..=bench_bgp::MAX_ROUTES as i64))]
        routes: u32,
        /// Rounds: each receiver (and each mesh) measured this many times.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=100))]
        n: u16,
        /// Mesh size for the join measurement, the joining node included (0: not measured).
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u16).range(0..=200))]
        mesh_hosts: u16,
        /// Measure only the BIRD baseline (no cni-bgp needed).
        #[arg(long)]
        bird_only: bool,
        /// JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// The policy engine (nftables) vs the same rules as a Felix-style iptables ruleset
    /// (iptables-restore + ipsets): full apply, one policy edit, one endpoint add; connections/s
    /// and iperf3 throughput with each against no policy. Ratios and the goals.
    Policy {
        /// Endpoints (2..=60000); two of them carry the traffic.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(2..=60_000))]
        endpoints: u32,
        /// Policy rules, about ten per policy (1..=100000).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        rules: u32,
        /// Rounds: every number is a median over them (1..=100).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=100))]
        n: u16,
        /// TCP connections per connection-rate sample (1..=20000).
        #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=20_000))]
        connects: u32,
        /// Seconds of each iperf3 run (1..=60).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=60))]
        iperf_secs: u32,
        /// One-byte round trips over an established connection per CPU sample (1..=1000000).
        #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        round_trips: u32,
        /// Only the iptables side and the no-policy numbers.
        #[arg(long)]
        baseline_only: bool,
        /// JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// Where cni-overlay and csi-nfs are (default: this binary's directory).
    #[arg(long, value_name = "DIR")]
    pub plugin_dir: Option<PathBuf>,
    /// Size of the data set's big file in MiB (three 64 KiB files come with it).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub data_mib: u16,
    /// Only the clean move (no bad sequences, no unclean move).
    #[arg(long)]
    pub clean_only: bool,
    /// JSON report on stdout instead of the summary.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct BenchCsiArgs {
    /// The csi-nfs binary (default: csi-nfs next to this binary).
    #[arg(long, value_name = "PATH")]
    pub driver: Option<PathBuf>,
    /// Operations per measurement.
    #[arg(long, default_value_t = 20)]
    pub n: usize,
    /// Skip the node half (no guest kernel).
    #[arg(long)]
    pub no_node: bool,
    /// JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Run only the guest's node half (scripts/guest/bench-csi-nfs.sh).
    #[arg(long, hide = true, requires_all = ["server", "port"])]
    pub node_only: bool,
    /// The NFS server, for --node-only.
    #[arg(long, hide = true)]
    pub server: Option<String>,
    /// The NFS server's port, for --node-only.
    #[arg(long, hide = true)]
    pub port: Option<u16>,
}

#[derive(Args, Debug)]
pub struct BenchCsiRbdArgs {
    /// The csi-rbd binary (default: csi-rbd next to this binary).
    #[arg(long, value_name = "PATH", conflicts_with = "raw_only")]
    pub driver: Option<PathBuf>,
    /// Rounds (1..=200); each creates, stages, publishes, moves and deletes one image per side.
    #[arg(long, default_value_t = 10)]
    pub n: usize,
    /// Each image's size in MiB (4..=4096).
    #[arg(long, default_value_t = 64)]
    pub size_mib: u64,
    /// Only the raw sequence (no driver): what the cluster and the guest kernel take.
    #[arg(long)]
    pub raw_only: bool,
    /// JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Run the guest half (scripts/guest/bench-csi-rbd.sh), files from the host in DIR.
    #[arg(long, hide = true, value_name = "DIR")]
    pub in_guest: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BenchCsiCloudArgs {
    /// The csi-cloud binary (default: csi-cloud next to this binary).
    #[arg(long, value_name = "PATH")]
    pub driver: Option<PathBuf>,
    /// Rounds (1..=100): each side's volume life, and one export and import each.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub n: u16,
    /// The transferred image's size in MiB (1..=4096).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub size_mib: u64,
    /// An emulated network round trip between the clients and moto, ms (0..=1000; 0: plain loopback).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub rtt_ms: u64,
    /// JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// The overlay demo instead of the bridge one.
    #[arg(long)]
    pub overlay: bool,
    /// Where the plugins are (default: this binary's directory).
    #[arg(long, value_name = "DIR")]
    pub plugin_dir: Option<PathBuf>,
    /// Another directory for the IPAM plugin.
    #[arg(long, value_name = "DIR", conflicts_with = "overlay")]
    pub ipam_plugin_dir: Option<PathBuf>,
    /// The bridge plugin's type.
    #[arg(long, default_value = "cni-bridge", conflicts_with = "overlay")]
    pub bridge_type: String,
    /// The IPAM plugin's type.
    #[arg(long, default_value = "cni-ipam", conflicts_with = "overlay")]
    pub ipam_type: String,
}

/// Entry point; returns the process exit code (0 ok, 1 checks failed, 2 usage/setup error).
pub fn main<I, T>(argv: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    match dispatch(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("conformance: {e}");
            2
        }
    }
}

fn need_root() -> R<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err("must run as root (creates network namespaces and bridges)".into())
    }
}

fn dispatch(cmd: Cmd) -> R<i32> {
    // The migrated container's program keeps the default SIGTERM (it dies
    // with its "container stop"); everything else finishes its check first.
    if !matches!(cmd, Cmd::MigrateWorkload { .. }) {
        testkit::util::install_interrupt_handler();
    }
    match cmd {
        Cmd::Cni(a) => {
            need_root()?;
            cmd_cni(a)
        }
        Cmd::Csi(CsiArgs { list: Some(CsiList::List), .. }) => {
            print!("{}", csi_suite::csi::list());
            Ok(0)
        }
        Cmd::Csi(a) => cmd_csi(a),
        Cmd::Interop(a) => {
            need_root()?;
            let ours = a.plugin_dir.unwrap_or_else(own_dir);
            let rs = interop::run_all(&ours, &a.ref_dir);
            let title = format!("CNI interop: ours {} / reference {}", ours.display(), a.ref_dir.display());
            emit(a.json, &title, json!({}), &[], &rs);
            Ok(i32::from(report::counts(&rs).1 > 0))
        }
        Cmd::Bench(BenchCmd::Cni { n, plugin_dir, ref_dir, json }) => {
            need_root()?;
            let r = bench::run(n, &plugin_dir.unwrap_or_else(own_dir), &ref_dir)?;
            if json {
                println!("{}", r.to_json());
            } else {
                print!("{}", r.table());
            }
            Ok(0)
        }
        Cmd::Bench(BenchCmd::Overlay { plugin_dir, hosts, joins, allocs, json }) => {
            need_root()?;
            let o = bench_overlay::Opts {
                plugin_dir: plugin_dir.unwrap_or_else(own_dir),
                hosts: hosts.into_iter().map(usize::from).collect(),
                joins: joins.max(1),
                allocs: allocs.max(1),
                iperf_secs: 3,
            };
            let r = bench_overlay::run(&o, &mut |l| eprintln!("{l}"))?;
            if json {
                println!("{}", r.to_json());
            } else {
                print!("{}", r.table());
            }
            Ok(0)
        }
        Cmd::Bench(BenchCmd::CsiNfs(a)) => {
            need_root()?;
            cmd_bench_csi(a)
        }
        Cmd::Bench(BenchCmd::CsiRbd(a)) => {
            need_root()?;
            cmd_bench_csi_rbd(a)
        }
        Cmd::Bench(BenchCmd::CsiCloud(a)) => {
            let driver = a.driver.unwrap_or_else(|| own_dir().join("csi-cloud"));
            let r = crate::bench_csi_cloud::run(&crate::bench_csi_cloud::Opts {
                driver,
                n: usize::from(a.n),
                size_mib: a.size_mib,
                rtt_ms: a.rtt_ms,
            })?;
            if a.json {
                println!("{}", r.to_json());
            } else {
                print!("{}", r.table());
            }
            Ok(0)
        }
        Cmd::Demo(a) if a.overlay => {
            need_root()?;
            let ok = demo::run_overlay(&a.plugin_dir.unwrap_or_else(own_dir), &mut |l| println!("{l}"))?;
            println!("{}", if ok { "demo: OK" } else { "demo: FAILED" });
            Ok(i32::from(!ok))
        }
        Cmd::Demo(a) => {
            need_root()?;
            let mut ps = PluginSet::new(a.plugin_dir.unwrap_or_else(own_dir));
            if let Some(d) = a.ipam_plugin_dir {
                ps = ps.with_dir(d);
            }
            let o = demo::DemoOpts { ps, bridge_type: a.bridge_type, ipam_type: a.ipam_type };
            let ok = demo::run(&o, &mut |l| println!("{l}"))?;
            println!("{}", if ok { "demo: OK" } else { "demo: FAILED" });
            Ok(i32::from(!ok))
        }
        Cmd::Migrate(a) => {
            need_root()?;
            let o = migrate::Opts {
                plugin_dir: a.plugin_dir.unwrap_or_else(own_dir),
                data_mib: usize::from(a.data_mib),
                unclean: !a.clean_only,
                bad: !a.clean_only,
            };
            let r = migrate::run(&o, &mut |l| eprintln!("{l}"))?;
            if a.json {
                println!("{}", r.to_json());
            } else {
                print!("{}", r.summary());
            }
            Ok(i32::from(!r.ok()))
        }
        Cmd::MigrateWorkload { dir, tag, port, bytes } => {
            migrate::workload::run(&dir, &tag, port, bytes)?;
            Ok(0)
        }
        Cmd::Bench(BenchCmd::Migrate { n, plugin_dir, data_mib, json }) => {
            need_root()?;
            let o = migrate::Opts {
                plugin_dir: plugin_dir.unwrap_or_else(own_dir),
                data_mib: data_mib.max(1),
                unclean: false,
                bad: false,
            };
            let r = migrate::bench::run(&o, n.max(1), &mut |l| eprintln!("{l}"))?;
            if json {
                println!("{}", r.to_json());
            } else {
                print!("{}", r.table());
            }
            Ok(0)
        }
        Cmd::Bench(BenchCmd::Bgp { plugin_dir, routes, n, mesh_hosts, bird_only, json }) => {
            need_root()?;
            let o = bench_bgp::Opts {
                plugin_dir: plugin_dir.unwrap_or_else(own_dir),
                routes: routes as usize,
                n: usize::from(n),
                mesh_hosts: usize::from(mesh_hosts),
                bird_only,
            };
            let r = bench_bgp::run(&o, &mut |l| eprintln!("{l}"))?;
            if json {
                println!("{}", r.to_json());
            } else {
                print!("{}", r.table());
            }
            Ok(0)
        }
        Cmd::Bench(BenchCmd::Policy {
            endpoints,
            rules,
            n,
            connects,
            iperf_secs,
            round_trips,
            baseline_only,
            json,
        }) => {
            need_root()?;
            let o = bench_policy::Opts {
                endpoints: endpoints as usize,
                rules: rules as usize,
                n: usize::from(n),
                connects: connects as usize,
                iperf_secs,
                round_trips: round_trips as usize,
                baseline_only,
            };
            let r = bench_policy::run(&o, &mut |l| eprintln!("{l}"))?;
            if json {
                println!("{}", r.to_json());
            } else {
                print!("{}", r.table());
            }
            Ok(0)
        }
        Cmd::List { markdown } => {
            for c in catalog() {
                if markdown {
                    println!("| `{}` | {} |", c.name, c.about);
                } else {
                    println!("{:<24} {}", c.name, c.about);
                }
            }
            Ok(0)
        }
        Cmd::Cleanup => {
            need_root()?;
            for r in net::sweep_dead_runs() {
                println!("removed {r}");
            }
            Ok(0)
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "conformance", &mut std::io::stdout());
            Ok(0)
        }
    }
}

fn cmd_csi(a: CsiArgs) -> R<i32> {
    let file = |k: &str, f: &Option<PathBuf>| -> R<Option<String>> {
        f.as_ref().map(|f| std::fs::read_to_string(f).map_err(|e| format!("--{k} {}: {e}", f.display()))).transpose()
    };
    let endpoint = a.endpoint.ok_or("--endpoint is required")?;
    let mut o = csi_suite::csi::Options::new(endpoint);
    o.controller_endpoint = a.controller_endpoint;
    if let Some(t) = file("params", &a.params)? {
        o.params = csi_suite::csi::config::parse_map(&t).map_err(|e| format!("--params: {e}"))?;
    }
    if let Some(t) = file("mutable-params", &a.mutable_params)? {
        o.mutable_params = csi_suite::csi::config::parse_map(&t).map_err(|e| format!("--mutable-params: {e}"))?;
    }
    if let Some(t) = file("secrets", &a.secrets)? {
        o.secrets = csi_suite::csi::config::parse_secrets(&t).map_err(|e| format!("--secrets: {e}"))?;
    }
    if let Some(t) = a.fs_type {
        o.fs_type = t;
    }
    if let Some(d) = a.mount_dir {
        o.mount_dir = d;
    }
    o.focus = a.focus;
    o.skip = a.skip;
    // The parser bounds both sizes to i64::MAX.
    if let Some(n) = a.volume_size {
        o.volume_size = i64::try_from(n).map_err(|e| format!("--volume-size: {e}"))?;
    }
    if let Some(n) = a.expand_size {
        o.expand_size = i64::try_from(n).map_err(|e| format!("--expand-size: {e}"))?;
    }
    if let Some(n) = a.rpc_timeout {
        o.rpc_timeout = Duration::from_secs(n.max(1));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("tokio: {e}"))?;
    let out = rt.block_on(csi_suite::csi::run(o))?;
    print!("{}", out.table());
    Ok(i32::from(out.failed() > 0))
}

fn cmd_cni(a: CniArgs) -> R<i32> {
    let cfg = a.config.display();
    let text = std::fs::read_to_string(&a.config).map_err(|e| format!("read {cfg}: {e}"))?;
    let base: Value = serde_json::from_str(&text).map_err(|e| format!("parse {cfg}: {e}"))?;
    let mut ps = PluginSet::new(&a.plugin_dir);
    if let Some(d) = &a.ipam_plugin_dir {
        ps = ps.with_dir(d);
    }
    let suite = Suite::new(ps, base)?;
    let only: Vec<String> = a.only.into_iter().filter(|x| !x.is_empty()).collect();
    let rs = suite.run(&only, true)?;
    let title = format!(
        "CNI conformance: plugin {} from {} (CNI_PATH {}), cniVersion {}, supports [{}]",
        suite.plugin_type,
        a.plugin_dir.display(),
        suite.ps.cni_path(),
        suite.version,
        suite.supported.join(" ")
    );
    let info = json!({
        "plugin": suite.plugin_type,
        "cniPath": suite.ps.cni_path(),
        "cniVersion": suite.version,
        "supportedVersions": suite.supported,
    });
    emit(a.json, &title, info, &suite.notes, &rs);
    Ok(i32::from(report::counts(&rs).1 > 0))
}

fn emit(json: bool, title: &str, info: Value, notes: &[String], rs: &[CheckResult]) {
    if json {
        println!("{}", report::to_json(title, info, notes, rs));
    } else {
        print!("{}", report::table(title, notes, rs));
    }
}

fn cmd_bench_csi(a: BenchCsiArgs) -> R<i32> {
    let driver = a.driver.unwrap_or_else(|| own_dir().join("csi-nfs"));
    if a.node_only {
        // The guest half (scripts/guest/bench-csi-nfs.sh); clap requires --server and --port.
        let server = a.server.ok_or("--node-only needs --server")?;
        let port = a.port.ok_or("--node-only needs --port")?;
        crate::bench_csi::node_only(&driver, &server, port, a.n)?;
        return Ok(0);
    }
    let r = crate::bench_csi::run(&crate::bench_csi::Opts { driver, n: a.n, node: !a.no_node })?;
    if a.json {
        println!("{}", r.to_json());
    } else {
        print!("{}", r.table());
    }
    Ok(0)
}

fn cmd_bench_csi_rbd(a: BenchCsiRbdArgs) -> R<i32> {
    let driver = (!a.raw_only).then(|| a.driver.unwrap_or_else(|| own_dir().join("csi-rbd")));
    if let Some(work) = a.in_guest {
        crate::bench_csi_rbd::in_guest(driver.as_deref(), &work, a.n, a.size_mib)?;
        return Ok(0);
    }
    let r = crate::bench_csi_rbd::run(&crate::bench_csi_rbd::Opts { driver, n: a.n, size_mib: a.size_mib })?;
    if a.json {
        println!("{}", r.to_json());
    } else {
        print!("{}", r.table());
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cmd, clap::Error> {
        Cli::try_parse_from(std::iter::once("conformance").chain(args.iter().copied())).map(|c| c.cmd)
    }

    #[test]
    fn the_clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn cni_takes_several_only_names_and_both_flag_forms() {
        let Cmd::Cni(a) =
            parse(&["cni", "--plugin-dir=/p", "--config", "c.json", "--only", "del-*", "gc-frees-invalid", "--json"])
                .unwrap()
        else {
            panic!("not cni")
        };
        assert_eq!(a.plugin_dir, PathBuf::from("/p"));
        assert_eq!(a.only, ["del-*", "gc-frees-invalid"]);
        assert!(a.json);
        let Cmd::Cni(a) = parse(&["cni", "--plugin-dir", "/p", "--config", "c", "--only", "a,b"]).unwrap() else {
            panic!("not cni")
        };
        assert_eq!(a.only, ["a", "b"]);
        // The last of a repeated flag wins, as before clap.
        let Cmd::Cni(a) = parse(&["cni", "--plugin-dir", "/a", "--plugin-dir", "/b", "--config", "c"]).unwrap() else {
            panic!("not cni")
        };
        assert_eq!(a.plugin_dir, PathBuf::from("/b"));
    }

    #[test]
    fn usage_errors_name_the_flag() {
        let e = parse(&["cni", "--config", "c"]).unwrap_err().to_string();
        assert!(e.contains("--plugin-dir"), "{e}");
        let e = parse(&["cni", "--plugin-dir", "/p", "--config", "c", "--bogus"]).unwrap_err().to_string();
        assert!(e.contains("--bogus"), "{e}");
        let e = parse(&["csi"]).unwrap_err().to_string();
        assert!(e.contains("--endpoint"), "{e}");
        let e = parse(&["csi", "--endpoint", "unix://relative.sock"]).unwrap_err().to_string();
        assert!(e.contains("absolute"), "{e}");
        let e = parse(&["bench", "overlay", "--hosts", "3,1"]).unwrap_err().to_string();
        assert!(e.contains("--hosts"), "{e}");
        let e = parse(&["bench", "cni", "--n", "x"]).unwrap_err().to_string();
        assert!(e.contains("--n"), "{e}");
        let e = parse(&["demo", "--overlay", "--bridge-type", "bridge"]).unwrap_err().to_string();
        assert!(e.contains("--bridge-type") && e.contains("--overlay"), "{e}");
        assert!(parse(&["bench"]).is_err());
        assert!(parse(&["bench", "csi-nfs", "--node-only", "--server", "10.0.2.2"]).is_err());
        assert!(parse(&["frobnicate"]).is_err());
    }

    #[test]
    fn every_command_parses_with_its_documented_flags() {
        let ok = |args: &[&str]| parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert!(matches!(ok(&["csi", "list"]), Cmd::Csi(CsiArgs { list: Some(CsiList::List), .. })));
        let Cmd::Csi(a) = ok(&[
            "csi",
            "--endpoint",
            "unix:///tmp/csi.sock",
            "--controller-endpoint",
            "tcp://10.0.0.5:10000",
            "--params",
            "p.json",
            "--secrets",
            "s",
            "--mount-dir",
            "/m",
            "--focus",
            "Node",
            "--focus",
            "Controller",
            "--skip",
            "x",
            "--volume-size",
            "1024",
            "--expand-size",
            "2048",
            "--mutable-params",
            "m",
            "--rpc-timeout",
            "5",
        ]) else {
            panic!("not csi")
        };
        assert_eq!(a.endpoint, Some(Endpoint::Unix("/tmp/csi.sock".into())));
        assert_eq!(a.focus, ["Node", "Controller"]);
        assert_eq!((a.volume_size, a.expand_size, a.rpc_timeout), (Some(1024), Some(2048), Some(5)));
        let Cmd::Interop(a) = ok(&["interop", "--plugin-dir", "/p", "--json"]) else { panic!() };
        assert_eq!(a.ref_dir, PathBuf::from("/usr/lib/cni"));
        let Cmd::Bench(BenchCmd::Cni { n, ref_dir, .. }) = ok(&["bench", "cni"]) else { panic!() };
        assert_eq!((n, ref_dir), (50, PathBuf::from("/usr/lib/cni")));
        let Cmd::Bench(BenchCmd::Overlay { hosts, joins, allocs, .. }) = ok(&["bench", "overlay"]) else { panic!() };
        assert_eq!((hosts, joins, allocs), (vec![3, 10, 30], 5, 2000));
        let Cmd::Bench(BenchCmd::Overlay { hosts, .. }) = ok(&["bench", "overlay", "--hosts", "3,4"]) else { panic!() };
        assert_eq!(hosts, [3, 4]);
        let Cmd::Bench(BenchCmd::CsiNfs(a)) = ok(&["bench", "csi-nfs", "--n", "20", "--driver", "/d", "--no-node"])
        else {
            panic!()
        };
        assert_eq!((a.n, a.no_node, a.node_only), (20, true, false));
        let Cmd::Bench(BenchCmd::CsiNfs(a)) =
            ok(&["bench", "csi-nfs", "--node-only", "--server", "10.0.2.2", "--port", "2049"])
        else {
            panic!()
        };
        assert_eq!((a.server.as_deref(), a.port), (Some("10.0.2.2"), Some(2049)));
        let Cmd::Bench(BenchCmd::CsiCloud(a)) = ok(&["bench", "csi-cloud"]) else { panic!() };
        assert_eq!((a.n, a.size_mib, a.rtt_ms, a.driver, a.json), (5, 128, 0, None, false));
        let Cmd::Bench(BenchCmd::CsiCloud(a)) =
            ok(&["bench", "csi-cloud", "--n", "1", "--size-mib", "16", "--rtt-ms", "20", "--driver", "/d", "--json"])
        else {
            panic!()
        };
        assert_eq!((a.n, a.size_mib, a.rtt_ms, a.driver, a.json), (1, 16, 20, Some(PathBuf::from("/d")), true));
        assert!(parse(&["bench", "csi-cloud", "--n", "0"]).is_err());
        let Cmd::Bench(BenchCmd::CsiRbd(a)) = ok(&["bench", "csi-rbd"]) else { panic!() };
        assert_eq!((a.n, a.size_mib, a.raw_only, a.driver), (10, 64, false, None));
        let Cmd::Bench(BenchCmd::CsiRbd(a)) = ok(&["bench", "csi-rbd", "--raw-only", "--n", "3", "--json"]) else {
            panic!()
        };
        assert!(a.raw_only && a.json && a.n == 3);
        assert!(parse(&["bench", "csi-rbd", "--raw-only", "--driver", "/d"]).is_err());
        let Cmd::Demo(a) =
            ok(&["demo", "--plugin-dir", "/usr/lib/cni", "--bridge-type", "bridge", "--ipam-type", "host-local"])
        else {
            panic!()
        };
        assert_eq!((a.overlay, a.bridge_type.as_str(), a.ipam_type.as_str()), (false, "bridge", "host-local"));
        let Cmd::Demo(a) = ok(&["demo", "--overlay", "--plugin-dir", "target/release"]) else { panic!() };
        assert!(a.overlay && a.bridge_type == "cni-bridge");
        let Cmd::Migrate(a) = ok(&["migrate", "--plugin-dir", "/p", "--data-mib", "8", "--json"]) else { panic!() };
        assert!(a.json && !a.clean_only && a.data_mib == 8);
        assert!(parse(&["migrate", "--data-mib", "0"]).is_err());
        let Cmd::Bench(BenchCmd::Bgp { routes, n, mesh_hosts, .. }) = ok(&["bench", "bgp"]) else { panic!() };
        assert_eq!((routes, n, mesh_hosts), (100_000, 3, 30));
        let Cmd::Bench(BenchCmd::Bgp { plugin_dir, routes, n, mesh_hosts, bird_only, json }) = ok(&[
            "bench",
            "bgp",
            "--plugin-dir",
            "/d",
            "--routes",
            "4194304",
            "--n",
            "5",
            "--mesh-hosts",
            "0",
            "--bird-only",
            "--json",
        ]) else {
            panic!()
        };
        assert_eq!(
            (plugin_dir, routes, n, mesh_hosts, bird_only, json),
            (Some("/d".into()), 4_194_304, 5, 0, true, true)
        );
        assert!(parse(&["bench", "bgp", "--routes", "0"]).is_err());
        assert!(parse(&["bench", "bgp", "--routes", "4194305"]).is_err());
        assert!(parse(&["bench", "bgp", "--mesh-hosts", "1000"]).is_err());
        let Cmd::Bench(BenchCmd::Policy {
            endpoints,
            rules,
            n,
            connects,
            iperf_secs,
            round_trips,
            baseline_only,
            json,
        }) = ok(&["bench", "policy"])
        else {
            panic!()
        };
        assert_eq!(
            (endpoints, rules, n, connects, iperf_secs, round_trips, baseline_only, json),
            (1000, 1000, 5, 2000, 5, 20_000, false, false)
        );
        let Cmd::Bench(BenchCmd::Policy { endpoints, rules, n, baseline_only, .. }) =
            ok(&["bench", "policy", "--endpoints", "10", "--rules", "20", "--n", "1", "--baseline-only"])
        else {
            panic!()
        };
        assert_eq!((endpoints, rules, n, baseline_only), (10, 20, 1, true));
        assert!(parse(&["bench", "policy", "--endpoints", "1"]).is_err());
        let Cmd::Bench(BenchCmd::Migrate { n, data_mib, .. }) = ok(&["bench", "migrate", "--n", "3"]) else { panic!() };
        assert_eq!((n, data_mib), (3, 4));
        assert!(matches!(ok(&["list", "--markdown"]), Cmd::List { markdown: true }));
        assert!(matches!(ok(&["cleanup"]), Cmd::Cleanup));
        assert!(matches!(ok(&["completions", "bash"]), Cmd::Completions { .. }));
    }
}
