//! The configuration file: TOML, shaped like wg-quick's (an `[interface]` and `[[peer]]`s), with
//! unknown keys refused. Loading validates everything before anything is touched, and every
//! error is one line naming the file, the line (where known) and the key.

use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use suidao_proto::allowed_ips::Cidr;
use suidao_proto::keys::{KeyError, PresharedKey, PrivateKey, PublicKey};
use toml::Spanned;
use zeroize::Zeroizing;

/// Default tunnel MTU: a 1500-byte underlay less 80 bytes of IPv6 + UDP + WireGuard overhead.
pub const DEFAULT_MTU: u32 = 1420;
/// Linux interface names are at most 15 bytes.
pub const IFNAME_MAX: usize = 15;
/// At most this many data-path workers (the kernel allows 256 TUN queues; more workers than
/// CPUs only adds switching).
pub const MAX_WORKERS: usize = 64;

/// Workers when the config does not say: one per two CPUs (each worker has a thread per
/// direction), at least one, at most eight.
pub fn default_workers() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cpus / 2).clamp(1, 8)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interface: Spanned<RawInterface>,
    #[serde(default)]
    peer: Vec<Spanned<RawPeer>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    name: Spanned<String>,
    private_key: Option<Spanned<String>>,
    private_key_file: Option<Spanned<String>>,
    listen_port: Option<Spanned<u16>>,
    #[serde(default)]
    address: Vec<Spanned<String>>,
    mtu: Option<Spanned<u32>>,
    workers: Option<Spanned<u32>>,
    table: Option<Spanned<RawTable>>,
    fwmark: Option<Spanned<u32>>,
    #[serde(default)]
    dns: Vec<Spanned<String>>,
    hairpin: Option<bool>,
    /// host:port the server's clients should use (for `add-client`).
    public_endpoint: Option<Spanned<String>>,
    /// "l3" (IP packets through a TUN, the default) or "l2" (Ethernet frames through a TAP).
    mode: Option<Spanned<String>>,
    // Layer 2 only:
    bridge: Option<Spanned<String>>,
    mac_age: Option<Spanned<u32>>,
    max_macs: Option<Spanned<u32>>,
    mac_table_size: Option<Spanned<u32>>,
    flood_rate: Option<Spanned<u32>>,
    #[serde(default)]
    pre_up: Commands,
    #[serde(default)]
    post_up: Commands,
    #[serde(default)]
    pre_down: Commands,
    #[serde(default)]
    post_down: Commands,
}

/// `table`: a word or a number.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawTable {
    Word(String),
    Number(u32),
}

/// Where the routes of the peers' allowed IPs go (wg-quick's `Table`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Table {
    /// The main table; a default route (`0.0.0.0/0`, `::/0`) makes a full tunnel.
    #[default]
    Auto,
    /// No routes at all: the person routes.
    Off,
    /// Every allowed IP, default routes included, as a route in this table; no policy rules.
    Id(u32),
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Table::Auto => write!(f, "auto"),
            Table::Off => write!(f, "off"),
            Table::Id(n) => write!(f, "{n}"),
        }
    }
}

/// A hook: one shell command, or a list of them.
#[derive(Deserialize, Default, Clone, Debug)]
#[serde(untagged)]
enum Commands {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl Commands {
    fn into_vec(self) -> Vec<String> {
        match self {
            Commands::None => vec![],
            Commands::One(c) => vec![c],
            Commands::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: Option<String>,
    public_key: Spanned<String>,
    preshared_key: Option<Spanned<String>>,
    preshared_key_file: Option<Spanned<String>>,
    endpoint: Option<Spanned<String>>,
    #[serde(default)]
    allowed_ips: Vec<Spanned<String>>,
    persistent_keepalive: Option<Spanned<u16>>,
    // Layer 2 only:
    #[serde(default)]
    allowed_macs: Vec<Spanned<String>>,
    max_macs: Option<Spanned<u32>>,
    flood_rate: Option<Spanned<u32>>,
}

/// An address on the interface: the host address and its prefix length (`10.99.0.1/24`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl FromStr for InterfaceAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("'{s}' needs a prefix length, as in 10.99.0.1/24"))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("'{a}' is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = l
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("'{l}' is not a prefix length (0-{max})"))?;
        Ok(InterfaceAddress { addr, prefix_len })
    }
}

impl fmt::Display for InterfaceAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

