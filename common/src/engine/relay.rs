//! The relay (hairpin): a packet one peer sent for another is sealed again for that one and
//! sent on from the receive thread, a batch at a time in GSO runs per destination, as the send
//! path sends; on layer 3 the destination address says whether a packet is for another peer.

use super::send::{seal_and_send, TxState};
use super::shared::{Shared, Worker};
use suidao_proto::constants::{TRANSPORT_HEADER_LEN, TRANSPORT_OVERHEAD};
use suidao_proto::l2::L2_HEADER_LEN;
use suidao_proto::{ip, Outgoing, PeerId, Sent, Time};

/// The receive thread's relay: its own slots, sealed and sent as a batch (`seal_and_send`).
/// Full-size packets fill their slots exactly, so a run of them leaves without a copy.
pub(super) struct Relay {
    /// Boxed: the relay lives in the receive thread's frame, which stays small (a lone
    /// packet's stack pages).
    tx: Box<TxState>,
    filled: usize,
    /// For a packet larger than a slot (a peer with a larger MTU than ours), one at a time.
    big: Vec<u8>,
}

impl Relay {
    /// Out of line: the slots are built in this frame, not the receive thread's.
    #[inline(never)]
    pub(super) fn new(mtu: usize, layer2: bool) -> Relay {
        Relay {
            tx: Box::new(TxState::new(mtu, true, layer2)),
            filled: 0,
            big: Vec::new(),
        }
    }

    /// `to`: layer 2, the peer the switch chose (layer 3: where the destination routes).
    pub(super) fn push(
        &mut self,
        s: &Shared,
        w: &Worker,
        packet: &[u8],
        to: Option<PeerId>,
        now: Time,
        out: &mut Vec<Outgoing>,
    ) {
        if packet.len() > self.tx.room() {
            let len = packet.len();
            self.big
                .resize(len + TRANSPORT_OVERHEAD + L2_HEADER_LEN + 16, 0);
            let sent = match to {
                None => {
                    self.big[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + len]
                        .copy_from_slice(packet);
                    s.device.encapsulate(&mut self.big, len, now, out)
                }
                Some(peer) => {
                    let at = TRANSPORT_HEADER_LEN + L2_HEADER_LEN;
                    self.big[at..at + len].copy_from_slice(packet);
                    s.device
                        .encapsulate_frame(peer, &mut self.big, len, now, out)
                }
            };
            if let Sent::Ready { to, len } = sent {
                if let Err(e) = w.transport.send(&self.big[..len], to, None) {
                    s.send_failed(to, &e);
                }
            }
            return;
        }
        self.tx.put(self.filled, packet, to);
        self.filled += 1;
        if self.filled == self.tx.slots() {
            self.flush(s, w, now);
        }
    }

    pub(super) fn flush(&mut self, s: &Shared, w: &Worker, now: Time) {
        if self.filled > 0 {
            seal_and_send(s, &*w.transport, &mut self.tx, self.filled, now);
            self.filled = 0;
        }
    }
}

/// Whether an opened packet is for another peer (relay it) rather than for this host.
pub(super) fn hairpin(s: &Shared, from_peer: PeerId, packet: &[u8]) -> bool {
    // With one peer (a client and its server), there is no other to relay to.
    if s.device.peer_count() < 2 {
        return false;
    }
    let Some(dst) = ip::destination(packet) else {
        return false;
    };
    if s.own_addrs.contains(&dst) {
        return false;
    }
    matches!(s.device.route(dst), Some(to) if to != from_peer)
}
