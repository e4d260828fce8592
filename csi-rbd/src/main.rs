//! `csi-rbd`: serves the CSI Identity, Controller and Node services for
//! Ceph RBD volumes.

fn main() {
    eprintln!("csi-rbd: the controller and node services are being built (issue #12)");
    std::process::exit(2);
}
