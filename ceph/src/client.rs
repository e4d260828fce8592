//! The librados/librbd implementation of [`Rbd`]: one `rados_t` per
//! connection, shared by all threads (librados serialises internally); a
//! pool context (`rados_ioctx_t`) and image handle (`rbd_image_t`) per
//! call, released on every path by their Drop.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::error::check;
use crate::sys;
use crate::{
    ConnectSpec, Error, Guard, ImageInfo, ImageOptions, Locker, ParentSpec, PoolStats, Rbd, Result, SnapInfo, Watcher,
};

/// Connects to the cluster as `client.<user>` with the key, monitors and
/// timeouts of `spec` only: no ceph.conf is read, nothing from the
/// environment. Fails with PermissionDenied on a wrong key and Timeout
/// when no monitor answers within `spec.timeout`.
pub fn connect(spec: &ConnectSpec) -> Result<Arc<dyn Rbd>> {
    Ok(Arc::new(Client::connect(spec)?))
}

/// A connected cluster handle.
pub struct Client {
    cluster: sys::rados_t,
    monitors: String,
    user: String,
}

// SAFETY: a connected rados_t is documented as safe to use from many
// threads at once (librados locks internally); we never mutate it after
// connect, and shutdown happens once, in Drop, when no call can be running.
unsafe impl Send for Client {}
// SAFETY: as above.
unsafe impl Sync for Client {}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ceph::Client(client.{} @ {})", self.user, self.monitors)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // SAFETY: cluster came from rados_create2 and is shut down only here.
        unsafe { sys::rados_shutdown(self.cluster) };
    }
}

/// A NUL-terminated copy of `s`; a NUL inside is InvalidArgument.
pub(crate) fn cstr(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::InvalidArgument(format!("{what} {s:?} contains a NUL byte")))
}

/// Whole seconds for a Ceph timeout option: rounded up, at least 1.
fn timeout_secs(d: Duration) -> u64 {
    (d.as_millis().div_ceil(1000) as u64).max(1)
}

impl Client {
    fn connect(spec: &ConnectSpec) -> Result<Client> {
        if spec.monitors.is_empty() {
            return Err(Error::InvalidArgument("connect: no monitors given".into()));
        }
        if spec.user.is_empty() || spec.user.starts_with("client.") {
            return Err(Error::InvalidArgument(format!(
                "connect: user {:?} must be the name without \"client.\"",
                spec.user
            )));
        }
        let monitors = spec.monitors.join(",");
        let entity = cstr("user", &format!("client.{}", spec.user))?;
        let cluster_name = cstr("cluster", "ceph")?;
        let mut cluster: sys::rados_t = ptr::null_mut();
        let op = format!("connect to {monitors} as client.{}", spec.user);
        // SAFETY: out-pointer to our local; both strings are valid C strings
        // for the duration of the call (librados copies them).
        let rc = unsafe { sys::rados_create2(&mut cluster, cluster_name.as_ptr(), entity.as_ptr(), 0) };
        check(rc.into(), || format!("{op}: create handle"))?;
        // From here the handle is shut down by Client's Drop on every path.
        let client = Client { cluster, monitors: monitors.clone(), user: spec.user.clone() };
        let secs = timeout_secs(spec.timeout).to_string();
        let settings: [(&str, &str); 10] = [
            ("mon_host", &monitors),
            ("key", &spec.key),
            // No keyring file: the key above is the only credential.
            ("keyring", ""),
            ("client_mount_timeout", &secs),
            ("rados_mon_op_timeout", &secs),
            ("rados_osd_op_timeout", &secs),
            // Errors come back as our Error; librados prints nothing.
            ("log_to_stderr", "false"),
            ("err_to_stderr", "false"),
            ("log_file", ""),
            ("admin_socket", ""),
        ];
        for (k, v) in settings {
            let ck = cstr("option", k)?;
            // The key is never put in an error message.
            let shown = if k == "key" { "<redacted>" } else { v };
            let cv = cstr(&format!("option {k}"), v)?;
            // SAFETY: cluster is a created, not yet connected handle; both
            // strings live across the call (librados copies them).
            let rc = unsafe { sys::rados_conf_set(client.cluster, ck.as_ptr(), cv.as_ptr()) };
            check(rc.into(), || format!("{op}: set {k}={shown}"))?;
        }
        let started = Instant::now();
        // SAFETY: a configured handle; connect blocks at most about
        // client_mount_timeout (measured in tests/errors.rs).
        let rc = unsafe { sys::rados_connect(client.cluster) };
        if rc < 0 {
            let errno = -rc;
            let took = started.elapsed();
            return Err(match errno {
                libc::ETIMEDOUT | libc::EINTR => {
                    Error::Timeout(format!("{op}: no monitor answered within {took:.1?} (timeout {secs} s)"))
                }
                libc::EACCES | libc::EPERM => {
                    Error::PermissionDenied(format!("{op}: authentication failed (wrong key or unknown user)"))
                }
                _ => Error::from_errno(&op, errno),
            });
        }
        tracing::debug!(monitors = %client.monitors, user = %client.user, took = ?started.elapsed(), "connected to ceph");
        Ok(client)
    }

    fn ioctx(&self, pool: &str) -> Result<IoCtx> {
        let cpool = cstr("pool", pool)?;
        let mut io: sys::rados_ioctx_t = ptr::null_mut();
        // SAFETY: connected cluster, valid C string, out-pointer to a local.
        let rc = unsafe { sys::rados_ioctx_create(self.cluster, cpool.as_ptr(), &mut io) };
        check(rc.into(), || format!("open pool {pool}"))?;
        Ok(IoCtx(io))
    }

    fn open_image(&self, io: &IoCtx, pool: &str, name: &str, mode: Open<'_>) -> Result<Image> {
        let cname = cstr("image", name)?;
        let csnap = match mode {
            Open::Snap(s) => Some(cstr("snapshot", s)?),
            _ => None,
        };
        let mut img: sys::rbd_image_t = ptr::null_mut();
        // SAFETY: io is a live pool context, the strings live across the
        // call, img is an out-pointer to a local.
        let rc = unsafe {
            match mode {
                Open::ReadWrite => sys::rbd_open(io.0, cname.as_ptr(), &mut img, ptr::null()),
                Open::ReadOnly => sys::rbd_open_read_only(io.0, cname.as_ptr(), &mut img, ptr::null()),
                Open::Snap(_) => sys::rbd_open_read_only(
                    io.0,
                    cname.as_ptr(),
                    &mut img,
                    csnap.as_ref().map_or(ptr::null(), |s| s.as_ptr()),
                ),
            }
        };
        check(rc.into(), || match mode {
            Open::Snap(s) => format!("open image {pool}/{name}@{s}"),
            _ => format!("open image {pool}/{name}"),
        })?;
        Ok(Image(img))
    }

