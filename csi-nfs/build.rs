//! Links libnfs (Debian's libnfs-dev) and generates its Rust bindings from
//! the installed headers with bindgen, so every struct layout and constant
//! the controller uses is the one the installed library was built with.
//! Only what `src/nfs` calls is generated (the allowlists below).

use std::path::PathBuf;

/// The headers, in the order they must be included (libnfs-raw-nfs4.h
/// needs the ZDR types of libnfs-zdr.h, pulled in by libnfs-raw.h).
const WRAPPER: &str = "\
#include <stdint.h>
#include <sys/types.h>
#include <sys/time.h>
#include <nfsc/libnfs.h>
#include <nfsc/libnfs-raw.h>
#include <nfsc/libnfs-raw-nfs.h>
#include <nfsc/libnfs-raw-nfs4.h>
";

/// The synchronous libnfs calls the client makes, and the raw-RPC calls of
/// its own NFSv4 COMPOUND (SETATTR).
const FUNCTIONS: &[&str] = &[
    "nfs_init_context",
    "nfs_destroy_context",
    "nfs_get_error",
    "nfs_parse_url_dir",
    "nfs_destroy_url",
    "nfs_set_version",
    "nfs_set_timeout",
    "nfs_set_autoreconnect",
    "nfs_umask",
    "nfs4_set_client_name",
    "nfs_set_uid",
    "nfs_set_gid",
    "nfs_set_tcp_syncnt",
    "nfs_get_readmax",
    "nfs_get_writemax",
    "nfs_mount",
    "nfs_mkdir2",
    "nfs_rmdir",
    "nfs_unlink",
    "nfs_stat64",
    "nfs_lstat64",
    "nfs_chmod",
    "nfs_chown",
    "nfs_lchown",
    "nfs_rename",
    "nfs_opendir",
    "nfs_readdir",
    "nfs_closedir",
    "nfs_open",
    "nfs_create",
    "nfs_close",
    "nfs_pread",
    "nfs_pwrite",
    "nfs_statvfs64",
    "nfs_readlink2",
    "nfs_symlink",
    "nfs_get_rpc_context",
    "rpc_get_fd",
    "rpc_which_events",
    "rpc_service",
    "rpc_get_error",
    "rpc_nfs4_compound_async",
];

const TYPES: &[&str] = &[
    "nfs_stat_64",
    "nfs_statvfs_64",
    "nfsdirent",
    "nfs_url",
    "COMPOUND4args",
    "COMPOUND4res",
    "nfs_argop4",
    "SETATTR4args",
    "LOOKUP4args",
    "nfs_opnum4",
    "nfsstat4",
    "ftype3",
];

fn main() {
    println!("cargo:rustc-link-lib=nfs");
    println!("cargo:rerun-if-changed=build.rs");
    for h in ["libnfs.h", "libnfs-raw.h", "libnfs-raw-nfs.h", "libnfs-raw-nfs4.h", "libnfs-zdr.h"] {
        println!("cargo:rerun-if-changed=/usr/include/nfsc/{h}");
    }
    let mut b = bindgen::Builder::default()
        .header_contents("csi_nfs_libnfs.h", WRAPPER)
        // Enum values as plain constants named as in C (OP_LOOKUP, NF3DIR,
        // NFS4ERR_ISDIR), typed as the enum's integer.
        .prepend_enum_name(false)
        .allowlist_var("RPC_STATUS_.*")
        .allowlist_var("FATTR4_MODE|FATTR4_OWNER|FATTR4_OWNER_GROUP")
        .layout_tests(true)
        .derive_default(true)
        .generate_comments(false);
    for f in FUNCTIONS {
        b = b.allowlist_function(f);
    }
    for t in TYPES {
        b = b.allowlist_type(t);
    }
    let bindings = b.generate().unwrap_or_else(|e| {
        panic!("bindgen could not read the libnfs headers (apt-get install libnfs-dev libclang-dev): {e}")
    });
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("libnfs.rs");
    bindings.write_to_file(&out).unwrap_or_else(|e| panic!("write {}: {e}", out.display()));
}
