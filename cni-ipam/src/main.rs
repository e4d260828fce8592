//! `cni-ipam`: the IPAM plugin as a CNI binary, and the cluster admin
//! commands (`cni-ipam remove-host|blocks …`) when run with arguments and
//! no `CNI_COMMAND`.
#![no_main]

/// The C `main` (as `cni_core::plugin_main!` defines it, see there for why):
/// the plugin path is unchanged; only a missing `CNI_COMMAND` plus
/// arguments selects an admin command.
#[no_mangle]
pub extern "C" fn main(argc: i32, _argv: *const *const u8) -> i32 {
    if argc > 1 && std::env::var_os("CNI_COMMAND").is_none() {
        let args: Vec<String> = std::env::args().skip(1).collect();
        std::process::exit(cluster_ipam::cli::main(&args));
    }
    cni_core::skel::run(&cni_ipam::Ipam)
}
