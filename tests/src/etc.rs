//! A namespace's own `/etc` files, and `up` started the way that sees them.
//!
//! `ip netns exec NS CMD` binds each file of `/etc/netns/NS/` over the same name in `/etc` for
//! CMD alone (a mount namespace of its own), so a test can give a namespace its own hosts file,
//! resolv.conf or resolvconf.conf without touching the machine's.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use suidao_lab::suidao::bin_path;
use suidao_lab::Process;

/// `/etc/netns/NS/`, removed when the test ends however it ends.
pub struct NetnsEtc(PathBuf);

impl NetnsEtc {
    pub fn new(ns: &str) -> Result<NetnsEtc> {
        let dir = PathBuf::from("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(NetnsEtc(dir))
    }

    /// `new`, with the namespace's own resolver files for openresolv: `resolv.conf` (saying
    /// `before`) and resolvconf's state in `dir`, no service restarted. A `resolvconf` run
    /// through `command` (by `up` or wg-quick) writes those, never the machine's.
    pub fn with_resolver(ns: &str, dir: &Path, before: &str) -> Result<NetnsEtc> {
        let etc = NetnsEtc::new(ns)?;
        let state = dir.join("resolvconf");
        let resolv = dir.join("resolv.conf");
        std::fs::write(&resolv, before)?;
        etc.link("resolv.conf", &resolv)?;
        etc.write(
            "resolvconf.conf",
            &format!(
                "# the test's own: its resolv.conf and state, no service restarted\nresolv_conf={}\nstate_dir={}\nlibc_restart=:\n",
                resolv.display(),
                state.display()
            ),
        )?;
        Ok(etc)
    }

    /// /etc/resolv.conf as a command run through `command` sees it.
    pub fn resolv_conf(&self) -> String {
        self.command("cat")
            .arg("/etc/resolv.conf")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        &self.0
    }

    /// Writes `/etc/netns/NS/NAME` in place (a running process's bind mount holds on to the
    /// file, not the name, so a change shows through it).
    pub fn write(&self, name: &str, text: &str) -> Result<()> {
        let p = self.0.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
    }

    /// `/etc/netns/NS/NAME` as a symbolic link to `target` (the bind follows it).
    pub fn link(&self, name: &str, target: &Path) -> Result<()> {
        let p = self.0.join(name);
        std::os::unix::fs::symlink(target, &p).with_context(|| format!("linking {}", p.display()))
    }

    /// `ip netns exec NS CMD ARGS`: CMD sees this namespace's `/etc` files. (`ip` by its full
    /// path, so that a test may give CMD another `PATH`.)
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let ip = std::env::var_os("PATH")
            .and_then(|path| {
                std::env::split_paths(&path)
                    .map(|d| d.join("ip"))
                    .find(|p| p.is_file())
            })
            .unwrap_or_else(|| PathBuf::from("ip"));
        let mut c = Command::new(ip);
        c.args(["netns", "exec"]).arg(self.ns()).arg(program);
        c
    }

    fn ns(&self) -> &std::ffi::OsStr {
        self.0.file_name().unwrap_or_default()
    }
}

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        // Only when empty: another test may have a namespace of its own there.
        let _ = std::fs::remove_dir("/etc/netns");
    }
}

/// Whether `resolvconf` is openresolv (what `with_resolver` needs), saying so loudly if not.
/// Debian's other resolvconf (package resolvconf) or systemd's front end would write the
/// machine's own resolver files: only openresolv reads the bound resolvconf.conf.
pub fn openresolv(test: &str) -> bool {
    if !suidao_lab::require(test, &["ip", "resolvconf", "dnsmasq", "getent"]) {
        return false;
    }
    let version = Command::new("resolvconf")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    version.starts_with("openresolv") || suidao_lab::unmet(test, "resolvconf from openresolv")
}

/// `suidao-<role> up -c CONFIG` through `ip netns exec` (so that it, and what it runs, see the
/// namespace's `/etc` files), logging at info to `log`, with `env` added; returns once its
/// control socket answers for `ifname`, or fails with its log.
pub fn up_in(
    etc: &NetnsEtc,
    binary: &str,
    config: &Path,
    ifname: &str,
    log: &Path,
    env: &[(&str, &str)],
) -> Result<Process> {
    let mut cmd = etc.command(bin_path(binary)?);
    cmd.args(["up", "-c"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut process = Process::new(binary, cmd.spawn()?);
    let read_log = || std::fs::read_to_string(log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while suidao_common::status::query(ifname).is_err() {
        if !process.is_running() {
            bail!("{binary} up ended\n{}", read_log());
        }
        if Instant::now() > deadline {
            bail!("{binary} not up after 10 s\n{}", read_log());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok(process)
}
