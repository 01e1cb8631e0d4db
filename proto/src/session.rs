//! A session (the paper's "transport data keys"): the two ChaCha20-Poly1305 keys a handshake
//! derived, the indices, the send counter and the receive replay window.
//!
//! Sealing and opening happen in place through `ring`, which is several times faster than the
//! RustCrypto implementation for packet-sized inputs on these machines. A `Keypair` is shared
//! between threads (`Arc`): the send counter is atomic and the replay window has its own lock,
//! so sealing needs no lock at all.

use super::constants::*;
use super::handshake::SessionKeys;
use super::messages::write_transport_header;
use super::noise::counter_nonce;
use super::replay::ReplayWindow;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

pub struct Keypair {
    send: LessSafeKey,
    recv: LessSafeKey,
    pub local_index: u32,
    pub remote_index: u32,
    /// True on the side that sent the initiation: only it rekeys on age.
    pub initiator: bool,
    pub created: Instant,
    next_send_counter: AtomicU64,
    replay: Mutex<ReplayWindow>,
}

/// Why a transport message could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// The tag did not verify: forged, corrupted, or for another session.
    Tag,
    /// Authentic but already received, or too old for the window.
    Replay,
    /// The session is past REJECT_AFTER_TIME or REJECT_AFTER_MESSAGES.
    Expired,
}

fn ring_key(bytes: &[u8; 32]) -> LessSafeKey {
    // ChaCha20-Poly1305 takes any 32-byte key, so this cannot fail.
    match UnboundKey::new(&CHACHA20_POLY1305, bytes) {
        Ok(k) => LessSafeKey::new(k),
        Err(_) => unreachable!("a 32-byte key is always valid for ChaCha20-Poly1305"),
    }
}

impl Keypair {
    pub fn new(keys: &SessionKeys, created: Instant) -> Self {
        Keypair {
            send: ring_key(&keys.send),
            recv: ring_key(&keys.recv),
            local_index: keys.local_index,
            remote_index: keys.remote_index,
            initiator: keys.initiator,
            created,
            next_send_counter: AtomicU64::new(0),
            replay: Mutex::new(ReplayWindow::default()),
        }
    }

    /// Counters handed out so far.
    pub fn sent(&self) -> u64 {
        self.next_send_counter.load(Ordering::Relaxed)
    }

    /// Usable for sending: young enough and counters left.
    pub fn can_send(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.created) < REJECT_AFTER_TIME
            && self.sent() < REJECT_AFTER_MESSAGES
    }

    /// Never sends again (its counters are used up); it still opens what arrives.
    pub fn stop_sending(&self) {
        self.next_send_counter
            .store(REJECT_AFTER_MESSAGES, Ordering::Relaxed);
    }

    /// Takes the next counter, or `None` when the session has used them all.
    pub fn next_counter(&self) -> Option<u64> {
        let c = self.next_send_counter.fetch_add(1, Ordering::Relaxed);
        if c >= REJECT_AFTER_MESSAGES {
            // Keep it pinned so that it can never wrap around.
            self.next_send_counter
                .store(REJECT_AFTER_MESSAGES, Ordering::Relaxed);
            return None;
        }
        Some(c)
    }

    /// Seals the packet of `len` bytes found at `buf[16..16 + len]` into a transport message in
    /// place: writes the header, zero-pads the payload to a multiple of 16 (not beyond `mtu`
    /// unless the packet already is), encrypts, appends the tag. Returns the message length, or
    /// `None` when `buf` is too small.
    pub fn seal_in_place(
        &self,
        counter: u64,
        buf: &mut [u8],
        len: usize,
        mtu: usize,
    ) -> Option<usize> {
        let padded = padded_len(len, mtu);
        let total = TRANSPORT_HEADER_LEN + padded + AEAD_TAG_LEN;
        if buf.len() < total {
            return None;
        }
        let (header, rest) = buf.split_at_mut(TRANSPORT_HEADER_LEN);
        let header: &mut [u8; TRANSPORT_HEADER_LEN] = header.try_into().ok()?;
        write_transport_header(header, self.remote_index, counter);
        rest[len..padded].fill(0);
        let (payload, tail) = rest.split_at_mut(padded);
        let tag = self
            .send
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(counter_nonce(counter)),
                Aad::empty(),
                payload,
            )
            .ok()?;
        tail[..AEAD_TAG_LEN].copy_from_slice(tag.as_ref());
        Some(total)
    }

    /// Opens a transport message's sealed part (`sealed` = ciphertext || tag) in place and then
    /// checks the counter against the replay window. Returns the plaintext length (padding
    /// included; the caller trims to the inner IP length).
    pub fn open_in_place(
        &self,
        counter: u64,
        sealed: &mut [u8],
        now: Instant,
    ) -> Result<usize, OpenError> {
        if now.saturating_duration_since(self.created) >= REJECT_AFTER_TIME
            || counter >= REJECT_AFTER_MESSAGES
        {
            return Err(OpenError::Expired);
        }
        let plain = self
            .recv
            .open_in_place(
                Nonce::assume_unique_for_key(counter_nonce(counter)),
                Aad::empty(),
                sealed,
            )
            .map_err(|_| OpenError::Tag)?
            .len();
        // Only now, with the tag verified, may the counter touch the window.
        let fresh = match self.replay.lock() {
            Ok(mut w) => w.check_and_set(counter),
            Err(poisoned) => poisoned.into_inner().check_and_set(counter),
        };
        if !fresh {
            return Err(OpenError::Replay);
        }
        Ok(plain)
    }
}

