//! `suidao-wg INTERFACE`: wireguard-go's command line over suidao's data path. It goes to the
//! background once its interface and control socket exist, takes everything else through the
//! userspace API (a key set at run time, a mark on the live sockets), and ends with its
//! interface.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;
use suidao_lab::suidao::{bin_path, ping, ping_until, run, NodeSpec, Role, TempDir};
use suidao_lab::topology::P2p;
use suidao_lab::wggo::{Userspace, WireguardGo};
use suidao_lab::Process;
use suidao_tests::daemon::Daemon;
use suidao_tests::vpn::{specs, CLIENT_V4, SERVER_V4};
use suidao_tests::{eventually, veth};

/// Three pings of `size` data bytes from `ns` to `target` that may not be fragmented (DF);
/// whether all came back, and ping's output.
fn ping_df(ns: &suidao_lab::Netns, size: usize, target: &str) -> (bool, String) {
    let size = size.to_string();
    let out = ns
        .command("ping")
        .unwrap()
        .args([
            "-c", "3", "-i", "0.2", "-W", "2", "-M", "do", "-s", &size, target,
        ])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn socket(ifname: &str) -> std::path::PathBuf {
    suidao_common::uapi::socket_path(ifname)
}

#[test]
fn suidao_wg_goes_to_the_background_when_ready_and_ends_with_its_interface() {
    if !suidao_lab::require("suidao-wg", &["ip", "wg"]) {
        return;
    }
    let lab = P2p::new().unwrap();
    let ns = &lab.client.ns;
    let ifname = suidao_lab::unique("sdw");
    let daemon = Daemon::new(&ifname);
    let bin = bin_path("suidao-wg").unwrap();

    // The first process returns once the interface and its socket exist, and says nothing.
    let out = ns.command(&bin).unwrap().arg(&ifname).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    assert!(socket(&ifname).exists());
    assert!(daemon.running(), "no background process");
    let link = run(ns, "ip", &["link", "show", &ifname]).unwrap();
    // MTU 1420 and down, as wireguard-go makes it: up once configured (wg-quick sets it up).
    assert!(link.contains("mtu 1420") && !link.contains(",UP"), "{link}");
    // No key yet: `wg` shows the port and nothing to hide.
    let show = run(ns, "wg", &["show", &ifname]).unwrap();
    assert!(
        show.contains("listening port") && !show.contains("key"),
        "{show}"
    );

    // A second one for the same interface: refused, with the reason, by the first process.
    let again = ns.command(&bin).unwrap().arg(&ifname).output().unwrap();
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && said.contains("already up"),
        "{again:?}"
    );
    // A name Linux would refuse.
    let bad = ns.command(&bin).unwrap().arg("no/such").output().unwrap();
    assert!(
        !bad.status.success()
            && String::from_utf8_lossy(&bad.stderr).contains("not a usable interface name"),
        "{bad:?}"
    );

    // `ip link del` (what `wg-quick down` does) ends it, its socket removed.
    run(ns, "ip", &["link", "del", &ifname]).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || !daemon.running()),
        "suidao-wg still runs after its interface was deleted"
    );
    assert!(!socket(&ifname).exists());

    // In the foreground, SIGTERM ends it, taking the interface and the socket with it.
    let fg_name = suidao_lab::unique("sdw");
    let _fg_guard = Daemon::new(&fg_name);
    let child = ns
        .command(&bin)
        .unwrap()
        .args(["--foreground", &fg_name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut fg = Process::new("suidao-wg", child);
    assert!(eventually(Duration::from_secs(10), || socket(&fg_name).exists()));
    let status = fg
        .stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(5))
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!socket(&fg_name).exists());
    assert!(run(ns, "ip", &["link", "show", &fg_name]).is_err());
}

