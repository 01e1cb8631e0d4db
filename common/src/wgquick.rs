//! wg-quick's `.conf` format, both ways: `import` turns one into a suidao TOML config, `export`
//! turns a suidao config into one (for the WireGuard apps, or `wg-quick up`).
//!
//! ```text
//! [Interface]                       [interface]
//! PrivateKey = ...                  private_key = "..."
//! Address = 10.0.0.1/24, fd::1/64   address = ["10.0.0.1/24", "fd::1/64"]
//! ListenPort = 51820                listen_port = 51820
//! MTU = 1420                        mtu = 1420
//! Table = off | auto | main | 1234  table = "off" | (left out) | "main" | 1234
//! FwMark = 0x1234                   fwmark = 0x1234
//! DNS = 10.0.0.1, corp.example      dns = ["10.0.0.1", "corp.example"]
//! PostUp = cmd                      post_up = ["cmd"]      (PreUp, PreDown, PostDown alike)
//! [Peer]                            [[peer]]
//! PublicKey / PresharedKey          public_key / preshared_key
//! Endpoint / AllowedIPs             endpoint / allowed_ips
//! PersistentKeepalive               persistent_keepalive
//! ```
//!
//! A `# name` comment right after a `[Peer]` header (as `export` writes it) or right above it
//! is the peer's `name`. Comments start with `#` (anywhere) or `;` (at the start of a line).
//! `SaveConfig` (suidao never rewrites a config behind the user's back) and keys it does not
//! know are not a refusal: `import` leaves them out and says so, one warning each, with its
//! line.

use crate::config::Config;
use crate::config_writer::{ConfigDraft, PeerDraft, TableDraft};
use std::fmt::Write as _;

/// One `[Interface]` or `[Peer]` section: its keys in order (a key may repeat), each with
/// the line it is on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Section {
    pub kind: String,
    pub entries: Vec<(String, String)>,
    pub lines: Vec<usize>,
    /// A `# comment` right above or right after the header: a peer's name.
    pub name: Option<String>,
}

impl Section {
    fn all(&self, key: &str) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(key))
            .flat_map(|(_, v)| {
                // List-valued keys may be split over several lines or comma-separated.
                if ["address", "allowedips", "dns"].contains(&key.to_ascii_lowercase().as_str()) {
                    v.split(',')
                        .map(|x| x.trim().to_string())
                        .filter(|x| !x.is_empty())
                        .collect()
                } else {
                    vec![v.clone()]
                }
            })
            .collect()
    }

    fn one(&self, key: &str) -> Option<String> {
        self.all(key).into_iter().last()
    }
}

/// The text of a line before its comment, and the comment: `#` anywhere (as wg-quick reads
/// it), `;` only at the start of a line (INI style: a `;` later on is part of the value, as in
/// `PostUp = iptables ...; iptables ...`).
fn split_comment(raw: &str) -> (&str, Option<&str>) {
    if let Some(rest) = raw.trim_start().strip_prefix(';') {
        return ("", Some(rest.trim()));
    }
    match raw.find('#') {
        Some(i) => (&raw[..i], Some(raw[i + 1..].trim())),
        None => (raw, None),
    }
}

