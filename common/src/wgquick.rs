//! wg-quick's `.conf` format, both ways: `import` turns one into a suidao TOML config, `export`
//! turns a suidao config into one (for the WireGuard apps, or `wg-quick up`).
//!
//! ```text
//! [Interface]                       [interface]
//! PrivateKey = ...                  private_key = "..."
//! Address = 10.0.0.1/24, fd::1/64   address = ["10.0.0.1/24", "fd::1/64"]
//! ListenPort = 51820                listen_port = 51820
//! MTU = 1420                        mtu = 1420
//! PostUp = cmd                      post_up = ["cmd"]      (PreUp, PreDown, PostDown alike)
//! [Peer]                            [[peer]]
//! PublicKey / PresharedKey          public_key / preshared_key
//! Endpoint / AllowedIPs             endpoint / allowed_ips
//! PersistentKeepalive               persistent_keepalive
//! ```
//!
//! wg-quick keys suidao has no equivalent for (DNS, Table, FwMark, SaveConfig) are refused by
//! `import` with a line that names them, rather than silently dropped.

use crate::config::Config;
use std::fmt::Write as _;

/// One `[Interface]` or `[Peer]` section: its keys in order (a key may repeat).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Section {
    pub kind: String,
    pub entries: Vec<(String, String)>,
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

/// Parses the INI-like text; `line N: ...` on anything it cannot read.
pub fn parse(text: &str) -> Result<Vec<Section>, String> {
    let mut sections: Vec<Section> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let kind = name.trim();
            if !kind.eq_ignore_ascii_case("interface") && !kind.eq_ignore_ascii_case("peer") {
                return Err(format!("line {}: unknown section [{kind}]", n + 1));
            }
            sections.push(Section {
                kind: kind.to_ascii_lowercase(),
                entries: Vec::new(),
            });
            continue;
        }
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
    }
    if sections.iter().filter(|s| s.kind == "interface").count() != 1 {
        return Err("there must be exactly one [Interface] section".into());
    }
    Ok(sections)
}

fn quoted(list: &[String]) -> String {
    let items: Vec<String> = list.iter().map(|x| toml_string(x)).collect();
    format!("[{}]", items.join(", "))
}

fn toml_string(s: &str) -> String {
    // A TOML basic string: escape backslashes and quotes.
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// wg-quick text to suidao TOML, for an interface named `name`.
pub fn import(text: &str, name: &str) -> Result<String, String> {
    let sections = parse(text)?;
    let mut out = String::new();
    for s in &sections {
        let known: &[&str] = if s.kind == "interface" {
            &[
                "privatekey",
                "address",
                "listenport",
                "mtu",
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
        for (k, _) in &s.entries {
            if !known.contains(&k.to_ascii_lowercase().as_str()) {
                return Err(format!(
                    "[{}] {k}: suidao has no equivalent for this wg-quick key",
                    s.kind
                ));
            }
        }
        if s.kind == "interface" {
            let _ = writeln!(out, "[interface]\nname = {}", toml_string(name));
            if let Some(k) = s.one("PrivateKey") {
                let _ = writeln!(out, "private_key = {}", toml_string(&k));
            }
            if let Some(p) = s.one("ListenPort") {
                let p: u16 = p
                    .parse()
                    .map_err(|_| format!("ListenPort {p:?} is not a port"))?;
                let _ = writeln!(out, "listen_port = {p}");
            }
            let addrs = s.all("Address");
            if !addrs.is_empty() {
                let _ = writeln!(out, "address = {}", quoted(&addrs));
            }
            if let Some(m) = s.one("MTU") {
                let m: u32 = m
                    .parse()
                    .map_err(|_| format!("MTU {m:?} is not a number"))?;
                let _ = writeln!(out, "mtu = {m}");
            }
            for (key, toml_key) in [
                ("PreUp", "pre_up"),
                ("PostUp", "post_up"),
                ("PreDown", "pre_down"),
                ("PostDown", "post_down"),
            ] {
                let cmds = s.all(key);
                if !cmds.is_empty() {
                    let _ = writeln!(out, "{toml_key} = {}", quoted(&cmds));
                }
            }
        }
    }
    for s in sections.iter().filter(|s| s.kind == "peer") {
        out.push_str("\n[[peer]]\n");
        let k = s.one("PublicKey").ok_or("a [Peer] without PublicKey")?;
        let _ = writeln!(out, "public_key = {}", toml_string(&k));
        if let Some(p) = s.one("PresharedKey") {
            let _ = writeln!(out, "preshared_key = {}", toml_string(&p));
        }
        if let Some(e) = s.one("Endpoint") {
            let _ = writeln!(out, "endpoint = {}", toml_string(&e));
        }
        let _ = writeln!(out, "allowed_ips = {}", quoted(&s.all("AllowedIPs")));
        if let Some(k) = s.one("PersistentKeepalive") {
            if k != "off" {
                let k: u16 = k
                    .parse()
                    .map_err(|_| format!("PersistentKeepalive {k:?} is not a number"))?;
                let _ = writeln!(out, "persistent_keepalive = {k}");
            }
        }
    }
    Ok(out)
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
    use crate::keys::{PresharedKey, PrivateKey};
    use std::path::Path;

    /// A section's kind and its keys with their sorted values.
    type Normal = (String, Vec<(String, Vec<String>)>);

    fn sample() -> String {
        let k = PrivateKey::generate().to_base64();
        let p1 = PrivateKey::generate().public_key();
        let p2 = PrivateKey::generate().public_key();
        let psk = PresharedKey::generate().to_base64();
        format!(
            "[Interface]\n# a comment\nPrivateKey = {}\nAddress = 10.8.0.1/24, fd08::1/64\nListenPort = 51820\nMTU = 1380\nPostUp = echo up %i\nPostUp = echo again\n\n[Peer]\nPublicKey = {p1}\nPresharedKey = {}\nAllowedIPs = 10.8.0.2/32, fd08::2/128\nAllowedIPs = 192.0.2.0/24\nPersistentKeepalive = 25\n\n[peer]\npublickey = {p2}\nendpoint = [2001:db8::1]:51820\nallowedips = 10.8.0.3/32\n",
            k.as_str(),
            psk.as_str()
        )
    }

    /// Two more files: an IPv4-only client and an IPv6-only server.
    fn samples() -> Vec<String> {
        let k = || PrivateKey::generate().to_base64().to_string();
        let p = || PrivateKey::generate().public_key().to_string();
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
            let toml = import(&conf, "wg1").unwrap();
            let c = Config::parse(Path::new("wg1.toml"), &toml).unwrap();
            let back = export(&c);
            let again = import(&back, "wg1").unwrap();
            assert_eq!(toml, again, "import(export(import(x))) == import(x)");
        }
    }

    #[test]
    fn import_then_export_round_trips() {
        let conf = sample();
        let toml = import(&conf, "wg0").unwrap();
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
    fn unknown_keys_and_bad_text_are_refused() {
        let k = PrivateKey::generate().to_base64();
        let e = import(
            &format!("[Interface]\nPrivateKey = {}\nDNS = 1.1.1.1\n", k.as_str()),
            "x",
        )
        .unwrap_err();
        assert!(e.contains("DNS"), "{e}");
        assert!(import("PrivateKey = x\n", "x")
            .unwrap_err()
            .contains("line 1"));
        assert!(import("[Interface]\nnonsense\n", "x")
            .unwrap_err()
            .contains("line 2"));
        assert!(import("[Peer]\nPublicKey = x\n", "x")
            .unwrap_err()
            .contains("[Interface]"));
    }
}