/// The client is suidao-wg configured with `wg set` (as the lab drives wireguard-go), the
/// server suidao-server.
#[test]
fn suidao_wg_takes_a_new_private_key_and_a_mark_at_run_time() {
    if !suidao_lab::require("suidao-wg key and mark", &["ip", "wg", "ping"]) {
        return;
    }
    let lab = P2p::new().unwrap();
    let dir = TempDir::new().unwrap();
    let (server, client) = specs(&lab, false).unwrap();
    let server_node = server
        .start(&lab.server.ns, Role::Server, dir.path())
        .unwrap();
    let wg = WireguardGo::start_as(Userspace::SuidaoWg, &lab.client.ns, &client).unwrap();
    let (s, c) = (&lab.server.ns, &lab.client.ns);
    let logs = || format!("{}\n{}", server_node.log(), wg.log());
    assert!(
        ping_until(c, SERVER_V4, Duration::from_secs(10)).unwrap(),
        "{}",
        logs()
    );

    // A new key: the sessions made with the old one stop sending, and the server does not
    // know the new one, so nothing gets through...
    let new = NodeSpec::new("unused").private_key;
    let key_file = dir.path().join("new.key");
    std::fs::write(&key_file, new.to_base64()).unwrap();
    run(
        c,
        "wg",
        &["set", &wg.ifname, "private-key", key_file.to_str().unwrap()],
    )
    .unwrap();
    let shown = run(c, "wg", &["show", &wg.ifname, "public-key"]).unwrap();
    assert_eq!(shown.trim(), new.public_key().to_base64());
    assert!(!ping(c, SERVER_V4, 3).unwrap(), "{}", logs());
    assert!(wg.log().contains("private key changed"), "{}", wg.log());
    // ...until the server is told the new key.
    run(
        s,
        "wg",
        &[
            "set",
            &server.ifname,
            "peer",
            &client.public_key().to_base64(),
            "remove",
            "peer",
            &new.public_key().to_base64(),
            "allowed-ips",
            &format!("{CLIENT_V4}/32"),
        ],
    )
    .unwrap();
    assert!(
        ping_until(c, SERVER_V4, Duration::from_secs(10)).unwrap(),
        "{}",
        logs()
    );

    // A mark on the live sockets: policy routing sends marked packets into a black hole...
    for args in [
        &["rule", "add", "fwmark", "1234", "table", "100"][..],
        &["route", "add", "blackhole", "default", "table", "100"][..],
    ] {
        run(c, "ip", args).unwrap();
    }
    run(c, "wg", &["set", &wg.ifname, "fwmark", "1234"]).unwrap();
    let mark = run(c, "wg", &["show", &wg.ifname, "fwmark"]).unwrap();
    assert_eq!(mark.trim(), "0x4d2");
    assert!(
        !ping(c, SERVER_V4, 3).unwrap(),
        "marked packets got past the rule"
    );
    // ...and without it they go again.
    run(c, "wg", &["set", &wg.ifname, "fwmark", "0"]).unwrap();
    assert_eq!(
        run(c, "wg", &["show", &wg.ifname, "fwmark"])
            .unwrap()
            .trim(),
        "off"
    );
    assert!(
        ping_until(c, SERVER_V4, Duration::from_secs(10)).unwrap(),
        "{}",
        logs()
    );
}

/// The namespace trick: the interface moved to another namespace after it was made keeps its
/// tunnel, its UDP sockets staying where suidao-wg started (a container whose only interface
/// is the tunnel), and its MTU is followed in its new namespace.
#[test]
fn the_interface_moved_to_another_namespace_keeps_its_tunnel() {
    if !suidao_lab::require("suidao-wg namespace trick", &["ip", "wg", "ping"]) {
        return;
    }
    let lab = P2p::new().unwrap();
    let dir = TempDir::new().unwrap();
    let container = suidao_lab::Netns::create(&suidao_lab::unique("sdlab-box")).unwrap();
    let (server, client) = specs(&lab, false).unwrap();
    let server_node = server
        .start(&lab.server.ns, Role::Server, dir.path())
        .unwrap();
    let wg = WireguardGo::start_as(Userspace::SuidaoWg, &lab.client.ns, &client).unwrap();
    let logs = || format!("{}\n{}", server_node.log(), wg.log());
    assert!(
        ping_until(&lab.client.ns, SERVER_V4, Duration::from_secs(10)).unwrap(),
        "{}",
        logs()
    );

    run(
        &lab.client.ns,
        "ip",
        &["link", "set", &wg.ifname, "netns", container.name()],
    )
    .unwrap();
    let ifname = wg.ifname.as_str();
    for args in [
        &["addr", "add", &format!("{CLIENT_V4}/24"), "dev", ifname][..],
        &["link", "set", ifname, "up"][..],
    ] {
        run(&container, "ip", args).unwrap();
    }
    // The container has no other way out: only the tunnel carries this.
    let links = run(&container, "ip", &["-o", "link"]).unwrap();
    assert_eq!(links.lines().count(), 2, "{links}");
    assert!(
        ping_until(&container, SERVER_V4, Duration::from_secs(10)).unwrap(),
        "{}",
        logs()
    );
    // `wg` still reaches it through its socket, and the process still runs.
    let peers = run(&container, "wg", &["show", ifname, "peers"]).unwrap();
    assert_eq!(peers.trim(), server.public_key().to_base64());
    // Its MTU, set in its new namespace, is followed there (the TUN tells where it went):
    // 9,000-byte packets both ways, with the server's interface raised too.
    run(&container, "ip", &["link", "set", ifname, "mtu", "9000"]).unwrap();
    run(
        &lab.server.ns,
        "ip",
        &["link", "set", &server.ifname, "mtu", "9000"],
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || wg
            .log()
            .contains("MTU 1420 -> 9000")),
        "{}",
        logs()
    );
    let (ok, said) = ping_df(&container, 8972, SERVER_V4);
    assert!(ok, "{said}\n{}", logs());
    // Deleted in its new namespace, it ends all the same.
    run(&container, "ip", &["link", "del", ifname]).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || !socket(ifname).exists()),
        "{}",
        wg.log()
    );
}

