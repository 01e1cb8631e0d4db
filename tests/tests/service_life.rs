//! Running suidao as a service: provisioning a client and reloading without disturbing the
//! others, removing one, the wg-quick file a WireGuard app would scan, hooks, systemd units.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use suidao_common::wgquick;
use suidao_lab::measure::Pinger;
use suidao_lab::suidao::{bin_path, ping, ping_until, Node, NodeSpec, PeerSpec, Role, TempDir};
use suidao_lab::topology::{Hub, P2p};
use suidao_lab::wggo::WireguardGo;
use suidao_tests::vpn::{hub_client_v4, PORT, SERVER_V4};

fn server_bin(args: &[&str], config: &Path) -> String {
    let out = Command::new(bin_path("suidao-server").unwrap())
        .args(args)
        .arg("-c")
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "suidao-server {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A server spec with a public endpoint and hooks that leave traces in `dir`.
fn server_spec(endpoint: SocketAddr, dir: &Path) -> NodeSpec {
    let mut s = NodeSpec::new("sds");
    s.listen_port = Some(PORT);
    s.addresses = vec![format!("{SERVER_V4}/24"), "fd99::1/64".into()];
    s.extra = format!(
        "public_endpoint = \"{endpoint}\"\npost_up = \"echo up %i > {0}/post_up\"\npost_down = [\"echo down %i > {0}/post_down\"]\n",
        dir.display()
    );
    s
}

fn client_handshake(server: &Node, key: &str) -> u64 {
    let v = server.status().unwrap();
    v["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["public_key"] == key)
        .map_or(0, |p| p["latest_handshake"].as_u64().unwrap_or(0))
}

#[test]
fn add_client_and_reload_keep_others_undisturbed_then_remove_client() {
    if !suidao_lab::require("add-client + reload", &["ping"]) {
        return;
    }
    let lab = Hub::new(2).unwrap();
    let dir = TempDir::new().unwrap();
    let mut server = server_spec(SocketAddr::new(lab.server.v4, PORT), dir.path());
    let mut alice = NodeSpec::new("sdc");
    alice.addresses = vec![format!("{}/24", hub_client_v4(1))];
    alice.peers.push(PeerSpec {
        name: Some("server".into()),
        public_key: Some(server.public_key()),
        endpoint: Some(format!("{}:{PORT}", lab.server.v4)),
        allowed_ips: vec!["10.99.0.0/24".into()],
        persistent_keepalive: Some(25),
        ..Default::default()
    });
    server.peers.push(PeerSpec {
        name: Some("alice".into()),
        public_key: Some(alice.public_key()),
        allowed_ips: vec![format!("{}/32", hub_client_v4(1))],
        ..Default::default()
    });
    let server_cfg = server.write(dir.path()).unwrap();
    let mut server_node =
        Node::start(&lab.server.ns, Role::Server, &server_cfg, &server.ifname).unwrap();
    let _alice_node = alice
        .start(&lab.clients[0].ns, Role::Client, dir.path())
        .unwrap();
    assert!(
        ping(&lab.clients[0].ns, SERVER_V4, 2).unwrap(),
        "{}",
        server_node.log()
    );
    let post_up = std::fs::read_to_string(dir.path().join("post_up")).unwrap();
    assert_eq!(
        post_up.trim(),
        format!("up {}", server.ifname),
        "post_up ran with %i"
    );
    let alice_key = alice.public_key().to_base64();
    let handshake_before = client_handshake(&server_node, &alice_key);
    assert!(handshake_before > 0);

    // Alice pings throughout the add-client and the reload.
    let mut pinger = Pinger::start(
        &lab.clients[0].ns,
        SERVER_V4,
        "0.05",
        &dir.path().join("alice-ping.out"),
    )
    .unwrap();
    assert!(
        pinger.wait_replies(5, Duration::from_secs(5)),
        "alice's ping before"
    );
    let bob_if = suidao_lab::unique("sdb");
    let out = server_bin(&["add-client", "bob", "--ifname", &bob_if], &server_cfg);
    assert!(
        out.contains("added client bob (10.99.0.2/24, fd99::2/64)"),
        "{out}"
    );
    let out = server_bin(&["reload"], &server_cfg);
    assert!(out.contains("1 peer(s) added, 0 removed"), "{out}");
    assert!(
        pinger.wait_replies(5, Duration::from_secs(5)),
        "alice's ping after the reload"
    );

    // Bob connects with the NAME.toml that add-client wrote.
    let bob_toml: PathBuf = server_cfg.parent().unwrap().join("bob.toml");
    let bob = Node::start(&lab.clients[1].ns, Role::Client, &bob_toml, &bob_if).unwrap();
    assert!(
        ping_until(&lab.clients[1].ns, "10.99.0.1", Duration::from_secs(10)).unwrap(),
        "{}\n{}",
        server_node.log(),
        bob.log()
    );
    // Bob and Alice reach each other through the server.
    assert!(ping(&lab.clients[1].ns, &hub_client_v4(1), 1).unwrap());

    assert!(pinger.wait_replies(3, Duration::from_secs(5)));
    let (sent, received) = pinger.stop();
    let summary = format!("{sent} sent, {received} received");
    let numbers = [sent, received];
    assert!(numbers.len() >= 2 && numbers[0] > 10, "{summary}");
    assert_eq!(
        numbers[0], numbers[1],
        "Alice lost no ping across the reload: {summary}"
    );
    assert_eq!(
        client_handshake(&server_node, &alice_key),
        handshake_before,
        "Alice's session survived the reload (no new handshake)"
    );

    // remove-client + reload (by SIGHUP this time, as systemd's ExecReload sends): Bob is cut
    // off, Alice is not.
    server_bin(&["remove-client", "bob"], &server_cfg);
    server_node
        .process
        .signal(nix::sys::signal::Signal::SIGHUP)
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while server_node.status().unwrap()["peers"]
        .as_array()
        .unwrap()
        .len()
        != 1
    {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not remove bob\n{}",
            server_node.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        server_node
            .log()
            .contains("reload: 0 peer(s) added, 1 removed"),
        "{}",
        server_node.log()
    );
    assert!(
        !ping(&lab.clients[1].ns, "10.99.0.1", 2).unwrap(),
        "Bob is gone"
    );
    assert!(
        ping(&lab.clients[0].ns, SERVER_V4, 2).unwrap(),
        "Alice is not"
    );
    assert!(server_bin(&["list-clients"], &server_cfg).contains("alice"));

    server_node.process.stop();
    let post_down = std::fs::read_to_string(dir.path().join("post_down")).unwrap();
    assert_eq!(
        post_down.trim(),
        format!("down {}", server.ifname),
        "post_down ran"
    );
    drop(bob);
}

#[test]
fn wireguard_go_configured_from_the_conf_that_add_client_writes() {
    if !suidao_lab::require(
        "wireguard-go from NAME.conf",
        &["wireguard-go", "wg", "ping"],
    ) {
        return;
    }
    let lab = P2p::new().unwrap();
    let dir = TempDir::new().unwrap();
    let server = server_spec(SocketAddr::new(lab.server.v4, PORT), dir.path());
    let server_cfg = server.write(dir.path()).unwrap();
    let server_node =
        Node::start(&lab.server.ns, Role::Server, &server_cfg, &server.ifname).unwrap();
    server_bin(&["add-client", "phone", "--qr"], &server_cfg);
    server_bin(&["reload"], &server_cfg);

    // What a WireGuard app would read from the QR code: the wg-quick file.
    let conf = std::fs::read_to_string(dir.path().join("phone.conf")).unwrap();
    let sections = wgquick::parse(&conf).unwrap();
    let get = |kind: &str, key: &str| -> Vec<String> {
        sections
            .iter()
            .filter(|s| s.kind == kind)
            .flat_map(|s| {
                s.entries
                    .iter()
                    .filter(|(k, _)| k == key)
                    .map(|(_, v)| v.clone())
            })
            .flat_map(|v| {
                v.split(',')
                    .map(|x| x.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    // The phone: the file's values as a node description, run by wireguard-go.
    let mut phone = NodeSpec::new("wgp");
    phone.private_key = get("interface", "PrivateKey")[0].parse().unwrap();
    phone.listen_port = Some(51899);
    phone.addresses = get("interface", "Address");
    phone.peers.push(PeerSpec {
        public_key: Some(get("peer", "PublicKey")[0].parse().unwrap()),
        allowed_ips: get("peer", "AllowedIPs"),
        endpoint: Some(get("peer", "Endpoint")[0].clone()),
        preshared_key: Some(get("peer", "PresharedKey")[0].parse().unwrap()),
        persistent_keepalive: get("peer", "PersistentKeepalive")
            .first()
            .map(|k| k.parse().unwrap()),
        ..Default::default()
    });
    let wg = WireguardGo::start(&lab.client.ns, &phone).unwrap();
    assert!(
        ping_until(&lab.client.ns, SERVER_V4, Duration::from_secs(10)).unwrap(),
        "{}\n{}",
        server_node.log(),
        wg.log()
    );
    assert!(
        ping(&lab.client.ns, "fd99::1", 1).unwrap(),
        "IPv6 inside too"
    );
    drop(wg);
    drop(server_node);
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    if !suidao_lab::require("systemd-analyze verify", &["systemd-analyze"]) {
        return;
    }
    let dir = TempDir::new().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    for role in ["server", "client"] {
        let unit = std::fs::read_to_string(root.join(format!("suidao-{role}@.service"))).unwrap();
        assert!(
            unit.contains("Type=notify") && unit.contains("ExecReload=/bin/kill -HUP $MAINPID")
        );
        assert!(unit.contains("CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE"));
        // verify checks that ExecStart exists: point it at the binary just built.
        let bin = bin_path(&format!("suidao-{role}")).unwrap();
        let unit = unit.replace(
            &format!("/usr/local/bin/suidao-{role}"),
            bin.to_str().unwrap(),
        );
        let path = dir.path().join(format!("suidao-{role}@test.service"));
        std::fs::write(&path, unit).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "systemd-analyze verify {role}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The drop-in that makes `wg-quick@.service` run suidao-wg: applied to Debian's own unit, it
/// verifies, and the unit's environment names suidao-wg.
#[test]
fn the_wg_quick_drop_in_applies_to_debians_unit() {
    if !suidao_lab::require("wg-quick drop-in", &["systemd-analyze", "wg-quick"]) {
        return;
    }
    let Some(unit) = ["/lib/systemd/system", "/usr/lib/systemd/system"]
        .iter()
        .map(|d| Path::new(d).join("wg-quick@.service"))
        .find(|p| p.exists())
    else {
        suidao_lab::unmet("wg-quick drop-in", "wg-quick@.service (wireguard-tools)");
        return;
    };
    let dir = TempDir::new().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let drop_in = std::fs::read_to_string(root.join("wg-quick@.service.d/suidao.conf")).unwrap();
    // A unit path of the test's own: Debian's unit as wg-quick@test.service, and the drop-in
    // beside it, pointing at the binary just built.
    let bin = bin_path("suidao-wg").unwrap();
    let drop_in = drop_in.replace("/usr/local/bin/suidao-wg", bin.to_str().unwrap());
    std::fs::copy(&unit, dir.path().join("wg-quick@.service")).unwrap();
    let d = dir.path().join("wg-quick@.service.d");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("suidao.conf"), &drop_in).unwrap();
    let analyze = |args: &[&str]| {
        Command::new("systemd-analyze")
            .args(args)
            .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.path().display()))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = analyze(&["verify", "wg-quick@test.service"]);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // That verify read the drop-in: the same with a misspelt key is reported, by its file.
    std::fs::write(
        d.join("suidao.conf"),
        drop_in.replace("Environment=", "Enviroment="),
    )
    .unwrap();
    let out = analyze(&["verify", "wg-quick@test.service"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("suidao.conf") && said.contains("Enviroment"),
        "{said}"
    );
}
