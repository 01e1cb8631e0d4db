//! Two devices talking through an in-memory network with a fake clock: handshakes, transport,
//! every timer, cookies under load, roaming, the source check, and junk.

use super::constants::*;
use super::device::{Device, DropReason, Outgoing, Received, Sent};
use super::ip::tests::ipv4;
use super::peer::PeerConfig;
use super::time::Time;
use crate::keys::{PresharedKey, PrivateKey};
use rand::rngs::OsRng;
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const A_TUN: [u8; 4] = [10, 0, 0, 1];
const B_TUN: [u8; 4] = [10, 0, 0, 2];

struct Net {
    a: Device,
    b: Device,
    a_addr: SocketAddr,
    b_addr: SocketAddr,
    now: Time,
}

fn start_time() -> Time {
    Time::new(Instant::now(), Duration::from_secs(1_800_000_000))
}

fn net_with(psk: Option<PresharedKey>, a_keepalive: Option<Duration>) -> Net {
    let a_key = PrivateKey::generate(&mut OsRng);
    let b_key = PrivateKey::generate(&mut OsRng);
    let a_addr: SocketAddr = "198.18.0.1:51820".parse().unwrap();
    let b_addr: SocketAddr = "198.18.0.2:51820".parse().unwrap();
    let a = Device::new(a_key.clone(), OsRng);
    let b = Device::new(b_key.clone(), OsRng);
    let mut to_b = PeerConfig::new(b_key.public_key());
    to_b.endpoint = Some(b_addr);
    to_b.allowed_ips = vec!["10.0.0.2/32".parse().unwrap()];
    to_b.preshared_key = psk.clone();
    to_b.persistent_keepalive = a_keepalive;
    a.add_peer(to_b).unwrap();
    let mut to_a = PeerConfig::new(a_key.public_key());
    to_a.allowed_ips = vec!["10.0.0.1/32".parse().unwrap()];
    to_a.preshared_key = psk;
    b.add_peer(to_a).unwrap();
    Net {
        a,
        b,
        a_addr,
        b_addr,
        now: start_time(),
    }
}

fn net() -> Net {
    net_with(None, None)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    A,
    B,
}

impl Net {
    fn dev(&self, side: Side) -> &Device {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }

    fn addr(&self, side: Side) -> SocketAddr {
        match side {
            Side::A => self.a_addr,
            Side::B => self.b_addr,
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
    }

    /// `from` sends an IP packet; returns what it put on the wire (sealed packet and/or control
    /// messages).
    fn send_ip(&self, from: Side, packet: &[u8]) -> (Sent, Vec<Vec<u8>>) {
        let mut buf = vec![0u8; 2048];
        buf[16..16 + packet.len()].copy_from_slice(packet);
        let mut out = Vec::new();
        let sent = self
            .dev(from)
            .encapsulate(&mut buf, packet.len(), self.now, &mut out);
        let mut wire: Vec<Vec<u8>> = out.into_iter().map(|o| o.bytes).collect();
        if let Sent::Ready { len, to } = &sent {
            assert_eq!(to.addr, self.addr(other(from)));
            wire.push(buf[..*len].to_vec());
        }
        (sent, wire)
    }

    /// Delivers datagrams to `to` (from the other side's address); returns the IP packets that
    /// came out and the datagrams it sent in reply.
    fn deliver(
        &self,
        to: Side,
        datagrams: Vec<Vec<u8>>,
    ) -> (Vec<Vec<u8>>, Vec<Received>, Vec<Vec<u8>>) {
        self.deliver_from(to, self.addr(other(to)), datagrams)
    }

    fn deliver_from(
        &self,
        to: Side,
        src: SocketAddr,
        datagrams: Vec<Vec<u8>>,
    ) -> (Vec<Vec<u8>>, Vec<Received>, Vec<Vec<u8>>) {
        let mut packets = Vec::new();
        let mut verdicts = Vec::new();
        let mut replies = Vec::new();
        for mut d in datagrams {
            let mut out: Vec<Outgoing> = Vec::new();
            let r = self.dev(to).receive(src, &mut d, self.now, &mut out);
            if let Received::Packet { range, .. } = &r {
                packets.push(d[range.clone()].to_vec());
            }
            verdicts.push(r);
            replies.extend(out.into_iter().map(|o| {
                assert_eq!(o.to.addr, src, "replies go to the source");
                o.bytes
            }));
        }
        (packets, verdicts, replies)
    }

    /// Runs the messages back and forth until both sides go quiet; returns the IP packets each
    /// side delivered.
    fn pump(&self, first: Side, mut wire: Vec<Vec<u8>>) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let mut got = (Vec::new(), Vec::new());
        let mut to = first;
        for _ in 0..10 {
            if wire.is_empty() {
                break;
            }
            let (packets, _, replies) = self.deliver(to, wire);
            match to {
                Side::A => got.0.extend(packets),
                Side::B => got.1.extend(packets),
            }
            wire = replies;
            to = other(to);
        }
        got
    }

    fn timers(&self, side: Side) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        self.dev(side).update_timers(self.now, &mut out);
        out.into_iter().map(|o| o.bytes).collect()
    }

    /// A completes a handshake with B by sending a first packet, which B then delivers.
    fn connect(&self) {
        let ping = ipv4(A_TUN, B_TUN, 8);
        let (sent, wire) = self.send_ip(Side::A, &ping);
        assert_eq!(sent, Sent::Queued);
        let (_, at_b) = self.pump(Side::B, wire);
        assert_eq!(at_b, vec![ping]);
    }
}

fn other(side: Side) -> Side {
    match side {
        Side::A => Side::B,
        Side::B => Side::A,
    }
}

fn kinds(wire: &[Vec<u8>]) -> Vec<u8> {
    wire.iter().map(|d| d[0]).collect()
}

#[test]
fn handshake_and_transport_both_ways() {
    for psk in [None, Some(PresharedKey::generate(&mut OsRng))] {
        let net = net_with(psk, None);
        net.connect();
        // Now straight through, both ways, with no more handshakes.
        for len in [0usize, 1, 100, 1380] {
            let p = ipv4(A_TUN, B_TUN, len);
            let (sent, wire) = net.send_ip(Side::A, &p);
            assert!(matches!(sent, Sent::Ready { .. }));
            assert_eq!(kinds(&wire), vec![MESSAGE_TRANSPORT]);
            assert_eq!(net.deliver(Side::B, wire).0, vec![p]);
            let q = ipv4(B_TUN, A_TUN, len);
            let (sent, wire) = net.send_ip(Side::B, &q);
            assert!(matches!(sent, Sent::Ready { .. }));
            assert_eq!(net.deliver(Side::A, wire).0, vec![q]);
        }
        let info = net.b.peer_info(0).unwrap();
        assert_eq!(info.endpoint, Some(net.a_addr));
        assert!(info.last_handshake.is_some() && info.rx_bytes > 0 && info.tx_bytes > 0);
    }
}

