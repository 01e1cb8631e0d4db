//! A bad network of the test's own making (this kernel has no netem): a UDP relay between a
//! client and a server that loses, delays, reorders and duplicates datagrams, and can cut the
//! link altogether. The client's endpoint is the relay; the relay forwards to the server.

use crate::attack::Rng;
use std::collections::BinaryHeap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct Impairment {
    /// Probability of losing a datagram.
    pub loss: f64,
    /// Base one-way delay.
    pub delay: Duration,
    /// Extra random delay up to this, which reorders datagrams.
    pub jitter: Duration,
    /// Probability of sending a datagram twice.
    pub duplicate: f64,
}

pub struct Relay {
    stop: Arc<AtomicBool>,
    cut: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

struct Due {
    at: Instant,
    seq: u64,
    bytes: Vec<u8>,
    to: SocketAddr,
}

impl PartialEq for Due {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at && self.seq == o.seq
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Due {
    // Earliest first in a max-heap.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        o.at.cmp(&self.at).then(o.seq.cmp(&self.seq))
    }
}

impl Relay {
    /// `front` faces the client (its address is the client's endpoint); `back` faces the
    /// server at `server`.
    pub fn start(front: UdpSocket, back: UdpSocket, server: SocketAddr, imp: Impairment) -> Relay {
        let stop = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(AtomicBool::new(false));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let mut threads = Vec::new();
        for (from, to_sock, toward_server) in [
            (
                front.try_clone().unwrap_or_else(|_| unreachable!()),
                back.try_clone().unwrap_or_else(|_| unreachable!()),
                true,
            ),
            (back, front, false),
        ] {
            let (stop, cut, client) = (stop.clone(), cut.clone(), client.clone());
            threads.push(std::thread::spawn(move || {
                let _ = from.set_read_timeout(Some(Duration::from_millis(2)));
                let mut rng = Rng::new(if toward_server { 7 } else { 11 });
                let mut queue = BinaryHeap::new();
                let mut seq = 0u64;
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, src)) = from.recv_from(&mut buf) {
                        let to = if toward_server {
                            if let Ok(mut c) = client.lock() {
                                *c = Some(src);
                            }
                            Some(server)
                        } else {
                            client.lock().ok().and_then(|c| *c)
                        };
                        let chance = |p: f64, rng: &mut Rng| {
                            (rng.next_u64() % 1_000_000) < (p * 1_000_000.0) as u64
                        };
                        if let Some(to) = to {
                            if !cut.load(Ordering::Relaxed) && !chance(imp.loss, &mut rng) {
                                let copies = if chance(imp.duplicate, &mut rng) {
                                    2
                                } else {
                                    1
                                };
                                for _ in 0..copies {
                                    let jitter =
                                        imp.jitter.mul_f64((rng.next_u64() % 1000) as f64 / 1000.0);
                                    seq += 1;
                                    queue.push(Due {
                                        at: Instant::now() + imp.delay + jitter,
                                        seq,
                                        bytes: buf[..n].to_vec(),
                                        to,
                                    });
                                }
                            }
                        }
                    }
                    while queue.peek().is_some_and(|d: &Due| d.at <= Instant::now()) {
                        if let Some(d) = queue.pop() {
                            let _ = to_sock.send_to(&d.bytes, d.to);
                        }
                    }
                }
            }));
        }
        Relay { stop, cut, threads }
    }

    /// Cuts the link (everything is lost) or restores it.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
