//! The WireGuard cross-platform userspace API (wireguard.com/xplatform): a Unix socket at
//! `/var/run/wireguard/<name>.sock` speaking `get=1` and `set=1` in `key=value` lines, so that
//! the standard `wg show` and `wg set` work against a running suidao.
//!
//! suidao adds one operation, `suidao_status=1`: what `get=1` says minus the secrets, plus peer
//! names and the drop counters by reason. `suidao-client status` and `suidao-server status`
//! use it.

use crate::apply;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{self, BufRead, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use suidao_proto::allowed_ips::Cidr;
use suidao_proto::keys::{from_hex, PresharedKey, PrivateKey, PublicKey};
use suidao_proto::Device;

pub const SOCKET_DIR: &str = "/var/run/wireguard";
/// One line of a request (`key=value`) is at most this long; a request has any number of
/// lines (wireguard-go takes a `wg addconf` of several megabytes: one peer with 130,560
/// allowed IPs is about 3 MB).
const MAX_LINE: u64 = 4096;

const EINVAL: i32 = 22;
const EOPNOTSUPP: i32 = 95;

pub fn socket_path(ifname: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{ifname}.sock"))
}

/// What the API needs of the running interface.
pub struct ApiState {
    pub ifname: String,
    pub device: Arc<Device>,
    /// The UDP port, as bound now (`wg set listen-port` moves it).
    pub listen_port: Arc<std::sync::atomic::AtomicU16>,
    /// The mark on the UDP sockets, 0 for none (`fwmark` in the config, a full tunnel's, or
    /// `wg set fwmark`), reported by `get` as wireguard-go does, so `wg showconf` | `wg
    /// setconf` goes through.
    pub fwmark: Arc<std::sync::atomic::AtomicU32>,
    /// The interface is configured through this API alone (`suidao-wg`): `set` may change the
    /// private key and the mark too. Otherwise the config file holds the key, and the mark is
    /// the one its full tunnel's rules expect.
    pub by_api: bool,
    /// Layer 2: the switch, whose learned MACs `status` shows (None on layer 3).
    pub switch: Option<Arc<crate::switch::Switch>>,
    /// Configured peer names, by public key (shared with the engine, which updates them on
    /// reload).
    pub names: Arc<RwLock<HashMap<PublicKey, String>>>,
    /// Where `suidao_reload=1` and `set=1` go: the engine applies one at a time and answers each
    /// on the channel that comes with it. `None`: the API alone (tests), which changes the
    /// device itself, one `set` at a time (`set_lock`).
    pub control: Option<tokio::sync::mpsc::UnboundedSender<Control>>,
    pub set_lock: std::sync::Mutex<()>,
}

/// The engine's answer to a control request: a message for a person, or why it was refused.
pub type Reply = std::sync::mpsc::SyncSender<Result<String, String>>;

/// What the API asks of the engine's control loop.
pub enum Control {
    /// Re-read the config file (the one the interface started with; if a path is given, it
    /// must be that one).
    Reload(Option<PathBuf>, Reply),
    Set(SetRequest, Reply),
}

fn parse_bool(v: &str) -> Result<bool, i32> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(EINVAL),
    }
}