/// `ip -stats link show IFACE` as numbers: (rx packets, rx bytes, tx packets, tx bytes).
fn link_stats(ns: &suidao_lab::Netns, ifname: &str) -> (u64, u64, u64, u64) {
    let out = run(ns, "ip", &["-j", "-s", "link", "show", ifname]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let s = &v[0]["stats64"];
    let n = |dir: &str, what: &str| s[dir][what].as_u64().unwrap_or(0);
    (
        n("rx", "packets"),
        n("rx", "bytes"),
        n("tx", "packets"),
        n("tx", "bytes"),
    )
}

/// What others do to the interface: `ip link set mtu` (35,000 over a jumbo underlay) takes
/// effect for what suidao seals and delivers, `ip -stats link` counts right, and down then up
/// keeps the device.
#[test]
fn mtu_set_from_outside_takes_effect_and_down_up_keeps_the_device() {
    if !suidao_lab::require("suidao-wg mtu", &["ip", "wg", "ping"]) {
        return;
    }
    let lab = P2p::new().unwrap();
    let (server, client) = NodeSpec::pair(
        ["sdm", "sdm"],
        &["10.95.0.1/24"],
        &["10.95.0.2/24"],
        std::net::SocketAddr::new(lab.server.v4, 51870),
        &["10.95.0.0/24"],
    )
    .unwrap();
    let (sn, cn) = (&lab.server.ns, &lab.client.ns);
    let s = WireguardGo::start_as(Userspace::SuidaoWg, sn, &server).unwrap();
    let c = WireguardGo::start_as(Userspace::SuidaoWg, cn, &client).unwrap();
    let logs = || format!("{}\n{}", s.log(), c.log());
    assert!(
        ping_until(cn, "10.95.0.1", Duration::from_secs(10)).unwrap(),
        "{}",
        logs()
    );

    // Counters: ten pings of 1,000 bytes are ten packets each way through the TUN.
    let before = link_stats(cn, &c.ifname);
    run(
        cn,
        "ping",
        &["-c", "10", "-i", "0.05", "-s", "1000", "10.95.0.1"],
    )
    .unwrap();
    let after = link_stats(cn, &c.ifname);
    assert_eq!(after.2 - before.2, 10, "tx packets {before:?} {after:?}");
    assert_eq!(after.0 - before.0, 10, "rx packets {before:?} {after:?}");
    assert_eq!(
        after.3 - before.3,
        10 * 1028,
        "tx bytes {before:?} {after:?}"
    );
    assert_eq!(
        after.1 - before.1,
        10 * 1028,
        "rx bytes {before:?} {after:?}"
    );

    // A jumbo underlay, and 35,000 bytes inside the tunnel, set by others.
    for (ns, wg) in [(sn, &s), (cn, &c)] {
        run(
            ns,
            "ip",
            &["link", "set", &veth(ns).unwrap(), "mtu", "65535"],
        )
        .unwrap();
        run(ns, "ip", &["link", "set", &wg.ifname, "mtu", "35000"]).unwrap();
    }
    for wg in [&s, &c] {
        assert!(
            eventually(Duration::from_secs(5), || wg
                .log()
                .contains("MTU 1420 -> 35000")),
            "{}",
            wg.log()
        );
    }
    // A 35,000-byte packet (34,972 bytes of ping data), not fragmented, both ways.
    let (ok, said) = ping_df(cn, 34972, "10.95.0.1");
    assert!(ok, "{said}\n{}", logs());

    // Down and up again: the same device, the tunnel as before.
    run(cn, "ip", &["link", "set", &c.ifname, "down"]).unwrap();
    run(cn, "ip", &["link", "set", &c.ifname, "up"]).unwrap();
    assert!(
        ping_until(cn, "10.95.0.1", Duration::from_secs(10)).unwrap(),
        "{}",
        logs()
    );
    assert!(c.log().contains("private key set") && !c.log().contains("going down"));
}
