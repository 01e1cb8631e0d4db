//! A token bucket per source address for handshake messages when the device is under load
//! (the kernel's ratelimiter.c): HANDSHAKES_PER_SECOND with a burst of HANDSHAKES_BURSTABLE.
//! IPv6 sources are grouped by /64, since one host usually owns a whole /64. The table has a
//! fixed maximum size, so a flood from many addresses cannot grow memory without bound.

use super::constants::*;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

const PACKET_COST: Duration = Duration::from_nanos(1_000_000_000 / HANDSHAKES_PER_SECOND as u64);
const MAX_TOKENS: Duration =
    Duration::from_nanos(PACKET_COST.as_nanos() as u64 * HANDSHAKES_BURSTABLE as u64);
/// An entry untouched this long is full again and can be forgotten.
const IDLE: Duration = Duration::from_secs(1);

#[derive(Clone, Copy)]
struct Bucket {
    tokens: Duration,
    last: Instant,
}

#[derive(Default)]
pub struct RateLimiter {
    buckets: HashMap<u128, Bucket>,
}

fn key(ip: IpAddr) -> u128 {
    match ip {
        // The top bit tells the families apart.
        IpAddr::V4(v4) => (1u128 << 127) | u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6) & !((1u128 << 64) - 1),
    }
}

impl RateLimiter {
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let k = key(ip);
        // A full table refuses new sources until the next `collect_garbage` (as the kernel's
        // does) rather than scanning every entry, under the mutex, for each new source of a
        // flood.
        if self.buckets.len() >= RATELIMITER_MAX_ENTRIES && !self.buckets.contains_key(&k) {
            return false;
        }
        let bucket = self.buckets.entry(k).or_insert(Bucket {
            tokens: MAX_TOKENS,
            last: now,
        });
        let refill = now.saturating_duration_since(bucket.last);
        bucket.tokens = (bucket.tokens + refill).min(MAX_TOKENS);
        bucket.last = now;
        if bucket.tokens >= PACKET_COST {
            bucket.tokens -= PACKET_COST;
            true
        } else {
            false
        }
    }

    /// Drops entries idle for a second (their buckets are full again anyway).
    pub fn collect_garbage(&mut self, now: Instant) {
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.last) < IDLE);
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let mut rl = RateLimiter::default();
        let ip: IpAddr = "198.18.0.1".parse().unwrap();
        let t = Instant::now();
        let allowed = (0..100).filter(|_| rl.allow(ip, t)).count();
        assert_eq!(allowed, HANDSHAKES_BURSTABLE as usize);
        // One second later: 20 more at most (the bucket holds only a burst of 5).
        let t1 = t + Duration::from_secs(1);
        let allowed = (0..100).filter(|_| rl.allow(ip, t1)).count();
        assert_eq!(allowed, HANDSHAKES_BURSTABLE as usize);
        // Steady: one every 50 ms passes.
        let mut ok = 0;
        for i in 1..=100 {
            if rl.allow(ip, t1 + PACKET_COST * i) {
                ok += 1;
            }
        }
        assert_eq!(ok, 100);
        // Another address has its own bucket.
        assert!(rl.allow("198.18.0.2".parse().unwrap(), t1));
    }

    #[test]
    fn ipv6_grouped_by_64_and_table_bounded() {
        let mut rl = RateLimiter::default();
        let t = Instant::now();
        for i in 0..HANDSHAKES_BURSTABLE {
            let ip: IpAddr = format!("2001:db8::{i}").parse().unwrap();
            assert!(rl.allow(ip, t));
        }
        assert!(!rl.allow("2001:db8::ffff".parse().unwrap(), t));
        assert!(rl.allow("2001:db8:0:1::1".parse().unwrap(), t));
        let mut rl = RateLimiter::default();
        for i in 0..RATELIMITER_MAX_ENTRIES as u32 {
            rl.allow(IpAddr::V4(i.into()), t);
        }
        assert_eq!(rl.len(), RATELIMITER_MAX_ENTRIES);
        let new: IpAddr = "203.0.113.1".parse().unwrap();
        assert!(!rl.allow(new, t), "table full");
        assert!(
            !rl.allow(new, t + IDLE),
            "a full table refuses new sources until garbage is collected, without scanning"
        );
        assert!(
            rl.allow(IpAddr::V4(7u32.into()), t),
            "known sources still pass"
        );
        rl.collect_garbage(t + IDLE);
        assert!(rl.allow(new, t + IDLE), "idle entries recycled");
        assert!(rl.len() <= RATELIMITER_MAX_ENTRIES);
    }
}
