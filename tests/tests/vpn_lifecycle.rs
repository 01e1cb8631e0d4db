//! Life of an interface: teardown after SIGTERM, restart after kill -9, a server restarted
//! under a ping run, and `wg show` / `wg set` against a running suidao.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use nix::sys::signal::Signal;
use std::time::{Duration, Instant};
use suidao_lab::measure::Pinger;
use suidao_lab::suidao::{ping, ping_until, run, Node, NodeSpec, PeerSpec, Role, TempDir};
use suidao_lab::topology::P2p;
use suidao_lab::Netns;
use suidao_tests::vpn::*;

fn snapshot(ns: &Netns) -> Vec<String> {
    suidao_lab::netlink::snapshot_of(ns).unwrap()
}

#[test]
fn sigterm_removes_everything_up_added_and_kill_9_leaves_up_working() {
    if !suidao_lab::require("sigterm_removes_everything_up_added", &["ping"]) {
        return;
    }
    let lab = P2p::new().unwrap();
    let dir = TempDir::new().unwrap();
    let (server_spec, client_spec) = specs(&lab, false).unwrap();
    let server_cfg = server_spec.write(dir.path()).unwrap();
    let client_cfg = client_spec.write(dir.path()).unwrap();
    let before = (snapshot(&lab.server.ns), snapshot(&lab.client.ns));

    let mut server = Node::start(
        &lab.server.ns,
        Role::Server,
        &server_cfg,
        &server_spec.ifname,
    )
    .unwrap();
    let mut client = Node::start(
        &lab.client.ns,
        Role::Client,
        &client_cfg,
        &client_spec.ifname,
    )
    .unwrap();
    assert!(
        ping(&lab.client.ns, SERVER_V4, 2).unwrap(),
        "{}",
        client.log()
    );
    let during = snapshot(&lab.client.ns);
    assert!(
        during.len() > before.1.len(),
        "up added links, addresses and routes"
    );
    for node in [&mut client, &mut server] {
        let status = node
            .process
            .stop_with(Signal::SIGTERM, Duration::from_secs(5))
            .unwrap();
        assert!(
            status.success(),
            "{} exits 0 on SIGTERM: {status:?}\n{}",
            node.ifname,
            node.log()
        );
        assert!(
            !suidao_common::uapi::socket_path(&node.ifname).exists(),
            "socket file removed"
        );
    }
    assert_eq!(
        snapshot(&lab.server.ns),
        before.0,
        "server namespace as before"
    );
    assert_eq!(
        snapshot(&lab.client.ns),
        before.1,
        "client namespace as before"
    );

    // kill -9 leaves a stale socket file behind; the next `up` must start cleanly anyway.
    let mut server = Node::start(
        &lab.server.ns,
        Role::Server,
        &server_cfg,
        &server_spec.ifname,
    )
    .unwrap();
    let _client = Node::start(
        &lab.client.ns,
        Role::Client,
        &client_cfg,
        &client_spec.ifname,
    )
    .unwrap();
    server
        .process
        .stop_with(Signal::SIGKILL, Duration::from_secs(5));
    assert!(suidao_common::uapi::socket_path(&server.ifname).exists());
    let _server = Node::start(
        &lab.server.ns,
        Role::Server,
        &server_cfg,
        &server_spec.ifname,
    )
    .unwrap();
    assert!(ping_until(&lab.client.ns, SERVER_V4, Duration::from_secs(20)).unwrap());
    drop(server);
}

