//! Topologies as data, and one builder that turns them into namespaces, veth pairs, bridges,
//! addresses, routes, forwarding and NAT, through netlink.
//!
//! Each step can be printed first as the `ip` command that does the same (`--explain`), so a
//! reader can follow along or type it by hand. `ip -n NS ...` is short for
//! `ip netns exec NS ip ...`.
//!
//! The four built-in topologies:
//!
//! ```text
//! p2p   [server]=====[client]                          one veth pair
//! hub   [server] [client1] [client2] [client3]         every host on one bridge
//!           \_______|_________|_________|
//!                 [switch: br0]
//! site  [lan-a]--[gw-a]=====[gw-b]--[lan-b]            LANs reach each other only through
//!                                                      the tunnel between gw-a and gw-b
//! nat   [client]--[nat]=====[server]                   the client is masqueraded; midway its
//!                                                      outer address changes (roaming)
//! ```

use crate::{netlink, unique, Netns, PREFIX};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::net::IpAddr;

/// One end of a veth pair.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct End {
    pub host: String,
    pub dev: String,
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Plug this end into a bridge of its host.
    pub master: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub a: End,
    pub b: End,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bridge {
    pub host: String,
    pub name: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub host: String,
    /// A prefix, or "default".
    pub dst: String,
    pub via: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Masquerade {
    pub host: String,
    /// Traffic leaving through this device gets the device's address as its source.
    pub dev: String,
}

/// A suidao node of the topology.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VpnNode {
    pub host: String,
    /// Tunnel addresses, e.g. "10.99.0.1/24".
    pub tunnel: Vec<String>,
    /// Networks behind this node, routed to it through the tunnel.
    #[serde(default)]
    pub lan: Vec<String>,
}

/// A ping the demo expects to work: from a host to an address.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub from: String,
    pub to: String,
}

/// The client's outer address changes midway: add `add` on the NAT's outside device, then
/// remove `remove` (which also flushes the NAT's connection state for it).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roam {
    pub host: String,
    pub dev: String,
    pub remove: String,
    pub add: String,
    /// The client whose endpoint, as the server sees it, must follow.
    pub client: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vpn {
    pub server: VpnNode,
    /// The server's underlay address the clients use as endpoint.
    pub endpoint: String,
    #[serde(default)]
    pub clients: Vec<VpnNode>,
    #[serde(default)]
    pub checks: Vec<Check>,
    /// A short iperf3 run across the tunnel, when iperf3 is installed.
    pub throughput: Option<Check>,
    pub roam: Option<Roam>,
}

/// A whole topology. Loadable from TOML with the same field names.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub name: String,
    /// Every host (network namespace), by its short name.
    pub hosts: Vec<String>,
    #[serde(default)]
    pub bridges: Vec<Bridge>,
    #[serde(default)]
    pub links: Vec<Link>,
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Hosts that forward IP packets (routers).
    #[serde(default)]
    pub forwarding: Vec<String>,
    #[serde(default)]
    pub masquerade: Vec<Masquerade>,
    pub vpn: Option<Vpn>,
}

fn end(host: &str, dev: &str, addresses: &[&str]) -> End {
    End {
        host: host.into(),
        dev: dev.into(),
        addresses: addresses.iter().map(|a| a.to_string()).collect(),
        master: None,
    }
}

fn check(from: &str, to: &str) -> Check {
    Check {
        from: from.into(),
        to: to.into(),
    }
}

fn node(host: &str, tunnel: &[&str], lan: &[&str]) -> VpnNode {
    VpnNode {
        host: host.into(),
        tunnel: tunnel.iter().map(|a| a.to_string()).collect(),
        lan: lan.iter().map(|a| a.to_string()).collect(),
    }
}

impl Spec {
    /// The built-in topologies: `p2p`, `hub` (with `clients` clients), `site`, `nat`.
    pub fn builtin(name: &str, clients: usize) -> Result<Spec> {
        Ok(match name {
            "p2p" => Spec::p2p(),
            "hub" => Spec::hub(clients),
            "site" => Spec::site(),
            "nat" => Spec::nat(),
            other => bail!(
                "unknown topology {other:?} (p2p, hub, site, nat, or l2 and vxlan without --file)"
            ),
        })
    }

