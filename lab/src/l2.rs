//! One Ethernet segment at several sites (`Spec::lan`), joined by suidao in layer-2 mode: each
//! gateway's TAP sits in its site's bridge, the first gateway is the hub (the others know
//! where it is), so the hub switches frames between sites. The tests and `demo l2` stand on
//! this.

use crate::suidao::{Node, NodeSpec, PeerSpec, Role, TempDir};
use crate::topology::{lan_sites, lan_v4, lan_v6, Lab, Spec};
use crate::{Netns, Process};
use anyhow::{Context, Result};
use std::path::Path;

/// The hub gateway's UDP port.
pub const PORT: u16 = 51820;
/// The TAP's MTU with the default tunnel MTU (1420 less the frame's 15 bytes): the hosts of a
/// segment joined through it need it too (a bridge drops what a port cannot take).
pub const LAN_MTU: u32 = 1405;

/// Fields drop in order: processes first, then their files, then the namespaces.
pub struct LanVpn {
    pub gateways: Vec<Node>,
    /// Each gateway's links, addresses and routes before suidao started
    /// (`netlink::snapshot_of`): what its teardown must leave.
    pub before: Vec<Vec<String>>,
    pub specs: Vec<NodeSpec>,
    pub dir: TempDir,
    pub lab: Lab,
}

/// The gateways' configs: `mode = "l2"`, the TAP into `br0`, no addresses; the first listens on
/// `PORT` and knows every other one, the others know it (at 198.18.0.1) and keep the path open.
pub fn specs(sites: usize) -> Vec<NodeSpec> {
    let mut hub = NodeSpec::new("sdl");
    hub.listen_port = Some(PORT);
    let mut specs = Vec::new();
    for site in lan_sites(sites).into_iter().skip(1) {
        let mut spoke = NodeSpec::new("sdl");
        spoke.peers.push(PeerSpec {
            name: Some("gw-a".into()),
            public_key: Some(hub.public_key()),
            endpoint: Some(format!("198.18.0.1:{PORT}")),
            persistent_keepalive: Some(25),
            ..Default::default()
        });
        hub.peers.push(PeerSpec {
            name: Some(format!("gw-{site}")),
            public_key: Some(spoke.public_key()),
            ..Default::default()
        });
        specs.push(spoke);
    }
    specs.insert(0, hub);
    for s in &mut specs {
        s.mode = Some("l2".into());
        s.bridge = Some("br0".into());
    }
    specs
}

impl LanVpn {
    pub fn start(sites: usize, explain: bool) -> Result<LanVpn> {
        LanVpn::start_with(sites, explain, |_, _| {})
    }

    /// `start`, with each gateway's spec changed by `tweak(site index, spec)` first.
    pub fn start_with(
        sites: usize,
        explain: bool,
        tweak: impl Fn(usize, &mut NodeSpec),
    ) -> Result<LanVpn> {
        let lab = Lab::build(Spec::lan(sites), explain)?;
        for site in lan_sites(sites) {
            let gw = lab.ns(&format!("gw-{site}"))?;
            for j in 1..=2 {
                set_mtu(&lab, lab.ns(&format!("{site}{j}"))?, "eth0")?;
                set_mtu(&lab, gw, &format!("p{j}"))?;
            }
        }
        let mut before = Vec::new();
        for site in lan_sites(sites) {
            before.push(crate::netlink::snapshot_of(lab.ns(&format!("gw-{site}"))?)?);
        }
        let dir = TempDir::new()?;
        let mut specs = specs(sites);
        for (i, s) in specs.iter_mut().enumerate() {
            tweak(i, s);
        }
        let mut gateways = Vec::new();
        for (spec, site) in specs.iter().zip(lan_sites(sites)) {
            let role = if gateways.is_empty() {
                Role::Server
            } else {
                Role::Client
            };
            lab.say(format!(
                "ip netns exec {} {} up -c {}.toml    # mode = \"l2\", bridge = \"br0\"",
                lab.ns(&format!("gw-{site}"))?.name(),
                role.binary(),
                spec.ifname
            ));
            gateways.push(spec.start(lab.ns(&format!("gw-{site}"))?, role, dir.path())?);
        }
        Ok(LanVpn {
            gateways,
            before,
            specs,
            dir,
            lab,
        })
    }

