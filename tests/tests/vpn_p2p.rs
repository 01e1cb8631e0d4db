//! suidao-server and suidao-client between two namespaces joined by a veth pair.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use suidao_lab::suidao::ping;
use suidao_tests::vpn::*;

fn ping_both_ways(underlay_v6: bool) {
    let vpn = P2pVpn::start(underlay_v6).unwrap();
    let (s, c) = (&vpn.lab.server.ns, &vpn.lab.client.ns);
    for (ns, target) in [
        (c, SERVER_V4),
        (c, SERVER_V6),
        (s, CLIENT_V4),
        (s, CLIENT_V6),
    ] {
        assert!(
            ping(ns, target, 3).unwrap(),
            "ping {target} from {} failed\n{}",
            ns.name(),
            vpn.logs()
        );
    }
    let hs = vpn.client.handshakes().unwrap();
    assert!(
        hs[0].1 > 0,
        "the client reports a handshake: {:?}",
        vpn.client.status().unwrap()
    );
    // The `status` command, as a person or a script would run it.
    let out = suidao_lab::suidao::command(s, suidao_lab::suidao::Role::Server)
        .unwrap()
        .args(["status", "--json", &vpn.server.ifname])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["interface"], vpn.server.ifname.as_str());
    assert_eq!(v["peers"][0]["name"], "client");
    assert!(v["peers"][0]["rx_bytes"].as_u64().unwrap() > 0);
    assert!(
        v["drops"].get("replay").is_some(),
        "drop counters by reason: {v}"
    );
    let text = suidao_lab::suidao::command(s, suidao_lab::suidao::Role::Server)
        .unwrap()
        .args(["status", &vpn.server.ifname])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("peer: ") && text.contains("(client)") && text.contains("latest handshake"),
        "{text}"
    );
}

#[test]
fn ping_both_ways_over_ipv4_underlay() {
    if !suidao_lab::require("ping_both_ways_over_ipv4_underlay", &["ping"]) {
        return;
    }
    ping_both_ways(false);
}

#[test]
fn ping_both_ways_over_ipv6_underlay() {
    if !suidao_lab::require("ping_both_ways_over_ipv6_underlay", &["ping"]) {
        return;
    }
    ping_both_ways(true);
}

#[test]
fn tcp_256_mib_digest_matches_and_iperf3_completes() {
    if !suidao_lab::require(
        "tcp_256_mib_digest_matches_and_iperf3_completes",
        &["iperf3"],
    ) {
        return;
    }
    let vpn = P2pVpn::start(false).unwrap();
    let (s, c) = (&vpn.lab.server.ns, &vpn.lab.client.ns);
    let to = format!("{SERVER_V4}:5001").parse().unwrap();
    let t = suidao_tests::transfer::tcp(c, s, to, 256 << 20)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", vpn.logs()));
    assert_eq!(
        t.sent, t.received,
        "SHA-256 of what was sent and what arrived"
    );
    eprintln!("256 MiB through the tunnel at {:.0} Mbit/s", t.mbit_per_s());

    let tcp = suidao_tests::transfer::iperf3(s, c, SERVER_V4, &["-t", "2"]).unwrap();
    let bps = tcp["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(bps > 0.0, "iperf3 TCP moved data: {tcp}");
    let udp =
        suidao_tests::transfer::iperf3(s, c, SERVER_V6, &["-u", "-b", "100M", "-t", "2"]).unwrap();
    let packets = udp["end"]["sum"]["packets"].as_u64().unwrap_or(0);
    assert!(packets > 0, "iperf3 UDP sent packets: {udp}");
    eprintln!(
        "iperf3: TCP {:.0} Mbit/s; UDP at 100M: {:.1}% lost",
        bps / 1e6,
        udp["end"]["sum"]["lost_percent"].as_f64().unwrap_or(0.0)
    );
}
