//! Name servers and search domains for the time the interface is up (the `dns` key, wg-quick's
//! `DNS`), set the way wg-quick sets them so that a machine set up for wg-quick needs nothing
//! new: through `resolvconf` when it is installed (openresolv, Debian's resolvconf, or
//! systemd's `resolvconf` front end), else through `resolvectl` (systemd-resolved).
//!
//! ```text
//! up:    printf 'nameserver 10.99.0.1\nsearch corp.example\n' | resolvconf -a tun.sd0 -m 0 -x
//! down:  resolvconf -d tun.sd0 -f
//!
//! up:    resolvectl dns sd0 10.99.0.1; resolvectl domain sd0 '~.' corp.example
//! down:  resolvectl revert sd0
//! ```
//!
//! `-x` (exclusive) and `~.` both mean the same: while the tunnel is up, every name is asked
//! of its servers, as wg-quick does. The programs are looked up in `PATH`, as wg-quick does.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What `dns = [...]` says: addresses are name servers, anything else a search domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    pub servers: Vec<IpAddr>,
    pub search: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.search.is_empty()
    }

    /// One entry of the list: an address, or a domain name (a leading `~` is passed on, for
    /// systemd-resolved's routing domains, as wg-quick does).
    pub fn add(&mut self, entry: &str) -> Result<(), String> {
        if let Ok(ip) = entry.parse::<IpAddr>() {
            self.servers.push(ip);
            return Ok(());
        }
        check_domain(entry)?;
        self.search.push(entry.to_string());
        Ok(())
    }

    /// Every entry, as the config writes them (servers first).
    pub fn entries(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| s.to_string())
            .chain(self.search.iter().cloned())
            .collect()
    }

    /// resolvconf's input: `nameserver` lines, then one `search` line.
    fn resolv_conf(&self) -> String {
        let mut s = String::new();
        for ip in &self.servers {
            s.push_str(&format!("nameserver {ip}\n"));
        }
        if !self.search.is_empty() {
            s.push_str(&format!("search {}\n", self.search.join(" ")));
        }
        s
    }
}

/// A domain name as resolv.conf takes it: labels of letters, digits, `-` and `_`, dots between.
/// (What reaches resolvconf's input must not be able to add a line of its own.)
fn check_domain(d: &str) -> Result<(), String> {
    let name = d.strip_prefix('~').unwrap_or(d);
    if name == "." && d.starts_with('~') {
        return Ok(());
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "'{}' is neither an IP address (a name server) nor a domain name (a search domain)",
            d.escape_debug()
        ));
    }
    Ok(())
}

/// How to take the settings back on the way down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undo {
    program: PathBuf,
    args: Vec<String>,
}

impl Undo {
    /// Runs it; the error says what failed.
    pub fn run(&self) -> Result<(), String> {
        run(&self.program, &self.args, None)
    }

    pub fn describe(&self) -> String {
        format!("{} {}", self.program.display(), self.args.join(" "))
    }
}

/// Sets `dns` for `ifname`; returns how to undo it.
pub fn set(ifname: &str, dns: &Dns) -> Result<Undo, String> {
    if let Some(resolvconf) = find("resolvconf") {
        let name = format!("{}{ifname}", resolvconf_prefix(Path::new(INTERFACE_ORDER)));
        run(
            &resolvconf,
            &[
                "-a".into(),
                name.clone(),
                "-m".into(),
                "0".into(),
                "-x".into(),
            ],
            Some(&dns.resolv_conf()),
        )?;
        return Ok(Undo {
            program: resolvconf,
            args: vec!["-d".into(), name, "-f".into()],
        });
    }
    if let Some(resolvectl) = find("resolvectl") {
        let undo = Undo {
            program: resolvectl.clone(),
            args: vec!["revert".into(), ifname.into()],
        };
        if !dns.servers.is_empty() {
            let mut args = vec!["dns".to_string(), ifname.to_string()];
            args.extend(dns.servers.iter().map(|s| s.to_string()));
            run(&resolvectl, &args, None)?;
        }
        let mut args = vec!["domain".to_string(), ifname.to_string(), "~.".to_string()];
        args.extend(dns.search.iter().cloned());
        if let Err(e) = run(&resolvectl, &args, None) {
            let _ = undo.run();
            return Err(e);
        }
        return Ok(undo);
    }
    Err(
        "dns is set, but neither resolvconf nor resolvectl is in PATH: install one (Debian: openresolv, or systemd-resolved), or leave dns out"
            .into(),
    )
}

/// Debian's resolvconf orders interfaces by the name patterns in this file; wg-quick names
/// its entry after the first plain `NAME*` pattern there (`tun*`: `tun.wg0`), so that a VPN's
/// servers come where that file puts tunnels.
const INTERFACE_ORDER: &str = "/etc/resolvconf/interface-order";

fn resolvconf_prefix(order: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(order) else {
        return String::new();
    };
    text.lines()
        .filter_map(|l| l.strip_suffix('*'))
        .find(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .map(|p| format!("{p}."))
        .unwrap_or_default()
}

/// `program` in `PATH`, as a shell would find it.
fn find(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

fn run(program: &Path, args: &[String], input: Option<&str>) -> Result<(), String> {
    let what = || format!("{} {}", program.display(), args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", what()))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        // A program that exits without reading says so through its status below.
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{}: {e}", what()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{} failed ({}): {}",
            what(),
            out.status,
            err.trim()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_servers_and_names_search_domains() {
        let mut d = Dns::default();
        for e in [
            "10.99.0.1",
            "fd00:99::1",
            "corp.example",
            "~.",
            "~lan",
            "b_c.example.",
        ] {
            d.add(e).unwrap();
        }
        assert_eq!(d.servers.len(), 2);
        assert_eq!(d.search, ["corp.example", "~.", "~lan", "b_c.example."]);
        assert_eq!(
            d.resolv_conf(),
            "nameserver 10.99.0.1\nnameserver fd00:99::1\nsearch corp.example ~. ~lan b_c.example.\n"
        );
        assert_eq!(d.entries()[0], "10.99.0.1");
    }

    #[test]
    fn nothing_that_could_make_a_line_of_its_own_is_a_domain() {
        for bad in [
            "",
            ".",
            "a..b",
            "corp example",
            "x\nnameserver 1.2.3.4",
            "a;b",
            "10.0.0.1/24",
            &"a".repeat(64),
        ] {
            assert!(Dns::default().add(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_prefix_comes_from_debians_interface_order() {
        let dir = std::env::temp_dir().join(format!("suidao-dns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("interface-order");
        std::fs::write(
            &f,
            "# order\nlo.inet6\nlo.inet*\nlo.@(dnsmasq|pdnsd)\nlo\ntun*\ntap*\n",
        )
        .unwrap();
        assert_eq!(resolvconf_prefix(&f), "tun.");
        std::fs::write(&f, "lo\n").unwrap();
        assert_eq!(resolvconf_prefix(&f), "");
        assert_eq!(resolvconf_prefix(&dir.join("absent")), "");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
