#![no_main]
cni_core::plugin_main!(cni_bridge::Bridge);
