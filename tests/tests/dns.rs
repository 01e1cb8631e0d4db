//! `dns`: a client's name servers and search domain are set by `up` the way wg-quick sets them
//! (Debian's openresolv: `resolvconf -a tun.IF -m 0 -x`), names resolve through the tunnel, and
//! everything is taken back on the way down.
//!
//! Nothing of the machine's resolver is touched: the client runs under `ip netns exec`, which
//! binds the namespace's own `/etc/netns/NS/resolvconf.conf` (state in the test's folder) and
//! `resolv.conf` (a link to a file in that folder) over the machine's, for it and the
//! resolvconf it runs. The name server is a real dnsmasq in the server's namespace, listening
//! on the server's tunnel address only, so an answer can only have come through the tunnel.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::{Duration, Instant};
use suidao_lab::suidao::{bin_path, Node, NodeSpec, Role, TempDir};
use suidao_lab::topology::P2p;
use suidao_lab::Process;
use suidao_tests::etc::{openresolv, up_in, NetnsEtc};
use suidao_tests::vpn::{specs, CLIENT_V4, SERVER_V4};

/// What the namespace's resolv.conf says before `up`: a resolver nobody answers for.
const BEFORE: &str = "nameserver 198.18.0.53\n";

/// The server (with dnsmasq answering for `suidao.test` on its tunnel address) and a client
/// whose config says `extra`; the client's namespace gets its own resolver files.
struct Setup {
    lab: P2p,
    dir: TempDir,
    etc: NetnsEtc,
    client: NodeSpec,
    _server: Node,
    _dnsmasq: Option<Process>,
}

fn setup(extra: &str, dnsmasq: bool) -> Setup {
    let lab = P2p::new().unwrap();
    let dir = TempDir::new().unwrap();
    let (server, mut client) = specs(&lab, false).unwrap();
    client.extra.push_str(extra);
    let server_node = server
        .start(&lab.server.ns, Role::Server, dir.path())
        .unwrap();
    let dnsmasq = dnsmasq.then(|| {
        let child = lab
            .server
            .ns
            .command("dnsmasq")
            .unwrap()
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                &format!("--listen-address={SERVER_V4}"),
                &format!("--address=/suidao.test/{SERVER_V4}"),
                &format!("--pid-file={}", dir.path().join("dnsmasq.pid").display()),
                "--log-facility=-",
                "--log-queries",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("dnsmasq.log")).unwrap())
            .spawn()
            .unwrap();
        Process::new("dnsmasq", child)
    });
    let etc = NetnsEtc::with_resolver(lab.client.ns.name(), dir.path(), BEFORE).unwrap();
    Setup {
        lab,
        dir,
        etc,
        client,
        _server: server_node,
        _dnsmasq: dnsmasq,
    }
}

impl Setup {
    /// /etc/resolv.conf as the client's namespace sees it (through the bind).
    fn resolv_conf(&self) -> String {
        self.etc.resolv_conf()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }
}

/// `getent hosts NAME` in the client's namespace, with its resolver files, until it answers.
fn resolve_until(etc: &NetnsEtc, name: &str, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        let out = etc
            .command("getent")
            .args(["hosts", name])
            .output()
            .unwrap();
        if out.status.success() {
            return Some(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn dns_is_set_through_resolvconf_answers_through_the_tunnel_and_is_taken_back() {
    if !openresolv("dns") {
        return;
    }
    let machines = std::fs::read("/etc/resolv.conf").ok();
    let s = setup(&format!("dns = [\"{SERVER_V4}\", \"suidao.test\"]\n"), true);
    assert_eq!(s.resolv_conf(), BEFORE);
    let config = s.client.write(s.dir.path()).unwrap();
    let log = s.dir.path().join("client.log");
    let mut client = up_in(
        &s.etc,
        "suidao-client",
        &config,
        &s.client.ifname,
        &log,
        &[],
    )
    .unwrap();

    let during = s.resolv_conf();
    assert!(
        during.contains(&format!("nameserver {SERVER_V4}\n"))
            && during.contains("search suidao.test\n")
            && !during.contains("198.18.0.53"),
        "resolv.conf while up:\n{during}\n{}",
        s.log("client.log")
    );
    let state = s.dir.path().join("resolvconf/interfaces");
    let entries: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    // One entry, named as wg-quick names it: the interface (with a `tun.` in front where
    // Debian's resolvconf has an interface-order file; openresolv has none).
    assert!(
        entries.len() == 1 && entries[0].ends_with(&s.client.ifname),
        "{entries:?}"
    );
    // `web` through the search domain, asked of dnsmasq on the far side of the tunnel.
    let answer = resolve_until(&s.etc, "web", Duration::from_secs(10));
    assert_eq!(
        answer
            .as_deref()
            .map(|a| a.split_whitespace().collect::<Vec<_>>()),
        Some(vec![SERVER_V4, "web.suidao.test"]),
        "getent hosts web\n{}\n{}",
        s.log("client.log"),
        s.log("dnsmasq.log")
    );
    assert!(s.log("dnsmasq.log").contains(&format!("from {CLIENT_V4}")));
    eprintln!(
        "resolv.conf while up:\n{during}getent hosts web: {}",
        answer.unwrap_or_default()
    );

    let status = client
        .stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(5))
        .unwrap();
    assert!(status.success(), "{}", s.log("client.log"));
    assert_eq!(
        s.resolv_conf(),
        BEFORE,
        "resolv.conf after down\n{}",
        s.log("client.log")
    );
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);
    assert_eq!(std::fs::read("/etc/resolv.conf").ok(), machines);
    drop(s.lab);
}

#[test]
fn dns_without_resolvconf_or_resolvectl_is_refused_and_leaves_nothing() {
    if !openresolv("dns") {
        return;
    }
    let s = setup("dns = [\"10.99.0.1\"]\n", false);
    let before = suidao_lab::netlink::snapshot_of(&s.lab.client.ns).unwrap();
    let config = s.client.write(s.dir.path()).unwrap();
    let empty = s.dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = s
        .etc
        .command(bin_path("suidao-client").unwrap())
        .args(["up", "-c"])
        .arg(&config)
        .env("PATH", &empty)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("neither resolvconf nor resolvectl is in PATH"),
        "{stderr}"
    );
    assert_eq!(
        suidao_lab::netlink::snapshot_of(&s.lab.client.ns).unwrap(),
        before,
        "{stderr}"
    );
    assert!(!suidao_common::uapi::socket_path(&s.client.ifname).exists());
    assert_eq!(s.resolv_conf(), BEFORE);
}