    fn image_options(&self, op: &str, opts: &ImageOptions, clone_v2: bool) -> Result<ImageOpts> {
        let o = ImageOpts::new();
        o.set_u64(op, sys::RBD_IMAGE_OPTION_FORMAT, 2)?;
        if clone_v2 {
            o.set_u64(op, sys::RBD_IMAGE_OPTION_CLONE_FORMAT, 2)?;
        }
        if !opts.features.is_empty() {
            o.set_u64(op, sys::RBD_IMAGE_OPTION_FEATURES, features_from_names(&opts.features)?)?;
        }
        if let Some(order) = opts.order {
            o.set_u64(op, sys::RBD_IMAGE_OPTION_ORDER, order.into())?;
        }
        if let Some(dp) = &opts.data_pool {
            o.set_string(op, sys::RBD_IMAGE_OPTION_DATA_POOL, dp)?;
        }
        Ok(o)
    }

    fn mon_command(&self, op: &str, cmd: &str) -> Result<Vec<u8>> {
        let ccmd = cstr("mon command", cmd)?;
        let cmds = [ccmd.as_ptr()];
        let mut out: *mut c_char = ptr::null_mut();
        let mut out_len: usize = 0;
        let mut outs: *mut c_char = ptr::null_mut();
        let mut outs_len: usize = 0;
        // SAFETY: one valid command string, no input buffer; librados
        // allocates out/outs, freed below on every path.
        let rc = unsafe {
            sys::rados_mon_command(
                self.cluster,
                cmds.as_ptr() as *mut *const c_char,
                1,
                ptr::null(),
                0,
                &mut out,
                &mut out_len,
                &mut outs,
                &mut outs_len,
            )
        };
        // SAFETY: out/outs are null or librados buffers of the given lengths.
        let (data, status) = unsafe { (take_buffer(out, out_len), take_buffer(outs, outs_len)) };
        if rc < 0 {
            let status = String::from_utf8_lossy(&status).into_owned();
            let status = if status.is_empty() { String::new() } else { format!(": {status}") };
            return Err(Error::from_errno(&format!("{op} (monitor command {cmd}{status})"), -rc));
        }
        Ok(data)
    }
}

/// Copies and frees a buffer librados allocated.
///
/// # Safety
/// `buf` is null or was allocated by librados with `len` bytes.
unsafe fn take_buffer(buf: *mut c_char, len: usize) -> Vec<u8> {
    if buf.is_null() {
        return Vec::new();
    }
    // SAFETY: the caller promises len bytes at buf.
    let v = unsafe { std::slice::from_raw_parts(buf as *const u8, len) }.to_vec();
    // SAFETY: librados allocated it; freed once.
    unsafe { sys::rados_buffer_free(buf) };
    v
}

#[derive(Clone, Copy)]
enum Open<'a> {
    ReadWrite,
    ReadOnly,
    Snap(&'a str),
}

/// A pool context, destroyed on drop.
struct IoCtx(sys::rados_ioctx_t);

impl Drop for IoCtx {
    fn drop(&mut self) {
        // SAFETY: created by rados_ioctx_create, destroyed once.
        unsafe { sys::rados_ioctx_destroy(self.0) };
    }
}

/// A borrowed pool context for the other modules.
pub(crate) struct IoCtxRef<'a>(&'a IoCtx);

impl IoCtxRef<'_> {
    pub(crate) fn raw(&self) -> sys::rados_ioctx_t {
        self.0 .0
    }
}

/// An open image, closed on drop.
struct Image(sys::rbd_image_t);

impl Drop for Image {
    fn drop(&mut self) {
        // SAFETY: opened by rbd_open*, closed once.
        unsafe { sys::rbd_close(self.0) };
    }
}

/// librbd image options, destroyed on drop.
struct ImageOpts(sys::rbd_image_options_t);

impl ImageOpts {
    fn new() -> ImageOpts {
        let mut o: sys::rbd_image_options_t = ptr::null_mut();
        // SAFETY: out-pointer to a local.
        unsafe { sys::rbd_image_options_create(&mut o) };
        ImageOpts(o)
    }

    fn set_u64(&self, op: &str, opt: u32, v: u64) -> Result<()> {
        // SAFETY: live options object.
        let rc = unsafe { sys::rbd_image_options_set_uint64(self.0, opt as c_int, v) };
        check(rc.into(), || format!("{op}: image option {opt}={v}")).map(drop)
    }

    fn set_string(&self, op: &str, opt: u32, v: &str) -> Result<()> {
        let cv = cstr("image option", v)?;
        // SAFETY: live options object, string valid across the call (copied).
        let rc = unsafe { sys::rbd_image_options_set_string(self.0, opt as c_int, cv.as_ptr()) };
        check(rc.into(), || format!("{op}: image option {opt}={v}")).map(drop)
    }
}

impl Drop for ImageOpts {
    fn drop(&mut self) {
        // SAFETY: created by rbd_image_options_create, destroyed once.
        unsafe { sys::rbd_image_options_destroy(self.0) };
    }
}

/// A rados write operation, released on drop.
struct WriteOp(sys::rados_write_op_t);

impl Drop for WriteOp {
    fn drop(&mut self) {
        // SAFETY: created by rados_create_write_op, released once.
        unsafe { sys::rados_release_write_op(self.0) };
    }
}

/// A rados read operation, released on drop.
struct ReadOp(sys::rados_read_op_t);

impl Drop for ReadOp {
    fn drop(&mut self) {
        // SAFETY: created by rados_create_read_op, released once.
        unsafe { sys::rados_release_read_op(self.0) };
    }
}

/// An omap iterator a read op filled in, ended on drop. librados allocates
/// it when the op is built, so it is ended even when the op failed.
struct OmapIter(sys::rados_omap_iter_t);