#[derive(Debug)]
pub struct Interface {
    pub name: String,
    pub private_key: PrivateKey,
    pub listen_port: Option<u16>,
    pub addresses: Vec<InterfaceAddress>,
    pub mtu: u32,
    /// Data-path workers: each has a TUN queue, a UDP socket on the listen port and a thread
    /// per direction (see `engine`). `None`: `default_workers()`.
    pub workers: Option<usize>,
    /// Relay packets between peers inside the process (server).
    pub hairpin: bool,
    /// Where the peers' routes go.
    pub table: Table,
    /// SO_MARK on the UDP sockets (wg-quick's `FwMark`); also the mark a full tunnel's policy
    /// rule lets past.
    pub fwmark: Option<u32>,
    /// Name servers and search domains while the interface is up (wg-quick's `DNS`).
    pub dns: crate::dns::Dns,
    /// host:port clients should use to reach this server (for `add-client`).
    pub public_endpoint: Option<String>,
    /// Shell commands run around `up` and its teardown (`%i` is the interface name), as in
    /// wg-quick.
    pub hooks: Hooks,
    /// `mode = "l2"`: a TAP device and Ethernet frames, switched by MAC address. `None`:
    /// layer 3 (a TUN and IP packets).
    pub l2: Option<Layer2>,
}

impl Interface {
    /// The interface's own MTU: the tunnel MTU, less on a layer-2 interface the frame's
    /// Ethernet header and its header byte on the wire (1420 → 1405).
    pub fn device_mtu(&self) -> u32 {
        match self.l2 {
            None => self.mtu,
            Some(_) => self.mtu.saturating_sub(LAYER2_OVERHEAD),
        }
    }

    /// The tunnel MTU for an interface MTU of `device_mtu` (`ip link set ... mtu N`).
    pub fn tunnel_mtu(&self, device_mtu: u32) -> u32 {
        match self.l2 {
            None => device_mtu,
            Some(_) => device_mtu.saturating_add(LAYER2_OVERHEAD),
        }
    }
}

/// What a frame costs of the tunnel MTU besides its payload: its Ethernet header and the
/// byte in front of it (`suidao_proto::l2`).
pub const LAYER2_OVERHEAD: u32 =
    (suidao_proto::l2::ETHERNET_HEADER_LEN + suidao_proto::l2::L2_HEADER_LEN) as u32;

/// Learned MACs are forgotten after this long without a frame from them (a Linux bridge's
/// ageing time).
pub const DEFAULT_MAC_AGE: Duration = Duration::from_secs(300);
/// MACs one peer may have learned at once, unless its `max_macs` says otherwise.
pub const DEFAULT_MAX_MACS: usize = 1024;
/// MACs the whole table holds at most.
pub const DEFAULT_MAC_TABLE_SIZE: usize = 16384;
/// Broadcast, multicast and unknown-unicast frames per second one peer may have flooded.
pub const DEFAULT_FLOOD_RATE: u32 = 1000;

/// The interface's layer-2 settings (`mode = "l2"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer2 {
    /// A Linux bridge the TAP joins while it is up.
    pub bridge: Option<String>,
    pub mac_age: Duration,
    /// Per peer, unless the peer says.
    pub max_macs: usize,
    pub mac_table_size: usize,
    /// Frames per second per peer, unless the peer says.
    pub flood_rate: u32,
}

impl Default for Layer2 {
    fn default() -> Self {
        Layer2 {
            bridge: None,
            mac_age: DEFAULT_MAC_AGE,
            max_macs: DEFAULT_MAX_MACS,
            mac_table_size: DEFAULT_MAC_TABLE_SIZE,
            flood_rate: DEFAULT_FLOOD_RATE,
        }
    }
}

/// A peer's layer-2 limits (empty on a layer-3 interface).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerLayer2 {
    /// The only source MACs its frames may carry; empty: any.
    pub allowed_macs: Vec<suidao_proto::l2::Mac>,
    pub max_macs: Option<usize>,
    pub flood_rate: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    pub pre_up: Vec<String>,
    pub post_up: Vec<String>,
    pub pre_down: Vec<String>,
    pub post_down: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Peer {
    pub name: Option<String>,
    pub public_key: PublicKey,
    pub preshared_key: Option<PresharedKey>,
    /// As written.
    pub endpoint_text: Option<String>,
    /// The address, when the endpoint is one; a host name is resolved at `up` (`resolve`).
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<Cidr>,
    pub persistent_keepalive: Option<Duration>,
    pub l2: PeerLayer2,
}

impl Peer {
    /// The endpoint's host name, when it is one (not an address).
    pub fn endpoint_host(&self) -> Option<&str> {
        self.endpoint_text
            .as_deref()
            .filter(|t| t.parse::<SocketAddr>().is_err())
    }

    /// The peer's name, or a short form of its key, for logs.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => {
                let k = self.public_key.to_base64();
                format!("{}…", &k[..8])
            }
        }
    }
}

#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    pub interface: Interface,
    pub peers: Vec<Peer>,
    /// What is accepted but worth a word (`FILE:LINE: KEY: ...`): `check` prints them, `up`
    /// logs them.
    pub warnings: Vec<String>,
}

