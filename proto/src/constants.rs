//! Every protocol constant, with the names of the WireGuard paper (section 6) and the kernel's
//! `messages.h`. Nothing else in `proto` writes a protocol number by hand.

use std::time::Duration;

/// Noise protocol name, hashed into the initial chaining key.
pub const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// Mixed into the initial hash after the construction.
pub const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";
/// Prefix of the key for mac1: HASH(LABEL_MAC1 || receiver's static public key).
pub const LABEL_MAC1: &[u8] = b"mac1----";
/// Prefix of the key for cookie encryption: HASH(LABEL_COOKIE || cookie sender's public key).
pub const LABEL_COOKIE: &[u8] = b"cookie--";

/// The initiator rekeys once a session has sent this many messages.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// Width of the replay window in bits (RFC 6479 bitmap, kernel's COUNTER_BITS_TOTAL).
pub const COUNTER_BITS_TOTAL: u64 = 8192;
/// How far behind the newest counter a packet may still be accepted: one word of the bitmap is
/// always being recycled, so the usable window is one word short of the whole bitmap.
pub const COUNTER_WINDOW_SIZE: u64 = COUNTER_BITS_TOTAL - 64;
/// No session sends or accepts a counter at or beyond this.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - COUNTER_WINDOW_SIZE - 1;

/// The initiator rekeys a session this old when it next sends.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// A session this old is neither used nor accepted.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// Wait between handshake attempts (plus jitter), and the minimum gap between initiations.
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound of the random jitter added to handshake timers.
pub const REKEY_TIMEOUT_JITTER_MAX: Duration = Duration::from_millis(333);
/// Give up a handshake after this long without a response...
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// ...which is this many retries.
pub const MAX_TIMER_HANDSHAKES: u32 =
    (REKEY_ATTEMPT_TIME.as_secs() / REKEY_TIMEOUT.as_secs()) as u32;
/// Passive keepalive: sent this long after receiving data when we had nothing to send back.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// The initiator rekeys on receive when the current session is this old, so that a new one is in
/// place before REJECT_AFTER_TIME even if it never sends.
pub const REKEY_AFTER_TIME_RECV: Duration = Duration::from_secs(
    REJECT_AFTER_TIME.as_secs() - KEEPALIVE_TIMEOUT.as_secs() - REKEY_TIMEOUT.as_secs(),
);
/// New handshake when we sent data and heard nothing back for this long (plus jitter).
pub const NEW_HANDSHAKE_TIMEOUT: Duration =
    Duration::from_secs(KEEPALIVE_TIMEOUT.as_secs() + REKEY_TIMEOUT.as_secs());
/// All key material of a peer is erased after this long without a new session.
pub const ZERO_KEY_MATERIAL_AFTER: Duration = Duration::from_secs(REJECT_AFTER_TIME.as_secs() * 3);

/// The responder's cookie secret changes this often; a received cookie is used this long.
pub const COOKIE_SECRET_MAX_AGE: Duration = Duration::from_secs(120);
/// Safety margin: an initiator stops using a cookie this long before the responder would.
pub const COOKIE_SECRET_LATENCY: Duration = Duration::from_secs(5);

/// The device stays "under load" (mac2 required, per-source rate limits) this long after its
/// handshake queue was last seen backed up (wireguard-go's UnderLoadAfterTime, the kernel's
/// last_under_load + 1 s).
pub const UNDER_LOAD_AFTER_TIME: Duration = Duration::from_secs(1);

/// At most this many initiations per second are consumed from one peer (flood guard).
pub const INITIATIONS_PER_SECOND: u32 = 50;
/// Packets held per peer while its handshake is under way; older ones are dropped first.
pub const MAX_STAGED_PACKETS: usize = 128;

/// Handshake messages allowed per second from one source address under load.
pub const HANDSHAKES_PER_SECOND: u32 = 20;
/// Burst of handshake messages allowed from one source address under load.
pub const HANDSHAKES_BURSTABLE: u32 = 5;
/// Source addresses tracked by the handshake rate limiter; past this, unknown ones are refused.
pub const RATELIMITER_MAX_ENTRIES: usize = 1 << 16;

/// Message type bytes.
pub const MESSAGE_INITIATION: u8 = 1;
pub const MESSAGE_RESPONSE: u8 = 2;
pub const MESSAGE_COOKIE_REPLY: u8 = 3;
pub const MESSAGE_TRANSPORT: u8 = 4;

/// Message sizes in bytes.
pub const INITIATION_LEN: usize = 148;
pub const RESPONSE_LEN: usize = 92;
pub const COOKIE_REPLY_LEN: usize = 64;
pub const TRANSPORT_HEADER_LEN: usize = 16;
pub const AEAD_TAG_LEN: usize = 16;
/// Smallest transport message: a keepalive (header and tag, no payload).
pub const TRANSPORT_MIN_LEN: usize = TRANSPORT_HEADER_LEN + AEAD_TAG_LEN;
/// Plaintext of transport messages is zero-padded to a multiple of this.
pub const PADDING_MULTIPLE: usize = 16;
/// Bytes a transport message adds around the padded inner packet.
pub const TRANSPORT_OVERHEAD: usize = TRANSPORT_HEADER_LEN + AEAD_TAG_LEN;
