//! The device: one private key, its peers, and the three entry points the engine drives.
//!
//! ```text
//!  outgoing IP packet ──encapsulate──▶ allowed-IPs lookup of the destination → peer
//!                                      session usable? seal in place → send to its endpoint
//!                                      no session?     stage the packet, send an initiation
//!
//!  datagram from the network ──receive──▶ parse (type, reserved bytes, exact length)
//!     transport: session by receiver index → open in place → replay window → timers, endpoint
//!                → inner source must map to this same peer → deliver to the TUN
//!     initiation/response: mac1 (always), mac2 + rate limit (under load, else cookie reply)
//!                → Noise → new session → response / flush staged packets
//!     cookie reply: store the cookie for the next handshake message
//!
//!  time passes ──update_timers──▶ retransmit, keepalives, rekey, erase old keys
//! ```
//!
//! Every entry point takes `now` and a caller-owned `Vec<Outgoing>` into which it pushes
//! control-plane datagrams (handshake messages, keepalives, packets released by a completed
//! handshake). The hot path pushes nothing and allocates nothing.
//!
//! Randomness (session indices, cookie secrets and nonces, the seed of each peer's timer
//! jitter) comes from the generator the caller hands to `Device::new`, as time comes from the
//! caller's `now`: `rand_core::OsRng` in a real device, a seeded one in a simulation.
//!
//! Locks, always taken in this order: `peers` (read) → a peer's state → `indices` → `rng`;
//! `cookies` → `rng`. Nothing holding `rng` takes another lock. `identity` is read only to
//! clone the `Arc` inside, and never held while another lock is taken.

use super::constants::*;
use super::cookie::CookieChecker;
use super::handshake::{begin_consume_initiation, HandshakeError, InitialState};
use super::ip;
use super::l2::{self, Layer};
use super::messages::{Message, MessageError};
use super::peer::{Peer, PeerConfig, PeerId, PeerInfo, PeerState};
use super::ratelimiter::RateLimiter;
use super::session::{padded_len, Keypair, OpenError};
use super::time::{Tai64N, Time};
use super::timers::Attention;
use crate::allowed_ips::AllowedIps;
use crate::keys::{PrivateKey, PublicKey};
use rand_core::CryptoRngCore;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
// Integer keys we chose ourselves (random session indices, sequential peer ids): nobody else can
// pick what goes in, so a fast non-keyed hash is safe where SipHash would cost every packet.
use rustc_hash::FxHashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

/// Where a peer is: its address, and which of our own addresses it sent to. Replies leave from
/// that address (the kernel's endpoint src4/src6, wireguard-go's sticky source), so a peer
/// behind a strict firewall or NAT sees them come from where it sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// Our address the peer's latest authenticated datagram was sent to; `None`: let routing
    /// choose (a configured endpoint we have not heard from yet).
    pub local: Option<IpAddr>,
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Self {
        Endpoint { addr, local: None }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

/// A datagram for the engine to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub to: Endpoint,
    pub bytes: Vec<u8>,
}

/// Every reason a packet is dropped; each has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum DropReason {
    /// Outgoing: not an IPv4 or IPv6 packet.
    NotIp,
    /// Outgoing: no peer's allowed IPs contain the destination.
    NoRoute,
    /// Outgoing: the peer has no known endpoint.
    NoEndpoint,
    /// Outgoing: the buffer has no room for the sealed message.
    NoRoom,
    /// Incoming: unknown type, nonzero reserved bytes or wrong length.
    Malformed,
    /// Incoming handshake message with a wrong mac1: never answered.
    BadMac1,
    /// Under load, a handshake message without a valid mac2: answered with a cookie reply.
    CookieRequired,
    /// Under load, over the per-source handshake rate.
    RateLimited,
    /// A handshake message that does not decrypt (not for us, forged).
    HandshakeDecrypt,
    /// An initiation from a public key that is not a peer.
    UnknownPeer,
    /// An initiation whose timestamp is not newer than the last one accepted.
    ReplayedInitiation,
    /// Initiations from one peer faster than INITIATIONS_PER_SECOND.
    InitiationFlood,
    /// A response to no initiation of ours.
    UnexpectedResponse,
    /// A cookie reply that does not decrypt or answers nothing we sent.
    BadCookie,
    /// Receiver index unknown (no such session or handshake).
    UnknownIndex,
    /// Transport data whose tag does not verify.
    BadTag,
    /// Transport data already received or behind the replay window.
    Replay,
    /// Transport data on a session past REJECT_AFTER_TIME / REJECT_AFTER_MESSAGES.
    Expired,
    /// The opened packet is not a well-formed IP packet.
    BadInnerPacket,
    /// The opened packet's source address does not belong to the peer that sent it.
    SourceNotAllowed,
    /// An IP packet on a layer-2 interface, or a layer-2 frame on a layer-3 one: the peer runs
    /// the other mode (`l2`).
    LayerMismatch,
    /// Either way: the device has no private key yet (`Device::without_key`).
    NoPrivateKey,
    // The engine's own drops, counted here so that one table shows every reason
    // (`Device::count_engine_drop`).
    /// Incoming handshake message: the handshake thread's queue is full.
    HandshakeQueueFull,
    /// A sealed datagram larger than the socket or path allows (EMSGSIZE).
    PacketTooBig,
    /// A datagram the UDP socket refused to send for any other reason.
    SendError,
    /// A write to the TUN interface that failed (one packet or one coalesced super-packet).
    TunWriteError,
    /// Layer 2: a frame whose source MAC the peer may not use (`allowed_macs`, or a group
    /// address).
    MacNotAllowed,
    /// Layer 2: a frame from a new source MAC past the peer's `max_macs` or the table's bound.
    MacLimit,
    /// Layer 2: a broadcast, multicast or unknown-unicast frame over the peer's flood rate.
    FloodLimit,
}

impl DropReason {
    pub const ALL: [DropReason; 29] = [
        DropReason::NotIp,
        DropReason::NoRoute,
        DropReason::NoEndpoint,
        DropReason::NoRoom,
        DropReason::Malformed,
        DropReason::BadMac1,
        DropReason::CookieRequired,
        DropReason::RateLimited,
        DropReason::HandshakeDecrypt,
        DropReason::UnknownPeer,
        DropReason::ReplayedInitiation,
        DropReason::InitiationFlood,
        DropReason::UnexpectedResponse,
        DropReason::BadCookie,
        DropReason::UnknownIndex,
        DropReason::BadTag,
        DropReason::Replay,
        DropReason::Expired,
        DropReason::BadInnerPacket,
        DropReason::SourceNotAllowed,
        DropReason::LayerMismatch,
        DropReason::NoPrivateKey,
        DropReason::HandshakeQueueFull,
        DropReason::PacketTooBig,
        DropReason::SendError,
        DropReason::TunWriteError,
        DropReason::MacNotAllowed,
        DropReason::MacLimit,
        DropReason::FloodLimit,
    ];

