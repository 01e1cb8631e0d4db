//! Setting the interface up: the data path's devices and sockets, the control socket, then
//! addresses, MTU, link up, routes, a full tunnel's policy rules and the name servers, each
//! recorded in the teardown list as it is made.

use super::teardown::{Teardown, Undo};
use super::{setup_error, EngineError};
use crate::config::{Config, InterfaceAddress, Table};
use crate::netlink::{self, Added, NetlinkError};
use crate::packet_device::PacketDevice;
use crate::transport::Transport;
use crate::tun::Tun;
use crate::uapi;
use crate::udp::Udp;
use std::net::IpAddr;
use std::os::unix::net::UnixListener;
use std::path::Path;
use suidao_proto::allowed_ips::Cidr;
use tracing::info;

/// The queues of the data path: a TUN queue and a UDP socket on the listen port per worker
/// (with the config's mark); and the listen port.
pub(super) type Queues = Vec<(Box<dyn PacketDevice>, Box<dyn Transport>)>;

pub(super) async fn open_queues(
    h: &rtnetlink::Handle,
    config: &Config,
) -> Result<(Queues, u16), EngineError> {
    let ifname = &config.interface.name;
    let workers = config
        .interface
        .workers
        .unwrap_or_else(crate::config::default_workers);
    let (sockets, listen_port) =
        bind_sockets(config.interface.listen_port, workers, socket_mark(config))?;
    let tuns = match Tun::create_queues(ifname, workers, config.interface.l2.is_some()) {
        Ok(t) => t,
        Err(e) => return Err(name_taken(h, ifname, e).await),
    };
    let queues = tuns
        .into_iter()
        .zip(sockets)
        .map(|(t, u)| {
            (
                Box::new(t) as Box<dyn PacketDevice>,
                Box::new(u) as Box<dyn Transport>,
            )
        })
        .collect();
    Ok((queues, listen_port))
}

/// `count` UDP sockets on `port` (None: any free one) with `mark`; and the port.
pub(super) fn bind_sockets(
    port: Option<u16>,
    count: usize,
    mark: Option<u32>,
) -> Result<(Vec<Udp>, u16), EngineError> {
    let sockets = Udp::bind_group(port, count)?;
    let port = sockets[0].local_port()?;
    if let Some(mark) = mark {
        for udp in &sockets {
            udp.set_mark(mark)
                .map_err(|e| setup_error(format!("marking the UDP sockets with {mark}: {e}")))?;
        }
    }
    Ok((sockets, port))
}

/// A socket file that answers belongs to a running interface; one that does not is a leftover
/// of a killed process and is removed.
pub(super) fn claim_socket_path(path: &Path, ifname: &str) -> Result<(), EngineError> {
    if !path.exists() {
        return Ok(());
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(setup_error(format!(
            "{ifname} is already up ({} answers); stop it first",
            path.display()
        )));
    }
    std::fs::remove_file(path)
        .map_err(|e| setup_error(format!("removing stale {}: {e}", path.display())))?;
    Ok(())
}

/// The control socket (`wg` and `status` talk to it), owner only: it hands out the private
/// key. CAP_NET_ADMIN makes the interface; the socket needs a folder this user may write to,
/// which only root has by default: say so rather than a bare EACCES.
pub(super) fn control_socket(path: &Path) -> Result<UnixListener, EngineError> {
    let needs_root = |e: &std::io::Error| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            format!(
                " (run as root, or make {} writable for this user: CAP_NET_ADMIN alone does not give that)",
                uapi::SOCKET_DIR
            )
        } else {
            String::new()
        }
    };
    std::fs::create_dir_all(uapi::SOCKET_DIR).map_err(|e| {
        setup_error(format!(
            "creating {} (where the control socket goes): {e}{}",
            uapi::SOCKET_DIR,
            needs_root(&e)
        ))
    })?;
    let old = set_umask(0o077);
    let l = UnixListener::bind(path);
    set_umask(old);
    l.map_err(|e| {
        setup_error(format!(
            "creating {}: {e}{}",
            path.display(),
            needs_root(&e)
        ))
    })
}

