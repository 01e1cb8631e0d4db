//! wg-quick's `Table` and `FwMark`, as suidao's `table` and `fwmark`:
//! - `table = "off"`: `up` adds no route for the peers' allowed IPs;
//! - `table = 1234`: every allowed IP, the default route included, goes in table 1234, with no
//!   policy rules, and the tunnel works through what the main table routes;
//! - `fwmark = 0x1234` on a full tunnel: suidao's own UDP packets carry the mark (counted by an
//!   nftables rule) and the policy rule lets exactly that mark past, so the tunnel works.
//!
//! Each time the namespace is as before once `up` has gone.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use suidao_lab::suidao::{ping_until, run, NodeSpec, Role, TempDir};
use suidao_lab::topology::P2p;
use suidao_lab::Netns;
use suidao_tests::vpn::{CLIENT_V4, PORT, SERVER_V4};

fn snapshot(ns: &Netns) -> Vec<String> {
    suidao_lab::netlink::snapshot_of(ns).unwrap()
}

/// A server and a client whose `[interface]` gains `extra` and whose peer allows `routes`:
/// `during` looks at the client's namespace while the tunnel is up.
fn run_client(extra: &str, routes: &[&str], during: impl FnOnce(&P2p, &[String], &str)) {
    let lab = P2p::new().unwrap();
    let dir = TempDir::new().unwrap();
    let (server, mut client) = NodeSpec::pair(
        ["sds", "sdc"],
        &[&format!("{SERVER_V4}/24")],
        &[&format!("{CLIENT_V4}/24")],
        format!("{}:{PORT}", lab.server.v4).parse().unwrap(),
        routes,
    )
    .unwrap();
    client.extra.push_str(extra);
    let _server = server
        .start(&lab.server.ns, Role::Server, dir.path())
        .unwrap();
    let before = snapshot(&lab.client.ns);
    let mut node = client
        .start(&lab.client.ns, Role::Client, dir.path())
        .unwrap();
    assert!(
        ping_until(&lab.client.ns, SERVER_V4, Duration::from_secs(10)).unwrap(),
        "{extra}\n{}",
        node.log()
    );
    during(&lab, &snapshot(&lab.client.ns), &client.ifname);
    let exit = node.process.stop().unwrap();
    assert!(exit.success(), "{}", node.log());
    assert_eq!(snapshot(&lab.client.ns), before, "{extra}: as before");
}

fn has(lines: &[String], start: &str) -> bool {
    lines.iter().any(|l| l.starts_with(start))
}

#[test]
fn table_off_adds_no_routes() {
    if !suidao_lab::require("table off", &["ping"]) {
        return;
    }
    run_client("", &["10.99.0.0/24", "10.98.0.0/24"], |_, lines, _| {
        assert!(has(lines, "route 10.98.0.0/24"), "auto: routed {lines:#?}");
    });
    run_client(
        "table = \"off\"\n",
        &["10.99.0.0/24", "10.98.0.0/24"],
        |_, lines, _| {
            assert!(
                !has(lines, "route 10.98.0.0/24"),
                "off: not routed {lines:#?}"
            );
        },
    );
}

#[test]
fn a_table_number_takes_every_route_and_no_policy_rules() {
    if !suidao_lab::require("table 1234", &["ping"]) {
        return;
    }
    run_client(
        "table = 1234\n",
        &["0.0.0.0/0", "10.98.0.0/24"],
        |_, lines, _| {
            let in_table = |dst: &str| {
                lines
                    .iter()
                    .any(|l| l.starts_with(&format!("route {dst}")) && l.contains("table 1234"))
            };
            assert!(
                in_table("default/0") && in_table("10.98.0.0/24"),
                "{lines:#?}"
            );
            assert!(
                !lines
                    .iter()
                    .any(|l| l.starts_with("rule") && l.contains("51820")),
                "no policy rules: {lines:#?}"
            );
        },
    );
}

#[test]
fn a_full_tunnel_with_a_fwmark_marks_its_packets_and_lets_them_past() {
    if !suidao_lab::require("fwmark", &["ping", "nft", "wg"]) {
        return;
    }
    run_client("fwmark = 0x1234\n", &["0.0.0.0/0"], |lab, lines, ifname| {
        assert!(
            lines.iter().any(|l| l.starts_with("rule")
                && l.contains("Invert")
                && l.contains("FwMark(4660)")),
            "the rule lets mark 0x1234 past: {lines:#?}"
        );
        // Count what leaves for the server with the mark, then make some traffic.
        let ns = &lab.client.ns;
        run(
            ns,
            "nft",
            &[&format!(
                "add table inet sdmark; add chain inet sdmark out {{ type filter hook output priority 0; }}; add rule inet sdmark out meta mark 0x1234 udp dport {PORT} counter"
            )],
        )
        .unwrap();
        assert!(ping_until(ns, SERVER_V4, Duration::from_secs(5)).unwrap());
        let table = run(ns, "nft", &["list", "table", "inet", "sdmark"]).unwrap();
        let packets: u64 = table
            .split("packets ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(packets > 0, "marked packets to the server: {table}");
        run(ns, "nft", &["delete", "table", "inet", "sdmark"]).unwrap();
        // `wg` sees the mark, and a `wg setconf` of what `wg showconf` says goes through.
        let shown = run(ns, "wg", &["show", ifname, "fwmark"]).unwrap();
        assert_eq!(shown.trim(), "0x1234");
        let conf = run(ns, "wg", &["showconf", ifname]).unwrap();
        let path = std::env::temp_dir().join(format!("{ifname}.conf"));
        std::fs::write(&path, conf).unwrap();
        let set = run(ns, "wg", &["setconf", ifname, path.to_str().unwrap()]);
        let _ = std::fs::remove_file(&path);
        set.unwrap();
    });
}
