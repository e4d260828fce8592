//! The traffic side of `conformance bench policy`: a "node" network namespace with a bridge
//! and two "containers" (netns, veth into the bridge) carrying the client's and the server's
//! addresses; everything the bench loads (our tables, the iptables ruleset, ipsets) goes
//! into the node namespace only, so nothing of it touches the host's or other tests' rules.
//! `net.bridge.bridge-nf-call-iptables` is set in the node namespace so bridged IPv4 goes
//! through the inet/ip `forward` hooks, as on a Kubernetes node.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::netns::Netns;
use testkit::util::{Context as _, R};
use testkit::{bail, ensure};

use super::gen::ENDPOINT_PREFIX;

/// Host-side interface names in the node namespace.
pub const CLIENT_IF: &str = "bpc0";
pub const SERVER_IF: &str = "bps0";

pub struct Topology {
    pub node: Netns,
    pub client: Netns,
    pub server: Netns,
    pub client_ip: Ipv4Addr,
    pub server_ip: Ipv4Addr,
}

fn run_ok(args: &[&str]) -> R<String> {
    testkit::util::run(args[0], &args[1..])
}

impl Topology {
    pub fn new(client_ip: Ipv4Addr, server_ip: Ipv4Addr) -> R<Topology> {
        let node = Netns::new()?;
        let client = Netns::new()?;
        let server = Netns::new()?;
        let n = node.name().to_string();
        run_ok(&["ip", "-n", &n, "link", "add", "br0", "type", "bridge"])?;
        run_ok(&["ip", "-n", &n, "link", "set", "br0", "up"])?;
        for (host_if, ns, ip) in [(CLIENT_IF, &client, client_ip), (SERVER_IF, &server, server_ip)] {
            run_ok(&[
                "ip",
                "-n",
                &n,
                "link",
                "add",
                host_if,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ])?;
            run_ok(&["ip", "-n", &n, "link", "set", host_if, "master", "br0", "up"])?;
            let cidr = format!("{ip}/{ENDPOINT_PREFIX}");
            run_ok(&["ip", "-n", ns.name(), "addr", "add", &cidr, "dev", "eth0"])?;
            run_ok(&["ip", "-n", ns.name(), "link", "set", "eth0", "up"])?;
        }
        // Per namespace since Linux 5.3; without it bridged IPv4 skips the ip/inet hooks.
        let (ok, out) = node.exec(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"]);
        ensure!(ok, "set net.bridge.bridge-nf-call-iptables in the node netns: {out}");
        let t = Topology { node, client, server, client_ip, server_ip };
        let deadline = Instant::now() + Duration::from_secs(10);
        while t.client.ping(server_ip.into()).is_err() {
            ensure!(Instant::now() < deadline, "client {client_ip} cannot ping server {server_ip} through the bridge");
        }
        Ok(t)
    }

    /// Runs a program inside the node namespace with `input` on stdin; returns its wall time.
    pub fn node_exec(&self, args: &[&str], input: &str) -> R<Duration> {
        let t = Instant::now();
        let mut c = Command::new("ip")
            .args(["netns", "exec", self.node.name()])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .ctx(format!("spawn {}", args[0]))?;
        let mut stdin = c.stdin.take().ok_or("no stdin")?;
        // A writer thread: the program may fill its stdout pipe before reading all of stdin.
        let text = input.to_string();
        let w = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
        let out = c.wait_with_output().ctx(format!("wait for {}", args[0]))?;
        let el = t.elapsed();
        w.join().map_err(|_| "stdin writer panicked")?.ctx("write stdin")?;
        ensure!(
            out.status.success(),
            "{} in the node netns: {}",
            args.join(" "),
            testkit::util::clip(&String::from_utf8_lossy(&out.stderr), 400)
        );
        Ok(el)
    }

    /// Runs a program inside the node namespace; returns its stdout.
    pub fn node_exec_out(&self, args: &[&str]) -> R<String> {
        let (ok, out) = self.node.exec(args);
        ensure!(ok, "{} in the node netns: {}", args.join(" "), testkit::util::clip(&out, 400));
        Ok(out)
    }

    /// Everything loaded in the node namespace goes: nftables tables (ours and iptables-nft's)
    /// and ipsets; and a legacy iptables filter table is emptied.
    pub fn clear(&self) -> R<()> {
        self.node_exec(&["nft", "flush", "ruleset"], "")?;
        if super::IptablesBackend::detect()? == super::IptablesBackend::Legacy {
            self.node_exec(
                &["iptables-restore"],
                "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n",
            )?;
        }
        self.node_exec(&["ipset", "destroy"], "")?;
        Ok(())
    }
}

fn listener_in(ns: &Netns, port: u16) -> R<TcpListener> {
    let h = linux_net::netns::spawn_in(Path::new(ns.path()), None, move || {
        TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("listen on {port}: {e}"))
    })
    .map_err(|e| e.to_string())?;
    h.join().map_err(|_| "listener thread panicked")?.map_err(|e| e.to_string())?
}

/// CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// `count` TCP connections from the client to the server's `port`, one after the other;
/// each is reset by the client right after it is established (SO_LINGER 0: no TIME_WAIT, so
/// the client's ports are free for the next round). Returns connections per second, and the
/// client thread's CPU time per connection in µs: the SYN, the listener's SYN-ACK and the
/// reset all cross the bridge (and every hook) in softirq on the sending thread, which the
/// kernel (no IRQ time accounting here) bills to that thread, so this is the path's cost,
/// whatever else the machine runs.
pub fn connect_rate(t: &Topology, port: u16, count: usize) -> R<(f64, f64)> {
    let listener = listener_in(&t.server, port)?;
    // A deep accept queue (std listens with a short one): a queue that fills drops SYNs, and
    // a dropped SYN costs the client a one-second retransmit, not the path's cost.
    // SAFETY: listen(2) on a listening socket only changes its backlog.
    let rc = unsafe { libc::listen(listener.as_raw_fd(), 4096) };
    ensure!(rc == 0, "listen backlog: {}", std::io::Error::last_os_error());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    // The accepting side: blocks in accept; the client wakes it with one last connection
    // after setting `stop`.
    let acceptor = std::thread::spawn(move || {
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = listener.accept();
        }
    });
    let dst = SocketAddr::from((t.server_ip, port));
    let stop3 = stop.clone();
    let measure = move || -> R<(f64, f64)> {
        let start = Instant::now();
        let cpu0 = thread_cpu();
        for i in 0..count {
            let s = TcpStream::connect_timeout(&dst, Duration::from_secs(3))
                .map_err(|e| format!("connect {i} of {count} to {dst}: {e}"))?;
            let linger = libc::linger { l_onoff: 1, l_linger: 0 };
            // SAFETY: a valid socket and a correctly sized option value.
            let rc = unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
            ensure!(rc == 0, "SO_LINGER: {}", std::io::Error::last_os_error());
        }
        let cpu = thread_cpu().saturating_sub(cpu0);
        Ok((count as f64 / start.elapsed().as_secs_f64(), cpu.as_secs_f64() * 1e6 / count as f64))
    };
    let res = linux_net::netns::spawn_in(Path::new(t.client.path()), None, move || -> R<(f64, f64)> {
        let r = measure();
        stop3.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the acceptor (allowed by the policy: the measured port).
        let _ = TcpStream::connect_timeout(&dst, Duration::from_secs(3));
        r
    })
    .map_err(|e| e.to_string())?
    .join()
    .map_err(|_| "client thread panicked")?;
    if stop.load(std::sync::atomic::Ordering::SeqCst) {
        let _ = acceptor.join();
    }
    res.map_err(|e| e.to_string())?
}

