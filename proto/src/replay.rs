//! The receive-side replay window: a sliding bitmap of COUNTER_BITS_TOTAL bits in the style of
//! RFC 6479, as the kernel implements it.
//!
//! The bitmap is a ring of 64-bit words. Moving the window forward clears only the words it
//! moves over, so the cost of a jump is bounded by the bitmap size and in-order traffic touches
//! one word. The caller checks a counter only after the packet's tag has verified, so forged
//! packets cannot move the window.

use super::constants::{COUNTER_BITS_TOTAL, COUNTER_WINDOW_SIZE, REJECT_AFTER_MESSAGES};

const WORD_BITS: u64 = 64;
const WORDS: usize = (COUNTER_BITS_TOTAL / WORD_BITS) as usize;

#[derive(Clone)]
pub struct ReplayWindow {
    /// One more than the greatest counter accepted so far (0: nothing accepted yet).
    next: u64,
    bitmap: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            next: 0,
            bitmap: [0; WORDS],
        }
    }
}

impl ReplayWindow {
    /// Accepts `counter` once: false if it was seen already, is too far behind the newest, or is
    /// at or past REJECT_AFTER_MESSAGES.
    pub fn check_and_set(&mut self, counter: u64) -> bool {
        if counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        // Work with counter + 1 so that 0 can mean "nothing yet".
        let c = counter + 1;
        if c + COUNTER_WINDOW_SIZE < self.next {
            return false;
        }
        let word = c / WORD_BITS;
        if c > self.next {
            let current_word = self.next / WORD_BITS;
            let advance = (word - current_word).min(WORDS as u64);
            for i in 1..=advance {
                self.bitmap[((current_word + i) % WORDS as u64) as usize] = 0;
            }
            self.next = c;
        }
        let slot = &mut self.bitmap[(word % WORDS as u64) as usize];
        let bit = 1u64 << (c % WORD_BITS);
        let fresh = *slot & bit == 0;
        *slot |= bit;
        fresh
    }

    /// The greatest counter accepted so far.
    pub fn newest(&self) -> Option<u64> {
        self.next.checked_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::HashSet;

    #[test]
    fn in_order_then_duplicates() {
        let mut w = ReplayWindow::default();
        for c in 0..20_000 {
            assert!(w.check_and_set(c), "{c}");
        }
        for c in 19_000..20_000 {
            assert!(!w.check_and_set(c), "{c} twice");
        }
        assert_eq!(w.newest(), Some(19_999));
    }

    #[test]
    fn reordered_within_window_accepted_once() {
        let mut w = ReplayWindow::default();
        assert!(w.check_and_set(5000));
        for c in (0..5000).rev() {
            assert!(w.check_and_set(c), "{c}");
            assert!(!w.check_and_set(c), "{c} again");
        }
    }

    #[test]
    fn window_edges() {
        let mut w = ReplayWindow::default();
        let top = 100_000;
        assert!(w.check_and_set(top));
        // The oldest acceptable counter is exactly COUNTER_WINDOW_SIZE behind the newest.
        assert!(w.check_and_set(top - COUNTER_WINDOW_SIZE));
        assert!(!w.check_and_set(top - COUNTER_WINDOW_SIZE - 1));
        assert!(!w.check_and_set(0));
        const { assert!(COUNTER_BITS_TOTAL >= 8192, "window of at least 8192 bits") };
        // A jump far ahead forgets everything behind the new window.
        assert!(w.check_and_set(top + 1_000_000));
        assert!(!w.check_and_set(top));
        assert!(w.check_and_set(top + 1_000_000 - 1));
    }

    #[test]
    fn reject_after_messages() {
        let mut w = ReplayWindow::default();
        assert!(w.check_and_set(REJECT_AFTER_MESSAGES - 1));
        assert!(!w.check_and_set(REJECT_AFTER_MESSAGES));
        assert!(!w.check_and_set(REJECT_AFTER_MESSAGES + 1));
        assert!(!w.check_and_set(u64::MAX));
        assert!(w.check_and_set(REJECT_AFTER_MESSAGES - 2));
    }

    /// Against a naive model: a set of everything seen and the greatest counter.
    #[test]
    fn matches_naive_model() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(6479);
        let mut w = ReplayWindow::default();
        let mut seen = HashSet::new();
        let mut max: Option<u64> = None;
        let mut base = 0u64;
        for _ in 0..200_000 {
            // Mostly near the front, sometimes far behind or far ahead.
            let c = match rng.gen_range(0..100) {
                0 => base + rng.gen_range(0..100_000),
                1 => base.saturating_sub(rng.gen_range(0..20_000)),
                _ => (base + rng.gen_range(0..64)).saturating_sub(rng.gen_range(0..9000)),
            };
            base = base.max(c);
            let expected = !seen.contains(&c)
                && match max {
                    None => true,
                    Some(m) => c + COUNTER_WINDOW_SIZE >= m,
                };
            assert_eq!(w.check_and_set(c), expected, "counter {c}, max {max:?}");
            if expected {
                seen.insert(c);
                max = Some(max.map_or(c, |m| m.max(c)));
            }
        }
    }
}
