//! The send path: packets the host sends into the tunnel, read from the packet device a batch
//! at a time (a super-packet split into MTU-sized packets), sealed in place, and sent as runs:
//! consecutive datagrams of one size to one endpoint leave in one GSO send.

use super::dataplane::Engine;
use super::shared::{Shared, Worker, QUIET_AFTER};
use crate::clock;
use crate::packet_device::Slots;
use crate::poll;
use crate::switch::Forward;
use crate::transport::{SendError, Transport};
use crate::tun::{IDEAL_BATCH_SIZE, MAX_READ};
use std::sync::atomic::Ordering;
use suidao_proto::constants::{TRANSPORT_HEADER_LEN, TRANSPORT_OVERHEAD};
use suidao_proto::l2::{self, L2_HEADER_LEN};
use suidao_proto::{Endpoint, Outgoing, PeerId, Sent, Time};
use tracing::debug;

/// Packet slots of the outgoing path: two batches, so reading goes on while a whole
/// super-packet's split still fits.
const TX_SLOTS: usize = 2 * IDEAL_BATCH_SIZE;
const _: () = assert!(TX_SLOTS <= crate::packet_device::MAX_SLOTS);

/// Packets found again within this long of the last ones: a flow, to be read in batches (also
/// datagrams, by the receive path).
pub(super) const BUSY_WINDOW: std::time::Duration = std::time::Duration::from_millis(1);

/// The outgoing path's buffers. Behind a mutex in `Worker` so that whichever thread reads the
/// TUN holds it for the whole read-seal-send of a batch: packets leave in the order they were
/// read, whichever thread does the work.
///
/// The per-slot records (sizes, targets, what is ready to send) are arrays inside, not vectors
/// of their own, and the fields are in the order written (`repr(C)`): what a lone packet
/// touches here (the fields up to `ready_len`, and slot 0 of each array) lies within 4.3 KB,
/// two pages (three at worst), where three vectors lay on three pages of their own wherever
/// the allocator had room (README, Performance).
#[repr(C)]
pub(super) struct TxState {
    /// `TX_SLOTS` slots of `stride` bytes, back to back. Packet i is read at
    /// `data[i * stride + 16..]` (room for the transport header) and sealed in place (padding
    /// and tag after it). With offload the stride is exactly a full-size sealed packet, so a run
    /// of full-size packets is already one contiguous GSO buffer: no copy before sending.
    data: Vec<u8>,
    out: Vec<Outgoing>,
    scratch: Vec<u8>,
    /// Runs that are not contiguous in `data` (shorter packets) are gathered here for GSO.
    gso: Vec<u8>,
    stride: usize,
    /// Where a packet starts in its slot: after the transport header, and on a layer-2
    /// interface after the frame's header byte too.
    inner: usize,
    /// When the busy window of the last packet found ends.
    busy_until: Option<std::time::Instant>,
    /// Traffic is flowing (the last drain found two packets or more, or found one less than
    /// `BUSY_WINDOW` ago): read until the device is empty before sending (batches). Otherwise
    /// a packet leaves after its first read: a lone packet (a ping, a keystroke, the answer
    /// to a request) pays no extra read before it goes.
    busy: bool,
    /// How many of `ready` are in use.
    ready_len: usize,
    sizes: [usize; TX_SLOTS],
    /// Layer 2: the peer each slot's frame goes to, when it is decided already (the relay);
    /// `None`: the switch decides (frames from the TAP).
    targets: [Option<PeerId>; TX_SLOTS],
    /// The sealed slots to send: (slot, where to, length).
    ready: [(usize, Endpoint, usize); TX_SLOTS],
}

/// An unused entry of `TxState::ready`.
const NO_ENDPOINT: Endpoint = Endpoint {
    addr: std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::UNSPECIFIED,
        0,
    )),
    local: None,
};

impl TxState {
    /// How many packets fit.
    pub(super) fn slots(&self) -> usize {
        TX_SLOTS
    }

    /// Room for a packet in a slot (after the transport header, before padding and tag).
    pub(super) fn room(&self) -> usize {
        self.stride - TRANSPORT_OVERHEAD - (self.inner - TRANSPORT_HEADER_LEN)
    }

    /// Puts `packet` into slot `i` (at `inner`), to be sealed by `seal_and_send`; on a layer-2
    /// interface, for peer `to`.
    pub(super) fn put(&mut self, i: usize, packet: &[u8], to: Option<PeerId>) {
        let at = i * self.stride + self.inner;
        self.data[at..at + packet.len()].copy_from_slice(packet);
        self.sizes[i] = packet.len();
        self.targets[i] = to;
    }