    /// The snake_case name used in status output.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::NotIp => "not_ip",
            DropReason::NoRoute => "no_route",
            DropReason::NoEndpoint => "no_endpoint",
            DropReason::NoRoom => "no_room",
            DropReason::Malformed => "malformed",
            DropReason::BadMac1 => "bad_mac1",
            DropReason::CookieRequired => "cookie_required",
            DropReason::RateLimited => "rate_limited",
            DropReason::HandshakeDecrypt => "handshake_decrypt",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::ReplayedInitiation => "replayed_initiation",
            DropReason::InitiationFlood => "initiation_flood",
            DropReason::UnexpectedResponse => "unexpected_response",
            DropReason::BadCookie => "bad_cookie",
            DropReason::UnknownIndex => "unknown_index",
            DropReason::BadTag => "bad_tag",
            DropReason::Replay => "replay",
            DropReason::Expired => "expired",
            DropReason::BadInnerPacket => "bad_inner_packet",
            DropReason::SourceNotAllowed => "source_not_allowed",
            DropReason::LayerMismatch => "layer_mismatch",
            DropReason::NoPrivateKey => "no_private_key",
            DropReason::HandshakeQueueFull => "handshake_queue_full",
            DropReason::PacketTooBig => "packet_too_big",
            DropReason::SendError => "send_error",
            DropReason::TunWriteError => "tun_write_error",
            DropReason::MacNotAllowed => "mac_not_allowed",
            DropReason::MacLimit => "mac_limit",
            DropReason::FloodLimit => "flood_limit",
        }
    }
}

impl From<HandshakeError> for DropReason {
    fn from(e: HandshakeError) -> Self {
        match e {
            HandshakeError::Decrypt => DropReason::HandshakeDecrypt,
            HandshakeError::ReplayedInitiation => DropReason::ReplayedInitiation,
            HandshakeError::InitiationFlood => DropReason::InitiationFlood,
            HandshakeError::UnexpectedResponse => DropReason::UnexpectedResponse,
        }
    }
}

impl From<OpenError> for DropReason {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Tag => DropReason::BadTag,
            OpenError::Replay => DropReason::Replay,
            OpenError::Expired => DropReason::Expired,
        }
    }
}

/// What became of an outgoing IP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// Sealed in place: send `buf[..len]` to `to`.
    Ready {
        to: Endpoint,
        len: usize,
    },
    /// Waiting for a handshake (which may have been pushed to the outgoing queue).
    Queued,
    Dropped(DropReason),
}

/// What became of a datagram from the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// An authenticated IP packet for the TUN (on a layer-2 device: an Ethernet frame for the
    /// TAP) at `datagram[range]`.
    Packet {
        peer: PeerId,
        range: Range<usize>,
    },
    /// An authenticated keepalive.
    Keepalive {
        peer: PeerId,
    },
    /// A handshake message was processed (any reply is in the outgoing queue).
    Handshake {
        peer: PeerId,
    },
    /// A cookie reply was taken.
    Cookie {
        peer: PeerId,
    },
    /// An authenticated packet of the other layer (see `l2`): the peer runs the other mode.
    /// Counted as `DropReason::LayerMismatch`.
    WrongLayer {
        peer: PeerId,
        sent: Layer,
    },
    Dropped(DropReason),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("peer {0} is configured twice")]
    DuplicatePeer(PublicKey),
    #[error("peer {0} is this device's own public key")]
    OwnKey(PublicKey),
    #[error("no peer {0}")]
    NoSuchPeer(PublicKey),
    #[error("no peer with id {0}")]
    NoSuchPeerId(PeerId),
}

/// Why an authenticated transport message's plaintext is not delivered.
enum Refused {
    Drop(DropReason),
    /// A packet of the other layer.
    Layer(Layer),
}

/// What the index table says a receiver index stands for.
#[derive(Clone)]
enum Slot {
    /// An initiation of ours waiting for its response.
    Handshake(PeerId),
    /// A session.
    Keypair(PeerId, Arc<Keypair>),
}

#[derive(Default)]
struct Peers {
    by_id: FxHashMap<PeerId, Arc<Peer>>,
    by_key: HashMap<PublicKey, PeerId>,
    allowed: AllowedIps<Route>,
    next_id: PeerId,
}

/// What an allowed IP maps to: the peer's id, and the peer itself, so that the data path finds
/// it with the one lookup (a second one in `by_id` cost a round trip some ten cache lines of
/// code on each end). Compared by id.
#[derive(Clone)]
struct Route {
    id: PeerId,
    peer: Arc<Peer>,
}

impl PartialEq for Route {
    fn eq(&self, other: &Route) -> bool {
        self.id == other.id
    }
}

impl PartialEq<PeerId> for Route {
    fn eq(&self, id: &PeerId) -> bool {
        self.id == *id
    }
}

/// Who the device is: its key pair, and the handshake's start towards us (the same for every
/// initiation we receive). Replaced whole by `set_private_key`.
struct Identity {
    private: PrivateKey,
    public: PublicKey,
    initial: InitialState,
}

impl Identity {
    fn new(private: PrivateKey) -> Identity {
        let public = private.public_key();
        Identity {
            initial: InitialState::new(&public),
            private,
            public,
        }
    }
}

pub struct Device {
    identity: RwLock<Arc<Identity>>,
    /// No private key yet (`without_key`): nothing is sent or accepted.
    keyless: std::sync::atomic::AtomicBool,
    cookies: Mutex<CookieChecker>,
    limiter: Mutex<RateLimiter>,
    /// Under load until then (`handshake_queue_backed_up`).
    under_load_until: Mutex<Option<Instant>>,
    mtu: AtomicUsize,
    /// What transport messages carry: frames (`Layer::L2`) if set, else IP packets.
    layer2: std::sync::atomic::AtomicBool,
    peers: RwLock<Peers>,
    /// How many peers `peers` holds, readable without its lock (`peer_count`).
    peer_count: AtomicUsize,
    indices: RwLock<FxHashMap<u32, Slot>>,
    index_writes: AtomicU64,
    /// The caller's randomness; only handshakes, cookie replies and new peers use it.
    rng: Mutex<Box<dyn CryptoRngCore + Send>>,
    /// Raised when a timer is armed where none was, or an endpoint changes.
    attention: Arc<Attention>,
    drops: [AtomicU64; DropReason::ALL.len()],
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}
fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
fn lock<T>(l: &Mutex<T>) -> MutexGuard<'_, T> {
    l.lock().unwrap_or_else(|p| p.into_inner())
}

