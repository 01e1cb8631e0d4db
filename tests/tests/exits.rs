//! Every way out of `up` short of SIGKILL ends in its teardown, and after a SIGKILL the next
//! `up` cleans what the last one left. The client here is a full tunnel (policy rules in both
//! families, a table of its own): the most it can leave behind.
//!
//! - `up ... 2>&1 | head -c 100`: the reader of the log pipe goes away; logging on must not
//!   take the process down, and SIGTERM then still removes everything;
//! - a panic (made by `SUIDAO_TEST_PANIC_ON_RELOAD`, read by debug builds only) ends in the
//!   teardown too;
//! - `kill -9`, then `up` and SIGTERM: the namespace is as before the first `up`;
//! - the interface deleted from outside (`ip link del`): `up` says so, tears down and exits.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use nix::sys::signal::Signal;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use suidao_lab::suidao::{bin_path, NodeSpec, TempDir};
use suidao_lab::topology::P2p;
use suidao_lab::{Netns, Process};

fn snapshot(ns: &Netns) -> Vec<String> {
    suidao_lab::netlink::snapshot_of(ns).unwrap()
}

/// A full-tunnel client of a server at 198.18.0.1 (which need not run: its handshakes go
/// unanswered, which changes nothing here). Returns (spec, config path).
fn full_tunnel_client(dir: &Path) -> (NodeSpec, PathBuf) {
    let (_server, client) = NodeSpec::pair(
        ["sds", "sdc"],
        &["10.99.0.1/24"],
        &["10.99.0.2/24", "fd99::2/64"],
        "198.18.0.1:51820".parse().unwrap(),
        &["0.0.0.0/0", "::/0"],
    )
    .unwrap();
    let path = client.write(dir).unwrap();
    (client, path)
}

