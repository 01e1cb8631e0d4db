//! The netlink requests suidao makes (through `rtnetlink`), each the equivalent of one `ip`
//! command, named in its doc line. Adding something that already exists is success, so every
//! call can be repeated; each add says whether it added anything (`Added`), so that the
//! engine's teardown list removes what it added, and only that, in reverse order.

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use std::net::IpAddr;

#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct NetlinkError {
    pub what: String,
    #[source]
    pub source: std::io::Error,
}

fn fail(what: impl Into<String>, e: rtnetlink::Error) -> NetlinkError {
    let source = match &e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => std::io::Error::other(other.to_string()),
    };
    NetlinkError {
        what: what.into(),
        source,
    }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// Opens a netlink connection in the calling thread's network namespace; the connection task
/// runs on the current tokio runtime.
pub fn connect() -> Result<Handle, NetlinkError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| NetlinkError {
        what: "opening a netlink socket".into(),
        source: e,
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

/// The MTU of the link `name` each time the kernel announces it (RTM_NEWLINK: `ip link set
/// NAME mtu N`, and any other change of the link), from a netlink socket of its own that
/// listens to the link group of its namespace. When the link leaves the namespace (RTM_DELLINK)
/// and `device` (a descriptor of the TUN) says where it went (TUNGETDEVNETNS: `ip link set
/// NAME netns OTHER`), the watch follows it there. The watch ends when the receiver is dropped
/// or the link is gone.
pub fn watch_mtu(
    name: &str,
    device: Option<std::os::fd::RawFd>,
) -> Result<tokio::sync::mpsc::UnboundedReceiver<u32>, NetlinkError> {
    let mut messages = link_messages(name, None)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let name = name.to_string();
    tokio::spawn(async move {
        loop {
            if !forward_mtus(&name, &mut messages, &tx).await {
                return;
            }
            // The link left this namespace: deleted (the TUN says nothing more), or moved.
            let Some(ns) = device.and_then(device_netns) else {
                return;
            };
            match link_messages(&name, Some(ns)) {
                Ok(m) => {
                    tracing::debug!("{name} moved to another network namespace: watching it there");
                    messages = m;
                }
                Err(e) => {
                    tracing::warn!("{name} moved to another network namespace: {e}; MTU changes made there are not seen");
                    return;
                }
            }
        }
    });
    Ok(rx)
}

/// A message of the link group, and who sent it.
type LinkMessage = (
    rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
    rtnetlink::sys::SocketAddr,
);

/// Sends the MTU of each RTM_NEWLINK of `name` on `tx`, until an RTM_DELLINK of it (true) or
/// the end of either side (false).
async fn forward_mtus(
    name: &str,
    messages: &mut (impl futures_util::Stream<Item = LinkMessage> + Unpin),
    tx: &tokio::sync::mpsc::UnboundedSender<u32>,
) -> bool {
    use futures_util::StreamExt;
    use rtnetlink::packet_core::NetlinkPayload;
    use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
    use rtnetlink::packet_route::RouteNetlinkMessage;
    let ours = |link: &LinkMessage| {
        link.attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::IfName(n) if n == name))
    };
    while let Some((m, _)) = messages.next().await {
        match m.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) if ours(&link) => {
                let mtu = link.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Mtu(m) => Some(*m),
                    _ => None,
                });
                if let Some(mtu) = mtu {
                    if tx.send(mtu).is_err() {
                        return false;
                    }
                }
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) if ours(&link) => {
                return true;
            }
            _ => {}
        }
    }
    false
}

