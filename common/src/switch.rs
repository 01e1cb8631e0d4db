//! The layer-2 switch (`mode = "l2"`): which port a frame goes to, as a Linux bridge or tinc's
//! switch mode decides it. The ports are this host (the TAP, and whatever is bridged behind it)
//! and each peer.
//!
//! - Source MACs are learned per port from authenticated frames, and forgotten after `mac_age`
//!   without a frame from them; a MAC that shows up on another port moves there (counted).
//! - A frame to a learned MAC goes to that port alone; broadcast, multicast and unknown
//!   unicast go to every port but the one it came from (split horizon: a frame never goes
//!   back where it came from, so a hub with several peers is a switch between them).
//! - Per peer, the layer-2 form of cryptokey routing: the source MACs it may use
//!   (`allowed_macs`), how many it may have learned at once (`max_macs`, and `mac_table_size`
//!   for the whole table), and how many frames a second it may have flooded (`flood_rate`, a
//!   token bucket), so one peer's broadcast storm does not starve the others.
//!
//! MACs come from the network, so the table is a SipHash map (keyed per process), bounded, and
//! looked up under one short lock per frame.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use suidao_proto::l2::{is_group, Mac};
use suidao_proto::{DropReason, PeerId};

/// Where a MAC was learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Port {
    /// This host: the TAP (and a bridge behind it).
    Local,
    Peer(PeerId),
}

/// Where a frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    /// To this host only.
    Local,
    /// To this peer only.
    Peer(PeerId),
    /// To every port but the one it came from.
    Flood,
    /// Nowhere; counted under the reason when there is one (a frame for a MAC on the port it
    /// came from is not).
    Drop(Option<DropReason>),
}

/// A peer's limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRules {
    /// The only source MACs it may use; empty: any.
    pub allowed_macs: Vec<Mac>,
    pub max_macs: usize,
    /// Flooded frames per second (and the burst).
    pub flood_rate: u32,
}

/// The switch's settings (`[interface]`'s layer-2 keys).
#[derive(Clone, Debug)]
pub struct Settings {
    pub mac_age: Duration,
    pub mac_table_size: usize,
    /// For peers without rules of their own.
    pub default_rules: PeerRules,
}

struct Learned {
    port: Port,
    seen: Instant,
}

/// A peer's token bucket for flooded frames.
struct Bucket {
    tokens: f64,
    at: Instant,
}

struct Table {
    macs: HashMap<Mac, Learned>,
    /// MACs learned per peer.
    counts: HashMap<PeerId, usize>,
    rules: HashMap<PeerId, PeerRules>,
    buckets: HashMap<PeerId, Bucket>,
}

pub struct Switch {
    settings: Settings,
    table: Mutex<Table>,
    moves: AtomicU64,
}

/// A learned MAC as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub mac: Mac,
    pub port: Port,
    pub age: Duration,
}