impl ApiState {
    /// Answers one request (the text up to and including its blank line).
    pub fn handle(&self, request: &str) -> String {
        let mut lines = request.lines();
        let first = lines.next().unwrap_or_default();
        let mut out = Vec::new();
        // Writing into a Vec cannot fail.
        let _ = self.answer(first, lines, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Answers the request whose first line is `first` and whose other lines (up to its blank
    /// line, not included) are `lines`, writing the answer to `out` as it goes: a large `get`
    /// is never built whole in memory.
    pub fn answer<'a>(
        &self,
        first: &str,
        mut lines: impl Iterator<Item = &'a str>,
        out: &mut impl Write,
    ) -> io::Result<()> {
        match first {
            "get=1" => self.write_get(true, out),
            "suidao_status=1" => self.write_get(false, out),
            "suidao_reload=1" => {
                // `config=PATH`: the file the person meant (`reload -c PATH`).
                let meant = lines
                    .find_map(|l| l.strip_prefix("config="))
                    .map(PathBuf::from);
                out.write_all(self.reload(meant).as_bytes())
            }
            "set=1" => {
                let errno = match self.set(lines) {
                    Ok(()) => 0,
                    Err(e) => e,
                };
                write!(out, "errno={errno}\n\n")
            }
            _ => write!(out, "errno={EINVAL}\n\n"),
        }
    }

    fn port(&self) -> u16 {
        self.listen_port.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn mark(&self) -> u32 {
        self.fwmark.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Asks the engine to re-read the config; the answer is `message=...` and an errno.
    fn reload(&self, meant: Option<PathBuf>) -> String {
        let Some(tx) = &self.control else {
            return format!("message=reload is not available here\nerrno={EOPNOTSUPP}\n\n");
        };
        let (reply_tx, reply_rx) = std::sync::mpsc::sync_channel(1);
        if tx.send(Control::Reload(meant, reply_tx)).is_err() {
            return format!("message=the interface is going down\nerrno={EINVAL}\n\n");
        }
        match reply_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(m)) => format!("message={m}\nerrno=0\n\n"),
            Ok(Err(m)) => format!("message={m}\nerrno={EINVAL}\n\n"),
            Err(_) => format!("message=no answer from the engine\nerrno={EINVAL}\n\n"),
        }
    }

    fn write_get(&self, with_secrets: bool, w: &mut impl Write) -> io::Result<()> {
        let d = &self.device;
        // One peer's worth at a time: the answer streams, however many peers and allowed IPs.
        let mut out = String::new();
        // (A device without a key yet has none to tell, as wireguard-go.)
        let keyed = d.has_private_key();
        if with_secrets {
            if keyed {
                let _ = writeln!(out, "private_key={}", d.private_key().to_hex().as_str());
            }
        } else {
            let _ = writeln!(out, "interface={}", self.ifname);
            if keyed {
                let _ = writeln!(out, "interface_public_key={}", d.public_key().to_hex());
            }
        }
        let _ = writeln!(out, "listen_port={}", self.port());
        if self.mark() != 0 {
            let _ = writeln!(out, "fwmark={}", self.mark());
        }
        if !with_secrets {
            for (reason, n) in d.drops() {
                let _ = writeln!(out, "drop_{}={n}", reason.name());
            }
        }
        // Layer 2 (`status` only: `wg` knows none of it): learned MACs as `MAC/AGE_SECONDS`.
        let learned = match (&self.switch, with_secrets) {
            (Some(sw), false) => {
                let _ = writeln!(out, "mode=l2");
                let _ = writeln!(out, "mac_moves={}", sw.moves());
                sw.entries(std::time::Instant::now())
            }
            _ => Vec::new(),
        };
        let mac_line = |out: &mut String, e: &crate::switch::Entry| {
            let _ = writeln!(
                out,
                "mac={}/{}",
                suidao_proto::l2::mac_to_string(&e.mac),
                e.age.as_secs()
            );
        };
        for e in learned
            .iter()
            .filter(|e| e.port == crate::switch::Port::Local)
        {
            mac_line(&mut out, e);
        }
        let names = self.names.read().map(|n| n.clone()).unwrap_or_default();
        for id in d.peer_ids() {
            let Some(p) = d.peer_info(id) else { continue };
            let _ = writeln!(out, "public_key={}", p.public_key.to_hex());
            if with_secrets {
                let psk = p.preshared_key.unwrap_or_else(PresharedKey::zero);
                let _ = writeln!(out, "preshared_key={}", psk.to_hex().as_str());
            } else if let Some(name) = names.get(&p.public_key) {
                let _ = writeln!(out, "name={name}");
            }
            let _ = writeln!(out, "protocol_version=1");
            if let Some(e) = p.endpoint {
                let _ = writeln!(out, "endpoint={e}");
            }
            let hs = p.last_handshake.unwrap_or_default();
            let _ = writeln!(out, "last_handshake_time_sec={}", hs.as_secs());
            let _ = writeln!(out, "last_handshake_time_nsec={}", hs.subsec_nanos());
            let _ = writeln!(out, "tx_bytes={}", p.tx_bytes);
            let _ = writeln!(out, "rx_bytes={}", p.rx_bytes);
            let _ = writeln!(
                out,
                "persistent_keepalive_interval={}",
                p.persistent_keepalive.map_or(0, |d| d.as_secs())
            );
            for a in p.allowed_ips {
                let _ = writeln!(out, "allowed_ip={a}");
            }
            for e in learned
                .iter()
                .filter(|e| e.port == crate::switch::Port::Peer(id))
            {
                mac_line(&mut out, e);
            }
            w.write_all(out.as_bytes())?;
            out.clear();
        }
        out.push_str("errno=0\n\n");
        w.write_all(out.as_bytes())
    }

    /// `set=1`: the whole request is read and checked first, then applied as one change
    /// through the same path as a reload (`apply`), so it is never half-applied, two `set`s
    /// never interleave, and a reload later sees what it did.
    fn set<'a>(&self, lines: impl Iterator<Item = &'a str>) -> Result<(), i32> {
        let request = SetRequest::parse(lines, &self.device)?;
        // Refused whole, and said in the log: `wg` itself only prints "Operation not supported".
        if request.private_key.is_some() && !self.by_api {
            tracing::warn!(
                "wg set private-key: a running suidao keeps its config file's key (change the file and restart)"
            );
            return Err(EOPNOTSUPP);
        }
        // A new port is the engine's to bind (the API alone, in tests, cannot).
        if let Some(p) = request.listen_port.filter(|p| *p != self.port()) {
            if self.control.is_none() {
                tracing::warn!("wg set listen-port {p}: not here (no engine)");
                return Err(EOPNOTSUPP);
            }
        }
        // A config file's interface keeps its own mark (its full tunnel's rules expect it):
        // another one is refused, and 0 (what `wg setconf` sends for a file without `FwMark`)
        // is let pass and changes nothing. suidao-wg takes any, through the engine.
        if let Some(m) = request.fwmark.filter(|m| *m != self.mark()) {
            let refused = if self.by_api {
                self.control.is_none()
            } else {
                m != 0
            };
            if refused {
                tracing::warn!(
                    "wg set fwmark {m}: not supported here (suidao marks its own sockets for a full tunnel; suidao-wg takes it)"
                );
                return Err(EOPNOTSUPP);
            }
        }
        match &self.control {
            Some(tx) => {
                let (reply_tx, reply_rx) = std::sync::mpsc::sync_channel(1);
                tx.send(Control::Set(request, reply_tx))
                    .map_err(|_| EINVAL)?;
                match reply_rx.recv_timeout(Duration::from_secs(30)) {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(m)) => {
                        tracing::warn!("wg set refused: {m}");
                        Err(EINVAL)
                    }
                    Err(_) => Err(EINVAL),
                }
            }
            // No engine (the API on its own, in tests): the device alone, under one lock.
            None => {
                let _one_at_a_time = self.set_lock.lock().unwrap_or_else(|p| p.into_inner());
                let names = self.names.read().map(|n| n.clone()).unwrap_or_default();
                let mut desired = request.desired(apply::current(&self.device, &names));
                if let Some(k) = &request.private_key {
                    let public = k.public_key();
                    desired.retain(|p| p.public_key != public);
                }
                let plan = apply::plan(&self.device, &names, &desired).map_err(|_| EINVAL)?;
                apply::apply_to_device(&self.device, &plan);
                if let Some(k) = &request.private_key {
                    self.device.set_private_key(k.clone());
                }
                if let Ok(mut n) = self.names.write() {
                    *n = plan.names;
                }
                Ok(())
            }
        }
    }
}