/// A caller may sleep until `next_wake` and still hear of sooner deadlines: attention is
/// raised when a timer is armed sooner than that or an endpoint moves, and not by the packets
/// of a steady flow (which re-arm their timers later), so asking after every batch is free.
#[test]
fn attention_is_raised_by_new_deadlines_and_moved_endpoints_only() {
    let net = net();
    assert!(
        net.a.take_attention() && net.b.take_attention(),
        "new peers"
    );
    assert!(!net.a.take_attention(), "lowered once taken");
    net.connect();
    assert!(net.a.take_attention(), "A's handshake timers");
    assert!(net.b.take_attention(), "B's session and keepalive timers");
    // A steady flow both ways: every timer it uses is armed already.
    for _ in 0..2 {
        let (_, wire) = net.send_ip(Side::A, &ipv4(A_TUN, B_TUN, 100));
        net.deliver(Side::B, wire);
        let (_, wire) = net.send_ip(Side::B, &ipv4(B_TUN, A_TUN, 100));
        net.deliver(Side::A, wire);
    }
    net.a.next_wake(net.now.instant);
    net.b.next_wake(net.now.instant);
    for _ in 0..3 {
        let (_, wire) = net.send_ip(Side::A, &ipv4(A_TUN, B_TUN, 100));
        net.deliver(Side::B, wire);
        let (_, wire) = net.send_ip(Side::B, &ipv4(B_TUN, A_TUN, 100));
        net.deliver(Side::A, wire);
    }
    assert!(
        !net.a.take_attention() && !net.b.take_attention(),
        "steady flow"
    );
    // Requests and answers with time passing (a ping every 50 ms): each side's passive
    // keepalive and new-handshake timers are re-armed in turn, never sooner than announced.
    let mut net = net;
    for _ in 0..3 {
        let (_, wire) = net.send_ip(Side::A, &ipv4(A_TUN, B_TUN, 100));
        net.deliver(Side::B, wire);
        let (_, wire) = net.send_ip(Side::B, &ipv4(B_TUN, A_TUN, 100));
        net.deliver(Side::A, wire);
        net.advance(Duration::from_millis(50));
    }
    net.a.next_wake(net.now.instant);
    net.b.next_wake(net.now.instant);
    for _ in 0..40 {
        net.advance(Duration::from_millis(50));
        let (_, wire) = net.send_ip(Side::A, &ipv4(A_TUN, B_TUN, 100));
        net.deliver(Side::B, wire);
        let (_, wire) = net.send_ip(Side::B, &ipv4(B_TUN, A_TUN, 100));
        net.deliver(Side::A, wire);
        let (a, b) = (net.a.take_attention(), net.b.take_attention());
        assert!(!a && !b, "requests and answers: {a} {b}");
    }
    // A roams: B hears of it.
    let (_, wire) = net.send_ip(Side::A, &ipv4(A_TUN, B_TUN, 100));
    net.deliver_from(Side::B, "198.18.0.9:4000".parse().unwrap(), wire);
    assert!(net.b.take_attention(), "endpoint moved");
}

#[test]
fn the_other_side_can_initiate_too() {
    let net = net();
    net.connect();
    // B now knows A's endpoint (roaming) and can start a fresh handshake of its own later.
    let mut net = net;
    net.advance(REJECT_AFTER_TIME);
    let p = ipv4(B_TUN, A_TUN, 20);
    let (sent, wire) = net.send_ip(Side::B, &p);
    assert_eq!(sent, Sent::Queued);
    assert_eq!(kinds(&wire), vec![MESSAGE_INITIATION]);
    let (at_a, _) = net.pump(Side::A, wire);
    assert_eq!(at_a, vec![p]);
}

#[test]
fn mismatched_psk_never_connects() {
    let a_key = PrivateKey::generate(&mut OsRng);
    let b_key = PrivateKey::generate(&mut OsRng);
    let a = Device::new(a_key.clone(), OsRng);
    let b = Device::new(b_key.clone(), OsRng);
    let mut to_b = PeerConfig::new(b_key.public_key());
    to_b.endpoint = Some("198.18.0.2:1".parse().unwrap());
    to_b.allowed_ips = vec!["0.0.0.0/0".parse().unwrap()];
    to_b.preshared_key = Some(PresharedKey::generate(&mut OsRng));
    a.add_peer(to_b).unwrap();
    let mut to_a = PeerConfig::new(a_key.public_key());
    to_a.preshared_key = Some(PresharedKey::generate(&mut OsRng));
    b.add_peer(to_a).unwrap();
    let now = start_time();
    let mut buf = vec![0u8; 256];
    let p = ipv4(A_TUN, B_TUN, 10);
    buf[16..16 + p.len()].copy_from_slice(&p);
    let mut out = Vec::new();
    a.encapsulate(&mut buf, p.len(), now, &mut out);
    let mut init = out.remove(0).bytes;
    let mut out = Vec::new();
    b.receive(
        "198.18.0.1:1".parse::<SocketAddr>().unwrap(),
        &mut init,
        now,
        &mut out,
    );
    let mut resp = out.remove(0).bytes;
    let mut out = Vec::new();
    let r = a.receive(
        "198.18.0.2:1".parse::<SocketAddr>().unwrap(),
        &mut resp,
        now,
        &mut out,
    );
    assert_eq!(r, Received::Dropped(DropReason::HandshakeDecrypt));
    assert!(out.is_empty());
}

#[test]
fn retransmit_every_5s_with_jitter_then_give_up() {
    let mut net = net();
    let (_, wire) = net.send_ip(Side::A, &ipv4(A_TUN, B_TUN, 8));
    assert_eq!(kinds(&wire), vec![MESSAGE_INITIATION]);
    let mut sent_at = vec![net.now.instant];
    let step = Duration::from_millis(10);
    let end = net.now.instant + Duration::from_secs(150);
    while net.now.instant < end {
        net.advance(step);
        for d in net.timers(Side::A) {
            assert_eq!(
                d[0], MESSAGE_INITIATION,
                "B never answers: only initiations"
            );
            sent_at.push(net.now.instant);
        }
    }
    // One first try plus MAX_TIMER_HANDSHAKES + 1 retries, as the kernel does.
    assert_eq!(sent_at.len(), 1 + MAX_TIMER_HANDSHAKES as usize + 1);
    for w in sent_at.windows(2) {
        let gap = w[1] - w[0];
        assert!(gap >= REKEY_TIMEOUT, "{gap:?}");
        assert!(
            gap <= REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX + step,
            "{gap:?}"
        );
    }
    let last = sent_at[sent_at.len() - 1] - sent_at[0];
    assert!(
        last >= REKEY_ATTEMPT_TIME,
        "kept trying at least 90 s: {last:?}"
    );
    // Having given up, the staged packet is gone: a later handshake delivers nothing old.
    let (_, wire) = net.send_ip(Side::A, &ipv4(A_TUN, B_TUN, 30));
    let (_, at_b) = net.pump(Side::B, wire);
    assert_eq!(at_b.len(), 1);
    assert_eq!(at_b[0].len(), 50);
}

