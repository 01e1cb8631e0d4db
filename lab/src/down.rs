//! `suidao-lab down`: removes everything a lab made and left (after `--keep`, or a killed run),
//! and only that: namespaces named `sdlab-*` with the processes inside them, the lab's control
//! sockets and endpoint files (interfaces named `sdl*`), and its `suidao-lab-*` temp folders.

use crate::{Netns, PREFIX};
use anyhow::Result;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Processes whose network namespace is the one mounted at `path` (what `ip netns pids` does).
fn pids_in(path: &Path) -> Vec<i32> {
    let Ok(target) = std::fs::metadata(path) else {
        return Vec::new();
    };
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| m.ino() == target.ino() && m.dev() == target.dev())
        })
        .collect()
}

fn stop_all(pids: &[i32]) {
    for p in pids {
        let _ = kill(Pid::from_raw(*p), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline
        && pids
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in pids {
        let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
    }
}

/// Removes the lab's leftovers; returns a line per thing removed.
pub fn down() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let names = Netns::list(PREFIX);
    // Stop every process first (a suidao node removes its own socket on SIGTERM).
    for n in &names {
        let pids = pids_in(&Path::new(crate::netns::NETNS_DIR).join(n));
        if !pids.is_empty() {
            stop_all(&pids);
            removed.push(format!("stopped {} process(es) in {n}", pids.len()));
        }
    }
    for n in &names {
        Netns::delete_path(&Path::new(crate::netns::NETNS_DIR).join(n))?;
        removed.push(format!("ip netns del {n}"));
    }
    let lab_file = |dir: &str, suffix: &str| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|f| f.to_str())
                    .is_some_and(|f| f.starts_with("sdl") && f.ends_with(suffix))
            })
            .collect()
    };
    for sock in lab_file(suidao_common::uapi::SOCKET_DIR, ".sock") {
        if std::os::unix::net::UnixStream::connect(&sock).is_err() {
            std::fs::remove_file(&sock)?;
            removed.push(format!("removed stale {}", sock.display()));
        }
    }
    for f in lab_file(
        suidao_common::engine::STATE_DIR,
        suidao_common::engine::ENDPOINTS_SUFFIX,
    ) {
        std::fs::remove_file(&f)?;
        removed.push(format!("removed {}", f.display()));
    }
    for entry in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = entry.path();
        if p.file_name()
            .and_then(|f| f.to_str())
            .is_some_and(|f| f.starts_with("suidao-lab-"))
        {
            std::fs::remove_dir_all(&p)?;
            removed.push(format!("removed {}", p.display()));
        }
    }
    Ok(removed)
}
