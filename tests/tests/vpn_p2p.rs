//! suidao-server and suidao-client between two namespaces joined by a veth pair.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
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
    let _ = Duration::ZERO;
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