/// Parses the INI-like text; `line N: ...` on anything it cannot read.
pub fn parse(text: &str) -> Result<Vec<Section>, String> {
    let mut sections: Vec<Section> = Vec::new();
    // The comment on the line just above, for a `[Peer]` header that follows it.
    let mut comment_above: Option<String> = None;
    for (n, raw) in text.lines().enumerate() {
        let (code, comment) = split_comment(raw);
        let line = code.trim();
        if line.is_empty() {
            match comment.filter(|c| !c.is_empty()) {
                Some(c) => {
                    // Right after a header, before any key: the section's name.
                    match sections.last_mut() {
                        Some(s) if s.entries.is_empty() && s.name.is_none() && s.kind == "peer" => {
                            s.name = Some(c.to_string());
                        }
                        _ => comment_above = Some(c.to_string()),
                    }
                }
                None => comment_above = None,
            }
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let kind = name.trim();
            if !kind.eq_ignore_ascii_case("interface") && !kind.eq_ignore_ascii_case("peer") {
                return Err(format!("line {}: unknown section [{kind}]", n + 1));
            }
            let kind = kind.to_ascii_lowercase();
            let name = comment_above.take().filter(|_| kind == "peer");
            sections.push(Section {
                kind,
                entries: Vec::new(),
                lines: Vec::new(),
                name,
            });
            continue;
        }
        comment_above = None;
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("line {}: expected Key = Value", n + 1));
        };
        let Some(section) = sections.last_mut() else {
            return Err(format!(
                "line {}: a key before any [Interface] or [Peer]",
                n + 1
            ));
        };
        section
            .entries
            .push((k.trim().to_string(), v.trim().to_string()));
        section.lines.push(n + 1);
    }
    if sections.iter().filter(|s| s.kind == "interface").count() != 1 {
        return Err("there must be exactly one [Interface] section".into());
    }
    Ok(sections)
}

/// `::0/0` as `::/0`, `fd00:0::1/64` as `fd00::1/64`: the one way `export` writes them, so
/// that a round trip gives the same text. Anything that does not read as ADDRESS/LENGTH is
/// left as written, for `check` to name.
fn normal_prefix(text: &str) -> String {
    let Some((addr, len)) = text.split_once('/') else {
        return text.to_string();
    };
    match (
        addr.trim().parse::<std::net::IpAddr>(),
        len.trim().parse::<u8>(),
    ) {
        (Ok(a), Ok(l)) => format!("{a}/{l}"),
        _ => text.to_string(),
    }
}

/// What `import` made: the TOML, and what it left out, one line each.
#[derive(Debug)]
pub struct Imported {
    pub toml: String,
    pub warnings: Vec<String>,
}