#[test]
fn initiations_are_rate_limited_to_one_per_rekey_timeout() {
    let mut net = net();
    let (_, wire) = net.send_ip(Side::A, &ipv4(A_TUN, B_TUN, 8));
    assert_eq!(wire.len(), 1);
    net.advance(Duration::from_secs(1));
    let (sent, wire) = net.send_ip(Side::A, &ipv4(A_TUN, B_TUN, 8));
    assert_eq!(sent, Sent::Queued);
    assert!(wire.is_empty(), "no second initiation within REKEY_TIMEOUT");
}

#[test]
fn rekey_after_time_on_send_and_reject_after_time() {
    let mut net = net();
    net.connect();
    let p = ipv4(A_TUN, B_TUN, 8);
    net.advance(REKEY_AFTER_TIME - Duration::from_secs(1));
    let (sent, wire) = net.send_ip(Side::A, &p);
    assert!(matches!(sent, Sent::Ready { .. }));
    assert_eq!(kinds(&wire), vec![MESSAGE_TRANSPORT]);
    net.deliver(Side::B, wire);
    net.advance(Duration::from_secs(1));
    let (sent, wire) = net.send_ip(Side::A, &p);
    assert!(matches!(sent, Sent::Ready { .. }), "still usable, but...");
    assert_eq!(
        kinds(&wire),
        vec![MESSAGE_INITIATION, MESSAGE_TRANSPORT],
        "...a rekey starts"
    );
    // The responder never rekeys on age by itself.
    let (_, wire_b) = net.send_ip(Side::B, &ipv4(B_TUN, A_TUN, 8));
    assert_eq!(kinds(&wire_b), vec![MESSAGE_TRANSPORT]);
    // Without an answer, the session dies at REJECT_AFTER_TIME: packets wait for a handshake.
    net.advance(REJECT_AFTER_TIME - REKEY_AFTER_TIME);
    let (sent, _) = net.send_ip(Side::A, &p);
    assert_eq!(sent, Sent::Queued);
    let (sent, _) = net.send_ip(Side::B, &ipv4(B_TUN, A_TUN, 8));
    assert_eq!(sent, Sent::Queued);
}

#[test]
fn rekey_keeps_the_previous_session_for_packets_in_flight() {
    let mut net = net();
    net.connect();
    let p = ipv4(A_TUN, B_TUN, 8);
    let q = ipv4(B_TUN, A_TUN, 8);
    // B seals a packet with the old session; it is still in flight during the rekey.
    let (_, in_flight) = net.send_ip(Side::B, &q);
    net.advance(REKEY_AFTER_TIME);
    let (_, wire) = net.send_ip(Side::A, &p);
    let (at_a, at_b) = net.pump(Side::B, wire);
    assert_eq!(at_b.len(), 1);
    assert!(at_a.is_empty());
    assert_eq!(net.deliver(Side::A, in_flight).0, vec![q.clone()]);
    // And the new session works both ways.
    let (_, wire) = net.send_ip(Side::B, &q);
    assert_eq!(net.deliver(Side::A, wire).0.len(), 1);
}

/// The messages of `wire` of one kind.
fn of_kind(wire: Vec<Vec<u8>>, kind: u8) -> Vec<Vec<u8>> {
    wire.into_iter().filter(|d| d[0] == kind).collect()
}

/// An outage: A and B each send a packet that is lost, and 15 s later each starts a handshake.
/// Returns their initiations.
fn outage_then_both_initiate(net: &mut Net) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    net.send_ip(Side::A, &ipv4(A_TUN, B_TUN, 8));
    net.send_ip(Side::B, &ipv4(B_TUN, A_TUN, 8));
    net.advance(NEW_HANDSHAKE_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX);
    let init_a = of_kind(net.timers(Side::A), MESSAGE_INITIATION);
    let init_b = of_kind(net.timers(Side::B), MESSAGE_INITIATION);
    assert_eq!((init_a.len(), init_b.len()), (1, 1));
    (init_a, init_b)
}

/// Crossed handshakes after an outage, and A misses both of B's messages: B answered A's
/// initiation, then its own (retried) initiation completed, which in the kernel's three slots
/// drops the session A still sends on. B keeps opening it, and A moves to the new session
/// with B's first answer.
#[test]
fn crossed_handshakes_keep_the_session_the_peer_still_sends_on() {
    let mut net = net();
    net.connect();
    let p = ipv4(A_TUN, B_TUN, 8);
    let q = ipv4(B_TUN, A_TUN, 8);
    let (init_a, _lost) = outage_then_both_initiate(&mut net);
    let (_, _, lost_response) = net.deliver(Side::B, init_a);
    assert_eq!(kinds(&lost_response), vec![MESSAGE_RESPONSE]);
    net.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX);
    let init_b = of_kind(net.timers(Side::B), MESSAGE_INITIATION);
    assert_eq!(init_b.len(), 1, "B retries its own initiation");
    let (_, _, response) = net.deliver(Side::A, init_b);
    let (_, verdicts, lost_keepalive) = net.deliver(Side::B, response);
    assert!(matches!(verdicts[0], Received::Handshake { .. }));
    assert_eq!(kinds(&lost_keepalive), vec![MESSAGE_TRANSPORT]);
    // A has heard nothing on a new session: it sends on the old one.
    let (_, straggler) = net.send_ip(Side::A, &p);
    let (_, wire) = net.send_ip(Side::A, &p);
    assert_eq!(net.deliver(Side::B, wire).0, vec![p.clone()]);
    // B answers on its new session; A takes it up and B opens that too.
    let (_, wire) = net.send_ip(Side::B, &q);
    assert_eq!(net.deliver(Side::A, wire).0, vec![q]);
    let (_, wire) = net.send_ip(Side::A, &p);
    assert_eq!(net.deliver(Side::B, wire).0, vec![p]);
    // Once A has moved on, the old session is forgotten as in the kernel.
    let (_, verdicts, _) = net.deliver(Side::B, straggler);
    assert_eq!(verdicts, vec![Received::Dropped(DropReason::UnknownIndex)]);
    assert_eq!(net.b.index_count(), 2, "current and previous");
}