/// A netlink connection subscribed to the link group, in the namespace `ns` (a descriptor of
/// it, taken and closed) or this thread's; its messages. Made on a thread of its own that
/// joins `ns`, so that no thread of the process changes namespace for good.
fn link_messages(
    name: &str,
    ns: Option<std::os::fd::OwnedFd>,
) -> Result<impl futures_util::Stream<Item = LinkMessage> + Unpin + Send + 'static, NetlinkError> {
    use rtnetlink::sys::{AsyncSocket, SocketAddr};
    let what = format!("watching the link {name}");
    let fail = |e: std::io::Error| NetlinkError {
        what: what.clone(),
        source: e,
    };
    let runtime = tokio::runtime::Handle::current();
    let open = move || -> std::io::Result<_> {
        if let Some(ns) = &ns {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this short-lived thread alone, with a namespace descriptor
            // the kernel gave us; the thread ends right after making the socket.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        let _in_runtime = runtime.enter();
        let (mut conn, _, messages) = rtnetlink::new_connection()?;
        conn.socket_mut()
            .socket_mut()
            .bind(&SocketAddr::new(0, rtnetlink::constants::RTMGRP_LINK))?;
        Ok((conn, messages))
    };
    let (conn, messages) = std::thread::spawn(open)
        .join()
        .map_err(|_| fail(std::io::Error::other("the watching thread panicked")))?
        .map_err(fail)?;
    tokio::spawn(conn);
    Ok(messages)
}

/// The network namespace the TUN behind `fd` is in now (TUNGETDEVNETNS, Linux 5.2), or None
/// (the device is gone, or the kernel cannot say).
fn device_netns(fd: std::os::fd::RawFd) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // _IO('T', 227)
    const TUNGETDEVNETNS: libc::c_ulong = 0x54e3;
    // SAFETY: the ioctl takes no argument and returns a new descriptor (or -1); `fd` is the
    // TUN's, open while the engine runs.
    let ns = unsafe { libc::ioctl(fd, TUNGETDEVNETNS as _) };
    // SAFETY: a descriptor the kernel just made for us, owned from here on.
    (ns >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(ns) })
}

/// The kind of the link `name` (`veth`, `bridge`, `tun`, ...; `ip -d link show NAME`), or
/// None when there is no such link. A plain device with no kind (a physical NIC) is "device".
pub async fn link_kind(h: &Handle, name: &str) -> Result<Option<String>, NetlinkError> {
    use rtnetlink::packet_route::link::{LinkAttribute, LinkInfo};
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => {
            let kind = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                    LinkInfo::Kind(k) => Some(k.to_string()),
                    _ => None,
                }),
                _ => None,
            });
            Ok(Some(kind.unwrap_or_else(|| "device".into())))
        }
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(fail(format!("looking up interface {name}"), e)),
    }
}

/// The interface index of `name`.
pub async fn index(h: &Handle, name: &str) -> Result<u32, NetlinkError> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(link.header.index),
        Ok(None) => Err(NetlinkError {
            what: format!("looking up interface {name}"),
            source: std::io::Error::from_raw_os_error(libc::ENODEV),
        }),
        Err(e) => Err(fail(format!("looking up interface {name}"), e)),
    }
}

/// `ip link set NAME up`
pub async fn set_up(h: &Handle, name: &str) -> Result<(), NetlinkError> {
    let i = index(h, name).await?;
    h.link()
        .set(LinkUnspec::new_with_index(i).up().build())
        .execute()
        .await
        .map_err(|e| fail(format!("setting {name} up"), e))
}

/// `ip link set NAME mtu MTU`
pub async fn set_mtu(h: &Handle, name: &str, mtu: u32) -> Result<(), NetlinkError> {
    let i = index(h, name).await?;
    h.link()
        .set(LinkUnspec::new_with_index(i).mtu(mtu).build())
        .execute()
        .await
        .map_err(|e| fail(format!("setting the MTU of {name} to {mtu}"), e))
}

