//! suidao's binaries run inside namespaces: configs written from a spec, processes started
//! with `up`, readiness, status, logs.

use crate::topology::VpnNode;
use crate::{unique, Netns, Process};
use anyhow::{bail, Context, Result};
use rand_core::OsRng;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use suidao_common::config_writer::{ConfigDraft, PeerDraft};
use suidao_proto::keys::{PresharedKey, PrivateKey, PublicKey};

/// Where suidao's binaries are: `$SUIDAO_BIN_DIR`, else next to the running executable (cargo
/// puts test executables in target/<profile>/deps, binaries one level up).
pub fn bin_path(name: &str) -> Result<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("SUIDAO_BIN_DIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            dirs.push(dir.to_path_buf());
            if let Some(up) = dir.parent() {
                dirs.push(up.to_path_buf());
            }
        }
    }
    for d in &dirs {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("cannot find the {name} binary (looked in {dirs:?}); run `cargo build --workspace` first or set SUIDAO_BIN_DIR")
}

/// A temporary folder, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Result<TempDir> {
        let p = std::env::temp_dir().join(unique("suidao-lab-"));
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(TempDir(p))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Keep the folder when this guard drops.
    pub fn keep(mut self) -> PathBuf {
        std::mem::take(&mut self.0)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Writes a secret file with mode 0600.
pub fn write_secret(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    Ok(())
}

#[derive(Clone, Debug, Default)]
pub struct PeerSpec {
    pub name: Option<String>,
    pub public_key: Option<PublicKey>,
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    pub persistent_keepalive: Option<u16>,
    pub preshared_key: Option<PresharedKey>,
    /// Layer 2: the source MACs the peer may use (empty: any).
    pub allowed_macs: Vec<String>,
}

/// One host's suidao configuration.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub ifname: String,
    pub private_key: PrivateKey,
    pub listen_port: Option<u16>,
    pub addresses: Vec<String>,
    pub peers: Vec<PeerSpec>,
    /// More `[interface]` lines, verbatim.
    pub extra: String,
    /// `"l2"`: a TAP and Ethernet frames (None: layer 3).
    pub mode: Option<String>,
    /// Layer 2: the bridge the TAP joins.
    pub bridge: Option<String>,
}

impl NodeSpec {
    /// A spec with a fresh key and a unique interface name (the API socket path is shared by
    /// all namespaces, so names must not repeat across them).
    pub fn new(stem: &str) -> NodeSpec {
        NodeSpec {
            ifname: unique(stem),
            private_key: PrivateKey::generate(&mut OsRng),
            listen_port: None,
            addresses: Vec::new(),
            peers: Vec::new(),
            extra: String::new(),
            mode: None,
            bridge: None,
        }
    }

    pub fn public_key(&self) -> PublicKey {
        self.private_key.public_key()
    }

    /// The config text; the private key goes to `private_key_file = "<ifname>.key"`.
    pub fn to_toml(&self) -> String {
        ConfigDraft {
            name: self.ifname.clone(),
            private_key_file: Some(format!("{}.key", self.ifname)),
            listen_port: self.listen_port,
            address: self.addresses.clone(),
            extra: self.extra.clone(),
            peers: self
                .peers
                .iter()
                .map(|p| PeerDraft {
                    name: p.name.clone(),
                    public_key: p.public_key.map(|k| k.to_base64()).unwrap_or_default(),
                    preshared_key: p.preshared_key.as_ref().map(|k| k.to_base64().to_string()),
                    endpoint: p.endpoint.clone(),
                    allowed_ips: p.allowed_ips.clone(),
                    persistent_keepalive: p.persistent_keepalive,
                    allowed_macs: p.allowed_macs.clone(),
                })
                .collect(),
            mode: self.mode.clone(),
            bridge: self.bridge.clone(),
            ..Default::default()
        }
        .to_toml()
    }

