//! The netlink requests suidao makes (through `rtnetlink`), each the equivalent of one `ip`
//! command, named in its doc line. Adding something that already exists is success, so every
//! call can be repeated; `Teardown` remembers what was really added so that it, and only it,
//! is removed in reverse order.

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

/// One thing `up` added, to be undone on the way down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    Address { dev: String, addr: IpAddr, len: u8 },
    Route { dev: String, dst: IpAddr, len: u8 },
}

/// What `up` added, in order; `undo` removes it in reverse.
#[derive(Debug, Default)]
pub struct Teardown {
    added: Vec<Added>,
}

impl Teardown {
    pub fn push(&mut self, a: Added) {
        self.added.push(a);
    }

    pub fn items(&self) -> &[Added] {
        &self.added
    }

    /// Stops tracking `a` (it is being removed now); false if it was not tracked.
    pub fn forget(&mut self, a: &Added) -> bool {
        match self.added.iter().position(|x| x == a) {
            Some(i) => {
                self.added.remove(i);
                true
            }
            None => false,
        }
    }

    /// Removes everything in reverse order; keeps going past errors and returns them.
    pub async fn undo(&mut self, h: &Handle) -> Vec<NetlinkError> {
        let mut errors = Vec::new();
        while let Some(a) = self.added.pop() {
            let r = match &a {
                Added::Address { dev, addr, len } => del_addr(h, dev, *addr, *len).await,
                Added::Route { dev, dst, len } => del_route(h, *dst, *len, dev).await,
            };
            if let Err(e) = r {
                errors.push(e);
            }
        }
        errors
    }
}