    pub fn load(path: &std::path::Path) -> Result<Spec> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn p2p() -> Spec {
        Spec {
            name: "p2p".into(),
            hosts: vec!["server".into(), "client".into()],
            bridges: vec![],
            links: vec![Link {
                a: end("server", "veth-s", &["198.18.0.1/24", "fd00:198:18::1/64"]),
                b: end("client", "veth-c", &["198.18.0.2/24", "fd00:198:18::2/64"]),
            }],
            routes: vec![],
            forwarding: vec![],
            masquerade: vec![],
            vpn: Some(Vpn {
                server: node("server", &["10.99.0.1/24", "fd99::1/64"], &[]),
                endpoint: "198.18.0.1".into(),
                clients: vec![node("client", &["10.99.0.2/24", "fd99::2/64"], &[])],
                checks: vec![
                    check("client", "10.99.0.1"),
                    check("client", "fd99::1"),
                    check("server", "10.99.0.2"),
                    check("server", "fd99::2"),
                ],
                throughput: Some(check("client", "10.99.0.1")),
                roam: None,
            }),
        }
    }

    pub fn hub(clients: usize) -> Spec {
        let mut hosts = vec!["server".to_string()];
        let mut links = Vec::new();
        for i in 0..=clients {
            let host = if i == 0 {
                "server".to_string()
            } else {
                format!("client{i}")
            };
            if i > 0 {
                hosts.push(host.clone());
            }
            let n = if i == 0 { 1 } else { 10 + i };
            let mut port = end("switch", &format!("p{i}"), &[]);
            port.master = Some("br0".into());
            links.push(Link {
                a: port,
                b: end(
                    &host,
                    &format!("h{i}"),
                    &[
                        &format!("198.18.0.{n}/24"),
                        &format!("fd00:198:18::{n:x}/64"),
                    ],
                ),
            });
        }
        hosts.push("switch".into());
        let mut checks = Vec::new();
        let mut vpn_clients = Vec::new();
        for i in 1..=clients {
            let me = format!("client{i}");
            vpn_clients.push(node(
                &me,
                &[
                    &format!("{}/24", hub_client_v4(i)),
                    &format!("fd99::{:x}/64", 10 + i),
                ],
                &[],
            ));
            checks.push(check(&me, "10.99.0.1"));
            checks.push(check("server", &hub_client_v4(i)));
            for j in 1..=clients {
                if j != i {
                    checks.push(check(&me, &hub_client_v4(j)));
                }
            }
        }
        // IPv6 inside too: to the server, from it, and between two clients.
        if clients > 0 {
            checks.push(check("client1", "fd99::1"));
            checks.push(check("server", &format!("fd99::{:x}", 11)));
        }
        if clients > 1 {
            checks.push(check("client2", &format!("fd99::{:x}", 11)));
        }
        Spec {
            name: "hub".into(),
            hosts,
            bridges: vec![Bridge {
                host: "switch".into(),
                name: "br0".into(),
            }],
            links,
            routes: vec![],
            forwarding: vec![],
            masquerade: vec![],
            vpn: Some(Vpn {
                server: node("server", &["10.99.0.1/24", "fd99::1/64"], &[]),
                endpoint: "198.18.0.1".into(),
                clients: vpn_clients,
                checks,
                throughput: (clients > 0).then(|| check("client1", "10.99.0.1")),
                roam: None,
            }),
        }
    }

    pub fn site() -> Spec {
        Spec {
            name: "site".into(),
            hosts: vec!["lan-a".into(), "gw-a".into(), "gw-b".into(), "lan-b".into()],
            bridges: vec![],
            links: vec![
                Link {
                    a: end("gw-a", "wan", &["198.18.0.1/24"]),
                    b: end("gw-b", "wan", &["198.18.0.2/24"]),
                },
                Link {
                    a: end("gw-a", "lan", &["10.1.0.1/24"]),
                    b: end("lan-a", "eth0", &["10.1.0.2/24"]),
                },
                Link {
                    a: end("gw-b", "lan", &["10.2.0.1/24"]),
                    b: end("lan-b", "eth0", &["10.2.0.2/24"]),
                },
            ],
            routes: vec![
                Route {
                    host: "lan-a".into(),
                    dst: "default".into(),
                    via: "10.1.0.1".into(),
                },
                Route {
                    host: "lan-b".into(),
                    dst: "default".into(),
                    via: "10.2.0.1".into(),
                },
            ],
            forwarding: vec!["gw-a".into(), "gw-b".into()],
            masquerade: vec![],
            vpn: Some(Vpn {
                server: node("gw-a", &["10.99.0.1/24"], &["10.1.0.0/24"]),
                endpoint: "198.18.0.1".into(),
                clients: vec![node("gw-b", &["10.99.0.2/24"], &["10.2.0.0/24"])],
                checks: vec![
                    check("lan-a", "10.2.0.2"),
                    check("lan-b", "10.1.0.2"),
                    check("gw-b", "10.99.0.1"),
                ],
                throughput: Some(check("lan-b", "10.1.0.2")),
                roam: None,
            }),
        }
    }

