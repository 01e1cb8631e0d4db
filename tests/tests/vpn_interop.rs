//! suidao's binaries with wireguard-go (Debian's package, configured with `wg`) at the other
//! end: suidao-client to a wireguard-go server, and a wireguard-go client to suidao-server.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand_core::OsRng;
use std::net::{IpAddr, SocketAddr};
use suidao_lab::suidao::{ping, NodeSpec, PeerSpec, Role, TempDir};
use suidao_lab::topology::P2p;
use suidao_lab::wggo::{WgPeer, WireguardGo};
use suidao_proto::keys::{PresharedKey, PrivateKey};
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
    let wg_key = PrivateKey::generate(&mut OsRng);
    let psk = PresharedKey::generate(&mut OsRng);
    let mut client = NodeSpec::new("sdc");
    client.addresses = vec![format!("{CLIENT_V4}/24"), format!("{CLIENT_V6}/64")];
    client.peers.push(PeerSpec {
        name: Some("wireguard-go".into()),
        public_key: Some(wg_key.public_key()),
        endpoint: Some(SocketAddr::new(lab.server.v4, PORT).to_string()),
        allowed_ips: vec!["10.99.0.0/24".into(), "fd99::/64".into()],
        persistent_keepalive: Some(25),
        preshared_key: Some(psk.clone()),
    });
    let wg = WireguardGo::start(
        &lab.server.ns,
        &wg_key.to_base64(),
        PORT,
        &[
            (SERVER_V4.parse().unwrap(), 24),
            (SERVER_V6.parse().unwrap(), 64),
        ],
        &[WgPeer {
            public_key: client.public_key().to_base64(),
            allowed_ips: vec![format!("{CLIENT_V4}/32"), format!("{CLIENT_V6}/128")],
            endpoint: None,
            preshared_key: Some(psk.to_base64().to_string()),
            persistent_keepalive: None,
        }],
    )
    .unwrap();
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
    let wg_key = PrivateKey::generate(&mut OsRng);
    let mut server = NodeSpec::new("sds");
    server.listen_port = Some(PORT);
    server.addresses = vec![format!("{SERVER_V4}/24"), format!("{SERVER_V6}/64")];
    server.peers.push(PeerSpec {
        name: Some("wireguard-go".into()),
        public_key: Some(wg_key.public_key()),
        allowed_ips: vec![format!("{CLIENT_V4}/32"), format!("{CLIENT_V6}/128")],
        ..Default::default()
    });
    let node = server
        .start(&lab.server.ns, Role::Server, dir.path())
        .unwrap();
    let server_v6: IpAddr = lab.server.v6;
    let wg = WireguardGo::start(
        &lab.client.ns,
        &wg_key.to_base64(),
        PORT + 1,
        &[
            (CLIENT_V4.parse().unwrap(), 24),
            (CLIENT_V6.parse().unwrap(), 64),
        ],
        &[WgPeer {
            public_key: server.public_key().to_base64(),
            allowed_ips: vec!["10.99.0.0/24".into(), "fd99::/64".into()],
            // Over the IPv6 underlay, for variety.
            endpoint: Some(SocketAddr::new(server_v6, PORT)),
            preshared_key: None,
            persistent_keepalive: Some(25),
        }],
    )
    .unwrap();
    traffic_both_ways(&lab, || {
        format!("{}\n--- wireguard-go ---\n{}", node.log(), wg.log())
    });
    drop(wg);
    drop(node);
}
