fn main() {
    cni_core::skel::run(&cni_bridge::Bridge)
}
