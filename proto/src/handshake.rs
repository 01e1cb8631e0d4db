//! The Noise_IKpsk2 handshake of WireGuard (paper, section 5.4.2 to 5.4.5), step by step in the
//! paper's notation: C is the chaining key, H the hash, E/S ephemeral/static keys.
//!
//! These functions compute on copies and commit nothing unless the whole message checks out, so
//! a bad message leaves the handshake state exactly as it was. MACs (mac1/mac2) are not handled
//! here: the cookie module adds and checks them around these functions.

use super::constants::*;
use super::messages::{offsets::*, Initiation, Response};
use super::noise::{aead_open, aead_seal, hash, kdf, Secret32};
use super::time::Tai64N;
use crate::keys::{PresharedKey, PrivateKey, PublicKey};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Why a handshake message was refused (each one is a drop counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    /// Decryption failed or a DH result was all zeros: not from a peer we know, or forged.
    Decrypt,
    /// The initiation's timestamp is not newer than the last one accepted from this peer.
    ReplayedInitiation,
    /// More than INITIATIONS_PER_SECOND initiations from this peer.
    InitiationFlood,
    /// A response that matches no initiation we sent.
    UnexpectedResponse,
}

/// C and H after hashing in the construction, the identifier and the responder's static key:
/// the same for every handshake towards one responder, so each side computes it once (the
/// kernel's precomputed handshake_init): a device for itself as responder, a peer's handshake
/// for that peer.
pub struct InitialState {
    chaining_key: Secret32,
    hash: Secret32,
}

impl InitialState {
    pub fn new(responder: &PublicKey) -> Self {
        let ck = hash(&[CONSTRUCTION]);
        let h = hash(&[&ck, IDENTIFIER]);
        let h = hash(&[&h, responder.as_bytes()]);
        InitialState {
            chaining_key: Zeroizing::new(ck),
            hash: Zeroizing::new(h),
        }
    }
}

fn mix_hash(h: &Secret32, data: &[u8]) -> Secret32 {
    Zeroizing::new(hash(&[&h[..], data]))
}

/// The two transport keys and indices a completed handshake yields.
pub struct SessionKeys {
    pub send: Secret32,
    pub recv: Secret32,
    pub local_index: u32,
    pub remote_index: u32,
    pub initiator: bool,
}

/// What the initiator keeps between sending an initiation and receiving the response.
struct Pending {
    local_index: u32,
    hash: Secret32,
    chaining_key: Secret32,
    ephemeral: PrivateKey,
}

/// Per-peer handshake state: the peer's static key, the precomputed static-static DH, the
/// pre-shared key, the initiation we are waiting on, and the anti-replay state for initiations.
pub struct Handshake {
    remote_static: PublicKey,
    initial: InitialState,
    static_static: Option<Secret32>,
    psk: PresharedKey,
    pending: Option<Pending>,
    latest_timestamp: Option<Tai64N>,
    last_initiation_consumed: Option<Instant>,
}

/// An initiation whose timestamp decrypted and passed the replay and flood checks: all the
/// response needs.
pub struct AcceptedInitiation {
    hash: Secret32,
    chaining_key: Secret32,
    remote_ephemeral: PublicKey,
    sender: u32,
    timestamp: Tai64N,
}

/// The result of the first half of consuming an initiation: enough to learn who sent it.
pub struct InitiationStart {
    pub remote_static: PublicKey,
    hash: Secret32,
    chaining_key: Secret32,
    remote_ephemeral: PublicKey,
    sender: u32,
    encrypted_timestamp: [u8; 28],
}

impl Handshake {
    pub fn new(local: &PrivateKey, remote_static: PublicKey, psk: Option<PresharedKey>) -> Self {
        Handshake {
            static_static: local.dh(&remote_static),
            initial: InitialState::new(&remote_static),
            remote_static,
            psk: psk.unwrap_or_else(PresharedKey::zero),
            pending: None,
            latest_timestamp: None,
            last_initiation_consumed: None,
        }
    }

    /// Our private key changed: the static-static secret is computed again and a handshake
    /// we started with the old key is forgotten.
    pub fn set_local(&mut self, local: &PrivateKey) {
        self.static_static = local.dh(&self.remote_static);
        self.pending = None;
    }

    pub fn remote_static(&self) -> &PublicKey {
        &self.remote_static
    }