impl Device {
    /// `rng`: where every random number of the device comes from (see the top of this file).
    pub fn new(private: PrivateKey, rng: impl CryptoRngCore + Send + 'static) -> Self {
        let identity = Identity::new(private);
        Device {
            cookies: Mutex::new(CookieChecker::new(&identity.public)),
            identity: RwLock::new(Arc::new(identity)),
            keyless: std::sync::atomic::AtomicBool::new(false),
            limiter: Mutex::new(RateLimiter::default()),
            under_load_until: Mutex::new(None),
            mtu: AtomicUsize::new(1420),
            layer2: std::sync::atomic::AtomicBool::new(false),
            peers: RwLock::new(Peers::default()),
            peer_count: AtomicUsize::new(0),
            indices: RwLock::new(FxHashMap::default()),
            index_writes: AtomicU64::new(0),
            rng: Mutex::new(Box::new(rng)),
            attention: Arc::default(),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// A device that has no private key yet (as wireguard-go starts): it sends and accepts
    /// nothing (`DropReason::NoPrivateKey`) until `set_private_key`. Peers can be added
    /// meanwhile. (It holds a random placeholder key, never used on the wire.)
    pub fn without_key(mut rng: impl CryptoRngCore + Send + 'static) -> Self {
        let placeholder = PrivateKey::generate(&mut rng);
        let d = Device::new(placeholder, rng);
        d.keyless.store(true, Ordering::Release);
        d
    }

    /// Whether the device has a private key (see `without_key`).
    pub fn has_private_key(&self) -> bool {
        !self.keyless.load(Ordering::Acquire)
    }

    fn identity(&self) -> Arc<Identity> {
        read(&self.identity).clone()
    }

    pub fn public_key(&self) -> PublicKey {
        self.identity().public
    }

    pub fn private_key(&self) -> PrivateKey {
        self.identity().private.clone()
    }

    /// Changes the device's private key at run time, as the kernel and wireguard-go do: a peer
    /// whose public key is the new key's is removed (a device is never its own peer); every
    /// peer's precomputed static-static secret is computed again and its handshake in flight
    /// forgotten; the sessions made with the old key stop sending (they still open what
    /// arrives on them, until they expire), so the next packet to a peer starts a handshake
    /// under the new key. The same key again changes nothing.
    pub fn set_private_key(&self, private: PrivateKey) {
        let new = Identity::new(private);
        if self.has_private_key() && new.public == self.public_key() {
            return;
        }
        if self.peer_id(&new.public).is_some() {
            let _ = self.remove_peer(&new.public);
        }
        let public = new.public;
        // The identity lock is never held while another is taken (`add_peer` reads it under
        // the peers' lock). A peer added from here on starts from the new key; one added
        // before is in the list below, taken after the swap.
        *write(&self.identity) = Arc::new(new);
        *lock(&self.cookies) = CookieChecker::new(&public);
        let peers: Vec<Arc<Peer>> = read(&self.peers).by_id.values().cloned().collect();
        let identity = self.identity();
        for peer in peers {
            let mut st = peer.lock();
            st.handshake.set_local(&identity.private);
            st.keypairs.stop_sending();
        }
        self.keyless.store(false, Ordering::Release);
        self.attention.raise();
    }

    /// The tunnel MTU: padding never makes a packet longer than this.
    pub fn set_mtu(&self, mtu: usize) {
        self.mtu.store(mtu, Ordering::Relaxed);
    }

    pub fn mtu(&self) -> usize {
        self.mtu.load(Ordering::Relaxed)
    }

    /// Whether transport messages carry IP packets (the default) or Ethernet frames (see
    /// `l2`). Set before the first packet.
    pub fn set_layer(&self, layer: Layer) {
        self.layer2.store(layer == Layer::L2, Ordering::Relaxed);
    }

    pub fn layer(&self) -> Layer {
        if self.layer2.load(Ordering::Relaxed) {
            Layer::L2
        } else {
            Layer::L3
        }
    }

    /// The engine saw its handshake queue backed up at `now`: the device is under load until
    /// UNDER_LOAD_AFTER_TIME later, however the queue fares meanwhile. Under load, handshake
    /// messages need a valid mac2 (else they get a cookie reply) and are rate-limited per
    /// source. It ends on time by itself: nothing has to arrive to switch it off.
    pub fn handshake_queue_backed_up(&self, now: Instant) {
        let until = now + UNDER_LOAD_AFTER_TIME;
        let mut u = lock(&self.under_load_until);
        if u.is_none_or(|u| u < until) {
            *u = Some(until);
        }
    }

    /// Whether handshake messages arriving at `now` need mac2.
    pub fn under_load(&self, now: Instant) -> bool {
        lock(&self.under_load_until).is_some_and(|u| now < u)
    }

    pub fn add_peer(&self, config: PeerConfig) -> Result<PeerId, DeviceError> {
        if config.public_key == self.public_key() {
            return Err(DeviceError::OwnKey(config.public_key));
        }
        let mut peers = write(&self.peers);
        if peers.by_key.contains_key(&config.public_key) {
            return Err(DeviceError::DuplicatePeer(config.public_key));
        }
        let id = peers.next_id;
        peers.next_id += 1;
        let seed = lock(&self.rng).next_u64();
        let identity = self.identity();
        let peer = Arc::new(Peer::new(
            id,
            &identity.private,
            &config,
            seed,
            self.attention.clone(),
        ));
        for cidr in &config.allowed_ips {
            let route = Route {
                id,
                peer: peer.clone(),
            };
            peers.allowed.insert(*cidr, route);
        }
        peers.by_key.insert(config.public_key, id);
        peers.by_id.insert(id, peer);
        self.peer_count.store(peers.by_id.len(), Ordering::Relaxed);
        // (A keepalive may be owed at the next timer pass.)
        self.attention.raise();
        Ok(id)
    }

    /// Removes a peer, its routes and every session and index it had.
    pub fn remove_peer(&self, key: &PublicKey) -> Result<(), DeviceError> {
        let peer = {
            let mut peers = write(&self.peers);
            let id = peers
                .by_key
                .remove(key)
                .ok_or(DeviceError::NoSuchPeer(*key))?;
            peers.allowed.remove_value(&id);
            let peer = peers.by_id.remove(&id);
            self.peer_count.store(peers.by_id.len(), Ordering::Relaxed);
            peer
        };
        if let Some(peer) = peer {
            let mut st = peer.lock();
            self.zero_keys(&mut st);
            st.timers.stop_all();
        }
        Ok(())
    }

    /// Sets a peer's endpoint; with `kick`, a keepalive goes at the next timer pass (which,
    /// without a session, starts a handshake).
    pub fn set_endpoint(
        &self,
        id: PeerId,
        endpoint: Option<SocketAddr>,
        kick: bool,
    ) -> Result<(), DeviceError> {
        let peer = self.peer(id).ok_or(DeviceError::NoSuchPeerId(id))?;
        let mut st = peer.lock();
        st.endpoint = endpoint.map(Endpoint::from);
        st.kick |= kick && endpoint.is_some();
        st.timers.call_attention();
        Ok(())
    }

    pub fn set_preshared_key(
        &self,
        id: PeerId,
        psk: Option<crate::keys::PresharedKey>,
    ) -> Result<(), DeviceError> {
        let peer = self.peer(id).ok_or(DeviceError::NoSuchPeerId(id))?;
        peer.lock().handshake.set_psk(psk);
        Ok(())
    }

    /// Sets the persistent keepalive interval; turning it on sends a keepalive at once, as
    /// WireGuard does.
    pub fn set_persistent_keepalive(
        &self,
        id: PeerId,
        interval: Option<std::time::Duration>,
    ) -> Result<(), DeviceError> {
        let peer = self.peer(id).ok_or(DeviceError::NoSuchPeerId(id))?;
        let mut st = peer.lock();
        let was = st.timers.persistent_interval;
        st.timers.persistent_interval = interval;
        if interval.is_none() {
            st.timers.persistent_keepalive = None;
        } else if was.is_none() {
            st.kick = true;
            st.timers.call_attention();
        }
        Ok(())
    }

    /// Adds `cidr` to a peer's allowed IPs (taking it from whichever peer had it).
    pub fn add_allowed_ip(
        &self,
        id: PeerId,
        cidr: crate::allowed_ips::Cidr,
    ) -> Result<(), DeviceError> {
        let mut peers = write(&self.peers);
        let Some(peer) = peers.by_id.get(&id).cloned() else {
            return Err(DeviceError::NoSuchPeerId(id));
        };
        peers.allowed.insert(cidr, Route { id, peer });
        Ok(())
    }

    /// Replaces a peer's allowed IPs at once (taking each from whichever peer had it).
    pub fn set_allowed_ips(
        &self,
        id: PeerId,
        cidrs: &[crate::allowed_ips::Cidr],
    ) -> Result<(), DeviceError> {
        let mut peers = write(&self.peers);
        let Some(peer) = peers.by_id.get(&id).cloned() else {
            return Err(DeviceError::NoSuchPeerId(id));
        };
        peers.allowed.remove_value(&id);
        for c in cidrs {
            let route = Route {
                id,
                peer: peer.clone(),
            };
            peers.allowed.insert(*c, route);
        }
        Ok(())
    }

    /// Removes every allowed IP of a peer.
    pub fn clear_allowed_ips(&self, id: PeerId) -> Result<(), DeviceError> {
        let mut peers = write(&self.peers);
        if !peers.by_id.contains_key(&id) {
            return Err(DeviceError::NoSuchPeerId(id));
        }
        peers.allowed.remove_value(&id);
        Ok(())
    }

    /// The peer whose allowed IPs contain `ip` (cryptokey routing's send-side lookup).
    pub fn route(&self, ip: std::net::IpAddr) -> Option<PeerId> {
        read(&self.peers).allowed.lookup(ip).map(|r| r.id)
    }

    pub fn peer_id(&self, key: &PublicKey) -> Option<PeerId> {
        read(&self.peers).by_key.get(key).copied()
    }

    fn peer(&self, id: PeerId) -> Option<Arc<Peer>> {
        read(&self.peers).by_id.get(&id).cloned()
    }

    pub fn peer_info(&self, id: PeerId) -> Option<PeerInfo> {
        let (peer, allowed_ips) = {
            let peers = read(&self.peers);
            (
                peers.by_id.get(&id).cloned()?,
                peers.allowed.prefixes_of(&id),
            )
        };
        let st = peer.lock();
        Some(PeerInfo {
            id,
            public_key: peer.public_key,
            preshared_key: Some(st.handshake.psk().clone()).filter(|k| !k.is_zero()),
            endpoint: st.endpoint.map(|e| e.addr),
            allowed_ips,
            last_handshake: st.last_handshake,
            rx_bytes: peer.rx_bytes.load(Ordering::Relaxed),
            tx_bytes: peer.tx_bytes.load(Ordering::Relaxed),
            persistent_keepalive: st.timers.persistent_interval,
        })
    }

    /// How many peers there are, without taking the peers' lock (a client's data path asks
    /// it for every packet: with one peer, nothing is ever relayed).
    pub fn peer_count(&self) -> usize {
        self.peer_count.load(Ordering::Relaxed)
    }

    pub fn peer_ids(&self) -> Vec<PeerId> {
        let mut ids: Vec<_> = read(&self.peers).by_id.keys().copied().collect();
        ids.sort();
        ids
    }

    /// Drop counters by reason.
    pub fn drops(&self) -> Vec<(DropReason, u64)> {
        DropReason::ALL
            .iter()
            .map(|r| (*r, self.drops[*r as usize].load(Ordering::Relaxed)))
            .collect()
    }

    pub fn drop_count(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Ordering::Relaxed)
    }

    fn count(&self, reason: DropReason) {
        self.count_engine_drop(reason, 1);
    }

    /// The engine lost `n` packets for `reason` (a send or write that failed, a full queue).
    pub fn count_engine_drop(&self, reason: DropReason, n: u64) {
        self.drops[reason as usize].fetch_add(n, Ordering::Relaxed);
    }

    fn dropped_sent(&self, reason: DropReason) -> Sent {
        self.count(reason);
        Sent::Dropped(reason)
    }

    fn dropped(&self, reason: DropReason) -> Received {
        self.count(reason);
        Received::Dropped(reason)
    }

    // ----- outgoing -----

    /// An IP packet from the TUN, found at `buf[16..16 + len]` (the first 16 bytes are room for
    /// the transport header; `buf` needs 16 + 16 bytes of room beyond the padded packet).
    /// On `Sent::Ready` the sealed message is `buf[..len]`.
    pub fn encapsulate(
        &self,
        buf: &mut [u8],
        len: usize,
        now: Time,
        out: &mut Vec<Outgoing>,
    ) -> Sent {
        if !self.has_private_key() {
            return self.dropped_sent(DropReason::NoPrivateKey);
        }
        let Some(packet) = buf.get(TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + len) else {
            return self.dropped_sent(DropReason::NoRoom);
        };
        let Some(dst) = ip::destination(packet) else {
            return self.dropped_sent(DropReason::NotIp);
        };
        let peer = {
            let peers = read(&self.peers);
            match peers.allowed.lookup(dst) {
                Some(r) => r.peer.clone(),
                None => return self.dropped_sent(DropReason::NoRoute),
            }
        };
        self.seal_for(&peer, buf, len, now, out)
    }

    /// An Ethernet frame from the TAP for peer `to` (the engine's switch chose it), found at
    /// `buf[17..17 + len]`: `buf[16]` is room for the layer-2 header byte (see `l2`), the
    /// first 16 for the transport header. On `Sent::Ready` the sealed message is `buf[..len]`.
    pub fn encapsulate_frame(
        &self,
        to: PeerId,
        buf: &mut [u8],
        len: usize,
        now: Time,
        out: &mut Vec<Outgoing>,
    ) -> Sent {
        if !self.has_private_key() {
            return self.dropped_sent(DropReason::NoPrivateKey);
        }
        let Some(peer) = self.peer(to) else {
            return self.dropped_sent(DropReason::NoRoute);
        };
        let (byte, plain) = l2::header(len, self.mtu.load(Ordering::Relaxed));
        let Some(at) = buf.get_mut(TRANSPORT_HEADER_LEN) else {
            return self.dropped_sent(DropReason::NoRoom);
        };
        *at = byte;
        self.seal_for(&peer, buf, plain, now, out)
    }

    /// Seals the plaintext at `buf[16..16 + len]` for `peer`, or stages it behind a handshake.
    fn seal_for(
        &self,
        peer: &Arc<Peer>,
        buf: &mut [u8],
        len: usize,
        now: Time,
        out: &mut Vec<Outgoing>,
    ) -> Sent {
        let mtu = self.mtu.load(Ordering::Relaxed);
        if buf.len() < TRANSPORT_OVERHEAD + padded_len(len, mtu) {
            return self.dropped_sent(DropReason::NoRoom);
        }
        let mut st = peer.lock();
        let Some(to) = st.endpoint else {
            return self.dropped_sent(DropReason::NoEndpoint);
        };
        let usable = st
            .keypairs
            .current()
            .cloned()
            .filter(|kp| st.staged.is_empty() && kp.can_send(now.instant));
        if let Some((kp, counter)) = usable.and_then(|kp| kp.next_counter().map(|c| (kp, c))) {
            Self::after_send(&mut st, len > 0, now);
            self.keep_key_fresh_on_send(peer, &mut st, &kp, now, out);
            drop(st);
            return match kp.seal_in_place(counter, buf, len, mtu) {
                Some(n) => {
                    peer.add_tx(n);
                    Sent::Ready { to, len: n }
                }
                None => self.dropped_sent(DropReason::NoRoom),
            };
        }
        // No usable session (or older packets are waiting): queue behind them and make sure a
        // handshake is on its way.
        let Some(packet) = buf.get(TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + len) else {
            return self.dropped_sent(DropReason::NoRoom);
        };
        self.stage(&mut st, packet.to_vec());
        self.send_staged(peer, &mut st, now, out);
        Sent::Queued
    }

    fn stage(&self, st: &mut PeerState, packet: Vec<u8>) {
        if st.staged.len() >= MAX_STAGED_PACKETS {
            st.staged.pop_front();
        }
        st.staged.push_back(packet);
    }

    /// Timer hooks for a transport message we just sealed.
    fn after_send(st: &mut PeerState, is_data: bool, now: Time) {
        if is_data {
            st.timers.data_sent(now.instant);
        }
        st.timers.any_authenticated_packet_sent();
        st.timers.any_authenticated_packet_traversal(now.instant);
    }

    /// The initiator rekeys after REKEY_AFTER_TIME; either side after REKEY_AFTER_MESSAGES.
    fn keep_key_fresh_on_send(
        &self,
        peer: &Peer,
        st: &mut PeerState,
        kp: &Keypair,
        now: Time,
        out: &mut Vec<Outgoing>,
    ) {
        if kp.sent() > REKEY_AFTER_MESSAGES
            || (kp.initiator && now.since(kp.created) >= REKEY_AFTER_TIME)
        {
            self.initiate(peer, st, now, false, out);
        }
    }

    /// Seals every staged packet with the current session into `out`; without a usable
    /// session, asks for a handshake instead and keeps them.
    fn send_staged(&self, peer: &Peer, st: &mut PeerState, now: Time, out: &mut Vec<Outgoing>) {
        let Some(to) = st.endpoint else { return };
        let kp = match st.keypairs.current().cloned() {
            Some(kp) if kp.can_send(now.instant) => kp,
            _ => {
                self.initiate(peer, st, now, false, out);
                return;
            }
        };
        let mtu = self.mtu.load(Ordering::Relaxed);
        let layer2 = self.layer() == Layer::L2;
        while let Some(mut packet) = st.staged.pop_front() {
            if layer2 && !packet.is_empty() {
                // The padding count for the MTU of now, which may differ from when it waited.
                packet[0] = l2::header(packet.len() - l2::L2_HEADER_LEN, mtu).0;
            }
            let Some(counter) = kp.next_counter() else {
                st.staged.push_front(packet);
                self.initiate(peer, st, now, false, out);
                return;
            };
            let mut bytes = vec![0u8; TRANSPORT_OVERHEAD + padded_len(packet.len(), mtu)];
            bytes[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + packet.len()]
                .copy_from_slice(&packet);
            if let Some(n) = kp.seal_in_place(counter, &mut bytes, packet.len(), mtu) {
                bytes.truncate(n);
                peer.add_tx(n);
                out.push(Outgoing { to, bytes });
                Self::after_send(st, !packet.is_empty(), now);
            }
        }
        self.keep_key_fresh_on_send(peer, st, &kp, now, out);
    }

    /// A keepalive: an empty packet through the normal send path (so without a session it
    /// starts a handshake, as in the kernel).
    fn send_keepalive(&self, peer: &Peer, st: &mut PeerState, now: Time, out: &mut Vec<Outgoing>) {
        if st.staged.is_empty() {
            st.staged.push_back(Vec::new());
        }
        self.send_staged(peer, st, now, out);
    }

    /// Sends a handshake initiation, at most one per REKEY_TIMEOUT.
    fn initiate(
        &self,
        peer: &Peer,
        st: &mut PeerState,
        now: Time,
        retry: bool,
        out: &mut Vec<Outgoing>,
    ) {
        if !retry {
            st.timers.handshake_started_fresh();
        }
        if st
            .last_sent_handshake
            .is_some_and(|t| now.since(t) < REKEY_TIMEOUT)
        {
            return;
        }
        let Some(to) = st.endpoint else { return };
        let index = self.register(Slot::Handshake(peer.id));
        if let Some(old) = st.handshake.pending_index() {
            self.unregister(old);
        }
        let timestamp = Tai64N::from_since_epoch(now.since_epoch);
        let Some(mut msg) = st.handshake.create_initiation(
            &self.identity().private,
            index,
            timestamp,
            self.ephemeral(),
        ) else {
            self.unregister(index);
            return;
        };
        st.cookie.add_macs(&mut msg, now.instant);
        st.timers.any_authenticated_packet_traversal(now.instant);
        st.timers.any_authenticated_packet_sent();
        st.timers.handshake_initiated(now.instant);
        st.last_sent_handshake = Some(now.instant);
        peer.add_tx(msg.len());
        out.push(Outgoing {
            to,
            bytes: msg.to_vec(),
        });
    }

    /// A fresh ephemeral key for a handshake message.
    fn ephemeral(&self) -> PrivateKey {
        PrivateKey::generate(&mut **lock(&self.rng))
    }

    // ----- the index table -----

    /// A fresh random index for `slot`.
    fn register(&self, slot: Slot) -> u32 {
        let mut indices = self.indices_mut();
        loop {
            if let Entry::Vacant(e) = indices.entry(lock(&self.rng).next_u32()) {
                let index = *e.key();
                e.insert(slot);
                return index;
            }
        }
    }

    fn replace(&self, index: u32, slot: Slot) {
        self.indices_mut().insert(index, slot);
    }

    fn unregister(&self, index: u32) {
        self.indices_mut().remove(&index);
    }

    /// The index table for writing: every receive thread waits while one holds it, so each
    /// taking is counted (`index_table_writes`).
    fn indices_mut(&self) -> RwLockWriteGuard<'_, FxHashMap<u32, Slot>> {
        self.index_writes.fetch_add(1, Ordering::Relaxed);
        write(&self.indices)
    }