impl OmapIter {
    /// Copies out all (key, value) pairs.
    fn collect(&self, op: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        if self.0.is_null() {
            return Ok(out);
        }
        loop {
            let mut k: *mut c_char = ptr::null_mut();
            let mut v: *mut c_char = ptr::null_mut();
            let (mut kl, mut vl) = (0usize, 0usize);
            // SAFETY: a live iterator; out-pointers to locals.
            let rc = unsafe { sys::rados_omap_get_next2(self.0, &mut k, &mut v, &mut kl, &mut vl) };
            check(rc.into(), || format!("{op}: next omap entry"))?;
            if k.is_null() {
                return Ok(out);
            }
            // SAFETY: librados points k/v at kl/vl bytes that stay valid
            // until the iterator ends (after this copy).
            let key = unsafe { std::slice::from_raw_parts(k as *const u8, kl) };
            let val = if v.is_null() {
                &[][..]
            } else {
                // SAFETY: as for the key: vl bytes at v, valid until the iterator ends.
                unsafe { std::slice::from_raw_parts(v as *const u8, vl) }
            };
            out.push((String::from_utf8_lossy(key).into_owned(), val.to_vec()));
        }
    }
}

impl Drop for OmapIter {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: allocated by librados when the read op was built, ended once.
            unsafe { sys::rados_omap_get_end(self.0) };
        }
    }
}

/// The feature bits and their names (as `rbd feature` and ceph-csi's
/// `imageFeatures` spell them).
const FEATURES: &[(u64, &[u8])] = &[
    (sys::RBD_FEATURE_LAYERING as u64, sys::RBD_FEATURE_NAME_LAYERING),
    (sys::RBD_FEATURE_STRIPINGV2 as u64, sys::RBD_FEATURE_NAME_STRIPINGV2),
    (sys::RBD_FEATURE_EXCLUSIVE_LOCK as u64, sys::RBD_FEATURE_NAME_EXCLUSIVE_LOCK),
    (sys::RBD_FEATURE_OBJECT_MAP as u64, sys::RBD_FEATURE_NAME_OBJECT_MAP),
    (sys::RBD_FEATURE_FAST_DIFF as u64, sys::RBD_FEATURE_NAME_FAST_DIFF),
    (sys::RBD_FEATURE_DEEP_FLATTEN as u64, sys::RBD_FEATURE_NAME_DEEP_FLATTEN),
    (sys::RBD_FEATURE_JOURNALING as u64, sys::RBD_FEATURE_NAME_JOURNALING),
    (sys::RBD_FEATURE_DATA_POOL as u64, sys::RBD_FEATURE_NAME_DATA_POOL),
    (sys::RBD_FEATURE_OPERATIONS as u64, sys::RBD_FEATURE_NAME_OPERATIONS),
    (sys::RBD_FEATURE_MIGRATING as u64, sys::RBD_FEATURE_NAME_MIGRATING),
    (sys::RBD_FEATURE_NON_PRIMARY as u64, sys::RBD_FEATURE_NAME_NON_PRIMARY),
];

fn feature_name(n: &[u8]) -> String {
    String::from_utf8_lossy(n.strip_suffix(b"\0").unwrap_or(n)).into_owned()
}

/// Feature names to bits, by librbd's own parser.
fn features_from_names(names: &[String]) -> Result<u64> {
    let joined = names.join(",");
    let c = cstr("image features", &joined)?;
    let mut bits = 0u64;
    // SAFETY: valid C string, out-pointer to a local.
    let rc = unsafe { sys::rbd_features_from_string(c.as_ptr(), &mut bits) };
    if rc < 0 {
        return Err(Error::InvalidArgument(format!("image features {joined:?}: unknown feature")));
    }
    Ok(bits)
}

fn features_to_names(bits: u64) -> Vec<String> {
    FEATURES.iter().filter(|(b, _)| bits & b != 0).map(|(_, n)| feature_name(n)).collect()
}