/// One line for a person: `FILE:LINE: KEY: what is wrong`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn line_of(&self, offset: usize) -> usize {
        self.text
            .get(..offset)
            .map_or(0, |t| t.bytes().filter(|b| *b == b'\n').count())
            + 1
    }

    fn err<T>(
        &self,
        span: Option<std::ops::Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) -> Result<T, ConfigError> {
        Err(ConfigError {
            file: self.file.to_path_buf(),
            line: span.map(|s| self.line_of(s.start)),
            key: key.to_string(),
            message: message.into(),
        })
    }

    /// The key at `offset` as the messages name it (`interface.listen_port`, `peer[1]`):
    /// the section the offset is in (counting `[[peer]]` headers), and the key its line sets.
    fn key_at(&self, offset: usize) -> String {
        let before = self.text.get(..offset).unwrap_or(self.text);
        let mut section = String::new();
        let mut peers = 0;
        for line in before.lines() {
            match line.trim() {
                "[interface]" => section = "interface".into(),
                "[[peer]]" => {
                    section = format!("peer[{peers}]");
                    peers += 1;
                }
                _ => {}
            }
        }
        let start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = self.text[start..].lines().next().unwrap_or("");
        // An error about a whole table points at its header.
        match line.trim() {
            "[interface]" => return "interface".into(),
            "[[peer]]" if !before[start..].contains("[[") => return format!("peer[{peers}]"),
            _ => {}
        }
        let key = line
            .split_once('=')
            .map(|(k, _)| k.trim())
            .filter(|k| !k.is_empty() && !k.starts_with('['));
        match (section.is_empty(), key) {
            (true, Some(k)) => k.to_string(),
            (false, Some(k)) => format!("{section}.{k}"),
            (_, None) => section,
        }
    }

    /// Resolves `p` relative to the config file's folder.
    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.file.parent().unwrap_or(Path::new(".")).join(p)
        }
    }

    /// Reads a secret from a file that only its owner may read.
    fn read_secret_file(
        &self,
        spanned: &Spanned<String>,
        key: &str,
    ) -> Result<Zeroizing<String>, ConfigError> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path(spanned.get_ref());
        let span = Some(spanned.span());
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) => return self.err(span, key, format!("cannot read {}: {e}", path.display())),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return self.err(
                span,
                key,
                format!(
                    "{} is readable by others (mode {mode:03o}); run chmod 600 on it",
                    path.display()
                ),
            );
        }
        match std::fs::read_to_string(&path) {
            Ok(t) => Ok(Zeroizing::new(t)),
            Err(e) => self.err(span, key, format!("cannot read {}: {e}", path.display())),
        }
    }
}

fn key_problem(e: KeyError) -> String {
    match e {
        KeyError::Base64 => {
            "not a valid base64 key (expected 44 characters as `wg genkey` prints)".into()
        }
        KeyError::Length(n) => format!("a key is 32 bytes, this one decodes to {n}"),
        KeyError::LowOrder => e.to_string(),
    }
}

/// The TOML reader's words for a type or range error, as a person would put them.
fn plain_message(msg: &str) -> String {
    let quoted = |m: &str| m.split('`').nth(1).map(str::to_string);
    if let Some(field) = msg.strip_prefix("missing field ") {
        return format!("{} is required", field.trim_matches('`'));
    }
    if msg == "duplicate key" {
        return "given twice".into();
    }
    if msg.starts_with("invalid value: integer") {
        if let (Some(v), Some(ty)) = (quoted(msg), msg.rsplit("expected ").next()) {
            let max = match ty.trim() {
                "u16" => Some(u64::from(u16::MAX)),
                "u32" => Some(u64::from(u32::MAX)),
                "u8" => Some(u64::from(u8::MAX)),
                _ => None,
            };
            if let Some(max) = max {
                return format!("{v} is out of range (0-{max})");
            }
        }
    }
    if let Some(rest) = msg.strip_prefix("invalid type: string ") {
        if rest.ends_with("expected a sequence") {
            return "a list is expected here, as in [\"10.99.0.1/24\"]".into();
        }
        if rest.ends_with("expected u16") || rest.ends_with("expected u32") {
            let value = rest.split('"').nth(1).unwrap_or("");
            return format!("a number is expected here, without quotes (not \"{value}\")");
        }
    }
    if msg.starts_with("invalid type: integer") && msg.ends_with("expected a string") {
        return "text is expected here, in quotes".into();
    }
    if msg.starts_with("invalid type:") && msg.ends_with("expected a sequence") {
        return "a list is expected here, as in [\"...\"]".into();
    }
    msg.to_string()
}

