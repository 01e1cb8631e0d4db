//! A suidao-wg that went to the background (started on its own or by wg-quick) is no child of
//! the test's: found by its command line, and stopped when the test ends however it ends.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::Duration;

/// The suidao-wg of one interface; stopped (SIGTERM, then SIGKILL) on drop, its socket removed.
pub struct Daemon {
    ifname: String,
}

impl Daemon {
    pub fn new(ifname: &str) -> Daemon {
        Daemon {
            ifname: ifname.to_string(),
        }
    }

    /// The processes running `suidao-wg --foreground IFNAME` (what the background one is).
    pub fn pids(&self) -> Vec<Pid> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                    return false;
                };
                let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
                args.len() >= 3
                    && args[0].ends_with(b"suidao-wg")
                    && args[1] == b"--foreground"
                    && args[2] == self.ifname.as_bytes()
            })
            .map(Pid::from_raw)
            .collect()
    }

    pub fn running(&self) -> bool {
        !self.pids().is_empty()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        for sig in [Signal::SIGTERM, Signal::SIGKILL] {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for p in pids {
                let _ = kill(p, sig);
            }
            crate::eventually(Duration::from_secs(5), || !self.running());
        }
        let _ = std::fs::remove_file(suidao_common::uapi::socket_path(&self.ifname));
    }
}
