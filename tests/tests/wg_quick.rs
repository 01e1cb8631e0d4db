//! The real `wg-quick` (Debian's wireguard-tools) with
//! `WG_QUICK_USERSPACE_IMPLEMENTATION=suidao-wg`, on a wg-quick file, in a namespace: it starts
//! suidao-wg where the kernel module is missing, configures it with `wg setconf`, `ip` and
//! resolvconf, makes a full tunnel with its own fwmark, rules and nftables table; `wg
//! syncconf` changes the peers while the unchanged peer's session goes on; `wg-quick down`
//! leaves nothing. The other end is suidao-server.
//!
//! The resolver files wg-quick's resolvconf writes are the namespace's own (`NetnsEtc`), never
//! the machine's.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use suidao_lab::suidao::{bin_path, ping_until, run, NodeSpec, Role, TempDir};
use suidao_lab::topology::P2p;
use suidao_lab::Netns;
use suidao_tests::daemon::Daemon;
use suidao_tests::etc::{openresolv, NetnsEtc};
use suidao_tests::eventually;
use suidao_tests::vpn::{specs, PORT, SERVER_V4, SERVER_V6};

const BEFORE: &str = "nameserver 198.18.0.53\n";

/// Whether wg-quick will fall back to a userspace implementation here: it does only where
/// the kernel has no WireGuard (it uses the module wherever there is one).
fn kernel_has_wireguard() -> bool {
    Path::new("/sys/module/wireguard").exists()
}

/// `wg-quick ARGS` in the namespace (with its `/etc` files), with suidao-wg as the userspace
/// implementation; its output (and the background suidao-wg's log) goes to `log`.
fn wg_quick(etc: &NetnsEtc, args: &[&str], log: &Path) -> std::process::ExitStatus {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    etc.command("wg-quick")
        .args(args)
        .env(
            "WG_QUICK_USERSPACE_IMPLEMENTATION",
            bin_path("suidao-wg").unwrap(),
        )
        .env("LOG_LEVEL", "verbose")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .status()
        .unwrap()
}

fn write_private(path: &Path, text: &str) {
    suidao_lab::suidao::write_secret(path, text).unwrap();
}