    pub fn set_psk(&mut self, psk: Option<PresharedKey>) {
        self.psk = psk.unwrap_or_else(PresharedKey::zero);
    }

    pub fn psk(&self) -> &PresharedKey {
        &self.psk
    }

    /// The index of the initiation we are waiting on, if any.
    pub fn pending_index(&self) -> Option<u32> {
        self.pending.as_ref().map(|p| p.local_index)
    }

    /// Forgets the initiation in flight (its ephemeral key and hashes are zeroed on drop).
    pub fn clear(&mut self) {
        self.pending = None;
    }

    /// Initiator, 5.4.2: builds the initiation (mac fields left zero) and remembers the state.
    /// `ephemeral`: a fresh key from the caller's randomness.
    pub fn create_initiation(
        &mut self,
        local: &PrivateKey,
        local_index: u32,
        timestamp: Tai64N,
        ephemeral: PrivateKey,
    ) -> Option<[u8; INITIATION_LEN]> {
        let static_static = self.static_static.as_ref()?;
        let mut msg = [0u8; INITIATION_LEN];
        msg[0] = MESSAGE_INITIATION;
        msg[INIT_SENDER..INIT_SENDER + 4].copy_from_slice(&local_index.to_le_bytes());

        let (ck, h) = (&self.initial.chaining_key, &self.initial.hash);
        let e_pub = ephemeral.public_key();
        // C := KDF1(C, E_pub_i); msg.ephemeral := E_pub_i; H := HASH(H || msg.ephemeral)
        let [ck] = kdf::<1>(ck, e_pub.as_bytes());
        msg[INIT_EPHEMERAL..INIT_EPHEMERAL + 32].copy_from_slice(e_pub.as_bytes());
        let h = mix_hash(h, e_pub.as_bytes());
        // (C, k) := KDF2(C, DH(E_priv_i, S_pub_r)); msg.static := AEAD(k, 0, S_pub_i, H)
        let es = ephemeral.dh(&self.remote_static)?;
        let [ck, k] = kdf::<2>(&ck, &*es);
        let field = &mut msg[INIT_STATIC..INIT_STATIC + 48];
        field[..32].copy_from_slice(local.public_key().as_bytes());
        aead_seal(&k, 0, field, &*h);
        let h = mix_hash(&h, field);
        // (C, k) := KDF2(C, DH(S_priv_i, S_pub_r)); msg.timestamp := AEAD(k, 0, TAI64N(), H)
        let [ck, k] = kdf::<2>(&ck, &**static_static);
        let field = &mut msg[INIT_TIMESTAMP..INIT_TIMESTAMP + 28];
        field[..12].copy_from_slice(&timestamp.0);
        aead_seal(&k, 0, field, &*h);
        let h = mix_hash(&h, field);

        self.pending = Some(Pending {
            local_index,
            hash: h,
            chaining_key: ck,
            ephemeral,
        });
        Some(msg)
    }

    /// Responder, 5.4.2 second half: with the peer found, decrypts the timestamp and refuses
    /// replays and floods. Commits nothing: only `respond` does, so a refused initiation costs
    /// no receiver index and changes no state.
    pub fn accept_initiation(
        &self,
        start: InitiationStart,
        now: Instant,
    ) -> Result<AcceptedInitiation, HandshakeError> {
        let static_static = self.static_static.as_ref().ok_or(HandshakeError::Decrypt)?;
        // (C, k) := KDF2(C, DH(S_priv_r, S_pub_i)); timestamp := AEAD-open(k, 0, msg.timestamp, H)
        let [ck, k] = kdf::<2>(&start.chaining_key, &**static_static);
        let mut ts = [0u8; 12];
        if !aead_open(&k, 0, &start.encrypted_timestamp, &*start.hash, &mut ts) {
            return Err(HandshakeError::Decrypt);
        }
        let h = mix_hash(&start.hash, &start.encrypted_timestamp);
        let timestamp = Tai64N(ts);
        if self
            .latest_timestamp
            .is_some_and(|latest| timestamp <= latest)
        {
            return Err(HandshakeError::ReplayedInitiation);
        }
        let min_gap = Duration::from_secs(1) / INITIATIONS_PER_SECOND;
        if self
            .last_initiation_consumed
            .is_some_and(|last| now.saturating_duration_since(last) < min_gap)
        {
            return Err(HandshakeError::InitiationFlood);
        }
        Ok(AcceptedInitiation {
            hash: h,
            chaining_key: ck,
            remote_ephemeral: start.remote_ephemeral,
            sender: start.sender,
            timestamp,
        })
    }