    /// How often the index table was locked for writing (tests: what a message costs).
    pub fn index_table_writes(&self) -> u64 {
        self.index_writes.load(Ordering::Relaxed)
    }

    /// Erases all key material of a peer: sessions, the handshake in flight, staged packets.
    fn zero_keys(&self, st: &mut PeerState) {
        st.keypairs.clear(&mut |i| self.unregister(i));
        if let Some(i) = st.handshake.pending_index() {
            self.unregister(i);
        }
        st.handshake.clear();
        st.staged.clear();
    }

    // ----- incoming -----

    /// A datagram from `src`. May decrypt in place; on `Received::Packet` the inner packet is
    /// `datagram[range]`.
    pub fn receive(
        &self,
        src: impl Into<Endpoint>,
        datagram: &mut [u8],
        now: Time,
        out: &mut Vec<Outgoing>,
    ) -> Received {
        self.receive_inner(src.into(), datagram, now, out, false)
    }

    /// The cheap first look at a handshake message, for an engine that hands the costly part
    /// (Diffie-Hellman) to another thread: mac1, and under load mac2 (answering with a cookie
    /// reply) and the per-source rate limit. `None`: the message deserves the costly part, to be
    /// done with `receive_checked`. `Some`: it was dealt with here (dropped, or a cookie reply
    /// pushed to `out`). Messages other than initiations and responses pass through (`None`).
    pub fn triage_handshake(
        &self,
        src: impl Into<Endpoint>,
        datagram: &[u8],
        now: Time,
        out: &mut Vec<Outgoing>,
    ) -> Option<Received> {
        let src = src.into();
        match Message::parse(datagram) {
            Ok(Message::Initiation(m)) => {
                self.check_handshake_macs(src, m.bytes(), m.sender(), now, out)
            }
            Ok(Message::Response(m)) => {
                self.check_handshake_macs(src, m.bytes(), m.sender(), now, out)
            }
            _ => None,
        }
    }

