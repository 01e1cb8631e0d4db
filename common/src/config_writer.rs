//! The one writer of suidao config files: a config's content as plain data (`ConfigDraft`),
//! written out as TOML by `to_toml`. `add-client` (the client's config), `import` (from
//! wg-quick) and the lab (every config its topologies and tests run) all write through it, so a
//! new key is taught to one place. Reading and checking stay in `config`; what this writes is
//! meant to be read back by `Config::parse` (the callers do, before they write a file).

use std::fmt::Write as _;

/// `table`, as the file says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableDraft {
    /// `"off"`, `"main"` (`"auto"` is the default: leave the key out).
    Word(String),
    Number(u32),
}

/// An `[interface]` and its `[[peer]]`s. Empty or `None` fields are left out of the file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigDraft {
    /// A comment line at the top (without the `# `).
    pub comment: Option<String>,
    pub name: String,
    /// The key inline (base64)...
    pub private_key: Option<String>,
    /// ...or in a file of its own.
    pub private_key_file: Option<String>,
    pub listen_port: Option<u16>,
    pub address: Vec<String>,
    pub mtu: Option<u32>,
    pub table: Option<TableDraft>,
    /// As written (`0x1234` or `4660`).
    pub fwmark: Option<String>,
    pub dns: Vec<String>,
    pub pre_up: Vec<String>,
    pub post_up: Vec<String>,
    pub pre_down: Vec<String>,
    pub post_down: Vec<String>,
    /// `"l2"`: a TAP and Ethernet frames (None: layer 3, the default).
    pub mode: Option<String>,
    /// Layer 2: the bridge the TAP joins.
    pub bridge: Option<String>,
    /// More `[interface]` lines, verbatim (the tests' own settings).
    pub extra: String,
    pub peers: Vec<PeerDraft>,
}

/// A `[[peer]]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerDraft {
    pub name: Option<String>,
    pub public_key: String,
    pub preshared_key: Option<String>,
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    pub persistent_keepalive: Option<u16>,
    /// Layer 2: the source MACs the peer may use.
    pub allowed_macs: Vec<String>,
}

/// A TOML basic string.
pub fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML array of strings.
pub fn toml_list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|x| toml_string(x)).collect();
    format!("[{}]", items.join(", "))
}

impl ConfigDraft {
    pub fn to_toml(&self) -> String {
        let mut t = String::new();
        if let Some(c) = &self.comment {
            let _ = writeln!(t, "# {c}");
        }
        let _ = writeln!(t, "[interface]\nname = {}", toml_string(&self.name));
        if let Some(k) = &self.private_key {
            let _ = writeln!(t, "private_key = {}", toml_string(k));
        }
        if let Some(f) = &self.private_key_file {
            let _ = writeln!(t, "private_key_file = {}", toml_string(f));
        }
        if let Some(p) = self.listen_port {
            let _ = writeln!(t, "listen_port = {p}");
        }
        if !self.address.is_empty() {
            let _ = writeln!(t, "address = {}", toml_list(&self.address));
        }
        if let Some(m) = self.mtu {
            let _ = writeln!(t, "mtu = {m}");
        }
        match &self.table {
            Some(TableDraft::Word(w)) => {
                let _ = writeln!(t, "table = {}", toml_string(w));
            }
            Some(TableDraft::Number(n)) => {
                let _ = writeln!(t, "table = {n}");
            }
            None => {}
        }
        if let Some(m) = &self.fwmark {
            let _ = writeln!(t, "fwmark = {m}");
        }
        if !self.dns.is_empty() {
            let _ = writeln!(t, "dns = {}", toml_list(&self.dns));
        }
        if let Some(m) = &self.mode {
            let _ = writeln!(t, "mode = {}", toml_string(m));
        }
        if let Some(b) = &self.bridge {
            let _ = writeln!(t, "bridge = {}", toml_string(b));
        }
        for (key, cmds) in [
            ("pre_up", &self.pre_up),
            ("post_up", &self.post_up),
            ("pre_down", &self.pre_down),
            ("post_down", &self.post_down),
        ] {
            if !cmds.is_empty() {
                let _ = writeln!(t, "{key} = {}", toml_list(cmds));
            }
        }
        t.push_str(&self.extra);
        for p in &self.peers {
            t.push_str("\n[[peer]]\n");
            if let Some(n) = &p.name {
                let _ = writeln!(t, "name = {}", toml_string(n));
            }
            let _ = writeln!(t, "public_key = {}", toml_string(&p.public_key));
            if let Some(k) = &p.preshared_key {
                let _ = writeln!(t, "preshared_key = {}", toml_string(k));
            }
            if let Some(e) = &p.endpoint {
                let _ = writeln!(t, "endpoint = {}", toml_string(e));
            }
            if self.mode.as_deref() == Some("l2") {
                if !p.allowed_macs.is_empty() {
                    let _ = writeln!(t, "allowed_macs = {}", toml_list(&p.allowed_macs));
                }
            } else {
                let _ = writeln!(t, "allowed_ips = {}", toml_list(&p.allowed_ips));
            }
            if let Some(k) = p.persistent_keepalive {
                let _ = writeln!(t, "persistent_keepalive = {k}");
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    // Test code: a failed unwrap is a failed test.
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand_core::OsRng;
    use suidao_proto::keys::PrivateKey;

    /// Every key the writer knows comes back through `Config::parse` as it was given.
    #[test]
    fn what_it_writes_reads_back() {
        let key = PrivateKey::generate(&mut OsRng);
        let peer = PrivateKey::generate(&mut OsRng).public_key();
        let draft = ConfigDraft {
            comment: Some("made by a test".into()),
            name: "sdw0".into(),
            private_key: Some(key.to_base64().to_string()),
            listen_port: Some(51820),
            address: vec!["10.99.0.1/24".into(), "fd99::1/64".into()],
            mtu: Some(1380),
            table: Some(TableDraft::Number(1234)),
            fwmark: Some("0x51".into()),
            dns: vec!["10.99.0.53".into(), "corp.example".into()],
            post_up: vec!["echo \"up\" %i".into()],
            pre_down: vec!["echo down".into()],
            peers: vec![PeerDraft {
                name: Some("alice".into()),
                public_key: peer.to_base64(),
                endpoint: Some("198.18.0.2:51820".into()),
                allowed_ips: vec!["10.99.0.2/32".into()],
                persistent_keepalive: Some(25),
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = draft.to_toml();
        let c = crate::config::Config::parse(std::path::Path::new("w.toml"), &text).unwrap();
        let i = &c.interface;
        assert_eq!(i.name, "sdw0");
        assert_eq!(i.listen_port, Some(51820));
        assert_eq!(i.addresses.len(), 2);
        assert_eq!(i.mtu, 1380);
        assert_eq!(i.table, crate::config::Table::Id(1234));
        assert_eq!(i.fwmark, Some(0x51));
        assert_eq!(i.dns.entries(), ["10.99.0.53", "corp.example"]);
        assert_eq!(i.hooks.post_up, ["echo \"up\" %i"]);
        assert_eq!(c.peers[0].name.as_deref(), Some("alice"));
        assert_eq!(c.peers[0].public_key, peer);
        assert_eq!(
            c.peers[0].persistent_keepalive,
            Some(std::time::Duration::from_secs(25))
        );
        assert!(
            text.starts_with("# made by a test\n[interface]\n"),
            "{text}"
        );
    }

    #[test]
    fn strings_cannot_break_out() {
        assert_eq!(toml_string("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
    }
}
