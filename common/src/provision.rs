//! Provisioning clients on a server: `add-client`, `remove-client`, `list-clients`.
//!
//! `add-client` makes the client's keys and a pre-shared key, takes the next free address in
//! each of the server's subnets, appends a `[[peer]]` to the server's config without touching
//! its comments or layout (toml_edit), and writes the client's own config twice: `NAME.toml` for
//! suidao-client and `NAME.conf` for wg-quick and the WireGuard apps (also as a QR code). Every
//! file is written to a temporary name and renamed, so a crash never leaves half a file.

use crate::config::{check_endpoint, Config, InterfaceAddress};
use crate::config_writer::{ConfigDraft, PeerDraft};
use rand_core::OsRng;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use suidao_proto::allowed_ips::Cidr;
use suidao_proto::keys::{PresharedKey, PrivateKey};
use toml_edit::{value, Array, ArrayOfTables, DocumentMut, Item, Table};

pub struct AddClient<'a> {
    pub server_config: &'a Path,
    pub name: &'a str,
    pub endpoint: Option<&'a str>,
    pub out_dir: Option<&'a Path>,
    /// The client's interface name (default sd0).
    pub ifname: Option<&'a str>,
}

/// What `add-client` made.
pub struct Added {
    pub addresses: Vec<InterfaceAddress>,
    pub toml_path: PathBuf,
    pub conf_path: PathBuf,
    pub conf_text: String,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.')
}

/// Writes `text` to `path` through a temporary file and a rename, with `mode`.
pub fn write_atomic(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|f| f.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        std::io::Write::write_all(&mut f, text.as_bytes())?;
        f.sync_all()?;
        // The mode asked for, whatever the umask.
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("writing {}: {e}", path.display())
    })
}

fn file_mode(path: &Path) -> u32 {
    std::fs::metadata(path).map_or(0o600, |m| m.permissions().mode() & 0o777)
}

/// The first address of `net` (the server's own subnet) that is neither the network, the
/// IPv4 broadcast, the server's own address, nor inside any peer's allowed IPs.
fn next_free(own: &InterfaceAddress, taken: &[Cidr]) -> Option<InterfaceAddress> {
    let net = Cidr::new(own.addr, own.prefix_len)?;
    let (base, host_bits): (u128, u32) = match net.addr() {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32 - u32::from(own.prefix_len)),
        IpAddr::V6(a) => (u128::from(a), 128 - u32::from(own.prefix_len)),
    };
    let size: u128 = if host_bits >= 127 {
        u128::MAX
    } else {
        1u128 << host_bits
    };
    // Search a bounded number of candidates: plenty for any real server.
    let last = size.saturating_sub(1).min(1 << 20);
    for offset in 1..last {
        let candidate = match own.addr {
            IpAddr::V4(_) => {
                if offset == size - 1 {
                    break; // broadcast
                }
                IpAddr::V4(std::net::Ipv4Addr::from((base + offset) as u32))
            }
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(base + offset)),
        };
        if candidate == own.addr || taken.iter().any(|c| c.contains(candidate)) {
            continue;
        }
        return Some(InterfaceAddress {
            addr: candidate,
            prefix_len: own.prefix_len,
        });
    }
    None
}

fn peers_mut(doc: &mut DocumentMut) -> Result<&mut ArrayOfTables, String> {
    if doc.get("peer").is_none() {
        doc.insert("peer", Item::ArrayOfTables(ArrayOfTables::new()));
    }
    doc.get_mut("peer")
        .and_then(|p| p.as_array_of_tables_mut())
        .ok_or_else(|| "`peer` in the server config is not a list of [[peer]] tables".to_string())
}

