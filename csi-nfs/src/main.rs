//! `csi-nfs`: serves the CSI Identity, Controller and Node services.

use csi_core::flags::{Defaults, ExtraFlag, Flags};

const DEFAULTS: Defaults = Defaults {
    program: "csi-nfs",
    driver_name: csi_nfs::DRIVER_NAME,
    extra: &[
        ExtraFlag {
            name: "mount-options",
            default: Some(""),
            help: "NFS mount options used when a request carries none, e.g. nfsvers=4.1,port=2049",
        },
        ExtraFlag {
            name: "nfs-idle-connections",
            default: Some("4"),
            help: "open NFS connections the controller keeps per share for reuse (0: connect for every call)",
        },
        ExtraFlag {
            name: "provisioner",
            default: Some("auto"),
            help: "NFS client of the controller: auto (libnfs, the kernel client for servers libnfs cannot speak to), libnfs or kernel",
        },
        ExtraFlag {
            name: "kernel-mount-dir",
            default: Some(csi_nfs::nfs::kernel::DEFAULT_MOUNT_DIR),
            help: "where the controller mounts shares when it provisions through the kernel NFS client",
        },
        ExtraFlag {
            name: "state-dir",
            default: Some("/var/lib/csi-nfs"),
            help: "where the controller remembers the shares it has volumes on (empty: nowhere)",
        },
    ],
};

fn main() {
    csi_core::server::abort_on_panic();
    let flags = Flags::from_env(&DEFAULTS);
    if let Err(e) = csi_core::flags::init_logging(&flags.log_level) {
        eprintln!("csi-nfs: {e}");
        std::process::exit(2);
    }
    match flags.extra("nfs-idle-connections").unwrap_or("4").parse::<usize>() {
        Ok(n) if n <= 64 => csi_nfs::nfs::pool::set_max_idle(n),
        _ => {
            eprintln!("csi-nfs: --nfs-idle-connections: expected a number from 0 to 64");
            std::process::exit(2);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("csi-nfs: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let provisioner = match flags.extra("provisioner").unwrap_or("auto").parse::<csi_nfs::Provisioner>() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("csi-nfs: --provisioner: {e}");
            std::process::exit(2);
        }
    };
    let config = csi_nfs::Config {
        mount_options: flags.extra("mount-options").unwrap_or_default().to_string(),
        state_dir: flags.extra("state-dir").filter(|d| !d.is_empty()).map(std::path::PathBuf::from),
        provisioner,
        kernel_mount_dir: flags.extra("kernel-mount-dir").filter(|d| !d.is_empty()).map(std::path::PathBuf::from),
    };
    let controller = csi_nfs::controller::ControllerService::new(config.clone());
    let mut registry = prom_endpoint::Registry::default();
    csi_nfs::register_metrics(&mut registry, &controller);
    let plugin = csi_core::server::Plugin {
        identity: csi_core::identity::Identity::new(&flags.driver_name).vendor_version(env!("CARGO_PKG_VERSION")),
        controller: Some(controller),
        node: Some(csi_nfs::node::NodeService::new(&flags.node_id, config)),
    };
    if let Err(e) = runtime.block_on(csi_core::server::run_with_metrics(&flags, plugin, registry)) {
        tracing::error!("{e}");
        eprintln!("csi-nfs: {e}");
        std::process::exit(1);
    }
}
