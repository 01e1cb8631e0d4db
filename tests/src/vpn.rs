//! A suidao server and client on the `p2p` topology, ready to test.

use anyhow::Result;
use std::net::SocketAddr;
use suidao_lab::suidao::{Node, NodeSpec, PeerSpec, Role, TempDir};
use suidao_lab::topology::P2p;

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

pub fn specs(lab: &P2p, underlay_v6: bool) -> (NodeSpec, NodeSpec) {
    let mut server = NodeSpec::new("sds");
    let mut client = NodeSpec::new("sdc");
    server.listen_port = Some(PORT);
    server.addresses = vec![format!("{SERVER_V4}/24"), format!("{SERVER_V6}/64")];
    client.addresses = vec![format!("{CLIENT_V4}/24"), format!("{CLIENT_V6}/64")];
    server.peers.push(PeerSpec {
        name: Some("client".into()),
        public_key: Some(client.public_key()),
        allowed_ips: vec![format!("{CLIENT_V4}/32"), format!("{CLIENT_V6}/128")],
        ..Default::default()
    });
    let endpoint = SocketAddr::new(
        if underlay_v6 {
            lab.server.v6
        } else {
            lab.server.v4
        },
        PORT,
    );
    client.peers.push(PeerSpec {
        name: Some("server".into()),
        public_key: Some(server.public_key()),
        endpoint: Some(endpoint.to_string()),
        allowed_ips: vec!["10.99.0.0/24".into(), "fd99::/64".into()],
        persistent_keepalive: Some(25),
        ..Default::default()
    });
    (server, client)
}

impl P2pVpn {
    pub fn start(underlay_v6: bool) -> Result<P2pVpn> {
        let lab = P2p::new()?;
        let dir = TempDir::new()?;
        let (server_spec, client_spec) = specs(&lab, underlay_v6);
        let server = Node::start(
            &lab.server.ns,
            Role::Server,
            &server_spec.write(dir.path())?,
            &server_spec.ifname,
        )?;
        let client = Node::start(
            &lab.client.ns,
            Role::Client,
            &client_spec.write(dir.path())?,
            &client_spec.ifname,
        )?;
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
