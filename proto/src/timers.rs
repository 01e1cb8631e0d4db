//! Every timer of a peer (paper, section 6; kernel timers.c), as deadlines compared against the
//! `now` the caller passes in. The events that arm and disarm them are methods named after the
//! event, as in wireguard-go and the kernel:
//!
//! | timer | armed by | fires after | does |
//! |---|---|---|---|
//! | retransmit_handshake | an initiation sent | REKEY_TIMEOUT + jitter | resend the initiation, or give up after MAX_TIMER_HANDSHAKES |
//! | send_keepalive | data received | KEEPALIVE_TIMEOUT | passive keepalive (if we sent nothing back meanwhile) |
//! | new_handshake | data sent | KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + jitter | new handshake (we heard nothing back) |
//! | zero_key_material | a session derived | REJECT_AFTER_TIME * 3 | erase every key of the peer |
//! | persistent_keepalive | any authenticated packet sent or received | the configured interval | keepalive |

use super::constants::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Raised when the control plane should look again before it planned to: a timer was armed
/// sooner than the wake-up it announced (`plan`), or a peer's endpoint changed. A steady flow
/// re-arms its timers later than the plan and raises nothing, so a caller can sleep until its
/// next deadline instead of polling, and a data path can check after every batch (one relaxed
/// load).
#[derive(Debug)]
pub struct Attention {
    raised: AtomicBool,
    /// The announced wake-up, in nanoseconds after `base`; u64::MAX: none (every deadline
    /// armed raises).
    planned: AtomicU64,
    base: OnceLock<Instant>,
}

impl Default for Attention {
    fn default() -> Self {
        Attention {
            raised: AtomicBool::new(false),
            planned: AtomicU64::new(u64::MAX),
            base: OnceLock::new(),
        }
    }
}

impl Attention {
    fn nanos(&self, at: Instant) -> u64 {
        let base = *self.base.get_or_init(|| at);
        u64::try_from(at.saturating_duration_since(base).as_nanos()).unwrap_or(u64::MAX - 1)
    }

    pub fn raise(&self) {
        // Read first: no write (and no cache-line traffic between workers) when already up.
        if !self.raised.load(Ordering::Relaxed) {
            self.raised.store(true, Ordering::Release);
        }
    }

    /// A deadline was set for `at`: raise if that is sooner than the plan.
    fn armed(&self, at: Instant) {
        let planned = self.planned.load(Ordering::Acquire);
        if planned == u64::MAX || self.nanos(at) < planned {
            self.raise();
        }
    }

    /// The caller will look again at `at` (None: only when raised).
    pub fn plan(&self, at: Option<Instant>) {
        let v = at.map_or(u64::MAX, |a| self.nanos(a));
        self.planned.store(v, Ordering::Release);
    }

    /// Whether it was raised since the last call (and lowers it).
    pub fn take(&self) -> bool {
        self.raised.load(Ordering::Relaxed) && self.raised.swap(false, Ordering::AcqRel)
    }
}

/// What expired timers ask the peer to do.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TimerActions {
    /// Send a handshake initiation (a retry if `retry`).
    pub initiate: bool,
    pub retry: bool,
    /// Give up the handshake: drop the staged packets.
    pub give_up: bool,
    /// Send a keepalive.
    pub keepalive: bool,
    /// Erase all key material.
    pub zero_keys: bool,
}

#[derive(Debug)]
pub struct Timers {
    pub retransmit_handshake: Option<Instant>,
    pub send_keepalive: Option<Instant>,
    pub new_handshake: Option<Instant>,
    pub zero_key_material: Option<Instant>,
    pub persistent_keepalive: Option<Instant>,
    /// Retries of the current handshake so far.
    pub handshake_attempts: u32,
    /// Data arrived while a passive keepalive was already pending: send another after it.
    need_another_keepalive: bool,
    /// The configured persistent keepalive interval (None: off).
    pub persistent_interval: Option<Duration>,
    jitter: Jitter,
    attention: Arc<Attention>,
}

/// Jitter needs no secrecy, only spread: each peer's timers carry a xorshift generator, seeded
/// once from the device's randomness (the caller's, so a simulation that replays a seed gets
/// the same jitter), and arming a timer costs no system call and no lock.
#[derive(Debug, Clone)]
struct Jitter(u64);

impl Jitter {
    fn next(&mut self) -> Duration {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        let max = REKEY_TIMEOUT_JITTER_MAX.as_millis() as u64;
        Duration::from_millis((x >> 32) % (max + 1))
    }
}

fn expired(deadline: &mut Option<Instant>, now: Instant) -> bool {
    if deadline.is_some_and(|d| now >= d) {
        *deadline = None;
        true
    } else {
        false
    }
}

