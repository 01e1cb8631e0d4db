//! suidao running on a topology, ready to use: a server and a client on `p2p` (`P2pVpn`), a
//! server and N clients on `hub` (`HubVpn`). The tests stand on these, and so does the bench.

use crate::suidao::{Node, NodeSpec, Role, TempDir};
use crate::topology::{P2p, Spec};
use anyhow::{Context, Result};
use std::net::SocketAddr;

pub const SERVER_V4: &str = "10.99.0.1";
pub const CLIENT_V4: &str = "10.99.0.2";
pub const SERVER_V6: &str = "fd99::1";
pub const CLIENT_V6: &str = "fd99::2";
pub const PORT: u16 = 51820;

/// Fields drop in order: processes first, then their files, then the namespaces.
pub struct P2pVpn {
    pub client: Node,
    pub server: Node,
    pub server_spec: NodeSpec,
    pub client_spec: NodeSpec,
    pub dir: TempDir,
    pub lab: P2p,
}

/// The server and client of the `p2p` topology's `[vpn]` section; the client reaches the
/// server over the IPv6 underlay if `underlay_v6`.
pub fn specs(lab: &P2p, underlay_v6: bool) -> Result<(NodeSpec, NodeSpec)> {
    let server = if underlay_v6 {
        lab.server.v6
    } else {
        lab.server.v4
    };
    let vpn = Spec::p2p().vpn.context("p2p has a [vpn] section")?;
    let (server_spec, mut clients) = NodeSpec::server_and_clients(
        ["sds", "sdc"],
        &vpn.server,
        &vpn.clients,
        SocketAddr::new(server, PORT),
    )?;
    let client_spec = clients.pop().context("p2p has a client")?;
    Ok((server_spec, client_spec))
}

impl P2pVpn {
    pub fn start(underlay_v6: bool) -> Result<P2pVpn> {
        P2pVpn::start_with(underlay_v6, "")
    }

    /// `start`, with `extra` added to both ends' `[interface]` section (verbatim TOML lines).
    pub fn start_with(underlay_v6: bool, extra: &str) -> Result<P2pVpn> {
        let lab = P2p::new()?;
        let dir = TempDir::new()?;
        let (mut server_spec, mut client_spec) = specs(&lab, underlay_v6)?;
        server_spec.extra.push_str(extra);
        client_spec.extra.push_str(extra);
        let server = server_spec.start(&lab.server.ns, Role::Server, dir.path())?;
        let client = client_spec.start(&lab.client.ns, Role::Client, dir.path())?;
        Ok(P2pVpn {
            client,
            server,
            server_spec,
            client_spec,
            dir,
            lab,
        })
    }

    /// Both logs, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- server log ---\n{}\n--- client log ---\n{}",
            self.server.log(),
            self.client.log()
        )
    }
}

pub use crate::topology::hub_client_v4;

/// A suidao server and N clients on the `hub` topology.
pub struct HubVpn {
    pub clients: Vec<Node>,
    pub server: Node,
    pub client_specs: Vec<NodeSpec>,
    pub server_spec: NodeSpec,
    pub dir: TempDir,
    pub lab: crate::topology::Hub,
}

impl HubVpn {
    pub fn start(n: usize) -> Result<HubVpn> {
        HubVpn::start_on(n, n)
    }

    /// A hub of `hosts` client hosts of which only the first `n` run suidao (and are known to
    /// the server); the others are left free, e.g. for an attacker.
    pub fn start_on(hosts: usize, n: usize) -> Result<HubVpn> {
        let lab = crate::topology::Hub::new(hosts)?;
        let dir = TempDir::new()?;
        let vpn = Spec::hub(hosts).vpn.context("hub has a [vpn] section")?;
        let (server_spec, client_specs) = NodeSpec::server_and_clients(
            ["sds", "sdc"],
            &vpn.server,
            &vpn.clients[..n.min(hosts)],
            SocketAddr::new(lab.server.v4, PORT),
        )?;
        let server = server_spec.start(&lab.server.ns, Role::Server, dir.path())?;
        let mut clients = Vec::new();
        for (spec, host) in client_specs.iter().zip(&lab.clients) {
            clients.push(spec.start(&host.ns, Role::Client, dir.path())?);
        }
        Ok(HubVpn {
            clients,
            server,
            client_specs,
            server_spec,
            dir,
            lab,
        })
    }

    pub fn logs(&self) -> String {
        let mut s = format!("--- server log ---\n{}", self.server.log());
        for (i, c) in self.clients.iter().enumerate() {
            s.push_str(&format!("\n--- client{} log ---\n{}", i + 1, c.log()));
        }
        s
    }
}