/// After an outage B's initiation completes but its keepalive is lost; A's own initiation,
/// retried 5 s later, reaches B and B's answer is lost. Answering drops `previous` in the
/// kernel — the session A still sends on. B keeps opening it.
#[test]
fn answering_a_retried_initiation_keeps_the_session_the_peer_still_sends_on() {
    let mut net = net();
    net.connect();
    let p = ipv4(A_TUN, B_TUN, 8);
    let (_lost, init_b) = outage_then_both_initiate(&mut net);
    let (_, _, response) = net.deliver(Side::A, init_b);
    let (_, _, lost_keepalive) = net.deliver(Side::B, response);
    assert_eq!(kinds(&lost_keepalive), vec![MESSAGE_TRANSPORT]);
    net.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX);
    let retry = of_kind(net.timers(Side::A), MESSAGE_INITIATION);
    assert_eq!(retry.len(), 1, "A retries its own initiation");
    let (_, _, lost_response) = net.deliver(Side::B, retry);
    assert_eq!(kinds(&lost_response), vec![MESSAGE_RESPONSE]);
    let (_, wire) = net.send_ip(Side::A, &p);
    assert_eq!(net.deliver(Side::B, wire).0, vec![p]);
}

/// How long, from now, until a packet A sends reaches B, with both sides' timers running and
/// every datagram delivered (None: not within `limit`).
fn time_until_a_reaches_b(net: &mut Net, limit: Duration) -> Option<Duration> {
    let p = ipv4(A_TUN, B_TUN, 8);
    let start = net.now;
    while net.now.since(start.instant) <= limit {
        let (_, a) = net.pump(Side::B, net.timers(Side::A));
        let (b, _) = net.pump(Side::A, net.timers(Side::B));
        if a.contains(&p) || b.contains(&p) {
            return Some(net.now.since(start.instant));
        }
        let (_, wire) = net.send_ip(Side::A, &p);
        let (_, at_b) = net.pump(Side::B, wire);
        if at_b.contains(&p) {
            return Some(net.now.since(start.instant));
        }
        net.advance(Duration::from_millis(100));
    }
    None
}

/// What the fourth session slot (`Keypairs::receiving`) is for: the two sequences above with
/// the kernel's three slots alone. A's packets on the session B dropped are refused until a
/// new handshake gets through: 15 s after crossed handshakes (A's retry is held back by the
/// response it just sent, so its new-handshake timer ends it), a retry's 5 s after the other.
#[test]
fn the_kernels_three_slots_alone_stall_after_crossed_handshakes() {
    super::peer::KERNEL_SLOTS_ONLY.with(|k| k.set(true));
    let p = ipv4(A_TUN, B_TUN, 8);
    let (mut net, mut other_net) = (net(), net());
    // Crossed.
    net.connect();
    let (init_a, _lost) = outage_then_both_initiate(&mut net);
    net.deliver(Side::B, init_a);
    net.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX);
    let init_b = of_kind(net.timers(Side::B), MESSAGE_INITIATION);
    let (_, _, response) = net.deliver(Side::A, init_b);
    net.deliver(Side::B, response);
    let (_, wire) = net.send_ip(Side::A, &p);
    let (_, verdicts, _) = net.deliver(Side::B, wire);
    assert_eq!(verdicts, vec![Received::Dropped(DropReason::UnknownIndex)]);
    let crossed = time_until_a_reaches_b(&mut net, Duration::from_secs(30)).unwrap();
    // A retried initiation answered, its answer lost.
    let net = &mut other_net;
    net.connect();
    let (_lost, init_b) = outage_then_both_initiate(net);
    let (_, _, response) = net.deliver(Side::A, init_b);
    net.deliver(Side::B, response);
    net.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX);
    let retry = of_kind(net.timers(Side::A), MESSAGE_INITIATION);
    net.deliver(Side::B, retry);
    let (_, wire) = net.send_ip(Side::A, &p);
    let (_, verdicts, _) = net.deliver(Side::B, wire);
    assert_eq!(verdicts, vec![Received::Dropped(DropReason::UnknownIndex)]);
    let answered = time_until_a_reaches_b(net, Duration::from_secs(30)).unwrap();
    super::peer::KERNEL_SLOTS_ONLY.with(|k| k.set(false));
    eprintln!("kernel slots alone: traffic back after {crossed:?} (crossed), {answered:?} (retry answered)");
    assert!(
        crossed >= NEW_HANDSHAKE_TIMEOUT - REKEY_TIMEOUT,
        "{crossed:?}"
    );
    assert!(
        answered >= REKEY_TIMEOUT - REKEY_TIMEOUT_JITTER_MAX,
        "{answered:?}"
    );
}

/// A responder that answers an initiation starts none of its own within REKEY_TIMEOUT, even
/// with packets staged and its own retransmission due (the kernel's and wireguard-go's
/// last_sent_handshake counts responses too): else the two sides cross handshakes and push
/// each other's sessions out of their slots.
#[test]
fn a_responder_does_not_initiate_right_after_answering() {
    let mut net = net();
    net.b.set_endpoint(0, Some(net.a_addr), false).unwrap();
    let q = ipv4(B_TUN, A_TUN, 8);
    // B has a packet for A; its initiation is lost.
    let (sent, wire) = net.send_ip(Side::B, &q);
    assert_eq!(
        (sent, kinds(&wire)),
        (Sent::Queued, vec![MESSAGE_INITIATION])
    );
    // Just before B's retransmission is due, A's own initiation reaches B, which answers.
    net.advance(REKEY_TIMEOUT);
    let (_, init_a) = net.send_ip(Side::A, &ipv4(A_TUN, B_TUN, 8));
    let (_, _, response) = net.deliver(Side::B, init_a);
    assert_eq!(kinds(&response), vec![MESSAGE_RESPONSE]);
    // For REKEY_TIMEOUT after answering, B sends no initiation: not from its retransmit timer,
    // not for more packets staged behind the first.
    let answered = net.now;
    let checks = (0..50).map(|k| Duration::from_millis(100 * k));
    for after in checks.chain([REKEY_TIMEOUT - Duration::from_millis(1)]) {
        net.now = answered + after;
        let (sent, wire) = net.send_ip(Side::B, &q);
        assert_eq!(sent, Sent::Queued);
        let wire = [wire, net.timers(Side::B)].concat();
        assert!(
            !kinds(&wire).contains(&MESSAGE_INITIATION),
            "B initiated {after:?} after answering"
        );
    }
    // The response gets through: A confirms the session, and B's staged packets follow.
    let (at_a, _) = net.pump(Side::A, response);
    assert!(
        at_a.contains(&q),
        "B's staged packets arrive on the session it answered"
    );
}

#[test]
fn passive_keepalive_after_10s() {
    let mut net = net();
    net.connect();
    // B received data (the first ping) and sent nothing back.
    net.advance(KEEPALIVE_TIMEOUT - Duration::from_millis(1));
    assert!(net.timers(Side::B).is_empty());
    net.advance(Duration::from_millis(1));
    let wire = net.timers(Side::B);
    assert_eq!(kinds(&wire), vec![MESSAGE_TRANSPORT]);
    assert_eq!(
        wire[0].len(),
        TRANSPORT_MIN_LEN,
        "a keepalive is an empty data message"
    );
    let (_, verdicts, _) = net.deliver(Side::A, wire);
    assert!(matches!(verdicts[0], Received::Keepalive { .. }));
    // Only one.
    net.advance(KEEPALIVE_TIMEOUT);
    assert!(net.timers(Side::B).is_empty());
}

