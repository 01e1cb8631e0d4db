//! The protocol's notion of "now", always passed in by the caller (`proto` reads no clock).
//!
//! Timers need a monotonic instant; handshake initiations carry a wall-clock TAI64N timestamp.
//! `Time` holds both, so one argument serves every entry point, and a test can build a fake
//! clock by adding durations to a starting `Time`.

use std::ops::Add;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Time {
    /// Monotonic: drives every timer.
    pub instant: Instant,
    /// Wall clock as time since the Unix epoch: only for TAI64N timestamps and for reporting
    /// the latest handshake.
    pub since_epoch: Duration,
}

impl Time {
    pub fn new(instant: Instant, since_epoch: Duration) -> Self {
        Time {
            instant,
            since_epoch,
        }
    }

    /// Time elapsed since `earlier` (zero if `earlier` is in the future).
    pub fn since(&self, earlier: Instant) -> Duration {
        self.instant.saturating_duration_since(earlier)
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time {
            instant: self.instant + d,
            since_epoch: self.since_epoch + d,
        }
    }
}

/// A TAI64N label: 8 bytes big-endian seconds since 1970 offset by 2^62 + 10 (TAI), then 4
/// bytes big-endian nanoseconds. Byte order makes comparison of the arrays chronological.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Tai64N(pub [u8; 12]);

impl Tai64N {
    const BASE: u64 = (1 << 62) + 10;
    /// Nanoseconds are rounded down to a multiple of 2^24 ns (about 16.8 ms), as wireguard-go and
    /// the kernel do, so the timestamp does not leak the sender's precise clock.
    const WHITEN_MASK: u32 = (1 << 24) - 1;

    pub fn from_since_epoch(since_epoch: Duration) -> Self {
        let mut out = [0u8; 12];
        out[..8].copy_from_slice(&(Self::BASE + since_epoch.as_secs()).to_be_bytes());
        let nanos = since_epoch.subsec_nanos() & !Self::WHITEN_MASK;
        out[8..].copy_from_slice(&nanos.to_be_bytes());
        Tai64N(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tai64n_orders_and_whitens() {
        let a = Tai64N::from_since_epoch(Duration::new(1_700_000_000, 0));
        let b = Tai64N::from_since_epoch(Duration::new(1_700_000_000, 5_000_000));
        let c = Tai64N::from_since_epoch(Duration::new(1_700_000_000, 20_000_000));
        let d = Tai64N::from_since_epoch(Duration::new(1_700_000_001, 0));
        assert_eq!(a, b, "within one whitening step the label is the same");
        assert!(a < c && c < d);
        assert_eq!(
            &a.0[..8],
            &(((1u64 << 62) + 10 + 1_700_000_000).to_be_bytes())
        );
    }
}
