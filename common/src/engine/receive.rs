//! The receive path: datagrams from the transport a batch at a time (recvmmsg, and GRO runs of
//! one size), handshake messages handed to the handshake thread, transport data opened in
//! place and written to the packet device together, consecutive segments of one flow as one
//! super-packet (`gro`): no copy in between. A packet for another peer is sealed again and
//! sent on (hairpin, `relay`).

use super::dataplane::Engine;
use super::handshakes;
use super::relay::{hairpin, Relay};
use super::send::BUSY_WINDOW;
use super::shared::{Shared, Worker};
use crate::clock;
use crate::gro::Coalescer;
use crate::poll::{self, WaitSet};
use crate::switch::Forward;
use crate::transport::RecvMeta;
use crate::tun::IDEAL_BATCH_SIZE;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use suidao_proto::constants::MESSAGE_TRANSPORT;
use suidao_proto::l2;
use suidao_proto::messages::Message;
use suidao_proto::{Endpoint, Outgoing, PeerId, Received, Time};

/// Messages per receive call, each up to 64 KB (GRO).
const RX_MESSAGES: usize = 16;
const RX_SLOT: usize = 65536;
/// Opened packets are written to the device (coalesced) once this many wait, at the end of a
/// received message: a whole receive batch at once (up to a thousand small datagrams) would
/// overflow the receiving socket's buffer behind the TUN, where a few smaller bursts do not.
const TUN_WRITE_BATCH: usize = IDEAL_BATCH_SIZE;

/// The receive thread: receives whatever the transport has, then sleeps until it has more.
/// Out of line so that it keeps its name, which heads `build/hot-path.ld`'s first list (the
/// release build's whole-program optimisation would otherwise fold it into the thread's start).
#[inline(never)]
pub(super) fn run(s: &Shared, w: &Worker) {
    // What a lone datagram touches of this thread's heap (the wait set, the coalescer's
    // state) is made first, together: after the relay's slots it would lie pages away.
    let mut waiting = Waiting::new(w);
    let mut rx = vec![0u8; RX_MESSAGES * RX_SLOT];
    let mut meta = [RecvMeta::default(); RX_MESSAGES];
    let offload = w.device.offload();
    let mut gro = if s.switch.is_some() {
        Coalescer::for_frames(offload.tcp, offload.udp)
    } else {
        Coalescer::new(offload.tcp, offload.udp)
    };
    let mut out = Vec::new();
    let mut relay = Relay::new(s.device.mtu(), s.switch.is_some());
    // Whether a receive may find something without waiting first: after a batch short of
    // full, the socket was empty a moment ago, and `poll` says at once if it is not any more,
    // so the thread goes to sleep without a receive that would only answer EAGAIN (on the
    // way of a round trip when the other end's thread shares this CPU).
    let mut may_have_more = true;
    // When the last receive found something: within `BUSY_WINDOW` of it, datagrams are
    // flowing and are received a batch at a time; after a quiet spell, one message is asked
    // for (a ping, a keystroke: one datagram is what waits, and a receive for one is cheaper).
    // If more was waiting, the wait that follows says so at once and the next receive, within
    // the window, takes a batch. Kept as the window's end: a comparison, where a duration
    // since would be a subtraction of two clock readings.
    let mut busy_until: Option<std::time::Instant> = None;
    while !Engine::ending(s) {
        if !may_have_more {
            may_have_more = wait(s, w, &mut waiting);
            continue;
        }
        let now = clock::now();
        let flowing = busy_until.is_some_and(|end| now.instant < end);
        let asked = if flowing { RX_MESSAGES } else { 1 };
        let n = match w.transport.recv(&mut rx, RX_SLOT, &mut meta[..asked]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                may_have_more = false;
                continue;
            }
            Err(e) => {
                super::debug_cold(format_args!("receiving: {e}"));
                continue;
            }
        };
        busy_until = now.instant.checked_add(BUSY_WINDOW);
        for (k, m) in meta.iter().enumerate().take(n) {
            let base = k * RX_SLOT;
            let end = base + m.len.min(RX_SLOT);
            let stride = if m.stride == 0 {
                (end - base).max(1)
            } else {
                m.stride
            };
            let mut at = base;
            while at < end {
                let next = (at + stride).min(end);
                let datagram = &mut rx[at..next];
                match receive_one(s, m.from, datagram, now, &mut out) {
                    Opened::ForHost(range) => {
                        gro.push(&rx, at + range.start, range.len());
                        if gro.is_full() {
                            write_device(s, w, &mut gro, &mut rx);
                        }
                    }
                    Opened::ForPeer(range, to) => relay.push(
                        s,
                        w,
                        &rx[at + range.start..at + range.end],
                        to,
                        now,
                        &mut out,
                    ),
                    Opened::Flood(range, from) => {
                        let frame = &rx[at + range.start..at + range.end];
                        if s.hairpin {
                            for p in s.device.peer_ids().into_iter().filter(|p| *p != from) {
                                relay.push(s, w, frame, Some(p), now, &mut out);
                            }
                        }
                        gro.push(&rx, at + range.start, range.len());
                        if gro.is_full() {
                            write_device(s, w, &mut gro, &mut rx);
                        }
                    }
                    Opened::Nothing => {}
                }
                at = next;
            }
            // Between messages (one message is usually one run the sender sent in one go,
            // such as one TCP super-packet's segments), so that a group is not cut in two.
            if gro.len() >= TUN_WRITE_BATCH {
                write_device(s, w, &mut gro, &mut rx);
            }
        }
        let wrote = !gro.is_empty();
        write_device(s, w, &mut gro, &mut rx);
        // Writing to the device often makes the kernel answer at once (a ping's reply, a TCP
        // ack), and the answer is already waiting in it: send it from here, first thing,
        // before the send thread (woken by it, maybe on another CPU) gets there: the round
        // trip then costs no wake-up on this side.
        // While quiet and the transport keeps this thread busy (a full batch: it will not
        // wait, where it would watch the device), look at the device here too.
        if wrote || (n == RX_MESSAGES && w.quiet.load(Ordering::Acquire)) {
            if let Ok(mut tx) = w.tx.try_lock() {
                w.read_by_receiver(super::send::drain(s, w, &mut tx));
            }
        }
        relay.flush(s, w, now);
        s.send_all(&mut out);
        s.look_again();
        may_have_more = n == RX_MESSAGES;
    }
}

