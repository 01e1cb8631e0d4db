//! The WireGuard protocol, sans-I/O: bytes and `now` in, bytes and actions out.
//!
//! Nothing here opens a socket, reads a clock, spawns a thread or knows about tokio, which is
//! what lets the handshake, the timers and the replay logic be tested with a fake clock and fed
//! to a fuzzer. Start reading at [`device`]: its header walks through the whole pipeline.
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
#![deny(unsafe_code)]

pub mod constants;
pub mod cookie;
pub mod device;
pub mod handshake;
pub mod ip;
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
