//! Reload and `wg set` change a running interface through one path that never half-applies:
//! a reload refused at its last step (a route that cannot be added) leaves peers, sessions,
//! allowed IPs and routes exactly as before, and the next valid reload goes through; a peer
//! added with `wg set` and a reload from the file then agree on what the file says. And the
//! userspace API behaves as wireguard-go's where the real `wg` tool can tell.
//!
//! The failing route is made to fail by `SUIDAO_TEST_FAIL_ROUTE` (read by debug builds only),
//! set in this test binary's environment, which the server inherits: this file holds one test.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand_core::OsRng;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use suidao_lab::netlink::{add_route, snapshot_of};
use suidao_lab::suidao::{bin_path, ping, ping_until, run, PeerSpec};
use suidao_proto::keys::PrivateKey;
use suidao_tests::vpn::*;

const FAILING_ROUTE: &str = "10.99.7.0/24";

fn reload(config: &Path) -> (bool, String) {
    let out = Command::new(bin_path("suidao-server").unwrap())
        .args(["reload", "-c"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn peer(name: &str, key: &PrivateKey, ips: &[&str]) -> PeerSpec {
    PeerSpec {
        name: Some(name.into()),
        public_key: Some(key.public_key()),
        allowed_ips: ips.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Peers as `wg show dump` lists them: key, endpoint-less fields, allowed IPs; sorted.
fn peers_of(ns: &suidao_lab::Netns, ifname: &str) -> Vec<String> {
    let dump = run(ns, "wg", &["show", ifname, "dump"]).unwrap();
    let mut v: Vec<String> = dump
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let mut ips: Vec<&str> = f[3].split(',').collect();
            ips.sort();
            format!("{} {} keepalive {}", f[0], ips.join(","), f[7])
        })
        .collect();
    v.sort();
    v
}

fn handshake_of(ns: &suidao_lab::Netns, ifname: &str, key: &str) -> String {
    let dump = run(ns, "wg", &["show", ifname, "latest-handshakes"]).unwrap();
    dump.lines()
        .find(|l| l.starts_with(key))
        .unwrap_or("")
        .to_string()
}

#[test]
fn reload_and_wg_set_share_one_path_that_never_half_applies() {
    if !suidao_lab::require("reload and wg set, one apply path", &["ping", "wg"]) {
        return;
    }
    std::env::set_var("SUIDAO_TEST_FAIL_ROUTE", FAILING_ROUTE);
    let mut vpn = P2pVpn::start(false).unwrap();
    let (s, c) = (&vpn.lab.server.ns, &vpn.lab.client.ns);
    let ifname = vpn.server.ifname.clone();
    assert!(ping(c, SERVER_V4, 2).unwrap(), "{}", vpn.logs());
    let client_key = vpn.client_spec.public_key().to_base64();

    // The file gains carol; a valid reload.
    let (carol, dave, erin) = (
        PrivateKey::generate(&mut OsRng),
        PrivateKey::generate(&mut OsRng),
        PrivateKey::generate(&mut OsRng),
    );
    vpn.server_spec
        .peers
        .push(peer("carol", &carol, &["10.99.5.0/24"]));
    let cfg = vpn.server_spec.write(vpn.dir.path()).unwrap();
    let (ok, out) = reload(&cfg);
    assert!(ok, "{out}\n{}", vpn.logs());
    let peers_before = peers_of(s, &ifname);
    let routes_before = snapshot_of(s).unwrap();
    let handshake_before = handshake_of(s, &ifname, &client_key);
    assert!(
        routes_before
            .iter()
            .any(|l| l.starts_with("route 10.99.5.0/24")),
        "carol's route: {routes_before:#?}"
    );

    // carol removed, dave added, the client's allowed IPs changed, erin added last, whose
    // route cannot be added: refused as a whole.
    vpn.server_spec
        .peers
        .retain(|p| p.name.as_deref() != Some("carol"));
    vpn.server_spec.peers[0]
        .allowed_ips
        .push("10.99.8.0/24".into());
    vpn.server_spec
        .peers
        .push(peer("dave", &dave, &["10.99.6.0/24"]));
    vpn.server_spec
        .peers
        .push(peer("erin", &erin, &[FAILING_ROUTE]));
    let cfg = vpn.server_spec.write(vpn.dir.path()).unwrap();
    let (ok, out) = reload(&cfg);
    assert!(!ok, "a reload whose route fails is refused: {out}");
    assert!(
        out.contains(FAILING_ROUTE),
        "the error names the route: {out}"
    );
    assert_eq!(
        peers_of(s, &ifname),
        peers_before,
        "peers and allowed IPs as before"
    );
    assert_eq!(snapshot_of(s).unwrap(), routes_before, "routes as before");
    assert_eq!(
        handshake_of(s, &ifname, &client_key),
        handshake_before,
        "the client's session was not touched"
    );
    assert!(ping(c, SERVER_V4, 1).unwrap(), "the tunnel still works");

    // The next valid reload goes through (erin elsewhere).
    vpn.server_spec.peers.pop();
    vpn.server_spec
        .peers
        .push(peer("erin", &erin, &["10.99.9.0/24"]));
    let cfg = vpn.server_spec.write(vpn.dir.path()).unwrap();
    let (ok, out) = reload(&cfg);
    assert!(ok, "{out}\n{}", vpn.logs());
    assert!(
        out.contains("2 peer(s) added, 1 removed, 1 changed"),
        "{out}"
    );
    let routes = snapshot_of(s).unwrap();
    for r in ["10.99.6.0/24", "10.99.8.0/24", "10.99.9.0/24"] {
        assert!(
            routes.iter().any(|l| l.starts_with(&format!("route {r}"))),
            "{r}: {routes:#?}"
        );
    }
    assert!(
        !routes.iter().any(|l| l.starts_with("route 10.99.5.0/24")),
        "carol's route went"
    );
    assert_eq!(handshake_of(s, &ifname, &client_key), handshake_before);

    // A prefix already routed through another interface (the underlay here) is refused before
    // anything changes.
    s.netlink(|h| async move {
        add_route(&h, "10.99.12.0".parse().unwrap(), 24, "veth-s").await?;
        Ok(())
    })
    .unwrap();
    let grace = PrivateKey::generate(&mut OsRng);
    vpn.server_spec
        .peers
        .push(peer("grace", &grace, &["10.99.12.0/24"]));
    let conflicting = vpn.server_spec.write(vpn.dir.path()).unwrap();
    let peers_now = peers_of(s, &ifname);
    let routes_now = snapshot_of(s).unwrap();
    let (ok, out) = reload(&conflicting);
    assert!(!ok && out.contains("already routed"), "{out}");
    assert_eq!(peers_of(s, &ifname), peers_now);
    assert_eq!(snapshot_of(s).unwrap(), routes_now);
    vpn.server_spec.peers.pop();
    let cfg = vpn.server_spec.write(vpn.dir.path()).unwrap();

    // `wg set` goes the same way: a peer it adds gets its route, and the next reload from the
    // file (which does not have it) takes both away again.
    let frank = PrivateKey::generate(&mut OsRng).public_key().to_base64();
    run(
        s,
        "wg",
        &[
            "set",
            &ifname,
            "peer",
            &frank,
            "allowed-ips",
            "10.99.10.0/24",
        ],
    )
    .unwrap();
    let routes = snapshot_of(s).unwrap();
    assert!(
        routes.iter().any(|l| l.starts_with("route 10.99.10.0/24")),
        "{routes:#?}"
    );
    let with_file = peers_of(s, &ifname);
    let (ok, out) = reload(&cfg);
    assert!(ok && out.contains("0 peer(s) added, 1 removed"), "{out}");
    let after = peers_of(s, &ifname);
    assert_eq!(after.len() + 1, with_file.len());
    assert!(!after.iter().any(|p| p.starts_with(&frank)));
    assert!(!snapshot_of(s)
        .unwrap()
        .iter()
        .any(|l| l.starts_with("route 10.99.10.0/24")));

    // The userspace API as wireguard-go answers the real `wg`: removing a peer that does not
    // exist is fine; the interface's own key as a peer is ignored; an empty allowed-IPs list
    // clears them (and their routes).
    let nobody = PrivateKey::generate(&mut OsRng).public_key().to_base64();
    run(s, "wg", &["set", &ifname, "peer", &nobody, "remove"]).unwrap();
    let own = vpn.server_spec.public_key().to_base64();
    run(
        s,
        "wg",
        &["set", &ifname, "peer", &own, "allowed-ips", "10.99.11.0/24"],
    )
    .unwrap();
    assert_eq!(peers_of(s, &ifname), after, "nothing changed");
    let dave_key = dave.public_key().to_base64();
    run(
        s,
        "wg",
        &["set", &ifname, "peer", &dave_key, "allowed-ips", ""],
    )
    .unwrap();
    let dave_line = peers_of(s, &ifname)
        .into_iter()
        .find(|p| p.starts_with(&dave_key))
        .unwrap();
    assert!(dave_line.contains(" (none) "), "{dave_line}");
    assert!(!snapshot_of(s)
        .unwrap()
        .iter()
        .any(|l| l.starts_with("route 10.99.6.0/24")));
    // Two `wg set`s at once, each giving dave a list of its own: one wins whole.
    let lists: Vec<String> = (1..=2)
        .map(|k| {
            (0..40)
                .map(|i| format!("10.{}.{i}.0/24", 100 + k))
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    let children: Vec<_> = lists
        .iter()
        .map(|l| {
            s.command("wg")
                .unwrap()
                .args(["set", &ifname, "peer", &dave_key, "allowed-ips", l])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut ch in children {
        assert!(ch.wait().unwrap().success());
    }
    let dave_line = peers_of(s, &ifname)
        .into_iter()
        .find(|p| p.starts_with(&dave_key))
        .unwrap();
    let seconds: std::collections::HashSet<&str> = dave_line
        .split(' ')
        .nth(1)
        .unwrap()
        .split(',')
        .map(|c| c.split('.').nth(1).unwrap())
        .collect();
    assert_eq!(seconds.len(), 1, "one list or the other: {dave_line}");
    assert!(
        ping_until(c, SERVER_V4, Duration::from_secs(5)).unwrap(),
        "{}",
        vpn.logs()
    );
    // `reload -c` with another file than the interface started with: refused, not silently
    // the old file re-read.
    let other = vpn.dir.path().join("other.toml");
    std::fs::copy(&cfg, &other).unwrap();
    let (ok, out) = reload(&other);
    assert!(!ok && out.contains("was started with"), "{out}");
    let (ok, out) = reload(&cfg);
    assert!(ok, "{out}");

    // What a running suidao cannot change is refused, and the log says why. (The listen port
    // can change: `listen_port.rs`.)
    let out = s
        .command("wg")
        .unwrap()
        .args(["set", &ifname, "fwmark", "7"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "wg set fwmark 7");
    let log = vpn.server.log();
    assert!(log.contains("wg set fwmark 7:"), "{log}");
}