/// umask(2) around the socket bind, so that the socket file is never group/world accessible
/// even for an instant.
fn set_umask(mask: libc::mode_t) -> libc::mode_t {
    // SAFETY: umask has no failure mode and touches only the process's file mode mask.
    unsafe { libc::umask(mask) }
}

/// Which of the peers' prefixes become routes through the interface, as `table` says: in the
/// main table every one but the default routes (`0.0.0.0/0`, `::/0`), which make a full
/// tunnel instead (see `full_tunnel`); in a table of the config's every one; with `off` none.
pub(super) fn routed(table: Table, prefixes: &[Cidr]) -> Vec<Cidr> {
    match table {
        Table::Off => Vec::new(),
        Table::Auto => prefixes
            .iter()
            .filter(|c| c.prefix_len() > 0)
            .copied()
            .collect(),
        Table::Id(_) => prefixes.to_vec(),
    }
}

/// The routing table the peers' routes go in (None: none are made).
pub(super) fn route_table(table: Table) -> Option<u32> {
    match table {
        Table::Off => None,
        Table::Auto => Some(netlink::MAIN_TABLE),
        Table::Id(n) => Some(n),
    }
}

/// Routes `up` adds (see `routed`).
pub fn planned_routes(config: &Config) -> Vec<Cidr> {
    let all: Vec<_> = config
        .peers
        .iter()
        .flat_map(|p| p.allowed_ips.iter())
        .copied()
        .collect();
    routed(config.interface.table, &all)
}

/// The mark on suidao's own UDP packets: the config's `fwmark`, else, for a full tunnel, the
/// full tunnel's table number (as wg-quick does).
pub(super) fn socket_mark(config: &Config) -> Option<u32> {
    config
        .interface
        .fwmark
        .or_else(|| (full_tunnel(config) != (false, false)).then_some(netlink::FULL_TUNNEL_TABLE))
}

/// Adds a route to `c` through `dev` in `table`; what to undo, if it was not there already.
pub(super) async fn add_peer_route(
    h: &rtnetlink::Handle,
    c: &Cidr,
    dev: &str,
    table: u32,
) -> Result<Option<Added>, NetlinkError> {
    let (dst, len, dev) = (c.addr(), c.prefix_len(), dev.to_string());
    if table == netlink::MAIN_TABLE {
        let added = netlink::add_route(h, dst, len, &dev).await?;
        return Ok(added.then_some(Added::Route { dev, dst, len }));
    }
    let added = netlink::add_table_route(h, dst, len, &dev, table).await?;
    Ok(added.then_some(Added::TableRoute {
        dev,
        dst,
        len,
        table,
    }))
}

/// Which families are tunnelled in full (some peer's allowed IPs hold the default route, and
/// the routes go in the main table): (IPv4, IPv6).
pub fn full_tunnel(config: &Config) -> (bool, bool) {
    if config.interface.table != Table::Auto {
        return (false, false);
    }
    let all = config.peers.iter().flat_map(|p| p.allowed_ips.iter());
    let (mut v4, mut v6) = (false, false);
    for c in all.filter(|c| c.prefix_len() == 0) {
        if c.is_ipv4() {
            v4 = true;
        } else {
            v6 = true;
        }
    }
    (v4, v6)
}