impl Timers {
    /// `seed`: for the jitter (any value; zero is made odd). `attention`: told of every
    /// deadline set.
    pub fn new(
        persistent_interval: Option<Duration>,
        seed: u64,
        attention: Arc<Attention>,
    ) -> Self {
        Timers {
            retransmit_handshake: None,
            send_keepalive: None,
            new_handshake: None,
            zero_key_material: None,
            persistent_keepalive: None,
            handshake_attempts: 0,
            need_another_keepalive: false,
            persistent_interval,
            jitter: Jitter(seed | 1),
            attention,
        }
    }

    /// Sets a deadline (raising `attention` if it is sooner than the caller's plan).
    fn arm(slot: &mut Option<Instant>, at: Instant, attention: &Attention) {
        attention.armed(at);
        *slot = Some(at);
    }

    /// Raises `attention` (for the peer's other news: a new endpoint, a keepalive owed).
    pub fn call_attention(&self) {
        self.attention.raise();
    }

    /// We sent a data packet (not a keepalive).
    pub fn data_sent(&mut self, now: Instant) {
        if self.new_handshake.is_none() {
            let at = now + NEW_HANDSHAKE_TIMEOUT + self.jitter.next();
            Self::arm(&mut self.new_handshake, at, &self.attention);
        }
    }

    /// We received a data packet (not a keepalive).
    pub fn data_received(&mut self, now: Instant) {
        if self.send_keepalive.is_none() {
            Self::arm(
                &mut self.send_keepalive,
                now + KEEPALIVE_TIMEOUT,
                &self.attention,
            );
        } else {
            self.need_another_keepalive = true;
        }
    }

    /// We sent any authenticated packet (data, keepalive, handshake): it carries the
    /// acknowledgement a passive keepalive would.
    pub fn any_authenticated_packet_sent(&mut self) {
        self.send_keepalive = None;
    }

    /// We received any authenticated packet: the peer is alive, no need for a new handshake.
    pub fn any_authenticated_packet_received(&mut self) {
        self.new_handshake = None;
    }

    /// Any authenticated packet went either way: restart the persistent keepalive.
    pub fn any_authenticated_packet_traversal(&mut self, now: Instant) {
        if let Some(interval) = self.persistent_interval {
            Self::arm(
                &mut self.persistent_keepalive,
                now + interval,
                &self.attention,
            );
        }
    }

    pub fn handshake_initiated(&mut self, now: Instant) {
        let at = now + REKEY_TIMEOUT + self.jitter.next();
        Self::arm(&mut self.retransmit_handshake, at, &self.attention);
    }

    pub fn handshake_complete(&mut self) {
        self.retransmit_handshake = None;
        self.handshake_attempts = 0;
    }

    pub fn session_derived(&mut self, now: Instant) {
        Self::arm(
            &mut self.zero_key_material,
            now + ZERO_KEY_MATERIAL_AFTER,
            &self.attention,
        );
    }

    /// A new (not retried) handshake starts: count retries from zero.
    pub fn handshake_started_fresh(&mut self) {
        self.handshake_attempts = 0;
    }

    /// Removes every deadline (the peer was removed or its keys erased).
    pub fn stop_all(&mut self) {
        self.retransmit_handshake = None;
        self.send_keepalive = None;
        self.new_handshake = None;
        self.zero_key_material = None;
        self.persistent_keepalive = None;
        self.need_another_keepalive = false;
        self.handshake_attempts = 0;
    }

    /// The earliest deadline, for a caller that wants to sleep until something is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.retransmit_handshake,
            self.send_keepalive,
            self.new_handshake,
            self.zero_key_material,
            self.persistent_keepalive,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Fires every timer due at `now` and says what to do.
    pub fn expire(&mut self, now: Instant) -> TimerActions {
        let mut act = TimerActions::default();
        if expired(&mut self.retransmit_handshake, now) {
            if self.handshake_attempts > MAX_TIMER_HANDSHAKES {
                // Give up: nothing queued survives, no keepalive for a dead session, and the
                // keys go in REJECT_AFTER_TIME * 3 unless already scheduled.
                act.give_up = true;
                self.send_keepalive = None;
                if self.zero_key_material.is_none() {
                    self.zero_key_material = Some(now + ZERO_KEY_MATERIAL_AFTER);
                }
            } else {
                self.handshake_attempts += 1;
                act.initiate = true;
                act.retry = true;
            }
        }
        if expired(&mut self.send_keepalive, now) {
            act.keepalive = true;
            if self.need_another_keepalive {
                self.need_another_keepalive = false;
                self.send_keepalive = Some(now + KEEPALIVE_TIMEOUT);
            }
        }
        if expired(&mut self.new_handshake, now) {
            act.initiate = true;
        }
        if expired(&mut self.zero_key_material, now) {
            act.zero_keys = true;
        }
        if expired(&mut self.persistent_keepalive, now) && self.persistent_interval.is_some() {
            act.keepalive = true;
        }
        act
    }
}