    /// `receive` for a handshake message that already passed `triage_handshake` (its macs and
    /// the rate limit are not checked, nor counted, twice).
    pub fn receive_checked(
        &self,
        src: impl Into<Endpoint>,
        datagram: &mut [u8],
        now: Time,
        out: &mut Vec<Outgoing>,
    ) -> Received {
        self.receive_inner(src.into(), datagram, now, out, true)
    }

    fn receive_inner(
        &self,
        src: Endpoint,
        datagram: &mut [u8],
        now: Time,
        out: &mut Vec<Outgoing>,
        macs_checked: bool,
    ) -> Received {
        if !self.has_private_key() {
            return self.dropped(DropReason::NoPrivateKey);
        }
        let msg = match Message::parse(datagram) {
            Ok(m) => m,
            Err(
                MessageError::Empty
                | MessageError::UnknownType(_)
                | MessageError::Reserved
                | MessageError::Length { .. },
            ) => return self.dropped(DropReason::Malformed),
        };
        match msg {
            Message::Transport(t) => {
                let (receiver, counter) = (t.receiver(), t.counter());
                self.receive_transport(src, receiver, counter, datagram, now, out)
            }
            handshake => self.receive_handshake(src, handshake, now, out, macs_checked),
        }
    }

    /// The handshake messages' part of `receive_inner`, out of line: their locals (keys,
    /// hashes, a whole initiation's state) would otherwise make the stack frame every
    /// transport packet runs in 2.6 KB, and after an idle spell each page of stack a round
    /// trip touches is a TLB miss.
    #[inline(never)]
    fn receive_handshake(
        &self,
        src: Endpoint,
        msg: Message<'_>,
        now: Time,
        out: &mut Vec<Outgoing>,
        macs_checked: bool,
    ) -> Received {
        match msg {
            // (Handled by `receive_inner`.)
            Message::Transport(_) => self.dropped(DropReason::Malformed),
            Message::Initiation(init) => {
                if !macs_checked {
                    if let Some(r) =
                        self.check_handshake_macs(src, init.bytes(), init.sender(), now, out)
                    {
                        return r;
                    }
                }
                let identity = self.identity();
                let start =
                    match begin_consume_initiation(&identity.private, &identity.initial, &init) {
                        Ok(s) => s,
                        Err(e) => return self.dropped(e.into()),
                    };
                let peer = {
                    let peers = read(&self.peers);
                    match peers
                        .by_key
                        .get(&start.remote_static)
                        .and_then(|id| peers.by_id.get(id))
                    {
                        Some(p) => p.clone(),
                        None => return self.dropped(DropReason::UnknownPeer),
                    }
                };
                self.consume_initiation(&peer, start, src, now, out)
            }
            Message::Response(resp) => {
                if !macs_checked {
                    if let Some(r) =
                        self.check_handshake_macs(src, resp.bytes(), resp.sender(), now, out)
                    {
                        return r;
                    }
                }
                let peer_id = match read(&self.indices).get(&resp.receiver()) {
                    Some(Slot::Handshake(id)) => *id,
                    _ => return self.dropped(DropReason::UnknownIndex),
                };
                let Some(peer) = self.peer(peer_id) else {
                    return self.dropped(DropReason::UnknownIndex);
                };
                let mut st = peer.lock();
                let keys = match st
                    .handshake
                    .consume_response(&self.identity().private, &resp)
                {
                    Ok(k) => k,
                    Err(e) => return self.dropped(e.into()),
                };
                peer.add_rx(resp.bytes().len());
                let kp = Arc::new(Keypair::new(&keys, now.instant));
                self.replace(kp.local_index, Slot::Keypair(peer.id, kp.clone()));
                st.keypairs
                    .initiator_complete(kp, &mut |i| self.unregister(i));
                if st.endpoint != Some(src) {
                    st.timers.call_attention();
                }
                st.endpoint = Some(src);
                st.timers.any_authenticated_packet_received();
                st.timers.any_authenticated_packet_traversal(now.instant);
                st.timers.handshake_complete();
                st.timers.session_derived(now.instant);
                st.last_handshake = Some(now.since_epoch);
                st.sent_lastminute_handshake = false;
                // Send what waited for this session; with nothing waiting, a keepalive confirms
                // the session to the responder at once.
                self.send_keepalive(&peer, &mut st, now, out);
                Received::Handshake { peer: peer.id }
            }
            Message::CookieReply(reply) => {
                let peer_id = match read(&self.indices).get(&reply.receiver()) {
                    Some(Slot::Handshake(id)) | Some(Slot::Keypair(id, _)) => *id,
                    None => return self.dropped(DropReason::UnknownIndex),
                };
                let Some(peer) = self.peer(peer_id) else {
                    return self.dropped(DropReason::UnknownIndex);
                };
                let mut st = peer.lock();
                match st.cookie.consume_reply(&reply, now.instant) {
                    Ok(()) => Received::Cookie { peer: peer.id },
                    Err(_) => self.dropped(DropReason::BadCookie),
                }
            }
        }
    }