impl Switch {
    pub fn new(settings: Settings) -> Switch {
        Switch {
            settings,
            table: Mutex::new(Table {
                macs: HashMap::new(),
                counts: HashMap::new(),
                rules: HashMap::new(),
                buckets: HashMap::new(),
            }),
            moves: AtomicU64::new(0),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The peers' rules, all of them at once (at `up` and after a reload): MACs a peer learned
    /// that its new `allowed_macs` no longer allow are forgotten, and so is every MAC of a peer
    /// that is gone.
    pub fn set_rules(&self, rules: HashMap<PeerId, PeerRules>) {
        let mut t = self.table();
        let Table {
            macs,
            counts,
            buckets,
            ..
        } = &mut *t;
        macs.retain(|mac, l| match l.port {
            Port::Local => true,
            Port::Peer(p) => {
                let keep = rules
                    .get(&p)
                    .is_some_and(|r| r.allowed_macs.is_empty() || r.allowed_macs.contains(mac));
                if !keep {
                    if let Some(c) = counts.get_mut(&p) {
                        *c = c.saturating_sub(1);
                    }
                }
                keep
            }
        });
        buckets.retain(|p, _| rules.contains_key(p));
        counts.retain(|p, _| rules.contains_key(p));
        t.rules = rules;
    }

    /// How many times a MAC moved from one port to another.
    pub fn moves(&self) -> u64 {
        self.moves.load(Ordering::Relaxed)
    }

    /// A frame from peer `from` with these MACs: learns its source and says where it goes.
    pub fn from_peer(&self, from: PeerId, src: Mac, dst: Mac, now: Instant) -> Forward {
        let mut t = self.table();
        if is_group(&src) {
            return Forward::Drop(Some(DropReason::MacNotAllowed));
        }
        // (Per frame: no copy of the rules, whose MAC list may be long.)
        let rules = t.rules.get(&from).unwrap_or(&self.settings.default_rules);
        if !rules.allowed_macs.is_empty() && !rules.allowed_macs.contains(&src) {
            return Forward::Drop(Some(DropReason::MacNotAllowed));
        }
        let (max_macs, flood_rate) = (rules.max_macs, rules.flood_rate);
        if let Err(reason) = self.learn(&mut t, Port::Peer(from), src, max_macs, now) {
            return Forward::Drop(Some(reason));
        }
        match self.lookup(&mut t, &dst, now) {
            Some(Port::Local) => Forward::Local,
            Some(Port::Peer(p)) if p == from => Forward::Drop(None),
            Some(Port::Peer(p)) => Forward::Peer(p),
            None => {
                if Self::take_token(&mut t, from, flood_rate, now) {
                    Forward::Flood
                } else {
                    Forward::Drop(Some(DropReason::FloodLimit))
                }
            }
        }
    }

    /// A frame from this host (read from the TAP): learns its source as local and says where
    /// it goes (`Local`: nowhere, it is for this side).
    pub fn from_local(&self, src: Mac, dst: Mac, now: Instant) -> Forward {
        let mut t = self.table();
        if !is_group(&src) {
            // Never refused: this side's own MACs. (The table's bound still holds: a full
            // table learns no more, and the frame is flooded if its destination is unknown.)
            let _ = self.learn(&mut t, Port::Local, src, usize::MAX, now);
        }
        match self.lookup(&mut t, &dst, now) {
            Some(Port::Local) => Forward::Drop(None),
            Some(Port::Peer(p)) => Forward::Peer(p),
            None => Forward::Flood,
        }
    }

    /// Where `dst` was learned, if not too long ago (group addresses never are).
    fn lookup(&self, t: &mut Table, dst: &Mac, now: Instant) -> Option<Port> {
        if is_group(dst) {
            return None;
        }
        let l = t.macs.get(dst)?;
        if now.saturating_duration_since(l.seen) < self.settings.mac_age {
            return Some(l.port);
        }
        let port = l.port;
        Self::forget(t, dst, port);
        None
    }

    fn forget(t: &mut Table, mac: &Mac, port: Port) {
        t.macs.remove(mac);
        if let Port::Peer(p) = port {
            if let Some(c) = t.counts.get_mut(&p) {
                *c = c.saturating_sub(1);
            }
        }
    }

    /// Learns (or refreshes, or moves) `src` on `port`.
    fn learn(
        &self,
        t: &mut Table,
        port: Port,
        src: Mac,
        max: usize,
        now: Instant,
    ) -> Result<(), DropReason> {
        if let Some(l) = t.macs.get_mut(&src) {
            if l.port == port {
                l.seen = now;
                return Ok(());
            }
        }
        let count = |t: &Table| match port {
            Port::Peer(p) => t.counts.get(&p).copied().unwrap_or(0),
            Port::Local => 0,
        };
        let full = |t: &Table| count(t) >= max || t.macs.len() >= self.settings.mac_table_size;
        if full(t) {
            // Make room from what has aged out first.
            self.expire(t, now);
            if full(t) {
                return Err(DropReason::MacLimit);
            }
        }
        if let Some(old) = t.macs.get(&src).map(|l| l.port) {
            Self::forget(t, &src, old);
            self.moves.fetch_add(1, Ordering::Relaxed);
        }
        t.macs.insert(src, Learned { port, seen: now });
        if let Port::Peer(p) = port {
            *t.counts.entry(p).or_insert(0) += 1;
        }
        Ok(())
    }

    fn expire(&self, t: &mut Table, now: Instant) {
        let age = self.settings.mac_age;
        let old: Vec<(Mac, Port)> = t
            .macs
            .iter()
            .filter(|(_, l)| now.saturating_duration_since(l.seen) >= age)
            .map(|(m, l)| (*m, l.port))
            .collect();
        for (mac, port) in old {
            Self::forget(t, &mac, port);
        }
    }

    fn take_token(t: &mut Table, peer: PeerId, rate: u32, now: Instant) -> bool {
        let rate = f64::from(rate.max(1));
        let b = t.buckets.entry(peer).or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(rate);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// What is learned now (aged-out entries left out), for `status`.
    pub fn entries(&self, now: Instant) -> Vec<Entry> {
        let t = self.table();
        let mut v: Vec<Entry> = t
            .macs
            .iter()
            .map(|(mac, l)| Entry {
                mac: *mac,
                port: l.port,
                age: now.saturating_duration_since(l.seen),
            })
            .filter(|e| e.age < self.settings.mac_age)
            .collect();
        v.sort_by_key(|e| (e.age, e.mac));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = [2, 0, 0, 0, 0, 0xa];
    const B: Mac = [2, 0, 0, 0, 0, 0xb];
    const C: Mac = [2, 0, 0, 0, 0, 0xc];
    const L: Mac = [2, 0, 0, 0, 0, 0x1];
    const BROADCAST: Mac = [0xff; 6];

    fn switch(age: u64, rules: &[(PeerId, PeerRules)]) -> Switch {
        let s = Switch::new(Settings {
            mac_age: Duration::from_secs(age),
            mac_table_size: 8,
            default_rules: rules_with(&[], 4, 100),
        });
        s.set_rules(rules.iter().cloned().collect());
        s
    }

    fn rules_with(allowed: &[Mac], max_macs: usize, flood_rate: u32) -> PeerRules {
        PeerRules {
            allowed_macs: allowed.to_vec(),
            max_macs,
            flood_rate,
        }
    }

    #[test]
    fn learns_forwards_floods_and_never_sends_back() {
        let s = switch(300, &[]);
        let t = Instant::now();
        // Unknown: flooded; the source is learned on the way.
        assert_eq!(s.from_peer(1, A, BROADCAST, t), Forward::Flood);
        assert_eq!(s.from_peer(2, B, C, t), Forward::Flood);
        assert_eq!(s.from_local(L, BROADCAST, t), Forward::Flood);
        // Learned: that port only.
        assert_eq!(s.from_peer(1, A, B, t), Forward::Peer(2));
        assert_eq!(s.from_peer(2, B, L, t), Forward::Local);
        assert_eq!(s.from_local(L, A, t), Forward::Peer(1));
        // Never back to the port it came from.
        assert_eq!(s.from_peer(1, A, A, t), Forward::Drop(None));
        assert_eq!(s.from_local(L, L, t), Forward::Drop(None));
        assert_eq!(s.entries(t).len(), 3);
    }

    #[test]
    fn a_mac_that_moves_is_learned_again_and_counted() {
        let s = switch(300, &[]);
        let t = Instant::now();
        s.from_peer(1, A, BROADCAST, t);
        assert_eq!(s.from_local(L, A, t), Forward::Peer(1));
        s.from_peer(2, A, BROADCAST, t);
        assert_eq!(s.moves(), 1);
        assert_eq!(s.from_local(L, A, t), Forward::Peer(2));
        // To this side (a VM migrated here).
        s.from_local(A, BROADCAST, t);
        assert_eq!(s.moves(), 2);
        assert_eq!(s.from_peer(2, B, A, t), Forward::Local);
    }

    #[test]
    fn macs_age_out() {
        let s = switch(2, &[]);
        let t = Instant::now();
        s.from_peer(1, A, BROADCAST, t);
        assert_eq!(
            s.from_local(L, A, t + Duration::from_secs(1)),
            Forward::Peer(1)
        );
        assert_eq!(
            s.from_local(L, A, t + Duration::from_secs(2)),
            Forward::Flood
        );
        assert!(s
            .entries(t + Duration::from_secs(3))
            .iter()
            .all(|e| e.port == Port::Local));
    }

    #[test]
    fn allowed_macs_and_group_sources_are_enforced() {
        let s = switch(300, &[(1, rules_with(&[A], 4, 100))]);
        let t = Instant::now();
        assert_eq!(s.from_peer(1, A, BROADCAST, t), Forward::Flood);
        assert_eq!(
            s.from_peer(1, B, BROADCAST, t),
            Forward::Drop(Some(DropReason::MacNotAllowed))
        );
        assert_eq!(
            s.from_peer(2, BROADCAST, A, t),
            Forward::Drop(Some(DropReason::MacNotAllowed))
        );
        // A rule change forgets what it no longer allows.
        s.set_rules([(1, rules_with(&[C], 4, 100))].into_iter().collect());
        assert_eq!(s.from_local(L, A, t), Forward::Flood);
    }

    #[test]
    fn max_macs_per_peer_and_for_the_table() {
        let s = switch(300, &[(1, rules_with(&[], 2, 100))]);
        let t = Instant::now();
        let mac = |i: u8| [2, 0, 0, 0, 1, i];
        assert_eq!(s.from_peer(1, mac(1), BROADCAST, t), Forward::Flood);
        assert_eq!(s.from_peer(1, mac(2), BROADCAST, t), Forward::Flood);
        assert_eq!(
            s.from_peer(1, mac(3), BROADCAST, t),
            Forward::Drop(Some(DropReason::MacLimit))
        );
        // Known ones still pass.
        assert_eq!(s.from_peer(1, mac(2), BROADCAST, t), Forward::Flood);
        // The table holds 8: peers 2 and 3 (default 4 each) fill it.
        for i in 10..16 {
            let p = if i < 14 { 2 } else { 3 };
            assert_eq!(s.from_peer(p, mac(i), BROADCAST, t), Forward::Flood, "{i}");
        }
        assert_eq!(
            s.from_peer(3, mac(20), BROADCAST, t),
            Forward::Drop(Some(DropReason::MacLimit))
        );
        // Once they age out there is room again.
        let later = t + Duration::from_secs(301);
        assert_eq!(s.from_peer(3, mac(20), BROADCAST, later), Forward::Flood);
    }

    #[test]
    fn floods_are_capped_per_peer() {
        let s = switch(300, &[(1, rules_with(&[], 4, 10))]);
        let t = Instant::now();
        let flooded = (0..100)
            .filter(|_| s.from_peer(1, A, BROADCAST, t) == Forward::Flood)
            .count();
        assert_eq!(flooded, 10, "the burst");
        // Another peer is not affected, and the bucket fills again with time.
        assert_eq!(s.from_peer(2, B, BROADCAST, t), Forward::Flood);
        let later = t + Duration::from_millis(500);
        let flooded = (0..100)
            .filter(|_| s.from_peer(1, A, BROADCAST, later) == Forward::Flood)
            .count();
        assert_eq!(flooded, 5);
        // Unicast to a learned MAC is not a flood.
        s.from_local(L, BROADCAST, t);
        assert_eq!(s.from_peer(1, A, L, later), Forward::Local);
    }
}