/// What one peer's lines of a `set=1` request ask for.
#[derive(Debug)]
struct PeerOps {
    public_key: PublicKey,
    remove: bool,
    update_only: bool,
    preshared_key: Option<Option<PresharedKey>>,
    endpoint: Option<SocketAddr>,
    persistent_keepalive: Option<Option<Duration>>,
    replace_allowed_ips: bool,
    allowed_ips: Vec<Cidr>,
}

impl PeerOps {
    fn new(public_key: PublicKey) -> Self {
        PeerOps {
            public_key,
            remove: false,
            update_only: false,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: None,
            replace_allowed_ips: false,
            allowed_ips: Vec::new(),
        }
    }
}

/// A whole `set=1` request, parsed and checked, not yet applied.
#[derive(Debug, Default)]
pub struct SetRequest {
    /// A private key other than the device's.
    private_key: Option<PrivateKey>,
    listen_port: Option<u16>,
    fwmark: Option<u32>,
    replace_peers: bool,
    peers: Vec<PeerOps>,
}

impl SetRequest {
    /// The listen port asked for (`listen_port=`; 0: any free port), if any.
    pub fn listen_port(&self) -> Option<u16> {
        self.listen_port
    }

    /// The new private key asked for, if it is not the device's.
    pub fn private_key(&self) -> Option<&PrivateKey> {
        self.private_key.as_ref()
    }

