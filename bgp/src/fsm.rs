//! The BGP finite state machine of RFC 4271 §8, one instance per TCP connection, with no
//! sockets and no clock: the caller feeds [`Event`]s (a timer expired, TCP came up or failed,
//! a message arrived) and carries out the [`Action`]s it returns (connect, send, start or stop
//! a timer, drop the connection, report the session up or down). Of RFC 4271's optional
//! features, automatic start after a failure is implemented (the IdleHold timer, a fixed
//! delay, no damping); DelayOpen and automatic stop are not.

use std::net::Ipv4Addr;

use crate::error::Notify;
use crate::packet::{negotiate, Capability, Family, Message, Notification, Open, RouteRefresh, SessionCaps, Update};

/// RFC 4271 §8.2.2: the hold timer while waiting for the peer's OPEN ("a large value",
/// 4 minutes suggested).
pub const OPEN_HOLD_TIME: u16 = 240;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    ConnectRetry,
    Hold,
    Keepalive,
    /// Delay before restarting after a failure (RFC 4271 §8.1.3 IdleHoldTimer).
    IdleHold,
}

/// Who opened the TCP connection this FSM runs on (what collision detection compares).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// We connected to the peer's port 179.
    Outgoing,
    /// The peer connected to ours.
    Incoming,
}

/// RFC 4271 §8.1 events (the numbers are the RFC's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// 1: start (connect to the peer, or wait for it when passive).
    ManualStart,
    /// 2: stop, with a Cease NOTIFICATION if a connection is up.
    ManualStop,
    /// 9
    ConnectRetryTimerExpires,
    /// 10
    HoldTimerExpires,
    /// 11
    KeepaliveTimerExpires,
    /// 13: the delay after a failure is over: start again (AutomaticStart, event 3).
    IdleHoldTimerExpires,
    /// 16/17: the TCP connection is up (ours or the peer's, see [`Direction`]).
    TcpConnectionUp(Direction),
    /// 18
    TcpConnectionFails,
    /// 19–28: a message decoded with [`Fsm::caps`].
    Message(Message),
    /// 21, 22, 28: a message that failed to decode: the NOTIFICATION to send.
    MessageError(Notify),
    /// 23: collision detection chose to close this connection.
    OpenCollisionDump,
}

/// Why a session went down or never came up, for logs and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownReason {
    Stopped,
    HoldTimerExpired,
    TcpFailed,
    /// The peer sent this NOTIFICATION.
    PeerNotification(Notification),
    /// We sent this NOTIFICATION (error in what the peer sent, or FSM error).
    LocalNotification(Notification),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to the peer.
    Connect,
    /// Close the TCP connection (after sending what precedes this action).
    DropConnection,
    Send(Message),
    /// Start (or restart) a timer for this many seconds.
    StartTimer(Timer, u16),
    StopTimer(Timer),
    /// The session reached Established with these capabilities.
    SessionUp(SessionCaps),
    /// The session left Established.
    SessionDown(DownReason),
    /// A connection attempt failed before Established.
    ConnectionFailed(DownReason),
    /// An UPDATE for the RIB (its [`Update::verdict`] applies).
    Routes(Update),
    /// The peer asks us to resend our routes of a family.
    RefreshRequested(RouteRefresh),
}

/// The peer and what we announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub local_as: u32,
    pub peer_as: u32,
    pub router_id: Ipv4Addr,
    /// Hold time we propose (0 or ≥ 3).
    pub hold_time: u16,
    pub connect_retry_time: u16,
    /// Wait for the peer to connect instead of connecting (RFC 4271 PassiveTcpEstablishment).
    pub passive: bool,
    /// Restart this many seconds after the session failed (automatic start); `None`: stay
    /// in Idle until the next `ManualStart`.
    pub idle_hold_time: Option<u16>,
    /// Capabilities in our OPEN (4-octet AS is always added).
    pub capabilities: Vec<Capability>,
    /// Families the peer must offer, else NOTIFICATION 2/7 Unsupported Capability.
    pub required_families: Vec<Family>,
}