pub fn add_client(req: &AddClient<'_>) -> Result<Added, String> {
    if !valid_name(req.name) {
        return Err(format!(
            "'{}' is not a usable client name (letters, digits, '-', '_', '.')",
            req.name
        ));
    }
    let server = Config::load(req.server_config).map_err(|e| e.to_string())?;
    if server
        .peers
        .iter()
        .any(|p| p.name.as_deref() == Some(req.name))
    {
        return Err(format!("a client named '{}' exists already", req.name));
    }
    let endpoint = req
        .endpoint
        .map(str::to_string)
        .or(server.interface.public_endpoint.clone())
        .ok_or("no endpoint for the client: give --endpoint HOST:PORT or set public_endpoint in [interface]")?;
    // Checked, not resolved: the client resolves it, maybe in another network.
    check_endpoint(&endpoint).map_err(|e| format!("--endpoint: {e}"))?;
    let out_dir = req.out_dir.map(Path::to_path_buf).unwrap_or_else(|| {
        req.server_config
            .parent()
            .unwrap_or(Path::new("."))
            .to_path_buf()
    });
    let toml_path = out_dir.join(format!("{}.toml", req.name));
    let conf_path = out_dir.join(format!("{}.conf", req.name));
    for p in [&toml_path, &conf_path] {
        if p.exists() {
            return Err(format!("{} exists already", p.display()));
        }
    }

    if server.interface.l2.is_some() {
        // Its clients would need l2 configs and no wg-quick twin (stock WireGuard carries no
        // frames), and addresses are not the server's to hand out on a switched segment.
        return Err(format!(
            "{} is a layer-2 interface (mode = \"l2\"): add-client writes layer-3 clients only; write the client's config by hand (README, \"Layer 2\")",
            server.interface.name
        ));
    }
    let key = PrivateKey::generate(&mut OsRng);
    let public = key.public_key();
    if server.peers.iter().any(|p| p.public_key == public)
        || public == server.interface.private_key.public_key()
    {
        return Err("the generated key is taken (run again)".into());
    }
    let psk = PresharedKey::generate(&mut OsRng);
    let taken: Vec<Cidr> = server
        .peers
        .iter()
        .flat_map(|p| p.allowed_ips.iter().copied())
        .collect();
    let mut addresses = Vec::new();
    for own in &server.interface.addresses {
        let a = next_free(own, &taken).ok_or_else(|| {
            format!(
                "no free address left in {}",
                Cidr::new(own.addr, own.prefix_len).map_or(own.to_string(), |c| c.to_string())
            )
        })?;
        addresses.push(a);
    }
    if addresses.is_empty() {
        return Err("the server has no address to allocate client addresses from".into());
    }
    let host_routes: Vec<String> = addresses
        .iter()
        .map(|a| format!("{}/{}", a.addr, if a.addr.is_ipv4() { 32 } else { 128 }))
        .collect();
    let server_nets: Vec<String> = server
        .interface
        .addresses
        .iter()
        .filter_map(|a| Cidr::new(a.addr, a.prefix_len))
        .map(|c| c.to_string())
        .collect();

    // The server's config: one more [[peer]], everything else as it was.
    let text = std::fs::read_to_string(req.server_config)
        .map_err(|e| format!("reading {}: {e}", req.server_config.display()))?;
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e| format!("{}: {e}", req.server_config.display()))?;
    let mut peer = Table::new();
    peer.insert("name", value(req.name));
    peer.insert("public_key", value(public.to_base64()));
    peer.insert("preshared_key", value(psk.to_base64().as_str()));
    let mut ips = Array::new();
    for r in &host_routes {
        ips.push(r.as_str());
    }
    peer.insert("allowed_ips", value(ips));
    peers_mut(&mut doc)?.push(peer);
    let new_server = doc.to_string();
    // Check what we are about to write before writing it.
    Config::parse(req.server_config, &new_server)
        .map_err(|e| format!("the edited config would be invalid: {e}"))?;

    let ifname = req.ifname.unwrap_or("sd0");
    let client_toml = ConfigDraft {
        comment: Some(format!(
            "suidao client '{}', made by suidao-server add-client",
            req.name
        )),
        name: ifname.to_string(),
        private_key: Some(key.to_base64().to_string()),
        address: addresses.iter().map(|a| a.to_string()).collect(),
        peers: vec![PeerDraft {
            name: Some("server".into()),
            public_key: server.interface.private_key.public_key().to_base64(),
            preshared_key: Some(psk.to_base64().to_string()),
            endpoint: Some(endpoint.to_string()),
            allowed_ips: server_nets.iter().map(|n| n.to_string()).collect(),
            persistent_keepalive: Some(25),
            allowed_macs: Vec::new(),
        }],
        ..Default::default()
    }
    .to_toml();
    let client = Config::parse(&toml_path, &client_toml)
        .map_err(|e| format!("internal error: the client config is invalid: {e}"))?;
    let conf_text = crate::wgquick::export(&client);

    // Client files first (new names, nothing to lose), then the server's config.
    write_atomic(&toml_path, &client_toml, 0o600)?;
    write_atomic(&conf_path, &conf_text, 0o600)?;
    write_atomic(req.server_config, &new_server, file_mode(req.server_config))?;
    Ok(Added {
        addresses,
        toml_path,
        conf_path,
        conf_text,
    })
}

/// Removes the `[[peer]]` named `name` from the server's config.
pub fn remove_client(server_config: &Path, name: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(server_config)
        .map_err(|e| format!("reading {}: {e}", server_config.display()))?;
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e| format!("{}: {e}", server_config.display()))?;
    let peers = peers_mut(&mut doc)?;
    let before = peers.len();
    peers.retain(|t| t.get("name").and_then(|n| n.as_str()) != Some(name));
    if peers.len() == before {
        return Err(format!(
            "no client named '{name}' in {}",
            server_config.display()
        ));
    }
    if peers.is_empty() {
        doc.remove("peer");
    }
    let new = doc.to_string();
    Config::parse(server_config, &new)
        .map_err(|e| format!("the edited config would be invalid: {e}"))?;
    write_atomic(server_config, &new, file_mode(server_config))
}

