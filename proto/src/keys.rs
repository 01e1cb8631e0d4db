//! Keys: the X25519 private and public keys and the optional pre-shared key.
//!
//! The text form is the one `wg genkey`, `wg pubkey` and `wg genpsk` use: 32 bytes in standard
//! base64 with padding (44 characters). Secrets zero themselves on drop and their `Debug` output
//! never shows key material.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use rand_core::CryptoRngCore;
use std::fmt;
use std::str::FromStr;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length in bytes of every WireGuard key.
pub const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("not valid base64")]
    Base64,
    #[error("a key is 32 bytes, this one is {0}")]
    Length(usize),
    #[error("low-order public key (its shared secret would be all zeros)")]
    LowOrder,
}

fn hex_32(bytes: &[u8; KEY_LEN]) -> Zeroizing<String> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Zeroizing::new(String::with_capacity(2 * KEY_LEN));
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// 64 hex digits (the form the WireGuard userspace API uses) to 32 bytes.
pub fn from_hex(text: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyError> {
    let t = text.trim().as_bytes();
    if t.len() != 2 * KEY_LEN {
        return Err(KeyError::Length(t.len() / 2));
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(KeyError::Base64),
    };
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    for (i, pair) in t.chunks(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Ok(out)
}

fn decode_32(text: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyError> {
    let bytes = Zeroizing::new(BASE64.decode(text.trim()).map_err(|_| KeyError::Base64)?);
    if bytes.len() != KEY_LEN {
        return Err(KeyError::Length(bytes.len()));
    }
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    out.copy_from_slice(&bytes);
    Ok(out)
}

/// A Curve25519 private key. Zeroed on drop; `Debug` prints no secret.
#[derive(Clone)]
pub struct PrivateKey(x25519_dalek::StaticSecret);

impl PrivateKey {
    /// A new key from `rng` (the caller's: `rand_core::OsRng` for a real key; this crate
    /// reads no randomness of its own).
    pub fn generate<R: CryptoRngCore + ?Sized>(rng: &mut R) -> Self {
        PrivateKey(x25519_dalek::StaticSecret::random_from_rng(rng))
    }

    /// The key from its 32 raw bytes (clamping happens in the scalar multiplication).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        PrivateKey(x25519_dalek::StaticSecret::from(bytes))
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519_dalek::PublicKey::from(&self.0).to_bytes())
    }

    /// The base64 text form, as `wg genkey` prints it. Handle the result as a secret.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(BASE64.encode(self.0.as_bytes()))
    }

    /// Hex form, for the WireGuard userspace API. Handle the result as a secret.
    pub fn to_hex(&self) -> Zeroizing<String> {
        hex_32(self.0.as_bytes())
    }

    /// X25519 with `public`. `None` when the result is all zeros (a low-order point), which the
    /// protocol must refuse.
    pub(crate) fn dh(&self, public: &PublicKey) -> Option<Zeroizing<[u8; KEY_LEN]>> {
        let shared = self
            .0
            .diffie_hellman(&x25519_dalek::PublicKey::from(public.0));
        if !shared.was_contributory() {
            return None;
        }
        Some(Zeroizing::new(shared.to_bytes()))
    }
}

impl FromStr for PrivateKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Ok(PrivateKey::from_bytes(*decode_32(s)?))
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Show whose key it is, never the key.
        write!(f, "PrivateKey(public {})", self.public_key())
    }
}

/// A Curve25519 public key, as it appears on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub(crate) [u8; KEY_LEN]);

impl PublicKey {
    /// The key from raw bytes, refusing low-order points (the points whose shared secret with
    /// any private key is all zeros; a peer with such a key could never be authenticated).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Result<Self, KeyError> {
        let key = PublicKey(bytes);
        if key.is_low_order() {
            return Err(KeyError::LowOrder);
        }
        Ok(key)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }

    pub fn to_hex(&self) -> String {
        hex_32(&self.0).to_string()
    }

    /// True for the points of small order (and their non-canonical encodings). A clamped scalar
    /// is a multiple of the cofactor 8, so X25519 with any clamped scalar maps exactly these
    /// points to zero.
    pub fn is_low_order(&self) -> bool {
        const PROBE: [u8; KEY_LEN] = [0x5a; KEY_LEN];
        let probe = x25519_dalek::StaticSecret::from(PROBE);
        !probe
            .diffie_hellman(&x25519_dalek::PublicKey::from(self.0))
            .was_contributory()
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        PublicKey::from_bytes(*decode_32(s)?)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

/// The optional pre-shared key mixed into the handshake (Noise's psk2). Zeroed on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PresharedKey([u8; KEY_LEN]);

impl PresharedKey {
    /// A new key from `rng`, as `PrivateKey::generate`.
    pub fn generate<R: CryptoRngCore + ?Sized>(rng: &mut R) -> Self {
        let mut key = [0u8; KEY_LEN];
        rng.fill_bytes(&mut key);
        let psk = PresharedKey(key);
        key.zeroize();
        psk
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        PresharedKey(bytes)
    }

    /// All zeros: what the handshake mixes in when no pre-shared key is configured.
    pub fn zero() -> Self {
        PresharedKey([0; KEY_LEN])
    }

    pub fn is_zero(&self) -> bool {
        self.0.ct_eq(&[0u8; KEY_LEN]).into()
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(BASE64.encode(self.0))
    }

    pub fn to_hex(&self) -> Zeroizing<String> {
        hex_32(&self.0)
    }
}

impl FromStr for PresharedKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Ok(PresharedKey(*decode_32(s)?))
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(..)")
    }
}