/// Whether Linux takes `name` as an interface name.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > IFNAME_MAX
        || name.contains(['/', ' ', '\t', '\n'])
        || name == "."
        || name == ".."
    {
        return Err(format!(
            "'{name}' is not a usable interface name (1-{IFNAME_MAX} characters, no '/' or spaces)"
        ));
    }
    Ok(())
}

/// Checks `host:port` (a name, an IPv4 address, or `[IPv6]:port`) without looking anything
/// up: the address when it is one, None for a host name (resolved at `up`, and again while its
/// handshakes fail: see `engine`).
pub fn check_endpoint(text: &str) -> Result<Option<SocketAddr>, String> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        if a.port() == 0 {
            return Err("port 0 cannot be sent to".into());
        }
        return Ok(Some(a));
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("'{text}' is not host:port"))?;
    if port.parse::<u16>().is_err() {
        return Err(format!("'{port}' is not a port number"));
    }
    if port == "0" {
        return Err("port 0 cannot be sent to".into());
    }
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if !name_ok {
        return Err(format!("'{host}' is not a host name or an IP address"));
    }
    Ok(None)
}

/// Resolves `host:port` now (a name through the system's resolver, as `wg` does).
pub fn resolve_endpoint(text: &str) -> Result<SocketAddr, String> {
    if let Some(a) = check_endpoint(text)? {
        return Ok(a);
    }
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve '{text}': {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("'{text}' resolves to no address"))
}