/// The last handshake with `peer` on `ifname`, in seconds since the epoch (0: none).
fn latest_handshake(ns: &Netns, ifname: &str, peer: &str) -> u64 {
    run(ns, "wg", &["show", ifname, "latest-handshakes"])
        .unwrap()
        .lines()
        .find_map(|l| {
            let (k, t) = l.split_once('\t')?;
            (k == peer).then(|| t.trim().parse().ok())?
        })
        .unwrap_or(0)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn rules(ns: &Netns) -> String {
    let v4 = run(ns, "ip", &["-4", "rule"]).unwrap();
    let v6 = run(ns, "ip", &["-6", "rule"]).unwrap();
    format!("{v4}{v6}")
}

#[test]
fn wg_quick_runs_suidao_wg_for_a_full_tunnel_and_takes_it_all_back() {
    if !suidao_lab::require("wg-quick", &["wg-quick", "wg", "ping", "nft", "sysctl"])
        || !openresolv("wg-quick")
    {
        return;
    }
    if kernel_has_wireguard() {
        suidao_lab::unmet(
            "wg-quick",
            "a kernel without the WireGuard module (wg-quick uses the module wherever there is one)",
        );
        return;
    }
    let lab = P2p::new().unwrap();
    let dir = TempDir::new().unwrap();
    let (server, client) = specs(&lab, false).unwrap();
    let server_node = server
        .start(&lab.server.ns, Role::Server, dir.path())
        .unwrap();
    let c = &lab.client.ns;
    let etc = NetnsEtc::with_resolver(c.name(), dir.path(), BEFORE).unwrap();
    let ifname = client.ifname.clone();
    let daemon = Daemon::new(&ifname);
    // The server is reached at an address of its own beyond the client's link, through the
    // client's default route: the route a full tunnel takes over (a peer on the link itself
    // would stay reachable through the link's own route, mark or not).
    let far = "198.18.99.1";
    run(
        &lab.server.ns,
        "ip",
        &["addr", "add", &format!("{far}/32"), "dev", "lo"],
    )
    .unwrap();
    let via = lab.server.v4.to_string();
    run(c, "ip", &["route", "add", "default", "via", &via]).unwrap();
    let rules_before = rules(c);

    // The client as a wg-quick file: its key and addresses, a name server through the tunnel,
    // and everything (0.0.0.0/0, ::/0) through the server.
    let conf = dir.path().join(format!("{ifname}.conf"));
    let server_key = server.public_key().to_base64();
    write_private(
        &conf,
        &format!(
            "[Interface]\nPrivateKey = {}\nAddress = {}\nDNS = {SERVER_V4}, suidao.test\n\n\
             [Peer]\nPublicKey = {server_key}\nEndpoint = {far}:{PORT}\nAllowedIPs = 0.0.0.0/0, ::/0\n",
            client.private_key.to_base64().as_str(),
            client.addresses.join(", "),
        ),
    );
    let log = dir.path().join("wg-quick.log");
    let conf_arg = conf.to_str().unwrap();
    let logs = || {
        format!(
            "wg-quick:\n{}\nserver:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            server_node.log()
        )
    };
    let up = wg_quick(&etc, &["up", conf_arg], &log);
    assert!(up.success(), "{}", logs());
    assert!(daemon.running(), "no suidao-wg\n{}", logs());
    assert!(logs().contains("suidao-wg"), "{}", logs());

    // wg-quick's full tunnel: its mark on suidao's sockets, its rules, its nftables table.
    let mark = run(c, "wg", &["show", &ifname, "fwmark"]).unwrap();
    assert_eq!(mark.trim(), "0xca6c", "{}", logs());
    let r = rules(c);
    assert!(
        r.contains("not from all fwmark 0xca6c lookup 51820")
            && r.contains("lookup main suppress_prefixlength 0"),
        "{r}"
    );
    let nft = run(c, "nft", &["list", "tables"]).unwrap();
    assert!(nft.contains(&format!("wg-quick-{ifname}")), "{nft}");
    let during = etc.resolv_conf();
    assert!(
        during.contains(&format!("nameserver {SERVER_V4}")) && !during.contains("198.18.0.53"),
        "{during}"
    );
    // The server's far address goes through the tunnel now, except for packets with the
    // mark: so the tunnel works only if suidao's own UDP packets carry it.
    let route = run(c, "ip", &["route", "get", far]).unwrap();
    assert!(route.contains(&format!("dev {ifname}")), "{route}");
    let marked = run(c, "ip", &["route", "get", far, "mark", "0xca6c"]).unwrap();
    assert!(marked.contains(&format!("via {via}")), "{marked}");
    for addr in [SERVER_V4, SERVER_V6, far] {
        assert!(
            ping_until(c, addr, Duration::from_secs(10)).unwrap(),
            "{addr}\n{}",
            logs()
        );
    }

    // `wg syncconf` (wg-quick's way to change a running interface) adds a peer; the server's
    // session goes on (no new handshake).
    let first = latest_handshake(c, &ifname, &server_key);
    assert!(first > 0);
    // (Handshake times are whole seconds: a new one from here on would show.)
    assert!(eventually(Duration::from_secs(3), || now_secs() > first));
    // The running config as `wg showconf` gives it (key, port, wg-quick's mark, peers), with
    // one more peer. (A file without `FwMark` would take the mark away, as `wg` sends every
    // interface key of a file, and the full tunnel would route into itself: so with the
    // kernel module and wireguard-go too.)
    let running = run(c, "wg", &["showconf", &ifname]).unwrap();
    assert!(running.contains("FwMark = 0xca6c"), "{running}");
    let port = run(c, "wg", &["show", &ifname, "listen-port"]).unwrap();
    let other = NodeSpec::new("unused").public_key().to_base64();
    let before_path = dir.path().join("running.conf");
    write_private(&before_path, &running);
    let synced = dir.path().join("synced.conf");
    write_private(
        &synced,
        &format!("{running}\n[Peer]\nPublicKey = {other}\nAllowedIPs = 10.77.0.0/24\n"),
    );
    run(c, "wg", &["syncconf", &ifname, synced.to_str().unwrap()]).unwrap();
    let peers = run(c, "wg", &["show", &ifname, "peers"]).unwrap();
    assert!(
        peers.contains(&other) && peers.contains(&server_key),
        "{peers}"
    );
    assert!(
        ping_until(c, SERVER_V4, Duration::from_secs(5)).unwrap(),
        "{}\n{}",
        run(c, "wg", &["show", &ifname]).unwrap(),
        logs()
    );
    assert_eq!(
        latest_handshake(c, &ifname, &server_key),
        first,
        "syncconf restarted the unchanged peer's session\n{}",
        logs()
    );
    // And back: the added peer goes, the server's session still goes on, on the same port.
    run(
        c,
        "wg",
        &["syncconf", &ifname, before_path.to_str().unwrap()],
    )
    .unwrap();
    let peers = run(c, "wg", &["show", &ifname, "peers"]).unwrap();
    assert_eq!(peers.trim(), server_key);
    assert!(ping_until(c, SERVER_V4, Duration::from_secs(5)).unwrap());
    assert_eq!(latest_handshake(c, &ifname, &server_key), first);
    assert_eq!(
        run(c, "wg", &["show", &ifname, "listen-port"]).unwrap(),
        port
    );

    // Down: suidao-wg ends with its interface; rules, nftables, resolver as before.
    let down = wg_quick(&etc, &["down", conf_arg], &log);
    assert!(down.success(), "{}", logs());
    assert!(
        eventually(Duration::from_secs(5), || !daemon.running()),
        "suidao-wg runs on after wg-quick down"
    );
    assert!(!suidao_common::uapi::socket_path(&ifname).exists());
    assert!(run(c, "ip", &["link", "show", &ifname]).is_err());
    assert_eq!(rules(c), rules_before);
    let nft = run(c, "nft", &["list", "tables"]).unwrap();
    assert!(nft.trim().is_empty(), "{nft}");
    assert_eq!(etc.resolv_conf(), BEFORE);
}
