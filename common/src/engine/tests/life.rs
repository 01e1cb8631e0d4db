//! The engine under load and over time: a flood of initiations, idleness, quiet and busy
//! modes, new sockets at run time.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

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
                while let Ok(k) = a.recv(&mut buf, 256, &mut meta[..1]) {
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
    use crate::engine::shared::QUIET_AFTER;
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
