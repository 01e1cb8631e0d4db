//! mac1, mac2 and the cookie reply (paper, section 5.4.4 and 5.4.7).
//!
//! Every handshake message carries mac1 = MAC(HASH(LABEL_MAC1 || receiver's public key), msg
//! before mac1): anyone who knows the receiver's public key can make it, and a receiver drops
//! without answer whatever fails it. Under load the responder also demands mac2 = MAC(cookie,
//! msg before mac2), where the cookie is MAC(secret, source IP || source port) and the secret
//! changes every two minutes. Without a good mac2 the initiator gets a cookie reply (64 bytes,
//! smaller than the 148 or 92 that provoked it) which it decrypts and uses for its next try.

use super::constants::*;
use super::messages::{offsets::*, CookieReply};
use super::noise::{hash, mac, xaead_open, xaead_seal};
use crate::keys::PublicKey;
use rand_core::CryptoRngCore;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Where mac1 and mac2 sit in a handshake message of length `len` (initiation or response).
fn mac_offsets(len: usize) -> Option<(usize, usize)> {
    match len {
        INITIATION_LEN => Some((INIT_MAC1, INIT_MAC2)),
        RESPONSE_LEN => Some((RESP_MAC1, RESP_MAC2)),
        _ => None,
    }
}

/// The address bytes a cookie is bound to: IP then port (big-endian).
fn address_bytes(src: &SocketAddr) -> ([u8; 18], usize) {
    let mut out = [0u8; 18];
    let n = match src.ip() {
        IpAddr::V4(ip) => {
            out[..4].copy_from_slice(&ip.octets());
            4
        }
        IpAddr::V6(ip) => {
            out[..16].copy_from_slice(&ip.octets());
            16
        }
    };
    out[n..n + 2].copy_from_slice(&src.port().to_be_bytes());
    (out, n + 2)
}

/// The responder's side, one per device: checks macs, makes cookie replies.
pub struct CookieChecker {
    mac1_key: [u8; 32],
    cookie_key: [u8; 32],
    secret: Zeroizing<[u8; 32]>,
    secret_born: Option<Instant>,
}

impl CookieChecker {
    pub fn new(our_public: &PublicKey) -> Self {
        CookieChecker {
            mac1_key: hash(&[LABEL_MAC1, our_public.as_bytes()]),
            cookie_key: hash(&[LABEL_COOKIE, our_public.as_bytes()]),
            secret: Zeroizing::new([0; 32]),
            secret_born: None,
        }
    }

    /// mac1 of a handshake message is right (constant-time comparison).
    pub fn check_mac1(&self, msg: &[u8]) -> bool {
        let Some((m1, m2)) = mac_offsets(msg.len()) else {
            return false;
        };
        let expected = mac(&self.mac1_key, &[&msg[..m1]]);
        expected.ct_eq(&msg[m1..m2]).into()
    }

    fn current_secret(&mut self, now: Instant, rng: &mut dyn CryptoRngCore) -> &[u8; 32] {
        let stale = self
            .secret_born
            .is_none_or(|born| now.saturating_duration_since(born) >= COOKIE_SECRET_MAX_AGE);
        if stale {
            rng.fill_bytes(&mut *self.secret);
            self.secret_born = Some(now);
        }
        &self.secret
    }

    fn cookie_for(
        &mut self,
        src: &SocketAddr,
        now: Instant,
        rng: &mut dyn CryptoRngCore,
    ) -> [u8; 16] {
        let (addr, n) = address_bytes(src);
        let secret = *self.current_secret(now, rng);
        mac(&secret, &[&addr[..n]])
    }

    /// mac2 of a handshake message is right for a cookie we would give `src` now. (`rng`
    /// makes a new secret when the last one is two minutes old.)
    pub fn check_mac2(
        &mut self,
        msg: &[u8],
        src: &SocketAddr,
        now: Instant,
        rng: &mut dyn CryptoRngCore,
    ) -> bool {
        let Some((_, m2)) = mac_offsets(msg.len()) else {
            return false;
        };
        let cookie = self.cookie_for(src, now, rng);
        let expected = mac(&cookie, &[&msg[..m2]]);
        expected.ct_eq(&msg[m2..m2 + 16]).into()
    }

    /// The cookie reply to `msg` (whose mac1 has been checked) from `src`.
    pub fn create_reply(
        &mut self,
        msg: &[u8],
        sender_index: u32,
        src: &SocketAddr,
        now: Instant,
        rng: &mut dyn CryptoRngCore,
    ) -> Option<[u8; COOKIE_REPLY_LEN]> {
        let (m1, m2) = mac_offsets(msg.len())?;
        let cookie = self.cookie_for(src, now, rng);
        let mut reply = [0u8; COOKIE_REPLY_LEN];
        reply[0] = MESSAGE_COOKIE_REPLY;
        reply[COOKIE_RECEIVER..COOKIE_RECEIVER + 4].copy_from_slice(&sender_index.to_le_bytes());
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        reply[COOKIE_NONCE..COOKIE_NONCE + 24].copy_from_slice(&nonce);
        let sealed = &mut reply[COOKIE_SEALED..COOKIE_SEALED + 32];
        sealed[..16].copy_from_slice(&cookie);
        xaead_seal(&self.cookie_key, &nonce, sealed, &msg[m1..m2]);
        Some(reply)
    }
}