    /// `lan`: one Ethernet segment at `sites` places (a, b, c, ...). Each site is a bridge
    /// in its gateway with two hosts on it (a1, a2 at site a); the gateways reach each other
    /// over a WAN switch. Every host is on 10.50.0.0/24 and fd50::/64 with an MTU of 1405, the
    /// TAP's; the layer-2 tunnel (`l2::LanVpn`) joins the bridges.
    ///
    /// ```text
    ///  [a1]--+                                  +--[b1]
    ///        [gw-a: br0 + TAP]==(wan)==[gw-b: br0 + TAP]
    ///  [a2]--+                                  +--[b2]
    /// ```
    pub fn lan(sites: usize) -> Spec {
        let mut hosts = vec!["wan".to_string()];
        let mut bridges = vec![Bridge {
            host: "wan".into(),
            name: "wan0".into(),
        }];
        let mut links = Vec::new();
        for (i, site) in lan_sites(sites).into_iter().enumerate() {
            let gw = format!("gw-{site}");
            hosts.push(gw.clone());
            let mut port = end("wan", &format!("w{site}"), &[]);
            port.master = Some("wan0".into());
            links.push(Link {
                a: port,
                b: end(&gw, "wan", &[&format!("198.18.0.{}/24", i + 1)]),
            });
            bridges.push(Bridge {
                host: gw.clone(),
                name: "br0".into(),
            });
            for j in 1..=2 {
                let host = format!("{site}{j}");
                hosts.push(host.clone());
                let mut port = end(&gw, &format!("p{j}"), &[]);
                port.master = Some("br0".into());
                links.push(Link {
                    a: port,
                    b: end(
                        &host,
                        "eth0",
                        &[
                            &format!("{}/24", lan_v4(i, j)),
                            &format!("{}/64", lan_v6(i, j)),
                        ],
                    ),
                });
            }
        }
        Spec {
            name: "lan".into(),
            hosts,
            bridges,
            links,
            routes: vec![],
            forwarding: vec![],
            masquerade: vec![],
            vpn: None,
        }
    }

    pub fn nat() -> Spec {
        Spec {
            name: "nat".into(),
            hosts: vec!["client".into(), "nat".into(), "server".into()],
            bridges: vec![],
            links: vec![
                Link {
                    a: end("nat", "outside", &["198.18.0.2/24"]),
                    b: end("server", "wan", &["198.18.0.1/24"]),
                },
                Link {
                    a: end("nat", "inside", &["198.19.0.1/24"]),
                    b: end("client", "eth0", &["198.19.0.2/24"]),
                },
            ],
            routes: vec![Route {
                host: "client".into(),
                dst: "default".into(),
                via: "198.19.0.1".into(),
            }],
            forwarding: vec!["nat".into()],
            masquerade: vec![Masquerade {
                host: "nat".into(),
                dev: "outside".into(),
            }],
            vpn: Some(Vpn {
                server: node("server", &["10.99.0.1/24"], &[]),
                endpoint: "198.18.0.1".into(),
                clients: vec![node("client", &["10.99.0.2/24"], &[])],
                checks: vec![check("client", "10.99.0.1"), check("server", "10.99.0.2")],
                throughput: Some(check("client", "10.99.0.1")),
                roam: Some(Roam {
                    host: "nat".into(),
                    dev: "outside".into(),
                    remove: "198.18.0.2/24".into(),
                    add: "198.18.0.3/24".into(),
                    client: "client".into(),
                }),
            }),
        }
    }

    /// Tools a topology needs beyond netlink.
    pub fn tools(&self) -> Vec<&'static str> {
        if self.masquerade.is_empty() {
            vec![]
        } else {
            vec!["nft"]
        }
    }
}

/// A host of a built topology: its namespace and first underlay addresses.
pub struct Host {
    pub name: String,
    pub ns: Netns,
    pub v4: IpAddr,
    pub v6: IpAddr,
}

