//! A bad network between client and server: 30% loss, 50 ms delay, reordering and duplication
//! (a relay of the test's own: this kernel has no netem). A TCP transfer through the tunnel
//! completes with a matching digest; after the link is cut for 60 s and restored, traffic
//! resumes within 10 s without restarting anything.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use suidao_lab::suidao::{ping_until, NodeSpec, Role, TempDir};
use suidao_lab::topology::Hub;
use suidao_tests::badnet::{Impairment, Relay};
use suidao_tests::vpn::{hub_client_v4, PORT, SERVER_V4};

#[test]
fn lossy_reordering_network_then_a_60_s_cut() {
    if !suidao_lab::require("bad network", &["ping"]) {
        return;
    }
    // Hub: server, client1 (the suidao client), client2 (the relay in the middle).
    let lab = Hub::new(2).unwrap();
    let dir = TempDir::new().unwrap();
    let relay_addr = SocketAddr::new(lab.clients[1].v4, 40000);
    let server_addr = SocketAddr::new(lab.server.v4, PORT);
    let front = lab.clients[1]
        .ns
        .run(move || UdpSocket::bind(relay_addr))
        .unwrap()
        .unwrap();
    let back = lab.clients[1]
        .ns
        .run(|| UdpSocket::bind("0.0.0.0:0"))
        .unwrap()
        .unwrap();
    let relay = Relay::start(
        front,
        back,
        server_addr,
        Impairment {
            loss: 0.30,
            delay: Duration::from_millis(50),
            jitter: Duration::from_millis(20),
            duplicate: 0.05,
        },
    );

    // The client's endpoint is the relay; the server listens on its own port behind it.
    let (mut server, client) = NodeSpec::pair(
        ["sds", "sdc"],
        &[&format!("{SERVER_V4}/24")],
        &[&format!("{}/24", hub_client_v4(1))],
        relay_addr,
        &["10.99.0.0/24"],
    )
    .unwrap();
    server.listen_port = Some(PORT);
    let s = server
        .start(&lab.server.ns, Role::Server, dir.path())
        .unwrap();
    let c = client
        .start(&lab.clients[0].ns, Role::Client, dir.path())
        .unwrap();
    let client_ns = &lab.clients[0].ns;
    assert!(
        ping_until(client_ns, SERVER_V4, Duration::from_secs(30)).unwrap(),
        "{}\n{}",
        s.log(),
        c.log()
    );

    // At 30% loss each way a lost retransmission doubles TCP's timeout, up to 120 s by
    // default: one CI run saw no progress for 180 s. That is TCP's back-off, not the tunnel,
    // so the two ends' TCP (in their own namespaces only) back off to 10 s at most, where the
    // kernel allows it (net.ipv4.tcp_rto_max_ms, Linux 6.15 and later).
    for ns in [client_ns, &lab.server.ns] {
        let _ = ns.run(|| std::fs::write("/proc/sys/net/ipv4/tcp_rto_max_ms", "10000"));
    }
    let to: SocketAddr = format!("{SERVER_V4}:5001").parse().unwrap();
    let t = suidao_tests::transfer::tcp_patient(
        client_ns,
        &lab.server.ns,
        to,
        512 << 10,
        Duration::from_secs(180),
    )
    .unwrap();
    assert_eq!(
        t.sent, t.received,
        "the digest matches across the bad network"
    );
    eprintln!(
        "512 KiB across 30% loss, 50 ms delay, reordering, duplicates: {:.1} s",
        t.seconds
    );

    relay.set_cut(true);
    std::thread::sleep(Duration::from_secs(60));
    relay.set_cut(false);
    let restored = Instant::now();
    let back = ping_until(client_ns, SERVER_V4, Duration::from_secs(10)).unwrap();
    eprintln!(
        "after a 60 s cut, traffic back in {:.1} s",
        restored.elapsed().as_secs_f64()
    );
    assert!(
        back,
        "traffic did not resume within 10 s\n{}\n{}",
        s.log(),
        c.log()
    );
    drop(relay);
}