    /// `layer2`: slots hold Ethernet frames (with room for their header byte).
    pub(super) fn new(mtu: usize, offload: bool, layer2: bool) -> TxState {
        // With offload, the TUN hands over super-packets split to at most the MTU, so a slot
        // of header + MTU + tag holds any packet (padding never goes past the MTU). Without
        // it, each read is one packet straight into a slot: leave room for an MTU raised
        // behind our back rather than read a truncated packet.
        let stride = if offload {
            TRANSPORT_OVERHEAD + mtu
        } else {
            TRANSPORT_OVERHEAD + mtu.max(1500) + 64
        };
        TxState {
            data: vec![0u8; TX_SLOTS * stride],
            out: Vec::new(),
            scratch: vec![0u8; MAX_READ],
            gso: Vec::with_capacity(65536),
            stride,
            inner: TRANSPORT_HEADER_LEN + if layer2 { L2_HEADER_LEN } else { 0 },
            busy_until: None,
            busy: false,
            ready_len: 0,
            sizes: [0; TX_SLOTS],
            targets: [None; TX_SLOTS],
            ready: [(0, NO_ENDPOINT, 0); TX_SLOTS],
        }
    }
}

/// The send thread: sends whatever the device has, then sleeps until it has more. While the
/// worker is quiet the receive thread watches the device and this one sleeps until handed it
/// (see `Worker`). Out of line for the same reason as `receive::run`.
#[inline(never)]
pub(super) fn run(s: &Shared, w: &Worker) {
    while !Engine::ending(s) {
        if w.quiet.load(Ordering::Acquire) {
            if let Err(e) = poll::wait_any(&[w.send_bell.fd()], None) {
                debug!("waiting for the device: {e}");
            }
            w.send_bell.clear();
            continue;
        }
        let sent = match w.tx.lock() {
            Ok(mut tx) => drain(s, w, &mut tx),
            Err(poisoned) => drain(s, w, &mut poisoned.into_inner()),
        };
        if sent == 0 {
            // With quiet mode possible, wait a while, then hand the device back.
            let timeout = w.fds.map(|_| QUIET_AFTER);
            match w.device.wait_readable(timeout) {
                Ok(false) if timeout.is_some() && !s.stopping.load(Ordering::Relaxed) => {
                    w.quiet.store(true, Ordering::Release);
                    w.recv_bell.ring();
                }
                Ok(_) => {}
                Err(e) => debug!("waiting for {}: {e}", w.device.name()),
            }
        }
    }
}

/// Reads the device until it has nothing more (or the batch is full), then seals and sends it
/// all: many small packets leave in few system calls too. After a quiet spell, the first read
/// goes out at once (see `TxState::busy`). Returns how many packets were read.
/// The clock is read once, here, for the busy window and for sealing (a lone packet read it in
/// three places, four vDSO calls): the first read after 50 ms of idle costs about 2.4 µs on
/// these VMs, measured alone, and a later one 0.03-0.15.
pub(super) fn drain(s: &Shared, w: &Worker, tx: &mut TxState) -> usize {
    let (stride, inner) = (tx.stride, tx.inner);
    let now = clock::now();
    let busy = tx.busy || tx.busy_until.is_some_and(|end| now.instant < end);
    let mut filled = 0;
    {
        let TxState {
            scratch,
            data,
            sizes,
            targets,
            ..
        } = tx;
        while TX_SLOTS - filled >= IDEAL_BATCH_SIZE {
            let mut free = Slots::new(
                &mut data[filled * stride..],
                stride,
                &mut sizes[filled..],
                inner,
            );
            match w.device.read_batch(scratch, &mut free) {
                Ok(n) => {
                    let n = n.min(TX_SLOTS - filled);
                    // Frames from the device go where the switch says (layer 2).
                    targets[filled..filled + n].fill(None);
                    filled += n;
                    if !busy {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        s.device_read_failed(w, &e);
                    }
                    break;
                }
            }
        }
    }
    tx.busy = filled > 1;
    if filled == 0 {
        return 0;
    }
    tx.busy_until = now.instant.checked_add(BUSY_WINDOW);
    seal_and_send(s, &*w.transport, tx, filled, now);
    s.look_again();
    filled
}

/// Seals the first `filled` slots in place (packet i at `data[i * stride + 16..]`, `sizes[i]`
/// bytes) and sends them as runs; then what the protocol asked for on the way (handshakes).
/// The send path's batches and the relay's (`receive`) both leave through here.
pub(super) fn seal_and_send(
    s: &Shared,
    transport: &dyn Transport,
    tx: &mut TxState,
    filled: usize,
    now: Time,
) {
    let TxState {
        data,
        stride,
        sizes,
        targets,
        ready,
        ready_len,
        gso,
        out,
        ..
    } = tx;
    let stride = *stride;
    *ready_len = 0;
    for (i, slot) in data.chunks_mut(stride).enumerate().take(filled) {
        let sent = match &s.switch {
            None => s.device.encapsulate(slot, sizes[i], now, out),
            Some(_) => match targets[i] {
                Some(peer) => s.device.encapsulate_frame(peer, slot, sizes[i], now, out),
                None => switch_local(s, transport, slot, sizes[i], now, out),
            },
        };
        if let Sent::Ready { to, len } = sent {
            // At most one per slot: `filled` is at most `TX_SLOTS`.
            if let Some(r) = ready.get_mut(*ready_len) {
                *r = (i, to, len);
                *ready_len += 1;
            }
        }
    }
    let ready = &ready[..*ready_len];
    if let [(i, to, len)] = *ready {
        // A lone packet (a ping, a keystroke): what `send_runs` would do with it, without
        // the code that groups runs on the way of a round trip.
        if let Err(e) = transport.send(&data[i * stride..i * stride + len], to, None) {
            s.send_failed(to, &e);
        }
    } else {
        let max_segments = transport.max_segments().clamp(1, 64);
        send_runs(
            transport,
            data,
            stride,
            ready,
            gso,
            max_segments,
            &mut |to, e| s.send_failed(to, e),
        );
    }
    s.send_all(out);
}

