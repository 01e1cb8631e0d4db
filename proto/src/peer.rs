//! A peer: everything the protocol keeps about one remote public key — its handshake, its
//! three session slots, its timers, its endpoint, the packets waiting for a session.
//!
//! The state sits behind one mutex per peer. The hot path holds it only to pick the session
//! and run the timer hooks; sealing and opening happen outside it.

use super::cookie::CookieGenerator;
use super::handshake::Handshake;
use super::session::Keypair;
use super::timers::Timers;
use crate::allowed_ips::Cidr;
use crate::keys::{PresharedKey, PrivateKey, PublicKey};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A peer's handle inside one device.
pub type PeerId = u32;

/// What a device needs to know to add a peer.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    pub public_key: PublicKey,
    pub preshared_key: Option<PresharedKey>,
    pub endpoint: Option<SocketAddr>,
    pub persistent_keepalive: Option<Duration>,
    pub allowed_ips: Vec<Cidr>,
}

impl PeerConfig {
    pub fn new(public_key: PublicKey) -> Self {
        PeerConfig {
            public_key,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: None,
            allowed_ips: Vec::new(),
        }
    }
}

/// The current, previous and next sessions (paper, section 6.1 / kernel noise_keypairs).
/// `next` is a session we derived as responder and may not use until the initiator has sent on
/// it; `previous` keeps receiving while packets sealed before a rekey are still in flight.
///
/// `receiving` is ours, not the kernel's: the session the peer last sent us a packet on. The
/// kernel's three slots can push out the very session the peer is still sending on. When both
/// sides initiate at once over a lossy path (after an outage, say), a handshake we answered
/// puts its session in `next` and drops `previous`; one we initiated drops `current` when
/// `next` is taken. If the peer missed our side of those handshakes it keeps sending on the
/// session we dropped, every packet is refused, and it learns of the new session only from a
/// packet of ours on it — which, when its traffic is requests, never comes until its own next
/// initiation gets through, 5 s or more later (seen: 18 s at 30% loss each way). So a session
/// that leaves the slots stays open for receiving while it is the one the peer uses, until a
/// packet arrives on another; it never sends, and it expires like any other.
///
/// Since a responder no longer initiates right after answering (the kernel's
/// last_sent_handshake), the seeded lossy-link simulation gives the same figures with and
/// without this slot; but the crossed sequence still happens when exactly the right two
/// messages are lost, and there the kernel's slots alone leave the peer's packets refused for
/// 15 s (until its new-handshake timer), this slot for none (`device_tests`,
/// `the_kernels_three_slots_alone_stall_after_crossed_handshakes`).
///
/// The slots change only through the methods below, which keep the index table in step.
#[derive(Default)]
pub struct Keypairs {
    current: Option<Arc<Keypair>>,
    previous: Option<Arc<Keypair>>,
    next: Option<Arc<Keypair>>,
    receiving: Option<Arc<Keypair>>,
}

#[cfg(test)]
thread_local! {
    /// Test switch: the kernel's three slots alone (no `receiving`), to show what the fourth
    /// slot is for.
    pub(crate) static KERNEL_SLOTS_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn tracks_receiving() -> bool {
    #[cfg(test)]
    {
        !KERNEL_SLOTS_ONLY.with(|k| k.get())
    }
    #[cfg(not(test))]
    {
        true
    }
}

fn same(slot: &Option<Arc<Keypair>>, kp: &Arc<Keypair>) -> bool {
    slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, kp))
}

impl Keypairs {
    /// The session we send on.
    pub fn current(&self) -> Option<&Arc<Keypair>> {
        self.current.as_ref()
    }

    fn holds(&self, kp: &Arc<Keypair>) -> bool {
        same(&self.current, kp) || same(&self.previous, kp) || same(&self.next, kp)
    }

    /// A session left its slot: its receiver index goes (`forget`), unless the peer is still
    /// sending on it.
    fn retire(&self, kp: Option<Arc<Keypair>>, forget: &mut impl FnMut(u32)) {
        if let Some(kp) = kp {
            if !same(&self.receiving, &kp) {
                forget(kp.local_index);
            }
        }
    }

    /// A handshake we initiated completed: its session is usable at once (kernel
    /// add_new_keypair, initiator side).
    pub fn initiator_complete(&mut self, kp: Arc<Keypair>, forget: &mut impl FnMut(u32)) {
        let previous = self.previous.take();
        self.retire(previous, forget);
        if let Some(next) = self.next.take() {
            // Both sides initiated: the one we answered waits in `next`; the kernel keeps
            // it as `previous` and drops `current`.
            let current = self.current.take();
            self.retire(current, forget);
            self.previous = Some(next);
        } else {
            self.previous = self.current.take();
        }
        self.current = Some(kp);
    }

