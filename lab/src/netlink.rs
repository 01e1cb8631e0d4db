//! The netlink requests the lab makes inside a namespace, each the equivalent of one `ip`
//! command (named in its doc line). They run on a connection opened by `Netns::netlink`.

use anyhow::{anyhow, Context, Result};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use crate::Netns;

fn is_exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::EEXIST)
}

/// The interface index of `name`.
pub async fn index(h: &Handle, name: &str) -> Result<u32> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(link.header.index),
        Ok(None) => Err(anyhow!("no interface {name}")),
        Err(e) => Err(anyhow!("looking up interface {name}: {e}")),
    }
}

/// `ip link set NAME up`
pub async fn set_up(h: &Handle, name: &str) -> Result<()> {
    let i = index(h, name).await?;
    h.link()
        .set(LinkUnspec::new_with_index(i).up().build())
        .execute()
        .await
        .with_context(|| format!("setting {name} up"))
}

/// `ip link set NAME mtu MTU`
pub async fn set_mtu(h: &Handle, name: &str, mtu: u32) -> Result<()> {
    let i = index(h, name).await?;
    h.link()
        .set(LinkUnspec::new_with_index(i).mtu(mtu).build())
        .execute()
        .await
        .with_context(|| format!("setting the MTU of {name}"))
}

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

/// `ip addr add ADDR/LEN dev NAME` (IPv6 without duplicate address detection, so that it is
/// usable at once). An address that is already there is success.
pub async fn add_addr(h: &Handle, name: &str, addr: IpAddr, len: u8) -> Result<()> {
    let i = index(h, name).await?;
    let mut req = h.address().add(i, addr, len);
    if addr.is_ipv6() {
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    match req.execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_exists(&e) => Ok(()),
        Err(e) => Err(anyhow!("adding {addr}/{len} to {name}: {e}")),
    }
}

/// `ip route add DST/LEN [via GW] [dev NAME]`. A route that is already there is success.
pub async fn add_route(
    h: &Handle,
    dst: IpAddr,
    len: u8,
    via: Option<IpAddr>,
    dev: Option<&str>,
) -> Result<()> {
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst, len)
        .map_err(|e| anyhow!("{e}"))?;
    if let Some(gw) = via {
        b = b.gateway(gw).map_err(|e| anyhow!("{e}"))?;
    }
    if let Some(dev) = dev {
        b = b.output_interface(index(h, dev).await?);
    }
    match h.route().add(b.build()).execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_exists(&e) => Ok(()),
        Err(e) => Err(anyhow!("adding route {dst}/{len}: {e}")),
    }
}