    /// The mark asked for (`fwmark=`; 0: none), if any.
    pub fn fwmark(&self) -> Option<u32> {
        self.fwmark
    }

    /// Reads the request's lines as wireguard-go does: interface keys first, then each
    /// `public_key=` starts a peer. A peer that is this device's own key is ignored, as are the
    /// lines of one that is removed or `update_only` but does not exist (wireguard-go's dummy
    /// peer); whether it exists is decided when the request is applied.
    fn parse<'a>(lines: impl Iterator<Item = &'a str>, device: &Device) -> Result<SetRequest, i32> {
        let mut r = SetRequest::default();
        // The peer the following lines apply to.
        let mut current: Option<PeerOps> = None;
        // The device's own key (the new one, once a request gives it): never a peer.
        let mut own = device.has_private_key().then(|| device.public_key());
        for line in lines {
            if line.is_empty() {
                break;
            }
            let (key, value) = line.split_once('=').ok_or(EINVAL)?;
            match key {
                "private_key" if current.is_none() => {
                    let k = PrivateKey::from_bytes(*from_hex(value).map_err(|_| EINVAL)?);
                    let public = k.public_key();
                    r.private_key = (Some(public) != own).then_some(k);
                    own = Some(public);
                }
                "listen_port" if current.is_none() => {
                    r.listen_port = Some(value.parse().map_err(|_| EINVAL)?);
                }
                "fwmark" if current.is_none() => {
                    r.fwmark = Some(value.parse().map_err(|_| EINVAL)?);
                }
                "replace_peers" if current.is_none() => {
                    r.replace_peers = parse_bool(value)?;
                }
                "public_key" => {
                    r.peers
                        .extend(current.take().filter(|p| Some(p.public_key) != own));
                    let pk = PublicKey::from_bytes(*from_hex(value).map_err(|_| EINVAL)?)
                        .map_err(|_| EINVAL)?;
                    current = Some(PeerOps::new(pk));
                }
                _ => {
                    // Every line is checked, also those of a peer that will be ignored.
                    let Some(p) = current.as_mut() else {
                        return Err(EINVAL);
                    };
                    match key {
                        "update_only" => p.update_only = parse_bool(value)?,
                        "remove" => p.remove = parse_bool(value)?,
                        "preshared_key" => {
                            let psk =
                                PresharedKey::from_bytes(*from_hex(value).map_err(|_| EINVAL)?);
                            p.preshared_key = Some((!psk.is_zero()).then_some(psk));
                        }
                        "endpoint" => p.endpoint = Some(value.parse().map_err(|_| EINVAL)?),
                        "persistent_keepalive_interval" => {
                            let s: u16 = value.parse().map_err(|_| EINVAL)?;
                            p.persistent_keepalive =
                                Some((s > 0).then(|| Duration::from_secs(u64::from(s))));
                        }
                        "replace_allowed_ips" => {
                            if parse_bool(value)? {
                                p.replace_allowed_ips = true;
                                p.allowed_ips.clear();
                            }
                        }
                        "allowed_ip" => p.allowed_ips.push(value.parse().map_err(|_| EINVAL)?),
                        "protocol_version" => {
                            if value != "1" {
                                return Err(EINVAL);
                            }
                        }
                        _ => return Err(EINVAL),
                    }
                }
            }
        }
        r.peers
            .extend(current.take().filter(|p| Some(p.public_key) != own));
        Ok(r)
    }

    /// The peer set after this request, from the set the device has now.
    pub fn desired(&self, mut peers: Vec<apply::PeerSpec>) -> Vec<apply::PeerSpec> {
        if self.replace_peers {
            peers.clear();
        }
        for op in &self.peers {
            let at = peers.iter().position(|p| p.public_key == op.public_key);
            if op.remove {
                if let Some(i) = at {
                    peers.remove(i);
                }
                continue;
            }
            let i = match at {
                Some(i) => i,
                None if op.update_only => continue,
                None => {
                    peers.push(apply::PeerSpec::new(op.public_key));
                    peers.len() - 1
                }
            };
            // An allowed IP given to this peer is taken from any other, as WireGuard does.
            // (Sets, not lists: a `wg addconf` may carry a hundred thousand of them.)
            if !op.allowed_ips.is_empty() {
                let given: HashSet<Cidr> = op.allowed_ips.iter().copied().collect();
                for (j, other) in peers.iter_mut().enumerate() {
                    if j != i {
                        other.allowed_ips.retain(|c| !given.contains(c));
                    }
                }
            }
            let p = &mut peers[i];
            if let Some(psk) = &op.preshared_key {
                p.preshared_key = psk.clone();
            }
            if op.endpoint.is_some() {
                p.endpoint = op.endpoint;
            }
            if let Some(k) = op.persistent_keepalive {
                p.persistent_keepalive = k;
            }
            if op.replace_allowed_ips {
                p.allowed_ips.clear();
            }
            let mut have: HashSet<Cidr> = p.allowed_ips.iter().copied().collect();
            for c in &op.allowed_ips {
                if have.insert(*c) {
                    p.allowed_ips.push(*c);
                }
            }
        }
        peers
    }
}

