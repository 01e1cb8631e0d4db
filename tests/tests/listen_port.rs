//! `wg set IFACE listen-port N` on a running suidao: the engine moves to new sockets on N,
//! sessions go on, and the peer follows the new port from the next packet it gets, as when
//! a peer roams; a port already in use refuses the whole request and changes nothing.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::UdpSocket;
use suidao_lab::suidao::{ping, run};
use suidao_tests::vpn::*;

const MOVED: u16 = 51999;
const TAKEN: u16 = 51998;

#[test]
fn wg_set_listen_port_moves_a_running_interface() {
    if !suidao_lab::require("wg set listen-port", &["ping", "wg"]) {
        return;
    }
    let vpn = P2pVpn::start(false).unwrap();
    let (s, c) = (&vpn.lab.server.ns, &vpn.lab.client.ns);
    let (sif, cif) = (&vpn.server_spec.ifname, &vpn.client_spec.ifname);
    assert!(ping(c, SERVER_V4, 3).unwrap(), "{}", vpn.logs());
    let port = |ns, ifname: &str| run(ns, "wg", &["show", ifname, "listen-port"]).unwrap();
    assert_eq!(port(s, sif).trim(), PORT.to_string());

    // A port in use: refused whole, nothing moves.
    let _holder = s.run(|| UdpSocket::bind(("::", TAKEN))).unwrap().unwrap();
    let refused = run(s, "wg", &["set", sif, "listen-port", &TAKEN.to_string()]);
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(port(s, sif).trim(), PORT.to_string());
    assert!(ping(c, SERVER_V4, 2).unwrap(), "{}", vpn.logs());

    // Moved.
    run(s, "wg", &["set", sif, "listen-port", &MOVED.to_string()]).unwrap();
    assert_eq!(port(s, sif).trim(), MOVED.to_string());
    // The server speaks first from its new port; the client follows it.
    assert!(ping(s, CLIENT_V4, 3).unwrap(), "{}", vpn.logs());
    let endpoints = run(c, "wg", &["show", cif, "endpoints"]).unwrap();
    assert!(
        endpoints.trim_end().ends_with(&format!(":{MOVED}")),
        "{endpoints}\n{}",
        vpn.logs()
    );
    assert!(ping(c, SERVER_V4, 3).unwrap(), "{}", vpn.logs());
    assert!(
        vpn.server
            .log()
            .contains(&format!("UDP port {PORT} -> {MOVED}")),
        "{}",
        vpn.logs()
    );
}
