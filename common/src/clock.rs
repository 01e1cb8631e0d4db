//! The real clock, read outside `proto` and handed to it as a [`Time`].
//!
//! The monotonic part follows CLOCK_BOOTTIME, as the kernel's WireGuard does: it keeps running
//! while the machine sleeps, so a laptop that wakes after an hour finds its sessions an hour
//! older (past REJECT_AFTER_TIME, so not used) rather than as it left them. Rust's `Instant`
//! reads CLOCK_MONOTONIC, which stops during suspend; protocol instants are therefore one
//! `Instant` taken at start plus the boot-time clock's progress since then.
//!
//! Tests of the protocol's timers against real processes (rekeying many times during one
//! transfer) need the clock to run faster. Debug builds therefore honour
//! `SUIDAO_TEST_CLOCK_SCALE=N`: protocol time runs N times faster than real time, so REKEY_AFTER
//! _TIME (120 s) passes in 120/N real seconds. It is a test-only setting: release builds ignore
//! it, and no config file has it.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use suidao_proto::Time;

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// CLOCK_BOOTTIME: monotonic, and counting time spent suspended.
fn boottime() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime writes only into it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        // Never on Linux since 2.6.39; fall back to a clock that at least never goes back.
        return ANCHOR
            .get()
            .map_or(Duration::ZERO, |a| a.boot + a.instant.elapsed());
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// An `Instant` and the boot-time clock read together, at the first call.
struct Anchor {
    instant: Instant,
    boot: Duration,
    since_epoch: Duration,
}

static ANCHOR: std::sync::OnceLock<Anchor> = std::sync::OnceLock::new();

/// The protocol instant for a boot-time reading: the anchor's `Instant`, moved on by the
/// boot-time clock's progress (scaled for tests).
fn instant_at(anchor: &Anchor, boot: Duration, scale: u32) -> Instant {
    anchor.instant + boot.saturating_sub(anchor.boot) * scale
}

/// How much faster than real time protocol time runs (1 unless a debug build is told otherwise).
pub fn scale() -> u32 {
    #[cfg(debug_assertions)]
    {
        use std::sync::OnceLock;
        static SCALE: OnceLock<u32> = OnceLock::new();
        *SCALE.get_or_init(|| {
            std::env::var("SUIDAO_TEST_CLOCK_SCALE")
                .ok()
                .and_then(|s| s.parse().ok())
                .filter(|s| *s >= 1)
                .unwrap_or(1)
        })
    }
    #[cfg(not(debug_assertions))]
    {
        1
    }
}

pub fn now() -> Time {
    let scale = scale();
    let anchor = ANCHOR.get_or_init(|| Anchor {
        instant: Instant::now(),
        boot: boottime(),
        since_epoch: since_epoch(),
    });
    let boot = boottime();
    let instant = instant_at(anchor, boot, scale);
    let since_epoch = if scale == 1 {
        since_epoch()
    } else {
        anchor.since_epoch + boot.saturating_sub(anchor.boot) * scale
    };
    Time::new(instant, since_epoch)
}

/// A real-time duration for a protocol-time one (to sleep until a timer is due).
pub fn real(d: Duration) -> Duration {
    d / scale()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A suspend: CLOCK_MONOTONIC (and so `Instant`) stands still while the boot-time clock
    /// runs on. Protocol time follows the boot-time clock, so a session made before sleeping
    /// for an hour is an hour old after waking.
    #[test]
    fn protocol_time_counts_time_asleep() {
        let anchor = Anchor {
            instant: Instant::now(),
            boot: Duration::from_secs(100),
            since_epoch: Duration::ZERO,
        };
        let before = instant_at(&anchor, Duration::from_secs(110), 1);
        // An hour asleep: the boot-time clock moved 3600 s, `Instant::now()` would not have.
        let after = instant_at(&anchor, Duration::from_secs(3710), 1);
        assert_eq!(after - before, Duration::from_secs(3600));
        assert_eq!(before - anchor.instant, Duration::from_secs(10));
    }

    #[test]
    fn now_follows_the_boot_time_clock() {
        let a = now();
        let boot_a = boottime();
        std::thread::sleep(Duration::from_millis(20));
        let b = now();
        let boot_b = boottime();
        let moved = b.instant - a.instant;
        let boot_moved = boot_b - boot_a;
        assert!(moved >= Duration::from_millis(20) / scale().max(1) * scale());
        assert!(moved <= boot_moved * scale() + Duration::from_millis(5));
    }
}