/// What the receive thread waits on: the transport and its doorbell, and while quiet the
/// device, in one epoll set (registered once, so a wake-up costs less than with poll(2)); the
/// device joins and leaves the set as quiet mode comes and goes. `None` where the set could
/// not be made: poll(2) then.
struct Waiting {
    set: Option<Arc<WaitSet>>,
    device_watched: bool,
}

impl Waiting {
    fn new(w: &Worker) -> Waiting {
        let set = w.fds.and_then(|(_, transport)| {
            let set = Arc::new(WaitSet::new().ok()?);
            if !w.transport.register(&set, 0b1).ok()? {
                set.add(transport, 0b1).ok()?;
            }
            set.add(w.recv_bell.fd(), 0b10).ok()?;
            Some(set)
        });
        Waiting {
            set,
            device_watched: false,
        }
    }

    /// Waits on the transport, the doorbell and (when `quiet`) the device: the ready ones'
    /// bits (0b1, 0b10, 0b100).
    fn wait(
        &mut self,
        device: RawFd,
        transport: RawFd,
        bell: RawFd,
        quiet: bool,
    ) -> std::io::Result<u32> {
        let Some(set) = &self.set else {
            let watched = if quiet {
                &[transport, bell, device][..]
            } else {
                &[transport, bell][..]
            };
            return poll::wait_any(watched, None);
        };
        if quiet != self.device_watched {
            if quiet {
                set.add(device, 0b100)?;
            } else {
                set.remove(device)?;
            }
            self.device_watched = quiet;
        }
        set.wait()
    }
}

/// Nothing to receive: sleep until there is, or (while quiet) until the device has a packet,
/// which is sent from here, or the send thread hands the device back. Returns whether the
/// transport has something now.
fn wait(s: &Shared, w: &Worker, waiting: &mut Waiting) -> bool {
    let Some((device, transport)) = w.fds else {
        if let Err(e) = w.transport.wait_readable(None) {
            super::debug_cold(format_args!("waiting for the transport: {e}"));
        }
        return true;
    };
    let quiet = w.quiet.load(Ordering::Acquire);
    match waiting.wait(device, transport, w.recv_bell.fd(), quiet) {
        Ok(ready) => {
            if ready & 0b10 != 0 {
                w.recv_bell.clear();
            }
            if ready & 0b100 != 0 {
                // The device is readable and this thread's while quiet: what the host sent
                // goes out from here (a lone packet after its first read, a burst to the send
                // thread).
                if let Ok(mut tx) = w.tx.try_lock() {
                    let n = super::send::drain(s, w, &mut tx);
                    w.read_by_receiver(n);
                }
            }
            ready & 0b1 != 0
        }
        Err(e) => {
            super::debug_cold(format_args!("waiting for the transport: {e}"));
            true
        }
    }
}