    /// Writes `<ifname>.toml` and `<ifname>.key` into `dir`; returns the config's path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        write_secret(
            &dir.join(format!("{}.key", self.ifname)),
            &self.private_key.to_base64(),
        )?;
        let path = dir.join(format!("{}.toml", self.ifname));
        std::fs::write(&path, self.to_toml())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Writes the config into `dir` and starts `up` with it in `ns` (`Node::start`).
    pub fn start(&self, ns: &Netns, role: Role, dir: &Path) -> Result<Node> {
        Node::start(ns, role, &self.write(dir)?, &self.ifname)
    }

    /// A server and its clients, as a topology's `[vpn]` section describes them, each knowing
    /// the others it talks to: the one place that rule is written (the demo, the tests'
    /// fixtures and the bench all come here). The server listens on `endpoint`'s port and
    /// allows each client's tunnel addresses (as host routes) and the networks behind it; a
    /// client reaches the server at `endpoint`, routes the server's tunnel networks and the
    /// networks behind it through the tunnel, and keeps the path open every 25 s. Peers are
    /// named after their hosts; `stems` start the interface names (`NodeSpec::new`).
    pub fn server_and_clients(
        stems: [&str; 2],
        server: &VpnNode,
        clients: &[VpnNode],
        endpoint: SocketAddr,
    ) -> Result<(NodeSpec, Vec<NodeSpec>)> {
        let mut s = NodeSpec::new(stems[0]);
        s.listen_port = Some(endpoint.port());
        s.addresses = server.tunnel.clone();
        let mut routes = server
            .tunnel
            .iter()
            .map(|t| network_of(t))
            .collect::<Result<Vec<_>>>()?;
        routes.extend(server.lan.iter().cloned());
        let mut specs = Vec::new();
        for c in clients {
            let mut spec = NodeSpec::new(stems[1]);
            spec.addresses = c.tunnel.clone();
            spec.peers.push(PeerSpec {
                name: Some(server.host.clone()),
                public_key: Some(s.public_key()),
                endpoint: Some(endpoint.to_string()),
                allowed_ips: routes.clone(),
                persistent_keepalive: Some(25),
                ..Default::default()
            });
            let mut theirs = c
                .tunnel
                .iter()
                .map(|t| host_of(t))
                .collect::<Result<Vec<_>>>()?;
            theirs.extend(c.lan.iter().cloned());
            s.peers.push(PeerSpec {
                name: Some(c.host.clone()),
                public_key: Some(spec.public_key()),
                allowed_ips: theirs,
                ..Default::default()
            });
            specs.push(spec);
        }
        Ok((s, specs))
    }

    /// A server and one client (`server_and_clients`, hosts "server" and "client") whose
    /// client routes `client_routes` through the tunnel: the usual pair of tests and the
    /// bench. Addresses carry their prefix length (`10.99.0.1/24`).
    pub fn pair(
        stems: [&str; 2],
        server_addresses: &[&str],
        client_addresses: &[&str],
        endpoint: SocketAddr,
        client_routes: &[&str],
    ) -> Result<(NodeSpec, NodeSpec)> {
        let node = |host: &str, tunnel: &[&str]| VpnNode {
            host: host.into(),
            tunnel: tunnel.iter().map(|a| a.to_string()).collect(),
            lan: Vec::new(),
        };
        let (server, mut clients) = NodeSpec::server_and_clients(
            stems,
            &node("server", server_addresses),
            &[node("client", client_addresses)],
            endpoint,
        )?;
        let mut client = clients.pop().context("one client")?;
        for p in &mut client.peers {
            p.allowed_ips = client_routes.iter().map(|r| r.to_string()).collect();
        }
        Ok((server, client))
    }
}

/// The network of a tunnel address as a route: `10.99.0.1/24` -> `10.99.0.0/24`.
pub fn network_of(addr: &str) -> Result<String> {
    let c: suidao_proto::allowed_ips::Cidr = addr.parse()?;
    Ok(c.to_string())
}

/// The host part of a tunnel address as a route: `10.99.0.2/24` -> `10.99.0.2/32`,
/// `fd99::2/64` -> `fd99::2/128`.
pub fn host_of(addr: &str) -> Result<String> {
    let ip: std::net::IpAddr = addr
        .split('/')
        .next()
        .unwrap_or(addr)
        .parse()
        .with_context(|| format!("{addr}: not an address"))?;
    Ok(format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 }))
}

/// `suidao-client` or `suidao-server`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

impl Role {
    pub fn binary(self) -> &'static str {
        match self {
            Role::Client => "suidao-client",
            Role::Server => "suidao-server",
        }
    }
}