impl Keypair {
    /// Two matching sessions (initiator, responder) with fixed keys, for tests and benchmarks
    /// that need transport data without a handshake. Never for real traffic.
    #[doc(hidden)]
    pub fn test_pair(created: Instant) -> (Keypair, Keypair) {
        let a = zeroize::Zeroizing::new([1u8; 32]);
        let b = zeroize::Zeroizing::new([2u8; 32]);
        let i = SessionKeys {
            send: a.clone(),
            recv: b.clone(),
            local_index: 1,
            remote_index: 2,
            initiator: true,
        };
        let r = SessionKeys {
            send: b,
            recv: a,
            local_index: 2,
            remote_index: 1,
            initiator: false,
        };
        (Keypair::new(&i, created), Keypair::new(&r, created))
    }
}

/// Plaintext length after padding: up to the next multiple of 16, but a packet never grows
/// past the MTU because of padding (the kernel's rule).
pub fn padded_len(len: usize, mtu: usize) -> usize {
    let rounded = len.div_ceil(PADDING_MULTIPLE) * PADDING_MULTIPLE;
    if len <= mtu {
        rounded.min(mtu)
    } else {
        rounded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Keypair, Keypair) {
        Keypair::test_pair(Instant::now())
    }

    #[test]
    fn seal_open_both_ways_with_padding() {
        let (i, r) = pair();
        let now = Instant::now();
        for len in [0usize, 1, 15, 16, 17, 100, 1419, 1420] {
            let mut buf = vec![0u8; 16 + len + 32];
            for (k, b) in buf[16..16 + len].iter_mut().enumerate() {
                *b = k as u8;
            }
            let c = i.next_counter().unwrap();
            let n = i.seal_in_place(c, &mut buf, len, 1420).unwrap();
            assert_eq!(n, 16 + padded_len(len, 1420) + 16);
            assert_eq!(
                &buf[4..8],
                &2u32.to_le_bytes(),
                "receiver index is the peer's"
            );
            let plain = r.open_in_place(c, &mut buf[16..n], now).unwrap();
            assert!(plain >= len);
            assert!(buf[16..16 + len]
                .iter()
                .enumerate()
                .all(|(k, b)| *b == k as u8));
            assert!(buf[16 + len..16 + plain].iter().all(|b| *b == 0));
        }
        // And the other way.
        let mut buf = vec![0u8; 64];
        let c = r.next_counter().unwrap();
        let n = r.seal_in_place(c, &mut buf, 10, 1420).unwrap();
        assert!(i.open_in_place(c, &mut buf[16..n], now).is_ok());
    }

    #[test]
    fn padding_never_exceeds_mtu() {
        assert_eq!(padded_len(0, 1420), 0);
        assert_eq!(padded_len(1, 1420), 16);
        assert_eq!(padded_len(1419, 1420), 1420);
        assert_eq!(padded_len(1413, 1420), 1420);
        assert_eq!(padded_len(1500, 1420), 1504);
    }

    #[test]
    fn replay_tamper_and_expiry() {
        let (i, r) = pair();
        let now = Instant::now();
        let mut buf = vec![0u8; 64];
        let c = i.next_counter().unwrap();
        let n = i.seal_in_place(c, &mut buf, 8, 1420).unwrap();
        let copy = buf.clone();
        assert!(r.open_in_place(c, &mut buf[16..n], now).is_ok());
        let mut again = copy.clone();
        assert_eq!(
            r.open_in_place(c, &mut again[16..n], now),
            Err(OpenError::Replay)
        );
        let mut flipped = copy.clone();
        flipped[20] ^= 0x40;
        assert_eq!(
            r.open_in_place(c, &mut flipped[16..n], now),
            Err(OpenError::Tag)
        );
        // A forged packet with a fresh counter does not consume that counter.
        let c2 = i.next_counter().unwrap();
        let mut good = vec![0u8; 64];
        let n2 = i.seal_in_place(c2, &mut good, 8, 1420).unwrap();
        let mut forged = good.clone();
        forged[n2 - 1] ^= 1;
        assert_eq!(
            r.open_in_place(c2, &mut forged[16..n2], now),
            Err(OpenError::Tag)
        );
        assert!(r.open_in_place(c2, &mut good[16..n2], now).is_ok());
        let late = now + REJECT_AFTER_TIME;
        assert!(!i.can_send(late));
        let mut old = copy;
        assert_eq!(
            r.open_in_place(c, &mut old[16..n], late),
            Err(OpenError::Expired)
        );
    }

    #[test]
    fn counters_stop_at_reject_after_messages() {
        let (i, _) = pair();
        i.next_send_counter
            .store(REJECT_AFTER_MESSAGES - 1, Ordering::Relaxed);
        assert_eq!(i.next_counter(), Some(REJECT_AFTER_MESSAGES - 1));
        assert_eq!(i.next_counter(), None);
        assert_eq!(i.next_counter(), None);
        assert!(!i.can_send(i.created));
    }
}
