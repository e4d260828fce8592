//! The RFC 4271 §8.2.2 transitions that matter, driven as the spec reads: an event in a
//! state, the actions and the next state.

use std::net::Ipv4Addr;

use bgp::fsm::{collision_survivor, Action, Config, Direction, DownReason, Event, Fsm, State, Timer};
use bgp::packet::{decode_message, AttrValue, Family, Message, Notification, Open, Origin, SessionCaps, Update};

const OURS: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const THEIRS: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

fn fsm() -> Fsm {
    let mut c = Config::new(65000, 4_200_000_001, OURS);
    c.connect_retry_time = 5;
    Fsm::new(c)
}

fn peer_open(hold: u16) -> Open {
    Config { hold_time: hold, ..Config::new(4_200_000_001, 65000, THEIRS) }.open()
}

fn sent(a: &[Action]) -> Vec<&Message> {
    a.iter().filter_map(|x| if let Action::Send(m) = x { Some(m) } else { None }).collect()
}

fn sent_notification(a: &[Action]) -> Option<(u8, u8)> {
    sent(a).into_iter().find_map(|m| if let Message::Notification(n) = m { Some((n.code, n.subcode)) } else { None })
}

/// Idle → Connect → OpenSent → OpenConfirm (peer proposes `hold`).
fn open_confirm(hold: u16) -> (Fsm, Vec<Action>) {
    let mut f = fsm();
    f.handle(Event::ManualStart);
    f.handle(Event::TcpConnectionUp(Direction::Outgoing));
    let a = f.handle(Event::Message(Message::Open(peer_open(hold))));
    assert_eq!(f.state(), State::OpenConfirm, "{a:?}");
    (f, a)
}

fn established() -> Fsm {
    let (mut f, _) = open_confirm(90);
    let a = f.handle(Event::Message(Message::Keepalive));
    assert_eq!(f.state(), State::Established, "{a:?}");
    f
}

#[test]
fn manual_start_connects_or_listens() {
    let mut f = fsm();
    let a = f.handle(Event::ManualStart);
    assert_eq!(a, vec![Action::StartTimer(Timer::ConnectRetry, 5), Action::Connect]);
    assert_eq!(f.state(), State::Connect);

    let mut p = Fsm::new(Config { passive: true, ..fsm().config().clone() });
    let a = p.handle(Event::ManualStart);
    assert_eq!(a, vec![Action::StartTimer(Timer::ConnectRetry, 5)]);
    assert_eq!(p.state(), State::Active);
    // Events other than ManualStart leave Idle alone.
    let mut i = fsm();
    assert!(i.handle(Event::HoldTimerExpires).is_empty());
    assert_eq!(i.state(), State::Idle);
}

#[test]
fn connect_retry_cycle() {
    let mut f = fsm();
    f.handle(Event::ManualStart);
    // In Connect, the timer expiring drops the attempt and tries again.
    let a = f.handle(Event::ConnectRetryTimerExpires);
    assert_eq!(a, vec![Action::DropConnection, Action::StartTimer(Timer::ConnectRetry, 5), Action::Connect]);
    assert_eq!(f.state(), State::Connect);
    // RFC 4271 §8.2.2 Connect, event 18 without DelayOpen: to Idle; automatic start after
    // the IdleHold delay.
    let a = f.handle(Event::TcpConnectionFails);
    assert_eq!(f.state(), State::Idle);
    assert!(a.contains(&Action::StartTimer(Timer::IdleHold, 5)), "{a:?}");
    assert_eq!(a.last(), Some(&Action::ConnectionFailed(DownReason::TcpFailed)));
    assert_eq!(f.connect_retry_counter(), 1);
    let a = f.handle(Event::IdleHoldTimerExpires);
    assert_eq!(a, vec![Action::StartTimer(Timer::ConnectRetry, 5), Action::Connect]);
    assert_eq!(f.state(), State::Connect);
    // After ManualStop nothing restarts.
    let a = f.handle(Event::ManualStop);
    assert!(a.contains(&Action::StopTimer(Timer::IdleHold)));
    assert!(!a.iter().any(|x| matches!(x, Action::StartTimer(..))), "{a:?}");
    assert!(f.handle(Event::IdleHoldTimerExpires).is_empty());
    assert_eq!(f.state(), State::Idle);
    // Without automatic start, a failure leaves the FSM in Idle.
    let mut m = Fsm::new(Config { idle_hold_time: None, ..fsm().config().clone() });
    m.handle(Event::ManualStart);
    let a = m.handle(Event::TcpConnectionFails);
    assert!(!a.iter().any(|x| matches!(x, Action::StartTimer(..))), "{a:?}");
    assert!(m.handle(Event::IdleHoldTimerExpires).is_empty());

    // A passive speaker waits in Active; its connect retry timer does not make it connect;
    // a failed accepted connection sends it to Idle.
    let mut p = Fsm::new(Config { passive: true, ..fsm().config().clone() });
    p.handle(Event::ManualStart);
    assert_eq!(p.handle(Event::ConnectRetryTimerExpires), vec![Action::StartTimer(Timer::ConnectRetry, 5)]);
    assert_eq!(p.state(), State::Active);
    p.handle(Event::TcpConnectionFails);
    assert_eq!(p.state(), State::Idle);
    // An active speaker in Active (after OpenSent lost its connection) retries on the timer.
    let mut f = fsm();
    f.handle(Event::ManualStart);
    f.handle(Event::TcpConnectionUp(Direction::Outgoing));
    f.handle(Event::TcpConnectionFails);
    assert_eq!(f.state(), State::Active);
    assert_eq!(
        f.handle(Event::ConnectRetryTimerExpires),
        vec![Action::StartTimer(Timer::ConnectRetry, 5), Action::Connect]
    );
    assert_eq!(f.state(), State::Connect);
}

