//! Two devices over a simulated bad network (loss, delay, reordering, duplicates, a cut), with
//! a fake clock and every timer running: how long does traffic take to come back after the
//! link returns, and does a rekey ever stall it? Thousands of seeded runs in seconds, where
//! the end-to-end test in `tests/tests/bad_network.rs` can afford one.

use super::device::{Device, DropReason, Outgoing, Received, Sent};
use super::ip::tests::ipv4;
use super::peer::PeerConfig;
use super::time::Time;
use crate::keys::PrivateKey;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const A_TUN: [u8; 4] = [10, 0, 0, 1];
const B_TUN: [u8; 4] = [10, 0, 0, 2];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    A,
    B,
}

struct InFlight {
    at: Duration,
    seq: u64,
    to: Side,
    bytes: Vec<u8>,
}

impl PartialEq for InFlight {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at && self.seq == o.seq
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for InFlight {
    // Earliest first in a max-heap.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        o.at.cmp(&self.at).then(o.seq.cmp(&self.seq))
    }
}

/// One outage scenario (`Sim::run`).
#[derive(Clone, Copy, Debug)]
struct Plan {
    /// Seconds of two-way traffic (A sends every 100 ms, B answers each) before the cut.
    busy: u64,
    /// A and B keep sending data into the cut (retransmissions of a transfer that was cut).
    a_sends_into_cut: bool,
    b_sends_into_cut: bool,
    cut: Duration,
}

struct Sim {
    a: Device,
    b: Device,
    a_addr: SocketAddr,
    b_addr: SocketAddr,
    start: Time,
    elapsed: Duration,
    rng: StdRng,
    wire: BinaryHeap<InFlight>,
    seq: u64,
    cut: bool,
    loss: f64,
    /// What happened, when asked for (`trace`).
    trace: Option<Vec<String>>,
    /// Transport packets refused for an unknown receiver index: sealed on a session the
    /// receiving side had already dropped.
    refused: u64,
}

impl Sim {
    fn new(seed: u64, loss: f64) -> Sim {
        // Keys, indices and timer jitter all from the seed: a run replays exactly.
        let mut rng = StdRng::seed_from_u64(seed);
        let a_key = PrivateKey::generate(&mut rng);
        let b_key = PrivateKey::generate(&mut rng);
        let a_addr: SocketAddr = "198.18.0.1:40000".parse().unwrap();
        let b_addr: SocketAddr = "198.18.0.2:51820".parse().unwrap();
        let a = Device::new(a_key.clone(), StdRng::seed_from_u64(rng.gen()));
        let b = Device::new(b_key.clone(), StdRng::seed_from_u64(rng.gen()));
        // A is the client: it knows B's endpoint and keeps the path open every 25 s.
        let mut to_b = PeerConfig::new(b_key.public_key());
        to_b.endpoint = Some(b_addr);
        to_b.allowed_ips = vec!["10.0.0.2/32".parse().unwrap()];
        to_b.persistent_keepalive = Some(Duration::from_secs(25));
        a.add_peer(to_b).unwrap();
        let mut to_a = PeerConfig::new(a_key.public_key());
        to_a.allowed_ips = vec!["10.0.0.1/32".parse().unwrap()];
        b.add_peer(to_a).unwrap();
        Sim {
            a,
            b,
            a_addr,
            b_addr,
            start: Time::new(Instant::now(), Duration::from_secs(1_800_000_000)),
            elapsed: Duration::ZERO,
            rng: StdRng::seed_from_u64(seed),
            wire: BinaryHeap::new(),
            seq: 0,
            cut: false,
            loss,
            trace: None,
            refused: 0,
        }
    }

    fn now(&self) -> Time {
        self.start + self.elapsed
    }

    fn dev(&self, side: Side) -> &Device {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }

    /// Adds to the trace, when there is one (the text is made only then).
    fn log(&mut self, what: impl FnOnce() -> String) {
        let at = self.elapsed.as_secs_f64();
        if let Some(t) = &mut self.trace {
            t.push(format!("{at:>9.3} {}", what()));
        }
    }

    /// Puts datagrams from `from` on the bad link.
    fn transmit(&mut self, from: Side, out: Vec<Outgoing>) {
        let to = match from {
            Side::A => Side::B,
            Side::B => Side::A,
        };
        for o in out {
            let kind = o.bytes[0];
            if self.cut || self.rng.gen_bool(self.loss) {
                self.log(|| format!("{from:?} -> {to:?} type {kind} lost"));
                continue;
            }
            let copies = if self.rng.gen_bool(0.05) { 2 } else { 1 };
            for _ in 0..copies {
                let delay = Duration::from_millis(50 + self.rng.gen_range(0..20));
                self.seq += 1;
                self.wire.push(InFlight {
                    at: self.elapsed + delay,
                    seq: self.seq,
                    to,
                    bytes: o.bytes.clone(),
                });
            }
        }
    }

