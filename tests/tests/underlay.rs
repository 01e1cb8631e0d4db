//! What the underlay does to the outer datagrams, and suidao still delivers:
//! - an underlay narrower than the tunnel (MTU 1380 under the default tunnel MTU of 1420): the
//!   outer datagrams are fragmented by the kernel, as the kernel's WireGuard and wireguard-go
//!   let them be, so pings of every size and TCP transfers go through, over IPv4 and IPv6;
//! - a server with two addresses: its answers leave from the one the client sent to (sticky
//!   source), so a client that accepts packets only from the address it talks to still works.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use suidao_lab::netlink::{add_addr, add_route, set_mtu};
use suidao_lab::suidao::{ping_until, run, NodeSpec, Role, TempDir};
use suidao_lab::topology::P2p;
use suidao_tests::vpn::*;

const UNDERLAY_MTU: u32 = 1380;

fn narrow_underlay(underlay_v6: bool) {
    let vpn = P2pVpn::start(underlay_v6).unwrap();
    let (s, c) = (&vpn.lab.server.ns, &vpn.lab.client.ns);
    for (ns, dev) in [(s, "veth-s"), (c, "veth-c")] {
        ns.netlink(|h| async move { set_mtu(&h, dev, UNDERLAY_MTU).await.map_err(Into::into) })
            .unwrap();
    }
    assert!(
        ping_until(c, SERVER_V4, std::time::Duration::from_secs(10)).unwrap(),
        "the tunnel comes up\n{}",
        vpn.logs()
    );
    // Every inner size up to the tunnel MTU (1420): ICMP payloads up to 1392 bytes over IPv4,
    // 1372 over IPv6, in steps of 7 bytes (across the padding and the underlay limit) and the
    // limits themselves.
    for (target, max) in [(SERVER_V4, 1420 - 28), (SERVER_V6, 1420 - 48)] {
        let sizes = (0..max).step_by(7).chain([1340, 1352, max - 1, max]);
        for size in sizes {
            let size = size.to_string();
            let out = c
                .command("ping")
                .unwrap()
                .args(["-c", "1", "-W", "2", "-M", "do", "-s", &size, target])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "ping -s {size} {target} over a {UNDERLAY_MTU}-byte {} underlay: {}\n{}",
                if underlay_v6 { "IPv6" } else { "IPv4" },
                String::from_utf8_lossy(&out.stdout),
                vpn.logs()
            );
        }
    }
    let to = format!("{SERVER_V4}:5001").parse().unwrap();
    let t = suidao_tests::transfer::tcp(c, s, to, 16 << 20)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", vpn.logs()));
    assert_eq!(
        t.sent, t.received,
        "SHA-256 of what was sent and what arrived"
    );
    let to = format!("[{CLIENT_V6}]:5002").parse().unwrap();
    let t = suidao_tests::transfer::tcp(s, c, to, 16 << 20)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", vpn.logs()));
    assert_eq!(t.sent, t.received, "SHA-256, the other way, inner IPv6");
    for node in [&vpn.server, &vpn.client] {
        for reason in ["send_error", "packet_too_big"] {
            assert_eq!(node.drops(reason).unwrap(), 0, "{reason}\n{}", vpn.logs());
        }
    }
}

#[test]
fn a_narrower_underlay_still_carries_every_size_over_ipv4() {
    if !suidao_lab::require("narrow underlay, IPv4 outer", &["ping"]) {
        return;
    }
    narrow_underlay(false);
}

#[test]
fn a_narrower_underlay_still_carries_every_size_over_ipv6() {
    if !suidao_lab::require("narrow underlay, IPv6 outer", &["ping"]) {
        return;
    }
    narrow_underlay(true);
}

