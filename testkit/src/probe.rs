//! Traffic probes through network namespaces, for tests that assert what a packet filter lets
//! through: a TCP connect, a UDP request answered by an echo server, an ICMP/ICMPv6 echo (or
//! timestamp) request, and a long-lived TCP stream that must survive a ruleset change.
//!
//! Every socket is created by a thread that first enters the namespace (`setns` changes only
//! the calling thread's network namespace, and a socket stays in the namespace it was created
//! in), so the test process itself sends and answers the packets: no helper processes, no
//! `nc`. A probe is answered or not within a bounded wait; "not answered" means dropped only
//! once an answered control probe has shown the path works, which the callers arrange.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::util::{Context, R};

/// How long a probe waits for its answer before calling the packet dropped. All traffic stays
/// inside the host's kernel, so an answered probe takes well under a millisecond; this only
/// has to cover a loaded machine.
pub const DROP_WAIT: Duration = Duration::from_millis(300);

/// Runs `f` on a thread that has entered the network namespace at `netns` (a path such as
/// `/var/run/netns/NAME`); sockets `f` creates belong to that namespace for their lifetime.
pub fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> R<T> {
    let file = File::open(netns).ctx(format!("open {}", netns.display()))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET).ctx(format!("setns {}", netns.display()))?;
            Ok(f())
        })
        .join()
        .map_err(|_| "probe thread panicked".to_string())?
    })
}

/// Waits (polling `ip -j link`, up to `timeout`) until `ifname` in namespace `netns_name` has
/// operstate UP. A veth's carrier, and with it the queueing discipline that lets packets out,
/// comes up asynchronously after `ip link set up` (the kernel's link watch runs up to a second
/// later); until then IPv6 packets are discarded. Waiting for this, not for a packet, keeps a
/// test's first packet its first.
pub fn wait_carrier(netns_name: &str, ifname: &str, timeout: Duration) -> R<()> {
    let end = Instant::now() + timeout;
    loop {
        let out = crate::util::ip(&["-n", netns_name, "-j", "link", "show", "dev", ifname])?;
        let v: serde_json::Value = serde_json::from_str(&out).ctx("ip -j link")?;
        if v[0]["operstate"] == "UP" {
            return Ok(());
        }
        if Instant::now() > end {
            return Err(format!("{ifname} in {netns_name} is not UP after {timeout:?}: {out}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The peer answered (TCP handshake done, UDP or ICMP reply received).
    Answered,
    /// A TCP reset or ICMP unreachable: the packet reached the peer's kernel, which refused it.
    Refused,
    /// Nothing within the wait (or the sender's own output path refused to send it).
    Silent,
}

impl Outcome {
    /// Whether the packet reached the peer (a filter let it through).
    pub fn delivered(self) -> bool {
        self != Outcome::Silent
    }
}

/// One probe: from a namespace to an address, by protocol.
#[derive(Debug, Clone)]
pub struct Probe {
    pub netns: PathBuf,
    pub kind: ProbeKind,
    pub wait: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// TCP connect to `dst`, from source port `src_port` (0: ephemeral).
    Tcp { dst: SocketAddr, src_port: u16 },
    /// A UDP datagram to `dst` that an [`EchoServer`] sends back.
    Udp { dst: SocketAddr, src_port: u16 },
    /// An ICMP (IPv4) or ICMPv6 request: echo (8 / 128) or, for IPv4, timestamp (13), which the
    /// kernel answers by itself.
    Icmp { dst: IpAddr, icmp_type: u8, code: u8 },
}

impl Probe {
    pub fn tcp(netns: &Path, dst: SocketAddr) -> Probe {
        Probe { netns: netns.into(), kind: ProbeKind::Tcp { dst, src_port: 0 }, wait: DROP_WAIT }
    }
    pub fn udp(netns: &Path, dst: SocketAddr) -> Probe {
        Probe { netns: netns.into(), kind: ProbeKind::Udp { dst, src_port: 0 }, wait: DROP_WAIT }
    }
    /// An echo request.
    pub fn ping(netns: &Path, dst: IpAddr) -> Probe {
        let icmp_type = if dst.is_ipv4() { 8 } else { 128 };
        Probe { netns: netns.into(), kind: ProbeKind::Icmp { dst, icmp_type, code: 0 }, wait: DROP_WAIT }
    }
    pub fn wait(mut self, wait: Duration) -> Probe {
        self.wait = wait;
        self
    }

    /// Sends the probe and waits for its answer, up to `self.wait`.
    pub fn run(&self) -> R<Outcome> {
        let (kind, wait) = (self.kind, self.wait);
        in_netns(&self.netns, move || match kind {
            ProbeKind::Tcp { dst, src_port } => tcp_connect(dst, src_port, wait),
            ProbeKind::Udp { dst, src_port } => udp_request(dst, src_port, wait),
            ProbeKind::Icmp { dst, icmp_type, code } => icmp_request(dst, icmp_type, code, wait),
        })?
        .ctx(format!("{:?} from {}", self.kind, self.netns.display()))
    }
}

/// Sends one UDP datagram from `src` (an address of the namespace, possibly one it has no
/// right to) to `dst`, for a receiver-side check with [`EchoServer::udp_received_from`].
pub fn udp_send_from(netns: &Path, src: SocketAddr, dst: SocketAddr) -> R<()> {
    in_netns(netns, move || -> std::io::Result<()> {
        let s = UdpSocket::bind(src)?;
        match s.send_to(&nonce().to_be_bytes(), dst) {
            Err(e) if e.raw_os_error() != Some(libc::EPERM) => Err(e),
            _ => Ok(()),
        }
    })?
    .ctx(format!("udp {src} -> {dst} from {}", netns.display()))
}

/// Runs all probes at once (one thread each), so a batch costs one wait, not one per probe.
pub fn run_all(probes: &[Probe]) -> Vec<R<Outcome>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = probes.iter().map(|p| s.spawn(move || p.run())).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("probe thread panicked".into()))).collect()
    })
}

