//! An endpoint given as a host name is resolved at `up`, and again while its handshakes fail:
//! when the server's name moves to another address, the client reaches it there without a
//! restart (what WireGuard users run `reresolve-dns.sh` from cron for).
//!
//! The name lives in the client namespace's own hosts file (`ip netns exec` binds
//! `/etc/netns/NAME/hosts` over `/etc/hosts` for the process it starts), changed in place
//! while the tunnel runs. The client's protocol time runs 10 times faster
//! (`SUIDAO_TEST_CLOCK_SCALE`, debug builds only), so "no handshake for 135 s" takes 13.5 s.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::time::{Duration, Instant};
use suidao_lab::netlink::add_addr;
use suidao_lab::suidao::{ping, ping_until, NodeSpec, Role, TempDir};
use suidao_lab::topology::P2p;
use suidao_tests::etc::{up_in, NetnsEtc};
use suidao_tests::vpn::{CLIENT_V4, PORT, SERVER_V4};

const NAME: &str = "vpn-server.test";

#[test]
fn a_server_whose_name_moves_is_reached_again_without_a_restart() {
    if !suidao_lab::require("re-resolving endpoint names", &["ping", "ip"]) {
        return;
    }
    let lab = P2p::new().unwrap();
    let dir = TempDir::new().unwrap();
    let (old, new): (IpAddr, IpAddr) = (lab.server.v4, "198.18.0.21".parse().unwrap());
    let (server, mut client) = NodeSpec::pair(
        ["sds", "sdc"],
        &[&format!("{SERVER_V4}/24")],
        &[&format!("{CLIENT_V4}/24")],
        format!("{old}:{PORT}").parse().unwrap(),
        &["10.99.0.0/24"],
    )
    .unwrap();
    client.peers[0].endpoint = Some(format!("{NAME}:{PORT}"));
    let server_node = server
        .start(&lab.server.ns, Role::Server, dir.path())
        .unwrap();
    let etc = NetnsEtc::new(lab.client.ns.name()).unwrap();
    etc.write("hosts", &format!("{old} {NAME}\n")).unwrap();
    let config = client.write(dir.path()).unwrap();
    let log_path = dir.path().join("client.log");
    let mut client_process = up_in(
        &etc,
        "suidao-client",
        &config,
        &client.ifname,
        &log_path,
        &[("SUIDAO_TEST_CLOCK_SCALE", "10")],
    )
    .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        ping_until(&lab.client.ns, SERVER_V4, Duration::from_secs(10)).unwrap(),
        "through the tunnel to {NAME} = {old}\n{}\n{}",
        log(),
        server_node.log()
    );

    // The server moves to another address, and its name with it.
    lab.server
        .ns
        .netlink(move |h| async move {
            // Old first: removing a primary address removes the secondaries of its subnet.
            suidao_common::netlink::del_addr(&h, "veth-s", old, 24).await?;
            add_addr(&h, "veth-s", new, 24).await?;
            Ok(())
        })
        .unwrap();
    etc.write("hosts", &format!("{new} {NAME}\n")).unwrap();
    assert!(
        !ping(&lab.client.ns, &old.to_string(), 1).unwrap(),
        "the old address is gone"
    );
    let moved = Instant::now();
    assert!(
        ping_until(&lab.client.ns, SERVER_V4, Duration::from_secs(60)).unwrap(),
        "the client found the server at {new}\n{}\n{}",
        log(),
        server_node.log()
    );
    eprintln!(
        "traffic back {:.1} s after the move (protocol time runs 10x)",
        moved.elapsed().as_secs_f64()
    );
    assert!(
        log().contains(&format!("{NAME}:{PORT} resolves to {new}:{PORT} now")),
        "{}",
        log()
    );
    client_process.stop();
}