/// `name  public key  allowed IPs`, one line per peer.
pub fn list_clients(server_config: &Path) -> Result<String, String> {
    let c = Config::load(server_config).map_err(|e| e.to_string())?;
    let mut out = String::new();
    for p in &c.peers {
        let ips: Vec<String> = p.allowed_ips.iter().map(|c| c.to_string()).collect();
        let _ = writeln!(
            out,
            "{:<20} {}  {}",
            p.name.as_deref().unwrap_or("-"),
            p.public_key,
            ips.join(", ")
        );
    }
    Ok(out)
}

/// The text as a QR code for a terminal (two rows of modules per line of text), drawn as
/// `qrencode -t UTF8` draws it: light modules (and the quiet zone) as blocks, dark ones as
/// the terminal's own background. Terminals are mostly light text on dark, so the code reads
/// dark on light, as a phone's scanner expects; the other way round it is a negative image
/// that many scanners refuse.
pub fn qr(text: &str) -> Result<String, String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(text.as_bytes()).map_err(|e| format!("QR code: {e}"))?;
    Ok(code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_list_remove_keep_the_rest_of_the_file() {
        let dir = std::env::temp_dir().join(format!("suidao-prov-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("server.toml");
        let key = PrivateKey::generate(&mut OsRng);
        let existing = PrivateKey::generate(&mut OsRng).public_key();
        let text = format!(
            "# my server\n[interface]\nname = \"sd0\"   # the tunnel\nprivate_key = \"{}\"\nlisten_port = 51820\naddress = [\"10.99.0.1/24\", \"fd99::1/64\"]\npublic_endpoint = \"198.18.0.1:51820\"\n\n# alice is first\n[[peer]]\nname = \"alice\"\npublic_key = \"{existing}\"\nallowed_ips = [\"10.99.0.2/32\", \"fd99::2/128\"]\n",
            key.to_base64().as_str()
        );
        std::fs::write(&cfg, &text).unwrap();
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o640)).unwrap();
        let added = add_client(&AddClient {
            server_config: &cfg,
            name: "bob",
            endpoint: None,
            out_dir: None,
            ifname: None,
        })
        .unwrap();
        assert_eq!(added.addresses[0].to_string(), "10.99.0.3/24");
        assert_eq!(added.addresses[1].to_string(), "fd99::3/64");
        let after = std::fs::read_to_string(&cfg).unwrap();
        assert!(
            after.starts_with(&text),
            "the original text is kept as it was:\n{after}"
        );
        assert!(after.contains("name = \"bob\""));
        assert_eq!(file_mode(&cfg), 0o640, "permissions kept");
        assert_eq!(file_mode(&added.toml_path), 0o600);
        let client = Config::load(&added.toml_path).unwrap();
        assert_eq!(
            client.peers[0].endpoint_text.as_deref(),
            Some("198.18.0.1:51820")
        );
        assert!(added.conf_text.contains("PresharedKey = "));
        let server = Config::load(&cfg).unwrap();
        assert_eq!(server.peers.len(), 2);
        assert_eq!(server.peers[1].preshared_key, client.peers[0].preshared_key);
        // Same name again: refused, nothing changes.
        assert!(add_client(&AddClient {
            server_config: &cfg,
            name: "bob",
            endpoint: None,
            out_dir: None,
            ifname: None
        })
        .is_err());
        assert!(list_clients(&cfg).unwrap().contains("bob"));
        let code = qr(&added.conf_text).unwrap();
        // The quiet zone is light: drawn as blocks on the first line, and on the last one at
        // least in its upper half (an odd number of rows leaves the lower half empty).
        let lines: Vec<&str> = code.lines().collect();
        assert!(lines[0].chars().all(|c| c == '█'), "{}", lines[0]);
        let last = lines[lines.len() - 1];
        assert!(last.chars().all(|c| c == '█' || c == '▀'), "{last}");
        remove_client(&cfg, "bob").unwrap();
        assert_eq!(
            std::fs::read_to_string(&cfg).unwrap().trim_end(),
            text.trim_end()
        );
        assert!(remove_client(&cfg, "bob").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn allocation_skips_taken_and_special_addresses() {
        let own: InterfaceAddress = "10.0.0.1/30".parse().unwrap();
        assert_eq!(next_free(&own, &[]).unwrap().to_string(), "10.0.0.2/30");
        let taken = vec!["10.0.0.2/32".parse().unwrap()];
        assert!(
            next_free(&own, &taken).is_none(),
            "10.0.0.3 is the broadcast"
        );
        let own6: InterfaceAddress = "fd00::1/64".parse().unwrap();
        let taken6 = vec!["fd00::/126".parse().unwrap()];
        assert_eq!(next_free(&own6, &taken6).unwrap().to_string(), "fd00::4/64");
    }
}
