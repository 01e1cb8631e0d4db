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
