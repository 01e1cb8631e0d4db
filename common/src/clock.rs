//! The real clock, read outside `proto` and handed to it as a [`Time`].
//!
//! Tests of the protocol's timers against real processes (rekeying many times during one
//! transfer) need the clock to run faster. Debug builds therefore honour
//! `SUIDAO_TEST_CLOCK_SCALE=N`: protocol time runs N times faster than real time, so REKEY_AFTER
//! _TIME (120 s) passes in 120/N real seconds. It is a test-only setting: release builds ignore
//! it, and no config file has it.

use crate::proto::Time;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn real_now() -> Time {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Time::new(Instant::now(), since_epoch)
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
    if scale == 1 {
        return real_now();
    }
    use std::sync::OnceLock;
    static START: OnceLock<Time> = OnceLock::new();
    let start = *START.get_or_init(real_now);
    let elapsed = start.instant.elapsed();
    start + elapsed * scale
}

/// A real-time duration for a protocol-time one (to sleep until a timer is due).
pub fn real(d: Duration) -> Duration {
    d / scale()
}