#[test]
fn no_passive_keepalive_when_we_answered() {
    let mut net = net();
    net.connect();
    net.advance(Duration::from_secs(1));
    let (_, wire) = net.send_ip(Side::B, &ipv4(B_TUN, A_TUN, 8));
    net.deliver(Side::A, wire);
    net.advance(KEEPALIVE_TIMEOUT);
    assert!(net.timers(Side::B).is_empty());
}

#[test]
fn new_handshake_after_15s_of_sending_without_hearing_back() {
    let mut net = net();
    // The first packet is sent (right after the handshake) at `sent_at`, and then more a second
    // later; B's answers and keepalives are all lost. The timer counts from the first unanswered
    // data packet.
    net.connect();
    let sent_at = net.now.instant;
    net.advance(Duration::from_secs(1));
    let (_, wire) = net.send_ip(Side::A, &ipv4(A_TUN, B_TUN, 8));
    assert_eq!(kinds(&wire), vec![MESSAGE_TRANSPORT]);
    let mut fired = None;
    for _ in 0..2000 {
        net.advance(Duration::from_millis(10));
        let out = net.timers(Side::A);
        if !out.is_empty() {
            assert_eq!(kinds(&out), vec![MESSAGE_INITIATION]);
            fired = Some(net.now.instant - sent_at);
            break;
        }
    }
    let fired = fired.unwrap();
    assert!(fired >= NEW_HANDSHAKE_TIMEOUT, "{fired:?}");
    assert!(
        fired <= NEW_HANDSHAKE_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX + Duration::from_millis(10),
        "{fired:?}"
    );
}

#[test]
fn hearing_back_cancels_the_new_handshake() {
    let mut net = net();
    net.connect();
    net.advance(Duration::from_secs(1));
    let (_, wire) = net.send_ip(Side::A, &ipv4(A_TUN, B_TUN, 8));
    net.deliver(Side::B, wire);
    net.advance(KEEPALIVE_TIMEOUT);
    let keepalive = net.timers(Side::B);
    net.deliver(Side::A, keepalive);
    net.advance(Duration::from_secs(10));
    assert!(net.timers(Side::A).is_empty());
}

#[test]
fn persistent_keepalive_starts_the_tunnel_and_repeats() {
    let interval = Duration::from_secs(25);
    let mut net = net_with(None, Some(interval));
    // Configured persistent keepalive: the first timer pass brings the tunnel up by itself.
    let wire = net.timers(Side::A);
    assert_eq!(kinds(&wire), vec![MESSAGE_INITIATION]);
    net.pump(Side::B, wire);
    assert!(net.a.peer_info(0).unwrap().last_handshake.is_some());
    for _ in 0..3 {
        net.advance(interval - Duration::from_millis(1));
        assert!(net.timers(Side::A).is_empty());
        net.advance(Duration::from_millis(1));
        let wire = net.timers(Side::A);
        assert_eq!(wire.len(), 1);
        assert_eq!(wire[0].len(), TRANSPORT_MIN_LEN);
        let (_, verdicts, _) = net.deliver(Side::B, wire);
        assert!(matches!(verdicts[0], Received::Keepalive { .. }));
    }
}

#[test]
fn key_material_erased_after_540s() {
    let mut net = net();
    net.connect();
    assert!(net.a.index_count() > 0 && net.b.index_count() > 0);
    net.advance(ZERO_KEY_MATERIAL_AFTER - Duration::from_secs(1));
    net.timers(Side::A);
    net.timers(Side::B);
    assert!(net.a.index_count() > 0);
    net.advance(Duration::from_secs(1));
    net.timers(Side::A);
    net.timers(Side::B);
    assert_eq!(net.a.index_count(), 0);
    assert_eq!(net.b.index_count(), 0);
}

#[test]
fn initiator_rekeys_on_receive_before_the_session_expires() {
    let mut net = net();
    net.connect();
    net.advance(REKEY_AFTER_TIME_RECV);
    let (_, wire) = net.send_ip(Side::B, &ipv4(B_TUN, A_TUN, 8));
    let (packets, _, replies) = net.deliver(Side::A, wire);
    assert_eq!(packets.len(), 1);
    assert_eq!(kinds(&replies), vec![MESSAGE_INITIATION]);
    // Only once.
    let (_, wire) = net.send_ip(Side::B, &ipv4(B_TUN, A_TUN, 8));
    let (_, _, replies) = net.deliver(Side::A, wire);
    assert!(replies.is_empty());
}

#[test]
fn source_check_drops_packets_for_other_peers_addresses() {
    let net = net();
    net.connect();
    let spoofed = ipv4([10, 0, 0, 99], B_TUN, 8);
    let (_, wire) = net.send_ip(Side::A, &spoofed);
    let (packets, verdicts, _) = net.deliver(Side::B, wire);
    assert!(packets.is_empty());
    assert_eq!(
        verdicts,
        vec![Received::Dropped(DropReason::SourceNotAllowed)]
    );
    assert_eq!(net.b.drop_count(DropReason::SourceNotAllowed), 1);
}

#[test]
fn no_route_and_not_ip() {
    let net = net();
    let (sent, wire) = net.send_ip(Side::A, &ipv4(A_TUN, [10, 9, 9, 9], 8));
    assert_eq!(sent, Sent::Dropped(DropReason::NoRoute));
    assert!(wire.is_empty());
    let (sent, _) = net.send_ip(Side::A, &[0x10; 40]);
    assert_eq!(sent, Sent::Dropped(DropReason::NotIp));
    // B has no endpoint for A until A talks to it.
    let (sent, _) = net.send_ip(Side::B, &ipv4(B_TUN, A_TUN, 8));
    assert_eq!(sent, Sent::Dropped(DropReason::NoEndpoint));
}

#[test]
fn replays_are_dropped_and_do_not_move_the_endpoint() {
    let net = net();
    net.connect();
    let (_, wire) = net.send_ip(Side::A, &ipv4(A_TUN, B_TUN, 8));
    assert_eq!(net.deliver(Side::B, wire.clone()).0.len(), 1);
    let attacker: SocketAddr = "198.18.0.66:4444".parse().unwrap();
    let (packets, verdicts, replies) = net.deliver_from(Side::B, attacker, wire.clone());
    assert!(packets.is_empty() && replies.is_empty());
    assert_eq!(verdicts, vec![Received::Dropped(DropReason::Replay)]);
    assert_eq!(net.b.peer_info(0).unwrap().endpoint, Some(net.a_addr));
}