/// wg-quick text to suidao TOML, for an interface named `name` (from the file's name, as
/// wg-quick takes it).
pub fn import(text: &str, name: &str) -> Result<Imported, String> {
    if let Err(m) = crate::config::check_ifname(name) {
        return Err(format!(
            "the interface name comes from the file's name: {m}; rename the file, as wg-quick needs too"
        ));
    }
    let sections = parse(text)?;
    let mut draft = ConfigDraft {
        name: name.to_string(),
        ..Default::default()
    };
    let mut warnings = Vec::new();
    for s in &sections {
        let known: &[&str] = if s.kind == "interface" {
            &[
                "privatekey",
                "address",
                "listenport",
                "mtu",
                "table",
                "fwmark",
                "dns",
                "preup",
                "postup",
                "predown",
                "postdown",
            ]
        } else {
            &[
                "publickey",
                "presharedkey",
                "endpoint",
                "allowedips",
                "persistentkeepalive",
            ]
        };
        for ((k, v), line) in s.entries.iter().zip(&s.lines) {
            let lower = k.to_ascii_lowercase();
            if known.contains(&lower.as_str()) {
                continue;
            }
            let why = match lower.as_str() {
                "saveconfig" => {
                    "suidao never rewrites a config behind your back, so this is left out"
                }
                _ => "not a wg-quick key suidao knows: left out",
            };
            warnings.push(format!("line {line}: {k} = {v}: {why}"));
        }
        if s.kind == "interface" {
            draft.private_key = s.one("PrivateKey");
            if let Some(p) = s.one("ListenPort") {
                let p: u16 = p
                    .parse()
                    .map_err(|_| format!("ListenPort {p:?} is not a port"))?;
                draft.listen_port = Some(p);
            }
            draft.address = s.all("Address").iter().map(|a| normal_prefix(a)).collect();
            if let Some(m) = s.one("MTU") {
                let m: u32 = m
                    .parse()
                    .map_err(|_| format!("MTU {m:?} is not a number"))?;
                draft.mtu = Some(m);
            }
            if let Some(t) = s.one("Table") {
                match t.as_str() {
                    "auto" => {}
                    "off" | "main" => draft.table = Some(TableDraft::Word(t.clone())),
                    n => match n.parse::<u32>() {
                        Ok(n) => draft.table = Some(TableDraft::Number(n)),
                        Err(_) => warnings.push(format!(
                            "Table = {t}: a table by name (other than off, auto, main) is not taken: left out (give its number)"
                        )),
                    },
                }
            }
            if let Some(m) = s.one("FwMark") {
                let value = match m.strip_prefix("0x").or_else(|| m.strip_prefix("0X")) {
                    Some(hex) => u32::from_str_radix(hex, 16).map(|v| format!("0x{v:x}")),
                    None if m == "off" => Ok(String::new()),
                    None => m.parse::<u32>().map(|v| v.to_string()),
                };
                match value {
                    Ok(v) if v.is_empty() || v == "0" || v == "0x0" => {}
                    Ok(v) => draft.fwmark = Some(v),
                    Err(_) => return Err(format!("FwMark {m:?} is not a number")),
                }
            }
            draft.dns = s.all("DNS");
            draft.pre_up = s.all("PreUp");
            draft.post_up = s.all("PostUp");
            draft.pre_down = s.all("PreDown");
            draft.post_down = s.all("PostDown");
        }
    }
    for s in sections.iter().filter(|s| s.kind == "peer") {
        let mut peer = PeerDraft {
            name: s.name.clone(),
            public_key: s.one("PublicKey").ok_or("a [Peer] without PublicKey")?,
            preshared_key: s.one("PresharedKey"),
            endpoint: s.one("Endpoint"),
            allowed_ips: s
                .all("AllowedIPs")
                .iter()
                .map(|c| normal_prefix(c))
                .collect(),
            persistent_keepalive: None,
            allowed_macs: Vec::new(),
        };
        if let Some(k) = s.one("PersistentKeepalive") {
            if k != "off" {
                let k: u16 = k
                    .parse()
                    .map_err(|_| format!("PersistentKeepalive {k:?} is not a number"))?;
                peer.persistent_keepalive = Some(k);
            }
        }
        draft.peers.push(peer);
    }
    Ok(Imported {
        toml: draft.to_toml(),
        warnings,
    })
}

