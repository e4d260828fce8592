//! `csi-cloud`: serves the CSI Identity and Controller services for AWS EBS
//! (the Node service joins with the node side).

use csi_core::flags::{Defaults, ExtraFlag, Flags};
use csi_core::pb::node_server::Node;

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

/// No Node service in this build: `--mode node` serves Identity only.
enum NoNode {}

impl Node for NoNode {}

fn main() {
    let flags = Flags::from_env(&DEFAULTS);
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
        let plugin = csi_core::server::Plugin {
            identity: csi_core::identity::Identity::new(&flags.driver_name)
                .vendor_version(env!("CARGO_PKG_VERSION"))
                .accessibility_constraints(true)
                .volume_expansion(csi_core::pb::plugin_capability::volume_expansion::Type::Online),
            controller,
            node: None::<NoNode>,
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
