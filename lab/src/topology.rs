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
