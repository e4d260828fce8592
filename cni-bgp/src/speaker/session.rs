//! One TCP connection with a peer: its [`Fsm`], the framing of messages on the stream, and the
//! hold and keepalive timers. The speaker's actor ([`super`]) owns the RIB; a session reports
//! to it what the FSM decided ([`FromSession`]) and sends what the actor asks ([`ToSession`]).
//!
//! Reading and writing are two tasks: a peer that stops reading while it sends us its table
//! must not stop us from reading (two speakers that both block on a full send buffer would
//! wait for each other forever).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bgp::fsm::{Action, Config, Direction, DownReason, Event, Fsm, State, Timer};
use bgp::packet::{decode, Family, Message, SessionCaps, Update};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::status::{connect_error, down_words};

/// A connection's number, unique in one speaker.
pub(super) type ConnId = u64;

/// How many bytes one read asks for: a burst of UPDATEs decoded together becomes one
/// message to the actor, and one FIB batch.
const READ_CHUNK: usize = 64 * 1024;

/// How long a closing session waits for its last bytes (a NOTIFICATION) to leave.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// What a session tells the actor.
#[derive(Debug)]
pub(super) enum FromSession {
    /// The peer's OPEN arrived and was accepted (we are in OpenConfirm, our KEEPALIVE not sent
    /// yet): the actor runs collision detection and answers whether to go on.
    OpenReceived { conn: ConnId, bgp_id: Ipv4Addr, verdict: oneshot::Sender<bool> },
    /// Established.
    Up { conn: ConnId, caps: SessionCaps, bgp_id: Ipv4Addr, local: Option<SocketAddr> },
    /// UPDATEs received in one burst, in order.
    Routes { conn: ConnId, updates: Vec<Update> },
    /// The peer asked for our routes of a family again (RFC 2918).
    Refresh { conn: ConnId, family: Family },
    /// The connection is closed. `graceful`: it ended without a NOTIFICATION (a TCP failure),
    /// so graceful restart helper mode applies. `words`: why, for status.
    Down { conn: ConnId, established: bool, graceful: bool, words: Option<String> },
}

/// What the actor asks of a session.
#[derive(Debug)]
pub(super) enum ToSession {
    /// Send these UPDATEs (Established only).
    Send(Vec<Update>),
    /// Close with a Cease NOTIFICATION (administrative shutdown).
    Stop,
    /// Collision detection chose the other connection: close this one with a Cease 6/7.
    Dump,
}

/// Everything a session needs to run.
pub(super) struct SessionArgs {
    pub conn: ConnId,
    pub stream: TcpStream,
    pub direction: Direction,
    pub fsm: Config,
    pub to_actor: mpsc::Sender<super::Inbox>,
    pub cmds: mpsc::UnboundedReceiver<ToSession>,
}

