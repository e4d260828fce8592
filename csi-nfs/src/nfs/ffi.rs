//! libnfs's C API: generated at build time by bindgen from the installed
//! headers (`build.rs`: `/usr/include/nfsc/*.h`), so the struct layouts,
//! enum values and signatures are the installed library's own, checked by
//! bindgen's layout tests. Only the functions and types the safe client in
//! [`super`] uses are generated. Nothing here is safe to call directly;
//! [`super::Client`] is the only user.

#![allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code,
    unsafe_op_in_unsafe_fn,
    rust_2018_idioms,
    clippy::all
)]

include!(concat!(env!("OUT_DIR"), "/libnfs.rs"));