    /// Host `j` (1 or 2) at site `i` (0-based).
    pub fn host(&self, i: usize, j: usize) -> Result<&Netns> {
        site_ns(&self.lab, i, &j.to_string())
    }

    pub fn v4(i: usize, j: usize) -> String {
        lan_v4(i, j)
    }

    pub fn v6(i: usize, j: usize) -> String {
        lan_v6(i, j)
    }

    /// The namespace of gateway `i` (0-based: gw-a is the hub).
    pub fn gateway_ns(&self, i: usize) -> Result<&Netns> {
        site_ns(&self.lab, i, "gw")
    }

    /// Every gateway's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for (g, site) in self.gateways.iter().zip(lan_sites(self.gateways.len())) {
            s.push_str(&format!("--- gw-{site} log ---\n{}\n", g.log()));
        }
        s
    }
}

/// At site `i` (0-based: a, b, ...) of `Spec::lan`, the gateway (`"gw"`: gw-a) or a host
/// (`"1"`: a1).
fn site_ns<'l>(lab: &'l Lab, i: usize, which: &str) -> Result<&'l Netns> {
    let site = lan_sites(i + 1).pop().unwrap_or('a');
    match which {
        "gw" => lab.ns(&format!("gw-{site}")),
        j => lab.ns(&format!("{site}{j}")),
    }
}

fn set_mtu(lab: &Lab, ns: &Netns, dev: &str) -> Result<()> {
    set_mtu_to(lab, ns, dev, LAN_MTU)
}

/// A host's MAC on `dev` (empty if it has none).
pub fn mac(ns: &Netns, dev: &str) -> Result<String> {
    let out = crate::suidao::run(ns, "ip", &["-o", "link", "show", dev])?;
    Ok(out
        .split("link/ether ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_default()
        .to_string())
}

/// The IPv6 link-local address on `dev`.
pub fn link_local(ns: &Netns, dev: &str) -> Result<String> {
    let out = crate::suidao::run(
        ns,
        "ip",
        &["-6", "-o", "addr", "show", "dev", dev, "scope", "link"],
    )?;
    out.split("inet6 ")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .map(str::to_string)
        .with_context(|| format!("{dev} in {} has no link-local address", ns.name()))
}

/// Lets a host answer pings sent to the broadcast address (Linux ignores them by default).
pub fn answer_broadcasts(ns: &Netns) -> Result<()> {
    ns.run(|| std::fs::write("/proc/sys/net/ipv4/icmp_echo_ignore_broadcasts", "0"))?
        .context("allowing broadcast pings")
}

/// The hosts that answer three broadcast pings from `ns` to 10.50.0.255 (addresses, sorted).
pub fn broadcast_responders(ns: &Netns) -> Result<Vec<String>> {
    let out = ns
        .command("ping")?
        .args(["-b", "-c", "3", "-i", "0.3", "-W", "1", "10.50.0.255"])
        .output()
        .context("running ping -b")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut from: Vec<String> = text
        .lines()
        .filter_map(|l| l.split("bytes from ").nth(1))
        .filter_map(|r| r.split(':').next())
        .map(str::to_string)
        .collect();
    from.sort();
    from.dedup();
    Ok(from)
}

/// Two pings from `ns` to `to` of IP packets of `packet_len` bytes with DF set (no
/// fragmentation anywhere on the way): whether they were answered.
pub fn df_ping(ns: &Netns, packet_len: u32, to: &str) -> Result<bool> {
    let payload = packet_len.saturating_sub(28).to_string();
    Ok(ns
        .command("ping")?
        .args([
            "-M", "do", "-c", "2", "-i", "0.2", "-W", "1", "-q", "-s", &payload, to,
        ])
        .output()
        .context("running ping")?
        .status
        .success())
}

/// What a DHCP client was given.
#[derive(Debug)]
pub struct Lease {
    pub ip: String,
    pub mtu: Option<u32>,
    /// The client's output, for failure messages.
    pub log: String,
}

/// The DHCP range `dhcp` serves.
pub const DHCP_RANGE: (u8, u8) = (100, 150);

/// A real DHCP exchange: dnsmasq on `server`'s eth0 hands out 10.50.0.100-150 (and the MTU of
/// the segment); `client` forgets its IPv4 address and asks with busybox's udhcpc, whose
/// script puts the lease on its eth0, as a distribution's would. dnsmasq is stopped after.
pub fn dhcp(server: &Netns, client: &Netns, dir: &Path, explain: bool) -> Result<Lease> {
    let range = format!(
        "--dhcp-range=10.50.0.{},10.50.0.{},255.255.255.0,1h",
        DHCP_RANGE.0, DHCP_RANGE.1
    );
    let mtu = format!("--dhcp-option=option:mtu,{LAN_MTU}");
    let leases = format!("--dhcp-leasefile={}", dir.join("dnsmasq.leases").display());
    let pid = format!("--pid-file={}", dir.join("dnsmasq.pid").display());
    let args = [
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--port=0",
        "--interface=eth0",
        "--bind-interfaces",
        &range,
        &mtu,
        "--dhcp-authoritative",
        &leases,
        &pid,
    ];
    if explain {
        println!(
            "  $ ip netns exec {} dnsmasq {}",
            server.name(),
            args.join(" ")
        );
    }
    let mut dnsmasq = Process::new(
        "dnsmasq",
        server
            .command("dnsmasq")?
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting dnsmasq")?,
    );
    let script = dir.join("udhcpc.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ncase \"$1\" in bound|renew)\n  ip addr add \"$ip/$mask\" dev \"$interface\"\n  [ -n \"$mtu\" ] && ip link set \"$interface\" mtu \"$mtu\"\n  echo \"leased $ip mtu $mtu\"\nesac\nexit 0\n",
    )?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    }
    if explain {
        println!("  $ ip -n {} -4 addr flush dev eth0", client.name());
        println!(
            "  $ ip netns exec {} busybox udhcpc -i eth0 -f -q -n -O mtu -s {}",
            client.name(),
            script.display()
        );
    }
    crate::suidao::run(client, "ip", &["-4", "addr", "flush", "dev", "eth0"])?;
    let out = client
        .command("busybox")?
        .args([
            "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "2", "-O", "mtu", "-s",
        ])
        .arg(&script)
        .output()
        .context("running busybox udhcpc")?;
    dnsmasq.stop();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        anyhow::bail!("udhcpc got no lease: {log}");
    }
    let line = log
        .lines()
        .find_map(|l| l.strip_prefix("leased "))
        .with_context(|| format!("udhcpc's script did not run: {log}"))?;
    let mut words = line.split_whitespace();
    let ip = words.next().unwrap_or_default().to_string();
    let mtu = words.nth(1).and_then(|m| m.parse().ok());
    Ok(Lease { ip, mtu, log })
}