impl Config {
    /// Resolves the peers' endpoint host names now; returns a line for each that does not
    /// resolve (its peer keeps no endpoint until it does).
    pub fn resolve(&mut self) -> Vec<String> {
        let mut failed = Vec::new();
        for p in &mut self.peers {
            let Some(host) = p.endpoint_host().map(str::to_string) else {
                continue;
            };
            match resolve_endpoint(&host) {
                Ok(a) => p.endpoint = Some(a),
                Err(e) => failed.push(format!("{}: {e}", p.label())),
            }
        }
        failed
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: String::new(),
            message: format!("cannot read the config: {e}"),
        })?;
        Config::parse(path, &text)
    }

    /// Parses and validates config text (`path` is for messages and relative key files).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let cx = Ctx { file: path, text };
        let raw: RawConfig = match toml::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                let key = e.span().map(|s| cx.key_at(s.start)).unwrap_or_default();
                return cx.err(e.span(), &key, plain_message(e.message().trim()));
            }
        };
        let iface_span = raw.interface.span();
        let ri = raw.interface.into_inner();

        let name = ri.name.get_ref().clone();
        if let Err(m) = check_ifname(&name) {
            return cx.err(Some(ri.name.span()), "interface.name", m);
        }
        let key_text = match (&ri.private_key, &ri.private_key_file) {
            (Some(k), None) => Zeroizing::new(k.get_ref().clone()),
            (None, Some(f)) => cx.read_secret_file(f, "interface.private_key_file")?,
            (Some(_), Some(f)) => {
                return cx.err(
                    Some(f.span()),
                    "interface",
                    "give private_key or private_key_file, not both",
                )
            }
            (None, None) => {
                return cx.err(
                    Some(iface_span),
                    "interface",
                    "private_key or private_key_file is required",
                )
            }
        };
        let key_span = ri
            .private_key
            .as_ref()
            .or(ri.private_key_file.as_ref())
            .map(|s| s.span());
        let private_key: PrivateKey = match key_text.parse() {
            Ok(k) => k,
            Err(e) => return cx.err(key_span, "interface.private_key", key_problem(e)),
        };
        let mut warnings = Vec::new();
        if let Some(k) = &ri.private_key {
            // As wg-quick warns of a world-accessible config.
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    warnings.push(
                        ConfigError {
                            file: path.to_path_buf(),
                            line: Some(cx.line_of(k.span().start)),
                            key: "interface.private_key".into(),
                            message: format!(
                                "warning: the file holding it is readable by others (mode {mode:03o}); run chmod 600 on it, or move the key to private_key_file"
                            ),
                        }
                        .to_string(),
                    );
                }
            }
        }
        let mut addresses = Vec::new();
        for a in &ri.address {
            match a.get_ref().parse::<InterfaceAddress>() {
                Ok(x) => addresses.push(x),
                Err(m) => return cx.err(Some(a.span()), "interface.address", m),
            }
        }
        let mtu = match &ri.mtu {
            None => DEFAULT_MTU,
            Some(m) => {
                let v = *m.get_ref();
                let min = if addresses.iter().any(|a| a.addr.is_ipv6()) {
                    1280
                } else {
                    576
                };
                if !(min..=65535).contains(&v) {
                    return cx.err(
                        Some(m.span()),
                        "interface.mtu",
                        format!("{v} is out of range ({min}-65535)"),
                    );
                }
                v
            }
        };
        let workers = match &ri.workers {
            None => None,
            Some(w) => {
                let v = *w.get_ref();
                if !(1..=MAX_WORKERS as u32).contains(&v) {
                    return cx.err(
                        Some(w.span()),
                        "interface.workers",
                        format!(
                            "{v} is out of range (1-{MAX_WORKERS}; leave the key out for one per two CPUs)"
                        ),
                    );
                }
                Some(v as usize)
            }
        };
        if let Some(p) = &ri.listen_port {
            if *p.get_ref() == 0 {
                return cx.err(
                    Some(p.span()),
                    "interface.listen_port",
                    "0 is not a port (leave the key out for a random one)",
                );
            }
        }
        let table = match &ri.table {
            None => Table::Auto,
            Some(t) => match t.get_ref() {
                RawTable::Word(w) => match w.as_str() {
                    "auto" => Table::Auto,
                    "off" => Table::Off,
                    "main" => Table::Id(crate::netlink::MAIN_TABLE),
                    other => {
                        return cx.err(
                            Some(t.span()),
                            "interface.table",
                            format!(
                                "'{other}' is not \"auto\", \"off\", \"main\" or a table number"
                            ),
                        )
                    }
                },
                RawTable::Number(n) if *n == 0 || *n == 255 => {
                    return cx.err(
                        Some(t.span()),
                        "interface.table",
                        format!(
                        "{n} is not a table for routes (0 is none, 255 the kernel's local table)"
                    ),
                    )
                }
                RawTable::Number(n) => Table::Id(*n),
            },
        };
        let mut dns = crate::dns::Dns::default();
        for d in &ri.dns {
            if let Err(m) = dns.add(d.get_ref()) {
                return cx.err(Some(d.span()), "interface.dns", m);
            }
        }
        let l2 = layer2(&cx, &ri)?;
        let interface = Interface {
            name,
            private_key,
            listen_port: ri.listen_port.map(|p| *p.get_ref()),
            addresses,
            mtu,
            workers,
            hairpin: ri.hairpin.unwrap_or(true),
            table,
            fwmark: ri.fwmark.map(|m| *m.get_ref()).filter(|m| *m != 0),
            dns,
            public_endpoint: ri.public_endpoint.map(|e| e.into_inner()),
            hooks: Hooks {
                pre_up: ri.pre_up.into_vec(),
                post_up: ri.post_up.into_vec(),
                pre_down: ri.pre_down.into_vec(),
                post_down: ri.post_down.into_vec(),
            },
            l2,
        };

        let own_public = interface.private_key.public_key();
        let mut peers = Vec::new();
        let mut seen_keys: HashMap<PublicKey, usize> = HashMap::new();
        let mut seen_ranges: HashMap<Cidr, usize> = HashMap::new();
        for (n, sp) in raw.peer.into_iter().enumerate() {
            let rp = sp.into_inner();
            let section = format!("peer[{n}]");
            let public_key: PublicKey = match rp.public_key.get_ref().parse() {
                Ok(k) => k,
                Err(e) => {
                    return cx.err(
                        Some(rp.public_key.span()),
                        &format!("{section}.public_key"),
                        key_problem(e),
                    )
                }
            };
            if public_key == own_public {
                return cx.err(
                    Some(rp.public_key.span()),
                    &format!("{section}.public_key"),
                    "this is the interface's own public key",
                );
            }
            if let Some(first) = seen_keys.insert(public_key, n) {
                return cx.err(
                    Some(rp.public_key.span()),
                    &format!("{section}.public_key"),
                    format!("the same public key as peer[{first}]"),
                );
            }
            let preshared_key = match (&rp.preshared_key, &rp.preshared_key_file) {
                (None, None) => None,
                (Some(_), Some(f)) => {
                    return cx.err(
                        Some(f.span()),
                        &section,
                        "give preshared_key or preshared_key_file, not both",
                    )
                }
                (Some(k), None) => Some((Zeroizing::new(k.get_ref().clone()), k.span())),
                (None, Some(f)) => Some((
                    cx.read_secret_file(f, &format!("{section}.preshared_key_file"))?,
                    f.span(),
                )),
            };
            let preshared_key = match preshared_key {
                None => None,
                Some((text, span)) => match text.parse::<PresharedKey>() {
                    Ok(k) => Some(k),
                    Err(e) => {
                        return cx.err(
                            Some(span),
                            &format!("{section}.preshared_key"),
                            key_problem(e),
                        )
                    }
                },
            };
            let (endpoint_text, endpoint) = match &rp.endpoint {
                None => (None, None),
                Some(e) => match check_endpoint(e.get_ref()) {
                    Ok(a) => (Some(e.get_ref().clone()), a),
                    Err(m) => return cx.err(Some(e.span()), &format!("{section}.endpoint"), m),
                },
            };
            let mut allowed_ips = Vec::new();
            for a in &rp.allowed_ips {
                let cidr: Cidr = match a.get_ref().parse() {
                    Ok(c) => c,
                    Err(e) => {
                        return cx.err(
                            Some(a.span()),
                            &format!("{section}.allowed_ips"),
                            e.to_string(),
                        )
                    }
                };
                let written = a.get_ref().split('/').next().unwrap_or("");
                if written.parse::<IpAddr>().is_ok_and(|ip| ip != cidr.addr()) {
                    let host = if cidr.is_ipv4() { 32 } else { 128 };
                    return cx.err(
                        Some(a.span()),
                        &format!("{section}.allowed_ips"),
                        format!(
                            "'{}' has host bits set: write {cidr} for the network, or {written}/{host} for the host",
                            a.get_ref()
                        ),
                    );
                }
                if let Some(first) = seen_ranges.insert(cidr, n) {
                    let msg = if first == n {
                        format!("{cidr} is listed twice")
                    } else {
                        format!("{cidr} is already claimed by peer[{first}]")
                    };
                    return cx.err(Some(a.span()), &format!("{section}.allowed_ips"), msg);
                }
                allowed_ips.push(cidr);
            }
            let persistent_keepalive = match &rp.persistent_keepalive {
                None => None,
                Some(k) if *k.get_ref() == 0 => None,
                Some(k) => Some(Duration::from_secs(u64::from(*k.get_ref()))),
            };
            let l2 = peer_layer2(&cx, &rp, &section, interface.l2.is_some())?;
            peers.push(Peer {
                name: rp.name,
                public_key,
                preshared_key,
                endpoint_text,
                endpoint,
                allowed_ips,
                persistent_keepalive,
                l2,
            });
        }
        Ok(Config {
            path: path.to_path_buf(),
            interface,
            peers,
            warnings,
        })
    }
}