    /// Responder, 5.4.3 and 5.4.5: builds the response to an accepted initiation and derives
    /// the session; the peer's anti-replay state moves on only now.
    pub fn respond(
        &mut self,
        accepted: AcceptedInitiation,
        local_index: u32,
        now: Instant,
        ephemeral: PrivateKey,
    ) -> Result<([u8; RESPONSE_LEN], SessionKeys), HandshakeError> {
        let AcceptedInitiation {
            hash: h,
            chaining_key: ck,
            remote_ephemeral,
            sender,
            timestamp,
        } = accepted;
        let mut msg = [0u8; RESPONSE_LEN];
        msg[0] = MESSAGE_RESPONSE;
        msg[RESP_SENDER..RESP_SENDER + 4].copy_from_slice(&local_index.to_le_bytes());
        msg[RESP_RECEIVER..RESP_RECEIVER + 4].copy_from_slice(&sender.to_le_bytes());
        let e_pub = ephemeral.public_key();
        // C := KDF1(C, E_pub_r); msg.ephemeral := E_pub_r; H := HASH(H || msg.ephemeral)
        let [ck] = kdf::<1>(&ck, e_pub.as_bytes());
        msg[RESP_EPHEMERAL..RESP_EPHEMERAL + 32].copy_from_slice(e_pub.as_bytes());
        let h = mix_hash(&h, e_pub.as_bytes());
        // C := KDF1(C, DH(E_priv_r, E_pub_i)); C := KDF1(C, DH(E_priv_r, S_pub_i))
        let ee = ephemeral
            .dh(&remote_ephemeral)
            .ok_or(HandshakeError::Decrypt)?;
        let [ck] = kdf::<1>(&ck, &*ee);
        let se = ephemeral
            .dh(&self.remote_static)
            .ok_or(HandshakeError::Decrypt)?;
        let [ck] = kdf::<1>(&ck, &*se);
        // (C, τ, k) := KDF3(C, Q); H := HASH(H || τ); msg.empty := AEAD(k, 0, ε, H)
        let [ck, tau, k] = kdf::<3>(&ck, self.psk.as_bytes());
        let h = mix_hash(&h, &*tau);
        let field = &mut msg[RESP_EMPTY..RESP_EMPTY + 16];
        aead_seal(&k, 0, field, &*h);
        // (The final H := HASH(H || msg.empty) feeds nothing WireGuard uses, so it is skipped.)
        // (T_recv_r, T_send_r) := KDF2(C, ε)
        let [recv, send] = kdf::<2>(&ck, &[]);

        self.latest_timestamp = Some(timestamp);
        self.last_initiation_consumed = Some(now);
        Ok((
            msg,
            SessionKeys {
                send,
                recv,
                local_index,
                remote_index: sender,
                initiator: false,
            },
        ))
    }

    /// `accept_initiation` then `respond`.
    #[cfg(test)]
    pub fn consume_initiation_and_respond(
        &mut self,
        start: InitiationStart,
        local_index: u32,
        now: Instant,
    ) -> Result<([u8; RESPONSE_LEN], SessionKeys), HandshakeError> {
        let accepted = self.accept_initiation(start, now)?;
        self.respond(
            accepted,
            local_index,
            now,
            PrivateKey::generate(&mut rand::rngs::OsRng),
        )
    }

    /// Initiator, 5.4.3/5.4.5: checks the response against the pending initiation and derives
    /// the session. The pending state is consumed only on success.
    pub fn consume_response(
        &mut self,
        local: &PrivateKey,
        msg: &Response<'_>,
    ) -> Result<SessionKeys, HandshakeError> {
        let pending = match &self.pending {
            Some(p) if p.local_index == msg.receiver() => p,
            _ => return Err(HandshakeError::UnexpectedResponse),
        };
        let e_r = PublicKey(msg.ephemeral());
        let [ck] = kdf::<1>(&pending.chaining_key, e_r.as_bytes());
        let h = mix_hash(&pending.hash, e_r.as_bytes());
        let ee = pending.ephemeral.dh(&e_r).ok_or(HandshakeError::Decrypt)?;
        let [ck] = kdf::<1>(&ck, &*ee);
        let se = local.dh(&e_r).ok_or(HandshakeError::Decrypt)?;
        let [ck] = kdf::<1>(&ck, &*se);
        let [ck, tau, k] = kdf::<3>(&ck, self.psk.as_bytes());
        let h = mix_hash(&h, &*tau);
        if !aead_open(&k, 0, &msg.encrypted_nothing(), &*h, &mut []) {
            return Err(HandshakeError::Decrypt);
        }
        // (T_send_i, T_recv_i) := KDF2(C, ε)
        let [send, recv] = kdf::<2>(&ck, &[]);
        let local_index = pending.local_index;
        self.pending = None;
        Ok(SessionKeys {
            send,
            recv,
            local_index,
            remote_index: msg.sender(),
            initiator: true,
        })
    }
}

