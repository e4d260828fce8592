//! `csi-rbd`: serves the CSI Identity, Controller and Node services for
//! Ceph RBD volumes; `csi-rbd takeover …` is the admin command that fences
//! a dead node and frees its volume (docs/csi-rbd.md).

use std::time::Duration;

use csi_core::flags::{Defaults, ExtraFlag, Flags};

const DEFAULTS: Defaults = Defaults {
    program: "csi-rbd",
    driver_name: csi_rbd::DRIVER_NAME,
    extra: &[
        ExtraFlag {
            name: "cluster-config",
            default: Some(csi_rbd::DEFAULT_CLUSTER_CONFIG),
            help: "ceph-csi's config.json: a list of {\"clusterID\", \"monitors\"}",
        },
        ExtraFlag {
            name: "ceph-timeout",
            default: Some("10"),
            help: "seconds the controller's connection to a cluster, or one Ceph call, may take (1 to 300)",
        },
        ExtraFlag {
            name: "max-clone-depth",
            default: Some("4"),
            help: "the longest clone chain a snapshot, restore or clone may make; a longer one is flattened before the call returns (0 to 16; 0: flatten every clone)",
        },
        ExtraFlag {
            name: "state-dir",
            default: Some("/var/lib/csi-rbd"),
            help: "where the node keeps its stage records (what is mapped and mounted where)",
        },
        ExtraFlag {
            name: "max-volumes",
            default: Some("0"),
            help: "NodeGetInfo's max_volumes_per_node (0: no limit stated)",
        },
    ],
};

fn number(flags: &Flags, name: &str, range: std::ops::RangeInclusive<u64>) -> u64 {
    match flags.extra(name).unwrap_or_default().parse::<u64>() {
        Ok(n) if range.contains(&n) => n,
        _ => {
            eprintln!("csi-rbd: --{name}: expected a number from {} to {}", range.start(), range.end());
            std::process::exit(2);
        }
    }
}

fn main() {
    csi_core::server::abort_on_panic();
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("takeover") {
        std::process::exit(csi_rbd::takeover::main(&args[2..]));
    }
    let flags = Flags::from_env(&DEFAULTS);
    if let Err(e) = csi_core::flags::init_logging(&flags.log_level) {
        eprintln!("csi-rbd: {e}");
        std::process::exit(2);
    }
    let config_path =
        std::path::PathBuf::from(flags.extra("cluster-config").unwrap_or(csi_rbd::DEFAULT_CLUSTER_CONFIG));
    // The controller reads the cluster config on every lookup (a ConfigMap
    // updated in place needs no restart); the node loads it at start.
    let node = if flags.mode.node() {
        let clusters = match csi_rbd::config::ClusterConfig::load(&config_path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("csi-rbd: --cluster-config: {e}");
                std::process::exit(2);
            }
        };
        let max_volumes = match flags.extra("max-volumes").unwrap_or("0").parse::<i64>() {
            Ok(n) if n >= 0 => n,
            _ => {
                eprintln!("csi-rbd: --max-volumes: expected a number >= 0");
                std::process::exit(2);
            }
        };
        Some(csi_rbd::node::Node::new(csi_rbd::node::NodeConfig {
            node_id: flags.node_id.clone(),
            state_dir: std::path::PathBuf::from(flags.extra("state-dir").unwrap_or("/var/lib/csi-rbd")),
            clusters,
            max_volumes,
        }))
    } else {
        None
    };
    let config = csi_rbd::Config {
        cluster_config: config_path,
        ceph_timeout: Duration::from_secs(number(&flags, "ceph-timeout", 1..=300)),
        max_clone_depth: number(&flags, "max-clone-depth", 0..=16) as u32,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("csi-rbd: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let controller = csi_rbd::controller::ControllerService::new(config);
    let mut registry = prom_endpoint::Registry::default();
    csi_rbd::register_metrics(&mut registry, &controller);
    let plugin = csi_core::server::Plugin {
        identity: csi_core::identity::Identity::new(&flags.driver_name).vendor_version(env!("CARGO_PKG_VERSION")),
        controller: Some(controller),
        node,
    };
    if let Err(e) = runtime.block_on(csi_core::server::run_with_metrics(&flags, plugin, registry)) {
        tracing::error!("{e}");
        eprintln!("csi-rbd: {e}");
        std::process::exit(1);
    }
}
