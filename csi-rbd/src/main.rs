//! `csi-rbd`: serves the CSI Identity, Controller and Node services for
//! Ceph RBD volumes.

use std::time::Duration;

use csi_core::flags::{Defaults, ExtraFlag, Flags};

const DEFAULTS: Defaults = Defaults {
    program: "csi-rbd",
    driver_name: csi_rbd::DRIVER_NAME,
    extra: &[
        ExtraFlag {
            name: "cluster-config",
            default: Some(csi_rbd::DEFAULT_CLUSTER_CONFIG),
            help: "ceph-csi's config.json: a list of {\"clusterID\", \"monitors\"}, read on every lookup",
        },
        ExtraFlag {
            name: "ceph-timeout",
            default: Some("10"),
            help: "seconds a connection to a cluster, or one Ceph call, may take (1 to 300)",
        },
        ExtraFlag {
            name: "rbd-soft-max-clone-depth",
            default: Some("4"),
            help: "a clone deeper than this is flattened in the background after CreateVolume",
        },
        ExtraFlag {
            name: "rbd-hard-max-clone-depth",
            default: Some("8"),
            help: "a clone deeper than this is flattened before CreateVolume returns",
        },
    ],
};

/// Until the node service exists on this branch: the Node service is not
/// served (`--mode node` serves Identity only).
#[derive(Debug)]
struct NoNode;

impl csi_core::pb::node_server::Node for NoNode {}

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
    let flags = Flags::from_env(&DEFAULTS);
    if let Err(e) = csi_core::flags::init_logging(&flags.log_level) {
        eprintln!("csi-rbd: {e}");
        std::process::exit(2);
    }
    let config = csi_rbd::Config {
        cluster_config: flags.extra("cluster-config").unwrap_or(csi_rbd::DEFAULT_CLUSTER_CONFIG).into(),
        ceph_timeout: Duration::from_secs(number(&flags, "ceph-timeout", 1..=300)),
        soft_max_clone_depth: number(&flags, "rbd-soft-max-clone-depth", 1..=64) as u32,
        hard_max_clone_depth: number(&flags, "rbd-hard-max-clone-depth", 1..=64) as u32,
    };
    if config.soft_max_clone_depth > config.hard_max_clone_depth {
        eprintln!("csi-rbd: --rbd-soft-max-clone-depth must not exceed --rbd-hard-max-clone-depth");
        std::process::exit(2);
    }
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
        node: None::<NoNode>,
    };
    if let Err(e) = runtime.block_on(csi_core::server::run_with_metrics(&flags, plugin, registry)) {
        tracing::error!("{e}");
        eprintln!("csi-rbd: {e}");
        std::process::exit(1);
    }
}
