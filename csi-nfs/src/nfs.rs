//! The userspace NFS client (libnfs) the controller works through.
//!
//! The controller never mounts: the host may have no NFS client in its
//! kernel, and a hung kernel mount would hang the controller with it.
//! libnfs speaks NFSv3/v4 over its own TCP socket instead, with a time
//! bound on every call.
//!
//! One [`Client`] is one `nfs_context` mounted on one export. Paths are
//! relative to the export's root. A context is not thread-safe: a
//! `Client` is `Send` but not `Sync`, every call blocks, and async code
//! goes through [`run`], which runs a closure on a fresh connection inside
//! `tokio::task::spawn_blocking`.
//!
//! A fresh connection per RPC rather than a pool: connecting costs
//! ≈ 1–3 ms against a local server (measured by the `connect_cost` test),
//! a CreateVolume makes a handful of calls anyway, and a fresh connection
//! can never be a stale one left by a restarted or failed-over server.
//!
//! The `extern "C"` declarations are written by hand from
//! `/usr/include/nfsc/libnfs.h` (libnfs 4.0.0); `build.rs` links `nfs`.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::fmt;
use std::ptr::NonNull;
use std::time::Duration;

/// The raw libnfs API: only the synchronous calls used here.
#[allow(non_camel_case_types)]
mod ffi {
    use std::ffi::{c_char, c_int, c_void};

    #[repr(C)]
    pub struct nfs_context {
        _private: [u8; 0],
    }
    #[repr(C)]
    pub struct nfsfh {
        _private: [u8; 0],
    }
    #[repr(C)]
    pub struct nfsdir {
        _private: [u8; 0],
    }
    #[repr(C)]
    pub struct nfs_url {
        pub server: *mut c_char,
        pub path: *mut c_char,
        pub file: *mut c_char,
    }
    #[repr(C)]
    #[derive(Default)]
    pub struct nfs_stat_64 {
        pub nfs_dev: u64,
        pub nfs_ino: u64,
        pub nfs_mode: u64,
        pub nfs_nlink: u64,
        pub nfs_uid: u64,
        pub nfs_gid: u64,
        pub nfs_rdev: u64,
        pub nfs_size: u64,
        pub nfs_blksize: u64,
        pub nfs_blocks: u64,
        pub nfs_atime: u64,
        pub nfs_mtime: u64,
        pub nfs_ctime: u64,
        pub nfs_atime_nsec: u64,
        pub nfs_mtime_nsec: u64,
        pub nfs_ctime_nsec: u64,
        pub nfs_used: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    pub struct nfs_statvfs_64 {
        pub f_bsize: u64,
        pub f_frsize: u64,
        pub f_blocks: u64,
        pub f_bfree: u64,
        pub f_bavail: u64,
        pub f_files: u64,
        pub f_ffree: u64,
        pub f_favail: u64,
        pub f_fsid: u64,
        pub f_flag: u64,
        pub f_namemax: u64,
    }
    #[repr(C)]
    pub struct timeval {
        pub tv_sec: libc::time_t,
        pub tv_usec: libc::suseconds_t,
    }
    #[repr(C)]
    pub struct nfsdirent {
        pub next: *mut nfsdirent,
        pub name: *mut c_char,
        pub inode: u64,
        pub type_: u32,
        pub mode: u32,
        pub size: u64,
        pub atime: timeval,
        pub mtime: timeval,
        pub ctime: timeval,
        pub uid: u32,
        pub gid: u32,
        pub nlink: u32,
        pub dev: u64,
        pub rdev: u64,
        pub blksize: u64,
        pub blocks: u64,
        pub used: u64,
        pub atime_nsec: u32,
        pub mtime_nsec: u32,
        pub ctime_nsec: u32,
    }

