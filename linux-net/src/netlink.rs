//! A synchronous rtnetlink socket: one request, its ack or its dump.
//!
//! A netlink socket belongs to the network namespace it was opened in, so a
//! plugin opens one on the host and one inside the container (see
//! [`crate::netns::NetNs::netlink`]) and never has to switch back and forth.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_ECHO, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::errno::Errno;

use crate::error::{Error, Result};

pub struct Netlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// Bound on waiting for one reply. rtnetlink answers a request before the
/// send returns, so a reply that does not come is a lost message (a bug, or
/// an ack dropped on a full buffer): the call fails instead of hanging.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn set_read_timeout(sock: &Socket, t: std::time::Duration) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let tv = libc::timeval { tv_sec: t.as_secs() as libc::time_t, tv_usec: t.subsec_micros() as libc::suseconds_t };
    // SAFETY: setsockopt on our own socket, with a pointer to a live timeval and its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Netlink {
    /// Opens a route socket in the calling thread's current network namespace.
    pub fn open() -> Result<Netlink> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(|e| Error::io("open netlink socket", e))?;
        sock.bind_auto().map_err(|e| Error::io("bind netlink socket", e))?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(|e| Error::io("connect netlink socket", e))?;
        // Extended acks make the kernel's refusals carry a reason; failure to enable is harmless.
        let _ = sock.set_ext_ack(true);
        set_read_timeout(&sock, READ_TIMEOUT).map_err(|e| Error::io("set the netlink socket's read timeout", e))?;
        Ok(Netlink { sock, seq: 0, buf: vec![0; 64 * 1024] })
    }

    /// The socket's descriptor, for the device ioctls (SIOCGIFINDEX and the
    /// like), which the kernel serves on any socket in its namespace.
    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.sock.as_raw_fd()
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16, op: &dyn Fn() -> String) -> Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        nl.finalize();
        let mut out = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut out);
        self.sock.send(&out, 0).map_err(|e| Error::io(op(), e))?;
        Ok(self.seq)
    }

    /// Sends `msg` and waits for the kernel's ack.
    pub fn request(&mut self, msg: RouteNetlinkMessage, flags: u16, op: &dyn Fn() -> String) -> Result<()> {
        self.request_echo(msg, flags & !NLM_F_ECHO, op).map(|_| ())
    }

    /// Like [`Netlink::request`], also returning what the kernel echoes back
    /// when `flags` has NLM_F_ECHO (e.g. the link it just created, which
    /// saves a GET). Kernels that do not echo a verb return an empty list.
    pub fn request_echo(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: &dyn Fn() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(msg, flags | NLM_F_REQUEST | NLM_F_ACK, op)?;
        self.replies(seq, false, op)
    }

    /// Sends a dump request and collects every reply message.
    pub fn dump(&mut self, msg: RouteNetlinkMessage, op: &dyn Fn() -> String) -> Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(msg, NLM_F_REQUEST | NLM_F_DUMP, op)?;
        self.replies(seq, false, op)
    }

    /// Sends a GET for one object and returns its reply (`Ok(None)` if none came).
    pub fn dump_one(
        &mut self,
        msg: RouteNetlinkMessage,
        op: &dyn Fn() -> String,
    ) -> Result<Option<RouteNetlinkMessage>> {
        let seq = self.send(msg, NLM_F_REQUEST, op)?;
        Ok(self.replies(seq, true, op)?.pop())
    }

    /// Collects the messages answering request `seq` until its ack, DONE or
    /// error (or the first message, with `first_only`).
    fn replies(&mut self, seq: u32, first_only: bool, op: &dyn Fn() -> String) -> Result<Vec<RouteNetlinkMessage>> {
        let mut out = Vec::new();
        loop {
            for reply in self.receive(op)? {
                if reply.header.sequence_number != seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        if first_only {
                            return Ok(out);
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(Error::Kernel { op: op(), errno: Errno::from_raw(-code.get()) }),
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Sends every request of `msgs` (with NLM_F_REQUEST|NLM_F_ACK added to
    /// its flags) without waiting for each ack in turn: up to `window` of
    /// them are packed into one write, which the kernel runs in order before
    /// the write returns, then their acks are read. `refused(i, errno)` is
    /// called for the i-th request the kernel refused. The receive buffer is
    /// raised (SO_RCVBUFFORCE, root) so that a window of acks, refusals with
    /// their echoed request included, fits: the kernel drops an ack that does
    /// not fit, and the next read reports ENOBUFS.
    pub fn pipeline(
        &mut self,
        msgs: &mut dyn Iterator<Item = (RouteNetlinkMessage, u16)>,
        window: usize,
        refused: &mut dyn FnMut(usize, Errno),
    ) -> Result<()> {
        use std::os::fd::AsRawFd;
        let want = (window * 4096).max(256 * 1024) as libc::c_int;
        // SAFETY: setsockopt on our own socket, with a pointer to a live c_int and its size.
        let rc = unsafe {
            libc::setsockopt(
                self.sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&want as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            // Not root: net.core.rmem_max caps what we get; a smaller window is the caller's fix.
            let _ = self.sock.set_rx_buf_sz(want);
        }
        let op = || "batched route requests".to_string();
        let mut out = Vec::with_capacity(window * 128);
        let mut index = 0usize;
        loop {
            out.clear();
            let first_seq = self.seq.wrapping_add(1);
            let first_index = index;
            for (msg, flags) in (&mut *msgs).take(window) {
                self.seq = self.seq.wrapping_add(1);
                let mut header = NetlinkHeader::default();
                header.flags = flags | NLM_F_REQUEST | NLM_F_ACK;
                header.sequence_number = self.seq;
                let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(msg));
                nl.finalize();
                let at = out.len();
                out.resize(at + nl.buffer_len(), 0);
                nl.serialize(&mut out[at..]);
                index += 1;
            }
            let sent = index - first_index;
            if sent == 0 {
                return Ok(());
            }
            self.sock.send(&out, 0).map_err(|e| Error::io(op(), e))?;
            let mut acked = 0;
            while acked < sent {
                for reply in self.receive(&op)? {
                    let off = reply.header.sequence_number.wrapping_sub(first_seq) as usize;
                    if off >= sent {
                        continue;
                    }
                    if let NetlinkPayload::Error(e) = reply.payload {
                        acked += 1;
                        if let Some(code) = e.code {
                            refused(first_index + off, Errno::from_raw(-code.get()));
                        }
                    }
                }
            }
        }
    }

    fn receive(&mut self, op: &dyn Fn() -> String) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
        let n = self.sock.recv(&mut &mut self.buf[..], 0).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Error::io(
                op(),
                std::io::Error::new(e.kind(), format!("the kernel did not answer within {READ_TIMEOUT:?}")),
            ),
            _ => Error::io(op(), e),
        })?;
        let mut msgs = Vec::new();
        let mut off = 0;
        while off < n {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..n])
                .map_err(|e| Error::Decode { op: op(), detail: e.to_string() })?;
            let len = m.header.length as usize;
            msgs.push(m);
            if len == 0 {
                break;
            }
            off += (len + 3) & !3;
        }
        Ok(msgs)
    }
}
