// libnfs (Debian's libnfs-dev): the controller's userspace NFS client.
fn main() {
    println!("cargo:rustc-link-lib=nfs");
}
