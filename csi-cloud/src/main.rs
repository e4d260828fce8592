//! `csi-cloud`: serves the CSI Identity, Controller and Node services for
//! AWS EBS; `csi-cloud snapshot export|import` moves snapshot data through
//! the EBS direct APIs.

use csi_core::flags::{Defaults, ExtraFlag, Flags};

const DEFAULTS: Defaults = Defaults {
    program: "csi-cloud",
    driver_name: csi_cloud::DRIVER_NAME,
    extra: &[
        ExtraFlag {
            name: "aws-endpoint-url",
            default: Some(""),
            help: "EC2 and EBS endpoint, e.g. an emulator's http://127.0.0.1:5000 (empty: AWS_ENDPOINT_URL, else AWS's own)",
        },
        ExtraFlag {
            name: "default-zone",
            default: Some(""),
            help: "zone of volumes whose request names none (empty: AWS_AVAILABILITY_ZONE, else the region's first available zone)",
        },
        ExtraFlag {
            name: "extra-tags",
            default: Some(""),
            help: "tags for every volume and snapshot, key=value,key=value",
        },
    ],
};

fn main() {
    if std::env::args_os().nth(1).is_some_and(|a| a == "snapshot") {
        std::process::exit(csi_cloud::snapshot_io::cli::run(std::env::args_os().skip(2)));
    }
    // Hidden: the plain-SDK side of `conformance bench csi-cloud` (JSON lines on stdin/stdout).
    if std::env::args_os().nth(1).is_some_and(|a| a == "bench-baseline") {
        std::process::exit(csi_cloud::bench_baseline::run(std::env::args_os().skip(2)));
    }
    csi_core::server::abort_on_panic();
    let extra = Box::leak([DEFAULTS.extra, csi_cloud::node::FLAGS].concat().into_boxed_slice());
    let flags = Flags::from_env(&Defaults { extra, ..DEFAULTS });
    if let Err(e) = csi_core::flags::init_logging(&flags.log_level) {
        eprintln!("csi-cloud: {e}");
        std::process::exit(2);
    }
    let extra_tags = match csi_cloud::parse_tags(flags.extra("extra-tags").unwrap_or_default()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("csi-cloud: --extra-tags: {e}");
            std::process::exit(2);
        }
    };
    let config = csi_cloud::Config {
        driver_name: flags.driver_name.clone(),
        default_zone: flags.extra("default-zone").filter(|z| !z.is_empty()).map(str::to_string),
        extra_tags,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("csi-cloud: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let served = runtime.block_on(async {
        let controller = if flags.mode.controller() {
            let clients = csi_cloud::aws::Clients::load(flags.extra("aws-endpoint-url")).await?;
            Some(csi_cloud::controller::ControllerService::new(clients, config))
        } else {
            None
        };
        let node = if flags.mode.node() {
            // EC2 only for what the instance metadata does not say (the zone, off EC2).
            let ec2 = csi_cloud::aws::Clients::load(flags.extra("aws-endpoint-url")).await.ok();
            Some(csi_cloud::node::Node::start(&flags, ec2.as_ref().map(|c| &c.ec2)).await?)
        } else {
            None
        };
        let plugin = csi_core::server::Plugin {
            identity: csi_core::identity::Identity::new(&flags.driver_name)
                .vendor_version(env!("CARGO_PKG_VERSION"))
                .accessibility_constraints(true)
                .volume_expansion(csi_core::pb::plugin_capability::volume_expansion::Type::Online),
            controller,
            node,
        };
        csi_core::server::run_with_metrics(&flags, plugin, prom_endpoint::Registry::default())
            .await
            .map_err(csi_cloud::Error::from)
    });
    if let Err(e) = served {
        tracing::error!("{e}");
        eprintln!("csi-cloud: {e}");
        std::process::exit(1);
    }
}
