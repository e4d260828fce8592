//! librados and librbd, as bindgen generated them from the installed
//! headers (see build.rs): the only raw FFI in the workspace.

#![allow(non_upper_case_globals, non_camel_case_types, non_snake_case, dead_code, unsafe_op_in_unsafe_fn)]
#![allow(clippy::all, clippy::undocumented_unsafe_blocks)]

include!(concat!(env!("OUT_DIR"), "/ceph.rs"));
