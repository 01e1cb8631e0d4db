//! Topologies built from namespaces, veth pairs and bridges.

use crate::netlink;
use crate::{unique, Netns, PREFIX};
use anyhow::Result;
use std::net::IpAddr;

/// One host of a topology: its namespace and its underlay addresses.
pub struct Host {
    pub ns: Netns,
    pub v4: IpAddr,
    pub v6: IpAddr,
}

/// `p2p`: two hosts joined by one veth pair.
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
        let stem = unique(PREFIX);
        let server_ns = Netns::create(&format!("{stem}-server"))?;
        let client_ns = Netns::create(&format!("{stem}-client"))?;
        let server = Host {
            ns: server_ns,
            v4: "198.18.0.1".parse()?,
            v6: "fd00:198:18::1".parse()?,
        };
        let client = Host {
            ns: client_ns,
            v4: "198.18.0.2".parse()?,
            v6: "fd00:198:18::2".parse()?,
        };
        let client_ns = &client.ns;
        server.ns.netlink(|h| async move {
            netlink::add_veth(&h, "veth-s", "veth-c").await?;
            netlink::move_to(&h, "veth-c", client_ns).await?;
            Ok(())
        })?;
        for (host, dev) in [(&server, "veth-s"), (&client, "veth-c")] {
            let (v4, v6) = (host.v4, host.v6);
            host.ns.netlink(|h| async move {
                netlink::add_addr(&h, dev, v4, 24).await?;
                netlink::add_addr(&h, dev, v6, 64).await?;
                Ok(netlink::set_up(&h, dev).await?)
            })?;
        }
        Ok(P2p { server, client })
    }
}

/// `hub`: a server and N clients, each host a namespace plugged into one bridge (in a switch
/// namespace of its own) by a veth pair.
///
/// ```text
///                 [switch ns: br0]
///        p0 /        p1 |        \ p2 ...
///  h0 [server]    h1 [client 1]   h2 [client 2]
///  198.18.0.1     198.18.0.11     198.18.0.12
/// ```
pub struct Hub {
    pub server: Host,
    pub clients: Vec<Host>,
    pub switch: Netns,
}

/// The underlay addresses of host `i` of a hub (0 is the server).
pub fn hub_addresses(i: usize) -> (IpAddr, IpAddr) {
    let n = if i == 0 { 1 } else { 10 + i };
    (
        IpAddr::from([198, 18, 0, n as u8]),
        format!("fd00:198:18::{n:x}")
            .parse()
            .unwrap_or(IpAddr::from([0u8; 16])),
    )
}

impl Hub {
    pub fn new(clients: usize) -> Result<Hub> {
        let stem = unique(PREFIX);
        let switch = Netns::create(&format!("{stem}-switch"))?;
        switch.netlink(|h| async move {
            netlink::add_bridge(&h, "br0").await?;
            Ok(netlink::set_up(&h, "br0").await?)
        })?;
        let mut hosts = Vec::new();
        for i in 0..=clients {
            let name = if i == 0 {
                format!("{stem}-server")
            } else {
                format!("{stem}-client{i}")
            };
            let ns = Netns::create(&name)?;
            let (v4, v6) = hub_addresses(i);
            let (port, end) = (format!("p{i}"), format!("h{i}"));
            let ns_ref = &ns;
            switch.netlink(|h| async move {
                netlink::add_veth(&h, &port, &end).await?;
                netlink::move_to(&h, &end, ns_ref).await?;
                netlink::set_master(&h, &port, "br0").await?;
                Ok(netlink::set_up(&h, &port).await?)
            })?;
            let end = format!("h{i}");
            ns.netlink(|h| async move {
                netlink::add_addr(&h, &end, v4, 24).await?;
                netlink::add_addr(&h, &end, v6, 64).await?;
                Ok(netlink::set_up(&h, &end).await?)
            })?;
            hosts.push(Host { ns, v4, v6 });
        }
        let server = hosts.remove(0);
        Ok(Hub {
            server,
            clients: hosts,
            switch,
        })
    }
}
