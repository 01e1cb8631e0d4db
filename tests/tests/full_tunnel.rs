//! A full-tunnel client: its only way out is the tunnel. It reaches an "internet" namespace
//! behind the server (which forwards and masquerades through its hooks), its own UDP to the
//! server does not loop into the tunnel, and after exit its routes and rules are as before.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use suidao_lab::suidao::{ping, ping_until, NodeSpec, Role, TempDir};
use suidao_lab::topology::{End, Lab, Link, Spec};
use suidao_lab::Netns;

fn end(host: &str, dev: &str, addr: &str) -> End {
    End {
        host: host.into(),
        dev: dev.into(),
        addresses: vec![addr.into()],
        master: None,
    }
}

fn snapshot(ns: &Netns) -> Vec<String> {
    suidao_lab::netlink::snapshot_of(ns).unwrap()
}

#[test]
fn full_tunnel_client_reaches_the_internet_behind_the_server_and_cleans_up() {
    if !suidao_lab::require("full tunnel", &["ping", "nft"]) {
        return;
    }
    let spec = Spec {
        name: "full-tunnel".into(),
        hosts: vec!["client".into(), "server".into(), "internet".into()],
        bridges: vec![],
        links: vec![
            Link {
                a: end("server", "wan", "198.18.0.1/24"),
                b: end("client", "eth0", "198.18.0.2/24"),
            },
            Link {
                a: end("server", "out", "198.18.2.1/24"),
                b: end("internet", "eth0", "198.18.2.2/24"),
            },
        ],
        routes: vec![],
        forwarding: vec![],
        masquerade: vec![],
        vpn: None,
    };
    let lab = Lab::build(spec, false).unwrap();
    let (client_ns, server_ns) = (lab.ns("client").unwrap(), lab.ns("server").unwrap());
    let dir = TempDir::new().unwrap();
    assert!(
        !ping(client_ns, "198.18.2.2", 1).unwrap(),
        "no way out without the tunnel"
    );

    let (mut server, client) = NodeSpec::pair(
        ["sds", "sdc"],
        &["10.99.0.1/24"],
        &["10.99.0.2/24"],
        "198.18.0.1:51820".parse().unwrap(),
        &["0.0.0.0/0"],
    )
    .unwrap();
    // The server forwards and masquerades for its clients through hooks, as with wg-quick.
    server.extra = "post_up = [\"sysctl -qw net.ipv4.ip_forward=1\", \"nft 'add table ip sdft; add chain ip sdft post { type nat hook postrouting priority srcnat; }; add rule ip sdft post oifname out masquerade'\"]\npre_down = \"nft delete table ip sdft\"\n".into();
    let server_node = server.start(server_ns, Role::Server, dir.path()).unwrap();
    let before = snapshot(client_ns);
    let mut client_node = client.start(client_ns, Role::Client, dir.path()).unwrap();
    assert!(
        ping_until(client_ns, "198.18.2.2", std::time::Duration::from_secs(10)).unwrap(),
        "the internet through the tunnel\n{}\n{}",
        server_node.log(),
        client_node.log()
    );
    let during = snapshot(client_ns);
    assert!(
        during
            .iter()
            .any(|l| l.starts_with("rule") && l.contains("Invert")),
        "{during:#?}"
    );
    // The tunnel works because its own packets leave directly: a handshake, and traffic counted.
    let status = client_node.status().unwrap();
    assert!(status["peers"][0]["latest_handshake"].as_u64().unwrap() > 0);
    assert!(status["peers"][0]["tx_bytes"].as_u64().unwrap() > 0);
    // The server itself stays reachable (the main table wins for it).
    assert!(ping(client_ns, "198.18.0.1", 1).unwrap());
    // `wg setconf` of the running config without its FwMark (what a file without one sends:
    // `fwmark=0`) goes through and leaves the full tunnel's mark where it is.
    let ifname = &client_node.ifname;
    let conf = suidao_lab::suidao::run(client_ns, "wg", &["showconf", ifname]).unwrap();
    let unmarked: String = conf
        .lines()
        .filter(|l| !l.starts_with("FwMark"))
        .map(|l| format!("{l}\n"))
        .collect();
    let file = dir.path().join("unmarked.conf");
    suidao_lab::suidao::write_secret(&file, &unmarked).unwrap();
    suidao_lab::suidao::run(
        client_ns,
        "wg",
        &["setconf", ifname, file.to_str().unwrap()],
    )
    .unwrap();
    let mark = suidao_lab::suidao::run(client_ns, "wg", &["show", ifname, "fwmark"]).unwrap();
    assert_eq!(mark.trim(), "0xca6c");
    assert!(
        ping_until(client_ns, "198.18.2.2", std::time::Duration::from_secs(5)).unwrap(),
        "{}",
        client_node.log()
    );

    let exit = client_node
        .process
        .stop_with(
            nix::sys::signal::Signal::SIGTERM,
            std::time::Duration::from_secs(5),
        )
        .unwrap();
    assert!(exit.success());
    assert_eq!(snapshot(client_ns), before, "routes and rules as before");
    assert!(!ping(client_ns, "198.18.2.2", 1).unwrap());
    drop(server_node);
}
