//! Packets through engines: both ways, relayed, in full batches and GRO runs, in order over
//! several workers.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

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