/// A replayed initiation is refused before a receiver index is taken: it costs no write lock
/// on the index table that every receive thread reads (it used to cost two).
#[test]
fn refused_initiations_take_no_receiver_index() {
    let net = net();
    let (_, wire) = net.send_ip(Side::A, &ipv4(A_TUN, B_TUN, 8));
    let init = of_kind(wire, MESSAGE_INITIATION);
    let before = net.b.index_table_writes();
    let (_, verdicts, _) = net.deliver(Side::B, init.clone());
    assert!(matches!(verdicts[0], Received::Handshake { .. }));
    let answered = net.b.index_table_writes();
    assert!(answered > before, "an answered initiation takes an index");
    for _ in 0..10 {
        let (_, verdicts, replies) = net.deliver(Side::B, init.clone());
        assert_eq!(
            verdicts,
            vec![Received::Dropped(DropReason::ReplayedInitiation)]
        );
        assert!(replies.is_empty());
    }
    assert_eq!(
        net.b.index_table_writes(),
        answered,
        "replays: no write lock"
    );
}

#[test]
fn roaming_follows_the_latest_authenticated_source() {
    let net = net();
    net.connect();
    let (_, wire) = net.send_ip(Side::A, &ipv4(A_TUN, B_TUN, 8));
    let moved: SocketAddr = "[2001:db8::7]:40000".parse().unwrap();
    let (packets, _, _) = net.deliver_from(Side::B, moved, wire);
    assert_eq!(packets.len(), 1);
    assert_eq!(net.b.peer_info(0).unwrap().endpoint, Some(moved));
    let (sent, _) = net.send_ip_expect_to(Side::B, moved);
    assert!(matches!(sent, Sent::Ready { .. }));
}

impl Net {
    fn send_ip_expect_to(&self, from: Side, to: SocketAddr) -> (Sent, ()) {
        let p = ipv4(B_TUN, A_TUN, 8);
        let mut buf = vec![0u8; 256];
        buf[16..16 + p.len()].copy_from_slice(&p);
        let mut out = Vec::new();
        let sent = self
            .dev(from)
            .encapsulate(&mut buf, p.len(), self.now, &mut out);
        if let Sent::Ready { to: dest, .. } = &sent {
            assert_eq!(dest.addr, to);
        }
        (sent, ())
    }
}

#[test]
fn under_load_cookie_reply_then_mac2_gets_through() {
    let mut net = net();
    net.b.handshake_queue_backed_up(net.now.instant);
    let (_, wire) = net.send_ip(Side::A, &ipv4(A_TUN, B_TUN, 8));
    let (_, verdicts, replies) = net.deliver(Side::B, wire);
    assert_eq!(
        verdicts,
        vec![Received::Dropped(DropReason::CookieRequired)]
    );
    assert_eq!(kinds(&replies), vec![MESSAGE_COOKIE_REPLY]);
    assert!(replies[0].len() < INITIATION_LEN);
    // A cookie reply does not move anybody's endpoint and is taken once.
    let (_, verdicts, _) =
        net.deliver_from(Side::A, "198.18.0.77:1".parse().unwrap(), replies.clone());
    assert!(matches!(verdicts[0], Received::Cookie { .. }));
    assert_eq!(net.a.peer_info(0).unwrap().endpoint, Some(net.b_addr));
    let (_, verdicts, _) = net.deliver(Side::A, replies);
    assert_eq!(verdicts, vec![Received::Dropped(DropReason::BadCookie)]);
    // The retry carries mac2 and is answered (B still under load).
    net.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX);
    net.b.handshake_queue_backed_up(net.now.instant);
    let wire = net.timers(Side::A);
    assert_eq!(kinds(&wire), vec![MESSAGE_INITIATION]);
    let (_, at_b) = net.pump(Side::B, wire);
    assert_eq!(at_b.len(), 1);
}

/// "Under load" ends UNDER_LOAD_AFTER_TIME after the handshake queue was last seen backed up,
/// by itself: after a flood, a new client's first initiation is answered at once, with no
/// cookie round trip, even though nothing carrying a cookie arrived in between.
#[test]
fn under_load_ends_on_time_after_a_flood() {
    let mut net = net();
    // A flood: the queue is backed up for a while, then drains.
    for _ in 0..10 {
        net.b.handshake_queue_backed_up(net.now.instant);
        net.advance(Duration::from_millis(100));
    }
    assert!(net.b.under_load(net.now.instant));
    net.advance(UNDER_LOAD_AFTER_TIME);
    assert!(!net.b.under_load(net.now.instant));
    let (_, wire) = net.send_ip(Side::A, &ipv4(A_TUN, B_TUN, 8));
    let (_, verdicts, replies) = net.deliver(Side::B, wire);
    assert!(
        matches!(verdicts[0], Received::Handshake { .. }),
        "{verdicts:?}"
    );
    assert_eq!(kinds(&replies), vec![MESSAGE_RESPONSE]);
}

#[test]
fn under_load_sources_are_rate_limited() {
    let net = net();
    net.b.handshake_queue_backed_up(net.now.instant);
    // Make one valid initiation with a valid cookie, then replay variants of it quickly.
    let (_, wire) = net.send_ip(Side::A, &ipv4(A_TUN, B_TUN, 8));
    let (_, _, cookie) = net.deliver(Side::B, wire);
    net.deliver(Side::A, cookie);
    let mut limited = 0;
    let mut later = net.now;
    for _ in 0..50 {
        // Each retry is a fresh initiation (new timestamp) carrying mac2.
        later = later + REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX;
        net.b.handshake_queue_backed_up(later.instant);
        let mut out = Vec::new();
        net.a.update_timers(later, &mut out);
        for o in out {
            for _ in 0..10 {
                let mut d = o.bytes.clone();
                let r = net.b.receive(net.a_addr, &mut d, later, &mut Vec::new());
                if r == Received::Dropped(DropReason::RateLimited) {
                    limited += 1;
                }
            }
        }
    }
    assert!(limited > 0);
}