/// What became of a datagram.
enum Opened {
    /// A packet for this host, at this range of the datagram.
    ForHost(std::ops::Range<usize>),
    /// A packet for another peer (hairpin), at this range: on layer 3 the one its destination
    /// routes to, on layer 2 the one the switch chose.
    ForPeer(std::ops::Range<usize>, Option<PeerId>),
    /// Layer 2: a frame for this host and every peer but the one it came from.
    Flood(std::ops::Range<usize>, PeerId),
    Nothing,
}

/// One datagram: handshake messages to the handshake thread; transport data opened.
fn receive_one(
    s: &Shared,
    from: Endpoint,
    datagram: &mut [u8],
    now: Time,
    out: &mut Vec<Outgoing>,
) -> Opened {
    // Well-formed handshake messages go to the handshake thread; transport data and
    // malformed datagrams (dropped and counted at once) are handled here. Transport data is
    // told by its first byte (`receive` parses it); only the rest is parsed here.
    if datagram.first() != Some(&MESSAGE_TRANSPORT)
        && matches!(
            Message::parse(datagram),
            Ok(Message::Initiation(_) | Message::Response(_) | Message::CookieReply(_))
        )
    {
        handshakes::queue(s, from, datagram, now, out);
        return Opened::Nothing;
    }
    match s.device.receive(from, datagram, now, out) {
        Received::Packet { peer, range } if s.switch.is_some() => {
            switch_frame(s, peer, &datagram[range.clone()], now).into_opened(range, peer)
        }
        Received::Packet { peer, range } => {
            if s.hairpin && hairpin(s, peer, &datagram[range.clone()]) {
                Opened::ForPeer(range, None)
            } else {
                // The transport header in front of it is free now: room for the virtio
                // header the device write needs.
                Opened::ForHost(range)
            }
        }
        Received::WrongLayer { peer, sent } => {
            s.wrong_layer(peer, sent);
            Opened::Nothing
        }
        Received::Dropped(reason) => {
            super::debug_cold(format_args!(
                "dropped a datagram from {from}: {}",
                reason.name()
            ));
            Opened::Nothing
        }
        _ => Opened::Nothing,
    }
}

/// Layer 2: where a frame from `peer` goes, by the switch (drops counted). Out of line: a
/// layer-3 packet's code stays on fewer pages.
#[inline(never)]
fn switch_frame(s: &Shared, peer: PeerId, frame: &[u8], now: Time) -> Forward {
    let (Some(switch), Some(src), Some(dst)) =
        (&s.switch, l2::source(frame), l2::destination(frame))
    else {
        return Forward::Drop(None);
    };
    let forward = switch.from_peer(peer, src, dst, now.instant);
    match forward {
        Forward::Drop(Some(reason)) => s.device.count_engine_drop(reason, 1),
        // Between peers only if the interface relays at all (`hairpin`).
        Forward::Peer(_) if !s.hairpin => return Forward::Drop(None),
        _ => {}
    }
    forward
}

impl Forward {
    fn into_opened(self, range: std::ops::Range<usize>, from: PeerId) -> Opened {
        match self {
            Forward::Local => Opened::ForHost(range),
            Forward::Peer(p) => Opened::ForPeer(range, Some(p)),
            Forward::Flood => Opened::Flood(range, from),
            Forward::Drop(_) => Opened::Nothing,
        }
    }
}

/// Writes what `gro` holds; every failed write is counted (and its cause logged once).
fn write_device(s: &Shared, w: &Worker, gro: &mut Coalescer, rx: &mut [u8]) {
    let _ = gro.flush(rx, |iov| {
        let r = w.device.write_vectored(iov);
        if let Err(e) = &r {
            s.device_write_failed(w, e);
        }
        r
    });
}