/// `mode` and the layer-2 keys of `[interface]`: `None` for layer 3 (where those keys are
/// refused).
fn layer2(cx: &Ctx<'_>, ri: &RawInterface) -> Result<Option<Layer2>, ConfigError> {
    let l2 = match ri.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
        None | Some(("l3", _)) => false,
        Some(("l2", _)) => true,
        Some((other, span)) => {
            return cx.err(
                Some(span),
                "interface.mode",
                format!(
                    "'{other}' is not \"l3\" (IP packets, the default) or \"l2\" (Ethernet frames)"
                ),
            )
        }
    };
    let numbers = [
        ("mac_age", &ri.mac_age),
        ("max_macs", &ri.max_macs),
        ("mac_table_size", &ri.mac_table_size),
        ("flood_rate", &ri.flood_rate),
    ];
    if !l2 {
        let bridge = ri.bridge.as_ref().map(|b| ("bridge", b.span()));
        let set = numbers
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (*k, v.span())));
        if let Some((key, span)) = bridge.into_iter().chain(set).next() {
            return cx.err(
                Some(span),
                &format!("interface.{key}"),
                "a layer-2 setting: it needs mode = \"l2\"",
            );
        }
        return Ok(None);
    }
    for (key, value) in numbers {
        if let Some(v) = value {
            if *v.get_ref() == 0 {
                return cx.err(
                    Some(v.span()),
                    &format!("interface.{key}"),
                    "0 is not allowed (leave the key out for the default)",
                );
            }
        }
    }
    if let Some(b) = &ri.bridge {
        if let Err(m) = check_ifname(b.get_ref()) {
            return cx.err(Some(b.span()), "interface.bridge", m);
        }
        if b.get_ref() == ri.name.get_ref() {
            return cx.err(
                Some(b.span()),
                "interface.bridge",
                "the bridge cannot be the interface itself",
            );
        }
    }
    let d = Layer2::default();
    let n = |v: &Option<Spanned<u32>>, default: usize| {
        v.as_ref().map_or(default, |v| *v.get_ref() as usize)
    };
    Ok(Some(Layer2 {
        bridge: ri.bridge.as_ref().map(|b| b.get_ref().clone()),
        mac_age: ri
            .mac_age
            .as_ref()
            .map_or(d.mac_age, |a| Duration::from_secs(u64::from(*a.get_ref()))),
        max_macs: n(&ri.max_macs, d.max_macs),
        mac_table_size: n(&ri.mac_table_size, d.mac_table_size),
        flood_rate: ri
            .flood_rate
            .as_ref()
            .map_or(d.flood_rate, |r| *r.get_ref()),
    }))
}

