//! The handshake queue: handshake messages pass the cheap checks on the receive path and wait
//! in a bounded queue for the one thread that does the costly Diffie-Hellman work, so the data
//! path never stalls behind it. A backed-up queue puts the device "under load".

use super::shared::Shared;
use crate::clock;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TrySendError};
use suidao_proto::{DropReason, Endpoint, Outgoing, Received, Time};
use tracing::{debug, info};

/// Handshake messages waiting for the handshake thread, at most.
pub(super) const HANDSHAKE_QUEUE: usize = 4096;
/// Past this many waiting, the device is under load (wireguard-go uses an eighth too).
const UNDER_LOAD_AT: usize = HANDSHAKE_QUEUE / 8;

/// A handshake message: the cheap checks here (mac1; under load, mac2 with a cookie reply and
/// the per-source rate limit), the costly rest in the handshake thread. Under a flood, then,
/// the queue holds only messages that proved their source address, and a real client's retry
/// is not lost behind the attacker's. Cold: one datagram in thousands is a handshake message,
/// and the receive loop's code for the rest stays together without it (under a flood, the
/// mark changes only where code lies, not what it does).
#[cold]
pub(super) fn queue(
    s: &Shared,
    from: Endpoint,
    datagram: &[u8],
    now: Time,
    out: &mut Vec<Outgoing>,
) {
    if let Some(verdict) = s.device.triage_handshake(from, datagram, now, out) {
        if let Received::Dropped(reason) = verdict {
            debug!("dropped a handshake message from {from}: {}", reason.name());
        }
        return;
    }
    // Counted before it is sent, so the handshake thread never counts below zero.
    let queued = s.queued_handshakes.fetch_add(1, Ordering::Relaxed) + 1;
    if queued >= UNDER_LOAD_AT {
        s.device.handshake_queue_backed_up(now.instant);
    }
    if let Err(e) = s.handshakes.try_send((from, datagram.to_vec())) {
        s.queued_handshakes.fetch_sub(1, Ordering::Relaxed);
        if let TrySendError::Full(_) = e {
            s.device
                .count_engine_drop(DropReason::HandshakeQueueFull, 1);
            debug!("handshake queue full: dropped one from {from}");
        }
    }
}

/// The handshake thread, until the empty message `Engine::stop` sends.
pub(super) fn run(s: &Shared, rx: Receiver<(Endpoint, Vec<u8>)>) {
    let mut out = Vec::new();
    while let Ok((from, mut datagram)) = rx.recv() {
        if datagram.is_empty() {
            break;
        }
        s.queued_handshakes.fetch_sub(1, Ordering::Relaxed);
        if s.stopping.load(Ordering::Relaxed) {
            continue;
        }
        let kind = datagram.first().copied();
        match s
            .device
            .receive_checked(from, &mut datagram, clock::now(), &mut out)
        {
            Received::Handshake { peer } => match kind {
                Some(1) => info!(
                    "handshake initiation from {} at {from}: answered",
                    s.peer_name(peer)
                ),
                _ => info!("handshake with {} at {from}: complete", s.peer_name(peer)),
            },
            Received::Cookie { peer } => debug!("cookie reply from {}", s.peer_name(peer)),
            Received::Dropped(reason) => {
                debug!("dropped a handshake message from {from}: {}", reason.name())
            }
            _ => {}
        }
        s.send_all(&mut out);
        s.look_again();
    }
}