/// The initiator's side, one per peer: adds mac1 and (with a fresh cookie) mac2 to outgoing
/// handshake messages, and takes cookies from cookie replies.
pub struct CookieGenerator {
    mac1_key: [u8; 32],
    cookie_key: [u8; 32],
    /// mac1 of the last handshake message sent: a cookie reply must be bound to it.
    last_mac1: Option<[u8; 16]>,
    cookie: Option<([u8; 16], Instant)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieError {
    /// We sent nothing a cookie could be for.
    Unexpected,
    /// Did not decrypt.
    Decrypt,
}

impl CookieGenerator {
    pub fn new(peer_public: &PublicKey) -> Self {
        CookieGenerator {
            mac1_key: hash(&[LABEL_MAC1, peer_public.as_bytes()]),
            cookie_key: hash(&[LABEL_COOKIE, peer_public.as_bytes()]),
            last_mac1: None,
            cookie: None,
        }
    }

    /// Fills in mac1, and mac2 when a cookie younger than its lifetime is at hand.
    pub fn add_macs(&mut self, msg: &mut [u8], now: Instant) {
        let Some((m1, m2)) = mac_offsets(msg.len()) else {
            return;
        };
        let mac1 = mac(&self.mac1_key, &[&msg[..m1]]);
        msg[m1..m2].copy_from_slice(&mac1);
        self.last_mac1 = Some(mac1);
        let fresh = self.cookie.filter(|(_, born)| {
            now.saturating_duration_since(*born) < COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY
        });
        let mac2 = match fresh {
            Some((cookie, _)) => mac(&cookie, &[&msg[..m2]]),
            None => [0; 16],
        };
        msg[m2..m2 + 16].copy_from_slice(&mac2);
    }

    pub fn consume_reply(
        &mut self,
        reply: &CookieReply<'_>,
        now: Instant,
    ) -> Result<(), CookieError> {
        let last_mac1 = self.last_mac1.ok_or(CookieError::Unexpected)?;
        let mut cookie = [0u8; 16];
        if !xaead_open(
            &self.cookie_key,
            &reply.nonce(),
            &reply.encrypted_cookie(),
            &last_mac1,
            &mut cookie,
        ) {
            return Err(CookieError::Decrypt);
        }
        self.cookie = Some((cookie, now));
        // One cookie reply per message sent.
        self.last_mac1 = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;
    use crate::messages::Message;
    use rand::rngs::OsRng;
    use std::time::Duration;

    fn reply_view(bytes: &[u8]) -> CookieReply<'_> {
        match Message::parse(bytes) {
            Ok(Message::CookieReply(c)) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mac1_then_cookie_round_trip_then_mac2() {
        let responder = PrivateKey::generate(&mut OsRng).public_key();
        let mut checker = CookieChecker::new(&responder);
        let mut gen = CookieGenerator::new(&responder);
        let now = Instant::now();
        let src: SocketAddr = "198.18.0.2:4000".parse().unwrap();
        let mut msg = [7u8; INITIATION_LEN];
        gen.add_macs(&mut msg, now);
        assert!(checker.check_mac1(&msg));
        assert!(
            !checker.check_mac2(&msg, &src, now, &mut OsRng),
            "no cookie yet, mac2 is zero"
        );
        let reply = checker
            .create_reply(&msg, 42, &src, now, &mut OsRng)
            .unwrap();
        assert!(
            reply.len() < msg.len(),
            "a cookie reply is smaller than what provoked it"
        );
        let view = reply_view(&reply);
        assert_eq!(view.receiver(), 42);
        gen.consume_reply(&view, now).unwrap();
        assert_eq!(gen.consume_reply(&view, now), Err(CookieError::Unexpected));
        gen.add_macs(&mut msg, now);
        assert!(checker.check_mac1(&msg));
        assert!(checker.check_mac2(&msg, &src, now, &mut OsRng));
        // Bound to the source address and port.
        let other: SocketAddr = "198.18.0.2:4001".parse().unwrap();
        assert!(!checker.check_mac2(&msg, &other, now, &mut OsRng));
        // The secret rotates after two minutes: the old cookie stops working.
        assert!(!checker.check_mac2(&msg, &src, now + COOKIE_SECRET_MAX_AGE, &mut OsRng));
    }

    #[test]
    fn wrong_mac1_and_wrong_reply() {
        let responder = PrivateKey::generate(&mut OsRng).public_key();
        let checker = CookieChecker::new(&responder);
        let mut gen = CookieGenerator::new(&PrivateKey::generate(&mut OsRng).public_key());
        let mut msg = [1u8; RESPONSE_LEN];
        gen.add_macs(&mut msg, Instant::now());
        assert!(!checker.check_mac1(&msg), "mac1 for another public key");
        assert!(!checker.check_mac1(&msg[..50]));
        // A cookie reply from someone else does not decrypt.
        let mut other_checker = CookieChecker::new(&PrivateKey::generate(&mut OsRng).public_key());
        let src: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
        let reply = other_checker
            .create_reply(&msg, 1, &src, Instant::now(), &mut OsRng)
            .unwrap();
        assert_eq!(
            gen.consume_reply(&reply_view(&reply), Instant::now()),
            Err(CookieError::Decrypt)
        );
    }

    #[test]
    fn stale_cookie_is_not_used() {
        let responder = PrivateKey::generate(&mut OsRng).public_key();
        let mut checker = CookieChecker::new(&responder);
        let mut gen = CookieGenerator::new(&responder);
        let now = Instant::now();
        let src: SocketAddr = "198.18.0.9:1".parse().unwrap();
        let mut msg = [0u8; INITIATION_LEN];
        gen.add_macs(&mut msg, now);
        let reply = checker
            .create_reply(&msg, 1, &src, now, &mut OsRng)
            .unwrap();
        gen.consume_reply(&reply_view(&reply), now).unwrap();
        gen.add_macs(&mut msg, now + Duration::from_secs(116));
        assert_eq!(&msg[INIT_MAC2..], &[0u8; 16]);
    }
}