    /// `from`'s application sends an IP packet.
    fn send_ip(&mut self, from: Side, packet: &[u8]) {
        let mut buf = vec![0u8; 2048];
        buf[16..16 + packet.len()].copy_from_slice(packet);
        let mut out = Vec::new();
        let now = self.now();
        let sent = self
            .dev(from)
            .encapsulate(&mut buf, packet.len(), now, &mut out);
        if let Sent::Ready { len, .. } = sent {
            out.push(Outgoing {
                to: self.b_addr.into(),
                bytes: buf[..len].to_vec(),
            });
        }
        self.log(|| format!("{from:?} app sends: {sent:?}"));
        self.transmit(from, out);
    }

    /// Runs the network and both sides' timers up to `until`, an event at a time. B's
    /// application answers every ping at once; returns how many answers reached A.
    fn run_until(&mut self, until: Duration) -> usize {
        let reply = ipv4(B_TUN, A_TUN, 56);
        let mut answers = 0;
        loop {
            let deadline = |d: &Device| {
                d.next_deadline()
                    .map(|t| t.saturating_duration_since(self.start.instant))
            };
            let next = [
                self.wire.peek().map(|f| f.at),
                deadline(&self.a),
                deadline(&self.b),
            ]
            .into_iter()
            .flatten()
            .min()
            .map_or(until, |t| t.max(self.elapsed));
            if next > until {
                self.elapsed = until;
                return answers;
            }
            self.elapsed = next;
            let now = self.now();
            while self.wire.peek().is_some_and(|f| f.at <= self.elapsed) {
                let Some(mut f) = self.wire.pop() else { break };
                let src = match f.to {
                    Side::A => self.b_addr,
                    Side::B => self.a_addr,
                };
                let mut out = Vec::new();
                let r = self.dev(f.to).receive(src, &mut f.bytes, now, &mut out);
                self.log(|| format!("{:?} receives type {}: {r:?}", f.to, f.bytes[0]));
                if f.bytes[0] == 4 && r == Received::Dropped(DropReason::UnknownIndex) {
                    self.refused += 1;
                }
                self.transmit(f.to, out);
                if let Received::Packet { .. } = r {
                    match f.to {
                        Side::A => answers += 1,
                        Side::B => self.send_ip(Side::B, &reply),
                    }
                }
            }
            for side in [Side::A, Side::B] {
                let mut out = Vec::new();
                self.dev(side).update_timers(now, &mut out);
                if !out.is_empty() {
                    self.log(|| {
                        format!(
                            "{side:?} timers send types {:?}",
                            out.iter().map(|o| o.bytes[0]).collect::<Vec<_>>()
                        )
                    });
                }
                self.transmit(side, out);
            }
        }
    }

    /// Runs `plan`; returns how long after the link came back A's first ping was answered
    /// (None: not within 60 s).
    fn run(&mut self, plan: Plan) -> Option<Duration> {
        let ping = ipv4(A_TUN, B_TUN, 56);
        let reply = ipv4(B_TUN, A_TUN, 56);
        // Busy: A sends ten packets a second, B answers each; counted from the first answer
        // (the tunnel is up).
        let mut busy_until = None;
        while busy_until.is_none_or(|t| self.elapsed < t) {
            assert!(
                busy_until.is_some() || self.elapsed < Duration::from_secs(300),
                "the tunnel never came up"
            );
            self.send_ip(Side::A, &ping);
            let got = self.run_until(self.elapsed + Duration::from_millis(100));
            if got > 0 && busy_until.is_none() {
                busy_until = Some(self.elapsed + Duration::from_secs(plan.busy));
            }
        }
        // The cut, with retransmissions backing off (0.2 s, 0.4 s, ...) from whoever sends.
        self.cut = true;
        self.log(|| "cut".into());
        let cut_until = self.elapsed + plan.cut;
        let mut retry = self.elapsed + Duration::from_millis(200);
        let mut backoff = Duration::from_millis(200);
        while retry < cut_until {
            self.run_until(retry);
            if plan.a_sends_into_cut {
                self.send_ip(Side::A, &ping);
            }
            if plan.b_sends_into_cut {
                self.send_ip(Side::B, &reply);
            }
            backoff *= 2;
            retry += backoff;
        }
        self.run_until(cut_until);
        self.cut = false;
        self.log(|| "restored".into());
        // `ping -c 1 -W 1` in a loop: a ping a second.
        let restored = self.elapsed;
        while self.elapsed - restored < Duration::from_secs(60) {
            self.send_ip(Side::A, &ping);
            if self.run_until(self.elapsed + Duration::from_secs(1)) > 0 {
                return Some(self.elapsed - restored);
            }
        }
        None
    }
}