/// What VXLAN costs of an inner MTU: the outer IPv4 header (20), UDP (8), VXLAN's own header
/// (8) and the carried frame's Ethernet header (14). (Over IPv6 tunnel addresses: 70.)
pub const VXLAN_OVERHEAD: u32 = 50;
/// A VXLAN device's MTU over a layer-3 tunnel of the default MTU (1420).
pub const VXLAN_MTU: u32 = suidao_common::config::DEFAULT_MTU - VXLAN_OVERHEAD;
/// The VXLAN network identifier the lab uses.
pub const VNI: u32 = 42;

/// `ip link add NAME type vxlan id 42 local LOCAL remote REMOTE dstport 4789` in `ns`, with
/// `mtu`, then into bridge `master` or with `address` on it, and up (through netlink, each
/// step printed as its `ip` command when `lab` explains).
pub fn vxlan(
    lab: Option<&Lab>,
    ns: &Netns,
    name: &str,
    (local, remote): (&str, &str),
    mtu: u32,
    master: Option<&str>,
    address: Option<&str>,
) -> Result<()> {
    let say = |line: String| {
        if let Some(lab) = lab {
            lab.say(format!("ip -n {} {line}", ns.name()));
        }
    };
    say(format!(
        "link add {name} type vxlan id {VNI} local {local} remote {remote} dstport 4789"
    ));
    say(format!("link set {name} mtu {mtu}"));
    if let Some(m) = master {
        say(format!("link set {name} master {m}"));
    }
    if let Some(a) = address {
        say(format!("addr add {a} dev {name}"));
    }
    say(format!("link set {name} up"));
    let local: std::net::Ipv4Addr = local.parse().context("a VXLAN end is an IPv4 address")?;
    let remote: std::net::Ipv4Addr = remote.parse().context("a VXLAN end is an IPv4 address")?;
    let address = match address {
        Some(a) => {
            let (ip, len) = a.split_once('/').context("an address needs its /prefix")?;
            Some((ip.parse::<std::net::IpAddr>()?, len.parse::<u8>()?))
        }
        None => None,
    };
    let (name, master) = (name.to_string(), master.map(str::to_string));
    ns.netlink(|h| async move {
        h.link()
            .add(
                rtnetlink::LinkVxlan::new(&name, VNI)
                    .local(local)
                    .remote(remote)
                    .port(4789)
                    .build(),
            )
            .execute()
            .await
            .with_context(|| format!("creating VXLAN device {name}"))?;
        crate::netlink::set_mtu(&h, &name, mtu).await?;
        if let Some(m) = &master {
            crate::netlink::set_master(&h, &name, m).await?;
        }
        if let Some((ip, len)) = address {
            crate::netlink::add_addr(&h, &name, ip, len).await?;
        }
        Ok(crate::netlink::set_up(&h, &name).await?)
    })
}

