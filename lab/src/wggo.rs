//! A userspace WireGuard run in a namespace and configured with `wg`: wireguard-go (Debian's
//! package), as an interop partner and as the reference in benchmarks, or boringtun
//! (`cargo install boringtun-cli`), the other reference of the benchmarks. Both speak the
//! same userspace API, so one wrapper drives either.

use crate::suidao::NodeSpec;
use crate::{netlink, unique, Netns, Process};
use anyhow::{bail, Context, Result};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Which userspace WireGuard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Userspace {
    WireguardGo,
    Boringtun,
    /// suidao's own drop-in for wireguard-go (`suidao-wg`), configured the same way.
    SuidaoWg,
}

impl Userspace {
    /// The program, as found in PATH.
    pub fn program(self) -> &'static str {
        match self {
            Userspace::WireguardGo => "wireguard-go",
            Userspace::Boringtun => "boringtun-cli",
            Userspace::SuidaoWg => "suidao-wg",
        }
    }

    /// What to run: the program in PATH, or suidao-wg from this build (`bin_path`).
    fn command(self, ns: &Netns) -> Result<std::process::Command> {
        match self {
            Userspace::SuidaoWg => ns.command(crate::suidao::bin_path(self.program())?),
            _ => ns.command(self.program()),
        }
    }
}

/// A running wireguard-go (or boringtun) with its TUN interface. Stopped (and its socket file
/// removed) on drop.
pub struct WireguardGo {
    pub ifname: String,
    process: Process,
    dir: PathBuf,
    ns_name: String,
    ns_path: PathBuf,
}

impl WireguardGo {
    /// Starts `wireguard-go -f IFNAME` in `ns` as the node `spec` describes, the same
    /// description a suidao node starts from (`NodeSpec`: key, listen port, tunnel addresses,
    /// peers; its `extra` lines are suidao's alone): waits for its control socket, sets the key,
    /// port and peers with `wg setconf` (as wg-quick does), and the addresses and link state
    /// with netlink. The interface is `spec.ifname`.
    pub fn start(ns: &Netns, spec: &NodeSpec) -> Result<WireguardGo> {
        Self::start_as(Userspace::WireguardGo, ns, spec)
    }

    /// `start`, with `kind` in wireguard-go's place (boringtun: `boringtun-cli -f`, keeping
    /// its privileges, one thread per core).
    pub fn start_as(kind: Userspace, ns: &Netns, spec: &NodeSpec) -> Result<WireguardGo> {
        // The control socket's path (/var/run/wireguard/NAME.sock) is global: NodeSpec names
        // are unique across namespaces.
        let ifname = spec.ifname.clone();
        if ifname.len() > 15 {
            bail!("interface name {ifname} too long");
        }
        let addresses = spec
            .addresses
            .iter()
            .map(|a| {
                let (ip, len) = a.split_once('/').unwrap_or((a, ""));
                Ok((
                    ip.parse::<IpAddr>()
                        .with_context(|| format!("{a}: not an address"))?,
                    len.parse::<u8>()
                        .with_context(|| format!("{a}: no prefix length"))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let dir = std::env::temp_dir().join(unique("suidao-wggo-"));
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::create(dir.join("wireguard-go.log"))?;
        let mut cmd = kind.command(ns)?;
        match kind {
            Userspace::WireguardGo => {
                cmd.arg("-f").arg(&ifname).env("LOG_LEVEL", "verbose");
            }
            Userspace::SuidaoWg => {
                cmd.arg("-f").arg(&ifname).env("RUST_LOG", "info");
            }
            Userspace::Boringtun => {
                let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
                cmd.args(["-f", "--disable-drop-privileges", "-t"])
                    .arg(cores.to_string())
                    .arg("-l")
                    .arg(dir.join("wireguard-go.log"))
                    .arg(&ifname);
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", kind.program()))?;
        let mut wg = WireguardGo {
            ifname: ifname.clone(),
            process: Process::new(kind.program(), child),
            dir,
            ns_name: ns.name().to_string(),
            ns_path: ns.path().to_path_buf(),
        };
        let sock = wg.socket_path();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            if Instant::now() > deadline || !wg.process.is_running() {
                bail!("{} did not start: {}", kind.program(), wg.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Configured as wg-quick configures it: `wg setconf` with a file of wg's format.
        let mut conf = format!(
            "[Interface]\nPrivateKey = {}\n",
            spec.private_key.to_base64().as_str()
        );
        if let Some(port) = spec.listen_port {
            conf.push_str(&format!("ListenPort = {port}\n"));
        }
        for p in &spec.peers {
            let key = p.public_key.context("a peer without a public key")?;
            conf.push_str(&format!("\n[Peer]\nPublicKey = {}\n", key.to_base64()));
            if let Some(psk) = &p.preshared_key {
                conf.push_str(&format!("PresharedKey = {}\n", psk.to_base64().as_str()));
            }
            if !p.allowed_ips.is_empty() {
                conf.push_str(&format!("AllowedIPs = {}\n", p.allowed_ips.join(", ")));
            }
            if let Some(e) = &p.endpoint {
                conf.push_str(&format!("Endpoint = {e}\n"));
            }
            if let Some(k) = p.persistent_keepalive {
                conf.push_str(&format!("PersistentKeepalive = {k}\n"));
            }
        }
        let conf_file = wg.write_secret("wg.conf", &conf)?;
        let args = vec![
            "setconf".to_string(),
            ifname.clone(),
            conf_file.display().to_string(),
        ];
        wg.wg(ns, &args)?;
        let name = ifname.clone();
        ns.netlink(|h| async move {
            for (a, l) in addresses {
                netlink::add_addr(&h, &name, a, l).await?;
            }
            Ok(netlink::set_up(&h, &name).await?)
        })?;
        Ok(wg)
    }

    fn write_secret(&self, name: &str, value: &str) -> Result<PathBuf> {
        use std::os::unix::fs::OpenOptionsExt;
        let p = self.dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&p)?;
        std::io::Write::write_all(&mut f, value.as_bytes())?;
        Ok(p)
    }

    pub fn socket_path(&self) -> PathBuf {
        Path::new("/var/run/wireguard").join(format!("{}.sock", self.ifname))
    }

    /// Runs `wg ARGS...` in the namespace; its stdout.
    pub fn wg(&self, ns: &Netns, args: &[String]) -> Result<String> {
        let out = ns
            .command("wg")?
            .args(args)
            .output()
            .context("running wg")?;
        if !out.status.success() {
            bail!(
                "wg {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `wg show IFNAME dump` in the namespace this runs in.
    pub fn dump(&self) -> Result<String> {
        let ns = Netns::open(&self.ns_name)?;
        debug_assert_eq!(ns.path(), self.ns_path);
        self.wg(&ns, &["show".into(), self.ifname.clone(), "dump".into()])
    }

    /// The wireguard-go process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// What wireguard-go logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("wireguard-go.log")).unwrap_or_default()
    }
}

impl Drop for WireguardGo {
    fn drop(&mut self) {
        self.process.stop();
        let _ = std::fs::remove_file(self.socket_path());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