/// A full tunnel, as wg-quick makes it: the default route goes into a table of its own,
/// which everything but suidao's own (marked) UDP packets looks up, while the main table still
/// wins for everything but its default route.
async fn configure_full_tunnel(
    h: &rtnetlink::Handle,
    config: &Config,
    td: &mut Teardown,
) -> Result<(), EngineError> {
    let name = &config.interface.name;
    let (v4, v6) = full_tunnel(config);
    for (on, v6, dst) in [
        (v4, false, IpAddr::from([0u8; 4])),
        (v6, true, IpAddr::from([0u8; 16])),
    ] {
        if !on {
            continue;
        }
        if netlink::add_table_route(h, dst, 0, name, netlink::FULL_TUNNEL_TABLE).await? {
            td.net(Some(Added::TableRoute {
                dev: name.clone(),
                dst,
                len: 0,
                table: netlink::FULL_TUNNEL_TABLE,
            }));
        }
        // Rules there already were left by a run that was killed (SIGKILL skips the teardown).
        let mark = socket_mark(config).unwrap_or(netlink::FULL_TUNNEL_TABLE);
        let left = netlink::del_leftover_rules(h, v6, mark).await?;
        if left > 0 {
            info!("full tunnel: removed {left} policy rule(s) left by an earlier run");
        }
        for rule in [
            netlink::FullTunnelRule::NotMarked(mark),
            netlink::FullTunnelRule::MainWithoutDefault,
        ] {
            if netlink::add_rule(h, v6, rule).await? {
                td.net(Some(Added::Rule { v6, rule }));
            }
        }
        if !v6 {
            // Reverse-path filtering must take the mark into account (wg-quick does the same).
            let path = "/proc/sys/net/ipv4/conf/all/src_valid_mark".to_string();
            if let Ok(old) = std::fs::read_to_string(&path) {
                if old.trim() != "1" && std::fs::write(&path, "1").is_ok() {
                    td.net(Some(Added::Sysctl { path, old }));
                }
            }
        }
        info!(
            "full tunnel for {}: default route in table {}",
            if v6 { "IPv6" } else { "IPv4" },
            netlink::FULL_TUNNEL_TABLE
        );
    }
    Ok(())
}

/// Addresses, MTU, link up, routes, a full tunnel, name servers.
pub(super) async fn configure(
    h: &rtnetlink::Handle,
    config: &Config,
    td: &mut Teardown,
) -> Result<(), EngineError> {
    let name = &config.interface.name;
    netlink::set_mtu(h, name, config.interface.device_mtu()).await?;
    for InterfaceAddress { addr, prefix_len } in &config.interface.addresses {
        if netlink::add_addr(h, name, *addr, *prefix_len).await? {
            td.net(Some(Added::Address {
                dev: name.clone(),
                addr: *addr,
                len: *prefix_len,
            }));
        }
    }
    netlink::set_up(h, name).await?;
    if let Some(bridge) = config.interface.l2.as_ref().and_then(|l| l.bridge.as_ref()) {
        td.net(Some(netlink::join_bridge(h, name, bridge).await?));
        info!("{name} joined bridge {bridge}");
    }
    if let Some(table) = route_table(config.interface.table) {
        for c in planned_routes(config) {
            td.net(add_peer_route(h, &c, name, table).await?);
        }
    }
    configure_full_tunnel(h, config, td).await?;
    let dns = &config.interface.dns;
    if !dns.is_empty() {
        let undo = crate::dns::set(name, dns).map_err(setup_error)?;
        info!(
            "name servers for {name}: {} ({})",
            dns.entries().join(", "),
            undo.describe()
        );
        td.push(Undo::Dns(undo));
    }
    Ok(())
}

/// A TUN that cannot be made because a link of another kind has the name (the kernel says only
/// EINVAL): say which kind.
async fn name_taken(h: &rtnetlink::Handle, ifname: &str, e: std::io::Error) -> EngineError {
    // (`Tun` words the error itself, keeping only its kind: EINVAL is InvalidInput.)
    if e.kind() != std::io::ErrorKind::InvalidInput {
        return e.into();
    }
    let kind = netlink::link_kind(h, ifname).await.ok().flatten();
    match kind {
        Some(kind) if kind != "tun" => setup_error(format!(
            "an interface named {ifname} exists already, and it is a {kind}, not a TUN: choose another name, or remove it (ip link del {ifname})"
        )),
        _ => e.into(),
    }
}
