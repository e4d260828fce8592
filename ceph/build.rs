//! Links librados and librbd (Debian's librados-dev, librbd-dev) and
//! generates their Rust bindings from the installed headers with bindgen:
//! every signature, struct layout and constant the crate uses is the one
//! the installed library was built with, and a call that does not match the
//! header does not compile. Only what `src/` calls is generated (the
//! allowlists below).

use std::path::PathBuf;

const WRAPPER: &str = "\
#include <stdint.h>
#include <sys/types.h>
#include <sys/time.h>
#include <time.h>
#include <rados/librados.h>
#include <rbd/librbd.h>
";

/// The librados calls: connection, pools, omap objects, cls_lock, fencing,
/// monitor commands.
const RADOS_FUNCTIONS: &[&str] = &[
    "rados_create2",
    "rados_conf_set",
    "rados_connect",
    "rados_shutdown",
    "rados_pool_lookup",
    "rados_pool_reverse_lookup",
    "rados_ioctx_create",
    "rados_ioctx_destroy",
    "rados_remove",
    "rados_create_write_op",
    "rados_release_write_op",
    "rados_write_op_create",
    "rados_write_op_omap_cmp",
    "rados_write_op_omap_set",
    "rados_write_op_omap_rm_keys",
    "rados_write_op_operate",
    "rados_create_read_op",
    "rados_release_read_op",
    "rados_read_op_omap_get_vals_by_keys",
    "rados_read_op_omap_get_vals2",
    "rados_read_op_operate",
    "rados_omap_get_next2",
    "rados_omap_get_end",
    "rados_lock_exclusive",
    "rados_list_lockers",
    "rados_break_lock",
    "rados_exec",
    "rados_blocklist_add",
    "rados_getaddrs",
    "rados_mon_command",
    "rados_buffer_free",
];

/// The librbd calls: images, snapshots, clones, metadata, watchers.
const RBD_FUNCTIONS: &[&str] = &[
    "rbd_image_options_create",
    "rbd_image_options_destroy",
    "rbd_image_options_set_string",
    "rbd_image_options_set_uint64",
    "rbd_features_from_string",
    "rbd_create4",
    "rbd_clone3",
    "rbd_remove",
    "rbd_list2",
    "rbd_image_spec_list_cleanup",
    "rbd_open",
    "rbd_open_read_only",
    "rbd_close",
    "rbd_stat",
    "rbd_get_id",
    "rbd_get_features",
    "rbd_get_parent",
    "rbd_linked_image_spec_cleanup",
    "rbd_linked_image_spec_list_cleanup",
    "rbd_snap_spec_cleanup",
    "rbd_resize2",
    "rbd_watchers_list",
    "rbd_watchers_list_cleanup",
    "rbd_metadata_get",
    "rbd_metadata_set",
    "rbd_snap_create",
    "rbd_snap_remove",
    "rbd_snap_list",
    "rbd_snap_list_end",
    "rbd_snap_get_timestamp",
    "rbd_snap_get_namespace_type",
    "rbd_flatten",
    "rbd_read",
    "rbd_write",
    "rbd_list_children3",
];

const TYPES: &[&str] = &[
    "rados_t",
    "rados_ioctx_t",
    "rados_write_op_t",
    "rados_read_op_t",
    "rados_omap_iter_t",
    "rbd_image_t",
    "rbd_image_options_t",
    "rbd_image_info_t",
    "rbd_image_spec_t",
    "rbd_linked_image_spec_t",
    "rbd_snap_spec_t",
    "rbd_snap_info_t",
    "rbd_image_watcher_t",
    "rbd_snap_namespace_type_t",
    "librbd_progress_fn_t",
];

const VARS: &[&str] = &[
    "LIBRADOS_CREATE_.*",
    "LIBRADOS_CMPXATTR_OP_EQ",
    "LIBRADOS_LOCK_FLAG_MAY_RENEW",
    "LIBRADOS_LOCK_FLAG_RENEW",
    "RBD_IMAGE_OPTION_.*",
    "RBD_FEATURE_.*",
];

fn main() {
    println!("cargo:rustc-link-lib=rados");
    println!("cargo:rustc-link-lib=rbd");
    println!("cargo:rerun-if-changed=build.rs");
    for h in ["rados/librados.h", "rbd/librbd.h", "rbd/features.h"] {
        println!("cargo:rerun-if-changed=/usr/include/{h}");
    }
    let mut b = bindgen::Builder::default()
        .header_contents("ceph_wrapper.h", WRAPPER)
        .prepend_enum_name(false)
        .layout_tests(true)
        .derive_default(true)
        .generate_comments(false);
    for f in RADOS_FUNCTIONS.iter().chain(RBD_FUNCTIONS) {
        b = b.allowlist_function(f);
    }
    for t in TYPES {
        b = b.allowlist_type(t);
    }
    for v in VARS {
        b = b.allowlist_item(v);
    }
    let bindings = b.generate().unwrap_or_else(|e| {
        panic!("bindgen could not read the Ceph headers (apt-get install librados-dev librbd-dev libclang-dev): {e}")
    });
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("ceph.rs");
    bindings.write_to_file(&out).unwrap_or_else(|e| panic!("write {}: {e}", out.display()));
}