/// The interoperable alternative to layer-2 mode, on the same two sites: an ordinary layer-3
/// tunnel between the gateways (suidao at gw-a, 10.60.0.1; at gw-b suidao or another
/// WireGuard, 10.60.0.2) and a VXLAN segment over it in each site's bridge. Hosts get the
/// VXLAN device's MTU (1370).
pub struct VxlanLan {
    pub other: Option<crate::wggo::WireguardGo>,
    pub client: Option<Node>,
    pub server: Node,
    pub dir: TempDir,
    pub lab: Lab,
}

impl VxlanLan {
    /// `peer`: what runs at gw-b (None: suidao).
    pub fn start(peer: Option<crate::wggo::Userspace>, explain: bool) -> Result<VxlanLan> {
        let lab = Lab::build(Spec::lan(2), explain)?;
        for site in lan_sites(2) {
            let gw = lab.ns(&format!("gw-{site}"))?;
            for j in 1..=2 {
                set_mtu_to(&lab, lab.ns(&format!("{site}{j}"))?, "eth0", VXLAN_MTU)?;
                set_mtu_to(&lab, gw, &format!("p{j}"), VXLAN_MTU)?;
            }
        }
        let dir = TempDir::new()?;
        let (server_spec, client_spec) = NodeSpec::pair(
            ["sdv", "sdv"],
            &["10.60.0.1/24"],
            &["10.60.0.2/24"],
            std::net::SocketAddr::new([198, 18, 0, 1].into(), PORT),
            &["10.60.0.0/24"],
        )?;
        let (gw_a, gw_b) = (lab.ns("gw-a")?, lab.ns("gw-b")?);
        let server = server_spec.start(gw_a, Role::Server, dir.path())?;
        let (client, other) = match peer {
            None => (
                Some(client_spec.start(gw_b, Role::Client, dir.path())?),
                None,
            ),
            Some(kind) => (
                None,
                Some(crate::wggo::WireguardGo::start_as(
                    kind,
                    gw_b,
                    &client_spec,
                )?),
            ),
        };
        for (ns, ends) in [
            (gw_a, ("10.60.0.1", "10.60.0.2")),
            (gw_b, ("10.60.0.2", "10.60.0.1")),
        ] {
            vxlan(Some(&lab), ns, "vx0", ends, VXLAN_MTU, Some("br0"), None)?;
        }
        Ok(VxlanLan {
            other,
            client,
            server,
            dir,
            lab,
        })
    }

    /// Host `j` (1 or 2) at site `i` (0 or 1).
    pub fn host(&self, i: usize, j: usize) -> Result<&Netns> {
        site_ns(&self.lab, i, &j.to_string())
    }

    pub fn logs(&self) -> String {
        format!(
            "--- gw-a (suidao) ---\n{}\n--- gw-b ---\n{}",
            self.server.log(),
            match (&self.client, &self.other) {
                (Some(c), _) => c.log(),
                (_, Some(o)) => o.log(),
                _ => String::new(),
            }
        )
    }
}

fn set_mtu_to(lab: &Lab, ns: &Netns, dev: &str, mtu: u32) -> Result<()> {
    lab.say(format!("ip -n {} link set {dev} mtu {mtu}", ns.name()));
    let dev = dev.to_string();
    ns.netlink(|h| async move { Ok(suidao_common::netlink::set_mtu(&h, &dev, mtu).await?) })
}