/// Round trips of one byte each way over one established TCP connection, client → server
/// `port` (TCP_NODELAY): returns the client's and the server's thread CPU per round trip, in
/// µs, summed. Every packet of the connection after the handshake is an established one, and
/// its whole path (veth, bridge, every netfilter hook, conntrack, TCP) runs in softirq on the
/// sending thread, which the kernel bills to that thread: so this is what an established
/// packet costs, twice, measured in CPU time rather than wall time, which a loaded machine
/// moves much less than a throughput. `rounds` after 1,000 unmeasured ones.
pub fn round_trip_cpu(t: &Topology, port: u16, rounds: usize) -> R<f64> {
    const WARMUP: usize = 1000;
    let listener = listener_in(&t.server, port)?;
    // The echo side: replies to every byte; resets its clock at the first byte after the
    // warm-up (b'S'), returns its CPU time when the client closes.
    let server = linux_net::netns::spawn_in(Path::new(t.server.path()), None, move || -> Result<Duration, String> {
        let (mut s, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        let mut cpu0 = thread_cpu();
        loop {
            match s.read(&mut b) {
                Ok(0) => return Ok(thread_cpu().saturating_sub(cpu0)),
                Ok(_) => {
                    if b[0] == b'S' {
                        cpu0 = thread_cpu();
                    }
                    s.write_all(&b).map_err(|e| format!("echo: {e}"))?;
                }
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    })
    .map_err(|e| e.to_string())?;
    let dst = SocketAddr::from((t.server_ip, port));
    let client = linux_net::netns::spawn_in(Path::new(t.client.path()), None, move || -> Result<Duration, String> {
        let mut s =
            TcpStream::connect_timeout(&dst, Duration::from_secs(3)).map_err(|e| format!("connect {dst}: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        let mut one = |s: &mut TcpStream, c: u8| -> Result<(), String> {
            s.write_all(&[c]).map_err(|e| format!("send: {e}"))?;
            s.read_exact(&mut b).map_err(|e| format!("echo: {e}"))
        };
        for _ in 0..WARMUP {
            one(&mut s, b'w')?;
        }
        let cpu0 = thread_cpu();
        one(&mut s, b'S')?;
        for _ in 1..rounds {
            one(&mut s, b'x')?;
        }
        Ok(thread_cpu().saturating_sub(cpu0))
    })
    .map_err(|e| e.to_string())?;
    let c = client.join().map_err(|_| "client thread panicked")?.map_err(|e| e.to_string())?;
    let c = match c {
        Ok(c) => c,
        Err(e) => {
            // The server still waits in accept or read: a connection closed by the client
            // (this one, or a new one) ends it.
            let _ = TcpStream::connect_timeout(&dst, Duration::from_millis(500));
            let _ = server.join();
            bail!("round trips: {e}");
        }
    };
    let srv = server.join().map_err(|_| "server thread panicked")?.map_err(|e| e.to_string())?;
    let srv = srv.map_err(|e| format!("round trips, echo side: {e}"))?;
    Ok((c + srv).as_secs_f64() * 1e6 / rounds.max(1) as f64)
}

/// Turns conntrack on in the node namespace and nothing else: a table whose only chain is
/// a regular one (no hook) holding a `ct state` match, which makes the kernel register its
/// conntrack hooks for the namespace (a ruleset that uses conntrack does that, ours and
/// iptables' alike; an empty namespace has no conntrack at all). So the "no policy,
/// conntrack on" baseline does the work every policy does too, br_netfilter and conntrack,
/// and no filtering: what a policy adds is what it costs.
pub fn conntrack_only(t: &Topology) -> R<()> {
    t.node_exec(
        &["nft", "-f", "-"],
        "table inet cni-policy-bench-ct {\n  chain ct-on {\n    ct state invalid counter\n  }\n}\n",
    )?;
    Ok(())
}

/// Conntrack entries in the node namespace (its table is per namespace).
pub fn conntrack_count(t: &Topology) -> R<u64> {
    let out = t.node_exec_out(&["cat", "/proc/sys/net/netfilter/nf_conntrack_count"])?;
    out.trim().parse().map_err(|e| format!("nf_conntrack_count {out:?}: {e}"))
}

/// Whether a TCP connection from the client to the server's `port` is dropped: the connect
/// times out within `wait` (no SYN-ACK and no reset came back). Nothing listens there, so
/// a packet that got through is answered with a reset at once.
pub fn dropped(t: &Topology, port: u16, wait: Duration) -> R<bool> {
    let dst = SocketAddr::from((t.server_ip, port));
    let r = linux_net::netns::spawn_in(
        Path::new(t.client.path()),
        None,
        move || matches!(TcpStream::connect_timeout(&dst, wait), Err(e) if e.kind() == std::io::ErrorKind::TimedOut),
    )
    .map_err(|e| e.to_string())?
    .join()
    .map_err(|_| "client thread panicked")?;
    r.map_err(|e| e.to_string())
}

/// One iperf3 TCP run, client → server, `secs` seconds after one unmeasured
/// second (TCP's ramp): Gbit/s received. With two CPUs or more the client and
/// the server each keep one CPU (`-A 0,1`), so the scheduler moving them about
/// does not vary the runs more than a policy does; every side runs alike.
pub fn iperf(t: &Topology, port: u16, secs: u32) -> R<f64> {
    let p = port.to_string();
    let mut srv = Command::new("ip")
        .args(["netns", "exec", t.server.name(), "iperf3", "-s", "-1", "-p", &p])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .ctx("spawn iperf3 -s")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, out) = t.server.exec(&["ss", "-Hltn", &format!("sport = :{p}")]);
        if !out.trim().is_empty() {
            break;
        }
        if Instant::now() > deadline || srv.try_wait().ok().flatten().is_some() {
            let _ = srv.kill();
            let _ = srv.wait();
            bail!("iperf3 server did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let dst = t.server_ip.to_string();
    let mut args = vec!["iperf3", "-c", &dst, "-p", &p, "-t"];
    let secs = secs.to_string();
    args.extend([secs.as_str(), "-O", "1", "-J"]);
    if std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2) {
        args.extend(["-A", "0,1"]);
    }
    let (ok, out) = t.client.exec(&args);
    let _ = srv.kill();
    let _ = srv.wait();
    ensure!(ok, "iperf3 -c {dst}: {}", testkit::util::clip(&out, 300));
    let v: Value = serde_json::from_str(&out).ctx("iperf3 -J output")?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| format!("iperf3: no end.sum_received: {}", testkit::util::clip(&out, 300)))?;
    Ok(bps / 1e9)
}