/// An owned copy of a C string librados/librbd handed out (null: "").
///
/// # Safety
/// `p` is null or points to a NUL-terminated string.
unsafe fn owned(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: the caller promises a NUL-terminated string.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Splits a buffer of NUL-terminated strings.
fn split_nul(buf: &[u8]) -> Vec<String> {
    buf.split(|b| *b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

/// `IP:PORT/NONCE` from librados' address forms (`v2:IP:PORT/NONCE`,
/// `[v2:…,v1:…]`, `any:…`): the form blocklists, lockers and the kernel's
/// `client_addr` use.
pub(crate) fn plain_address(s: &str) -> String {
    let s = s.trim().trim_start_matches('[').trim_end_matches(']');
    let first = s.split(',').next().unwrap_or(s);
    for p in ["v2:", "v1:", "any:"] {
        if let Some(rest) = first.strip_prefix(p) {
            return rest.to_string();
        }
    }
    first.to_string()
}

unsafe extern "C" fn no_progress(_offset: u64, _total: u64, _arg: *mut c_void) -> c_int {
    0
}

/// Calls `f` with a buffer of `size` bytes, growing it while `f` asks
/// for more (ERANGE), up to 64 MiB.
fn with_growing_buffer<T>(
    mut size: usize,
    op: &dyn Fn() -> String,
    mut f: impl FnMut(&mut Vec<u8>) -> std::result::Result<T, (i32, usize)>,
) -> Result<T> {
    loop {
        let mut buf = vec![0u8; size];
        match f(&mut buf) {
            Ok(t) => return Ok(t),
            Err((libc::ERANGE, want)) if size < 64 << 20 => size = want.max(size * 2),
            Err((errno, _)) => return Err(Error::from_errno(&op(), errno)),
        }
    }
}

impl Rbd for Client {
    fn pool_id(&self, pool: &str) -> Result<i64> {
        let c = cstr("pool", pool)?;
        // SAFETY: connected cluster, valid C string.
        let id = unsafe { sys::rados_pool_lookup(self.cluster, c.as_ptr()) };
        check(id, || format!("look up pool {pool}"))
    }

    fn pool_name(&self, pool_id: i64) -> Result<String> {
        let op = || format!("look up pool ID {pool_id}");
        with_growing_buffer(256, &op, |buf| {
            // SAFETY: buf has buf.len() writable bytes.
            let rc = unsafe {
                sys::rados_pool_reverse_lookup(self.cluster, pool_id, buf.as_mut_ptr() as *mut c_char, buf.len())
            };
            if rc < 0 {
                return Err((-rc, buf.len() * 2));
            }
            Ok(String::from_utf8_lossy(&buf[..rc as usize]).trim_end_matches('\0').to_string())
        })
    }

    fn pool_stats(&self, pool: &str) -> Result<PoolStats> {
        let op = format!("pool stats of {pool}");
        let out = self.mon_command(&op, r#"{"prefix":"df","format":"json"}"#)?;
        let v: serde_json::Value = serde_json::from_slice(&out)
            .map_err(|e| Error::Other { op: format!("{op}: df output is not JSON ({e})"), errno: libc::EBADMSG })?;
        let Some(p) = v["pools"].as_array().and_then(|ps| ps.iter().find(|p| p["name"] == pool)) else {
            // No such pool (NotFound), or the statistics are missing: the
            // manager computes them, and without one df lists no pools.
            self.pool_id(pool)?;
            return Err(Error::Other {
                op: format!("{op}: the monitor's df has no statistics for it (is a ceph-mgr running?)"),
                errno: libc::ENODATA,
            });
        };
        let num = |k: &str| {
            p["stats"][k].as_u64().ok_or_else(|| Error::Other {
                op: format!("{op}: df has no stats.{k} for {pool}"),
                errno: libc::EBADMSG,
            })
        };
        Ok(PoolStats { max_avail: num("max_avail")?, stored: num("stored")? })
    }

    fn client_address(&self) -> Result<String> {
        let mut p: *mut c_char = ptr::null_mut();
        // SAFETY: connected cluster; librados allocates the string.
        let rc = unsafe { sys::rados_getaddrs(self.cluster, &mut p) };
        check(rc.into(), || "get this client's address".to_string())?;
        // SAFETY: a NUL-terminated string librados allocated, freed once.
        let s = unsafe {
            let s = owned(p);
            sys::rados_buffer_free(p);
            s
        };
        Ok(plain_address(&s))
    }

    fn omap_get(&self, pool: &str, oid: &str, keys: &[&str]) -> Result<BTreeMap<String, Vec<u8>>> {
        if keys.is_empty() {
            return Ok(BTreeMap::new());
        }
        let op = format!("omap get {pool}/{oid}");
        let io = self.ioctx(pool)?;
        let coid = cstr("object", oid)?;
        let ckeys = keys.iter().map(|k| cstr("omap key", k)).collect::<Result<Vec<_>>>()?;
        let kptrs: Vec<*const c_char> = ckeys.iter().map(|k| k.as_ptr()).collect();
        // SAFETY: creates an empty read op.
        let rop = ReadOp(unsafe { sys::rados_create_read_op() });
        let mut iter = OmapIter(ptr::null_mut());
        let mut prval: c_int = 0;
        // SAFETY: kptrs point to live C strings (copied into the op);
        // iter and prval outlive the operate call below.
        unsafe {
            sys::rados_read_op_omap_get_vals_by_keys(rop.0, kptrs.as_ptr(), kptrs.len(), &mut iter.0, &mut prval)
        };
        // SAFETY: live op and pool context, valid oid.
        let rc = unsafe { sys::rados_read_op_operate(rop.0, io.0, coid.as_ptr(), 0) };
        if rc == -libc::ENOENT {
            return Ok(BTreeMap::new());
        }
        check(rc.into(), || op.clone())?;
        check(prval.into(), || op.clone())?;
        Ok(iter.collect(&op)?.into_iter().collect())
    }

    fn omap_list(&self, pool: &str, oid: &str, after: &str, max: usize) -> Result<Vec<(String, Vec<u8>)>> {
        let op = format!("omap list {pool}/{oid}");
        let io = self.ioctx(pool)?;
        let coid = cstr("object", oid)?;
        let empty = cstr("omap prefix", "")?;
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        let mut start = after.to_string();
        // The OSD caps one reply (osd_max_omap_entries_per_request): page
        // until `max` entries or the end.
        while out.len() < max {
            let cstart = cstr("omap key", &start)?;
            // SAFETY: creates an empty read op.
            let rop = ReadOp(unsafe { sys::rados_create_read_op() });
            let mut iter = OmapIter(ptr::null_mut());
            let mut more: u8 = 0;
            let mut prval: c_int = 0;
            // SAFETY: strings copied into the op; iter, more and prval
            // outlive the operate call.
            unsafe {
                sys::rados_read_op_omap_get_vals2(
                    rop.0,
                    cstart.as_ptr(),
                    empty.as_ptr(),
                    (max - out.len()) as u64,
                    &mut iter.0,
                    &mut more,
                    &mut prval,
                )
            };
            // SAFETY: live op and pool context, valid oid.
            let rc = unsafe { sys::rados_read_op_operate(rop.0, io.0, coid.as_ptr(), 0) };
            if rc == -libc::ENOENT {
                return Ok(out);
            }
            check(rc.into(), || op.clone())?;
            check(prval.into(), || op.clone())?;
            let page = iter.collect(&op)?;
            let Some(last) = page.last() else { break };
            start = last.0.clone();
            out.extend(page);
            if more == 0 {
                break;
            }
        }
        Ok(out)
    }

    fn omap_set(&self, pool: &str, oid: &str, entries: &[(&str, &[u8])], guard: &Guard) -> Result<()> {
        let op = format!("omap set {pool}/{oid}");
        if let Some((k, _)) = entries.iter().find(|(_, v)| v.is_empty()) {
            return Err(Error::InvalidArgument(format!(
                "{op}: key {k:?} has an empty value (an empty value reads as an absent key to guards)"
            )));
        }
        let io = self.ioctx(pool)?;
        let coid = cstr("object", oid)?;
        let ckeys = entries.iter().map(|(k, _)| cstr("omap key", k)).collect::<Result<Vec<_>>>()?;
        let kptrs: Vec<*const c_char> = ckeys.iter().map(|k| k.as_ptr()).collect();
        let vptrs: Vec<*const c_char> = entries.iter().map(|(_, v)| v.as_ptr() as *const c_char).collect();
        let lens: Vec<usize> = entries.iter().map(|(_, v)| v.len()).collect();
        // The guard's comparisons: (key, expected value). A missing key
        // compares equal to an empty value on the OSD (see Guard::Absent).
        let cmps: Vec<(CString, &[u8])> = match guard {
            Guard::None => Vec::new(),
            Guard::Absent(keys) => keys.iter().map(|k| Ok((cstr("omap key", k)?, &[][..]))).collect::<Result<_>>()?,
            Guard::Equals(k, v) => {
                if v.is_empty() {
                    return Err(Error::InvalidArgument(format!(
                        "{op}: guard on {k:?} expects an empty value (use Guard::Absent)"
                    )));
                }
                vec![(cstr("omap key", k)?, v.as_slice())]
            }
        };
        let mut prvals: Vec<c_int> = vec![0; cmps.len()];
        // SAFETY: creates an empty write op.
        let wop = WriteOp(unsafe { sys::rados_create_write_op() });
        // SAFETY: all pointers reference locals (ckeys, entries, cmps,
        // prvals) that outlive the operate call; librados copies keys and
        // values into the op when each step is added, and writes prvals
        // during operate.
        unsafe {
            // The object must exist for the comparisons (the OSD answers
            // ENOENT otherwise); created in the same atomic op, so a failed
            // guard leaves no empty object behind.
            sys::rados_write_op_create(wop.0, sys::LIBRADOS_CREATE_IDEMPOTENT as c_int, ptr::null());
            for ((k, v), pr) in cmps.iter().zip(prvals.iter_mut()) {
                sys::rados_write_op_omap_cmp(
                    wop.0,
                    k.as_ptr(),
                    sys::LIBRADOS_CMPXATTR_OP_EQ as u8,
                    v.as_ptr() as *const c_char,
                    v.len(),
                    pr,
                );
            }
            if !entries.is_empty() {
                sys::rados_write_op_omap_set(wop.0, kptrs.as_ptr(), vptrs.as_ptr(), lens.as_ptr(), entries.len());
            }
        }
        // SAFETY: live op and pool context, valid oid; null mtime = now.
        let rc = unsafe { sys::rados_write_op_operate(wop.0, io.0, coid.as_ptr(), ptr::null_mut(), 0) };
        check(rc.into(), || match guard {
            Guard::None => op.clone(),
            Guard::Absent(keys) => format!("{op} (guard: {keys:?} absent)"),
            Guard::Equals(k, _) => format!("{op} (guard: {k:?} unchanged)"),
        })
        .map(drop)
    }

    fn omap_remove(&self, pool: &str, oid: &str, keys: &[&str]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let op = format!("omap remove {pool}/{oid}");
        let io = self.ioctx(pool)?;
        let coid = cstr("object", oid)?;
        let ckeys = keys.iter().map(|k| cstr("omap key", k)).collect::<Result<Vec<_>>>()?;
        let kptrs: Vec<*const c_char> = ckeys.iter().map(|k| k.as_ptr()).collect();
        // SAFETY: creates an empty write op.
        let wop = WriteOp(unsafe { sys::rados_create_write_op() });
        // SAFETY: key strings live across the call (copied into the op).
        unsafe { sys::rados_write_op_omap_rm_keys(wop.0, kptrs.as_ptr(), kptrs.len()) };
        // SAFETY: live op and pool context, valid oid.
        let rc = unsafe { sys::rados_write_op_operate(wop.0, io.0, coid.as_ptr(), ptr::null_mut(), 0) };
        if rc == -libc::ENOENT {
            return Ok(());
        }
        check(rc.into(), || op).map(drop)
    }

    fn remove_object(&self, pool: &str, oid: &str) -> Result<()> {
        let io = self.ioctx(pool)?;
        let coid = cstr("object", oid)?;
        // SAFETY: live pool context, valid oid.
        let rc = unsafe { sys::rados_remove(io.0, coid.as_ptr()) };
        if rc == -libc::ENOENT {
            return Ok(());
        }
        check(rc.into(), || format!("remove object {pool}/{oid}")).map(drop)
    }

    fn lock_exclusive(&self, pool: &str, oid: &str, name: &str, cookie: &str, description: &str) -> Result<()> {
        let io = self.ioctx(pool)?;
        let (coid, cname) = (cstr("object", oid)?, cstr("lock name", name)?);
        let (ccookie, cdesc) = (cstr("lock cookie", cookie)?, cstr("lock description", description)?);
        // SAFETY: live pool context; strings live across the call; no
        // duration (held until broken or unlocked).
        let rc = unsafe {
            sys::rados_lock_exclusive(
                io.0,
                coid.as_ptr(),
                cname.as_ptr(),
                ccookie.as_ptr(),
                cdesc.as_ptr(),
                ptr::null_mut(),
                sys::LIBRADOS_LOCK_FLAG_MAY_RENEW as u8,
            )
        };
        check(rc.into(), || format!("lock {name} on {pool}/{oid} (cookie {cookie})")).map(drop)
    }

    fn lockers(&self, pool: &str, oid: &str, name: &str) -> Result<Vec<Locker>> {
        let io = self.ioctx(pool)?;
        let listed = list_lockers(&io, pool, oid, name)?;
        if listed.is_empty() {
            return Ok(Vec::new());
        }
        let descriptions = self.lock_descriptions(&IoCtxRef(&io), pool, oid, name)?;
        Ok(listed
            .into_iter()
            .map(|(client, cookie, address)| {
                let description = descriptions.get(&(client.clone(), cookie.clone())).cloned().unwrap_or_default();
                Locker { client, cookie, address, description }
            })
            .collect())
    }

    fn lock_cookies(&self, pool: &str, oid: &str, name: &str) -> Result<Vec<String>> {
        let io = self.ioctx(pool)?;
        Ok(list_lockers(&io, pool, oid, name)?.into_iter().map(|(_, cookie, _)| cookie).collect())
    }

    fn break_lock(&self, pool: &str, oid: &str, name: &str, client: &str, cookie: &str) -> Result<()> {
        let io = self.ioctx(pool)?;
        let (coid, cname) = (cstr("object", oid)?, cstr("lock name", name)?);
        let (cclient, ccookie) = (cstr("lock client", client)?, cstr("lock cookie", cookie)?);
        // SAFETY: live pool context; strings live across the call.
        let rc =
            unsafe { sys::rados_break_lock(io.0, coid.as_ptr(), cname.as_ptr(), cclient.as_ptr(), ccookie.as_ptr()) };
        if rc == -libc::ENOENT {
            return Ok(());
        }
        check(rc.into(), || format!("break lock {name} of {client} (cookie {cookie}) on {pool}/{oid}")).map(drop)
    }

    fn blocklist_add(&self, client_address: &str, expire: Duration) -> Result<()> {
        let c = cstr("client address", client_address)?;
        let secs = if expire.is_zero() { 0 } else { timeout_secs(expire).min(u32::MAX.into()) as u32 };
        // SAFETY: connected cluster; librados only reads the string (the
        // header's `char *` is not written to).
        let rc = unsafe { sys::rados_blocklist_add(self.cluster, c.as_ptr() as *mut c_char, secs) };
        check(rc.into(), || format!("blocklist {client_address} for {secs} s")).map(drop)
    }

    fn create_image(&self, pool: &str, name: &str, size: u64, opts: &ImageOptions) -> Result<()> {
        let op = format!("create image {pool}/{name}");
        let io = self.ioctx(pool)?;
        let cname = cstr("image", name)?;
        let o = self.image_options(&op, opts, false)?;
        // SAFETY: live pool context and options; name valid across the call.
        let rc = unsafe { sys::rbd_create4(io.0, cname.as_ptr(), size, o.0) };
        check(rc.into(), || op).map(drop)
    }

    fn remove_image(&self, pool: &str, name: &str) -> Result<()> {
        let io = self.ioctx(pool)?;
        let cname = cstr("image", name)?;
        // SAFETY: live pool context; name valid across the call.
        let rc = unsafe { sys::rbd_remove(io.0, cname.as_ptr()) };
        check(rc.into(), || format!("remove image {pool}/{name}")).map(drop)
    }

    fn image_info(&self, pool: &str, name: &str) -> Result<ImageInfo> {
        let io = self.ioctx(pool)?;
        let img = self.open_image(&io, pool, name, Open::ReadOnly)?;
        let op = || format!("info of image {pool}/{name}");
        let mut info = sys::rbd_image_info_t::default();
        // SAFETY: open image; info is a local of the size we pass.
        let rc = unsafe { sys::rbd_stat(img.0, &mut info, std::mem::size_of::<sys::rbd_image_info_t>()) };
        check(rc.into(), op)?;
        let id = with_growing_buffer(64, &op, |buf| {
            // SAFETY: buf has buf.len() writable bytes.
            let rc = unsafe { sys::rbd_get_id(img.0, buf.as_mut_ptr() as *mut c_char, buf.len()) };
            if rc < 0 {
                return Err((-rc, buf.len() * 2));
            }
            Ok(split_nul(buf).into_iter().next().unwrap_or_default())
        })?;
        let mut bits = 0u64;
        // SAFETY: open image, out-pointer to a local.
        let rc = unsafe { sys::rbd_get_features(img.0, &mut bits) };
        check(rc.into(), op)?;
        let mut pspec = sys::rbd_linked_image_spec_t::default();
        let mut sspec = sys::rbd_snap_spec_t::default();
        // SAFETY: open image, out-structs; librbd allocates their strings,
        // freed by the cleanup calls below when it succeeded.
        let rc = unsafe { sys::rbd_get_parent(img.0, &mut pspec, &mut sspec) };
        let parent = if rc == -libc::ENOENT {
            None
        } else {
            check(rc.into(), || format!("parent of image {pool}/{name}"))?;
            // SAFETY: filled in by librbd (NUL-terminated or null), freed once.
            unsafe {
                let p = ParentSpec {
                    pool: owned(pspec.pool_name),
                    image: owned(pspec.image_name),
                    snap: owned(sspec.name),
                };
                sys::rbd_linked_image_spec_cleanup(&mut pspec);
                sys::rbd_snap_spec_cleanup(&mut sspec);
                Some(p)
            }
        };
        let snapshot_count = snap_list(&img, pool, name)?.len();
        Ok(ImageInfo {
            name: name.to_string(),
            id,
            size: info.size,
            features: features_to_names(bits),
            parent,
            snapshot_count,
        })
    }

    fn list_images(&self, pool: &str) -> Result<Vec<String>> {
        let io = self.ioctx(pool)?;
        let mut max: usize = 64;
        loop {
            let mut specs: Vec<sys::rbd_image_spec_t> = vec![sys::rbd_image_spec_t::default(); max];
            let mut n = max;
            // SAFETY: specs has room for `n` entries; librbd fills at most
            // n (allocating their strings) or says how many it needs.
            let rc = unsafe { sys::rbd_list2(io.0, specs.as_mut_ptr(), &mut n) };
            if rc == -libc::ERANGE {
                max = n.max(max * 2);
                continue;
            }
            check(rc.into(), || format!("list images of pool {pool}"))?;
            // SAFETY: the first n entries were filled in; freed once.
            let names = unsafe {
                let names = specs[..n].iter().map(|s| owned(s.name)).collect();
                sys::rbd_image_spec_list_cleanup(specs.as_mut_ptr(), n);
                names
            };
            return Ok(names);
        }
    }

    fn resize_image(&self, pool: &str, name: &str, size: u64) -> Result<()> {
        let io = self.ioctx(pool)?;
        let img = self.open_image(&io, pool, name, Open::ReadWrite)?;
        // SAFETY: open image; a callback that does nothing, no user data.
        let rc = unsafe { sys::rbd_resize2(img.0, size, false, Some(no_progress), ptr::null_mut()) };
        check(rc.into(), || format!("resize image {pool}/{name} to {size} bytes (shrinking is refused)")).map(drop)
    }

    fn image_watchers(&self, pool: &str, name: &str) -> Result<Vec<Watcher>> {
        let io = self.ioctx(pool)?;
        let img = self.open_image(&io, pool, name, Open::ReadOnly)?;
        let mut max: usize = 8;
        loop {
            let mut ws: Vec<sys::rbd_image_watcher_t> = vec![sys::rbd_image_watcher_t::default(); max];
            let mut n = max;
            // SAFETY: ws has room for n entries; librbd fills at most n.
            let rc = unsafe { sys::rbd_watchers_list(img.0, ws.as_mut_ptr(), &mut n) };
            if rc == -libc::ERANGE {
                max = n.max(max * 2);
                continue;
            }
            check(rc.into(), || format!("list watchers of image {pool}/{name}"))?;
            // SAFETY: the first n entries were filled in; freed once.
            let out = unsafe {
                let out = ws[..n].iter().map(|w| Watcher { address: plain_address(&owned(w.addr)) }).collect();
                sys::rbd_watchers_list_cleanup(ws.as_mut_ptr(), n);
                out
            };
            return Ok(out);
        }
    }

    fn metadata_get(&self, pool: &str, image: &str, key: &str) -> Result<Option<String>> {
        let io = self.ioctx(pool)?;
        let img = self.open_image(&io, pool, image, Open::ReadOnly)?;
        let ckey = cstr("metadata key", key)?;
        let op = || format!("get metadata {key:?} of image {pool}/{image}");
        let r = with_growing_buffer(256, &op, |buf| {
            let mut len = buf.len();
            // SAFETY: buf has len writable bytes; librbd updates len to
            // the size it needs on ERANGE.
            let rc = unsafe { sys::rbd_metadata_get(img.0, ckey.as_ptr(), buf.as_mut_ptr() as *mut c_char, &mut len) };
            if rc < 0 {
                return Err((-rc, len));
            }
            Ok(split_nul(&buf[..len.min(buf.len())]).into_iter().next().unwrap_or_default())
        });
        match r {
            Ok(v) => Ok(Some(v)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn metadata_set(&self, pool: &str, image: &str, key: &str, value: &str) -> Result<()> {
        let io = self.ioctx(pool)?;
        let img = self.open_image(&io, pool, image, Open::ReadWrite)?;
        let (ckey, cval) = (cstr("metadata key", key)?, cstr("metadata value", value)?);
        // SAFETY: open image; strings valid across the call.
        let rc = unsafe { sys::rbd_metadata_set(img.0, ckey.as_ptr(), cval.as_ptr()) };
        check(rc.into(), || format!("set metadata {key:?} of image {pool}/{image}")).map(drop)
    }

    fn snap_create(&self, pool: &str, image: &str, snap: &str) -> Result<()> {
        let io = self.ioctx(pool)?;
        let img = self.open_image(&io, pool, image, Open::ReadWrite)?;
        let csnap = cstr("snapshot", snap)?;
        // SAFETY: open image; name valid across the call.
        let rc = unsafe { sys::rbd_snap_create(img.0, csnap.as_ptr()) };
        check(rc.into(), || format!("create snapshot {pool}/{image}@{snap}")).map(drop)
    }

    fn snap_remove(&self, pool: &str, image: &str, snap: &str) -> Result<()> {
        let io = self.ioctx(pool)?;
        let img = self.open_image(&io, pool, image, Open::ReadWrite)?;
        let csnap = cstr("snapshot", snap)?;
        // SAFETY: open image; name valid across the call.
        let rc = unsafe { sys::rbd_snap_remove(img.0, csnap.as_ptr()) };
        check(rc.into(), || format!("remove snapshot {pool}/{image}@{snap}")).map(drop)
    }

    fn snap_list(&self, pool: &str, image: &str) -> Result<Vec<SnapInfo>> {
        let io = self.ioctx(pool)?;
        let img = self.open_image(&io, pool, image, Open::ReadOnly)?;
        snap_list(&img, pool, image)
    }

    fn clone_image(
        &self,
        pool: &str,
        parent: &str,
        snap: &str,
        child_pool: &str,
        child: &str,
        opts: &ImageOptions,
    ) -> Result<()> {
        let op = format!("clone {pool}/{parent}@{snap} to {child_pool}/{child}");
        let pio = self.ioctx(pool)?;
        let cio = self.ioctx(child_pool)?;
        let (cparent, csnap, cchild) = (cstr("image", parent)?, cstr("snapshot", snap)?, cstr("image", child)?);
        let o = self.image_options(&op, opts, true)?;
        // SAFETY: live pool contexts and options; names valid across the call.
        let rc = unsafe { sys::rbd_clone3(pio.0, cparent.as_ptr(), csnap.as_ptr(), cio.0, cchild.as_ptr(), o.0) };
        check(rc.into(), || op).map(drop)
    }

    fn flatten_image(&self, pool: &str, image: &str) -> Result<()> {
        let io = self.ioctx(pool)?;
        let img = self.open_image(&io, pool, image, Open::ReadWrite)?;
        // SAFETY: open image.
        let rc = unsafe { sys::rbd_flatten(img.0) };
        check(rc.into(), || format!("flatten image {pool}/{image}")).map(drop)
    }

    fn children(&self, pool: &str, image: &str, snap: &str) -> Result<Vec<(String, String)>> {
        let io = self.ioctx(pool)?;
        let img = self.open_image(&io, pool, image, Open::Snap(snap))?;
        list_children(&img, &format!("{pool}/{image}@{snap}"))
    }

    fn all_children(&self, pool: &str, image: &str) -> Result<Vec<(String, String)>> {
        let io = self.ioctx(pool)?;
        // Opened at its head, librbd lists the children of every snapshot,
        // those in the trash namespace included.
        let img = self.open_image(&io, pool, image, Open::ReadOnly)?;
        list_children(&img, &format!("{pool}/{image}"))
    }

    fn read_image(&self, pool: &str, image: &str, snap: Option<&str>, offset: u64, len: usize) -> Result<Vec<u8>> {
        let io = self.ioctx(pool)?;
        let img = self.open_image(&io, pool, image, snap.map_or(Open::ReadOnly, Open::Snap))?;
        let at = snap.map_or(String::new(), |s| format!("@{s}"));
        let mut out = vec![0u8; len];
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(IO_CHUNK);
            // SAFETY: open image; out[done..done + n] is writable.
            let rc = unsafe { sys::rbd_read(img.0, offset + done as u64, n, out[done..].as_mut_ptr() as *mut c_char) };
            let got =
                check(rc as i64, || format!("read {n} bytes at {} of image {pool}/{image}{at}", offset + done as u64))?
                    as usize;
            done += got;
            if got < n {
                break;
            }
        }
        out.truncate(done);
        Ok(out)
    }

    fn write_image(&self, pool: &str, image: &str, offset: u64, data: &[u8]) -> Result<()> {
        let io = self.ioctx(pool)?;
        let img = self.open_image(&io, pool, image, Open::ReadWrite)?;
        let mut done = 0usize;
        while done < data.len() {
            let n = (data.len() - done).min(IO_CHUNK);
            // SAFETY: open image; data[done..done + n] is readable.
            let rc = unsafe { sys::rbd_write(img.0, offset + done as u64, n, data[done..].as_ptr() as *const c_char) };
            let wrote =
                check(rc as i64, || format!("write {n} bytes at {} of image {pool}/{image}", offset + done as u64))?
                    as usize;
            if wrote == 0 {
                return Err(Error::Other {
                    op: format!("write to image {pool}/{image}: no progress"),
                    errno: libc::EIO,
                });
            }
            done += wrote;
        }
        Ok(())
    }
}

/// The holders of lock `name` on `oid` as (client, cookie, address), in
/// one `rados_list_lockers` (one round trip); a missing object has none.
fn list_lockers(io: &IoCtx, pool: &str, oid: &str, name: &str) -> Result<Vec<(String, String, String)>> {
    let op = format!("list lockers of {name} on {pool}/{oid}");
    let (coid, cname) = (cstr("object", oid)?, cstr("lock name", name)?);
    let mut sizes = [256usize; 4];
    loop {
        let mut bufs: Vec<Vec<u8>> = sizes.iter().map(|s| vec![0u8; *s]).collect();
        let mut lens = sizes;
        let mut exclusive: c_int = 0;
        let [tag, clients, cookies, addrs] = &mut bufs[..] else { unreachable!() };
        // SAFETY: each buffer has the length passed with it; librados
        // writes at most that many bytes and updates the lengths.
        let rc = unsafe {
            sys::rados_list_lockers(
                io.0,
                coid.as_ptr(),
                cname.as_ptr(),
                &mut exclusive,
                tag.as_mut_ptr() as *mut c_char,
                &mut lens[0],
                clients.as_mut_ptr() as *mut c_char,
                &mut lens[1],
                cookies.as_mut_ptr() as *mut c_char,
                &mut lens[2],
                addrs.as_mut_ptr() as *mut c_char,
                &mut lens[3],
            )
        };
        if rc == -(libc::ERANGE as isize) && sizes.iter().all(|s| *s < 64 << 20) {
            for (s, l) in sizes.iter_mut().zip(lens) {
                *s = (*s * 2).max(l);
            }
            continue;
        }
        if rc == -(libc::ENOENT as isize) {
            return Ok(Vec::new());
        }
        let n = check(rc as i64, || op.clone())? as usize;
        let (clients, cookies, addrs) =
            (split_nul(&clients[..lens[1]]), split_nul(&cookies[..lens[2]]), split_nul(&addrs[..lens[3]]));
        return Ok((0..n)
            .map(|i| {
                (
                    clients.get(i).cloned().unwrap_or_default(),
                    cookies.get(i).cloned().unwrap_or_default(),
                    plain_address(addrs.get(i).map_or("", |s| s)),
                )
            })
            .collect());
    }
}

/// librbd caps one read or write at INT_MAX bytes; larger ones go in pieces.
const IO_CHUNK: usize = 64 << 20;

/// The children of an open image (at a snapshot: that snapshot's; at its
/// head: every snapshot's), trashed images left out.
fn list_children(img: &Image, what: &str) -> Result<Vec<(String, String)>> {
    let mut max: usize = 16;
    loop {
        let mut specs: Vec<sys::rbd_linked_image_spec_t> = vec![sys::rbd_linked_image_spec_t::default(); max];
        let mut n = max;
        // SAFETY: specs has room for n entries; librbd fills at most n.
        let rc = unsafe { sys::rbd_list_children3(img.0, specs.as_mut_ptr(), &mut n) };
        if rc == -libc::ERANGE {
            max = n.max(max * 2);
            continue;
        }
        check(rc.into(), || format!("list children of {what}"))?;
        // SAFETY: the first n entries were filled in; freed once.
        let out = unsafe {
            let out =
                specs[..n].iter().filter(|s| !s.trash).map(|s| (owned(s.pool_name), owned(s.image_name))).collect();
            sys::rbd_linked_image_spec_list_cleanup(specs.as_mut_ptr(), n);
            out
        };
        return Ok(out);
    }
}

fn snap_list(img: &Image, pool: &str, image: &str) -> Result<Vec<SnapInfo>> {
    let mut max: c_int = 16;
    loop {
        // librbd writes max+1 entries (a terminator) at most.
        let mut snaps: Vec<sys::rbd_snap_info_t> = vec![sys::rbd_snap_info_t::default(); max as usize + 1];
        let mut n = max;
        // SAFETY: snaps has room for max+1 entries; librbd fills at most
        // that, or says how many it needs.
        let rc = unsafe { sys::rbd_snap_list(img.0, snaps.as_mut_ptr(), &mut n) };
        if rc == -libc::ERANGE {
            max = n.max(max * 2);
            continue;
        }
        let count = check(rc.into(), || format!("list snapshots of image {pool}/{image}"))? as usize;
        let mut out = Vec::with_capacity(count);
        let mut err = None;
        for s in &snaps[..count] {
            let mut ns: sys::rbd_snap_namespace_type_t = sys::RBD_SNAP_NAMESPACE_TYPE_USER;
            // SAFETY: open image; out-pointer to a local.
            let rc = unsafe { sys::rbd_snap_get_namespace_type(img.0, s.id, &mut ns) };
            if rc < 0 {
                // SAFETY: name filled in by librbd.
                let name = unsafe { owned(s.name) };
                err = Some(Error::from_errno(&format!("namespace of snapshot {pool}/{image}@{name}"), -rc));
                break;
            }
            // Only user snapshots: a removed snapshot that clone v2
            // children still need stays in the trash namespace under a
            // UUID name, and group or mirror snapshots are not ours.
            if ns != sys::RBD_SNAP_NAMESPACE_TYPE_USER {
                continue;
            }
            let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: open image; ts is a local timespec (same layout as the header's).
            let rc = unsafe { sys::rbd_snap_get_timestamp(img.0, s.id, &mut ts as *mut libc::timespec as *mut _) };
            // SAFETY: name filled in by librbd.
            let name = unsafe { owned(s.name) };
            if rc < 0 {
                err = Some(Error::from_errno(&format!("timestamp of snapshot {pool}/{image}@{name}"), -rc));
                break;
            }
            let created = SystemTime::UNIX_EPOCH + Duration::new(ts.tv_sec.max(0) as u64, ts.tv_nsec.max(0) as u32);
            out.push(SnapInfo { id: s.id, name, size: s.size, created });
        }
        // SAFETY: the list librbd filled in, freed once.
        unsafe { sys::rbd_snap_list_end(snaps.as_mut_ptr()) };
        return match err {
            Some(e) => Err(e),
            None => Ok(out),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_come_out_in_the_blocklist_form() {
        assert_eq!(plain_address("v2:10.0.0.1:0/1234"), "10.0.0.1:0/1234");
        assert_eq!(plain_address("[v2:10.0.0.1:0/1234,v1:10.0.0.1:0/1234]"), "10.0.0.1:0/1234");
        assert_eq!(plain_address("10.254.9.10:0/1390783612"), "10.254.9.10:0/1390783612");
        assert_eq!(plain_address("any:10.0.0.2:0/7"), "10.0.0.2:0/7");
    }

    #[test]
    fn feature_names_round_trip_through_librbd() {
        let names: Vec<String> =
            ["layering", "exclusive-lock", "object-map", "fast-diff", "deep-flatten"].map(String::from).to_vec();
        let bits = features_from_names(&names).unwrap();
        assert_eq!(bits, 1 | 4 | 8 | 16 | 32);
        assert_eq!(features_to_names(bits), names);
        assert!(matches!(features_from_names(&["no-such".into()]), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn a_nul_inside_a_name_is_invalid() {
        assert!(matches!(cstr("image", "a\0b"), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn timeouts_round_up_to_whole_seconds() {
        assert_eq!(timeout_secs(Duration::from_millis(1)), 1);
        assert_eq!(timeout_secs(Duration::from_millis(2500)), 3);
        assert_eq!(timeout_secs(Duration::ZERO), 1);
    }
}
