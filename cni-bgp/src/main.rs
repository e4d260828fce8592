//! `cni-bgp`: the CNI plugin when CNI_COMMAND is set. The agent and CLI
//! subcommands (issue #13 items 2 and 4) are not part of this binary yet.

fn main() {
    if std::env::var_os("CNI_COMMAND").is_some() {
        cni_core::skel::run(&cni_bgp::plugin::Bgp);
    }
    eprintln!("cni-bgp: run as a CNI plugin (set CNI_COMMAND); the agent and CLI subcommands are not implemented yet");
    std::process::exit(2);
}
