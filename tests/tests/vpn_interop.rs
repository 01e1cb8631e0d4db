//! suidao's binaries with wireguard-go (Debian's package, configured with `wg`) at the other
//! end: suidao-client to a wireguard-go server, and a wireguard-go client to suidao-server.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand_core::OsRng;
use suidao_lab::suidao::{ping, NodeSpec, Role, TempDir};
use suidao_lab::topology::P2p;
use suidao_lab::wggo::WireguardGo;
use suidao_proto::keys::PresharedKey;
use suidao_tests::vpn::*;

const TRANSFER: u64 = 32 << 20;

fn traffic_both_ways(lab: &P2p, logs: impl Fn() -> String) {
    let (s, c) = (&lab.server.ns, &lab.client.ns);
    for (ns, target) in [(c, SERVER_V4), (c, SERVER_V6), (s, CLIENT_V4)] {
        assert!(
            ping(ns, target, 3).unwrap(),
            "ping {target} from {}\n{}",
            ns.name(),
            logs()
        );
    }
    let t =
        suidao_tests::transfer::tcp(c, s, format!("{SERVER_V4}:5001").parse().unwrap(), TRANSFER)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));
    assert_eq!(t.sent, t.received, "TCP digest client -> server");
    let t = suidao_tests::transfer::tcp(
        s,
        c,
        format!("[{CLIENT_V6}]:5002").parse().unwrap(),
        TRANSFER,
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));
    assert_eq!(t.sent, t.received, "TCP digest server -> client");
}

/// The p2p pair (`vpn::specs`), one end run by wireguard-go: the same description for both
/// programs. With a preshared key on both ends.
fn pair_with_psk(lab: &P2p, underlay_v6: bool) -> (NodeSpec, NodeSpec) {
    let (mut server, mut client) = specs(lab, underlay_v6).unwrap();
    let psk = PresharedKey::generate(&mut OsRng);
    server.peers[0].preshared_key = Some(psk.clone());
    client.peers[0].preshared_key = Some(psk);
    (server, client)
}

#[test]
fn suidao_client_to_wireguard_go_server() {
    if !suidao_lab::require(
        "suidao_client_to_wireguard_go_server",
        &["wireguard-go", "wg", "ping"],
    ) {
        return;
    }
    let lab = P2p::new().unwrap();
    let dir = TempDir::new().unwrap();
    let (server, client) = pair_with_psk(&lab, false);
    let wg = WireguardGo::start(&lab.server.ns, &server).unwrap();
    let node = client
        .start(&lab.client.ns, Role::Client, dir.path())
        .unwrap();
    traffic_both_ways(&lab, || {
        format!("{}\n--- wireguard-go ---\n{}", node.log(), wg.log())
    });
    drop(node);
    drop(wg);
}

#[test]
fn wireguard_go_client_to_suidao_server() {
    if !suidao_lab::require(
        "wireguard_go_client_to_suidao_server",
        &["wireguard-go", "wg", "ping"],
    ) {
        return;
    }
    let lab = P2p::new().unwrap();
    let dir = TempDir::new().unwrap();
    // Over the IPv6 underlay, for variety.
    let (server, client) = pair_with_psk(&lab, true);
    let node = server
        .start(&lab.server.ns, Role::Server, dir.path())
        .unwrap();
    let wg = WireguardGo::start(&lab.client.ns, &client).unwrap();
    traffic_both_ways(&lab, || {
        format!("{}\n--- wireguard-go ---\n{}", node.log(), wg.log())
    });
    drop(wg);
    drop(node);
}