fn domain_of(a: IpAddr) -> Domain {
    if a.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    }
}

fn any_addr(like: IpAddr, port: u16) -> SocketAddr {
    match like {
        IpAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], port)),
        IpAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
    }
}

fn tcp_connect(dst: SocketAddr, src_port: u16, wait: Duration) -> std::io::Result<Outcome> {
    let s = Socket::new(domain_of(dst.ip()), Type::STREAM, Some(Protocol::TCP))?;
    if src_port != 0 {
        s.set_reuse_address(true)?;
        s.bind(&any_addr(dst.ip(), src_port).into())?;
    }
    match s.connect_timeout(&dst.into(), wait) {
        Ok(()) => Ok(Outcome::Answered),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(Outcome::Refused),
        Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => Ok(Outcome::Silent),
        // A SYN retransmitted into a drop can end in EHOSTUNREACH only through ICMP, which
        // means something answered; anything else is a real failure of the probe.
        Err(e) if e.raw_os_error() == Some(libc::EHOSTUNREACH) => Ok(Outcome::Refused),
        Err(e) => Err(e),
    }
}

static NONCE: AtomicU64 = AtomicU64::new(1);

fn nonce() -> u64 {
    (u64::from(std::process::id()) << 32) | NONCE.fetch_add(1, Ordering::Relaxed)
}

fn udp_request(dst: SocketAddr, src_port: u16, wait: Duration) -> std::io::Result<Outcome> {
    let s = UdpSocket::bind(any_addr(dst.ip(), src_port))?;
    s.connect(dst)?;
    let msg = nonce().to_be_bytes();
    if let Err(e) = s.send(&msg) {
        return dropped_on_send(e);
    }
    let end = Instant::now() + wait;
    let mut buf = [0u8; 64];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Outcome::Silent);
        }
        s.set_read_timeout(Some(left))?;
        match s.recv(&mut buf) {
            Ok(n) if buf[..n] == msg => return Ok(Outcome::Answered),
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Ok(Outcome::Refused),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return Ok(Outcome::Silent),
            Err(e) => return Err(e),
        }
    }
}

/// A packet that a filter of the sending namespace's own output path drops fails its `send`
/// with EPERM: silence, as far as the peer is concerned (TCP retransmits its SYN instead and
/// times out). Anything else is a failure of the probe.
fn dropped_on_send(e: std::io::Error) -> std::io::Result<Outcome> {
    if e.raw_os_error() == Some(libc::EPERM) {
        Ok(Outcome::Silent)
    } else {
        Err(e)
    }
}

