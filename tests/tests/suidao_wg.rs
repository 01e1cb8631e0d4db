//! `suidao-wg INTERFACE`: wireguard-go's command line over suidao's data path. It goes to the
//! background once its interface and control socket exist, takes everything else through the
//! userspace API (a key set at run time, a mark on the live sockets), and ends with its
//! interface.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::{Duration, Instant};
use suidao_lab::suidao::{bin_path, ping, ping_until, run, NodeSpec, Role, TempDir};
use suidao_lab::topology::P2p;
use suidao_lab::wggo::{Userspace, WireguardGo};
use suidao_lab::Process;
use suidao_tests::daemon::Daemon;
use suidao_tests::vpn::{specs, CLIENT_V4, SERVER_V4};

fn socket(ifname: &str) -> std::path::PathBuf {
    suidao_common::uapi::socket_path(ifname)
}

/// Waits up to `within` for `cond`.
fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !cond() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
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
    assert!(link.contains("mtu 1420"), "{link}");
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