impl Config {
    /// Defaults of RFC 4271 §10: hold time 90 s, connect retry 120 s; restart 5 s after a
    /// failure; IPv4 and IPv6 unicast, route refresh.
    pub fn new(local_as: u32, peer_as: u32, router_id: Ipv4Addr) -> Config {
        Config {
            local_as,
            peer_as,
            router_id,
            hold_time: 90,
            connect_retry_time: 120,
            passive: false,
            idle_hold_time: Some(5),
            capabilities: vec![
                Capability::Multiprotocol { afi: 1, safi: 1 },
                Capability::Multiprotocol { afi: 2, safi: 1 },
                Capability::RouteRefresh,
            ],
            required_families: Vec::new(),
        }
    }

    pub fn open(&self) -> Open {
        Open::new(self.local_as, self.hold_time, self.router_id, self.capabilities.clone())
    }
}

/// One connection's state machine.
#[derive(Debug, Clone)]
pub struct Fsm {
    config: Config,
    state: State,
    /// Between ManualStart and ManualStop: failures restart after the IdleHold delay.
    started: bool,
    direction: Option<Direction>,
    connect_retry_counter: u32,
    peer_open: Option<Open>,
    caps: SessionCaps,
    hold_time: u16,
    keepalive_time: u16,
    /// The last error we sent a NOTIFICATION for, with its sentence.
    last_notify: Option<Notify>,
}