static ICMP_ID: AtomicU16 = AtomicU16::new(0);

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The reply type of an ICMP request type the kernel answers.
fn icmp_reply_type(t: u8) -> Option<u8> {
    match t {
        8 => Some(0),
        13 => Some(14),
        128 => Some(129),
        _ => None,
    }
}

fn icmp_request(dst: IpAddr, icmp_type: u8, code: u8, wait: Duration) -> std::io::Result<Outcome> {
    let Some(reply) = icmp_reply_type(icmp_type) else {
        return Err(std::io::Error::new(ErrorKind::InvalidInput, format!("no reply to ICMP type {icmp_type}")));
    };
    let v4 = dst.is_ipv4();
    let proto = if v4 { Protocol::ICMPV4 } else { Protocol::ICMPV6 };
    let s = Socket::new(domain_of(dst), Type::RAW, Some(proto))?;
    let id = (std::process::id() as u16) ^ ICMP_ID.fetch_add(1, Ordering::Relaxed).wrapping_mul(7919);
    let seq: u16 = 1;
    // Header, then 12 bytes: what a timestamp request must carry, harmless in an echo.
    let mut pkt = vec![icmp_type, code, 0, 0];
    pkt.extend_from_slice(&id.to_be_bytes());
    pkt.extend_from_slice(&seq.to_be_bytes());
    pkt.extend_from_slice(&[0u8; 12]);
    if v4 {
        // The kernel fills in the ICMPv6 checksum (it covers a pseudo-header) but not ICMP's.
        let c = checksum(&pkt);
        pkt[2..4].copy_from_slice(&c.to_be_bytes());
    }
    if let Err(e) = s.send_to(&pkt, &SockAddr::from(SocketAddr::new(dst, 0))) {
        return dropped_on_send(e);
    }
    let end = Instant::now() + wait;
    let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Outcome::Silent);
        }
        s.set_read_timeout(Some(left))?;
        let (n, from) = match s.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return Ok(Outcome::Silent),
            Err(e) => return Err(e),
        };
        // SAFETY: recv_from initialised the first n bytes.
        let b: Vec<u8> = buf[..n].iter().map(|x| unsafe { x.assume_init() }).collect();
        // An IPv4 raw socket hands over the IP header too; an IPv6 one does not.
        let off = if v4 { usize::from(b.first().map_or(0, |x| x & 0x0f)) * 4 } else { 0 };
        let Some(m) = b.get(off..off + 8) else { continue };
        let from_ip = from.as_socket().map(|a| a.ip());
        if m[0] == reply && u16::from_be_bytes([m[4], m[5]]) == id && from_ip == Some(dst) {
            return Ok(Outcome::Answered);
        }
    }
}

/// Echo servers in one namespace: TCP and UDP on `port`, both address families (one dual-stack
/// socket each). Every TCP connection and every datagram gets its bytes back. Stopped on drop.
pub struct EchoServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Where the datagrams came from, in arrival order: what a receiver saw, for packets
    /// whose reply cannot reach the sender (a forged source address).
    udp_from: Arc<Mutex<Vec<SocketAddr>>>,
}