/// A running `up`.
pub struct Node {
    pub ifname: String,
    pub role: Role,
    pub config: PathBuf,
    pub log_path: PathBuf,
    pub process: Process,
    detached: bool,
}

impl Node {
    /// Starts `up -c CONFIG` in `ns`, logging to `<config>.log`, and waits until its API socket
    /// answers.
    pub fn start(ns: &Netns, role: Role, config: &Path, ifname: &str) -> Result<Node> {
        Node::start_from(ns, role, config, ifname, &bin_path(role.binary())?)
    }

    /// `start`, with the binary at `binary` (another build, say).
    pub fn start_from(
        ns: &Netns,
        role: Role,
        config: &Path,
        ifname: &str,
        binary: &Path,
    ) -> Result<Node> {
        let log_path = config.with_extension("log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let child = ns
            .command(binary)?
            .arg("up")
            .arg("-c")
            .arg(config)
            .env(
                "RUST_LOG",
                std::env::var("SUIDAO_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", role.binary()))?;
        let mut node = Node {
            ifname: ifname.to_string(),
            role,
            config: config.to_path_buf(),
            log_path,
            process: Process::new(role.binary(), child),
            detached: false,
        };
        node.wait_ready(Duration::from_secs(10))?;
        Ok(node)
    }

    /// Waits until the API socket answers.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if suidao_common::status::query(&self.ifname).is_ok() {
                return Ok(());
            }
            if !self.process.is_running() {
                bail!(
                    "{} {} exited during start:\n{}",
                    self.role.binary(),
                    self.ifname,
                    self.log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} {} not ready after {timeout:?}:\n{}",
                    self.role.binary(),
                    self.ifname,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// `status --json` (through the library, not a process).
    pub fn status(&self) -> Result<serde_json::Value> {
        Ok(suidao_common::status::query(&self.ifname)?)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Leave the process running when this guard drops (`--keep`).
    pub fn detach(&mut self) {
        self.process.detach();
        self.detached = true;
    }

    /// Drop counter `reason` from status.
    pub fn drops(&self, reason: &str) -> Result<u64> {
        let v = self.status()?;
        Ok(v["drops"][reason].as_u64().unwrap_or(0))
    }

    /// The latest handshake (Unix seconds) with each peer, by public key.
    pub fn handshakes(&self) -> Result<Vec<(String, u64)>> {
        let v = self.status()?;
        Ok(v["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["public_key"].as_str().unwrap_or("").to_string(),
                    p["latest_handshake"].as_u64().unwrap_or(0),
                )
            })
            .collect())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        self.process.stop();
        // A server remembers its clients' endpoints across restarts; a test's does not need to.
        let _ = std::fs::remove_file(suidao_common::engine::state_path(&self.ifname));
    }
}

/// `ping -c COUNT` from `ns` to `target` with a short interval; true when every reply came.
pub fn ping(ns: &Netns, target: &str, count: u32) -> Result<bool> {
    Ok(crate::measure::ping_rtt(ns, target, count, "0.2")?.is_some())
}

/// Pings until one reply comes or `timeout` passes, with a probe every 0.2 s: on a lossy path
/// the answer then depends on the tunnel, not on the luck of a few probes, and the time to
/// the first reply is known to within 0.2 s.
pub fn ping_until(ns: &Netns, target: &str, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        // `-w`: exit at the first reply (`-c 1`) or after this many whole seconds. A ping
        // that fails at once (no route yet, say) is started again; a reply after the
        // deadline (the last `-w 1` can overrun it) does not count.
        let secs = left.as_secs().max(1).to_string();
        let out = ns
            .command("ping")?
            .args(["-c", "1", "-i", "0.2", "-w", &secs, "-q", target])
            .output()
            .context("running ping")?;
        if out.status.success() {
            return Ok(Instant::now() <= deadline);
        }
        if Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Runs a command in `ns` and returns its output (failing on a nonzero exit).
pub fn run(ns: &Netns, program: &str, args: &[&str]) -> Result<String> {
    let out: std::process::Output = ns
        .command(program)?
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command for one of suidao's binaries (not started).
pub fn command(ns: &Netns, role: Role) -> Result<Command> {
    ns.command(bin_path(role.binary())?)
}