/// A built topology. Dropping it removes every namespace (and so every link in them).
pub struct Lab {
    pub spec: Spec,
    pub stem: String,
    pub hosts: Vec<Host>,
    explain: bool,
    links_made: usize,
}

fn parse_cidr(s: &str) -> Result<(IpAddr, u8)> {
    let (a, l) = s
        .split_once('/')
        .with_context(|| format!("{s:?} needs a /prefix"))?;
    Ok((
        a.parse()
            .with_context(|| format!("{a:?} is not an address"))?,
        l.parse()?,
    ))
}

impl Lab {
    /// Builds `spec`; with `explain`, prints each step as an `ip` command first. On any
    /// failure, what was built so far is removed (the guards drop).
    pub fn build(spec: Spec, explain: bool) -> Result<Lab> {
        let stem = unique(PREFIX);
        let mut lab = Lab {
            spec: spec.clone(),
            stem,
            hosts: Vec::new(),
            explain,
            links_made: 0,
        };
        for h in &spec.hosts {
            let name = lab.ns_name(h);
            lab.say(format!("ip netns add {name}"));
            lab.say(format!("ip -n {name} link set lo up"));
            let ns = Netns::create(&name)?;
            lab.hosts.push(Host {
                name: h.clone(),
                ns,
                v4: IpAddr::from([0, 0, 0, 0]),
                v6: IpAddr::from([0u8; 16]),
            });
        }
        for b in &spec.bridges {
            let ns = lab.ns(&b.host)?;
            lab.say(format!(
                "ip -n {} link add {} type bridge",
                ns.name(),
                b.name
            ));
            lab.say(format!("ip -n {} link set {} up", ns.name(), b.name));
            let name = b.name.clone();
            ns.netlink(|h| async move {
                netlink::add_bridge(&h, &name).await?;
                Ok(netlink::set_up(&h, &name).await?)
            })?;
        }
        for l in &spec.links {
            lab.link(l)?;
        }
        for r in &spec.routes {
            let ns = lab.ns(&r.host)?;
            let via: IpAddr = r.via.parse()?;
            let (dst, len) = if r.dst == "default" {
                (
                    if via.is_ipv4() {
                        IpAddr::from([0u8; 4])
                    } else {
                        IpAddr::from([0u8; 16])
                    },
                    0,
                )
            } else {
                parse_cidr(&r.dst)?
            };
            lab.say(format!("ip -n {} route add {} via {via}", ns.name(), r.dst));
            ns.netlink(|h| async move { netlink::add_gateway_route(&h, dst, len, via).await })?;
        }
        for f in &spec.forwarding {
            let ns = lab.ns(f)?;
            lab.say(format!(
                "ip netns exec {} sysctl -w net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1",
                ns.name()
            ));
            ns.run(|| -> Result<()> {
                std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
                std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")?;
                Ok(())
            })??;
        }
        for m in &spec.masquerade {
            let ns = lab.ns(&m.host)?;
            let rules = format!(
                "add table ip sdlab; add chain ip sdlab post {{ type nat hook postrouting priority srcnat; }}; add rule ip sdlab post oifname \"{}\" masquerade",
                m.dev
            );
            lab.say(format!("ip netns exec {} nft '{rules}'", ns.name()));
            let out = ns
                .command("nft")?
                .arg(&rules)
                .output()
                .context("running nft")?;
            if !out.status.success() {
                bail!(
                    "nft in {}: {}",
                    ns.name(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        // The kernel adds each address's local route when the link comes up, a moment later:
        // a lab is handed over only once every host has them (a snapshot taken before would
        // miss them, and a later one that has them would look like something left behind).
        for h in &lab.hosts {
            crate::netlink::wait_settled(&h.ns)?;
        }
        Ok(lab)
    }

    fn link(&mut self, l: &Link) -> Result<()> {
        let n = self.links_made;
        self.links_made += 1;
        let a_ns = self.ns(&l.a.host)?;
        let b_ns = self.ns(&l.b.host)?;
        self.say(format!(
            "ip -n {} link add {} type veth peer name {}",
            a_ns.name(),
            l.a.dev,
            l.b.dev
        ));
        if a_ns.name() != b_ns.name() {
            self.say(format!(
                "ip -n {} link set {} netns {}",
                a_ns.name(),
                l.b.dev,
                b_ns.name()
            ));
        }
        // Made under temporary names, so that both ends may have the same final name (each
        // lives in its own namespace), then renamed where they end up.
        let (tmp_a, tmp_b) = (format!("sdtmp{n}a"), format!("sdtmp{n}b"));
        let (a_dev, b_dev) = (l.a.dev.clone(), l.b.dev.clone());
        let same = a_ns.name() == b_ns.name();
        if same && a_dev == b_dev {
            bail!("both ends of a veth pair in {} are named {a_dev}", l.a.host);
        }
        let (ta, tb, ad) = (tmp_a.clone(), tmp_b.clone(), a_dev.clone());
        let b_final = if same { Some(b_dev.clone()) } else { None };
        a_ns.netlink(|h| async move {
            netlink::add_veth(&h, &ta, &tb).await?;
            if !same {
                netlink::move_to(&h, &tb, b_ns).await?;
            }
            netlink::rename(&h, &ta, &ad).await?;
            if let Some(bf) = b_final {
                netlink::rename(&h, &tb, &bf).await?;
            }
            Ok(())
        })?;
        if !same {
            b_ns.netlink(|h| async move { netlink::rename(&h, &tmp_b, &b_dev).await })?;
        }
        for e in [&l.a, &l.b] {
            let ns = self.ns(&e.host)?;
            let mut addrs = Vec::new();
            for a in &e.addresses {
                addrs.push(parse_cidr(a)?);
                self.say(format!("ip -n {} addr add {a} dev {}", ns.name(), e.dev));
            }
            if let Some(m) = &e.master {
                self.say(format!("ip -n {} link set {} master {m}", ns.name(), e.dev));
            }
            self.say(format!("ip -n {} link set {} up", ns.name(), e.dev));
            let dev = e.dev.clone();
            let master = e.master.clone();
            let for_host = addrs.clone();
            ns.netlink(|h| async move {
                for (a, l) in for_host {
                    netlink::add_addr(&h, &dev, a, l).await?;
                }
                if let Some(m) = master {
                    netlink::set_master(&h, &dev, &m).await?;
                }
                Ok(netlink::set_up(&h, &dev).await?)
            })?;
            if let Some(host) = self.hosts.iter_mut().find(|h| h.name == e.host) {
                for (a, _) in addrs {
                    if a.is_ipv4() && host.v4.is_unspecified() {
                        host.v4 = a;
                    } else if a.is_ipv6() && host.v6.is_unspecified() {
                        host.v6 = a;
                    }
                }
            }
        }
        Ok(())
    }

    pub fn say(&self, line: String) {
        if self.explain {
            println!("  $ {line}");
        }
    }

    fn ns_name(&self, host: &str) -> String {
        format!("{}-{host}", self.stem)
    }

    pub fn host(&self, name: &str) -> Result<&Host> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .with_context(|| format!("no host {name:?} in topology {}", self.spec.name))
    }

    pub fn ns(&self, host: &str) -> Result<&Netns> {
        Ok(&self.host(host)?.ns)
    }

    /// Removes a host from the lab, giving its ownership to the caller.
    pub fn take(&mut self, name: &str) -> Result<Host> {
        let i = self
            .hosts
            .iter()
            .position(|h| h.name == name)
            .with_context(|| format!("no host {name:?}"))?;
        Ok(self.hosts.remove(i))
    }

    /// Leave every namespace in place when the lab drops (`--keep`).
    pub fn keep(&mut self) {
        for h in &mut self.hosts {
            h.ns.keep();
        }
    }

    /// Prints (with --explain) and runs an `ip addr` change on a host's device, for roaming.
    pub fn change_address(&self, host: &str, dev: &str, add: &str, remove: &str) -> Result<()> {
        let ns = self.ns(host)?;
        let (a, al) = parse_cidr(add)?;
        let (r, rl) = parse_cidr(remove)?;
        // Without promote_secondaries, removing the primary IPv4 address of a subnet removes
        // the secondary ones with it, and the device would be left with no address at all.
        self.say(format!(
            "ip netns exec {} sysctl -w net.ipv4.conf.{dev}.promote_secondaries=1",
            ns.name()
        ));
        let sysctl = format!("/proc/sys/net/ipv4/conf/{dev}/promote_secondaries");
        ns.run(|| std::fs::write(&sysctl, "1"))?
            .with_context(|| format!("writing {sysctl}"))?;
        self.say(format!("ip -n {} addr add {add} dev {dev}", ns.name()));
        self.say(format!("ip -n {} addr del {remove} dev {dev}", ns.name()));
        let dev = dev.to_string();
        ns.netlink(|h| async move {
            netlink::add_addr(&h, &dev, a, al).await?;
            Ok(suidao_common::netlink::del_addr(&h, &dev, r, rl).await?)
        })
    }
}

/// `p2p`, as the tests use it: two hosts joined by one veth pair.
///
/// ```text
///  [server ns] veth-s 198.18.0.1/24 fd00:198:18::1/64 ==== veth-c 198.18.0.2/24 fd00:198:18::2/64 [client ns]
/// ```
pub struct P2p {
    pub server: Host,
    pub client: Host,
}

impl P2p {
    pub fn new() -> Result<P2p> {
        let mut lab = Lab::build(Spec::p2p(), false)?;
        Ok(P2p {
            server: lab.take("server")?,
            client: lab.take("client")?,
        })
    }
}

/// The sites of `Spec::lan`: a, b, c, ...
pub fn lan_sites(sites: usize) -> Vec<char> {
    ('a'..='z').take(sites.clamp(1, 26)).collect()
}

/// The address of host `j` (1 or 2) at site `i` (0-based) of `Spec::lan`: 10.50.0.11 is a1.
pub fn lan_v4(i: usize, j: usize) -> String {
    format!("10.50.0.{}", 10 * (i + 1) + j)
}

/// The same in IPv6: fd50::11 is a1.
pub fn lan_v6(i: usize, j: usize) -> String {
    format!("fd50::{}", 10 * (i + 1) + j)
}

/// The tunnel address of hub client `i` (1-based); the server is 10.99.0.1.
pub fn hub_client_v4(i: usize) -> String {
    format!("10.99.0.{}", 10 + i)
}

/// `hub`, as the tests use it: a server and N clients on one bridge.
pub struct Hub {
    pub server: Host,
    pub clients: Vec<Host>,
    pub switch: Host,
}

impl Hub {
    pub fn new(clients: usize) -> Result<Hub> {
        let mut lab = Lab::build(Spec::hub(clients), false)?;
        let server = lab.take("server")?;
        let mut cs = Vec::new();
        for i in 1..=clients {
            cs.push(lab.take(&format!("client{i}"))?);
        }
        Ok(Hub {
            server,
            clients: cs,
            switch: lab.take("switch")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_consistent() {
        for name in ["p2p", "hub", "site", "nat"] {
            let s = Spec::builtin(name, 3).unwrap();
            let known = |h: &str| s.hosts.iter().any(|x| x == h);
            for l in &s.links {
                assert!(known(&l.a.host) && known(&l.b.host), "{name}: {l:?}");
            }
            for r in &s.routes {
                assert!(known(&r.host));
            }
            let vpn = s.vpn.as_ref().unwrap();
            assert!(known(&vpn.server.host));
            for c in &vpn.clients {
                assert!(known(&c.host));
            }
            for c in &vpn.checks {
                assert!(known(&c.from));
            }
        }
        assert!(Spec::builtin("mesh", 1).is_err());
        // The hub pings through IPv6 more than once.
        let hub = Spec::builtin("hub", 3).unwrap();
        let v6 = hub
            .vpn
            .unwrap()
            .checks
            .iter()
            .filter(|c| c.to.contains(':'))
            .count();
        assert!(v6 >= 3, "{v6}");
    }

    #[test]
    fn loads_from_toml() {
        let text = r#"
name = "tiny"
hosts = ["a", "b"]
[[links]]
a = { host = "a", dev = "va", addresses = ["198.18.0.1/24"] }
b = { host = "b", dev = "vb", addresses = ["198.18.0.2/24"] }
[vpn]
endpoint = "198.18.0.1"
server = { host = "a", tunnel = ["10.99.0.1/24"] }
clients = [{ host = "b", tunnel = ["10.99.0.2/24"] }]
checks = [{ from = "b", to = "10.99.0.1" }]
"#;
        let s: Spec = toml::from_str(text).unwrap();
        assert_eq!(s.hosts.len(), 2);
        assert_eq!(s.vpn.unwrap().clients[0].host, "b");
        assert!(toml::from_str::<Spec>("name = \"x\"\nhosts = []\nbogus = 1\n").is_err());
    }
}
