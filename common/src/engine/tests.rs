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
}

impl Spec {
    fn new(addr: &'static str, tunnel: [u8; 4]) -> Spec {
        Spec {
            addr,
            tunnel,
            workers: 1,
            offload: Offload::default(),
            gro: 1,
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

#[test]
fn a_handshake_then_packets_both_ways() {
    let net = MemoryNet::new();
    let (server, alice) = pair(&net, server_spec(), alice_spec());
    let there = packet(ALICE, SERVER, 7, 1, 100);
    alice.devs[0].inject(&there);
    assert_eq!(server.written(1, WAIT), vec![there], "through the tunnel");
    let back = packet(SERVER, ALICE, 7, 2, 1200);
    server.devs[0].inject(&back);
    assert_eq!(alice.written(1, WAIT), vec![back], "and back");
    let info = server.engine.device().peer_info(0).unwrap();
    assert_eq!(
        info.endpoint,
        Some(alice.addr),
        "the server learnt where alice is"
    );
    assert!(info.last_handshake.is_some());
    // A packet from an address alice may not use is not delivered.
    alice.devs[0].inject(&packet(BOB, SERVER, 7, 3, 10));
    assert!(server.written(1, Duration::from_millis(300)).is_empty());
    assert_eq!(
        server
            .engine
            .device()
            .drop_count(DropReason::SourceNotAllowed),
        1
    );
}

#[test]
fn the_server_relays_between_two_clients_hairpin() {
    let net = MemoryNet::new();
    let (alice_key, bob_key) = (
        PrivateKey::generate(&mut OsRng),
        PrivateKey::generate(&mut OsRng),
    );
    let mut to_alice = PeerConfig::new(alice_key.public_key());
    to_alice.allowed_ips = vec!["10.99.0.2/32".parse().unwrap()];
    let mut to_bob = PeerConfig::new(bob_key.public_key());
    to_bob.allowed_ips = vec!["10.99.0.3/32".parse().unwrap()];
    let mut s = server_spec();
    s.gro = 16;
    let server = start(&net, s, vec![to_alice, to_bob]);
    let to_server = || server.as_peer(&["10.99.0.0/24"], true);
    let alice = start_with_key(
        &net,
        Spec::new("198.18.0.2:1", ALICE),
        alice_key,
        vec![to_server()],
    );
    let bob = start_with_key(
        &net,
        Spec::new("198.18.0.3:1", BOB),
        bob_key,
        vec![to_server()],
    );
    // Bob says hello first, so the server knows where he is.
    bob.devs[0].inject(&packet(BOB, SERVER, 1, 0, 10));
    assert_eq!(server.written(1, WAIT).len(), 1);
    let relayed: Vec<Vec<u8>> = (1..=20).map(|i| packet(ALICE, BOB, 2, i, 300)).collect();
    for p in &relayed {
        alice.devs[0].inject(p);
    }
    assert_eq!(
        bob.written(20, WAIT),
        relayed,
        "alice → server → bob, in order"
    );
    assert!(
        server.written(1, Duration::from_millis(200)).is_empty(),
        "nothing for the server's own host"
    );
    // A burst: relayed in runs (GSO), not one send per packet. Alice's datagrams reach the
    // server 16 to a message (GRO), as a burst does over UDP.
    let (calls, datagrams) = server.transports[0].sends();
    let burst: Vec<Vec<u8>> = (0..400).map(|i| packet(ALICE, BOB, 3, i, 1350)).collect();
    for p in &burst {
        alice.devs[0].inject(p);
    }
    assert_eq!(
        bob.written(400, WAIT),
        burst,
        "the burst, whole and in order"
    );
    let (calls, datagrams) = {
        let (c, d) = server.transports[0].sends();
        (c - calls, d - datagrams)
    };
    eprintln!("relayed {datagrams} datagrams in {calls} sends");
    assert!(
        datagrams >= 400 && calls * 4 <= datagrams,
        "{calls} sends for {datagrams}"
    );
}

/// A flood of initiations from strangers (valid mac1, from many addresses) backs the
/// handshake queue up: the server is under load, answers with cookie replies instead of
/// doing the Diffie-Hellman work, and a real client still gets in (its retry carries the
/// cookie's mac2).
#[test]
fn under_a_flood_of_initiations_cookies_go_out_and_a_real_client_gets_in() {
    let net = MemoryNet::new();
    let (server, alice) = pair(&net, server_spec(), alice_spec());
    let server_public = server.public();
    let attackers: Vec<MemoryTransport> = (0..16)
        .map(|i| net.attach(format!("198.18.1.{i}:1000").parse().unwrap(), 1))
        .collect();
    let initiations: Vec<Vec<u8>> = (0..64)
        .map(|_| {
            let me = PrivateKey::generate(&mut OsRng);
            let mut hs = suidao_proto::handshake::Handshake::new(&me, server_public, None);
            let mut m = hs
                .create_initiation(
                    &me,
                    1,
                    suidao_proto::time::Tai64N::from_since_epoch(Duration::from_secs(1)),
                    PrivateKey::generate(&mut OsRng),
                )
                .unwrap()
                .to_vec();
            suidao_proto::cookie::CookieGenerator::new(&server_public)
                .add_macs(&mut m, Instant::now());
            m
        })
        .collect();
    let flooding = Arc::new(AtomicBool::new(true));
    let (f, to) = (flooding.clone(), server.addr);
    let flood = std::thread::spawn(move || {
        let mut sent = 0u64;
        while f.load(Ordering::Relaxed) {
            for (i, a) in attackers.iter().enumerate() {
                let m = &initiations[(sent as usize + i) % initiations.len()];
                let _ = a.send(m, to.into(), None);
                sent += 1;
            }
            // About 10,000 a second, as the end-to-end flood test sends.
            if sent % 64 == 0 {
                std::thread::sleep(Duration::from_millis(6));
            }
        }
        let cookies = attackers
            .iter()
            .map(|a| {
                let mut n = 0;
                let mut buf = [0u8; 256];
                let mut meta = [crate::transport::RecvMeta::default(); 16];
                while let Ok(k) = a.recv(&mut [std::io::IoSliceMut::new(&mut buf)], &mut meta[..1])
                {
                    n += (k == 1 && meta[0].len == 64 && buf[0] == 3) as usize;
                }
                n
            })
            .sum::<usize>();
        (sent, cookies)
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while server
        .engine
        .device()
        .drop_count(DropReason::CookieRequired)
        == 0
    {
        assert!(Instant::now() < deadline, "never under load");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Alice's first initiation is answered with a cookie; her retry (REKEY_TIMEOUT later)
    // carries mac2 and gets in.
    let hello = packet(ALICE, SERVER, 7, 1, 100);
    alice.devs[0].inject(&hello);
    let got = server.written(1, Duration::from_secs(15));
    flooding.store(false, Ordering::Relaxed);
    let (sent, cookies) = flood.join().unwrap();
    eprintln!(
        "{sent} initiations sent, {cookies} cookie replies received, {} refused for want of a cookie",
        server.engine.device().drop_count(DropReason::CookieRequired)
    );
    assert_eq!(got, vec![hello], "alice got in during the flood");
    assert!(cookies > 0, "strangers got cookie replies");
}

/// More datagrams waiting than one receive takes (16 messages), GRO runs on the way in (the
/// memory transport hands over up to 16 same-size datagrams as one message), and on the way
/// out the device coalesces a TCP stream into super-packets that split back exactly.
#[test]
fn full_receive_batches_and_the_gro_path() {
    let net = MemoryNet::new();
    let mut server = server_spec();
    server.offload = Offload {
        tcp: true,
        udp: false,
    };
    server.gro = 16;
    let (server, alice) = pair(&net, server, alice_spec());
    // The handshake first, so the stream below goes out in one burst.
    connect(&server, &alice);
    // Alice's TCP stream to the server: 10.99.0.2 → 10.99.0.1, as `gro_tests` builds them.
    let segments = stream(&flow(false, 40000), &[1200; 600], &[]);
    for s in &segments {
        alice.devs[0].inject(s);
    }
    let mut out = Vec::new();
    let deadline = Instant::now() + WAIT;
    while out.len() < segments.len() && Instant::now() < deadline {
        for w in server.written(1, Duration::from_millis(50)) {
            out.extend(split(&w));
        }
    }
    assert_eq!(out.len(), segments.len(), "every segment");
    assert!(out == segments, "each segment as it was sent, in order");
    let largest = server.transports[0].largest_batch();
    eprintln!("largest receive batch: {largest} messages");
    assert_eq!(largest, 16, "a full receive batch");
}

/// Flows spread over three workers on each side (the sender's queues by flow, as the TUN
/// spreads them): every flow arrives whole and in order.
#[test]
fn several_workers_keep_every_flow_in_order() {
    let net = MemoryNet::new();
    let mut s = server_spec();
    s.workers = 3;
    let mut c = alice_spec();
    c.workers = 3;
    let (server, alice) = pair(&net, s, c);
    connect(&server, &alice);
    let flows = 6u16;
    let per_flow = 300u32;
    let injectors: Vec<JoinHandle<()>> = (0..3)
        .map(|q| {
            let dev = alice.devs[q].clone();
            std::thread::spawn(move || {
                for seq in 0..per_flow {
                    for f in (0..flows).filter(|f| *f as usize % 3 == q) {
                        dev.inject(&packet(ALICE, SERVER, f, seq, 200 + f as usize));
                    }
                }
            })
        })
        .collect();
    for i in injectors {
        i.join().unwrap();
    }
    let got = server.written((flows as usize) * per_flow as usize, WAIT);
    let mut next = vec![0u32; flows as usize];
    for p in &got {
        let (f, seq) = flow_and_seq(p);
        assert_eq!(seq, next[f as usize], "flow {f}");
        next[f as usize] += 1;
    }
    assert!(next.iter().all(|n| *n == per_flow), "{next:?}");
}

/// An idle engine's timers: after the handshake and the keepalives that follow it, nothing
/// is scheduled sooner than the protocol's long timers, and the data path raises no attention.
#[test]
fn an_idle_engine_has_nothing_to_do_for_seconds() {
    let net = MemoryNet::new();
    let (server, alice) = pair(&net, server_spec(), alice_spec());
    connect(&server, &alice);
    server.devs[0].inject(&packet(SERVER, ALICE, 1, 0, 10));
    assert_eq!(alice.written(1, WAIT).len(), 1);
    for n in [&server, &alice] {
        let next = n.engine.run_timers().expect("session timers");
        assert!(next >= Duration::from_secs(5), "next timer in {next:?}");
    }
}

/// Quiet and busy (see `Worker`): lone packets each way, a request and its answer, pass
/// through the receive threads alone, the send threads asleep; a burst goes to the send
/// thread, in order, and the device comes back to the receive thread after QUIET_AFTER.
#[test]
fn lone_packets_stay_with_the_receive_thread_and_a_burst_goes_to_the_send_thread() {
    use super::dataplane::QUIET_AFTER;
    let net = MemoryNet::new();
    let (server, alice) = pair(&net, server_spec(), alice_spec());
    connect(&server, &alice);
    let settled = |n: &Node| {
        let t = Instant::now();
        while !n.engine.worker_modes()[0].0 {
            assert!(t.elapsed() < WAIT, "the device never came back");
            std::thread::sleep(Duration::from_millis(5));
        }
        n.engine.worker_modes()[0].1
    };
    let (s0, a0) = (settled(&server), settled(&alice));
    for seq in 0..20 {
        let request = packet(ALICE, SERVER, 5, seq, 56);
        alice.devs[0].inject(&request);
        assert_eq!(server.written(1, WAIT), vec![request]);
        let answer = packet(SERVER, ALICE, 5, seq, 56);
        server.devs[0].inject(&answer);
        assert_eq!(alice.written(1, WAIT), vec![answer]);
    }
    assert_eq!(server.engine.worker_modes(), vec![(true, s0)], "server");
    assert_eq!(alice.engine.worker_modes(), vec![(true, a0)], "alice");
    let burst = 400u32;
    alice.devs[0].inject_burst((0..burst).map(|seq| packet(ALICE, SERVER, 6, seq, 300)));
    let got = server.written(burst as usize, WAIT);
    let seqs: Vec<u32> = got.iter().map(|p| flow_and_seq(p).1).collect();
    assert_eq!(seqs, (0..burst).collect::<Vec<_>>(), "in order");
    assert!(
        alice.engine.worker_modes()[0].1 > a0,
        "the burst went to the send thread"
    );
    std::thread::sleep(QUIET_AFTER);
    settled(&alice);
}

/// `wg set listen-port` (`Engine::replace_transports`): the server moves to new sockets; its
/// sessions go on, so a client told the new address gets through at once, on the session it
/// had, and the answers leave from the new socket.
#[test]
fn the_server_moves_to_new_sockets_and_its_sessions_go_on() {
    let net = MemoryNet::new();
    let (mut server, alice) = pair(&net, server_spec(), alice_spec());
    connect(&server, &alice);
    let session = server.engine.device().peer_info(0).unwrap().last_handshake;
    // Sole ownership of the engine: the timers' thread holds it too.
    let (stop, thread) = server.timers.take().unwrap();
    stop.store(true, Ordering::Relaxed);
    thread.join().unwrap();
    let moved: SocketAddr = "198.18.0.1:51999".parse().unwrap();
    let transports = net.attach_group(moved, 1, 1);
    Arc::get_mut(&mut server.engine)
        .expect("the test's own")
        .replace_transports(
            transports
                .iter()
                .map(|t| Box::new(t.clone()) as Box<dyn Transport>)
                .collect(),
        )
        .unwrap();
    let device = alice.engine.device();
    let id = device.peer_id(&server.public()).unwrap();
    device.set_endpoint(id, Some(moved), false).unwrap();
    let there = packet(ALICE, SERVER, 9, 1, 100);
    alice.devs[0].inject(&there);
    assert_eq!(server.written(1, WAIT), vec![there]);
    let back = packet(SERVER, ALICE, 9, 2, 100);
    server.devs[0].inject(&back);
    assert_eq!(alice.written(1, WAIT), vec![back]);
    assert_eq!(
        server.engine.device().peer_info(0).unwrap().last_handshake,
        session,
        "the same session, no new handshake"
    );
    assert!(
        transports[0].sends().0 > 0,
        "the answer left from the new socket"
    );
}