/// A peer's layer-2 keys; on a layer-2 interface its `allowed_ips` are refused (frames are
/// switched by MAC), on a layer-3 one its layer-2 keys.
fn peer_layer2(
    cx: &Ctx<'_>,
    rp: &RawPeer,
    section: &str,
    l2: bool,
) -> Result<PeerLayer2, ConfigError> {
    if !l2 {
        let first = rp
            .allowed_macs
            .first()
            .map(|m| ("allowed_macs", m.span()))
            .or(rp.max_macs.as_ref().map(|m| ("max_macs", m.span())))
            .or(rp.flood_rate.as_ref().map(|m| ("flood_rate", m.span())));
        if let Some((key, span)) = first {
            return cx.err(
                Some(span),
                &format!("{section}.{key}"),
                "a layer-2 setting: it needs mode = \"l2\" in [interface]",
            );
        }
        return Ok(PeerLayer2::default());
    }
    if let Some(a) = rp.allowed_ips.first() {
        return cx.err(
            Some(a.span()),
            &format!("{section}.allowed_ips"),
            "on a layer-2 interface frames are switched by MAC address: leave allowed_ips out (allowed_macs limits a peer's source MACs)",
        );
    }
    let mut allowed_macs = Vec::new();
    for m in &rp.allowed_macs {
        match suidao_proto::l2::parse_mac(m.get_ref()) {
            Some(mac) if suidao_proto::l2::is_group(&mac) => {
                return cx.err(
                    Some(m.span()),
                    &format!("{section}.allowed_macs"),
                    format!(
                        "{} is a group (multicast) address: no frame comes from one",
                        m.get_ref()
                    ),
                )
            }
            Some(mac) => allowed_macs.push(mac),
            None => {
                return cx.err(
                    Some(m.span()),
                    &format!("{section}.allowed_macs"),
                    format!(
                        "'{}' is not a MAC address (as in 02:00:5e:10:00:01)",
                        m.get_ref()
                    ),
                )
            }
        }
    }
    for (key, v) in [("max_macs", &rp.max_macs), ("flood_rate", &rp.flood_rate)] {
        if v.as_ref().is_some_and(|v| *v.get_ref() == 0) {
            return cx.err(
                v.as_ref().map(|v| v.span()),
                &format!("{section}.{key}"),
                "0 is not allowed (leave the key out for the interface's)",
            );
        }
    }
    Ok(PeerLayer2 {
        allowed_macs,
        max_macs: rp.max_macs.as_ref().map(|v| *v.get_ref() as usize),
        flood_rate: rp.flood_rate.as_ref().map(|v| *v.get_ref()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    fn key() -> String {
        PrivateKey::generate(&mut OsRng).to_base64().to_string()
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/tmp/x.toml"), text)
    }

    #[test]
    fn minimal_and_full() {
        let pk = PrivateKey::generate(&mut OsRng).public_key();
        let c = parse(&format!(
            "[interface]\nname = \"sd0\"\nprivate_key = \"{}\"\nlisten_port = 51820\naddress = [\"10.99.0.1/24\", \"fd99::1/64\"]\n\n[[peer]]\nname = \"alice\"\npublic_key = \"{pk}\"\nallowed_ips = [\"10.99.0.2/32\", \"fd99::2/128\"]\nendpoint = \"198.18.0.2:51820\"\npersistent_keepalive = 25\n",
            key()
        ))
        .unwrap();
        assert_eq!(c.interface.mtu, DEFAULT_MTU);
        assert_eq!(c.interface.addresses.len(), 2);
        assert_eq!(c.interface.addresses[0].to_string(), "10.99.0.1/24");
        assert_eq!(c.peers[0].label(), "alice");
        assert_eq!(
            c.peers[0].endpoint,
            Some("198.18.0.2:51820".parse().unwrap())
        );
        assert_eq!(
            c.peers[0].persistent_keepalive,
            Some(Duration::from_secs(25))
        );
        assert!(c.interface.hairpin);
    }

    fn error_of(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    /// `mode = "l2"`: its keys and defaults; `allowed_ips` refused there, the layer-2 keys
    /// refused on layer 3, bad MACs and modes named by line and key.
    #[test]
    fn layer_2_keys() {
        let k = key();
        let p = PrivateKey::generate(&mut OsRng).public_key();
        let c = parse(&format!(
            "[interface]\nname = \"sd0\"\nprivate_key = \"{k}\"\nmode = \"l2\"\nbridge = \"br0\"\nmac_age = 60\n[[peer]]\npublic_key = \"{p}\"\nallowed_macs = [\"02:00:5E:10:00:01\"]\nflood_rate = 50\n"
        ))
        .unwrap();
        let l2 = c.interface.l2.clone().unwrap();
        assert_eq!(l2.bridge.as_deref(), Some("br0"));
        assert_eq!(l2.mac_age, Duration::from_secs(60));
        assert_eq!(l2.max_macs, DEFAULT_MAX_MACS);
        assert_eq!(c.interface.device_mtu(), 1405);
        assert_eq!(c.interface.tunnel_mtu(1500), 1515);
        assert_eq!(c.peers[0].l2.allowed_macs, vec![[2, 0, 0x5e, 0x10, 0, 1]]);
        assert_eq!(c.peers[0].l2.flood_rate, Some(50));
        let head = format!("[interface]\nname = \"sd0\"\nprivate_key = \"{k}\"\n");
        let e = error_of(&format!("{head}mode = \"l4\"\n"));
        assert!(e.contains(":4: interface.mode: 'l4' is not"), "{e}");
        let e = error_of(&format!("{head}bridge = \"br0\"\n"));
        assert!(e.contains("interface.bridge: a layer-2 setting"), "{e}");
        let e = error_of(&format!(
            "{head}mode = \"l2\"\n[[peer]]\npublic_key = \"{p}\"\nallowed_ips = [\"10.0.0.0/24\"]\n"
        ));
        assert!(
            e.contains("peer[0].allowed_ips: on a layer-2 interface"),
            "{e}"
        );
        let e = error_of(&format!(
            "{head}mode = \"l2\"\n[[peer]]\npublic_key = \"{p}\"\nallowed_macs = [\"02:00:5e:10:00\"]\n"
        ));
        assert!(
            e.contains("peer[0].allowed_macs: '02:00:5e:10:00' is not a MAC"),
            "{e}"
        );
        let e = error_of(&format!(
            "{head}mode = \"l2\"\n[[peer]]\npublic_key = \"{p}\"\nallowed_macs = [\"ff:ff:ff:ff:ff:ff\"]\n"
        ));
        assert!(e.contains("group (multicast) address"), "{e}");
        let e = error_of(&format!(
            "{head}[[peer]]\npublic_key = \"{p}\"\nallowed_macs = [\"02:00:5e:10:00:01\"]\n"
        ));
        assert!(e.contains("peer[0].allowed_macs: a layer-2 setting"), "{e}");
        let e = error_of(&format!("{head}mode = \"l2\"\nmax_macs = 0\n"));
        assert!(e.contains("interface.max_macs: 0 is not allowed"), "{e}");
        let e = error_of(&format!("{head}mode = \"l2\"\nbridge = \"sd0\"\n"));
        assert!(
            e.contains("the bridge cannot be the interface itself"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_line_and_key() {
        let k = key();
        let e = error_of(&format!(
            "[interface]\nname = \"sd0\"\nprivate_key = \"{k}\"\nbogus = 1\n"
        ));
        assert!(e.starts_with("/tmp/x.toml:4: "), "{e}");
        assert!(e.contains("bogus"), "{e}");
        let e = error_of("[interface]\nname = \"sd0\"\nprivate_key = \"abc\"\n");
        assert!(
            e.starts_with("/tmp/x.toml:3: interface.private_key: "),
            "{e}"
        );
        let e = error_of(&format!("[interface]\nname = \"sd0\"\nprivate_key = \"{k}\"\n[[peer]]\npublic_key = \"{}\"\nallowed_ips = [\"10.0.0.0/33\"]\n", PrivateKey::generate(&mut OsRng).public_key()));
        assert!(e.starts_with("/tmp/x.toml:6: peer[0].allowed_ips: "), "{e}");
        let p = PrivateKey::generate(&mut OsRng).public_key();
        let e = error_of(&format!("[interface]\nname = \"sd0\"\nprivate_key = \"{k}\"\n[[peer]]\npublic_key = \"{p}\"\n[[peer]]\npublic_key = \"{p}\"\n"));
        assert!(
            e.contains("peer[1].public_key: the same public key as peer[0]"),
            "{e}"
        );
        let e = error_of(&format!("[interface]\nname = \"sd0\"\nprivate_key = \"{k}\"\n[[peer]]\npublic_key = \"{}\"\nallowed_ips = [\"10.0.0.0/24\"]\n[[peer]]\npublic_key = \"{}\"\nallowed_ips = [\"10.0.0.0/24\"]\n", PrivateKey::generate(&mut OsRng).public_key(), PrivateKey::generate(&mut OsRng).public_key()));
        assert!(e.contains("already claimed by peer[0]"), "{e}");
        let e = error_of(&format!(
            "[interface]\nname = \"much-too-long-name\"\nprivate_key = \"{k}\"\n"
        ));
        assert!(e.contains("interface.name"), "{e}");
        let e = error_of("[interface]\nname = \"sd0\"\n");
        assert!(
            e.contains("private_key or private_key_file is required"),
            "{e}"
        );
    }
}
