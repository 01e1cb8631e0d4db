//! The protocol core against a real peer: wireguard-go (Debian's package) configured with `wg`,
//! in one namespace; on the other side only suidao's core and a plain UDP socket. Both
//! directions: we initiate and ping wireguard-go's tunnel address; wireguard-go initiates
//! (a ping from its namespace) and we answer.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand_core::OsRng;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use suidao_lab::suidao::{NodeSpec, PeerSpec};
use suidao_lab::topology::P2p;
use suidao_lab::wggo::WireguardGo;
use suidao_proto::keys::{PresharedKey, PrivateKey};
use suidao_proto::{Device, PeerConfig, Sent};
use suidao_tests::core_peer::CorePeer;
use suidao_tests::icmp;

const WG_PORT: u16 = 51820;
const CORE_PORT: u16 = 51821;
const WG_TUN: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const CORE_TUN: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

struct Setup {
    core: CorePeer,
    wg: WireguardGo,
    // Dropped last: the namespaces outlive the processes and sockets in them.
    lab: P2p,
}

fn setup(psk: Option<PresharedKey>, wg_knows_our_endpoint: bool) -> Setup {
    let lab = P2p::new().expect("building the p2p topology");
    let wg_key = PrivateKey::generate(&mut OsRng);
    let core_key = PrivateKey::generate(&mut OsRng);
    let core_addr = SocketAddr::new(lab.client.v4, CORE_PORT);
    let wg_addr = SocketAddr::new(lab.server.v4, WG_PORT);
    let mut spec = NodeSpec::new("wg");
    spec.private_key = wg_key.clone();
    spec.listen_port = Some(WG_PORT);
    spec.addresses = vec![format!("{WG_TUN}/24")];
    spec.peers.push(PeerSpec {
        public_key: Some(core_key.public_key()),
        allowed_ips: vec![format!("{CORE_TUN}/32")],
        endpoint: wg_knows_our_endpoint.then(|| core_addr.to_string()),
        preshared_key: psk.clone(),
        ..Default::default()
    });
    let wg = WireguardGo::start(&lab.server.ns, &spec).expect("starting wireguard-go");
    let device = Device::new(core_key, OsRng);
    let mut peer = PeerConfig::new(wg_key.public_key());
    peer.endpoint = Some(wg_addr);
    peer.allowed_ips = vec!["10.77.0.0/24".parse().unwrap()];
    peer.preshared_key = psk;
    device.add_peer(peer).unwrap();
    let core = CorePeer::new(&lab.client.ns, core_addr, device).expect("core socket");
    Setup { core, wg, lab }
}

/// wireguard-go's view of its one peer: (latest handshake, rx bytes, tx bytes).
fn wg_peer_stats(wg: &WireguardGo) -> (u64, u64, u64) {
    let dump = wg.dump().unwrap();
    let peer_line = dump.lines().nth(1).expect("a peer line in wg show dump");
    let f: Vec<&str> = peer_line.split('\t').collect();
    (
        f[4].parse().unwrap(),
        f[5].parse().unwrap(),
        f[6].parse().unwrap(),
    )
}

#[test]
fn core_initiates_and_pings_wireguard_go() {
    if !suidao_lab::require(
        "core_initiates_and_pings_wireguard_go",
        &["wireguard-go", "wg"],
    ) {
        return;
    }
    let mut s = setup(None, false);
    for seq in 1..=3u16 {
        let payload = format!("suidao ping {seq}").into_bytes();
        let request = icmp::echo(8, CORE_TUN, WG_TUN, 0x5d, seq, &payload);
        let sent = s.core.send_ip(&request).unwrap();
        if seq == 1 {
            assert_eq!(
                sent,
                Sent::Queued,
                "the first packet waits for the handshake"
            );
        } else {
            assert!(matches!(sent, Sent::Ready { .. }), "{sent:?}");
        }
        let got = s
            .core
            .run_until(Duration::from_secs(10), |_, p| {
                Ok(icmp::parse_echo(p).is_some_and(|e| {
                    e.kind == 0
                        && e.src == WG_TUN
                        && e.dst == CORE_TUN
                        && e.seq == seq
                        && e.payload == payload
                }))
            })
            .unwrap();
        assert!(
            got,
            "no echo reply {seq} from wireguard-go; its log:\n{}",
            s.wg.log()
        );
    }
    let (handshake, rx, tx) = wg_peer_stats(&s.wg);
    assert!(handshake > 0, "wireguard-go records the handshake");
    assert!(
        rx > 0 && tx > 0,
        "wireguard-go counted traffic: rx {rx} tx {tx}"
    );
    drop(s.core);
    drop(s.wg);
    drop(s.lab);
}

#[test]
fn wireguard_go_initiates_with_psk_and_core_answers() {
    if !suidao_lab::require(
        "wireguard_go_initiates_with_psk_and_core_answers",
        &["wireguard-go", "wg", "ping"],
    ) {
        return;
    }
    let mut s = setup(Some(PresharedKey::generate(&mut OsRng)), true);
    let mut ping = suidao_lab::Process::new(
        "ping",
        s.lab
            .server
            .ns
            .command("ping")
            .unwrap()
            .args(["-c", "3", "-i", "0.2", "-W", "5", &CORE_TUN.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting ping"),
    );
    // Answer every echo request until ping has had three replies.
    let mut answered = 0;
    let done = s
        .core
        .run_until(Duration::from_secs(20), |core, p| {
            let Some(e) = icmp::parse_echo(p) else {
                return Ok(false);
            };
            assert_eq!(
                (e.kind, e.src, e.dst),
                (8, WG_TUN, CORE_TUN),
                "an echo request from wireguard-go"
            );
            let reply = icmp::echo(0, CORE_TUN, WG_TUN, e.id, e.seq, &e.payload);
            core.send_ip(&reply)?;
            answered += 1;
            Ok(answered >= 3)
        })
        .unwrap();
    assert!(
        done,
        "wireguard-go's pings did not all arrive; its log:\n{}",
        s.wg.log()
    );
    let status = ping
        .wait_timeout(Duration::from_secs(10))
        .expect("ping finished");
    assert!(
        status.success(),
        "ping from wireguard-go's namespace got its replies"
    );
    let info = s.core.device.peer_info(0).unwrap();
    assert!(info.last_handshake.is_some());
    assert_eq!(
        info.endpoint,
        Some(SocketAddr::new(s.lab.server.v4, WG_PORT))
    );
}