fn plans() -> Vec<Plan> {
    let mut v = Vec::new();
    for busy in [1, 5, 20, 30] {
        for (a, b) in [(false, false), (true, false), (false, true), (true, true)] {
            for cut in [10, 30, 60, 100] {
                v.push(Plan {
                    busy,
                    a_sends_into_cut: a,
                    b_sends_into_cut: b,
                    cut: Duration::from_secs(cut),
                });
            }
        }
    }
    v
}

/// With 30% loss each way a ping's round trip succeeds about half the time, so a ping a
/// second is answered within 5 s in about 96% of runs and within 10 s in all but about 0.1%,
/// unless the protocol itself stands in the way. Over 2560 seeded runs of 64 plans (the same
/// runs every time: the loss and the timers' jitter come from the seed):
/// - no transport packet is ever refused for an unknown index, that is, sealed on a session
///   the receiver had already dropped (the kernel's slot rules did that after crossed
///   handshakes: 17 of these runs, one of them 18 s without traffic);
/// - recovery takes longer than 5 s and 10 s no more often than bad luck explains.
#[test]
fn traffic_resumes_quickly_after_a_cut_over_a_lossy_link() {
    let plans = plans();
    let (mut runs, mut over5, mut over10) = (0usize, 0usize, Vec::new());
    let mut refused = Vec::new();
    for seed in 0..40u64 {
        for (i, plan) in plans.iter().enumerate() {
            let id = (seed * 1000 + i as u64, i);
            let mut sim = Sim::new(id.0, 0.3);
            let back = sim.run(*plan);
            runs += 1;
            if sim.refused > 0 {
                refused.push(id);
            }
            if back.is_none_or(|d| d > Duration::from_secs(5)) {
                over5 += 1;
            }
            if back.is_none_or(|d| d > Duration::from_secs(10)) {
                over10.push(id);
            }
        }
    }
    eprintln!(
        "{runs} runs: {over5} took over 5 s, {} over 10 s, {} refused packets",
        over10.len(),
        refused.len()
    );
    if let Some(&(seed, plan)) = refused.first() {
        panic!(
            "{} runs refused packets on a dropped session; the first:\n{}",
            refused.len(),
            trace(seed, plans[plan])
        );
    }
    assert!(
        over5 * 100 <= runs * 5,
        "{over5} of {runs} runs took over 5 s"
    );
    if over10.len() * 1000 > runs * 4 {
        let (seed, plan) = over10[0];
        panic!(
            "{} of {runs} runs took over 10 s; the first:\n{}",
            over10.len(),
            trace(seed, plans[plan])
        );
    }
}

/// One run again, with everything that happened after the cut.
fn trace(seed: u64, plan: Plan) -> String {
    let mut sim = Sim::new(seed, 0.3);
    sim.trace = Some(Vec::new());
    let back = sim.run(plan);
    let lines = sim.trace.unwrap_or_default();
    let from = lines.iter().position(|l| l.ends_with(" cut")).unwrap_or(0);
    format!(
        "{plan:?}, back after {back:?}\n{}",
        lines[from..].join("\n")
    )
}

/// Fifteen minutes of steady traffic (A sends ten packets a second, B answers each) at 30%
/// loss each way, 20 seeds: about 140 rekeys, each a handshake that may need retries while
/// the old session carries the traffic. The longest time without an answer stays what loss
/// alone explains (1.8 s seen); a rekey that let the old session expire first, or a session
/// dropped while still in use, would show as a gap of seconds.
#[test]
fn rekeys_over_a_lossy_link_never_stall_traffic() {
    let ping = ipv4(A_TUN, B_TUN, 56);
    let mut overall = Duration::ZERO;
    for seed in 0..20u64 {
        let mut sim = Sim::new(seed, 0.3);
        let (mut last, mut worst) = (None, (Duration::ZERO, Duration::ZERO));
        while sim.elapsed < Duration::from_secs(900) {
            sim.send_ip(Side::A, &ping);
            if sim.run_until(sim.elapsed + Duration::from_millis(100)) > 0 {
                if let Some(last) = last {
                    let gap = sim.elapsed - last;
                    if gap > worst.0 {
                        worst = (gap, sim.elapsed);
                    }
                }
                last = Some(sim.elapsed);
            }
        }
        assert!(
            worst.0 < Duration::from_secs(3),
            "seed {seed}: no answer for {:?} until {:?}",
            worst.0,
            worst.1
        );
        assert_eq!(sim.refused, 0, "seed {seed}: packets on a dropped session");
        overall = overall.max(worst.0);
    }
    eprintln!("20 seeds of 15 minutes: the longest time without an answer was {overall:?}");
}