    // The raw NFSv4 COMPOUND used for SETATTR (see `Client::setattr4`).
    // Layouts from libnfs-raw-nfs4.h of libnfs 4.0.0 on 64-bit Linux, checked
    // with a C program: sizeof(nfs_argop4) = 136, its union at offset 8;
    // sizeof(COMPOUND4args) = 40; sizeof(SETATTR4args) = 48.
    #[repr(C)]
    pub struct rpc_context {
        _private: [u8; 0],
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct xdr_bytes {
        pub len: u32,
        pub val: *mut c_char,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct bitmap4 {
        pub len: u32,
        pub val: *mut u32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct stateid4 {
        pub seqid: u32,
        pub other: [u8; 12],
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct fattr4 {
        pub attrmask: bitmap4,
        pub attr_vals: xdr_bytes,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct SETATTR4args {
        pub stateid: stateid4,
        pub obj_attributes: fattr4,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub union argop4_u {
        pub lookup: xdr_bytes,
        pub setattr: SETATTR4args,
        pub _size: [u64; 16],
    }
    #[repr(C)]
    pub struct nfs_argop4 {
        pub argop: u32,
        pub u: argop4_u,
    }
    #[repr(C)]
    pub struct COMPOUND4args {
        pub tag: xdr_bytes,
        pub minorversion: u32,
        pub argarray: ArgArray,
    }
    #[repr(C)]
    pub struct ArgArray {
        pub len: u32,
        pub val: *mut nfs_argop4,
    }
    /// The head of COMPOUND4res: the status and how many ops ran.
    #[repr(C)]
    pub struct COMPOUND4res {
        pub status: i32,
        pub tag: xdr_bytes,
        pub resarray_len: u32,
        pub resarray_val: *mut c_void,
    }
    pub const OP_LOOKUP: u32 = 15;
    pub const OP_PUTROOTFH: u32 = 24;
    pub const OP_SETATTR: u32 = 34;
    pub const FATTR4_MODE: u32 = 33;
    pub const FATTR4_OWNER: u32 = 36;
    pub const FATTR4_OWNER_GROUP: u32 = 37;
    pub const RPC_STATUS_SUCCESS: c_int = 0;
    pub const RPC_STATUS_TIMEOUT: c_int = 3;
    pub type rpc_cb = extern "C" fn(rpc: *mut rpc_context, status: c_int, data: *mut c_void, private: *mut c_void);

    pub const NF3REG: u32 = 1;
    pub const NF3DIR: u32 = 2;
    pub const NF3LNK: u32 = 5;

    extern "C" {
        pub fn nfs_init_context() -> *mut nfs_context;
        pub fn nfs_destroy_context(nfs: *mut nfs_context);
        pub fn nfs_get_error(nfs: *mut nfs_context) -> *mut c_char;
        pub fn nfs_parse_url_dir(nfs: *mut nfs_context, url: *const c_char) -> *mut nfs_url;
        pub fn nfs_destroy_url(url: *mut nfs_url);
        pub fn nfs_set_version(nfs: *mut nfs_context, version: c_int) -> c_int;
        pub fn nfs_set_timeout(nfs: *mut nfs_context, milliseconds: c_int);
        pub fn nfs_set_autoreconnect(nfs: *mut nfs_context, num_retries: c_int);
        pub fn nfs_umask(nfs: *mut nfs_context, mask: u16) -> u16;
        pub fn nfs4_set_client_name(nfs: *mut nfs_context, id: *const c_char);
        pub fn nfs_set_uid(nfs: *mut nfs_context, uid: c_int);
        pub fn nfs_set_tcp_syncnt(nfs: *mut nfs_context, v: c_int);
        pub fn nfs_set_gid(nfs: *mut nfs_context, gid: c_int);
        pub fn nfs_get_readmax(nfs: *mut nfs_context) -> u64;
        pub fn nfs_get_writemax(nfs: *mut nfs_context) -> u64;
        pub fn nfs_mount(nfs: *mut nfs_context, server: *const c_char, exportname: *const c_char) -> c_int;
        pub fn nfs_mkdir2(nfs: *mut nfs_context, path: *const c_char, mode: c_int) -> c_int;
        pub fn nfs_rmdir(nfs: *mut nfs_context, path: *const c_char) -> c_int;
        pub fn nfs_unlink(nfs: *mut nfs_context, path: *const c_char) -> c_int;
        pub fn nfs_stat64(nfs: *mut nfs_context, path: *const c_char, st: *mut nfs_stat_64) -> c_int;
        pub fn nfs_lstat64(nfs: *mut nfs_context, path: *const c_char, st: *mut nfs_stat_64) -> c_int;
        pub fn nfs_chmod(nfs: *mut nfs_context, path: *const c_char, mode: c_int) -> c_int;
        pub fn nfs_chown(nfs: *mut nfs_context, path: *const c_char, uid: c_int, gid: c_int) -> c_int;
        pub fn nfs_lchown(nfs: *mut nfs_context, path: *const c_char, uid: c_int, gid: c_int) -> c_int;
        pub fn nfs_rename(nfs: *mut nfs_context, oldpath: *const c_char, newpath: *const c_char) -> c_int;
        pub fn nfs_opendir(nfs: *mut nfs_context, path: *const c_char, dir: *mut *mut nfsdir) -> c_int;
        pub fn nfs_readdir(nfs: *mut nfs_context, dir: *mut nfsdir) -> *mut nfsdirent;
        pub fn nfs_closedir(nfs: *mut nfs_context, dir: *mut nfsdir);
        pub fn nfs_open(nfs: *mut nfs_context, path: *const c_char, flags: c_int, fh: *mut *mut nfsfh) -> c_int;
        pub fn nfs_create(
            nfs: *mut nfs_context,
            path: *const c_char,
            flags: c_int,
            mode: c_int,
            fh: *mut *mut nfsfh,
        ) -> c_int;
        pub fn nfs_close(nfs: *mut nfs_context, fh: *mut nfsfh) -> c_int;
        pub fn nfs_pread(nfs: *mut nfs_context, fh: *mut nfsfh, offset: u64, count: u64, buf: *mut c_void) -> c_int;
        pub fn nfs_pwrite(nfs: *mut nfs_context, fh: *mut nfsfh, offset: u64, count: u64, buf: *const c_void) -> c_int;
        pub fn nfs_statvfs64(nfs: *mut nfs_context, path: *const c_char, st: *mut nfs_statvfs_64) -> c_int;
        pub fn nfs_readlink2(nfs: *mut nfs_context, path: *const c_char, buf: *mut *mut c_char) -> c_int;
        pub fn nfs_symlink(nfs: *mut nfs_context, target: *const c_char, linkname: *const c_char) -> c_int;
        pub fn nfs_get_rpc_context(nfs: *mut nfs_context) -> *mut rpc_context;
        pub fn rpc_get_fd(rpc: *mut rpc_context) -> c_int;
        pub fn rpc_which_events(rpc: *mut rpc_context) -> c_int;
        pub fn rpc_service(rpc: *mut rpc_context, revents: c_int) -> c_int;
        pub fn rpc_get_error(rpc: *mut rpc_context) -> *mut c_char;
        pub fn rpc_nfs4_compound_async(
            rpc: *mut rpc_context,
            cb: rpc_cb,
            args: *mut COMPOUND4args,
            private: *mut c_void,
        ) -> c_int;
    }

    const _: () = assert!(std::mem::size_of::<nfs_argop4>() == 136);
    const _: () = assert!(std::mem::offset_of!(nfs_argop4, u) == 8);
    const _: () = assert!(std::mem::size_of::<COMPOUND4args>() == 40);
    const _: () = assert!(std::mem::size_of::<SETATTR4args>() == 48);
}

/// The default bound on one NFS call (libnfs counts it in whole seconds).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest chunk read in one call (libnfs 4.0 fails NFSv4 reads of 2 MiB).
const MAX_READ: u64 = 1 << 20;

/// Largest chunk written in one NFSv4 call. libnfs 4.0 encodes a v4 WRITE
/// into a buffer of about 4 KiB: 3944 bytes of data was the most that
/// worked against ganesha ("ZDR error: Failed to encode COMPOUND4args"
/// beyond), and a server with longer file handles leaves less room.
const MAX_WRITE_V4: u64 = 3072;

/// Largest chunk written in one NFSv3 call.
const MAX_WRITE_V3: u64 = 1 << 20;

/// A failed NFS operation: what was done, on which server and path, the
/// errno libnfs reported and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// `server:/export`, the connection the call went through.
    pub target: String,
    /// What was being done, with its path ("mkdir pvc-1").
    pub op: String,
    /// The errno (positive); `EIO` when libnfs gave none.
    pub errno: i32,
    /// libnfs's message (`nfs_get_error`), possibly empty.
    pub message: String,
    /// Whether it failed while connecting and mounting the export.
    pub connecting: bool,
}

impl Error {
    fn local(target: &str, op: String, errno: i32, message: &str) -> Error {
        Error { target: target.to_string(), op, errno, message: message.to_string(), connecting: false }
    }

    /// Whether the server could not be reached or did not answer in time.
    pub fn is_unreachable(&self) -> bool {
        let m = self.message.to_ascii_lowercase();
        matches!(
            self.errno,
            libc::ECONNREFUSED
                | libc::ETIMEDOUT
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::ECONNRESET
                | libc::EPIPE
                | libc::ENOTCONN
        ) || m.contains("timed out")
            || m.contains("timeout")
            || m.contains("connect")
            || (self.connecting && !matches!(self.errno, libc::EACCES | libc::EPERM | libc::ENOENT | libc::EINVAL))
    }

    /// Whether the path did not exist.
    pub fn is_not_found(&self) -> bool {
        self.errno == libc::ENOENT
    }

    /// Whether the path already existed.
    pub fn is_exists(&self) -> bool {
        self.errno == libc::EEXIST
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errno = nix::errno::Errno::from_raw(self.errno);
        write!(f, "NFS {}: {}: {}", self.target, self.op, errno.desc())?;
        // libnfs's message often repeats the call and adds the NFS status.
        if !self.message.is_empty() {
            write!(f, " ({})", self.message.trim())?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

/// The codes the CSI spec asks for, decided once, at the controller's edge.
impl From<Error> for csi_core::Error {
    fn from(e: Error) -> csi_core::Error {
        use csi_core::Error as E;
        match e.errno {
            _ if e.is_unreachable() => E::Unavailable(format!("NFS server unreachable: {e}")),
            libc::EACCES | libc::EPERM => E::PermissionDenied(e.to_string()),
            libc::ENOSPC | libc::EDQUOT => E::ResourceExhausted(e.to_string()),
            libc::ENOENT if e.connecting => E::NotFound(format!("export not found: {e}")),
            libc::ENOENT => E::NotFound(e.to_string()),
            libc::EROFS => E::FailedPrecondition(e.to_string()),
            _ => E::Internal(e.to_string()),
        }
    }
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where to connect: a server, an export on it, and how.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// Host name or IPv4 address.
    pub server: String,
    /// The export's path (`/export`, `srv/nfs`: a leading `/` is added).
    pub export: String,
    /// The NFS port; `None` is 2049 for v4, the portmapper's answer for v3.
    pub port: Option<u16>,
    /// 3 or 4.
    pub version: u32,
    /// Bound on each call, connecting included.
    pub timeout: Duration,
}

impl Target {
    /// `server:/export`, as error messages show it.
    pub fn display(&self) -> String {
        match self.port {
            Some(p) => format!("{}:/{} (port {p})", self.server, self.export.trim_matches('/')),
            None => format!("{}:/{}", self.server, self.export.trim_matches('/')),
        }
    }
}

/// What a path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileType {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A device, FIFO or socket.
    Other,
}

impl FileType {
    fn from_mode(mode: u64) -> FileType {
        match mode as u32 & libc::S_IFMT {
            libc::S_IFREG => FileType::File,
            libc::S_IFDIR => FileType::Dir,
            libc::S_IFLNK => FileType::Symlink,
            _ => FileType::Other,
        }
    }
}

/// The attributes the controller looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// What it is.
    pub kind: FileType,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
}

/// One directory entry (`.` and `..` are left out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's name.
    pub name: String,
    /// What it is.
    pub kind: FileType,
}

/// A file system's size, as `statvfs` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsStat {
    /// Total bytes.
    pub total_bytes: u64,
    /// Bytes available to an unprivileged user.
    pub available_bytes: u64,
    /// Total inodes.
    pub total_inodes: u64,
    /// Free inodes.
    pub free_inodes: u64,
}

/// One connection to one export.
pub struct Client {
    ctx: NonNull<ffi::nfs_context>,
    target: String,
    /// The export's path components from the server's root (for raw v4 calls).
    export: Vec<String>,
    version: u32,
    timeout: Duration,
    /// Callback states of raw calls given up on at their deadline: libnfs
    /// may still write to them until the context is destroyed.
    /// (`Box::into_raw` pointers, freed in `Drop` after the context.)
    abandoned: Vec<*mut CallState>,
}

/// What the raw COMPOUND callback reports.
#[derive(Default)]
struct CallState {
    done: bool,
    rpc_status: c_int,
    nfs_status: i32,
    ops_run: u32,
    error: String,
}

extern "C" fn compound_cb(rpc: *mut ffi::rpc_context, status: c_int, data: *mut c_void, private: *mut c_void) {
    // SAFETY: private is the CallState given to rpc_nfs4_compound_async,
    // kept alive until the context is destroyed; data is a COMPOUND4res on
    // success, an error string on RPC_STATUS_ERROR.
    let st = unsafe { &mut *(private as *mut CallState) };
    st.done = true;
    st.rpc_status = status;
    if status == ffi::RPC_STATUS_SUCCESS && !data.is_null() {
        let res = unsafe { &*(data as *const ffi::COMPOUND4res) };
        st.nfs_status = res.status;
        st.ops_run = res.resarray_len;
    } else if !rpc.is_null() {
        st.error = rpc_error(rpc);
    }
}

fn rpc_error(rpc: *mut ffi::rpc_context) -> String {
    // SAFETY: valid rpc context; the string is copied at once.
    let p = unsafe { ffi::rpc_get_error(rpc) };
    if p.is_null() {
        return String::new();
    }
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// libnfs reports its own timeouts as EINTR with "timed out" in the
/// message: call them ETIMEDOUT so messages and codes say what happened.
fn timed_out(errno: i32, message: &str) -> i32 {
    if message.to_ascii_lowercase().contains("timed out") {
        libc::ETIMEDOUT
    } else {
        errno
    }
}

/// An NFSv4 status as an errno (NFS4ERR values below 100 are errnos).
fn nfs4_errno(status: i32) -> i32 {
    match status {
        1..=99 => status,
        10008 | 10013 => libc::EAGAIN, // DELAY, GRACE
        10039 => libc::EINVAL,         // BADOWNER
        10001 | 10020 => libc::ESTALE, // BADHANDLE, FHEXPIRED
        _ => libc::EIO,
    }
}

/// XDR encoding of the SETATTR values, in attribute order.
fn encode_attrs(mode: Option<u32>, owner: Option<(u32, u32)>) -> (Vec<u32>, Vec<u8>) {
    let mut mask = [0u32; 2];
    let mut vals = Vec::new();
    let string = |vals: &mut Vec<u8>, s: String| {
        vals.extend_from_slice(&(s.len() as u32).to_be_bytes());
        vals.extend_from_slice(s.as_bytes());
        vals.resize(vals.len().next_multiple_of(4), 0);
    };
    if let Some(m) = mode {
        mask[1] |= 1 << (ffi::FATTR4_MODE - 32);
        vals.extend_from_slice(&(m & 0o7777).to_be_bytes());
    }
    if let Some((uid, gid)) = owner {
        mask[1] |= 1 << (ffi::FATTR4_OWNER - 32) | 1 << (ffi::FATTR4_OWNER_GROUP - 32);
        string(&mut vals, uid.to_string());
        string(&mut vals, gid.to_string());
    }
    (mask.to_vec(), vals)
}

// A context may move between threads; it is only ever used by one at a
// time (`&mut self` on every call, and `Client` is not `Sync`).
unsafe impl Send for Client {}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("target", &self.target).finish()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // SAFETY: the context is ours and no call is running (&mut self).
        // Destroying it cancels pending PDUs, whose callbacks may still
        // write to the abandoned states: free those only afterwards.
        unsafe { ffi::nfs_destroy_context(self.ctx.as_ptr()) }
        for st in self.abandoned.drain(..) {
            // SAFETY: from Box::into_raw, freed once.
            drop(unsafe { Box::from_raw(st) });
        }
    }
}

/// A path relative to the export, as libnfs wants it: absolute from the
/// export's root. `..` components are refused: nothing the controller does
/// leaves its share.
fn export_path(target: &str, rel: &str) -> Result<CString> {
    if rel.split('/').any(|c| c == "..") {
        return Err(Error::local(target, format!("path {rel:?}"), libc::EINVAL, "'..' is not allowed"));
    }
    CString::new(format!("/{}", rel.trim_start_matches('/')))
        .map_err(|_| Error::local(target, format!("path {rel:?}"), libc::EINVAL, "NUL byte in path"))
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() || dir == "/" {
        name.to_string()
    } else {
        format!("{}/{name}", dir.trim_end_matches('/'))
    }
}

impl Client {
    /// Connects to `server` and mounts `export` (NFS `version` 3 or 4,
    /// `port` or the default), every call bounded by `timeout` (rounded up
    /// to whole seconds, as libnfs wants). The umask is 0: modes given to
    /// [`Client::mkdir`] and [`Client::create_file`] are the modes made.
    pub fn connect(t: &Target) -> Result<Client> {
        let target = t.display();
        let fail = |op: &str, errno: i32, msg: &str| Error {
            target: target.clone(),
            op: op.to_string(),
            errno: timed_out(errno, msg),
            message: msg.to_string(),
            connecting: true,
        };
        if t.version != 3 && t.version != 4 {
            return Err(fail("connect", libc::EINVAL, &format!("NFS version {} (3 or 4 only)", t.version)));
        }
        if t.server.is_empty() || t.server.contains(['/', '?', '&', '#']) {
            return Err(fail("connect", libc::EINVAL, &format!("bad server name {:?}", t.server)));
        }
        // SAFETY: a plain constructor; NULL is checked.
        let ctx = NonNull::new(unsafe { ffi::nfs_init_context() })
            .ok_or_else(|| fail("nfs_init_context", libc::ENOMEM, ""))?;
        let client = Client {
            ctx,
            target: target.clone(),
            export: t.export.split('/').filter(|c| !c.is_empty()).map(str::to_string).collect(),
            version: t.version,
            timeout: t.timeout,
            abandoned: Vec::new(),
        };
        let nfs = client.ctx.as_ptr();
        let secs = t.timeout.as_secs().max(1) + u64::from(t.timeout.subsec_nanos() > 0);
        // SAFETY: nfs is a valid context for every call below.
        unsafe {
            ffi::nfs_set_timeout(nfs, (secs.min(3600) * 1000) as c_int);
            // Fail instead of reconnecting forever: the caller retries.
            ffi::nfs_set_autoreconnect(nfs, 0);
            // nfs_set_timeout does not cover the TCP connect: to a server
            // whose packets vanish, the kernel's SYN retries take ~130 s
            // (measured). Two retries give up after ~7 s (1 + 2 + 4).
            ffi::nfs_set_tcp_syncnt(nfs, 2);
            ffi::nfs_umask(nfs, 0);
        }
        // libnfs names every v4 client alike within a process; two
        // connections opened at once then evict each other's client ID on
        // the server (SETCLIENTID_CONFIRM fails with NFS4ERR_STALE_CLIENTID,
        // seen with 20 parallel CreateVolume). One name per connection.
        static CLIENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = CLIENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
        let name = CString::new(format!("csi-nfs-{host}-{}-{n}", std::process::id()))
            .map_err(|_| fail("connect", libc::EINVAL, "NUL in host name"))?;
        // SAFETY: valid context; libnfs copies the string.
        unsafe { ffi::nfs4_set_client_name(nfs, name.as_ptr()) };
        if let Some(port) = t.port {
            // libnfs 4.0 has no nfs_set_nfsport: the URL's nfsport= sets it.
            // The URL is parsed only for its options; the server and export
            // go to nfs_mount as they are, so they need no URL escaping.
            let url = CString::new(format!("nfs://localhost/x?nfsport={port}&version={}", t.version))
                .map_err(|_| fail("connect", libc::EINVAL, "bad URL"))?;
            // SAFETY: valid context and NUL-terminated string; the result is freed.
            let u = unsafe { ffi::nfs_parse_url_dir(nfs, url.as_ptr()) };
            if u.is_null() {
                return Err(fail("parse nfsport", libc::EINVAL, &client.last_error()));
            }
            // SAFETY: u came from nfs_parse_url_dir.
            unsafe { ffi::nfs_destroy_url(u) };
        }
        // SAFETY: valid context.
        let rc = unsafe { ffi::nfs_set_version(nfs, t.version as c_int) };
        if rc < 0 {
            return Err(fail("set version", -rc, &client.last_error()));
        }
        let server = CString::new(t.server.as_str()).map_err(|_| fail("connect", libc::EINVAL, "NUL in server"))?;
        let export = CString::new(format!("/{}", t.export.trim_matches('/')))
            .map_err(|_| fail("connect", libc::EINVAL, "NUL in export"))?;
        // SAFETY: valid context and strings.
        let rc = unsafe { ffi::nfs_mount(nfs, server.as_ptr(), export.as_ptr()) };
        if rc < 0 {
            return Err(fail("mount export", -rc, &client.last_error()));
        }
        Ok(client)
    }

    /// `server:/export`.
    pub fn target(&self) -> &str {
        &self.target
    }

    fn last_error(&self) -> String {
        // SAFETY: the string is owned by the context and copied at once.
        let p = unsafe { ffi::nfs_get_error(self.ctx.as_ptr()) };
        if p.is_null() {
            return String::new();
        }
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    fn check(&self, rc: c_int, op: impl FnOnce() -> String) -> Result<c_int> {
        if rc >= 0 {
            return Ok(rc);
        }
        let message = self.last_error();
        Err(Error {
            target: self.target.clone(),
            op: op(),
            errno: timed_out(-rc, &message),
            message,
            connecting: false,
        })
    }

    fn path(&self, rel: &str) -> Result<CString> {
        export_path(&self.target, rel)
    }

    /// Makes one directory with exactly `mode`.
    pub fn mkdir(&mut self, path: &str, mode: u32) -> Result<()> {
        let p = self.path(path)?;
        // SAFETY: valid context and path.
        let rc = unsafe { ffi::nfs_mkdir2(self.ctx.as_ptr(), p.as_ptr(), mode as c_int) };
        self.check(rc, || format!("mkdir {path}")).map(drop)
    }

    /// Makes `path` and its missing parents (each with `mode`); existing
    /// directories are fine.
    pub fn mkdir_all(&mut self, path: &str, mode: u32) -> Result<()> {
        let mut cur = String::new();
        for c in path.split('/').filter(|c| !c.is_empty()) {
            cur = join(&cur, c);
            match self.mkdir(&cur, mode) {
                Ok(()) => {}
                Err(e) if e.is_exists() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Removes an empty directory.
    pub fn rmdir(&mut self, path: &str) -> Result<()> {
        let p = self.path(path)?;
        // SAFETY: valid context and path.
        let rc = unsafe { ffi::nfs_rmdir(self.ctx.as_ptr(), p.as_ptr()) };
        self.check(rc, || format!("rmdir {path}")).map(drop)
    }

    /// Removes a file or symlink.
    pub fn unlink(&mut self, path: &str) -> Result<()> {
        let p = self.path(path)?;
        // SAFETY: valid context and path.
        let rc = unsafe { ffi::nfs_unlink(self.ctx.as_ptr(), p.as_ptr()) };
        self.check(rc, || format!("unlink {path}")).map(drop)
    }

    fn stat_impl(&mut self, path: &str, follow: bool) -> Result<Stat> {
        let p = self.path(path)?;
        let mut st = ffi::nfs_stat_64::default();
        // SAFETY: valid context, path and out-pointer.
        let rc = unsafe {
            if follow {
                ffi::nfs_stat64(self.ctx.as_ptr(), p.as_ptr(), &mut st)
            } else {
                ffi::nfs_lstat64(self.ctx.as_ptr(), p.as_ptr(), &mut st)
            }
        };
        self.check(rc, || format!("stat {path}"))?;
        Ok(Stat {
            kind: FileType::from_mode(st.nfs_mode),
            mode: st.nfs_mode as u32 & 0o7777,
            uid: st.nfs_uid as u32,
            gid: st.nfs_gid as u32,
            size: st.nfs_size,
        })
    }

    /// Attributes of `path`, following a final symlink.
    pub fn stat(&mut self, path: &str) -> Result<Stat> {
        self.stat_impl(path, true)
    }

    /// Attributes of `path` itself (a symlink is reported as one).
    pub fn lstat(&mut self, path: &str) -> Result<Stat> {
        self.stat_impl(path, false)
    }

    /// `stat`, with a missing path as `None`.
    pub fn try_stat(&mut self, path: &str) -> Result<Option<Stat>> {
        match self.stat(path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The AUTH_SYS identity of the calls that follow (0:0 after connect).
    /// A server that squashes root maps uid 0 to nobody, but passes other
    /// uids through: acting as the volume's owner is how the controller makes
    /// a directory owned by `uid:gid` there, where a chown by root is refused.
    pub fn set_credentials(&mut self, uid: u32, gid: u32) {
        // SAFETY: valid context; libnfs rebuilds its AUTH_SYS credential.
        unsafe {
            ffi::nfs_set_uid(self.ctx.as_ptr(), uid as c_int);
            ffi::nfs_set_gid(self.ctx.as_ptr(), gid as c_int);
        }
    }

    /// Sets the permission bits.
    pub fn chmod(&mut self, path: &str, mode: u32) -> Result<()> {
        if self.version == 4 {
            return self.setattr4(path, Some(mode), None).map_err(|mut e| {
                e.op = format!("chmod {mode:o} {path}");
                e
            });
        }
        let p = self.path(path)?;
        // SAFETY: valid context and path.
        let rc = unsafe { ffi::nfs_chmod(self.ctx.as_ptr(), p.as_ptr(), mode as c_int) };
        self.check(rc, || format!("chmod {mode:o} {path}")).map(drop)
    }

    /// Sets owner and group. Over NFSv4 the last component is not
    /// followed (it is `lchown`); the controller never chowns a symlink
    /// it did not make.
    pub fn chown(&mut self, path: &str, uid: u32, gid: u32) -> Result<()> {
        if self.version == 4 {
            return self.setattr4(path, None, Some((uid, gid))).map_err(|mut e| {
                e.op = format!("chown {uid}:{gid} {path}");
                e
            });
        }
        let (uid, gid) = (uid as i32, gid as i32);
        let p = self.path(path)?;
        // SAFETY: valid context and path.
        let rc = unsafe { ffi::nfs_chown(self.ctx.as_ptr(), p.as_ptr(), uid, gid) };
        self.check(rc, || format!("chown {uid}:{gid} {path}")).map(drop)
    }

    fn lchown(&mut self, path: &str, uid: u32, gid: u32) -> Result<()> {
        if self.version == 4 {
            return self.chown(path, uid, gid);
        }
        let (uid, gid) = (uid as i32, gid as i32);
        let p = self.path(path)?;
        // SAFETY: valid context and path.
        let rc = unsafe { ffi::nfs_lchown(self.ctx.as_ptr(), p.as_ptr(), uid, gid) };
        self.check(rc, || format!("lchown {uid}:{gid} {path}")).map(drop)
    }

    /// SETATTR over a raw NFSv4 COMPOUND (PUTROOTFH, LOOKUP per component,
    /// SETATTR with the anonymous stateid). libnfs 4.0's own v4 chmod and
    /// chown OPEN the path first, so they fail with NFS4ERR_ISDIR on every
    /// directory, and directories are what the controller chmods and chowns.
    fn setattr4(&mut self, path: &str, mode: Option<u32>, owner: Option<(u32, u32)>) -> Result<()> {
        self.path(path)?; // the same checks as every other call
        let op = || format!("setattr {path}");
        let mut names: Vec<Vec<u8>> = self.export.iter().map(|c| c.as_bytes().to_vec()).collect();
        names.extend(path.split('/').filter(|c| !c.is_empty() && *c != ".").map(|c| c.as_bytes().to_vec()));
        let (mut mask, mut vals) = encode_attrs(mode, owner);
        let zero = ffi::argop4_u { _size: [0; 16] };
        let mut ops = vec![ffi::nfs_argop4 { argop: ffi::OP_PUTROOTFH, u: zero }];
        for n in names.iter_mut() {
            let lookup = ffi::xdr_bytes { len: n.len() as u32, val: n.as_mut_ptr() as *mut c_char };
            ops.push(ffi::nfs_argop4 { argop: ffi::OP_LOOKUP, u: ffi::argop4_u { lookup } });
        }
        let setattr = ffi::SETATTR4args {
            stateid: ffi::stateid4 { seqid: 0, other: [0; 12] },
            obj_attributes: ffi::fattr4 {
                attrmask: ffi::bitmap4 { len: mask.len() as u32, val: mask.as_mut_ptr() },
                attr_vals: ffi::xdr_bytes { len: vals.len() as u32, val: vals.as_mut_ptr() as *mut c_char },
            },
        };
        ops.push(ffi::nfs_argop4 { argop: ffi::OP_SETATTR, u: ffi::argop4_u { setattr } });
        let mut args = ffi::COMPOUND4args {
            tag: ffi::xdr_bytes { len: 0, val: std::ptr::null_mut() },
            minorversion: 0,
            argarray: ffi::ArgArray { len: ops.len() as u32, val: ops.as_mut_ptr() },
        };
        let nfs = self.ctx.as_ptr();
        // SAFETY: valid context; the rpc context lives as long as it.
        let rpc = unsafe { ffi::nfs_get_rpc_context(nfs) };
        // The callback writes through this pointer from inside rpc_service;
        // we only read it after each (opaque) FFI call.
        let state: *mut CallState = Box::into_raw(Box::default());
        // SAFETY: args and everything it points to outlive the call (the
        // PDU is encoded before rpc_nfs4_compound_async returns); state
        // lives until the callback ran or, if we stop waiting, until the
        // context is destroyed.
        let rc = unsafe { ffi::rpc_nfs4_compound_async(rpc, compound_cb, &mut args, state as *mut c_void) };
        if rc != 0 {
            drop(unsafe { Box::from_raw(state) });
            return Err(Error::local(&self.target, op(), libc::EIO, &rpc_error(rpc)));
        }
        let deadline = std::time::Instant::now() + self.timeout + Duration::from_secs(1);
        // SAFETY (all reads of *state): no other reference exists; libnfs
        // writes only during rpc_service.
        loop {
            // SAFETY: valid rpc context; pfd is a local.
            let mut pfd = libc::pollfd {
                fd: unsafe { ffi::rpc_get_fd(rpc) },
                events: unsafe { ffi::rpc_which_events(rpc) } as i16,
                revents: 0,
            };
            unsafe { libc::poll(&mut pfd, 1, 100) };
            // rpc_service also fails PDUs past their timeout (nfs_set_timeout).
            let rc = unsafe { ffi::rpc_service(rpc, pfd.revents as c_int) };
            if unsafe { (*state).done } {
                break;
            }
            if rc < 0 || std::time::Instant::now() > deadline {
                self.abandoned.push(state);
                let (errno, msg) = match rc < 0 {
                    true => (libc::ECONNRESET, rpc_error(rpc)),
                    false => (libc::ETIMEDOUT, "command timed out".to_string()),
                };
                return Err(Error::local(&self.target, op(), errno, &msg));
            }
        }
        // SAFETY: the callback ran; nothing refers to state any more.
        let state = unsafe { Box::from_raw(state) };
        match state.rpc_status {
            ffi::RPC_STATUS_SUCCESS if state.nfs_status == 0 => Ok(()),
            ffi::RPC_STATUS_SUCCESS => {
                // The failing op is the last one that ran: 1 is PUTROOTFH,
                // then one LOOKUP per component, then SETATTR.
                let at_what = match state.ops_run as usize {
                    n if n >= 2 && n < ops.len() => format!(" at LOOKUP {}", String::from_utf8_lossy(&names[n - 2])),
                    _ => String::new(),
                };
                Err(Error::local(
                    &self.target,
                    op(),
                    nfs4_errno(state.nfs_status),
                    &format!("NFS4 status {}{at_what}", state.nfs_status),
                ))
            }
            ffi::RPC_STATUS_TIMEOUT => Err(Error::local(&self.target, op(), libc::ETIMEDOUT, "command timed out")),
            _ => Err(Error::local(&self.target, op(), libc::EIO, &state.error)),
        }
    }

    /// Renames `from` to `to` (replacing a file at `to`, as rename(2)).
    pub fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        let f = self.path(from)?;
        let t = self.path(to)?;
        // SAFETY: valid context and paths.
        let rc = unsafe { ffi::nfs_rename(self.ctx.as_ptr(), f.as_ptr(), t.as_ptr()) };
        self.check(rc, || format!("rename {from} to {to}")).map(drop)
    }

    /// The entries of a directory, without `.` and `..`, sorted by name.
    pub fn read_dir(&mut self, path: &str) -> Result<Vec<DirEntry>> {
        let p = self.path(path)?;
        let nfs = self.ctx.as_ptr();
        let mut dir: *mut ffi::nfsdir = std::ptr::null_mut();
        // SAFETY: valid context, path and out-pointer.
        let rc = unsafe { ffi::nfs_opendir(nfs, p.as_ptr(), &mut dir) };
        self.check(rc, || format!("opendir {path}"))?;
        let mut out = Vec::new();
        loop {
            // SAFETY: dir is open; entries live until closedir.
            let ent = unsafe { ffi::nfs_readdir(nfs, dir) };
            if ent.is_null() {
                break;
            }
            let ent = unsafe { &*ent };
            if ent.name.is_null() {
                continue;
            }
            let name = unsafe { CStr::from_ptr(ent.name) }.to_string_lossy().into_owned();
            if name == "." || name == ".." {
                continue;
            }
            // READDIRPLUS fills mode; fall back on the NFSv3 type.
            let kind = if ent.mode & libc::S_IFMT != 0 {
                FileType::from_mode(u64::from(ent.mode))
            } else {
                match ent.type_ {
                    ffi::NF3REG => FileType::File,
                    ffi::NF3DIR => FileType::Dir,
                    ffi::NF3LNK => FileType::Symlink,
                    _ => FileType::Other,
                }
            };
            out.push(DirEntry { name, kind });
        }
        // SAFETY: dir came from nfs_opendir and is closed once.
        unsafe { ffi::nfs_closedir(nfs, dir) };
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes `path` and everything under it; symlinks are removed, never
    /// followed. A missing path is success.
    pub fn remove_all(&mut self, path: &str) -> Result<()> {
        let st = match self.lstat(path) {
            Ok(st) => st,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        if st.kind != FileType::Dir {
            return match self.unlink(path) {
                Err(e) if !e.is_not_found() => Err(e),
                _ => Ok(()),
            };
        }
        for ent in self.read_dir(path)? {
            self.remove_all(&join(path, &ent.name))?;
        }
        match self.rmdir(path) {
            Err(e) if !e.is_not_found() => Err(e),
            _ => Ok(()),
        }
    }

    /// Copies the tree at `from` to `to` (which must not exist): files,
    /// directories and symlinks, with their modes, and their owners where
    /// the server lets us (a root-squashing server does not; that is not an
    /// error). Devices, FIFOs and sockets are skipped. Returns the bytes
    /// of file data copied.
    pub fn copy_tree(&mut self, from: &str, to: &str) -> Result<u64> {
        let st = self.lstat(from)?;
        let mut bytes = 0;
        match st.kind {
            FileType::Dir => {
                // Writable while we fill it; the real mode at the end.
                self.mkdir(to, 0o700)?;
                for ent in self.read_dir(from)? {
                    bytes += self.copy_tree(&join(from, &ent.name), &join(to, &ent.name))?;
                }
                self.best_effort_chown(to, st.uid, st.gid, true);
                self.chmod(to, st.mode)?;
            }
            FileType::File => {
                bytes = self.copy_file(from, to, st.mode)?;
                self.best_effort_chown(to, st.uid, st.gid, true);
                // After chown, which may clear setuid/setgid bits.
                self.chmod(to, st.mode)?;
            }
            FileType::Symlink => {
                let target = self.readlink(from)?;
                self.symlink(&target, to)?;
                self.best_effort_chown(to, st.uid, st.gid, false);
            }
            FileType::Other => tracing::debug!(path = from, "copy: skipping a device, FIFO or socket"),
        }
        Ok(bytes)
    }

    fn best_effort_chown(&mut self, path: &str, uid: u32, gid: u32, follow: bool) {
        let r = if follow { self.chown(path, uid, gid) } else { self.lchown(path, uid, gid) };
        if let Err(e) = r {
            tracing::debug!("copy keeps the server's owner: {e}");
        }
    }

    fn copy_file(&mut self, from: &str, to: &str, mode: u32) -> Result<u64> {
        let src = self.open(from, libc::O_RDONLY)?;
        let dst = self.create(to, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, mode | 0o200)?;
        let mut buf = vec![0u8; self.read_size() as usize];
        let mut off = 0u64;
        let r = (|| loop {
            let n = self.pread(&src, off, &mut buf, from)?;
            if n == 0 {
                return Ok(off);
            }
            self.pwrite_all(&dst, off, &buf[..n], to)?;
            off += n as u64;
        })();
        let closed = self.close(src, from).and(self.close(dst, to));
        let copied = r?;
        closed.map(|()| copied)
    }

    fn read_size(&self) -> u64 {
        // SAFETY: valid context. 0 (unknown) over NFSv4 in libnfs 4.0.
        let r = unsafe { ffi::nfs_get_readmax(self.ctx.as_ptr()) };
        if r == 0 {
            256 << 10
        } else {
            r.clamp(4096, MAX_READ)
        }
    }

    fn write_size(&self) -> u64 {
        if self.version == 4 {
            return MAX_WRITE_V4;
        }
        // SAFETY: valid context.
        let w = unsafe { ffi::nfs_get_writemax(self.ctx.as_ptr()) };
        if w == 0 {
            MAX_WRITE_V4
        } else {
            w.clamp(4096, MAX_WRITE_V3)
        }
    }

    /// The target of a symlink.
    pub fn readlink(&mut self, path: &str) -> Result<String> {
        let p = self.path(path)?;
        let mut buf: *mut c_char = std::ptr::null_mut();
        // SAFETY: valid context, path and out-pointer; buf is freed below.
        let rc = unsafe { ffi::nfs_readlink2(self.ctx.as_ptr(), p.as_ptr(), &mut buf) };
        self.check(rc, || format!("readlink {path}"))?;
        if buf.is_null() {
            return Ok(String::new());
        }
        let s = unsafe { CStr::from_ptr(buf) }.to_string_lossy().into_owned();
        unsafe { libc::free(buf as *mut c_void) };
        Ok(s)
    }

    /// Makes a symlink at `link` pointing to `target` (stored verbatim).
    pub fn symlink(&mut self, target: &str, link: &str) -> Result<()> {
        let t = CString::new(target)
            .map_err(|_| Error::local(&self.target, format!("symlink {link}"), libc::EINVAL, "NUL in target"))?;
        let l = self.path(link)?;
        // SAFETY: valid context and strings.
        let rc = unsafe { ffi::nfs_symlink(self.ctx.as_ptr(), t.as_ptr(), l.as_ptr()) };
        self.check(rc, || format!("symlink {link} -> {target}")).map(drop)
    }

    /// Size and free space of the export's file system.
    pub fn statvfs(&mut self, path: &str) -> Result<FsStat> {
        let p = self.path(path)?;
        let mut st = ffi::nfs_statvfs_64::default();
        // SAFETY: valid context, path and out-pointer.
        let rc = unsafe { ffi::nfs_statvfs64(self.ctx.as_ptr(), p.as_ptr(), &mut st) };
        self.check(rc, || format!("statvfs {path}"))?;
        let unit = if st.f_frsize > 0 { st.f_frsize } else { st.f_bsize };
        Ok(FsStat {
            total_bytes: st.f_blocks.saturating_mul(unit),
            available_bytes: st.f_bavail.saturating_mul(unit),
            total_inodes: st.f_files,
            free_inodes: st.f_ffree,
        })
    }

    /// Writes `data` to a new file with `mode`; an existing file is
    /// EEXIST (libnfs 4.0's NFSv4 create is always exclusive, so this is
    /// made the rule for both versions).
    pub fn write_file(&mut self, path: &str, data: &[u8], mode: u32) -> Result<()> {
        let fh = self.create(path, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, mode)?;
        let r = self.pwrite_all(&fh, 0, data, path);
        let c = self.close(fh, path);
        r.and(c)
    }

    /// Writes `data` to `path` (new or replaced) through a temporary file
    /// and a rename, so a reader sees the old content or the new one,
    /// never a part.
    pub fn write_file_atomic(&mut self, path: &str, data: &[u8], mode: u32) -> Result<()> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = format!("{path}.tmp-{}-{n}", std::process::id());
        if let Err(e) = self.write_file(&tmp, data, mode).and_then(|()| self.rename(&tmp, path)) {
            let _ = self.unlink(&tmp);
            return Err(e);
        }
        Ok(())
    }

    /// The whole content of a (small) file.
    pub fn read_file(&mut self, path: &str) -> Result<Vec<u8>> {
        let fh = self.open(path, libc::O_RDONLY)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; self.read_size() as usize];
        let r = loop {
            match self.pread(&fh, out.len() as u64, &mut buf, path) {
                Ok(0) => break Ok(()),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => break Err(e),
            }
        };
        let c = self.close(fh, path);
        r.and(c).map(|()| out)
    }

    fn open(&mut self, path: &str, flags: c_int) -> Result<FileHandle> {
        let p = self.path(path)?;
        let mut fh: *mut ffi::nfsfh = std::ptr::null_mut();
        // SAFETY: valid context, path and out-pointer.
        let rc = unsafe { ffi::nfs_open(self.ctx.as_ptr(), p.as_ptr(), flags, &mut fh) };
        self.check(rc, || format!("open {path}"))?;
        Ok(FileHandle(fh))
    }

    fn create(&mut self, path: &str, flags: c_int, mode: u32) -> Result<FileHandle> {
        let p = self.path(path)?;
        let mut fh: *mut ffi::nfsfh = std::ptr::null_mut();
        // SAFETY: valid context, path and out-pointer.
        let rc = unsafe { ffi::nfs_create(self.ctx.as_ptr(), p.as_ptr(), flags, mode as c_int, &mut fh) };
        self.check(rc, || format!("create {path}"))?;
        Ok(FileHandle(fh))
    }

    fn close(&mut self, fh: FileHandle, path: &str) -> Result<()> {
        // SAFETY: the handle came from open/create on this context and is closed once.
        let rc = unsafe { ffi::nfs_close(self.ctx.as_ptr(), fh.0) };
        self.check(rc, || format!("close {path}")).map(drop)
    }

    fn pread(&mut self, fh: &FileHandle, off: u64, buf: &mut [u8], path: &str) -> Result<usize> {
        // SAFETY: valid context and open handle; buf is writable for its length.
        let rc =
            unsafe { ffi::nfs_pread(self.ctx.as_ptr(), fh.0, off, buf.len() as u64, buf.as_mut_ptr() as *mut c_void) };
        self.check(rc, || format!("read {path} at {off}")).map(|n| n as usize)
    }

    fn pwrite_all(&mut self, fh: &FileHandle, mut off: u64, mut data: &[u8], path: &str) -> Result<()> {
        let chunk = self.write_size() as usize;
        while !data.is_empty() {
            let part = &data[..data.len().min(chunk)];
            // SAFETY: valid context and open handle; part is readable for its length.
            let rc = unsafe {
                ffi::nfs_pwrite(self.ctx.as_ptr(), fh.0, off, part.len() as u64, part.as_ptr() as *const c_void)
            };
            let n = self.check(rc, || format!("write {path} at {off}"))? as usize;
            if n == 0 {
                return Err(Error::local(&self.target, format!("write {path} at {off}"), libc::EIO, "short write"));
            }
            data = &data[n..];
            off += n as u64;
        }
        Ok(())
    }
}

/// An open file; closed by [`Client::close`] (a handle only lives inside
/// one `Client` method, so it is never leaked past an error path that
/// does not close it — the context's destruction frees it anyway).
struct FileHandle(*mut ffi::nfsfh);

/// Connects to `target` and runs `f` on a blocking thread. The connection
/// is dropped when `f` returns.
pub async fn run<T, F>(target: Target, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&mut Client) -> Result<T> + Send + 'static,
{
    let what = target.display();
    tokio::task::spawn_blocking(move || {
        let mut c = Client::connect(&target)?;
        f(&mut c)
    })
    .await
    .map_err(|e| Error {
        target: what,
        op: "blocking task".into(),
        errno: libc::EIO,
        message: e.to_string(),
        connecting: false,
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_made_absolute_in_the_export_and_never_leave_it() {
        assert_eq!(export_path("t", "a/b").unwrap().to_str().unwrap(), "/a/b");
        assert_eq!(export_path("t", "/a").unwrap().to_str().unwrap(), "/a");
        assert_eq!(export_path("t", "").unwrap().to_str().unwrap(), "/");
        assert_eq!(export_path("t", "a/../b").unwrap_err().errno, libc::EINVAL);
        assert_eq!(export_path("t", "a\0b").unwrap_err().errno, libc::EINVAL);
        assert_eq!(join("", "x"), "x");
        assert_eq!(join("a/", "x"), "a/x");
    }

    fn err(errno: i32, connecting: bool) -> Error {
        Error { target: "s:/e".into(), op: "mkdir v".into(), errno, message: String::new(), connecting }
    }

    #[test]
    fn errnos_map_to_the_codes_the_spec_asks_for() {
        use csi_core::Error as E;
        let code = |e: Error| match csi_core::Error::from(e) {
            E::Unavailable(_) => "unavailable",
            E::PermissionDenied(_) => "permission",
            E::ResourceExhausted(_) => "exhausted",
            E::NotFound(_) => "notfound",
            E::Internal(_) => "internal",
            E::FailedPrecondition(_) => "precondition",
            _ => "other",
        };
        for errno in [libc::ECONNREFUSED, libc::ETIMEDOUT, libc::EHOSTUNREACH] {
            assert_eq!(code(err(errno, false)), "unavailable");
        }
        assert_eq!(code(err(libc::EIO, true)), "unavailable", "any failure to connect");
        assert_eq!(code(err(libc::EACCES, false)), "permission");
        assert_eq!(code(err(libc::EPERM, true)), "permission");
        assert_eq!(code(err(libc::ENOSPC, false)), "exhausted");
        assert_eq!(code(err(libc::EDQUOT, false)), "exhausted");
        assert_eq!(code(err(libc::ENOENT, true)), "notfound");
        assert_eq!(code(err(libc::EIO, false)), "internal");
        let mut timed_out = err(libc::EIO, false);
        timed_out.message = "Command timed out".into();
        assert_eq!(code(timed_out), "unavailable");
    }

    #[test]
    fn setattr_values_are_xdr_in_attribute_order() {
        let (mask, vals) = encode_attrs(Some(0o2750), Some((1000, 65534)));
        assert_eq!(mask, vec![0, (1 << 1) | (1 << 4) | (1 << 5)], "MODE=33, OWNER=36, OWNER_GROUP=37");
        let mut want = 0o2750u32.to_be_bytes().to_vec();
        want.extend_from_slice(&[0, 0, 0, 4, b'1', b'0', b'0', b'0']);
        want.extend_from_slice(&[0, 0, 0, 5, b'6', b'5', b'5', b'3', b'4', 0, 0, 0]);
        assert_eq!(vals, want);
        assert_eq!(encode_attrs(None, None), (vec![0, 0], vec![]));
        assert_eq!((nfs4_errno(13), nfs4_errno(10039), nfs4_errno(10013)), (libc::EACCES, libc::EINVAL, libc::EAGAIN));
    }

    #[test]
    fn messages_name_the_server_the_call_and_the_errno() {
        let mut e = err(libc::EACCES, false);
        e.message = "NFS4ERR_ACCESS".into();
        assert_eq!(e.to_string(), "NFS s:/e: mkdir v: Permission denied (NFS4ERR_ACCESS)");
    }

    #[test]
    fn a_refused_connection_fails_fast_and_says_so() {
        // A port nobody listens on: bind, read the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let t = Target {
            server: "127.0.0.1".into(),
            export: "/export".into(),
            port: Some(port),
            version: 4,
            timeout: Duration::from_secs(2),
        };
        let started = std::time::Instant::now();
        let e = Client::connect(&t).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(e.connecting && e.is_unreachable(), "{e:?}");
        assert!(e.to_string().contains(&format!("127.0.0.1:/export (port {port})")), "{e}");
    }

    #[test]
    fn bad_versions_and_server_names_are_refused_before_any_io() {
        let mut t =
            Target { server: "s".into(), export: "e".into(), port: None, version: 2, timeout: Duration::from_secs(1) };
        assert_eq!(Client::connect(&t).unwrap_err().errno, libc::EINVAL);
        t.version = 4;
        t.server = "a/b".into();
        assert_eq!(Client::connect(&t).unwrap_err().errno, libc::EINVAL);
    }
}