#[test]
fn tcp_up_sends_open_with_the_large_hold_timer() {
    let mut f = fsm();
    f.handle(Event::ManualStart);
    let a = f.handle(Event::TcpConnectionUp(Direction::Incoming));
    assert_eq!(f.state(), State::OpenSent);
    assert_eq!(f.direction(), Some(Direction::Incoming));
    assert!(a.contains(&Action::StopTimer(Timer::ConnectRetry)));
    assert!(a.contains(&Action::StartTimer(Timer::Hold, 240)));
    let Some(Message::Open(o)) = sent(&a).first().copied() else { panic!("{a:?}") };
    assert_eq!((o.asn(), o.hold_time, o.bgp_id), (65000, 90, OURS));
}

#[test]
fn open_then_keepalive_establishes_with_negotiated_timers() {
    let (mut f, a) = open_confirm(30);
    // min(90, 30) = 30, keepalive a third of it.
    assert_eq!((f.hold_time(), f.keepalive_time()), (30, 10));
    assert_eq!(sent(&a), vec![&Message::Keepalive]);
    assert!(a.contains(&Action::StartTimer(Timer::Keepalive, 10)));
    assert!(a.contains(&Action::StartTimer(Timer::Hold, 30)));
    assert!(f.caps().four_octet_as);
    let a = f.handle(Event::Message(Message::Keepalive));
    assert_eq!(f.state(), State::Established);
    let up = a.iter().find_map(|x| if let Action::SessionUp(c) = x { Some(c.clone()) } else { None });
    let up = up.expect("SessionUp");
    assert_eq!(up.families, vec![Family::Ipv4Unicast, Family::Ipv6Unicast]);
    assert!(!up.ibgp);
    assert!(a.contains(&Action::StartTimer(Timer::Hold, 30)));
}

#[test]
fn hold_time_zero_means_no_timers_and_three_is_the_minimum() {
    let (f, a) = open_confirm(0);
    assert_eq!((f.hold_time(), f.keepalive_time()), (0, 0));
    assert!(a.contains(&Action::StopTimer(Timer::Hold)));
    assert!(!a.iter().any(|x| matches!(x, Action::StartTimer(Timer::Keepalive | Timer::Hold, _))));
    let (f, _) = open_confirm(3);
    assert_eq!((f.hold_time(), f.keepalive_time()), (3, 1));
    // A hold time of 1 or 2 never reaches the FSM: the codec answers 2/6.
    let mut o = peer_open(2);
    o.hold_time = 2;
    let bytes = Message::Open(o).to_bytes(&SessionCaps::default()).expect("encode");
    let e = decode_message(&bytes, &SessionCaps::default()).expect_err("hold time 2");
    assert_eq!((e.code, e.subcode), (2, 6));
    let mut f = fsm();
    f.handle(Event::ManualStart);
    f.handle(Event::TcpConnectionUp(Direction::Outgoing));
    let a = f.handle(Event::MessageError(e));
    assert_eq!(sent_notification(&a), Some((2, 6)));
    assert_eq!(f.state(), State::Idle);
}

