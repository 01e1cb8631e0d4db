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
#[derive(Default)]
pub struct Keypairs {
    pub current: Option<Arc<Keypair>>,
    pub previous: Option<Arc<Keypair>>,
    pub next: Option<Arc<Keypair>>,
}

pub struct PeerState {
    pub handshake: Handshake,
    pub cookie: CookieGenerator,
    pub keypairs: Keypairs,
    pub timers: Timers,
    pub endpoint: Option<SocketAddr>,
    /// IP packets waiting for a session, oldest first.
    pub staged: VecDeque<Vec<u8>>,
    pub last_sent_initiation: Option<Instant>,
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
    pub(crate) fn new(id: PeerId, local: &PrivateKey, config: &PeerConfig) -> Self {
        let state = PeerState {
            handshake: Handshake::new(local, config.public_key, config.preshared_key.clone()),
            cookie: CookieGenerator::new(&config.public_key),
            keypairs: Keypairs::default(),
            timers: Timers::new(config.persistent_keepalive),
            endpoint: config.endpoint,
            staged: VecDeque::new(),
            last_sent_initiation: None,
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
