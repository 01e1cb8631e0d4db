//! The netlink requests only the lab makes (veth pairs, bridges, moving links between
//! namespaces), each the equivalent of one `ip` command named in its doc line. The ones suidao
//! itself also makes (addresses, routes, link up) come from `suidao_common::netlink`.

use anyhow::{Context, Result};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth};
use std::os::fd::AsRawFd;

pub use suidao_common::netlink::{add_addr, add_route, index, set_mtu, set_up};

use crate::Netns;

/// `ip link add NAME type veth peer name PEER`
pub async fn add_veth(h: &Handle, name: &str, peer: &str) -> Result<()> {
    h.link()
        .add(LinkVeth::new(name, peer).build())
        .execute()
        .await
        .with_context(|| format!("creating veth pair {name}/{peer}"))
}

/// `ip link add NAME type bridge`
pub async fn add_bridge(h: &Handle, name: &str) -> Result<()> {
    h.link()
        .add(LinkBridge::new(name).build())
        .execute()
        .await
        .with_context(|| format!("creating bridge {name}"))
}

/// `ip link set NAME master BRIDGE`
pub async fn set_master(h: &Handle, name: &str, bridge: &str) -> Result<()> {
    let i = index(h, name).await?;
    let b = index(h, bridge).await?;
    h.link()
        .set(LinkUnspec::new_with_index(i).controller(b).build())
        .execute()
        .await
        .with_context(|| format!("attaching {name} to {bridge}"))
}

/// `ip link set NAME netns NS`
pub async fn move_to(h: &Handle, name: &str, ns: &Netns) -> Result<()> {
    let i = index(h, name).await?;
    let file = std::fs::File::open(ns.path())?;
    h.link()
        .set(
            LinkUnspec::new_with_index(i)
                .setns_by_fd(file.as_raw_fd())
                .build(),
        )
        .execute()
        .await
        .with_context(|| format!("moving {name} into namespace {}", ns.name()))
}

/// Waits (up to 5 s) until every address of `ns` outside `lo` has its local route (table
/// 255), which the kernel adds when the address's link is up and the address usable.
pub fn wait_settled(ns: &Netns) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let lines = snapshot_of(ns)?;
        let missing: Vec<&String> = lines
            .iter()
            .filter(|l| l.starts_with("addr ") && !l.ends_with(" dev 1"))
            .filter(|l| {
                let (addr, dev) = l["addr ".len()..].split_once(' ').unwrap_or_default();
                let ip = addr.split('/').next().unwrap_or_default();
                let host = if ip.contains(':') { 128 } else { 32 };
                let oif = dev.trim_start_matches("dev ");
                let want = format!("route {ip}/{host} oif {oif} table 255 type Local");
                !lines.contains(&want)
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("{}: no local route for {missing:?} after 5 s", ns.name());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `snapshot` of a namespace, on a connection opened inside it.
pub fn snapshot_of(ns: &Netns) -> Result<Vec<String>> {
    ns.netlink(|h| async move { snapshot(&h).await })
}

/// Everything a namespace has, one line per link, address and route (all tables), sorted: two
/// snapshots compare equal when nothing was left behind.
pub async fn snapshot(h: &Handle) -> Result<Vec<String>> {
    use futures_util::TryStreamExt;
    use rtnetlink::packet_route::address::AddressAttribute;
    use rtnetlink::packet_route::link::LinkAttribute;
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
    use std::net::{Ipv4Addr, Ipv6Addr};
    let mut lines = Vec::new();
    let mut links = h.link().get().execute();
    while let Some(l) = links.try_next().await? {
        for a in &l.attributes {
            if let LinkAttribute::IfName(n) = a {
                lines.push(format!("link {n} (index {})", l.header.index));
            }
        }
    }
    let mut addrs = h.address().get().execute();
    while let Some(a) = addrs.try_next().await? {
        for attr in &a.attributes {
            if let AddressAttribute::Address(ip) = attr {
                lines.push(format!(
                    "addr {ip}/{} dev {}",
                    a.header.prefix_len, a.header.index
                ));
            }
        }
    }
    for msg in [
        rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build(),
        rtnetlink::RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let mut routes = h.route().get(msg).execute();
        while let Some(r) = routes.try_next().await? {
            let mut dst = String::from("default");
            let mut oif = 0;
            let mut table = u32::from(r.header.table);
            for attr in &r.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = a.to_string(),
                    RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = a.to_string(),
                    RouteAttribute::Oif(i) => oif = *i,
                    RouteAttribute::Table(t) => table = *t,
                    _ => {}
                }
            }
            lines.push(format!(
                "route {dst}/{} oif {oif} table {table} type {:?}",
                r.header.destination_prefix_length, r.header.kind
            ));
        }
    }
    for version in [rtnetlink::IpVersion::V4, rtnetlink::IpVersion::V6] {
        let mut rules = h.rule().get(version).execute();
        while let Some(r) = rules.try_next().await? {
            lines.push(format!(
                "rule {:?} {:?} {:?}",
                r.header.family, r.header.flags, r.attributes
            ));
        }
    }
    // IPv6 link-local addresses and their routes, and the ff00::/8 multicast route, come by
    // themselves when a link's carrier comes up (for a veth, a moment after both ends are set
    // up, so possibly after a first snapshot), whatever suidao does: leave them out.
    lines.retain(|l| !l.contains("fe80:") && !l.contains("type Multicast"));
    lines.sort();
    Ok(lines)
}

/// `ip route add DST/LEN via GW` (a default route when LEN is 0). Already there is success.
pub async fn add_gateway_route(
    h: &Handle,
    dst: std::net::IpAddr,
    len: u8,
    via: std::net::IpAddr,
) -> Result<()> {
    let msg = rtnetlink::RouteMessageBuilder::<std::net::IpAddr>::new()
        .destination_prefix(dst, len)
        .and_then(|b| b.gateway(via))
        .map_err(|e| anyhow::anyhow!("route to {dst}/{len} via {via}: {e}"))?
        .build();
    match h.route().add(msg).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::EEXIST => Ok(()),
        Err(e) => Err(anyhow::anyhow!(
            "adding route to {dst}/{len} via {via}: {e}"
        )),
    }
}

/// `ip link set OLD name NEW` (the link must be down, as a new veth is).
pub async fn rename(h: &Handle, old: &str, new: &str) -> Result<()> {
    if old == new {
        return Ok(());
    }
    let i = index(h, old).await?;
    h.link()
        .set(LinkUnspec::new_with_index(i).name(new.to_string()).build())
        .execute()
        .await
        .with_context(|| format!("renaming {old} to {new}"))
}

/// Packets a link has received and sent (`ip -s link show NAME`).
pub async fn link_packets(h: &Handle, name: &str) -> Result<(u64, u64)> {
    use futures_util::TryStreamExt;
    use rtnetlink::packet_route::link::LinkAttribute;
    let mut links = h.link().get().match_name(name.to_string()).execute();
    let link = links
        .try_next()
        .await?
        .with_context(|| format!("no interface {name}"))?;
    for a in &link.attributes {
        if let LinkAttribute::Stats64(s) = a {
            return Ok((s.rx_packets, s.tx_packets));
        }
    }
    anyhow::bail!("no statistics for {name}")
}