    /// mac1 always; under load also mac2 (else a cookie reply) and the per-source rate limit.
    /// `Some` is the verdict when the message goes no further.
    fn check_handshake_macs(
        &self,
        src: Endpoint,
        msg: &[u8],
        sender: u32,
        now: Time,
        out: &mut Vec<Outgoing>,
    ) -> Option<Received> {
        let mut cookies = lock(&self.cookies);
        if !cookies.check_mac1(msg) {
            return Some(self.dropped(DropReason::BadMac1));
        }
        if !self.under_load(now.instant) {
            return None;
        }
        let mut rng = lock(&self.rng);
        if !cookies.check_mac2(msg, &src.addr, now.instant, &mut **rng) {
            if let Some(reply) =
                cookies.create_reply(msg, sender, &src.addr, now.instant, &mut **rng)
            {
                out.push(Outgoing {
                    to: src,
                    bytes: reply.to_vec(),
                });
            }
            return Some(self.dropped(DropReason::CookieRequired));
        }
        drop(rng);
        drop(cookies);
        if !lock(&self.limiter).allow(src.addr.ip(), now.instant) {
            return Some(self.dropped(DropReason::RateLimited));
        }
        None
    }

    fn consume_initiation(
        &self,
        peer: &Arc<Peer>,
        start: super::handshake::InitiationStart,
        src: Endpoint,
        now: Time,
        out: &mut Vec<Outgoing>,
    ) -> Received {
        let mut st = peer.lock();
        // Replays and floods are refused before a receiver index is taken (a write lock every
        // receive thread waits on): only an initiation that will be answered costs one.
        let accepted = match st.handshake.accept_initiation(start, now.instant) {
            Ok(a) => a,
            Err(e) => return self.dropped(e.into()),
        };
        let index = self.register(Slot::Handshake(peer.id));
        let (mut resp, keys) =
            match st
                .handshake
                .respond(accepted, index, now.instant, self.ephemeral())
            {
                Ok(r) => r,
                Err(e) => {
                    self.unregister(index);
                    return self.dropped(e.into());
                }
            };
        peer.add_rx(INITIATION_LEN);
        // Answering an initiation abandons any initiation of our own in flight (the kernel keeps
        // one handshake state per peer).
        if let Some(old) = st.handshake.pending_index() {
            self.unregister(old);
        }
        st.handshake.clear();
        st.cookie.add_macs(&mut resp, now.instant);
        let kp = Arc::new(Keypair::new(&keys, now.instant));
        self.replace(index, Slot::Keypair(peer.id, kp.clone()));
        st.keypairs
            .responder_derived(kp, &mut |i| self.unregister(i));
        if st.endpoint != Some(src) {
            st.timers.call_attention();
        }
        st.endpoint = Some(src);
        st.timers.any_authenticated_packet_received();
        st.timers.any_authenticated_packet_traversal(now.instant);
        st.timers.session_derived(now.instant);
        st.timers.any_authenticated_packet_sent();
        st.sent_lastminute_handshake = false;
        st.last_sent_handshake = Some(now.instant);
        peer.add_tx(resp.len());
        out.push(Outgoing {
            to: src,
            bytes: resp.to_vec(),
        });
        Received::Handshake { peer: peer.id }
    }