/// `ip link set NAME master BRIDGE`: the interface joins a Linux bridge, which must exist and
/// be a bridge.
pub async fn join_bridge(h: &Handle, name: &str, bridge: &str) -> Result<Added, NetlinkError> {
    match link_kind(h, bridge).await? {
        Some(k) if k == "bridge" => {}
        Some(k) => {
            return Err(NetlinkError {
                what: format!("joining {bridge}: it is a {k}, not a bridge"),
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            })
        }
        None => {
            return Err(NetlinkError {
                what: format!(
                    "joining bridge {bridge}: there is no such interface (make it first: ip link add {bridge} type bridge)"
                ),
                source: std::io::Error::from_raw_os_error(libc::ENODEV),
            })
        }
    }
    let (i, b) = (index(h, name).await?, index(h, bridge).await?);
    h.link()
        .set(LinkUnspec::new_with_index(i).controller(b).build())
        .execute()
        .await
        .map_err(|e| fail(format!("putting {name} into bridge {bridge}"), e))?;
    Ok(Added::Bridge {
        dev: name.to_string(),
        bridge: bridge.to_string(),
    })
}

/// `ip link set NAME nomaster`; nothing to do if the interface is gone.
async fn leave_bridge(h: &Handle, name: &str) -> Result<(), NetlinkError> {
    let i = match index(h, name).await {
        Ok(i) => i,
        Err(e) if e.source.raw_os_error() == Some(libc::ENODEV) => return Ok(()),
        Err(e) => return Err(e),
    };
    h.link()
        .set(LinkUnspec::new_with_index(i).nocontroller().build())
        .execute()
        .await
        .map_err(|e| fail(format!("taking {name} out of its bridge"), e))
}

/// `ip link del NAME`
pub async fn del_link(h: &Handle, name: &str) -> Result<(), NetlinkError> {
    let i = index(h, name).await?;
    h.link()
        .del(i)
        .execute()
        .await
        .map_err(|e| fail(format!("deleting {name}"), e))
}

/// `ip addr add ADDR/LEN dev NAME` (IPv6 without duplicate address detection, so it is usable
/// at once). Returns false when the address was already there.
pub async fn add_addr(h: &Handle, name: &str, addr: IpAddr, len: u8) -> Result<bool, NetlinkError> {
    let i = index(h, name).await?;
    let mut req = h.address().add(i, addr, len);
    if addr.is_ipv6() {
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    match req.execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(fail(format!("adding {addr}/{len} to {name}"), e)),
    }
}

/// `ip addr del ADDR/LEN dev NAME`. An address that is gone already is success.
pub async fn del_addr(h: &Handle, name: &str, addr: IpAddr, len: u8) -> Result<(), NetlinkError> {
    let i = match index(h, name).await {
        Ok(i) => i,
        Err(_) => return Ok(()),
    };
    let mut addrs = h
        .address()
        .get()
        .set_link_index_filter(i)
        .set_address_filter(addr)
        .set_prefix_length_filter(len)
        .execute();
    while let Some(msg) = addrs
        .try_next()
        .await
        .map_err(|e| fail(format!("listing the addresses of {name}"), e))?
    {
        match h.address().del(msg).execute().await {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) => {}
            Err(e) => return Err(fail(format!("removing {addr}/{len} from {name}"), e)),
        }
    }
    Ok(())
}

fn route(
    dst: IpAddr,
    len: u8,
    dev: u32,
) -> Result<rtnetlink::packet_route::route::RouteMessage, NetlinkError> {
    let b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst, len)
        .map_err(|e| NetlinkError {
            what: format!("route to {dst}/{len}"),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
        })?;
    Ok(b.output_interface(dev).build())
}

/// `ip route add DST/LEN dev NAME`. Returns false when the route was already there.
pub async fn add_route(h: &Handle, dst: IpAddr, len: u8, dev: &str) -> Result<bool, NetlinkError> {
    let i = index(h, dev).await?;
    match h.route().add(route(dst, len, i)?).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(fail(format!("adding a route to {dst}/{len} via {dev}"), e)),
    }
}

