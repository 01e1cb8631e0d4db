//! Crashes and restarts: `kill -9` of either end during a transfer, then a restart, and traffic
//! resumes within 10 s; 500 up/down cycles leave nothing behind.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use nix::sys::signal::Signal;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use suidao_lab::suidao::{ping_until, Node, Role};
use suidao_lab::Netns;
use suidao_tests::vpn::*;

fn snapshot(ns: &Netns) -> Vec<String> {
    suidao_lab::netlink::snapshot_of(ns).unwrap()
}

/// A transfer that runs until one side dies, in the background.
fn transfer_in_background(vpn: &P2pVpn, port: u16) -> std::thread::JoinHandle<()> {
    let c = Netns::open(vpn.lab.client.ns.name()).unwrap();
    let s = Netns::open(vpn.lab.server.ns.name()).unwrap();
    let to: SocketAddr = format!("{SERVER_V4}:{port}").parse().unwrap();
    std::thread::spawn(move || {
        // Expected to fail part-way (the peer is killed); only its traffic matters.
        let _ = suidao_tests::transfer::tcp(&c, &s, to, 256 << 20);
    })
}

fn kill_and_restart(which: Role) {
    let mut vpn = P2pVpn::start(false).unwrap();
    assert!(ping_until(&vpn.lab.client.ns, SERVER_V4, Duration::from_secs(5)).unwrap());
    let transfer = transfer_in_background(&vpn, 5100 + which as u16);
    // Mid-transfer: once the server has received 16 MB of it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while vpn.server.status().unwrap()["peers"][0]["rx_bytes"]
        .as_u64()
        .unwrap_or(0)
        < 16 << 20
    {
        assert!(
            Instant::now() < deadline,
            "the transfer does not start\n{}",
            vpn.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let node = match which {
        Role::Server => &mut vpn.server,
        Role::Client => &mut vpn.client,
    };
    node.process
        .stop_with(Signal::SIGKILL, Duration::from_secs(5));
    let (cfg, ifname) = (node.config.clone(), node.ifname.clone());
    let ns = match which {
        Role::Server => Netns::open(vpn.lab.server.ns.name()).unwrap(),
        Role::Client => Netns::open(vpn.lab.client.ns.name()).unwrap(),
    };
    *node = Node::start(&ns, which, &cfg, &ifname).unwrap();
    let back = Instant::now();
    let resumed = ping_until(&vpn.lab.client.ns, SERVER_V4, Duration::from_secs(10)).unwrap();
    eprintln!(
        "{which:?} killed with -9 and restarted: traffic back after {:.2} s",
        back.elapsed().as_secs_f64()
    );
    assert!(
        resumed,
        "traffic did not resume within 10 s\n{}",
        vpn.logs()
    );
    // The transfer goes on in the background; it ends with the namespaces (not waited for).
    drop(transfer);
    drop(vpn);
}

#[test]
fn kill_9_of_the_server_during_a_transfer_then_restart() {
    if !suidao_lab::require("kill -9 server", &["ping"]) {
        return;
    }
    kill_and_restart(Role::Server);
}

#[test]
fn kill_9_of_the_client_during_a_transfer_then_restart() {
    if !suidao_lab::require("kill -9 client", &["ping"]) {
        return;
    }
    kill_and_restart(Role::Client);
}

#[test]
fn five_hundred_up_down_cycles_leave_nothing_behind() {
    if !suidao_lab::require("500 up/down cycles", &[]) {
        return;
    }
    let lab = suidao_lab::topology::P2p::new().unwrap();
    let dir = suidao_lab::suidao::TempDir::new().unwrap();
    let (server, _) = specs(&lab, false).unwrap();
    let cfg = server.write(dir.path()).unwrap();
    let before = snapshot(&lab.server.ns);
    let start = Instant::now();
    // Descriptors and threads of the running process in the first and the last cycle: nothing
    // a run leaves behind (a stale socket file, a half-removed link) may make a later one carry
    // more. (The test process itself is shared with the other tests of this file.)
    let count = |pid: u32, what: &str| {
        std::fs::read_dir(format!("/proc/{pid}/{what}"))
            .unwrap()
            .count()
    };
    let mut first = (0, 0);
    for i in 0..500 {
        let mut node = Node::start(&lab.server.ns, Role::Server, &cfg, &server.ifname).unwrap();
        if i == 0 || i == 499 {
            // Let the short-lived thread that answered the readiness query end first.
            std::thread::sleep(Duration::from_millis(200));
            let pid = node.process.pid().unwrap();
            let now = (count(pid, "fd"), count(pid, "task"));
            assert!(now.1 <= 8, "{} threads", now.1);
            if i == 0 {
                first = now;
            } else {
                // One more of each is the control socket answering a query right then.
                assert!(
                    now.0 <= first.0 + 1 && now.1 <= first.1 + 1,
                    "descriptors and threads grew: first run {first:?}, 500th {now:?}"
                );
            }
        }
        let status = node
            .process
            .stop_with(Signal::SIGTERM, Duration::from_secs(5))
            .unwrap();
        assert!(status.success(), "cycle {i}: {status:?}\n{}", node.log());
    }
    eprintln!(
        "500 up/down cycles in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(
        snapshot(&lab.server.ns),
        before,
        "links, addresses, routes and rules as before"
    );
    assert!(!suidao_common::uapi::socket_path(&server.ifname).exists());
}
