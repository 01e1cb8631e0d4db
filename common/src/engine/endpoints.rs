//! What outlives a run, and what the endpoints' names say now.
//!
//! The endpoint memory: a server remembers where its roaming clients were last seen
//! (`/run/suidao/NAME.endpoints`, owner only), so that after a restart it starts a handshake
//! with each at once instead of waiting for them to notice. Written when it changes (the
//! protocol raises attention when an endpoint moves), and a last time on the way down.
//!
//! Re-resolving: a peer whose endpoint is a host name gets it resolved again while its
//! handshakes fail (none for RERESOLVE_AFTER, or never), at most every RERESOLVE_RETRY, so a
//! server whose name moved to another address is reached there without a restart (what
//! WireGuard users run `reresolve-dns.sh` from cron for).

use super::{read_lock, write_lock};
use crate::clock;
use crate::config::Config;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use suidao_proto::keys::PublicKey;
use suidao_proto::Device;
use tracing::debug;

/// Where the server remembers its peers' endpoints across restarts.
pub const STATE_DIR: &str = "/run/suidao";
/// A peer whose endpoint is a host name gets it resolved again when it has had no handshake
/// for this long (or none at all), as WireGuard's `reresolve-dns.sh` does from cron...
const RERESOLVE_AFTER: Duration = Duration::from_secs(135);
/// ...at most this often.
pub(super) const RERESOLVE_RETRY: Duration = Duration::from_secs(10);

/// The file names in STATE_DIR end so.
pub const ENDPOINTS_SUFFIX: &str = ".endpoints";

/// Where `ifname`'s endpoint memory is kept.
pub fn state_path(ifname: &str) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{ifname}{ENDPOINTS_SUFFIX}"))
}

/// A running interface's endpoint memory.
pub(super) struct EndpointMemory {
    ifname: String,
    device: Arc<Device>,
    /// Peers whose endpoint the config gives (those are not remembered).
    configured: RwLock<HashSet<PublicKey>>,
    saved: Mutex<String>,
}

impl EndpointMemory {
    pub(super) fn new(ifname: &str, device: Arc<Device>, config: &Config) -> EndpointMemory {
        EndpointMemory {
            ifname: ifname.to_string(),
            device,
            configured: RwLock::new(configured_endpoints(config)),
            saved: Mutex::new(String::new()),
        }
    }

    /// What the last run remembered, for the peers the config gives no endpoint.
    pub(super) fn recall(ifname: &str) -> HashMap<String, SocketAddr> {
        load_endpoints(ifname)
    }

    /// After a reload: which peers' endpoints the config gives now.
    pub(super) fn set_config(&self, config: &Config) {
        *write_lock(&self.configured) = configured_endpoints(config);
    }

    /// Writes the memory if it changed since the last write.
    pub(super) fn save(&self) {
        let text = endpoints_text(&self.device, &read_lock(&self.configured));
        let mut saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
        if text != *saved {
            match save_endpoints(&self.ifname, &text) {
                Ok(()) => *saved = text,
                Err(e) => debug!("saving endpoints: {e}"),
            }
        }
    }
}

fn configured_endpoints(config: &Config) -> HashSet<PublicKey> {
    config
        .peers
        .iter()
        .filter(|p| p.endpoint_text.is_some())
        .map(|p| p.public_key)
        .collect()
}

/// Endpoints remembered by an earlier run of this interface: `base64-key endpoint` lines.
fn load_endpoints(ifname: &str) -> HashMap<String, SocketAddr> {
    let text = std::fs::read_to_string(state_path(ifname)).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (k, e) = l.split_once(' ')?;
            Some((k.to_string(), e.parse().ok()?))
        })
        .collect()
}

/// The endpoints worth remembering: those of peers with no endpoint in the config (roaming
/// clients, as a server sees them).
fn endpoints_text(device: &Device, configured: &HashSet<PublicKey>) -> String {
    device
        .peer_ids()
        .iter()
        .filter_map(|id| device.peer_info(*id))
        .filter(|p| !configured.contains(&p.public_key))
        .filter_map(|p| {
            p.endpoint
                .map(|e| format!("{} {e}\n", p.public_key.to_base64()))
        })
        .collect()
}

/// Writes the endpoint memory atomically; with nothing to remember, removes it.
fn save_endpoints(ifname: &str, text: &str) -> std::io::Result<()> {
    save_endpoints_in(Path::new(STATE_DIR), ifname, text)
}

fn save_endpoints_in(dir: &Path, ifname: &str, text: &str) -> std::io::Result<()> {
    let path = dir.join(format!("{ifname}{ENDPOINTS_SUFFIX}"));
    if text.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    write_private(&tmp, text)?;
    std::fs::rename(&tmp, &path)
}

/// Writes a new file readable by its owner only (it names peers' keys and addresses), from
/// its first byte: an old file in the way is removed, not reused with its mode.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// The peers whose endpoint is a host name, with it.
pub(super) fn hostnames(config: &Config) -> HashMap<PublicKey, String> {
    config
        .peers
        .iter()
        .filter_map(|p| p.endpoint_host().map(|h| (p.public_key, h.to_string())))
        .collect()
}

/// A new address for a peer, found by `reresolve`.
pub(super) type Moved = (PublicKey, SocketAddr, String);

/// The re-resolving thread: looks at the peers with host names (a new set arrives on
/// `hosts`) every RERESOLVE_RETRY while there are any, sleeps until a new set when there are
/// none, and hands each new address to the control loop (`moved`). Ends when `hosts` closes.
pub(super) fn reresolve(
    device: Arc<Device>,
    hosts: Receiver<HashMap<PublicKey, String>>,
    moved: tokio::sync::mpsc::UnboundedSender<Moved>,
) {
    let mut names: HashMap<PublicKey, String> = HashMap::new();
    let mut tried: HashMap<PublicKey, Instant> = HashMap::new();
    loop {
        let next = if names.is_empty() {
            hosts.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            hosts.recv_timeout(clock::real(RERESOLVE_RETRY))
        };
        match next {
            Ok(n) => {
                names = n;
                tried.retain(|k, _| names.contains_key(k));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        for (key, host) in &names {
            let now = clock::now();
            let Some(info) = device.peer_id(key).and_then(|id| device.peer_info(id)) else {
                continue;
            };
            let stale = info
                .last_handshake
                .is_none_or(|t| now.since_epoch.saturating_sub(t) >= RERESOLVE_AFTER);
            if !stale
                || tried
                    .get(key)
                    .is_some_and(|t| now.since(*t) < RERESOLVE_RETRY)
            {
                continue;
            }
            tried.insert(*key, now.instant);
            match crate::config::resolve_endpoint(host) {
                Ok(a) if info.endpoint != Some(a) => {
                    if moved.send((*key, a, host.clone())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => debug!("{host}: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    // Test code: a failed unwrap is a failed test.
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The endpoint memory names peers' keys and addresses: owner only, also when an older
    /// file (written with a laxer mode) is replaced.
    #[test]
    fn endpoint_memory_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("suidao-endpoints-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sd9.endpoints");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(dir.join("sd9.tmp"), "stale").unwrap();
        std::fs::set_permissions(dir.join("sd9.tmp"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        save_endpoints_in(&dir, "sd9", "key 198.18.0.2:51820\n").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(text, "key 198.18.0.2:51820\n");
    }
}
