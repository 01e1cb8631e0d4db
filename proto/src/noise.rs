//! The primitives of Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s as WireGuard defines them (paper,
//! section 5.4): HASH, MAC, HMAC, the HKDF-style KDF, and the handshake AEADs. Every
//! intermediate secret is held in `Zeroizing` so that it is wiped when dropped.

use blake2::digest::{KeyInit, Mac as _, Update};
use blake2::{Blake2s256, Blake2sMac, Digest};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, XChaCha20Poly1305};
use hmac::SimpleHmac;
use zeroize::Zeroizing;

pub type Secret32 = Zeroizing<[u8; 32]>;

/// HASH(a || b || ...): BLAKE2s-256 over the concatenation.
pub fn hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    for p in parts {
        Digest::update(&mut h, p);
    }
    h.finalize().into()
}

/// MAC(key, input): keyed BLAKE2s with a 16-byte output (mac1, mac2, cookies).
pub fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    // A BLAKE2s key is at most 32 bytes; every caller passes 16 or 32.
    let mut m = match <Blake2sMac<blake2::digest::consts::U16> as KeyInit>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable_key_length(),
    };
    for p in parts {
        Update::update(&mut m, p);
    }
    m.finalize().into_bytes().into()
}

#[cold]
fn unreachable_key_length() -> ! {
    // Only reachable through a programming error inside this module (keys here are 16 or 32
    // bytes, which BLAKE2s and HMAC always accept); never through input from the network.
    panic!("internal error: MAC key of unsupported length")
}

/// HMAC-BLAKE2s(key, input), 32 bytes.
fn hmac(key: &[u8], parts: &[&[u8]]) -> Secret32 {
    let mut m = match <SimpleHmac<Blake2s256> as KeyInit>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable_key_length(),
    };
    for p in parts {
        Update::update(&mut m, p);
    }
    Zeroizing::new(m.finalize().into_bytes().into())
}

/// KDF_n(key, input) for n = 1, 2, 3: τ0 = HMAC(key, input), τi = HMAC(τ0, τ(i-1) || i).
pub fn kdf<const N: usize>(key: &[u8; 32], input: &[u8]) -> [Secret32; N] {
    let t0 = hmac(key, &[input]);
    let mut out: [Secret32; N] = std::array::from_fn(|_| Zeroizing::new([0u8; 32]));
    let mut prev: Option<Secret32> = None;
    for (i, slot) in out.iter_mut().enumerate() {
        let counter = [i as u8 + 1];
        let next = match &prev {
            None => hmac(&*t0, &[&counter]),
            Some(p) => hmac(&*t0, &[&p[..], &counter]),
        };
        *slot = next.clone();
        prev = Some(next);
    }
    out
}

/// The 96-bit AEAD nonce of WireGuard: 32 zero bits then the 64-bit little-endian counter.
pub fn counter_nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

/// AEAD(key, counter, plaintext, ad) for the handshake: seals `buf[..len-16]` in place and
/// writes the tag in the last 16 bytes.
pub fn aead_seal(key: &[u8; 32], counter: u64, buf: &mut [u8], ad: &[u8]) {
    let cipher = ChaCha20Poly1305::new(key.into());
    let split = buf.len() - 16;
    let (data, tag_out) = buf.split_at_mut(split);
    // Encryption of a buffer this small cannot fail (the length limit is 256 GiB).
    if let Ok(tag) = cipher.encrypt_in_place_detached(&counter_nonce(counter).into(), ad, data) {
        tag_out.copy_from_slice(&tag);
    }
}

/// Opens `sealed` (ciphertext || tag) into `out` (ciphertext length). False if the tag is wrong.
pub fn aead_open(key: &[u8; 32], counter: u64, sealed: &[u8], ad: &[u8], out: &mut [u8]) -> bool {
    if sealed.len() != out.len() + 16 {
        return false;
    }
    let cipher = ChaCha20Poly1305::new(key.into());
    let (data, tag) = sealed.split_at(out.len());
    out.copy_from_slice(data);
    cipher
        .decrypt_in_place_detached(&counter_nonce(counter).into(), ad, out, tag.into())
        .is_ok()
}

/// XAEAD(key, nonce, plaintext, ad) for the cookie reply: 24-byte random nonce.
pub fn xaead_seal(key: &[u8; 32], nonce: &[u8; 24], buf: &mut [u8], ad: &[u8]) {
    let cipher = XChaCha20Poly1305::new(key.into());
    let split = buf.len() - 16;
    let (data, tag_out) = buf.split_at_mut(split);
    if let Ok(tag) = cipher.encrypt_in_place_detached(nonce.into(), ad, data) {
        tag_out.copy_from_slice(&tag);
    }
}

pub fn xaead_open(
    key: &[u8; 32],
    nonce: &[u8; 24],
    sealed: &[u8],
    ad: &[u8],
    out: &mut [u8],
) -> bool {
    if sealed.len() != out.len() + 16 {
        return false;
    }
    let cipher = XChaCha20Poly1305::new(key.into());
    let (data, tag) = sealed.split_at(out.len());
    out.copy_from_slice(data);
    cipher
        .decrypt_in_place_detached(nonce.into(), ad, out, tag.into())
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdf_outputs_chain() {
        let key = [7u8; 32];
        let [a] = kdf::<1>(&key, b"input");
        let [b, c] = kdf::<2>(&key, b"input");
        let [d, e, f] = kdf::<3>(&key, b"input");
        assert_eq!(*a, *b);
        assert_eq!(*b, *d);
        assert_eq!(*c, *e);
        assert_ne!(*e, *f);
        // τ2 = HMAC(τ0, τ1 || 2)
        let t0 = hmac(&key, &[b"input"]);
        assert_eq!(*hmac(&*t0, &[&b[..], &[2]]), *c);
    }

    #[test]
    fn aead_round_trip_and_tamper() {
        let key = [3u8; 32];
        let mut buf = *b"hello world, 32 bytes of it.....";
        let plain_len = buf.len() - 16;
        let plain = buf[..plain_len].to_vec();
        aead_seal(&key, 5, &mut buf, b"ad");
        let mut out = vec![0u8; plain_len];
        assert!(aead_open(&key, 5, &buf, b"ad", &mut out));
        assert_eq!(out, plain);
        assert!(!aead_open(&key, 6, &buf, b"ad", &mut out));
        assert!(!aead_open(&key, 5, &buf, b"xx", &mut out));
        buf[0] ^= 1;
        assert!(!aead_open(&key, 5, &buf, b"ad", &mut out));
    }
}