/// Layer 2: a frame from the TAP (at `slot[17..17 + len]`) goes where the switch says: sealed
/// in place for one peer; for a flood, a copy sealed and sent to each peer but the last, which
/// gets the slot itself (floods are broadcasts and first frames to a MAC: rare, and capped
/// where they come from peers, so no batching for them).
fn switch_local(
    s: &Shared,
    transport: &dyn Transport,
    slot: &mut [u8],
    len: usize,
    now: Time,
    out: &mut Vec<Outgoing>,
) -> Sent {
    let Some(switch) = &s.switch else {
        return Sent::Queued;
    };
    let at = TRANSPORT_HEADER_LEN + L2_HEADER_LEN;
    let frame = &slot[at..at + len];
    let (Some(src), Some(dst)) = (l2::source(frame), l2::destination(frame)) else {
        return Sent::Queued;
    };
    match switch.from_local(src, dst, now.instant) {
        Forward::Peer(p) => s.device.encapsulate_frame(p, slot, len, now, out),
        Forward::Flood => {
            let peers = s.device.peer_ids();
            let Some((&last, others)) = peers.split_last() else {
                return Sent::Queued;
            };
            for &p in others {
                flood_copy(s, transport, p, &slot[..at + len], now, out);
            }
            s.device.encapsulate_frame(last, slot, len, now, out)
        }
        Forward::Local | Forward::Drop(_) => Sent::Queued,
    }
}

/// A copy of the frame at `slot[17..]` sealed for `peer` and sent at once.
pub(super) fn flood_copy(
    s: &Shared,
    transport: &dyn Transport,
    peer: PeerId,
    slot: &[u8],
    now: Time,
    out: &mut Vec<Outgoing>,
) {
    let len = slot.len() - TRANSPORT_HEADER_LEN - L2_HEADER_LEN;
    let mut copy = vec![0u8; slot.len() + TRANSPORT_OVERHEAD + 16];
    copy[..slot.len()].copy_from_slice(slot);
    if let Sent::Ready { to, len } = s.device.encapsulate_frame(peer, &mut copy, len, now, out) {
        if let Err(e) = transport.send(&copy[..len], to, None) {
            s.send_failed(to, &e);
        }
    }
}

/// A run of sealed datagrams to one endpoint: all `seg` bytes long but the last.
struct Run {
    to: Endpoint,
    seg: usize,
    count: usize,
    first: usize,
    last: usize,
    bytes: usize,
    /// Still back to back in the slots (else gathered in the GSO buffer).
    in_place: bool,
}

/// Sends sealed datagrams, grouping consecutive ones to the same endpoint with the same length
/// (the last of a run may be shorter) into one GSO send: straight from the slots when they are
/// back to back (full-size packets), else gathered into `gso` first.
pub(super) fn send_runs(
    transport: &dyn Transport,
    data: &[u8],
    stride: usize,
    ready: &[(usize, Endpoint, usize)],
    gso: &mut Vec<u8>,
    max_segments: usize,
    failed: &mut impl FnMut(Endpoint, &SendError),
) {
    let packet = |i: usize, len: usize| &data[i * stride..i * stride + len];
    let mut flush = |gso: &mut Vec<u8>, r: &Run| {
        let result = if r.count == 1 {
            transport.send(packet(r.first, r.bytes), r.to, None)
        } else if r.in_place {
            transport.send(
                &data[r.first * stride..r.first * stride + r.bytes],
                r.to,
                Some(r.seg),
            )
        } else {
            transport.send(gso, r.to, Some(r.seg))
        };
        if let Err(e) = result {
            failed(r.to, &e);
        }
        gso.clear();
    };
    let mut run: Option<Run> = None;
    for &(i, to, len) in ready {
        if let Some(r) = &mut run {
            let joins =
                r.to == to && len <= r.seg && r.count < max_segments && r.bytes + len <= 65535;
            if joins {
                if r.in_place && !(r.seg == stride && i == r.last + 1) {
                    // Not back to back: gather what the run holds so far.
                    gso.extend_from_slice(&data[r.first * stride..r.first * stride + r.seg]);
                    r.in_place = false;
                }
                if !r.in_place {
                    gso.extend_from_slice(packet(i, len));
                }
                r.count += 1;
                r.last = i;
                r.bytes += len;
                if len < r.seg {
                    flush(gso, r);
                    run = None;
                }
                continue;
            }
            flush(gso, r);
        }
        run = Some(Run {
            to,
            seg: len,
            count: 1,
            first: i,
            last: i,
            bytes: len,
            in_place: true,
        });
    }
    if let Some(r) = &run {
        flush(gso, r);
    }
}