/// Reads requests from `stream` (each ends with a blank line) and answers them until the
/// client closes. Read a line at a time, so a request of any size costs time and memory in
/// proportion to it (a line longer than MAX_LINE ends the connection).
pub fn serve_connection(state: &ApiState, stream: UnixStream) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    // A client that stops reading its answer does not hold the thread for ever.
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = io::BufReader::new(stream.try_clone()?);
    let mut writer = io::BufWriter::new(stream);
    loop {
        let Some(first) = read_line(&mut reader)? else {
            return Ok(());
        };
        let mut lines = Vec::new();
        loop {
            match read_line(&mut reader)? {
                Some(l) if l.is_empty() => break,
                Some(l) => lines.push(l),
                // The client closed in the middle of a request: nothing to answer.
                None => return Ok(()),
            }
        }
        state.answer(&first, lines.iter().map(String::as_str), &mut writer)?;
        writer.flush()?;
    }
}

/// The next line without its newline; None at the end of the stream. A line longer than
/// MAX_LINE is an error.
fn read_line(reader: &mut impl io::BufRead) -> io::Result<Option<String>> {
    let mut line = String::new();
    let n = reader.take(MAX_LINE + 1).read_line(&mut line)?;
    if n == 0 {
        return Ok(None);
    }
    // Without a newline: either the line is too long, or the stream ended (then what there
    // is, is the line).
    if !line.ends_with('\n') && n as u64 > MAX_LINE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a request line longer than 4096 bytes",
        ));
    }
    while line.ends_with('\n') || line.ends_with('\r') {
        line.pop();
    }
    Ok(Some(line))
}

