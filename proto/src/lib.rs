//! suidao-proto: the WireGuard protocol, sans-I/O: bytes, `now` and randomness in, bytes and
//! actions out.
//!
//! Nothing here opens a socket, reads a clock or the OS's randomness, spawns a thread or knows
//! about tokio, which is what lets the handshake, the timers and the replay logic be tested
//! with a fake clock and a seeded generator, and fed to a fuzzer. Cargo keeps it that way: this
//! crate's dependencies are the cryptography and nothing else. Start reading at [`device`]: its
//! header walks through the whole pipeline.
//!
//! | file | holds |
//! |---|---|
//! | constants | every protocol constant, with the paper's names |
//! | messages | the four messages as zero-copy views |
//! | noise | HASH, MAC, HMAC, KDF, AEAD as the paper defines them |
//! | handshake | Noise_IKpsk2: initiation, response, session keys |
//! | cookie | mac1, mac2, cookie replies |
//! | ratelimiter | per-source token bucket for handshakes under load |
//! | session | a keypair: in-place seal/open, counters |
//! | replay | the replay window |
//! | timers | every timer of a peer |
//! | peer | per-peer state |
//! | device | the entry points: encapsulate, receive, update_timers |
//! | ip | the few inner-IP header fields cryptokey routing needs |
//! | time | `Time` (monotonic + wall clock) and TAI64N |
//! | keys | private, public and pre-shared keys, their base64 form |
//! | allowed_ips | the longest-prefix-match table of cryptokey routing |
#![forbid(unsafe_code)]

pub mod allowed_ips;
pub mod constants;
pub mod cookie;
pub mod device;
pub mod handshake;
pub mod ip;
pub mod keys;
pub mod l2;
pub mod messages;
pub mod noise;
pub mod peer;
pub mod ratelimiter;
pub mod replay;
pub mod session;
pub mod time;
pub mod timers;

#[cfg(test)]
mod device_tests;
#[cfg(test)]
mod lossy_tests;

pub use device::{Device, DeviceError, DropReason, Endpoint, Outgoing, Received, Sent};
pub use peer::{PeerConfig, PeerId, PeerInfo};
pub use time::Time;