#[test]
fn junk_and_mutations_never_panic_and_get_no_answer() {
    let net = net();
    net.connect();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x5eed);
    // Real messages of every kind, already consumed, to mutate.
    let (_, data) = net.send_ip(Side::A, &ipv4(A_TUN, B_TUN, 64));
    net.deliver(Side::B, data.clone());
    let mut samples: Vec<Vec<u8>> = data;
    let c = PrivateKey::generate(&mut OsRng);
    let stranger = Device::new(c, OsRng);
    let mut cfg = PeerConfig::new(net.b.public_key());
    cfg.endpoint = Some(net.b_addr);
    cfg.allowed_ips = vec!["0.0.0.0/0".parse().unwrap()];
    stranger.add_peer(cfg).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 256];
    let p = ipv4(A_TUN, B_TUN, 8);
    buf[16..16 + p.len()].copy_from_slice(&p);
    stranger.encapsulate(&mut buf, p.len(), net.now, &mut out);
    samples.extend(out.into_iter().map(|o| o.bytes)); // initiation from an unknown key
    let mut resp = vec![0u8; RESPONSE_LEN];
    resp[0] = MESSAGE_RESPONSE;
    samples.push(resp);
    let mut cookie = vec![0u8; COOKIE_REPLY_LEN];
    cookie[0] = MESSAGE_COOKIE_REPLY;
    samples.push(cookie);

    let src: SocketAddr = "198.18.0.66:666".parse().unwrap();
    let mut delivered = 0;
    for i in 0..100_000u32 {
        let mut d = match i % 4 {
            0 => {
                let len = rng.gen_range(0..1500);
                let mut d: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                if len > 0 && rng.gen_bool(0.5) {
                    d[0] = rng.gen_range(1..=4);
                    if len >= 4 {
                        d[1..4].fill(0);
                    }
                }
                d
            }
            1 => {
                let s = &samples[rng.gen_range(0..samples.len())];
                s[..rng.gen_range(0..=s.len())].to_vec()
            }
            2 => {
                let mut s = samples[rng.gen_range(0..samples.len())].clone();
                for _ in 0..rng.gen_range(1..4) {
                    let at = rng.gen_range(0..s.len());
                    s[at] ^= 1 << rng.gen_range(0..8);
                }
                s
            }
            _ => {
                // Plausible lengths for each type, random contents.
                let (kind, len) = [(1u8, 148usize), (2, 92), (3, 64), (4, 32)][rng.gen_range(0..4)];
                let len = (len as isize + rng.gen_range(-1..=1)) as usize;
                let mut d: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                d[0] = kind;
                d[1..4].fill(0);
                d
            }
        };
        let mut out = Vec::new();
        let r = net.b.receive(src, &mut d, net.now, &mut out);
        assert!(out.is_empty(), "answered junk #{i}: {r:?}");
        if matches!(r, Received::Packet { .. } | Received::Handshake { .. }) {
            delivered += 1;
        }
    }
    assert_eq!(delivered, 0);
    // The real peer's endpoint never moved to the junk source.
    assert_eq!(net.b.peer_info(0).unwrap().endpoint, Some(net.a_addr));
}

#[test]
fn removing_a_peer_forgets_its_sessions() {
    let net = net();
    net.connect();
    let (_, wire) = net.send_ip(Side::A, &ipv4(A_TUN, B_TUN, 8));
    net.b.remove_peer(&net.a.public_key()).unwrap();
    assert_eq!(net.b.index_count(), 0);
    let (_, verdicts, _) = net.deliver(Side::B, wire);
    assert_eq!(verdicts, vec![Received::Dropped(DropReason::UnknownIndex)]);
    assert!(net.b.remove_peer(&net.a.public_key()).is_err());
}

#[test]
fn own_key_and_duplicates_are_refused() {
    let key = PrivateKey::generate(&mut OsRng);
    let dev = Device::new(key.clone(), OsRng);
    assert!(dev.add_peer(PeerConfig::new(key.public_key())).is_err());
    let other = PrivateKey::generate(&mut OsRng).public_key();
    dev.add_peer(PeerConfig::new(other)).unwrap();
    assert!(dev.add_peer(PeerConfig::new(other)).is_err());
}

#[test]
fn triage_answers_cookies_cheaply_and_passes_the_rest_once() {
    let mut net = net();
    net.b.handshake_queue_backed_up(net.now.instant);
    let (_, wire) = net.send_ip(Side::A, &ipv4(A_TUN, B_TUN, 8));
    let mut out = Vec::new();
    // No mac2 yet: dealt with by triage, a cookie reply.
    let verdict = net
        .b
        .triage_handshake(net.a_addr, &wire[0], net.now, &mut out);
    assert_eq!(verdict, Some(Received::Dropped(DropReason::CookieRequired)));
    assert_eq!(
        kinds(&out.iter().map(|o| o.bytes.clone()).collect::<Vec<_>>()),
        vec![MESSAGE_COOKIE_REPLY]
    );
    let replies: Vec<Vec<u8>> = out.drain(..).map(|o| o.bytes).collect();
    net.deliver(Side::A, replies);
    // The retry carries mac2: triage lets it through, and the checked path completes it.
    net.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX);
    net.b.handshake_queue_backed_up(net.now.instant);
    let mut retry = net.timers(Side::A).remove(0);
    assert_eq!(
        net.b
            .triage_handshake(net.a_addr, &retry, net.now, &mut out),
        None
    );
    assert!(out.is_empty());
    let r = net
        .b
        .receive_checked(net.a_addr, &mut retry, net.now, &mut out);
    assert!(matches!(r, Received::Handshake { .. }), "{r:?}");
    assert_eq!(
        kinds(&out.iter().map(|o| o.bytes.clone()).collect::<Vec<_>>()),
        vec![MESSAGE_RESPONSE]
    );
    // Junk and transport data pass through triage untouched (None), for `receive` to judge.
    assert_eq!(
        net.b
            .triage_handshake(net.a_addr, &[4, 0, 0, 0], net.now, &mut out),
        None
    );
}

/// A device started without a key (as wireguard-go starts, before `wg set private-key`)
/// neither answers nor sends; once it has its key, handshakes go through.
#[test]
fn a_device_without_a_key_sends_and_accepts_nothing_until_it_gets_one() {
    let mut net = net();
    let b_key = net.b.private_key();
    let keyless = Device::without_key(OsRng);
    let mut to_a = PeerConfig::new(net.a.public_key());
    to_a.allowed_ips = vec!["10.0.0.1/32".parse().unwrap()];
    keyless.add_peer(to_a).unwrap();
    net.b = keyless;
    assert!(!net.b.has_private_key());
    let ping = ipv4(A_TUN, B_TUN, 8);
    let (_, wire) = net.send_ip(Side::A, &ping);
    assert_eq!(kinds(&wire), vec![MESSAGE_INITIATION]);
    let (packets, verdicts, replies) = net.deliver(Side::B, wire);
    assert!(packets.is_empty() && replies.is_empty(), "unanswered");
    assert_eq!(verdicts, vec![Received::Dropped(DropReason::NoPrivateKey)]);
    let (sent, wire) = net.send_ip(Side::B, &ipv4(B_TUN, A_TUN, 8));
    assert_eq!(sent, Sent::Dropped(DropReason::NoPrivateKey));
    assert!(wire.is_empty(), "sends nothing");
    assert!(net.timers(Side::B).is_empty(), "not even from its timers");
    net.b.set_private_key(b_key);
    assert!(net.b.has_private_key());
    net.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX);
    let retry = net.timers(Side::A);
    assert_eq!(kinds(&retry), vec![MESSAGE_INITIATION]);
    let (_, at_b) = net.pump(Side::B, retry);
    assert!(
        at_b.contains(&ping),
        "the staged ping arrives once B has its key"
    );
}