#[test]
fn open_validation() {
    for (open, want) in [
        (Config { hold_time: 90, ..Config::new(64999, 65000, THEIRS) }.open(), (2, 2)),
        (Config { hold_time: 90, ..Config::new(4_200_000_001, 65000, OURS) }.open(), (2, 3)),
    ] {
        let mut f = fsm();
        f.handle(Event::ManualStart);
        f.handle(Event::TcpConnectionUp(Direction::Outgoing));
        let a = f.handle(Event::Message(Message::Open(open)));
        assert_eq!(sent_notification(&a), Some(want), "{a:?}");
        assert_eq!(f.state(), State::Idle);
        assert!(a.contains(&Action::DropConnection));
        assert!(matches!(a.last(), Some(Action::ConnectionFailed(DownReason::LocalNotification(_)))));
        assert_eq!(f.connect_retry_counter(), 1);
        // The sentence behind the NOTIFICATION stays readable for status.
        let n = f.last_notify().expect("last_notify after a NOTIFICATION");
        assert_eq!((n.code, n.subcode), want);
        if want == (2, 2) {
            assert_eq!(n.detail, "peer AS 64999, configured 4200000001");
        }
    }
    // A family we require and the peer does not offer: 2/7 with the capability as data.
    let mut c = fsm().config().clone();
    c.required_families = vec![Family::Ipv6Unicast];
    let mut f = Fsm::new(c);
    f.handle(Event::ManualStart);
    f.handle(Event::TcpConnectionUp(Direction::Outgoing));
    let mut o = peer_open(90);
    o.params = vec![vec![bgp::packet::Capability::FourOctetAs(4_200_000_001)]];
    let a = f.handle(Event::Message(Message::Open(o)));
    let n = sent(&a).into_iter().find_map(|m| if let Message::Notification(n) = m { Some(n.clone()) } else { None });
    assert_eq!(n, Some(Notification { code: 2, subcode: 7, data: vec![1, 4, 0, 2, 0, 1] }));
}

#[test]
fn unexpected_messages_are_fsm_errors_per_state() {
    let upd = || Event::Message(Message::Update(Update::default()));
    let mut f = fsm();
    f.handle(Event::ManualStart);
    f.handle(Event::TcpConnectionUp(Direction::Outgoing));
    assert_eq!(sent_notification(&f.handle(upd())), Some((5, 1)));
    let (mut f, _) = open_confirm(90);
    assert_eq!(sent_notification(&f.handle(upd())), Some((5, 2)));
    let mut f = established();
    let a = f.handle(Event::Message(Message::Open(peer_open(90))));
    assert_eq!(sent_notification(&a), Some((5, 3)));
    assert!(matches!(a.last(), Some(Action::SessionDown(_))));
}

#[test]
fn established_timers_updates_and_teardown() {
    let mut f = established();
    let a = f.handle(Event::KeepaliveTimerExpires);
    assert_eq!(a, vec![Action::Send(Message::Keepalive), Action::StartTimer(Timer::Keepalive, 30)]);
    let u = Update::new(vec![AttrValue::Origin(Origin::Igp)], Vec::new());
    let a = f.handle(Event::Message(Message::Update(u.clone())));
    assert_eq!(a, vec![Action::StartTimer(Timer::Hold, 90), Action::Routes(u.clone())]);
    assert_eq!(f.handle(Event::Message(Message::Keepalive)), vec![Action::StartTimer(Timer::Hold, 90)]);
    // Sending an UPDATE restarts the keepalive timer.
    let a = f.send_update(u.clone());
    assert_eq!(a, vec![Action::Send(Message::Update(u)), Action::StartTimer(Timer::Keepalive, 30)]);

    let a = f.handle(Event::HoldTimerExpires);
    assert_eq!(sent_notification(&a), Some((4, 0)));
    assert_eq!(a.last(), Some(&Action::SessionDown(DownReason::HoldTimerExpired)));
    assert_eq!(f.state(), State::Idle);

    let mut f = established();
    let cease = Notification::new(6, 2);
    let a = f.handle(Event::Message(Message::Notification(cease.clone())));
    assert_eq!(sent_notification(&a), None, "never answer a NOTIFICATION");
    assert_eq!(a.last(), Some(&Action::SessionDown(DownReason::PeerNotification(cease))));

    let mut f = established();
    let a = f.handle(Event::ManualStop);
    assert_eq!(sent_notification(&a), Some((6, 2)));
    assert_eq!(a.last(), Some(&Action::SessionDown(DownReason::Stopped)));

    let mut f = established();
    let a = f.handle(Event::TcpConnectionFails);
    assert_eq!(a.last(), Some(&Action::SessionDown(DownReason::TcpFailed)));
}