/// A suidao config as wg-quick text (with the private key: treat the output as a secret).
pub fn export(c: &Config) -> String {
    let i = &c.interface;
    let mut out = String::from("[Interface]\n");
    let _ = writeln!(out, "PrivateKey = {}", i.private_key.to_base64().as_str());
    if !i.addresses.is_empty() {
        let a: Vec<String> = i.addresses.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(out, "Address = {}", a.join(", "));
    }
    if let Some(p) = i.listen_port {
        let _ = writeln!(out, "ListenPort = {p}");
    }
    if i.mtu != crate::config::DEFAULT_MTU {
        let _ = writeln!(out, "MTU = {}", i.mtu);
    }
    match i.table {
        crate::config::Table::Auto => {}
        crate::config::Table::Off => out.push_str("Table = off\n"),
        crate::config::Table::Id(crate::netlink::MAIN_TABLE) => out.push_str("Table = main\n"),
        crate::config::Table::Id(n) => {
            let _ = writeln!(out, "Table = {n}");
        }
    }
    if let Some(m) = i.fwmark {
        let _ = writeln!(out, "FwMark = 0x{m:x}");
    }
    if !i.dns.is_empty() {
        let _ = writeln!(out, "DNS = {}", i.dns.entries().join(", "));
    }
    for (key, cmds) in [
        ("PreUp", &i.hooks.pre_up),
        ("PostUp", &i.hooks.post_up),
        ("PreDown", &i.hooks.pre_down),
        ("PostDown", &i.hooks.post_down),
    ] {
        for cmd in cmds {
            let _ = writeln!(out, "{key} = {cmd}");
        }
    }
    for p in &c.peers {
        out.push_str("\n[Peer]\n");
        if let Some(n) = &p.name {
            let _ = writeln!(out, "# {n}");
        }
        let _ = writeln!(out, "PublicKey = {}", p.public_key);
        if let Some(k) = &p.preshared_key {
            let _ = writeln!(out, "PresharedKey = {}", k.to_base64().as_str());
        }
        if let Some(e) = &p.endpoint_text {
            let _ = writeln!(out, "Endpoint = {e}");
        }
        let ips: Vec<String> = p.allowed_ips.iter().map(|c| c.to_string()).collect();
        let _ = writeln!(out, "AllowedIPs = {}", ips.join(", "));
        if let Some(k) = p.persistent_keepalive {
            let _ = writeln!(out, "PersistentKeepalive = {}", k.as_secs());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;
    use std::path::Path;
    use suidao_proto::keys::{PresharedKey, PrivateKey};

    /// A section's kind and its keys with their sorted values.
    type Normal = (String, Vec<(String, Vec<String>)>);

    fn sample() -> String {
        let k = PrivateKey::generate(&mut OsRng).to_base64();
        let p1 = PrivateKey::generate(&mut OsRng).public_key();
        let p2 = PrivateKey::generate(&mut OsRng).public_key();
        let psk = PresharedKey::generate(&mut OsRng).to_base64();
        format!(
            "[Interface]\n# a comment\nPrivateKey = {}\nAddress = 10.8.0.1/24, fd08::1/64\nListenPort = 51820\nMTU = 1380\nPostUp = echo up %i\nPostUp = echo again\n\n[Peer]\nPublicKey = {p1}\nPresharedKey = {}\nAllowedIPs = 10.8.0.2/32, fd08::2/128\nAllowedIPs = 192.0.2.0/24\nPersistentKeepalive = 25\n\n[peer]\npublickey = {p2}\nendpoint = [2001:db8::1]:51820\nallowedips = 10.8.0.3/32\n",
            k.as_str(),
            psk.as_str()
        )
    }

    /// Two more files: an IPv4-only client and an IPv6-only server.
    fn samples() -> Vec<String> {
        let k = || PrivateKey::generate(&mut OsRng).to_base64().to_string();
        let p = || PrivateKey::generate(&mut OsRng).public_key().to_string();
        vec![
            sample(),
            format!(
                "[Interface]\nPrivateKey = {}\nAddress = 10.9.0.2/24\n\n[Peer]\nPublicKey = {}\nEndpoint = 192.0.2.1:51820\nAllowedIPs = 0.0.0.0/0\nPersistentKeepalive = 25\n",
                k(),
                p()
            ),
            format!(
                "[Interface]\nPrivateKey = {}\nAddress = fd10::1/64\nListenPort = 443\nPreUp = true\nPostDown = echo bye\n\n[Peer]\nPublicKey = {}\nAllowedIPs = fd10::2/128\n\n[Peer]\nPublicKey = {}\nAllowedIPs = fd10::3/128, fd10:3::/48\n",
                k(),
                p(),
                p()
            ),
        ]
    }

    #[test]
    fn every_sample_round_trips() {
        for conf in samples() {
            let toml = import(&conf, "wg1").unwrap().toml;
            let c = Config::parse(Path::new("wg1.toml"), &toml).unwrap();
            let back = export(&c);
            let again = import(&back, "wg1").unwrap().toml;
            assert_eq!(toml, again, "import(export(import(x))) == import(x)");
        }
    }

    #[test]
    fn import_then_export_round_trips() {
        let conf = sample();
        let toml = import(&conf, "wg0").unwrap().toml;
        let c = Config::parse(Path::new("wg0.toml"), &toml).unwrap();
        assert_eq!(c.interface.name, "wg0");
        assert_eq!(c.interface.mtu, 1380);
        assert_eq!(c.interface.addresses.len(), 2);
        assert_eq!(c.interface.hooks.post_up, vec!["echo up %i", "echo again"]);
        assert_eq!(c.peers.len(), 2);
        assert_eq!(c.peers[0].allowed_ips.len(), 3);
        assert_eq!(
            c.peers[1].endpoint_text.as_deref(),
            Some("[2001:db8::1]:51820")
        );
        let back = export(&c);
        // The exported text means the same as the original: same sections, same values.
        let norm = |t: &str| -> Vec<Normal> {
            parse(t)
                .unwrap()
                .into_iter()
                .map(|s| {
                    let mut keys: Vec<String> = s
                        .entries
                        .iter()
                        .map(|(k, _)| k.to_ascii_lowercase())
                        .collect();
                    keys.sort();
                    keys.dedup();
                    let vals = keys
                        .iter()
                        .map(|k| {
                            (k.clone(), {
                                let mut v = s.all(k);
                                v.sort();
                                v
                            })
                        })
                        .collect();
                    (s.kind, vals)
                })
                .collect()
        };
        assert_eq!(norm(&conf), norm(&back), "\n{conf}\n---\n{back}");
    }

    #[test]
    fn unknown_keys_are_warnings_and_bad_text_is_refused() {
        let k = PrivateKey::generate(&mut OsRng).to_base64();
        let i = import(
            &format!(
                "[Interface]\nPrivateKey = {}\r\nDNS = 1.1.1.1 # the provider's\r\n; SaveConfig was here\nSaveConfig = true\nFancy = 1\n",
                k.as_str()
            ),
            "x",
        )
        .unwrap();
        assert_eq!(i.warnings.len(), 2, "{:?}", i.warnings);
        assert!(i.toml.contains("dns = [\"1.1.1.1\"]"), "{}", i.toml);
        assert!(
            i.warnings[0].starts_with("line 5: SaveConfig")
                && i.warnings[0].contains("never rewrites"),
            "{:?}",
            i.warnings
        );
        assert!(
            i.warnings[1].starts_with("line 6: Fancy"),
            "{:?}",
            i.warnings
        );
        assert!(import("PrivateKey = x\n", "x")
            .unwrap_err()
            .contains("line 1"));
        assert!(import("[Interface]\nnonsense\n", "x")
            .unwrap_err()
            .contains("line 2"));
        assert!(import("[Peer]\nPublicKey = x\n", "x")
            .unwrap_err()
            .contains("[Interface]"));
        assert!(import("[Interface]\n", "a-name-far-too-long-for-linux")
            .unwrap_err()
            .contains("rename the file"));
    }

    /// `# name` right after `[Peer]` (what export writes) or right above it; `;` comments.
    #[test]
    fn peer_name_comments_and_semicolon_comments() {
        let k = PrivateKey::generate(&mut OsRng).to_base64();
        let (p1, p2) = (
            PrivateKey::generate(&mut OsRng).public_key(),
            PrivateKey::generate(&mut OsRng).public_key(),
        );
        let text = format!(
            "; a provider's file\n[Interface]\nPrivateKey = {}\n\n# carol\n[Peer]\nPublicKey = {p1} # hers\nAllowedIPs = 10.0.0.2/32\n\n[Peer]\n# dave\nPublicKey = {p2}\nAllowedIPs = 10.0.0.3/32\n",
            k.as_str()
        );
        let i = import(&text, "wg0").unwrap();
        assert!(i.warnings.is_empty(), "{:?}", i.warnings);
        let c = Config::parse(Path::new("wg0.toml"), &i.toml).unwrap();
        assert_eq!(c.peers[0].name.as_deref(), Some("carol"));
        assert_eq!(c.peers[1].name.as_deref(), Some("dave"));
        assert_eq!(c.peers[0].public_key, p1);
    }
}