/// The main table's routes through interfaces other than `dev`, as (destination, prefix
/// length, interface index), both families (`ip route show table main`, and `-6`): a prefix
/// among them cannot be routed into the tunnel too.
pub async fn main_routes_elsewhere(
    h: &Handle,
    dev: &str,
) -> Result<Vec<(IpAddr, u8, u32)>, NetlinkError> {
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
    let ours = index(h, dev).await?;
    let mut found = Vec::new();
    for (msg, any) in [
        (
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            IpAddr::from([0u8; 4]),
        ),
        (
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
            IpAddr::from([0u8; 16]),
        ),
    ] {
        let mut routes = h.route().get(msg).execute();
        while let Some(r) = routes
            .try_next()
            .await
            .map_err(|e| fail("listing the routes", e))?
        {
            let (mut dst, mut oif, mut table) = (any, None, u32::from(r.header.table));
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = IpAddr::V4(*a),
                    RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = IpAddr::V6(*a),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Table(t) => table = *t,
                    _ => {}
                }
            }
            if let Some(i) = oif.filter(|i| table == MAIN_TABLE && *i != ours) {
                found.push((dst, r.header.destination_prefix_length, i));
            }
        }
    }
    Ok(found)
}

/// `ip route del DST/LEN dev NAME`. A route that is gone already is success.
pub async fn del_route(h: &Handle, dst: IpAddr, len: u8, dev: &str) -> Result<(), NetlinkError> {
    let i = match index(h, dev).await {
        Ok(i) => i,
        Err(_) => return Ok(()),
    };
    match h.route().del(route(dst, len, i)?).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(()),
        Err(e) => Err(fail(format!("removing the route to {dst}/{len}"), e)),
    }
}

/// The routing table (and socket mark) of a full tunnel, as wg-quick uses by default.
pub const FULL_TUNNEL_TABLE: u32 = 51820;
pub const MAIN_TABLE: u32 = 254;

/// The two policy rules of a full tunnel, per address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullTunnelRule {
    /// `ip rule add not fwmark MARK table TABLE`: everything but the tunnel's own packets
    /// (marked MARK) looks up the tunnel's table.
    NotMarked(u32),
    /// `ip rule add table main suppress_prefixlength 0`: the main table still wins, except its
    /// default route.
    MainWithoutDefault,
}

fn rule_message(
    h: &Handle,
    v6: bool,
    rule: FullTunnelRule,
) -> rtnetlink::packet_route::rule::RuleMessage {
    use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleFlags};
    let req = h.rule().add();
    let mut req = match (v6, rule) {
        (false, FullTunnelRule::NotMarked(mark)) => req
            .v4()
            .fw_mark(mark)
            .table_id(FULL_TUNNEL_TABLE)
            .action(RuleAction::ToTable)
            .message_mut()
            .clone(),
        (true, FullTunnelRule::NotMarked(mark)) => req
            .v6()
            .fw_mark(mark)
            .table_id(FULL_TUNNEL_TABLE)
            .action(RuleAction::ToTable)
            .message_mut()
            .clone(),
        (false, FullTunnelRule::MainWithoutDefault) => req
            .v4()
            .table_id(MAIN_TABLE)
            .action(RuleAction::ToTable)
            .message_mut()
            .clone(),
        (true, FullTunnelRule::MainWithoutDefault) => req
            .v6()
            .table_id(MAIN_TABLE)
            .action(RuleAction::ToTable)
            .message_mut()
            .clone(),
    };
    match rule {
        FullTunnelRule::NotMarked(_) => req.header.flags |= RuleFlags::Invert,
        FullTunnelRule::MainWithoutDefault => {
            req.attributes.push(RuleAttribute::SuppressPrefixLen(0))
        }
    }
    req
}

/// Adds a full-tunnel rule; false when it was there already.
pub async fn add_rule(h: &Handle, v6: bool, rule: FullTunnelRule) -> Result<bool, NetlinkError> {
    let msg = rule_message(h, v6, rule);
    let mut req = h.rule().add();
    *req.message_mut() = msg;
    match req.execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(fail(format!("adding policy rule {rule:?}"), e)),
    }
}