impl PartialEq for PresharedKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    /// The seven well-known low-order points of Curve25519 (and non-canonical encodings of
    /// them), as listed in the X25519 literature and refused by libsodium and WireGuard.
    pub(crate) const LOW_ORDER_POINTS: [[u8; 32]; 7] = [
        // 0
        [0; 32],
        // 1
        [
            1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0,
        ],
        // 325606250916557431795983626356110631294008115727848805560023387167927233504 (order 8)
        [
            0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f,
            0xc4, 0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16,
            0x5f, 0x49, 0xb8, 0x00,
        ],
        // 39382357235489614581723060781553021112529911719440698176882885853963445705823 (order 8)
        [
            0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83,
            0xef, 0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd,
            0xd0, 0x9f, 0x11, 0x57,
        ],
        // p - 1 (order 2)
        [
            0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0x7f,
        ],
        // p (non-canonical 0)
        [
            0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0x7f,
        ],
        // p + 1 (non-canonical 1)
        [
            0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0x7f,
        ],
    ];

    #[test]
    fn low_order_points_are_refused() {
        let ours = PrivateKey::generate(&mut OsRng);
        for point in LOW_ORDER_POINTS {
            assert_eq!(PublicKey::from_bytes(point), Err(KeyError::LowOrder));
            // And the raw DH refuses them too, whatever the private key.
            assert!(ours.dh(&PublicKey(point)).is_none());
        }
        // The same points with the top bit set (X25519 ignores it) are refused as well.
        for point in LOW_ORDER_POINTS {
            let mut high = point;
            high[31] |= 0x80;
            assert_eq!(PublicKey::from_bytes(high), Err(KeyError::LowOrder));
        }
    }

    #[test]
    fn ordinary_keys_are_accepted_and_agree() {
        let a = PrivateKey::generate(&mut OsRng);
        let b = PrivateKey::generate(&mut OsRng);
        let ab = a.dh(&b.public_key()).map(|k| *k);
        let ba = b.dh(&a.public_key()).map(|k| *k);
        assert!(ab.is_some());
        assert_eq!(ab, ba);
        assert!(!a.public_key().is_low_order());
    }

    #[test]
    fn base64_round_trip_and_errors() {
        let key = PrivateKey::generate(&mut OsRng);
        let text = key.to_base64();
        assert_eq!(text.len(), 44);
        let back: PrivateKey = text.parse().unwrap();
        assert_eq!(back.public_key(), key.public_key());
        assert_eq!("!!!".parse::<PublicKey>(), Err(KeyError::Base64));
        assert_eq!("AAAA".parse::<PublicKey>(), Err(KeyError::Length(3)));
        let psk = PresharedKey::generate(&mut OsRng);
        assert_eq!(psk.to_base64().parse::<PresharedKey>().unwrap(), psk);
    }

    #[test]
    fn known_vector_matches_wg_pubkey() {
        // Private key all 0x01 bytes (clamped inside X25519); public key computed by `wg pubkey`:
        // echo AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE= | wg pubkey
        let private: PrivateKey = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
            .parse()
            .unwrap();
        assert_eq!(
            private.public_key().to_base64(),
            "pOCSkrZRwni5dyxWn1+puxPZBrRqtoyd+dwrRAn4ogk="
        );
    }

    #[test]
    fn hex_round_trip() {
        let key = PrivateKey::generate(&mut OsRng);
        let hex = key.to_hex();
        assert_eq!(hex.len(), 64);
        let back = PrivateKey::from_bytes(*from_hex(&hex).unwrap());
        assert_eq!(back.public_key(), key.public_key());
        assert!(from_hex("zz").is_err());
        assert!(from_hex(&"g".repeat(64)).is_err());
    }

    #[test]
    fn debug_shows_no_secret() {
        let key = PrivateKey::generate(&mut OsRng);
        let text = key.to_base64();
        let shown = format!("{key:?}");
        assert!(!shown.contains(text.as_str()));
        let psk = PresharedKey::generate(&mut OsRng);
        assert!(!format!("{psk:?}").contains(psk.to_base64().as_str()));
    }
}
