//! Engines talking to each other inside this test process, through the in-memory device and
//! transport (`testing`): no TUN, no socket, no root. Every thread of the real engine runs
//! (send, receive, handshakes, timers); only the edges are memory.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::dataplane::{Engine, Options};
use crate::gro::tests::{flow, split, stream};
use crate::packet_device::{Offload, PacketDevice};
use crate::testing::{MemoryDevice, MemoryNet, MemoryTransport};
use crate::transport::Transport;
use rand_core::OsRng;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use suidao_proto::keys::{PrivateKey, PublicKey};
use suidao_proto::{Device, DropReason, PeerConfig};

const SERVER: [u8; 4] = [10, 99, 0, 1];
const ALICE: [u8; 4] = [10, 99, 0, 2];
const BOB: [u8; 4] = [10, 99, 0, 3];
const WAIT: Duration = Duration::from_secs(10);

/// One engine on the memory net, with its timers run by a thread of the test's.
struct Node {
    engine: Arc<Engine>,
    devs: Vec<Arc<MemoryDevice>>,
    transports: Vec<MemoryTransport>,
    key: PrivateKey,
    addr: SocketAddr,
    timers: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

struct Spec {
    addr: &'static str,
    tunnel: [u8; 4],
    workers: usize,
    offload: Offload,
    gro: usize,
    /// Layer 2: the switch (the engine carries frames).
    switch: Option<Arc<crate::switch::Switch>>,
}

impl Spec {
    fn new(addr: &'static str, tunnel: [u8; 4]) -> Spec {
        Spec {
            addr,
            tunnel,
            workers: 1,
            offload: Offload::default(),
            gro: 1,
            switch: None,
        }
    }
}

fn start(net: &Arc<MemoryNet>, spec: Spec, peers: Vec<PeerConfig>) -> Node {
    let key = PrivateKey::generate(&mut OsRng);
    start_with_key(net, spec, key, peers)
}

fn start_with_key(
    net: &Arc<MemoryNet>,
    spec: Spec,
    key: PrivateKey,
    peers: Vec<PeerConfig>,
) -> Node {
    let device = Arc::new(Device::new(key.clone(), OsRng));
    for p in peers {
        device.add_peer(p).unwrap();
    }
    let addr: SocketAddr = spec.addr.parse().unwrap();
    let transports = net.attach_group(addr, spec.workers, spec.gro);
    let devs: Vec<Arc<MemoryDevice>> = (0..spec.workers)
        .map(|_| MemoryDevice::new("mem0", spec.offload))
        .collect();
    let queues = devs
        .iter()
        .zip(&transports)
        .map(|(d, t)| {
            (
                Box::new(d.clone()) as Box<dyn PacketDevice>,
                Box::new(t.clone()) as Box<dyn Transport>,
            )
        })
        .collect();
    let options = Options {
        hairpin: true,
        own_addrs: vec![spec.tunnel.into()],
        mtu: 1420,
        names: Arc::new(RwLock::new(HashMap::new())),
        switch: spec.switch.clone(),
    };
    let engine = Arc::new(Engine::start(device, queues, options).unwrap());
    // What `up`'s main loop does: run the timers when due, or when the data path asks.
    let stop = Arc::new(AtomicBool::new(false));
    let (e, s) = (engine.clone(), stop.clone());
    let thread = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            let nap = e.run_timers().unwrap_or(Duration::MAX);
            std::thread::sleep(nap.min(Duration::from_millis(20)));
        }
    });
    Node {
        engine,
        devs,
        transports,
        key,
        addr,
        timers: Some((stop, thread)),
    }
}

impl Node {
    fn public(&self) -> PublicKey {
        self.key.public_key()
    }

    /// This node as a peer of another: at `addr` if `reachable`, with these allowed IPs.
    fn as_peer(&self, allowed: &[&str], reachable: bool) -> PeerConfig {
        let mut p = PeerConfig::new(self.public());
        p.allowed_ips = allowed.iter().map(|a| a.parse().unwrap()).collect();
        p.endpoint = reachable.then_some(self.addr);
        p
    }

    /// What came out of the tunnel on any of the node's device queues: `n` writes, or fewer
    /// after `within`.
    fn written(&self, n: usize, within: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        while got.len() < n && Instant::now() < deadline {
            for d in &self.devs {
                while let Some(w) = d.written(Duration::from_millis(2)) {
                    got.push(w);
                }
            }
        }
        got
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.timers.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
    }
}

/// An IPv4 UDP packet from `src` to `dst` (source port `flow`) whose payload starts with
/// `seq`; `len` payload bytes. (Checksums are not checked by anything on this path.)
fn packet(src: [u8; 4], dst: [u8; 4], flow: u16, seq: u32, len: usize) -> Vec<u8> {
    let len = len.max(4);
    let total = 28 + len;
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&flow.to_be_bytes());
    p.extend_from_slice(&9u16.to_be_bytes());
    p.extend_from_slice(&((8 + len) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend((4..len).map(|i| i as u8));
    p
}

/// (source port, sequence number) of a packet `packet` made.
fn flow_and_seq(p: &[u8]) -> (u16, u32) {
    (
        u16::from_be_bytes([p[20], p[21]]),
        u32::from_be_bytes([p[28], p[29], p[30], p[31]]),
    )
}

fn server_spec() -> Spec {
    Spec::new("198.18.0.1:51820", SERVER)
}

fn alice_spec() -> Spec {
    Spec::new("198.18.0.2:40000", ALICE)
}

/// Alice says hello (on a flow of its own, 100) and the server hears it: the session is up.
fn connect(server: &Node, alice: &Node) {
    alice.devs[0].inject(&packet(ALICE, SERVER, 100, 0, 10));
    assert_eq!(server.written(1, WAIT).len(), 1, "alice's hello");
}

/// A server at 198.18.0.1 and a client (alice) that knows where it is.
fn pair(net: &Arc<MemoryNet>, server: Spec, client: Spec) -> (Node, Node) {
    let server_key = PrivateKey::generate(&mut OsRng);
    let alice_key = PrivateKey::generate(&mut OsRng);
    let mut to_alice = PeerConfig::new(alice_key.public_key());
    to_alice.allowed_ips = vec!["10.99.0.2/32".parse().unwrap()];
    let s = start_with_key(net, server, server_key.clone(), vec![to_alice]);
    let to_server = s.as_peer(&["10.99.0.0/24"], true);
    let a = start_with_key(net, client, alice_key, vec![to_server]);
    (s, a)
}

mod flows;
mod layer2;
mod life;
mod send;