/// Changing the private key at run time, as `wg set private-key` does: the old sessions stop
/// sending (the next packet starts a handshake under the new key), a peer that knows the new
/// public key gets through, one that knows only the old one does not, and a peer whose public
/// key is the new key's own is removed.
#[test]
fn a_new_private_key_takes_over_from_the_next_handshake() {
    let mut net = net();
    net.connect();
    let old_public = net.b.public_key();
    // A third peer on B whose key is about to become B's own.
    let new_key = PrivateKey::generate(&mut OsRng);
    let mut itself = PeerConfig::new(new_key.public_key());
    itself.allowed_ips = vec!["10.0.0.9/32".parse().unwrap()];
    net.b.add_peer(itself).unwrap();
    net.b.set_private_key(new_key.clone());
    assert_eq!(net.b.public_key(), new_key.public_key());
    assert!(
        net.b.peer_id(&new_key.public_key()).is_none(),
        "a device is never its own peer"
    );
    // B's session to A no longer sends: a packet from B (past the REKEY_TIMEOUT that
    // answering A's initiation started) starts a handshake, which A (that still knows B's
    // old key) cannot accept.
    net.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX);
    let (sent, wire) = net.send_ip(Side::B, &ipv4(B_TUN, A_TUN, 8));
    assert_eq!(sent, Sent::Queued);
    assert_eq!(kinds(&wire), vec![MESSAGE_INITIATION]);
    let (_, verdicts, replies) = net.deliver(Side::A, wire);
    assert!(replies.is_empty());
    assert!(
        matches!(verdicts[..], [Received::Dropped(_)]),
        "{verdicts:?}"
    );
    // A learns B's new key (wg set on A): a fresh handshake, and traffic both ways.
    net.a.remove_peer(&old_public).unwrap();
    let mut to_b = PeerConfig::new(new_key.public_key());
    to_b.endpoint = Some(net.b_addr);
    to_b.allowed_ips = vec!["10.0.0.2/32".parse().unwrap()];
    net.a.add_peer(to_b).unwrap();
    net.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX);
    let there = ipv4(A_TUN, B_TUN, 20);
    let (_, wire) = net.send_ip(Side::A, &there);
    let (_, at_b) = net.pump(Side::B, wire);
    assert_eq!(at_b, vec![there]);
    let back = ipv4(B_TUN, A_TUN, 30);
    let (sent, wire) = net.send_ip(Side::B, &back);
    assert!(matches!(sent, Sent::Ready { .. }), "{sent:?}");
    let (at_a, _) = net.pump(Side::A, wire);
    assert_eq!(at_a, vec![back]);
    // The same key again changes nothing.
    net.b.set_private_key(new_key);
    let (sent, _) = net.send_ip(Side::B, &ipv4(B_TUN, A_TUN, 40));
    assert!(matches!(sent, Sent::Ready { .. }), "{sent:?}");
}

impl Net {
    /// `from` sends an Ethernet frame to its only peer (id 0) on a layer-2 device.
    fn send_frame(&self, from: Side, frame: &[u8]) -> (Sent, Vec<Vec<u8>>) {
        let mut buf = vec![0u8; 2048];
        buf[17..17 + frame.len()].copy_from_slice(frame);
        let mut out = Vec::new();
        let sent = self
            .dev(from)
            .encapsulate_frame(0, &mut buf, frame.len(), self.now, &mut out);
        let mut wire: Vec<Vec<u8>> = out.into_iter().map(|o| o.bytes).collect();
        if let Sent::Ready { len, .. } = &sent {
            wire.push(buf[..*len].to_vec());
        }
        (sent, wire)
    }
}

/// A frame of `len` bytes (14 of header) from `src` to `dst`, its payload counting up.
fn frame(dst: [u8; 6], src: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    for (i, b) in f.iter_mut().enumerate().skip(14) {
        *b = i as u8;
    }
    f
}

/// Layer 2: frames of any length come out exactly as they went in, padding and all, also
/// when they waited for the handshake; the plaintext on the wire is padded like an IP
/// packet's (a multiple of 16).
#[test]
fn layer_2_frames_cross_whole_and_padded() {
    use crate::l2::Layer;
    let net = net();
    net.a.set_layer(Layer::L2);
    net.b.set_layer(Layer::L2);
    let first = frame([0xff; 6], [2, 0, 0, 0, 0, 1], 42);
    let (sent, wire) = net.send_frame(Side::A, &first);
    assert_eq!(sent, Sent::Queued);
    let (_, at_b) = net.pump(Side::B, wire);
    assert_eq!(at_b, vec![first]);
    for len in [14, 15, 60, 61, 1000, 1419] {
        let f = frame([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], len);
        let (sent, wire) = net.send_frame(Side::B, &f);
        let Sent::Ready { len: sealed, .. } = sent else {
            panic!("{len}: {sent:?}")
        };
        assert_eq!((sealed - TRANSPORT_OVERHEAD) % 16 == 0, len + 1 < 1420 - 15);
        assert_eq!(net.deliver(Side::A, wire).0, vec![f], "{len}");
    }
}

/// A layer-2 end and a layer-3 end of one pair: each side that receives the other's packets
/// says which layer came and counts it, and delivers nothing.
#[test]
fn a_layer_mismatch_is_reported_on_both_sides() {
    use crate::l2::Layer;
    let net = net();
    net.b.set_layer(Layer::L2);
    // A (layer 3) sends an IP packet: the handshake works, the packet is refused at B.
    let ping = ipv4(A_TUN, B_TUN, 8);
    let (_, wire) = net.send_ip(Side::A, &ping);
    let (_, at_b) = net.pump(Side::B, wire);
    assert!(at_b.is_empty());
    assert_eq!(net.b.drop_count(DropReason::LayerMismatch), 1);
    let (_, wire) = net.send_ip(Side::A, &ping);
    let (packets, verdicts, _) = net.deliver(Side::B, wire);
    assert!(packets.is_empty());
    assert_eq!(
        verdicts,
        vec![Received::WrongLayer {
            peer: 0,
            sent: Layer::L3
        }]
    );
    // B (layer 2) sends a frame: A refuses it the same way.
    let (_, wire) = net.send_frame(Side::B, &frame([0xff; 6], [2, 0, 0, 0, 0, 2], 60));
    let (packets, verdicts, _) = net.deliver(Side::A, wire);
    assert!(packets.is_empty());
    assert_eq!(
        verdicts,
        vec![Received::WrongLayer {
            peer: 0,
            sent: Layer::L2
        }]
    );
    assert_eq!(net.a.drop_count(DropReason::LayerMismatch), 1);
}