/// `suidao-client up -c CONFIG` in `ns`, with standard error as given (its pipe returned when
/// piped) and more environment.
fn up(
    ns: &Netns,
    config: &Path,
    stderr: Stdio,
    env: &[(&str, &str)],
) -> (Process, Option<std::process::ChildStderr>) {
    let mut cmd = ns.command(bin_path("suidao-client").unwrap()).unwrap();
    cmd.args(["up", "-c"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let pipe = child.stderr.take();
    (Process::new("suidao-client", child), pipe)
}

fn wait_up(ifname: &str, p: &mut Process) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while suidao_common::status::query(ifname).is_err() {
        assert!(p.is_running(), "up exited during start");
        assert!(Instant::now() < deadline, "up not ready");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn reload(config: &Path) {
    let _ = Command::new(bin_path("suidao-client").unwrap())
        .args(["reload", "-c"])
        .arg(config)
        .output()
        .unwrap();
}

/// One case: a p2p lab, a full-tunnel client's config, and its namespace before any `up`.
/// Fields drop in order: the files, then the namespaces.
struct Case {
    ifname: String,
    config: PathBuf,
    before: Vec<String>,
    dir: TempDir,
    lab: P2p,
}

impl Case {
    fn new() -> Case {
        let lab = P2p::new().unwrap();
        let dir = TempDir::new().unwrap();
        let (spec, config) = full_tunnel_client(dir.path());
        let before = snapshot(&lab.client.ns);
        Case {
            ifname: spec.ifname,
            config,
            before,
            dir,
            lab,
        }
    }

    fn ns(&self) -> &Netns {
        &self.lab.client.ns
    }

    /// `up`, waited for until its control socket answers; its full-tunnel rules are in place.
    fn up(
        &self,
        stderr: Stdio,
        env: &[(&str, &str)],
    ) -> (Process, Option<std::process::ChildStderr>) {
        let (mut p, pipe) = up(self.ns(), &self.config, stderr, env);
        if pipe.is_none() {
            self.wait_up(&mut p);
        }
        (p, pipe)
    }

    fn wait_up(&self, p: &mut Process) {
        wait_up(&self.ifname, p);
        assert!(has_full_tunnel_rules(&snapshot(self.ns())));
    }

    /// The namespace as before the first `up`, and no socket file.
    fn assert_as_before(&self, what: &str) {
        assert_eq!(snapshot(self.ns()), self.before, "{what}");
        assert!(!suidao_common::uapi::socket_path(&self.ifname).exists());
    }
}

fn has_full_tunnel_rules(lines: &[String]) -> bool {
    lines
        .iter()
        .any(|l| l.starts_with("rule") && l.contains("Invert"))
}

#[test]
fn a_closed_log_pipe_neither_kills_up_nor_skips_its_teardown() {
    if !suidao_lab::require("closed log pipe", &[]) {
        return;
    }
    let case = Case::new();
    let (mut p, pipe) = case.up(Stdio::piped(), &[]);
    // `| head -c 100`: read 100 bytes of the log, then go away.
    let mut pipe = pipe.unwrap();
    let mut first = [0u8; 100];
    pipe.read_exact(&mut first).unwrap();
    drop(pipe);
    case.wait_up(&mut p);
    // Each reload logs a line into the closed pipe.
    for _ in 0..3 {
        reload(&case.config);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(p.is_running(), "up died of its closed log pipe");
    let exit = p
        .stop_with(Signal::SIGTERM, Duration::from_secs(5))
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    case.assert_as_before("everything up added is gone");
}

#[test]
fn a_panic_still_ends_in_the_teardown() {
    if !suidao_lab::require("panic teardown", &[]) {
        return;
    }
    let case = Case::new();
    let log_path = case.dir.path().join("panic.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let (mut p, _) = case.up(Stdio::from(log), &[("SUIDAO_TEST_PANIC_ON_RELOAD", "1")]);
    p.signal(Signal::SIGHUP).unwrap();
    let exit = p.wait_timeout(Duration::from_secs(10)).expect("up exits");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(!exit.success(), "a panic is a failure: {log}");
    assert!(log.contains("SUIDAO_TEST_PANIC_ON_RELOAD"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "no colour codes in a log that is not a terminal: {log}"
    );
    case.assert_as_before(&format!("torn down after the panic\n{log}"));
}

#[test]
fn after_kill_9_the_next_up_cleans_what_the_last_one_left() {
    if !suidao_lab::require("kill -9 leftovers", &[]) {
        return;
    }
    let case = Case::new();
    let (mut p, _) = case.up(Stdio::null(), &[]);
    p.stop_with(Signal::SIGKILL, Duration::from_secs(5));
    assert!(
        has_full_tunnel_rules(&snapshot(case.ns())),
        "SIGKILL leaves the rules"
    );
    assert!(suidao_common::uapi::socket_path(&case.ifname).exists());
    let (mut again, _) = case.up(Stdio::null(), &[]);
    let exit = again
        .stop_with(Signal::SIGTERM, Duration::from_secs(5))
        .unwrap();
    assert!(exit.success());
    case.assert_as_before("the second run removed the first's leftovers too");
}

#[test]
fn deleting_the_interface_from_outside_ends_up_with_its_teardown() {
    if !suidao_lab::require("interface deleted", &["ip"]) {
        return;
    }
    let case = Case::new();
    let log_path = case.dir.path().join("gone.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let (mut p, _) = case.up(Stdio::from(log), &[]);
    let del = case
        .ns()
        .command("ip")
        .unwrap()
        .args(["link", "del", &case.ifname])
        .output()
        .unwrap();
    assert!(del.status.success(), "{del:?}");
    let exit = p
        .wait_timeout(Duration::from_secs(10))
        .expect("up ends once its interface is gone");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(!exit.success(), "unexpected, so not a success: {log}");
    assert!(log.contains("deleted from outside"), "{log}");
    case.assert_as_before(&format!("torn down after the deletion\n{log}"));
}