/// The server's underlay has a second address; the client talks to that one, and accepts UDP
/// only from it (a strict firewall, as a NAT that maps by address would be). The tunnel works
/// only if the server answers from the address the client sent to.
fn sticky_source(v6: bool) {
    let lab = P2p::new().unwrap();
    let dir = TempDir::new().unwrap();
    // IPv6 picks a source by longest matching prefix, so the second address is in another
    // prefix (reached on-link by the client); IPv4 picks the primary address of the subnet.
    let (second, prefix, primary): (IpAddr, u8, IpAddr) = if v6 {
        ("fd00:198:19::11".parse().unwrap(), 64, lab.server.v6)
    } else {
        ("198.18.0.11".parse().unwrap(), 24, lab.server.v4)
    };
    lab.server
        .ns
        .netlink(move |h| async move {
            add_addr(&h, "veth-s", second, prefix).await?;
            Ok(())
        })
        .unwrap();
    if v6 {
        lab.client
            .ns
            .netlink(move |h| async move {
                add_route(&h, second, prefix, "veth-c").await?;
                Ok(())
            })
            .unwrap();
    }
    let family = if v6 { "ip6" } else { "ip" };
    let rules = format!(
        "add table inet sticky; add chain inet sticky in {{ type filter hook input priority 0; }}; \
         add rule inet sticky in udp sport {PORT} {family} saddr != {second} drop"
    );
    run(&lab.client.ns, "nft", &[&rules]).unwrap();
    let (server, client) = NodeSpec::pair(
        ["sds", "sdc"],
        &[&format!("{SERVER_V4}/24")],
        &[&format!("{CLIENT_V4}/24")],
        SocketAddr::new(second, PORT),
        &["10.99.0.0/24"],
    )
    .unwrap();
    let server_node = server
        .start(&lab.server.ns, Role::Server, dir.path())
        .unwrap();
    let client_node = client
        .start(&lab.client.ns, Role::Client, dir.path())
        .unwrap();
    let logs = || {
        format!(
            "--- server ---\n{}\n--- client ---\n{}",
            server_node.log(),
            client_node.log()
        )
    };
    assert!(
        ping_until(
            &lab.client.ns,
            SERVER_V4,
            std::time::Duration::from_secs(10)
        )
        .unwrap(),
        "ping through a tunnel to the server's second address {second} (not {primary})\n{}",
        logs()
    );
    // Traffic the server starts (not a reply to a packet just received) leaves from there too.
    assert!(
        ping_until(&lab.server.ns, CLIENT_V4, std::time::Duration::from_secs(5)).unwrap(),
        "{}",
        logs()
    );
    let dropped = run(&lab.client.ns, "nft", &["list", "table", "inet", "sticky"]).unwrap();
    assert!(
        dropped.contains("drop"),
        "the firewall rule is in place: {dropped}"
    );
}

#[test]
fn answers_leave_from_the_address_the_peer_sent_to_ipv4() {
    if !suidao_lab::require("sticky source, IPv4", &["ping", "nft"]) {
        return;
    }
    sticky_source(false);
}

#[test]
fn answers_leave_from_the_address_the_peer_sent_to_ipv6() {
    if !suidao_lab::require("sticky source, IPv6", &["ping", "nft"]) {
        return;
    }
    sticky_source(true);
}

/// The engine's own drops are counted by reason and shown by `status`: here a peer whose
/// endpoint has no route (nothing leaves the namespace), so every handshake initiation fails
/// to send; the cause is logged once, not once per packet.
#[test]
fn failed_sends_are_counted_by_reason_and_logged_once() {
    if !suidao_lab::require("failed sends counted", &["ping"]) {
        return;
    }
    let lab = P2p::new().unwrap();
    let dir = TempDir::new().unwrap();
    // 198.19.255.1 is in the benchmarking range, and no route in the namespace leads there.
    let nowhere: SocketAddr = "198.19.255.1:51820".parse().unwrap();
    let (_server, client) = NodeSpec::pair(
        ["sds", "sdc"],
        &[&format!("{SERVER_V4}/24")],
        &[&format!("{CLIENT_V4}/24")],
        nowhere,
        &["10.99.0.0/24"],
    )
    .unwrap();
    let node = client
        .start(&lab.client.ns, Role::Client, dir.path())
        .unwrap();
    // The first initiation goes at start (persistent keepalive), the retry 5 s later.
    assert!(!suidao_lab::suidao::ping(&lab.client.ns, SERVER_V4, 3).unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while node.drops("send_error").unwrap() < 2 {
        assert!(std::time::Instant::now() < deadline, "{}", node.log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let status = node.status().unwrap();
    for reason in [
        "send_error",
        "packet_too_big",
        "tun_write_error",
        "handshake_queue_full",
    ] {
        assert!(
            status["drops"].get(reason).is_some(),
            "{reason} in {status}"
        );
    }
    let log = node.log();
    assert_eq!(
        log.matches("counted as send_error").count(),
        1,
        "logged once:\n{log}"
    );
}