impl EchoServer {
    pub fn start(netns: &Path, port: u16) -> R<EchoServer> {
        let (tcp, udp) = in_netns(netns, move || -> std::io::Result<(TcpListener, UdpSocket)> {
            let t = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
            t.set_only_v6(false)?;
            t.set_reuse_address(true)?;
            t.bind(&any_addr(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port).into())?;
            t.listen(1024)?;
            let u = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
            u.set_only_v6(false)?;
            u.bind(&any_addr(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port).into())?;
            Ok((t.into(), u.into()))
        })?
        .ctx(format!("echo server on port {port} in {}", netns.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        // The accept loop and the datagram loop wake up every 50 ms to see whether to stop.
        tcp.set_nonblocking(true).ctx("nonblocking listener")?;
        udp.set_read_timeout(Some(Duration::from_millis(50))).ctx("udp timeout")?;
        let st = stop.clone();
        let t_tcp = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !st.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((c, _)) => {
                        let st = st.clone();
                        conns.push(std::thread::spawn(move || echo_stream(c, &st)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        let st = stop.clone();
        let udp_from = Arc::new(Mutex::new(Vec::new()));
        let seen = udp_from.clone();
        let t_udp = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::Relaxed) {
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    // A dual-stack socket reports IPv4 peers as IPv4-mapped IPv6 addresses.
                    let from = match from.ip() {
                        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(from, |v4| SocketAddr::new(v4.into(), from.port())),
                        IpAddr::V4(_) => from,
                    };
                    seen.lock().unwrap_or_else(|p| p.into_inner()).push(from);
                    let _ = udp.send_to(&buf[..n], from);
                }
            }
        });
        Ok(EchoServer { port, stop, threads: vec![t_tcp, t_udp], udp_from })
    }

    /// Waits up to `timeout` for a datagram from `from`; whether one arrived.
    pub fn udp_received_from(&self, from: SocketAddr, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if self.udp_from.lock().unwrap_or_else(|p| p.into_inner()).contains(&from) {
                return true;
            }
            if Instant::now() > end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn echo_stream(mut c: TcpStream, stop: &AtomicBool) {
    let _ = c.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 16384];
    while !stop.load(Ordering::Relaxed) {
        match c.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if c.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A TCP connection to an [`EchoServer`] that sends a chunk and reads its echo over and over,
/// counting round trips, until stopped: proof that a connection lives through a change.
pub struct Stream {
    round_trips: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    failure: Arc<Mutex<Option<String>>>,
    /// The longest time one round trip took.
    longest: Arc<Mutex<Duration>>,
    thread: Option<JoinHandle<()>>,
}

/// What a stream did.
#[derive(Debug, Clone)]
pub struct StreamStats {
    pub round_trips: u64,
    pub longest_round_trip: Duration,
}

impl Stream {
    /// Connects from `netns` to `dst` (within [`DROP_WAIT`]) and starts the loop.
    pub fn start(netns: &Path, dst: SocketAddr) -> R<Stream> {
        let c = in_netns(netns, move || TcpStream::connect_timeout(&dst, DROP_WAIT))?
            .ctx(format!("stream {} -> {dst}", netns.display()))?;
        // A round trip that takes this long is a cut connection, not a slow one.
        c.set_read_timeout(Some(Duration::from_secs(2))).ctx("stream timeout")?;
        let (round_trips, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (failure, longest) = (Arc::new(Mutex::new(None)), Arc::new(Mutex::new(Duration::ZERO)));
        let (rt, st, fl, lg) = (round_trips.clone(), stop.clone(), failure.clone(), longest.clone());
        let thread = std::thread::spawn(move || {
            let mut c = c;
            let chunk = [0x5au8; 4096];
            let mut back = [0u8; 4096];
            while !st.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = c.write_all(&chunk).and_then(|()| c.read_exact(&mut back));
                if let Err(e) = r {
                    *fl.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(format!("after {} round trips: {e}", rt.load(Ordering::Relaxed)));
                    return;
                }
                let mut l = lg.lock().unwrap_or_else(|p| p.into_inner());
                *l = (*l).max(t.elapsed());
                drop(l);
                rt.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(Stream { round_trips, stop, failure, longest, thread: Some(thread) })
    }

    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// Waits until `more` round trips beyond the current count have been made; an error if
    /// the stream failed or did not make them within `timeout`.
    pub fn advance(&self, more: u64, timeout: Duration) -> R<()> {
        let target = self.round_trips() + more;
        let end = Instant::now() + timeout;
        loop {
            if let Some(f) = self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone() {
                return Err(format!("stream failed {f}"));
            }
            if self.round_trips() >= target {
                return Ok(());
            }
            if Instant::now() > end {
                return Err(format!("stream stalled at {} round trips (wanted {target})", self.round_trips()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the loop; an error if the stream failed at any point.
    pub fn stop(mut self) -> R<StreamStats> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(f) = self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Err(format!("stream failed {f}"));
        }
        Ok(StreamStats {
            round_trips: self.round_trips(),
            longest_round_trip: *self.longest.lock().unwrap_or_else(|p| p.into_inner()),
        })
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