#[test]
fn a_second_up_of_the_same_interface_is_refused() {
    if !suidao_lab::require("a_second_up_of_the_same_interface_is_refused", &[]) {
        return;
    }
    let vpn = P2pVpn::start(false).unwrap();
    let out = suidao_lab::suidao::command(&vpn.lab.server.ns, Role::Server)
        .unwrap()
        .args(["up", "-c"])
        .arg(&vpn.server.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already up"), "{err}");
    // And the running one is undisturbed.
    assert!(ping(&vpn.lab.client.ns, SERVER_V4, 1).unwrap());
}

#[test]
fn server_restarted_during_a_ping_run_traffic_resumes_within_10_s() {
    if !suidao_lab::require("server_restarted_during_a_ping_run", &["ping"]) {
        return;
    }
    let mut vpn = P2pVpn::start(false).unwrap();
    let c = vpn.lab.client.ns.name().to_string();
    let client_ns = Netns::open(&c).unwrap();
    assert!(ping(&client_ns, SERVER_V4, 2).unwrap(), "{}", vpn.logs());
    // A continuous ping run from the client, untouched throughout.
    let mut pinger = Pinger::start(
        &client_ns,
        SERVER_V4,
        "0.1",
        &vpn.dir.path().join("ping.out"),
    )
    .unwrap();
    assert!(
        pinger.wait_replies(5, Duration::from_secs(5)),
        "{}",
        vpn.logs()
    );
    let cfg = vpn.server.config.clone();
    let ifname = vpn.server.ifname.clone();
    vpn.server
        .process
        .stop_with(Signal::SIGTERM, Duration::from_secs(5));
    // The server stays down for a second (the scenario, not a wait for something).
    std::thread::sleep(Duration::from_secs(1));
    vpn.server = Node::start(&vpn.lab.server.ns, Role::Server, &cfg, &ifname).unwrap();
    let restarted = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(12);
    let mut resumed_after = None;
    while Instant::now() < deadline {
        pinger.wait_replies(1, Duration::from_millis(200));
        let first_after = pinger.replies().into_iter().find(|t| *t >= restarted);
        if let Some(t) = first_after {
            resumed_after = Some(t - restarted);
            break;
        }
    }
    pinger.stop();
    let resumed_after = resumed_after
        .unwrap_or_else(|| panic!("no reply within 12 s of the restart\n{}", vpn.logs()));
    eprintln!("ping replies resumed {resumed_after:.2} s after the server came back");
    assert!(resumed_after < 10.0);
}

#[test]
fn wg_show_sees_the_peer_and_wg_set_adds_one_that_can_connect() {
    if !suidao_lab::require("wg_show_and_wg_set", &["wg", "ping"]) {
        return;
    }
    let vpn = P2pVpn::start(false).unwrap();
    assert!(ping(&vpn.lab.client.ns, SERVER_V4, 2).unwrap());
    let s = &vpn.lab.server.ns;
    let dump = run(s, "wg", &["show", &vpn.server.ifname, "dump"]).unwrap();
    let peer: Vec<&str> = dump
        .lines()
        .nth(1)
        .expect("a peer line")
        .split('\t')
        .collect();
    assert_eq!(peer[0], vpn.client_spec.public_key().to_base64());
    assert_eq!(
        peer[2],
        format!(
            "{}:{}",
            vpn.lab.client.v4,
            vpn.client.status().unwrap()["listen_port"]
        )
    );
    let handshake: u64 = peer[4].parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        handshake > 0 && now - handshake < 60,
        "a recent handshake: {handshake}"
    );
    assert!(
        peer[5].parse::<u64>().unwrap() > 0 && peer[6].parse::<u64>().unwrap() > 0,
        "transfer counters: {dump}"
    );
    let human = run(s, "wg", &["show", &vpn.server.ifname]).unwrap();
    assert!(human.contains("latest handshake"), "{human}");

    // A new client the server has never heard of, in place of the old one: refused until
    // `wg set` adds it.
    let P2pVpn {
        client,
        server,
        server_spec,
        dir,
        lab,
        ..
    } = vpn;
    drop(client);
    let mut spec = NodeSpec::new("sdn");
    spec.addresses = vec!["10.99.0.3/24".into()];
    spec.peers.push(PeerSpec {
        public_key: Some(server_spec.public_key()),
        endpoint: Some(format!("{}:{PORT}", lab.server.v4)),
        allowed_ips: vec!["10.99.0.0/24".into()],
        ..Default::default()
    });
    let newcomer = spec
        .start(&lab.client.ns, Role::Client, dir.path())
        .unwrap();
    let new_pub = spec.public_key().to_base64();
    assert!(
        !ping(&lab.client.ns, SERVER_V4, 1).unwrap(),
        "unknown to the server yet"
    );
    run(
        &lab.server.ns,
        "wg",
        &[
            "set",
            &server.ifname,
            "peer",
            &new_pub,
            "allowed-ips",
            "10.99.0.3/32",
        ],
    )
    .unwrap();
    assert!(
        ping_until(&lab.client.ns, SERVER_V4, Duration::from_secs(15)).unwrap(),
        "{}\n{}",
        server.log(),
        newcomer.log()
    );
    let dump = run(&lab.server.ns, "wg", &["show", &server.ifname, "dump"]).unwrap();
    assert!(dump.contains(&new_pub));
    drop(newcomer);
    drop(server);
    drop(dir);
    drop(lab);
}