/// Opens an outgoing connection to `to`, from `local` when given (so the peer sees our node
/// address), failing after `timeout`. The error is in words for status.
pub(super) async fn connect(to: SocketAddr, local: Option<IpAddr>, timeout: Duration) -> Result<TcpStream, String> {
    let sock = match to {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("cannot open a socket to {to}: {e}"))?;
    if let Some(l) = local {
        sock.bind(SocketAddr::new(l, 0)).map_err(|e| format!("cannot bind {l} to connect to {to}: {e}"))?;
    }
    let s = match tokio::time::timeout(timeout, sock.connect(to)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(connect_error(to, &e)),
        Err(_) => return Err(format!("connection timed out on {to}")),
    };
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// The writer task: writes what it is given in order; when the session drops its sender, it
/// flushes what is queued and closes our direction of the stream.
async fn write_loop(mut w: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    while let Some(b) = rx.recv().await {
        if w.write_all(&b).await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

struct Session {
    conn: ConnId,
    fsm: Fsm,
    peer: SocketAddr,
    /// Bytes for the writer, flushed after each burst.
    out: Vec<u8>,
    /// Messages for the actor, in order, flushed after each burst.
    notes: Vec<FromSession>,
    hold: Option<Instant>,
    keepalive: Option<Instant>,
    /// The FSM asked to drop the connection.
    closing: bool,
    /// The FSM left for Idle: whether it had been Established, and why.
    down: Option<(bool, DownReason)>,
    /// Why the TCP connection failed, in words.
    tcp_error: Option<String>,
    local: Option<SocketAddr>,
}

impl Session {
    fn act(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Send(m) => {
                    // The peer reads what we send with its view of the session: our send is
                    // its receive (ADD-PATH).
                    let caps = self.fsm.caps().mirrored();
                    if let Err(e) = m.encode(&caps, &mut self.out) {
                        tracing::warn!(peer = %self.peer, error = %e, kind = m.kind(), "cannot encode a message");
                    }
                }
                Action::StartTimer(t, s) => {
                    let at = Some(Instant::now() + Duration::from_secs(u64::from(s)));
                    match t {
                        Timer::Hold => self.hold = at,
                        Timer::Keepalive => self.keepalive = at,
                        // The actor retries connections; a session is one connection.
                        Timer::ConnectRetry | Timer::IdleHold => {}
                    }
                }
                Action::StopTimer(Timer::Hold) => self.hold = None,
                Action::StopTimer(Timer::Keepalive) => self.keepalive = None,
                Action::StopTimer(_) | Action::Connect => {}
                Action::DropConnection => self.closing = true,
                Action::SessionUp(caps) => {
                    let bgp_id = self.fsm.peer_open().map_or(Ipv4Addr::UNSPECIFIED, |o| o.bgp_id);
                    tracing::info!(peer = %self.peer, families = ?caps.families, "session established");
                    self.notes.push(FromSession::Up { conn: self.conn, caps, bgp_id, local: self.local });
                }
                Action::SessionDown(r) => self.down = Some((true, r)),
                Action::ConnectionFailed(r) => self.down = Some((false, r)),
                Action::Routes(u) => match self.notes.last_mut() {
                    Some(FromSession::Routes { updates, .. }) => updates.push(u),
                    _ => self.notes.push(FromSession::Routes { conn: self.conn, updates: vec![u] }),
                },
                Action::RefreshRequested(r) => {
                    if let Some(family) = Family::from_afi_safi(r.afi, r.safi) {
                        self.notes.push(FromSession::Refresh { conn: self.conn, family });
                    }
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        match (self.hold, self.keepalive) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        if self.hold.is_some_and(|t| t <= now) {
            self.hold = None;
            let a = self.fsm.handle(Event::HoldTimerExpires);
            self.act(a);
        }
        if self.keepalive.is_some_and(|t| t <= now) && self.down.is_none() {
            self.keepalive = None;
            let a = self.fsm.handle(Event::KeepaliveTimerExpires);
            self.act(a);
        }
    }

    /// Decodes and handles every whole message at the start of `buf`; returns how many
    /// bytes were used. Stops at the peer's OPEN when collision detection must decide.
    fn parse(&mut self, buf: &[u8]) -> (usize, Option<Vec<Action>>) {
        let mut used = 0;
        while self.down.is_none() {
            let rest = buf.get(used..).unwrap_or_default();
            match decode(rest, self.fsm.caps()) {
                Ok(None) => break,
                Ok(Some((m, n))) => {
                    used += n;
                    let was = self.fsm.state();
                    let is_open = matches!(m, Message::Open(_));
                    let a = self.fsm.handle(Event::Message(m));
                    if is_open && was == State::OpenSent && self.fsm.state() == State::OpenConfirm {
                        // Our KEEPALIVE waits for the collision verdict.
                        return (used, Some(a));
                    }
                    self.act(a);
                }
                Err(n) => {
                    tracing::warn!(peer = %self.peer, error = %n, "malformed message");
                    let a = self.fsm.handle(Event::MessageError(n));
                    self.act(a);
                    break;
                }
            }
        }
        (used, None)
    }
}

/// Runs one connection until it closes; the last message to the actor is always `Down`
/// (unless the actor aborted the task).
pub(super) async fn run(args: SessionArgs) {
    let SessionArgs { conn, stream, direction, fsm, to_actor, mut cmds } = args;
    let peer = stream.peer_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let local = stream.local_addr().ok();
    let _ = stream.set_nodelay(true);
    let (mut rd, wr) = stream.into_split();
    let (wtx, wrx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(write_loop(wr, wrx));
    let mut s = Session {
        conn,
        fsm: Fsm::new(fsm),
        peer,
        out: Vec::new(),
        notes: Vec::new(),
        hold: None,
        keepalive: None,
        closing: false,
        down: None,
        tcp_error: None,
        local,
    };
    tracing::debug!(peer = %peer, conn, ?direction, "connection up");
    let mut a = s.fsm.handle(Event::ManualStart);
    a.extend(s.fsm.handle(Event::TcpConnectionUp(direction)));
    s.act(a);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut actor_gone = false;
    loop {
        if !s.out.is_empty() {
            let _ = wtx.send(std::mem::take(&mut s.out));
        }
        for n in std::mem::take(&mut s.notes) {
            if to_actor.send(super::Inbox::Session(n)).await.is_err() {
                actor_gone = true;
            }
        }
        if s.closing || s.down.is_some() || actor_gone {
            break;
        }
        let deadline = s.next_deadline();
        tokio::select! {
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) => {
                    s.tcp_error = Some("connection closed by the peer".into());
                    let a = s.fsm.handle(Event::TcpConnectionFails);
                    s.act(a);
                }
                Ok(_) => {
                    let (used, paused) = s.parse(&buf);
                    buf.drain(..used);
                    if let Some(open_actions) = paused {
                        let bgp_id = s.fsm.peer_open().map_or(Ipv4Addr::UNSPECIFIED, |o| o.bgp_id);
                        let (tx, rx) = oneshot::channel();
                        let asked = to_actor
                            .send(super::Inbox::Session(FromSession::OpenReceived { conn, bgp_id, verdict: tx }))
                            .await;
                        let go_on = asked.is_ok() && rx.await.unwrap_or(false);
                        if go_on {
                            s.act(open_actions);
                            let (used, _) = s.parse(&buf);
                            buf.drain(..used);
                        } else {
                            tracing::info!(peer = %peer, "connection collision: closing this connection");
                            let a = s.fsm.handle(Event::OpenCollisionDump);
                            s.act(a);
                        }
                    }
                    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                        buf.reserve(READ_CHUNK);
                    }
                }
                Err(e) => {
                    s.tcp_error = Some(format!("connection with {peer}: {e}"));
                    let a = s.fsm.handle(Event::TcpConnectionFails);
                    s.act(a);
                }
            },
            c = cmds.recv() => match c {
                Some(ToSession::Send(updates)) => {
                    for u in updates {
                        let a = s.fsm.send_update(u);
                        s.act(a);
                    }
                }
                Some(ToSession::Dump) if matches!(s.fsm.state(), State::OpenSent | State::OpenConfirm) => {
                    let a = s.fsm.handle(Event::OpenCollisionDump);
                    s.act(a);
                }
                Some(ToSession::Stop | ToSession::Dump) | None => {
                    let a = s.fsm.handle(Event::ManualStop);
                    s.act(a);
                }
            },
            _ = sleep_until(deadline) => s.fire_timers(),
        }
    }
    // Let the last bytes (a NOTIFICATION) leave, then close.
    if !s.out.is_empty() {
        let _ = wtx.send(std::mem::take(&mut s.out));
    }
    drop(wtx);
    if tokio::time::timeout(FLUSH_TIMEOUT, writer).await.is_err() {
        tracing::debug!(peer = %peer, "closing without flushing: the peer does not read");
    }
    let (established, reason) = s.down.take().unwrap_or((s.fsm.state() == State::Established, DownReason::Stopped));
    // RFC 4724 helper mode is for a connection that ends without a NOTIFICATION. Our hold
    // timer expiring sends one (4/0): a host that vanished is withdrawn within the hold time.
    let graceful = matches!(reason, DownReason::TcpFailed);
    let detail = match &reason {
        DownReason::TcpFailed => s.tcp_error.clone(),
        DownReason::LocalNotification(_) => s.fsm.last_notify().map(|n| n.detail.clone()),
        _ => None,
    };
    let words = down_words(&reason, detail.as_deref());
    tracing::info!(peer = %peer, established, reason = ?reason, "connection closed");
    let _ = to_actor.send(super::Inbox::Session(FromSession::Down { conn, established, graceful, words })).await;
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
