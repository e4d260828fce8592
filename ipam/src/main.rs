//! `cni-ipam`: the host-local compatible IPAM plugin as a CNI binary, and
//! the cluster admin commands (`cni-ipam remove-host|blocks …`) when run
//! with arguments and no `CNI_COMMAND`.
#![no_main]

/// The C `main` (as `cni_core::plugin_main!` defines it, see there for why):
/// the plugin path is unchanged; only a missing `CNI_COMMAND` plus
/// arguments selects an admin command.
#[no_mangle]
pub extern "C" fn main(argc: i32, _argv: *const *const u8) -> i32 {
    if argc > 1 && std::env::var_os("CNI_COMMAND").is_none() {
        let args: Vec<String> = std::env::args().skip(1).collect();
        #[cfg(feature = "cluster")]
        std::process::exit(ipam::cluster::blocks::cli::main(&args));
        #[cfg(not(feature = "cluster"))]
        {
            eprintln!("cni-ipam: admin commands {args:?} need the \"cluster\" feature");
            std::process::exit(1);
        }
    }
    cni_core::skel::run(&ipam::Ipam)
}