    /// We answered an initiation: its session waits in `next` until the initiator uses it;
    /// `previous` goes (kernel add_new_keypair, responder side).
    pub fn responder_derived(&mut self, kp: Arc<Keypair>, forget: &mut impl FnMut(u32)) {
        let next = self.next.replace(kp);
        self.retire(next, forget);
        let previous = self.previous.take();
        self.retire(previous, forget);
    }

    /// A packet arrived on `kp`. The first one on `next` confirms it: it becomes current and
    /// the old current previous (kernel received_with_keypair); returns whether that happened.
    pub fn received_on(&mut self, kp: &Arc<Keypair>, forget: &mut impl FnMut(u32)) -> bool {
        let confirmed = same(&self.next, kp);
        if confirmed {
            let previous = self.previous.take();
            self.retire(previous, forget);
            self.previous = self.current.take();
            self.current = self.next.take();
        }
        // A packet on a session that left the slots while we were opening it changes nothing.
        if tracks_receiving() && !same(&self.receiving, kp) && self.holds(kp) {
            if let Some(old) = self.receiving.replace(kp.clone()) {
                if !self.holds(&old) {
                    forget(old.local_index);
                }
            }
        }
        confirmed
    }

    /// The sessions we would send on stop sending (our private key changed): the next packet
    /// starts a handshake; what arrives on them is still opened (kernel
    /// wg_noise_expire_current_peer_keypairs).
    pub fn stop_sending(&self) {
        for kp in [&self.current, &self.next].into_iter().flatten() {
            kp.stop_sending();
        }
    }

    /// Every session goes (keys erased, peer removed).
    pub fn clear(&mut self, forget: &mut impl FnMut(u32)) {
        let receiving = self.receiving.take().filter(|r| !self.holds(r));
        for kp in [
            receiving,
            self.current.take(),
            self.previous.take(),
            self.next.take(),
        ]
        .into_iter()
        .flatten()
        {
            forget(kp.local_index);
        }
    }
}

pub struct PeerState {
    pub handshake: Handshake,
    pub cookie: CookieGenerator,
    pub keypairs: Keypairs,
    pub timers: Timers,
    pub endpoint: Option<super::device::Endpoint>,
    /// IP packets waiting for a session, oldest first.
    pub staged: VecDeque<Vec<u8>>,
    /// When we last sent a handshake message, initiation or response (the kernel's
    /// last_sent_handshake): no initiation of ours goes within REKEY_TIMEOUT of either, so a
    /// responder does not cross the handshake it just answered with one of its own.
    pub last_sent_handshake: Option<Instant>,
    /// Wall-clock time (since the epoch) of the latest completed handshake.
    pub last_handshake: Option<Duration>,
    /// The initiator already asked for a new session because the current one is nearly too old
    /// to receive on (REKEY_AFTER_TIME_RECV); reset when a session is derived.
    pub sent_lastminute_handshake: bool,
    /// A keepalive is owed at the next timer pass (persistent keepalive was just configured).
    pub kick: bool,
}

pub struct Peer {
    pub id: PeerId,
    pub public_key: PublicKey,
    state: Mutex<PeerState>,
    pub rx_bytes: AtomicU64,
    pub tx_bytes: AtomicU64,
}

impl Peer {
    /// `seed`: for its timers' jitter (from the device's randomness); `attention`: the
    /// device's (see `Attention`).
    pub(crate) fn new(
        id: PeerId,
        local: &PrivateKey,
        config: &PeerConfig,
        seed: u64,
        attention: std::sync::Arc<super::timers::Attention>,
    ) -> Self {
        let state = PeerState {
            handshake: Handshake::new(local, config.public_key, config.preshared_key.clone()),
            cookie: CookieGenerator::new(&config.public_key),
            keypairs: Keypairs::default(),
            timers: Timers::new(config.persistent_keepalive, seed, attention),
            endpoint: config.endpoint.map(Into::into),
            staged: VecDeque::new(),
            last_sent_handshake: None,
            last_handshake: None,
            sent_lastminute_handshake: false,
            kick: config.persistent_keepalive.is_some(),
        };
        Peer {
            id,
            public_key: config.public_key,
            state: Mutex::new(state),
            rx_bytes: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
        }
    }

    /// Locks the state. A panic elsewhere while holding the lock leaves the state consistent
    /// enough to go on (every field is valid on its own), so a poisoned lock is used anyway
    /// rather than taking the whole device down.
    pub fn lock(&self) -> MutexGuard<'_, PeerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn add_rx(&self, n: usize) {
        self.rx_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_tx(&self, n: usize) {
        self.tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// A snapshot of a peer for status displays (`wg show`).
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub id: PeerId,
    pub public_key: PublicKey,
    pub preshared_key: Option<PresharedKey>,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<Cidr>,
    pub last_handshake: Option<Duration>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub persistent_keepalive: Option<Duration>,
}