    fn receive_transport(
        &self,
        src: Endpoint,
        receiver: u32,
        counter: u64,
        datagram: &mut [u8],
        now: Time,
        out: &mut Vec<Outgoing>,
    ) -> Received {
        let (peer_id, kp) = match read(&self.indices).get(&receiver) {
            Some(Slot::Keypair(id, kp)) => (*id, kp.clone()),
            _ => return self.dropped(DropReason::UnknownIndex),
        };
        let sealed_len = datagram.len() - TRANSPORT_HEADER_LEN;
        let plain =
            match kp.open_in_place(counter, &mut datagram[TRANSPORT_HEADER_LEN..], now.instant) {
                Ok(n) => n,
                Err(e) => return self.dropped(e.into()),
            };
        debug_assert_eq!(plain + AEAD_TAG_LEN, sealed_len);
        let inner = &datagram[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + plain];
        let layer = self.layer();
        // Cryptokey routing, receive side: the inner source must route back to this very peer.
        // (Layer 2: the engine's switch checks the source MAC.)
        let (verdict, peer) = {
            let peers = read(&self.peers);
            // The peer as the route to the inner source names it (the same `Arc` as in
            // `by_id`: both change under this lock), else looked up by id.
            let mut routed = None;
            let verdict = match (plain, layer, l2::layer_of(inner)) {
                (0, _, _) => Ok(None),
                (_, _, Some(sent)) if sent != layer => Err(Refused::Layer(sent)),
                (_, Layer::L2, _) => l2::frame(inner)
                    .ok_or(Refused::Drop(DropReason::BadInnerPacket))
                    .map(Some),
                (_, Layer::L3, _) => match ip::parse(inner) {
                    None => Err(Refused::Drop(DropReason::BadInnerPacket)),
                    Some(info) => match peers.allowed.lookup(info.src) {
                        Some(route) if route.id == peer_id => {
                            routed = Some(route.peer.clone());
                            Ok(Some(0..info.len))
                        }
                        _ => Err(Refused::Drop(DropReason::SourceNotAllowed)),
                    },
                },
            };
            let peer = routed.or_else(|| peers.by_id.get(&peer_id).cloned());
            (verdict, peer)
        };
        let Some(peer) = peer else {
            return self.dropped(DropReason::UnknownIndex);
        };
        peer.add_rx(datagram.len());
        let mut st = peer.lock();
        // The first packet on the responder's `next` session confirms it.
        if st.keypairs.received_on(&kp, &mut |i| self.unregister(i)) {
            st.timers.handshake_complete();
            st.last_handshake = Some(now.since_epoch);
            self.send_staged(&peer, &mut st, now, out);
        }
        if st.endpoint != Some(src) {
            st.timers.call_attention();
        }
        st.endpoint = Some(src);
        st.timers.any_authenticated_packet_received();
        st.timers.any_authenticated_packet_traversal(now.instant);
        if matches!(verdict, Ok(Some(_))) {
            st.timers.data_received(now.instant);
        }
        // The initiator makes sure a new session exists before this one becomes unusable for
        // receiving, even if it never sends (kernel keep_key_fresh on receive).
        let is_current = st.keypairs.current().is_some_and(|c| Arc::ptr_eq(c, &kp));
        if is_current
            && kp.initiator
            && !st.sent_lastminute_handshake
            && now.since(kp.created) >= REKEY_AFTER_TIME_RECV
        {
            st.sent_lastminute_handshake = true;
            self.initiate(&peer, &mut st, now, false, out);
        }
        drop(st);
        match verdict {
            Ok(None) => Received::Keepalive { peer: peer_id },
            Ok(Some(r)) => Received::Packet {
                peer: peer_id,
                range: TRANSPORT_HEADER_LEN + r.start..TRANSPORT_HEADER_LEN + r.end,
            },
            Err(Refused::Layer(sent)) => {
                self.count(DropReason::LayerMismatch);
                Received::WrongLayer {
                    peer: peer_id,
                    sent,
                }
            }
            Err(Refused::Drop(reason)) => self.dropped(reason),
        }
    }