impl Fsm {
    pub fn new(config: Config) -> Fsm {
        Fsm {
            config,
            state: State::Idle,
            started: false,
            direction: None,
            connect_retry_counter: 0,
            peer_open: None,
            caps: SessionCaps::default(),
            hold_time: 0,
            keepalive_time: 0,
            last_notify: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }
    pub fn direction(&self) -> Option<Direction> {
        self.direction
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn connect_retry_counter(&self) -> u32 {
        self.connect_retry_counter
    }
    /// The peer's OPEN, once received.
    pub fn peer_open(&self) -> Option<&Open> {
        self.peer_open.as_ref()
    }
    /// How to decode the peer's messages: the defaults until its OPEN arrived, then what
    /// both OPENs negotiated.
    pub fn caps(&self) -> &SessionCaps {
        &self.caps
    }
    /// Negotiated hold time (0: no keepalives, no hold timer).
    pub fn hold_time(&self) -> u16 {
        self.hold_time
    }
    pub fn keepalive_time(&self) -> u16 {
        self.keepalive_time
    }
    /// The last error this FSM answered with a NOTIFICATION, with the sentence that says
    /// what was wrong (e.g. "peer AS 64513, configured 64512"): what the NOTIFICATION in
    /// [`DownReason::LocalNotification`] alone cannot tell.
    pub fn last_notify(&self) -> Option<&Notify> {
        self.last_notify.as_ref()
    }

    /// Sends an UPDATE in Established (RFC 4271 §8.2.2: sending one restarts the keepalive
    /// timer). Empty outside Established.
    pub fn send_update(&mut self, u: Update) -> Vec<Action> {
        if self.state != State::Established {
            return Vec::new();
        }
        let mut a = vec![Action::Send(Message::Update(u))];
        if self.keepalive_time > 0 {
            a.push(Action::StartTimer(Timer::Keepalive, self.keepalive_time));
        }
        a
    }

    /// Feeds one event; returns what to do, in order.
    pub fn handle(&mut self, ev: Event) -> Vec<Action> {
        let mut a = Vec::new();
        use Event as E;
        use State as S;
        match (self.state, ev) {
            (S::Idle, E::ManualStart) => self.start(&mut a),
            (S::Idle, E::IdleHoldTimerExpires) if self.started && self.config.idle_hold_time.is_some() => {
                self.start(&mut a)
            }
            (S::Idle, E::ManualStop) => {
                self.started = false;
                a.push(Action::StopTimer(Timer::IdleHold));
            }
            (S::Idle, _) => {}

            (_, E::ManualStop) => {
                if matches!(self.state, S::OpenSent | S::OpenConfirm | S::Established) {
                    a.push(Action::Send(Message::Notification(Notification::new(6, 2))));
                }
                self.started = false;
                a.push(Action::StopTimer(Timer::IdleHold));
                self.enter_idle(&mut a, DownReason::Stopped);
                self.connect_retry_counter = 0;
            }

            (S::Active, E::ConnectRetryTimerExpires) if self.config.passive => {
                // A passive speaker keeps listening.
                a.push(Action::StartTimer(Timer::ConnectRetry, self.config.connect_retry_time));
            }
            (S::Connect | S::Active, E::ConnectRetryTimerExpires) => {
                if self.state == S::Connect {
                    a.push(Action::DropConnection);
                }
                a.push(Action::StartTimer(Timer::ConnectRetry, self.config.connect_retry_time));
                a.push(Action::Connect);
                self.state = S::Connect;
            }
            (S::Connect | S::Active, E::TcpConnectionUp(d)) => {
                self.direction = Some(d);
                a.push(Action::StopTimer(Timer::ConnectRetry));
                a.push(Action::Send(Message::Open(self.config.open())));
                a.push(Action::StartTimer(Timer::Hold, OPEN_HOLD_TIME));
                self.state = S::OpenSent;
            }
            (S::Connect | S::Active, _) => {
                // Anything else (a message before any OPEN exchange, a failure in Active).
                self.connect_retry_counter += 1;
                self.enter_idle(&mut a, DownReason::TcpFailed);
            }

            (S::OpenSent | S::OpenConfirm | S::Established, E::HoldTimerExpires) => {
                a.push(Action::Send(Message::Notification(Notification::new(4, 0))));
                self.connect_retry_counter += 1;
                self.enter_idle(&mut a, DownReason::HoldTimerExpired);
            }
            (S::OpenSent, E::TcpConnectionFails) => {
                // RFC 4271: back to Active, listening, with the connect retry timer running.
                a.push(Action::DropConnection);
                a.push(Action::StopTimer(Timer::Hold));
                a.push(Action::StartTimer(Timer::ConnectRetry, self.config.connect_retry_time));
                a.push(Action::ConnectionFailed(DownReason::TcpFailed));
                self.state = S::Active;
            }
            (S::OpenConfirm | S::Established, E::TcpConnectionFails) => {
                self.connect_retry_counter += 1;
                self.enter_idle(&mut a, DownReason::TcpFailed);
            }
            (S::OpenSent, E::Message(Message::Open(o))) => match self.check_open(&o) {
                Err(n) => self.notify_and_idle(&mut a, n),
                Ok(()) => {
                    let ours = self.config.open();
                    self.caps = negotiate(&ours, &o);
                    self.hold_time = ours.hold_time.min(o.hold_time);
                    self.keepalive_time = self.hold_time / 3;
                    self.peer_open = Some(o);
                    a.push(Action::Send(Message::Keepalive));
                    if self.hold_time > 0 {
                        a.push(Action::StartTimer(Timer::Keepalive, self.keepalive_time));
                        a.push(Action::StartTimer(Timer::Hold, self.hold_time));
                    } else {
                        a.push(Action::StopTimer(Timer::Hold));
                    }
                    self.state = S::OpenConfirm;
                }
            },
            (S::OpenSent | S::OpenConfirm, E::OpenCollisionDump) => {
                self.notify_and_idle(&mut a, Notify::new(6, 7, [], "connection collision resolution"));
            }
            (S::OpenSent | S::OpenConfirm | S::Established, E::MessageError(n)) => {
                self.notify_and_idle(&mut a, n);
            }
            (S::OpenSent | S::OpenConfirm | S::Established, E::Message(Message::Notification(n))) => {
                // RFC 4271: a version error NOTIFICATION does not count as a failure.
                if !(self.state == S::OpenSent && n.code == 2 && n.subcode == 1) {
                    self.connect_retry_counter += 1;
                }
                self.enter_idle(&mut a, DownReason::PeerNotification(n));
            }
            (S::OpenConfirm | S::Established, E::KeepaliveTimerExpires) => {
                a.push(Action::Send(Message::Keepalive));
                if self.keepalive_time > 0 {
                    a.push(Action::StartTimer(Timer::Keepalive, self.keepalive_time));
                }
            }
            (S::OpenConfirm, E::Message(Message::Keepalive)) => {
                if self.hold_time > 0 {
                    a.push(Action::StartTimer(Timer::Hold, self.hold_time));
                }
                self.state = S::Established;
                a.push(Action::SessionUp(self.caps.clone()));
            }
            (S::Established, E::Message(m)) => {
                if self.hold_time > 0 && matches!(m, Message::Keepalive | Message::Update(_)) {
                    a.push(Action::StartTimer(Timer::Hold, self.hold_time));
                }
                match m {
                    Message::Keepalive => {}
                    Message::Update(u) => a.push(Action::Routes(u)),
                    Message::RouteRefresh(r) => a.push(Action::RefreshRequested(r)),
                    _ => self.fsm_error(&mut a),
                }
            }
            (S::OpenSent | S::OpenConfirm | S::Established, _) => self.fsm_error(&mut a),
        }
        a
    }

    /// ManualStart (event 1) or AutomaticStart (event 3) in Idle.
    fn start(&mut self, a: &mut Vec<Action>) {
        self.started = true;
        self.connect_retry_counter = 0;
        a.push(Action::StartTimer(Timer::ConnectRetry, self.config.connect_retry_time));
        if self.config.passive {
            self.state = State::Active;
        } else {
            a.push(Action::Connect);
            self.state = State::Connect;
        }
    }

    /// RFC 4271 §6.2 checks that need our configuration (the codec did the rest).
    fn check_open(&self, o: &Open) -> Result<(), Notify> {
        if o.asn() != self.config.peer_as {
            return Err(Notify::new(2, 2, [], format!("peer AS {}, configured {}", o.asn(), self.config.peer_as)));
        }
        if o.bgp_id == self.config.router_id {
            return Err(Notify::new(2, 3, [], format!("peer BGP identifier {} is ours", o.bgp_id)));
        }
        let theirs = o.families();
        for f in &self.config.required_families {
            if !theirs.contains(f) {
                // RFC 5492 §3: the data lists the capability we needed.
                let mut d = vec![1, 4];
                d.extend_from_slice(&f.afi().to_be_bytes());
                d.extend_from_slice(&[0, f.safi()]);
                return Err(Notify::new(2, 7, d, format!("peer does not offer {f:?}")));
            }
        }
        Ok(())
    }

    /// RFC 4271 §8.2.2: an event the state does not expect is an FSM error (code 5, subcode
    /// per state, RFC 6608).
    fn fsm_error(&mut self, a: &mut Vec<Action>) {
        let sub = match self.state {
            State::OpenSent => 1,
            State::OpenConfirm => 2,
            _ => 3,
        };
        self.notify_and_idle(a, Notify::new(5, sub, [], format!("unexpected event in {:?}", self.state)));
    }

    fn notify_and_idle(&mut self, a: &mut Vec<Action>, n: Notify) {
        let notification = n.to_notification();
        self.last_notify = Some(n);
        a.push(Action::Send(Message::Notification(notification.clone())));
        self.connect_retry_counter += 1;
        self.enter_idle(a, DownReason::LocalNotification(notification));
    }

    /// Leaves for Idle: all timers stopped, connection dropped, the session reported down.
    fn enter_idle(&mut self, a: &mut Vec<Action>, why: DownReason) {
        let was = self.state;
        if was != State::Idle {
            a.push(Action::StopTimer(Timer::ConnectRetry));
            a.push(Action::StopTimer(Timer::Hold));
            a.push(Action::StopTimer(Timer::Keepalive));
            a.push(Action::DropConnection);
        }
        if let (true, Some(t)) = (self.started, self.config.idle_hold_time) {
            a.push(Action::StartTimer(Timer::IdleHold, t));
        }
        a.push(if was == State::Established { Action::SessionDown(why) } else { Action::ConnectionFailed(why) });
        self.state = State::Idle;
        self.direction = None;
        self.peer_open = None;
        self.caps = SessionCaps::default();
        self.hold_time = 0;
        self.keepalive_time = 0;
    }
}

/// RFC 4271 §6.8 collision detection: of two connections with the same peer, the one
/// initiated by the speaker with the higher BGP identifier survives. Returns the direction of
/// the connection to keep; the caller sends [`Event::OpenCollisionDump`] to the other one's
/// FSM (if it is in OpenSent or OpenConfirm).
pub fn collision_survivor(local_id: Ipv4Addr, remote_id: Ipv4Addr) -> Direction {
    if u32::from(local_id) > u32::from(remote_id) {
        Direction::Outgoing
    } else {
        Direction::Incoming
    }
}
