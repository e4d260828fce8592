//! `cni-ipam`: the host-local compatible IPAM plugin as a CNI binary.
#![no_main]
cni_core::plugin_main!(ipam::Ipam);