    // ----- time -----

    /// Whether something changed that a caller sleeping until `next_wake` should look at now
    /// (a deadline armed sooner than that, an endpoint that moved, a keepalive owed) since the
    /// last call. Rare and cheap: a data path may ask after every batch.
    pub fn take_attention(&self) -> bool {
        self.attention.take()
    }

    /// The earliest deadline, announced as the caller's next wake-up: from here on, a deadline
    /// armed sooner raises `take_attention`. (A deadline armed while this looks is caught:
    /// every one raises until the plan is in place, and then it looks again.)
    ///
    /// While anything is scheduled the wake-up is at most KEEPALIVE_TIMEOUT after `now`: the
    /// timers a flow of requests and answers re-arms in turn (the passive keepalive 10 s after
    /// data arrives, the new handshake 15 s after data leaves) are then never sooner than the
    /// plan, so such a flow raises nothing; without the cap each answer would arm a keepalive
    /// sooner than the new-handshake deadline announced before it, and wake the caller once
    /// per packet.
    pub fn next_wake(&self, now: std::time::Instant) -> Option<std::time::Instant> {
        loop {
            self.attention.plan(None);
            self.attention.take();
            let due = self.next_deadline().map(|d| d.min(now + KEEPALIVE_TIMEOUT));
            self.attention.plan(due);
            if !self.attention.take() {
                return due;
            }
        }
    }

    /// Runs every peer's due timers. Call it at least every few hundred milliseconds (or at
    /// `next_deadline`).
    pub fn update_timers(&self, now: Time, out: &mut Vec<Outgoing>) {
        let peers: Vec<Arc<Peer>> = read(&self.peers).by_id.values().cloned().collect();
        for peer in peers {
            let mut st = peer.lock();
            let act = st.timers.expire(now.instant);
            if act.zero_keys {
                self.zero_keys(&mut st);
            }
            if act.give_up {
                st.staged.clear();
            }
            if act.initiate {
                self.initiate(&peer, &mut st, now, act.retry, out);
            }
            let kick = std::mem::take(&mut st.kick);
            if act.keepalive || kick {
                self.send_keepalive(&peer, &mut st, now, out);
            }
        }
        lock(&self.limiter).collect_garbage(now.instant);
    }

    /// The earliest timer deadline of any peer.
    pub fn next_deadline(&self) -> Option<std::time::Instant> {
        let peers: Vec<Arc<Peer>> = read(&self.peers).by_id.values().cloned().collect();
        peers
            .iter()
            .filter_map(|p| p.lock().timers.next_deadline())
            .min()
    }

    /// Test and status helper: the number of live receiver indices.
    pub fn index_count(&self) -> usize {
        read(&self.indices).len()
    }
}