#[test]
fn tcp_failure_in_open_sent_goes_back_to_active() {
    let mut f = fsm();
    f.handle(Event::ManualStart);
    f.handle(Event::TcpConnectionUp(Direction::Outgoing));
    let a = f.handle(Event::TcpConnectionFails);
    assert_eq!(f.state(), State::Active);
    assert!(a.contains(&Action::StartTimer(Timer::ConnectRetry, 5)));
}

#[test]
fn collision_keeps_the_connection_of_the_higher_identifier() {
    // Ours 10.0.0.1 < theirs 10.0.0.2: the peer's connection survives.
    assert_eq!(collision_survivor(OURS, THEIRS), Direction::Incoming);
    assert_eq!(collision_survivor(THEIRS, OURS), Direction::Outgoing);

    // Our outgoing connection reached OpenConfirm; the peer's own connection brings its OPEN.
    let (mut outgoing, _) = open_confirm(90);
    let mut incoming = fsm();
    incoming.handle(Event::ManualStart);
    incoming.handle(Event::TcpConnectionUp(Direction::Incoming));
    let remote_id = peer_open(90).bgp_id;
    let keep = collision_survivor(OURS, remote_id);
    let (loser, winner) =
        if keep == Direction::Incoming { (&mut outgoing, &mut incoming) } else { (&mut incoming, &mut outgoing) };
    let a = loser.handle(Event::OpenCollisionDump);
    assert_eq!(sent_notification(&a), Some((6, 7)));
    assert_eq!(loser.state(), State::Idle);
    winner.handle(Event::Message(Message::Open(peer_open(90))));
    winner.handle(Event::Message(Message::Keepalive));
    assert_eq!(winner.state(), State::Established);
    assert_eq!(winner.direction(), Some(Direction::Incoming));
}

/// Two FSMs talking through the codec: what one sends, encoded and decoded with the
/// receiver's negotiated capabilities, drives the other to Established.
#[test]
fn two_speakers_establish_through_the_codec() {
    let mut a = Fsm::new(Config::new(65000, 65000, OURS));
    let mut b = Fsm::new(Config { passive: true, ..Config::new(65000, 65000, THEIRS) });
    b.handle(Event::ManualStart);
    let mut to_b: Vec<Message> = Vec::new();
    let mut to_a: Vec<Message> = Vec::new();
    let out = |acts: Vec<Action>, q: &mut Vec<Message>| {
        for x in acts {
            if let Action::Send(m) = x {
                q.push(m);
            }
        }
    };
    a.handle(Event::ManualStart);
    out(a.handle(Event::TcpConnectionUp(Direction::Outgoing)), &mut to_b);
    out(b.handle(Event::TcpConnectionUp(Direction::Incoming)), &mut to_a);
    for _ in 0..4 {
        for m in std::mem::take(&mut to_b) {
            let bytes = m.to_bytes(&a.caps().mirrored()).expect("encode");
            let d = decode_message(&bytes, b.caps()).expect("decode");
            out(b.handle(Event::Message(d)), &mut to_a);
        }
        for m in std::mem::take(&mut to_a) {
            let bytes = m.to_bytes(&b.caps().mirrored()).expect("encode");
            let d = decode_message(&bytes, a.caps()).expect("decode");
            out(a.handle(Event::Message(d)), &mut to_b);
        }
    }
    assert_eq!((a.state(), b.state()), (State::Established, State::Established));
    assert!(a.caps().ibgp && a.caps().four_octet_as);
}