/// Removes a full-tunnel rule (gone already is success); false when there was none.
pub async fn del_rule(h: &Handle, v6: bool, rule: FullTunnelRule) -> Result<bool, NetlinkError> {
    match h.rule().del(rule_message(h, v6, rule)).execute().await {
        Ok(()) => Ok(true),
        Err(e) if matches!(errno(&e), Some(libc::ENOENT) | Some(libc::ESRCH)) => Ok(false),
        Err(e) => Err(fail(format!("removing policy rule {rule:?}"), e)),
    }
}

/// Removes every full-tunnel rule of a family that is there before `up` adds its own: a run
/// killed with SIGKILL leaves them (the kernel gives a rule without a priority a new one, so
/// adding ours again would not find them). Returns how many went.
pub async fn del_leftover_rules(h: &Handle, v6: bool, mark: u32) -> Result<usize, NetlinkError> {
    let mut removed = 0;
    for rule in [
        FullTunnelRule::NotMarked(mark),
        FullTunnelRule::MainWithoutDefault,
    ] {
        // Bounded: a rule that keeps coming back is not ours to fight.
        for _ in 0..64 {
            if !del_rule(h, v6, rule).await? {
                break;
            }
            removed += 1;
        }
    }
    Ok(removed)
}

/// `ip route add DST/LEN dev NAME table TABLE`. Returns false when it was there already.
pub async fn add_table_route(
    h: &Handle,
    dst: IpAddr,
    len: u8,
    dev: &str,
    table: u32,
) -> Result<bool, NetlinkError> {
    let i = index(h, dev).await?;
    let mut msg = route(dst, len, i)?;
    msg.attributes
        .push(rtnetlink::packet_route::route::RouteAttribute::Table(table));
    match h.route().add(msg).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(fail(
            format!("adding a route to {dst}/{len} in table {table}"),
            e,
        )),
    }
}

/// `ip route del DST/LEN dev NAME table TABLE`. A route that is gone already is success.
pub async fn del_table_route(
    h: &Handle,
    dst: IpAddr,
    len: u8,
    dev: &str,
    table: u32,
) -> Result<(), NetlinkError> {
    let i = match index(h, dev).await {
        Ok(i) => i,
        Err(_) => return Ok(()),
    };
    let mut msg = route(dst, len, i)?;
    msg.attributes
        .push(rtnetlink::packet_route::route::RouteAttribute::Table(table));
    match h.route().del(msg).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(()),
        Err(e) => Err(fail(
            format!("removing the route to {dst}/{len} from table {table}"),
            e,
        )),
    }
}

/// One thing `up` added, to be undone on the way down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    Address {
        dev: String,
        addr: IpAddr,
        len: u8,
    },
    Route {
        dev: String,
        dst: IpAddr,
        len: u8,
    },
    /// A route in a table other than main: a full tunnel's default route, or every route
    /// with `table = N` (goes with the device; listed for completeness).
    TableRoute {
        dev: String,
        dst: IpAddr,
        len: u8,
        table: u32,
    },
    Rule {
        v6: bool,
        rule: FullTunnelRule,
    },
    /// A sysctl changed from `old`.
    Sysctl {
        path: String,
        old: String,
    },
    /// The interface joined a bridge.
    Bridge {
        dev: String,
        bridge: String,
    },
}

/// Removes what `a` says was added (a table route goes with the device: nothing to do).
pub async fn remove(h: &Handle, a: &Added) -> Result<(), NetlinkError> {
    match a {
        Added::Address { dev, addr, len } => del_addr(h, dev, *addr, *len).await,
        Added::Route { dev, dst, len } => del_route(h, *dst, *len, dev).await,
        Added::TableRoute { .. } => Ok(()),
        Added::Bridge { dev, .. } => leave_bridge(h, dev).await,
        Added::Rule { v6, rule } => del_rule(h, *v6, *rule).await.map(|_| ()),
        Added::Sysctl { path, old } => std::fs::write(path, old).map_err(|e| NetlinkError {
            what: format!("restoring {path}"),
            source: e,
        }),
    }
}
