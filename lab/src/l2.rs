//! One Ethernet segment at several sites (`Spec::lan`), joined by suidao in layer-2 mode: each
//! gateway's TAP sits in its site's bridge, the first gateway is the hub (the others know
//! where it is), so the hub switches frames between sites. The tests and `demo l2` stand on
//! this.

use crate::suidao::{Node, NodeSpec, PeerSpec, Role, TempDir};
use crate::topology::{lan_sites, lan_v4, lan_v6, Lab, Spec};
use crate::Netns;
use anyhow::Result;

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
        let site = lan_sites(i + 1).pop().unwrap_or('a');
        self.lab.ns(&format!("{site}{j}"))
    }

    pub fn v4(i: usize, j: usize) -> String {
        lan_v4(i, j)
    }

    pub fn v6(i: usize, j: usize) -> String {
        lan_v6(i, j)
    }

    /// The namespace of gateway `i` (0-based: gw-a is the hub).
    pub fn gateway_ns(&self, i: usize) -> Result<&Netns> {
        let site = lan_sites(i + 1).pop().unwrap_or('a');
        self.lab.ns(&format!("gw-{site}"))
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

fn set_mtu(lab: &Lab, ns: &Netns, dev: &str) -> Result<()> {
    lab.say(format!("ip -n {} link set {dev} mtu {LAN_MTU}", ns.name()));
    let dev = dev.to_string();
    ns.netlink(|h| async move { Ok(suidao_common::netlink::set_mtu(&h, &dev, LAN_MTU).await?) })
}