/// Responder, 5.4.2 first half: decrypts the initiator's static key, which says which peer
/// this is. Needs only our own private key and its `InitialState`, so it runs before any peer
/// lock is taken.
pub fn begin_consume_initiation(
    local: &PrivateKey,
    initial: &InitialState,
    msg: &Initiation<'_>,
) -> Result<InitiationStart, HandshakeError> {
    let e_i = PublicKey(msg.ephemeral());
    let [ck] = kdf::<1>(&initial.chaining_key, e_i.as_bytes());
    let h = mix_hash(&initial.hash, e_i.as_bytes());
    let es = local.dh(&e_i).ok_or(HandshakeError::Decrypt)?;
    let [ck, k] = kdf::<2>(&ck, &*es);
    let encrypted_static = msg.encrypted_static();
    let mut s_i = [0u8; 32];
    if !aead_open(&k, 0, &encrypted_static, &*h, &mut s_i) {
        return Err(HandshakeError::Decrypt);
    }
    let h = mix_hash(&h, &encrypted_static);
    Ok(InitiationStart {
        remote_static: PublicKey(s_i),
        hash: h,
        chaining_key: ck,
        remote_ephemeral: e_i,
        sender: msg.sender(),
        encrypted_timestamp: msg.encrypted_timestamp(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::Message;
    use rand::rngs::OsRng;

    fn initiation_view(bytes: &[u8]) -> Initiation<'_> {
        match Message::parse(bytes) {
            Ok(Message::Initiation(i)) => i,
            other => panic!("{other:?}"),
        }
    }

    fn response_view(bytes: &[u8]) -> Response<'_> {
        match Message::parse(bytes) {
            Ok(Message::Response(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    fn run(
        psk_i: Option<PresharedKey>,
        psk_r: Option<PresharedKey>,
    ) -> Option<(SessionKeys, SessionKeys)> {
        let i_key = PrivateKey::generate(&mut OsRng);
        let r_key = PrivateKey::generate(&mut OsRng);
        let mut hs_i = Handshake::new(&i_key, r_key.public_key(), psk_i);
        let mut hs_r = Handshake::new(&r_key, i_key.public_key(), psk_r);
        let ts = Tai64N::from_since_epoch(Duration::from_secs(1_000_000));
        let init = hs_i.create_initiation(&i_key, 11, ts, PrivateKey::generate(&mut OsRng))?;
        let start = begin_consume_initiation(
            &r_key,
            &InitialState::new(&r_key.public_key()),
            &initiation_view(&init),
        )
        .ok()?;
        assert_eq!(start.remote_static, i_key.public_key());
        let (resp, r_keys) = hs_r
            .consume_initiation_and_respond(start, 22, Instant::now())
            .ok()?;
        let i_keys = hs_i.consume_response(&i_key, &response_view(&resp)).ok()?;
        Some((i_keys, r_keys))
    }

    #[test]
    fn handshake_derives_matching_keys() {
        let (i, r) = run(None, None).unwrap();
        assert_eq!(*i.send, *r.recv);
        assert_eq!(*i.recv, *r.send);
        assert_ne!(*i.send, *i.recv);
        assert_eq!((i.local_index, i.remote_index), (11, 22));
        assert_eq!((r.local_index, r.remote_index), (22, 11));
        assert!(i.initiator && !r.initiator);
    }

    #[test]
    fn handshake_with_psk() {
        let psk = PresharedKey::generate(&mut OsRng);
        let (i, r) = run(Some(psk.clone()), Some(psk)).unwrap();
        assert_eq!(*i.send, *r.recv);
        // Mismatched pre-shared keys: the initiator cannot open the response.
        assert!(run(
            Some(PresharedKey::generate(&mut OsRng)),
            Some(PresharedKey::generate(&mut OsRng))
        )
        .is_none());
        assert!(run(None, Some(PresharedKey::generate(&mut OsRng))).is_none());
    }

    #[test]
    fn replayed_and_flooded_initiations_are_refused() {
        let i_key = PrivateKey::generate(&mut OsRng);
        let r_key = PrivateKey::generate(&mut OsRng);
        let mut hs_i = Handshake::new(&i_key, r_key.public_key(), None);
        let mut hs_r = Handshake::new(&r_key, i_key.public_key(), None);
        let t0 = Instant::now();
        let ts = Tai64N::from_since_epoch(Duration::from_secs(1_000_000));
        let init = hs_i
            .create_initiation(&i_key, 1, ts, PrivateKey::generate(&mut OsRng))
            .unwrap();
        let start = || {
            begin_consume_initiation(
                &r_key,
                &InitialState::new(&r_key.public_key()),
                &initiation_view(&init),
            )
            .unwrap()
        };
        assert!(hs_r.consume_initiation_and_respond(start(), 2, t0).is_ok());
        // The same initiation again, even much later: replay.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(
            hs_r.consume_initiation_and_respond(start(), 3, later).err(),
            Some(HandshakeError::ReplayedInitiation)
        );
        // A newer one too soon after: flood.
        let ts2 = Tai64N::from_since_epoch(Duration::from_secs(1_000_001));
        let init2 = hs_i
            .create_initiation(&i_key, 4, ts2, PrivateKey::generate(&mut OsRng))
            .unwrap();
        let start2 = || {
            begin_consume_initiation(
                &r_key,
                &InitialState::new(&r_key.public_key()),
                &initiation_view(&init2),
            )
            .unwrap()
        };
        let soon = t0 + Duration::from_millis(5);
        assert_eq!(
            hs_r.consume_initiation_and_respond(start2(), 5, soon).err(),
            Some(HandshakeError::InitiationFlood)
        );
        assert!(hs_r
            .consume_initiation_and_respond(start2(), 5, later)
            .is_ok());
    }

    #[test]
    fn response_for_another_index_or_tampered_is_refused() {
        let i_key = PrivateKey::generate(&mut OsRng);
        let r_key = PrivateKey::generate(&mut OsRng);
        let mut hs_i = Handshake::new(&i_key, r_key.public_key(), None);
        let mut hs_r = Handshake::new(&r_key, i_key.public_key(), None);
        let ts = Tai64N::from_since_epoch(Duration::from_secs(5));
        let init = hs_i
            .create_initiation(&i_key, 1, ts, PrivateKey::generate(&mut OsRng))
            .unwrap();
        let start = begin_consume_initiation(
            &r_key,
            &InitialState::new(&r_key.public_key()),
            &initiation_view(&init),
        )
        .unwrap();
        let (mut resp, _) = hs_r
            .consume_initiation_and_respond(start, 2, Instant::now())
            .unwrap();
        resp[RESP_EMPTY] ^= 1;
        assert_eq!(
            hs_i.consume_response(&i_key, &response_view(&resp)).err(),
            Some(HandshakeError::Decrypt)
        );
        resp[RESP_EMPTY] ^= 1;
        resp[RESP_RECEIVER] ^= 1;
        assert_eq!(
            hs_i.consume_response(&i_key, &response_view(&resp)).err(),
            Some(HandshakeError::UnexpectedResponse)
        );
        resp[RESP_RECEIVER] ^= 1;
        // The failed attempts left the pending state intact.
        assert!(hs_i.consume_response(&i_key, &response_view(&resp)).is_ok());
        // And it is consumed once.
        assert!(hs_i
            .consume_response(&i_key, &response_view(&resp))
            .is_err());
    }

    #[test]
    fn initiation_to_someone_else_does_not_decrypt() {
        let i_key = PrivateKey::generate(&mut OsRng);
        let r_key = PrivateKey::generate(&mut OsRng);
        let mut hs_i = Handshake::new(&i_key, r_key.public_key(), None);
        let init = hs_i
            .create_initiation(
                &i_key,
                1,
                Tai64N::default(),
                PrivateKey::generate(&mut OsRng),
            )
            .unwrap();
        let other = PrivateKey::generate(&mut OsRng);
        assert!(begin_consume_initiation(
            &other,
            &InitialState::new(&other.public_key()),
            &initiation_view(&init)
        )
        .is_err());
    }
}
