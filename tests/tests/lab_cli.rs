//! The `suidao-lab` command as a person runs it: `demo --keep` then `down`, and a demo
//! interrupted with SIGINT halfway through. (Its own test binary: `down` removes every lab
//! namespace, so nothing else may run beside it.)
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use suidao_lab::suidao::bin_path;
use suidao_lab::{Netns, PREFIX};

fn lab() -> Command {
    Command::new(bin_path("suidao-lab").unwrap())
}

fn namespaces_of(pid: u32) -> Vec<String> {
    Netns::list(&format!("{PREFIX}{pid}x"))
}

#[test]
fn demo_keep_then_down_then_interrupted_demo() {
    if !suidao_lab::require("suidao-lab demo --keep / down / SIGINT", &["ping", "wg"]) {
        return;
    }
    // --keep: PASS, and the tunnel stays up after the command has returned.
    let (pid, out) = suidao_tests::run_lab(&["demo", "p2p", "--keep", "--explain"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("PASS") && text.contains("suidao-lab down"),
        "{text}"
    );
    assert!(
        text.contains("type veth peer name"),
        "--explain shows the ip commands: {text}"
    );
    // ... each suidao's config, and what `up` puts on its interface.
    assert!(
        text.contains("#   [interface]")
            && text.contains("# up adds: ip addr add 10.99.0.1/24 dev")
            && text.contains("# up adds: ip route add 10.99.0.2/32 dev"),
        "--explain shows the configs and what up adds: {text}"
    );
    assert!(text.contains("(2 hosts; server on server"), "{text}");
    let kept = namespaces_of(pid);
    assert_eq!(kept.len(), 2, "{kept:?}");
    let client = Netns::open(kept.iter().find(|n| n.ends_with("-client")).unwrap()).unwrap();
    assert!(
        suidao_lab::suidao::ping(&client, "10.99.0.1", 1).unwrap(),
        "the kept tunnel works"
    );
    // The printed `wg show` hint works.
    let wg_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("wg show"))
        .unwrap();
    let ifname = wg_line.split_whitespace().nth(2).unwrap();
    let wg = Command::new("wg").args(["show", ifname]).output().unwrap();
    assert!(
        wg.status.success(),
        "{}",
        String::from_utf8_lossy(&wg.stderr)
    );

    // down: everything gone, processes included.
    let out = lab().arg("down").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(namespaces_of(pid).is_empty());
    assert!(!suidao_common::uapi::socket_path(ifname).exists());
    let again = lab().arg("down").output().unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing of the lab's is left"));

    // SIGINT halfway through a demo: it stops and removes what it built.
    let child = lab()
        .args(["demo", "hub"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while namespaces_of(pid).len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!namespaces_of(pid).is_empty(), "the demo started building");
    kill(Pid::from_raw(pid as i32), Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "an interrupted demo does not PASS");
    assert!(
        namespaces_of(pid).is_empty(),
        "left behind: {:?}\n{}",
        namespaces_of(pid),
        String::from_utf8_lossy(&out.stderr)
    );
}
