//! A server and three clients in separate namespaces plugged into one bridge.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use suidao_lab::suidao::ping;
use suidao_tests::vpn::*;

#[test]
fn every_client_reaches_the_server_and_every_other_client() {
    if !suidao_lab::require(
        "every_client_reaches_the_server_and_every_other_client",
        &["ping"],
    ) {
        return;
    }
    let vpn = HubVpn::start(3).unwrap();
    for (i, host) in vpn.lab.clients.iter().enumerate() {
        assert!(
            ping(&host.ns, SERVER_V4, 2).unwrap(),
            "client{} -> server\n{}",
            i + 1,
            vpn.logs()
        );
        for j in 1..=3 {
            if j != i + 1 {
                let target = hub_client_v4(j);
                assert!(
                    ping(&host.ns, &target, 2).unwrap(),
                    "client{} -> client{j} ({target}) through the server\n{}",
                    i + 1,
                    vpn.logs()
                );
            }
        }
    }
}

#[test]
fn a_client_speaking_for_another_clients_address_is_dropped_and_counted() {
    if !suidao_lab::require(
        "a_client_speaking_for_another_clients_address_is_dropped_and_counted",
        &["ping"],
    ) {
        return;
    }
    let vpn = HubVpn::start(2).unwrap();
    let client1 = &vpn.lab.clients[0].ns;
    assert!(ping(client1, SERVER_V4, 1).unwrap(), "{}", vpn.logs());
    let before = vpn.server.drops("source_not_allowed").unwrap();
    // Client 1 claims client 2's tunnel address and sends with it as the source.
    let stolen: IpAddr = hub_client_v4(2).parse().unwrap();
    let ifname = vpn.clients[0].ifname.clone();
    client1
        .netlink(
            |h| async move { Ok(suidao_lab::netlink::add_addr(&h, &ifname, stolen, 32).await?) },
        )
        .unwrap();
    let out = client1
        .command("ping")
        .unwrap()
        .args([
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
            "-q",
            "-I",
            &hub_client_v4(2),
            SERVER_V4,
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the server must not answer packets with a stolen source"
    );
    let after = vpn.server.drops("source_not_allowed").unwrap();
    assert!(
        after >= before + 3,
        "source_not_allowed went from {before} to {after}"
    );
    // The honest client 2 is unaffected.
    assert!(ping(&vpn.lab.clients[1].ns, SERVER_V4, 1).unwrap());
}
