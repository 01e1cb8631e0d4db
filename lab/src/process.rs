//! A child process that is stopped when its guard drops: SIGTERM, a grace period, then SIGKILL.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

pub struct Process {
    name: String,
    child: Option<Child>,
}

impl Process {
    pub fn new(name: impl Into<String>, child: Child) -> Self {
        Process {
            name: name.into(),
            child: Some(child),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn signal(&self, sig: Signal) -> nix::Result<()> {
        match self.pid() {
            Some(pid) => kill(Pid::from_raw(pid as i32), sig),
            None => Ok(()),
        }
    }

    /// Sends `sig` and waits up to `grace` for the exit; SIGKILL after that.
    pub fn stop_with(&mut self, sig: Signal, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let _ = kill(Pid::from_raw(child.id() as i32), sig);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.stop_with(Signal::SIGTERM, Duration::from_secs(3))
    }

    /// Lets the process run on after this guard drops (`--keep`).
    pub fn detach(&mut self) {
        self.child = None;
    }

    /// Waits for the process to end by itself (up to `timeout`).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}