/// Sends one request to the interface `ifname` and returns the response's `key=value` pairs
/// (failing on a nonzero errno).
pub fn request(ifname: &str, op: &str) -> io::Result<Vec<(String, String)>> {
    let path = socket_path(ifname);
    let mut s = UnixStream::connect(&path).map_err(|e| {
        let hint = if e.kind() == io::ErrorKind::PermissionDenied {
            "the control socket is its owner's only, as it carries the private key: run this as root"
        } else {
            "is the interface up?"
        };
        io::Error::new(
            e.kind(),
            format!("cannot reach {} ({hint}): {e}", path.display()),
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{op}\n\n").as_bytes())?;
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while !text.ends_with("\n\n") {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let mut pairs = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some((k, v)) = line.split_once('=') {
            if k == "errno" && v != "0" {
                let message = pairs
                    .iter()
                    .find(|(k, _)| k == "message")
                    .map(|(_, m): &(String, String)| format!(": {m}"))
                    .unwrap_or_default();
                return Err(io::Error::other(format!(
                    "{ifname} answered errno {v}{message}"
                )));
            }
            pairs.push((k.to_string(), v.to_string()));
        }
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    fn state() -> (ApiState, PrivateKey) {
        let key = PrivateKey::generate(&mut OsRng);
        let device = Arc::new(Device::new(key.clone(), OsRng));
        (
            ApiState {
                ifname: "sdtest".into(),
                device,
                listen_port: Arc::new(51820.into()),
                fwmark: Arc::new(0.into()),
                by_api: false,
                switch: None,
                names: Arc::new(RwLock::new(HashMap::new())),
                control: None,
                set_lock: Default::default(),
            },
            key,
        )
    }

    #[test]
    fn set_then_get_like_wg() {
        let (s, key) = state();
        let peer = PrivateKey::generate(&mut OsRng).public_key();
        let psk = PresharedKey::generate(&mut OsRng);
        let req = format!(
            "set=1\npublic_key={}\npreshared_key={}\nendpoint=198.18.0.2:51820\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.99.0.2/32\nallowed_ip=fd99::2/128\n\n",
            peer.to_hex(),
            psk.to_hex().as_str()
        );
        assert_eq!(s.handle(&req), "errno=0\n\n");
        let got = s.handle("get=1\n\n");
        assert!(got.starts_with(&format!(
            "private_key={}\nlisten_port=51820\n",
            key.to_hex().as_str()
        )));
        assert!(got.contains(&format!("public_key={}\n", peer.to_hex())));
        assert!(got.contains(&format!("preshared_key={}\n", psk.to_hex().as_str())));
        assert!(got.contains("endpoint=198.18.0.2:51820\n"));
        assert!(got.contains("persistent_keepalive_interval=25\n"));
        assert!(
            got.contains("allowed_ip=10.99.0.2/32\n") && got.contains("allowed_ip=fd99::2/128\n")
        );
        assert!(got.ends_with("errno=0\n\n"));
        // The status operation shows no secrets.
        let status = s.handle("suidao_status=1\n\n");
        assert!(!status.contains(key.to_hex().as_str()));
        assert!(!status.contains(psk.to_hex().as_str()));
        assert!(status.contains("drop_bad_mac1=0"));
        // remove
        let req = format!("set=1\npublic_key={}\nremove=true\n\n", peer.to_hex());
        assert_eq!(s.handle(&req), "errno=0\n\n");
        assert!(!s.handle("get=1\n\n").contains(&peer.to_hex()));
    }

    #[test]
    fn bad_requests_get_errno() {
        let (s, _) = state();
        assert_eq!(s.handle("nonsense\n\n"), "errno=22\n\n");
        assert_eq!(s.handle("set=1\nallowed_ip=10.0.0.0/8\n\n"), "errno=22\n\n");
        assert_eq!(s.handle("set=1\nlisten_port=1\n\n"), "errno=95\n\n");
        // A config file's interface keeps its mark: another is refused, 0 lets pass.
        s.fwmark.store(51820, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(s.handle("set=1\nfwmark=1234\n\n"), "errno=95\n\n");
        assert_eq!(s.handle("set=1\nfwmark=0\n\n"), "errno=0\n\n");
        assert!(s.handle("get=1\n\n").contains("fwmark=51820\n"));
        let other = PrivateKey::generate(&mut OsRng);
        assert_eq!(
            s.handle(&format!(
                "set=1\nprivate_key={}\n\n",
                other.to_hex().as_str()
            )),
            "errno=95\n\n"
        );
        let peer = PrivateKey::generate(&mut OsRng).public_key();
        assert_eq!(
            s.handle(&format!(
                "set=1\npublic_key={}\nupdate_only=true\n\n",
                peer.to_hex()
            )),
            "errno=0\n\n"
        );
        assert!(
            s.device.peer_id(&peer).is_none(),
            "update_only does not create"
        );
    }

    /// An interface the API alone configures (suidao-wg) starts without a key, shows none,
    /// and takes one (and a peer with the new key's public key goes, and is not added).
    #[test]
    fn a_keyless_device_shows_no_key_and_takes_one() {
        let (mut s, _) = state();
        s.device = Arc::new(Device::without_key(OsRng));
        s.by_api = true;
        let got = s.handle("get=1\n\n");
        assert!(got.starts_with("listen_port=51820\n"), "{got}");
        assert!(!s
            .handle("suidao_status=1\n\n")
            .contains("interface_public_key"));
        let key = PrivateKey::generate(&mut OsRng);
        let peer = PrivateKey::generate(&mut OsRng).public_key();
        s.handle(&format!(
            "set=1\npublic_key={}\n\n",
            key.public_key().to_hex()
        ));
        assert!(s.device.peer_id(&key.public_key()).is_some());
        let req = format!(
            "set=1\nprivate_key={}\npublic_key={}\npublic_key={}\n\n",
            key.to_hex().as_str(),
            key.public_key().to_hex(),
            peer.to_hex()
        );
        assert_eq!(s.handle(&req), "errno=0\n\n");
        assert!(s.device.has_private_key());
        assert_eq!(s.device.public_key(), key.public_key());
        assert!(s.device.peer_id(&key.public_key()).is_none());
        assert!(s.device.peer_id(&peer).is_some());
        assert!(s
            .handle("get=1\n\n")
            .starts_with(&format!("private_key={}\n", key.to_hex().as_str())));
    }

    fn allowed_of(s: &ApiState, peer: &PublicKey) -> Vec<String> {
        let id = s.device.peer_id(peer).unwrap();
        let mut v: Vec<String> = s
            .device
            .peer_info(id)
            .unwrap()
            .allowed_ips
            .iter()
            .map(|c| c.to_string())
            .collect();
        v.sort();
        v
    }

    /// As wireguard-go: lines after `remove=true` or `update_only=true` for a peer that does
    /// not exist are read and ignored; the device's own key as a peer is ignored; an empty
    /// allowed-IPs list (`wg set ... allowed-ips ""`) clears them.
    #[test]
    fn set_behaves_as_wireguard_go() {
        let (s, key) = state();
        let unknown = PrivateKey::generate(&mut OsRng).public_key();
        let req = format!(
            "set=1\npublic_key={}\nremove=true\nendpoint=198.18.0.9:1\nallowed_ip=10.1.0.0/16\n\n",
            unknown.to_hex()
        );
        assert_eq!(s.handle(&req), "errno=0\n\n");
        let req = format!(
            "set=1\npublic_key={}\nupdate_only=true\npersistent_keepalive_interval=5\nallowed_ip=10.1.0.0/16\n\n",
            unknown.to_hex()
        );
        assert_eq!(s.handle(&req), "errno=0\n\n");
        assert!(s.device.peer_ids().is_empty());
        let own = key.public_key();
        let req = format!(
            "set=1\npublic_key={}\nallowed_ip=10.2.0.0/16\n\n",
            own.to_hex()
        );
        assert_eq!(s.handle(&req), "errno=0\n\n");
        assert!(s.device.peer_ids().is_empty(), "own key ignored");
        // A bad line is refused even for an ignored peer, and nothing of the request applies.
        let peer = PrivateKey::generate(&mut OsRng).public_key();
        let req = format!(
            "set=1\npublic_key={}\nallowed_ip=10.3.0.0/16\npublic_key={}\nallowed_ip=banana\n\n",
            peer.to_hex(),
            own.to_hex()
        );
        assert_eq!(s.handle(&req), "errno=22\n\n");
        assert!(
            s.device.peer_ids().is_empty(),
            "nothing applied from a refused request"
        );
        let req = format!(
            "set=1\npublic_key={}\nallowed_ip=10.3.0.0/16\nallowed_ip=10.4.0.1/32\n\n",
            peer.to_hex()
        );
        assert_eq!(s.handle(&req), "errno=0\n\n");
        assert_eq!(allowed_of(&s, &peer), vec!["10.3.0.0/16", "10.4.0.1/32"]);
        let req = format!(
            "set=1\npublic_key={}\nreplace_allowed_ips=true\n\n",
            peer.to_hex()
        );
        assert_eq!(s.handle(&req), "errno=0\n\n");
        assert!(allowed_of(&s, &peer).is_empty(), "an empty list clears");
    }

    /// Two `set` requests at once never interleave: each replaces the peer's allowed IPs with a
    /// list of its own, and the result is one list or the other, never a mix.
    #[test]
    fn concurrent_sets_do_not_interleave() {
        let (s, _) = state();
        let s = Arc::new(s);
        let peer = PrivateKey::generate(&mut OsRng).public_key();
        let request = |third: u8| {
            let mut r = format!(
                "set=1\npublic_key={}\nreplace_allowed_ips=true\n",
                peer.to_hex()
            );
            for i in 0..200 {
                r.push_str(&format!(
                    "allowed_ip=10.{third}.{}.{}/32\n",
                    i / 250,
                    i % 250
                ));
            }
            r.push('\n');
            r
        };
        for _ in 0..20 {
            let threads: Vec<_> = [1u8, 2]
                .into_iter()
                .map(|t| {
                    let s = s.clone();
                    let r = request(t);
                    std::thread::spawn(move || s.handle(&r))
                })
                .collect();
            for t in threads {
                assert_eq!(t.join().unwrap(), "errno=0\n\n");
            }
            let got = allowed_of(&s, &peer);
            assert_eq!(got.len(), 200);
            let firsts: std::collections::HashSet<&str> =
                got.iter().map(|c| c.split('.').nth(1).unwrap()).collect();
            assert_eq!(firsts.len(), 1, "a mix of two requests: {got:?}");
        }
    }

    /// A `wg addconf` of one peer with 130,560 allowed IPs (about 3 MB, which wireguard-go
    /// takes) through the socket, then a `get` that streams them all back; and a request line
    /// over MAX_LINE ends the connection instead of growing a buffer.
    #[test]
    fn requests_and_answers_of_any_size_stream() {
        let (s, _) = state();
        let s = Arc::new(s);
        let peer = PrivateKey::generate(&mut OsRng).public_key();
        let mut req = format!(
            "set=1\npublic_key={}\nreplace_allowed_ips=true\n",
            peer.to_hex()
        );
        let count = 130_560u32;
        for i in 0..count {
            let _ = writeln!(
                req,
                "allowed_ip=10.{}.{}.{}/32",
                i >> 16,
                i >> 8 & 0xff,
                i & 0xff
            );
        }
        req.push('\n');
        assert!(req.len() > 2_500_000, "{}", req.len());
        let (client, server) = UnixStream::pair().unwrap();
        let api = s.clone();
        let t = std::thread::spawn(move || serve_connection(&api, server));
        let mut c = client;
        let started = std::time::Instant::now();
        c.write_all(req.as_bytes()).unwrap();
        c.write_all(b"get=1\n\n").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        t.join().unwrap().unwrap();
        assert!(
            answer.starts_with("errno=0\n\n"),
            "{}",
            &answer[..40.min(answer.len())]
        );
        let listed = answer.matches("\nallowed_ip=").count();
        assert_eq!(listed as u32, count, "every allowed IP listed back");
        assert!(answer.ends_with("errno=0\n\n"));
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "linear, not quadratic: {:?}",
            started.elapsed()
        );
        // One endless line: the connection ends, nothing is answered.
        let (mut client, server) = UnixStream::pair().unwrap();
        let api = s.clone();
        let t = std::thread::spawn(move || serve_connection(&api, server));
        client.write_all(b"set=1\npublic_key=").unwrap();
        client.write_all(&vec![b'a'; 10_000]).unwrap();
        assert!(t.join().unwrap().is_err());
    }
}
