//! The WireGuard cross-platform userspace API (wireguard.com/xplatform): a Unix socket at
//! `/var/run/wireguard/<name>.sock` speaking `get=1` and `set=1` in `key=value` lines, so that
//! the standard `wg show` and `wg set` work against a running suidao.
//!
//! suidao adds one operation, `suidao_status=1`: what `get=1` says minus the secrets, plus peer
//! names and the drop counters by reason. `suidao-client status` and `suidao-server status`
//! use it.

use crate::allowed_ips::Cidr;
use crate::keys::{from_hex, PresharedKey, PrivateKey, PublicKey};
use crate::proto::{Device, PeerConfig, PeerId};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub const SOCKET_DIR: &str = "/var/run/wireguard";
/// Requests are small; anything bigger is refused.
const MAX_REQUEST: usize = 1 << 20;

const EINVAL: i32 = 22;
const EOPNOTSUPP: i32 = 95;

pub fn socket_path(ifname: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{ifname}.sock"))
}

/// What the API needs of the running interface.
pub struct ApiState {
    pub ifname: String,
    pub device: Arc<Device>,
    pub listen_port: u16,
    /// Configured peer names, by public key (shared with the engine, which updates them on
    /// reload).
    pub names: Arc<RwLock<HashMap<PublicKey, String>>>,
    /// Where `suidao_reload=1` requests go: the engine answers each on the channel it sends.
    pub reload: Option<
        tokio::sync::mpsc::UnboundedSender<std::sync::mpsc::SyncSender<Result<String, String>>>,
    >,
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
        match lines.next() {
            Some("get=1") => self.get(true),
            Some("suidao_status=1") => self.get(false),
            Some("suidao_reload=1") => self.reload(),
            Some("set=1") => {
                let errno = match self.set(lines) {
                    Ok(()) => 0,
                    Err(e) => e,
                };
                format!("errno={errno}\n\n")
            }
            _ => format!("errno={EINVAL}\n\n"),
        }
    }

    /// Asks the engine to re-read the config; the answer is `message=...` and an errno.
    fn reload(&self) -> String {
        let Some(tx) = &self.reload else {
            return format!("message=reload is not available here\nerrno={EOPNOTSUPP}\n\n");
        };
        let (reply_tx, reply_rx) = std::sync::mpsc::sync_channel(1);
        if tx.send(reply_tx).is_err() {
            return format!("message=the interface is going down\nerrno={EINVAL}\n\n");
        }
        match reply_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(m)) => format!("message={m}\nerrno=0\n\n"),
            Ok(Err(m)) => format!("message={m}\nerrno={EINVAL}\n\n"),
            Err(_) => format!("message=no answer from the engine\nerrno={EINVAL}\n\n"),
        }
    }

    fn get(&self, with_secrets: bool) -> String {
        let d = &self.device;
        let mut out = String::new();
        if with_secrets {
            let _ = writeln!(out, "private_key={}", d.private_key().to_hex().as_str());
        } else {
            let _ = writeln!(out, "interface={}", self.ifname);
            let _ = writeln!(out, "interface_public_key={}", d.public_key().to_hex());
        }
        let _ = writeln!(out, "listen_port={}", self.listen_port);
        if !with_secrets {
            for (reason, n) in d.drops() {
                let _ = writeln!(out, "drop_{}={n}", reason.name());
            }
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
        }
        out.push_str("errno=0\n\n");
        out
    }

    fn set<'a>(&self, lines: impl Iterator<Item = &'a str>) -> Result<(), i32> {
        let d = &self.device;
        // The peer the following lines apply to, and whether this request created it.
        let mut current: Option<(PeerId, PublicKey, bool)> = None;
        for line in lines {
            if line.is_empty() {
                break;
            }
            let (key, value) = line.split_once('=').ok_or(EINVAL)?;
            match key {
                "private_key" => {
                    let k = PrivateKey::from_bytes(*from_hex(value).map_err(|_| EINVAL)?);
                    if k.public_key() != d.public_key() {
                        return Err(EOPNOTSUPP);
                    }
                }
                "listen_port" => {
                    let p: u16 = value.parse().map_err(|_| EINVAL)?;
                    if p != self.listen_port {
                        return Err(EOPNOTSUPP);
                    }
                }
                "fwmark" => {
                    if value != "0" {
                        return Err(EOPNOTSUPP);
                    }
                }
                "replace_peers" => {
                    if parse_bool(value)? {
                        for id in d.peer_ids() {
                            if let Some(info) = d.peer_info(id) {
                                let _ = d.remove_peer(&info.public_key);
                            }
                        }
                    }
                }
                "public_key" => {
                    let pk = PublicKey::from_bytes(*from_hex(value).map_err(|_| EINVAL)?)
                        .map_err(|_| EINVAL)?;
                    current = Some(match d.peer_id(&pk) {
                        Some(id) => (id, pk, false),
                        None => (
                            d.add_peer(PeerConfig::new(pk)).map_err(|_| EINVAL)?,
                            pk,
                            true,
                        ),
                    });
                }
                _ => {
                    let Some((id, pk, created)) = current else {
                        return Err(EINVAL);
                    };
                    match key {
                        "update_only" => {
                            if parse_bool(value)? && created {
                                let _ = d.remove_peer(&pk);
                                current = None;
                            }
                        }
                        "remove" => {
                            if parse_bool(value)? {
                                let _ = d.remove_peer(&pk);
                                if let Ok(mut names) = self.names.write() {
                                    names.remove(&pk);
                                }
                                current = None;
                            }
                        }
                        "preshared_key" => {
                            let psk =
                                PresharedKey::from_bytes(*from_hex(value).map_err(|_| EINVAL)?);
                            let psk = (!psk.is_zero()).then_some(psk);
                            d.set_preshared_key(id, psk).map_err(|_| EINVAL)?;
                        }
                        "endpoint" => {
                            let e: SocketAddr = value.parse().map_err(|_| EINVAL)?;
                            d.set_endpoint(id, Some(e), false).map_err(|_| EINVAL)?;
                        }
                        "persistent_keepalive_interval" => {
                            let s: u16 = value.parse().map_err(|_| EINVAL)?;
                            let interval = (s > 0).then(|| Duration::from_secs(u64::from(s)));
                            d.set_persistent_keepalive(id, interval)
                                .map_err(|_| EINVAL)?;
                        }
                        "replace_allowed_ips" => {
                            if parse_bool(value)? {
                                d.clear_allowed_ips(id).map_err(|_| EINVAL)?;
                            }
                        }
                        "allowed_ip" => {
                            let c: Cidr = value.parse().map_err(|_| EINVAL)?;
                            d.add_allowed_ip(id, c).map_err(|_| EINVAL)?;
                        }
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
        Ok(())
    }
}

/// Reads requests from `stream` (each ends with a blank line) and answers them until the
/// client closes.
pub fn serve_connection(state: &ApiState, mut stream: UnixStream) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        pending.extend_from_slice(&buf[..n]);
        if pending.len() > MAX_REQUEST {
            return Ok(());
        }
        // A get request is one line followed by a blank line; set requests end with a blank
        // line too. Answer each complete request.
        while let Some(end) = find_request_end(&pending) {
            let request: Vec<u8> = pending.drain(..end).collect();
            let text = String::from_utf8_lossy(&request);
            let response = state.handle(&text);
            stream.write_all(response.as_bytes())?;
        }
    }
}

fn find_request_end(data: &[u8]) -> Option<usize> {
    data.windows(2).position(|w| w == b"\n\n").map(|p| p + 2)
}

/// Sends one request to the interface `ifname` and returns the response's `key=value` pairs
/// (failing on a nonzero errno).
pub fn request(ifname: &str, op: &str) -> io::Result<Vec<(String, String)>> {
    let path = socket_path(ifname);
    let mut s = UnixStream::connect(&path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot reach {} (is the interface up?): {e}",
                path.display()
            ),
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

    fn state() -> (ApiState, PrivateKey) {
        let key = PrivateKey::generate();
        let device = Arc::new(Device::new(key.clone()));
        (
            ApiState {
                ifname: "sdtest".into(),
                device,
                listen_port: 51820,
                names: Arc::new(RwLock::new(HashMap::new())),
                reload: None,
            },
            key,
        )
    }

    #[test]
    fn set_then_get_like_wg() {
        let (s, key) = state();
        let peer = PrivateKey::generate().public_key();
        let psk = PresharedKey::generate();
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
        let other = PrivateKey::generate();
        assert_eq!(
            s.handle(&format!(
                "set=1\nprivate_key={}\n\n",
                other.to_hex().as_str()
            )),
            "errno=95\n\n"
        );
        let peer = PrivateKey::generate().public_key();
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
}
