//! Changing a running interface's peers: SIGHUP and `reload` (the config file again), and
//! `wg set` (through the API socket). Both come down to `apply_peers`: everything checked
//! first, the routes the new set needs added (taken back if one fails), then the device
//! changed, then the routes no longer needed removed. A refused change changes nothing.

use super::endpoints::{hostnames, EndpointMemory};
use super::setup::{add_peer_route, full_tunnel, route_table, routed};
use super::teardown::Teardown;
use super::up::Managed;
use super::{read_lock, write_lock};
use crate::config::Config;
use crate::netlink::{self, Added, NetlinkError};
use crate::{apply, notify};
use std::collections::HashMap;
use std::sync::mpsc::Sender;
use std::sync::{Arc, RwLock};
use suidao_proto::allowed_ips::Cidr;
use suidao_proto::keys::PublicKey;
use suidao_proto::Device;
use tracing::{info, warn};

/// What a change needs: the netlink connection, what `up` added, the config in force, and
/// the parts of the running interface a config touches.
pub(super) struct Live<'a> {
    pub(super) h: &'a rtnetlink::Handle,
    pub(super) td: &'a mut Teardown,
    pub(super) config: Config,
    pub(super) managed: Managed,
    /// The UDP port bound now (shared with the API, which reports it).
    pub(super) listen_port: Arc<std::sync::atomic::AtomicU16>,
    /// The mark on the UDP sockets now, 0 for none (shared with the API, which reports it).
    pub(super) fwmark: Arc<std::sync::atomic::AtomicU32>,
    pub(super) device: Arc<Device>,
    /// Layer 2: the switch, whose peer rules follow the peers.
    pub(super) switch: Option<Arc<crate::switch::Switch>>,
    pub(super) names: Arc<RwLock<HashMap<PublicKey, String>>>,
    /// None where the API configures the interface (nothing is remembered across runs).
    pub(super) memory: Option<Arc<EndpointMemory>>,
    /// The re-resolving thread's list of host names.
    pub(super) hosts: Sender<HashMap<PublicKey, String>>,
}

/// The peers' routes `up` (or an earlier change) added through the interface in `table`,
/// each with its teardown entry.
fn our_routes(live: &Live<'_>, table: u32) -> Vec<(Cidr, Added)> {
    let dev = &live.config.interface.name;
    live.td
        .net_items()
        .filter_map(|a| {
            let (d, dst, len) = match a {
                Added::Route { dev, dst, len } if table == netlink::MAIN_TABLE => (dev, dst, len),
                Added::TableRoute {
                    dev,
                    dst,
                    len,
                    table: t,
                } if *t == table => (dev, dst, len),
                _ => return None,
            };
            if d != dev {
                return None;
            }
            Some((Cidr::new(*dst, *len)?, a.clone()))
        })
        .collect()
}

/// Removes a peer route `add_peer_route` added.
async fn del_peer_route(h: &rtnetlink::Handle, a: &Added) -> Result<(), NetlinkError> {
    match a {
        Added::Route { dev, dst, len } => netlink::del_route(h, *dst, *len, dev).await,
        Added::TableRoute {
            dev,
            dst,
            len,
            table,
        } => netlink::del_table_route(h, *dst, *len, dev, *table).await,
        _ => Ok(()),
    }
}

/// Debug builds only: `SUIDAO_TEST_FAIL_ROUTE=PREFIX` makes adding a route to PREFIX fail, so
/// the tests can see a change refused at its last step and taken back whole.
fn injected_route_failure(c: &Cidr) -> Option<String> {
    #[cfg(debug_assertions)]
    {
        let bad = std::env::var("SUIDAO_TEST_FAIL_ROUTE").ok()?;
        (bad == c.to_string())
            .then(|| format!("adding a route to {c}: refused (SUIDAO_TEST_FAIL_ROUTE)"))
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = c;
        None
    }
}

/// Makes the interface's peers `desired` (see `apply`): checks everything first, adds the
/// routes the new set needs (taking them back if one fails), then changes the device, then
/// removes the routes no longer needed. Refused: nothing changed.
pub(super) async fn apply_peers(
    live: &mut Live<'_>,
    desired: &[apply::PeerSpec],
) -> Result<String, String> {
    // Layer 2: frames are switched by MAC; allowed IPs (and their routes) mean nothing there.
    // (A config file cannot name any: this is for `wg set`.)
    if live.config.interface.l2.is_some() {
        if let Some(p) = desired.iter().find(|p| !p.allowed_ips.is_empty()) {
            return Err(format!(
                "peer {}: a layer-2 interface takes no allowed IPs (frames are switched by MAC; `allowed_macs` in the config limits a peer's)",
                p.name
                    .clone()
                    .unwrap_or_else(|| p.public_key.to_base64()[..8].to_string() + "…")
            ));
        }
    }
    let plan =
        apply::plan(&live.device, &read_lock(&live.names), desired).map_err(|e| e.to_string())?;
    let dev = live.config.interface.name.clone();
    // `table = "off"`: the person routes; the device alone changes.
    let Some(table) = route_table(live.config.interface.table) else {
        apply::apply_to_device(&live.device, &plan);
        refresh_switch(live);
        *write_lock(&live.names) = plan.names.clone();
        return Ok(plan.summary());
    };
    let have = our_routes(live, table);
    // (In the main table, default routes make a full tunnel, set up by `up` only.)
    let want = routed(live.config.interface.table, &plan.prefixes);
    let missing: Vec<_> = want
        .iter()
        .filter(|c| !have.iter().any(|(h, _)| h == *c))
        .copied()
        .collect();
    // A prefix the main table already routes through another interface would not reach the
    // tunnel (and adding ours would be refused): refuse the change before anything moves.
    if !missing.is_empty() && table == netlink::MAIN_TABLE {
        let elsewhere = netlink::main_routes_elsewhere(live.h, &dev)
            .await
            .map_err(|e| e.to_string())?;
        for c in &missing {
            if let Some((_, _, i)) = elsewhere
                .iter()
                .find(|(d, l, _)| *d == c.addr() && *l == c.prefix_len())
            {
                return Err(format!(
                    "{c} is already routed through another interface (index {i}), not {dev}"
                ));
            }
        }
    }
    let mut added = Vec::new();
    for c in &missing {
        let r = match injected_route_failure(c) {
            Some(e) => Err(e),
            None => add_peer_route(live.h, c, &dev, table)
                .await
                .map_err(|e| e.to_string()),
        };
        match r {
            Ok(Some(a)) => added.push(a),
            Ok(None) => {}
            Err(e) => {
                for a in added.iter().rev() {
                    if let Err(e) = del_peer_route(live.h, a).await {
                        warn!("taking back a route: {e}");
                    }
                }
                return Err(e);
            }
        }
    }
    for a in added {
        live.td.net(Some(a));
    }
    apply::apply_to_device(&live.device, &plan);
    refresh_switch(live);
    *write_lock(&live.names) = plan.names.clone();
    for (c, a) in have.iter().filter(|(c, _)| !want.contains(c)) {
        live.td.forget(a);
        // The device no longer routes there; a route that cannot be removed now goes with
        // the interface at exit.
        if let Err(e) = del_peer_route(live.h, a).await {
            warn!("removing the route to {c}: {e}");
        }
    }
    Ok(plan.summary())
}

/// Layer 2: the switch's peer rules, as the peers and the config are now.
pub(super) fn refresh_switch(live: &Live<'_>) {
    if let Some(s) = &live.switch {
        s.set_rules(super::layer2::rules(&live.config, &live.device, s));
    }
}

/// The peer set `config` asks for. With `previous` (the config in force), a peer's endpoint is
/// set only where the file changed it (or the peer is new to it): a peer that roamed keeps its
/// latest address across reloads that do not touch it.
pub(super) fn desired_peers(config: &Config, previous: Option<&Config>) -> Vec<apply::PeerSpec> {
    config
        .peers
        .iter()
        .map(|p| {
            let old = previous.and_then(|c| c.peers.iter().find(|o| o.public_key == p.public_key));
            apply::PeerSpec {
                public_key: p.public_key,
                name: p.name.clone(),
                preshared_key: p.preshared_key.clone(),
                endpoint: match old {
                    Some(o) if o.endpoint_text == p.endpoint_text => None,
                    _ => p.endpoint,
                },
                persistent_keepalive: p.persistent_keepalive,
                allowed_ips: p.allowed_ips.clone(),
            }
        })
        .collect()
}

/// SIGHUP / `reload`: re-reads the config and makes the peers what it says. Peers added,
/// removed or changed take effect; unchanged peers are not touched, so their sessions go on.
pub(super) async fn reload(live: &mut Live<'_>) -> Result<String, String> {
    // Debug builds only: the tests make sure a panic still ends in the teardown.
    #[cfg(debug_assertions)]
    if std::env::var_os("SUIDAO_TEST_PANIC_ON_RELOAD").is_some() {
        panic!("SUIDAO_TEST_PANIC_ON_RELOAD");
    }
    if live.managed == Managed::ByApi {
        let e = "there is no config file to re-read: this interface is configured through the userspace API (wg setconf, wg set)";
        warn!("reload refused: {e}");
        return Err(e.into());
    }
    notify::notify("RELOADING=1");
    let result = apply_reload(live).await;
    match &result {
        Ok(m) => info!("reload: {m}"),
        Err(e) => warn!("reload refused: {e}"),
    }
    notify::notify("READY=1");
    result
}

async fn apply_reload(live: &mut Live<'_>) -> Result<String, String> {
    let mut new = Config::load(&live.config.path).map_err(|e| e.to_string())?;
    for f in new.resolve() {
        warn!("reload: {f}: the peer has no endpoint until its name resolves");
    }
    let (old_i, new_i) = (&live.config.interface, &new.interface);
    if new_i.name != old_i.name {
        return Err("the interface name cannot change on reload (restart instead)".into());
    }
    if new_i.private_key.public_key() != old_i.private_key.public_key() {
        return Err("the private key cannot change on reload (restart instead)".into());
    }
    // Against the file the interface started with: a port moved by `wg set listen-port`
    // stays until a restart, and a reload of an unchanged file leaves it there.
    if new_i.listen_port != old_i.listen_port {
        return Err("the listen port cannot change on reload (restart instead)".into());
    }
    if new_i.l2.is_some() != old_i.l2.is_some() {
        return Err("the mode (l2 or l3) cannot change on reload (restart instead)".into());
    }
    if new_i.l2 != old_i.l2 {
        warn!("reload: changes to bridge, mac_age, max_macs, mac_table_size or flood_rate of [interface] take effect at the next restart (a peer's own limits take effect now)");
    }
    if new_i.addresses != old_i.addresses
        || new_i.mtu != old_i.mtu
        || new_i.hairpin != old_i.hairpin
        || full_tunnel(&new) != full_tunnel(&live.config)
        || new_i.table != old_i.table
        || new_i.fwmark != old_i.fwmark
        || new_i.dns != old_i.dns
    {
        warn!("reload: changes to address, mtu, hairpin, table, fwmark, dns or a full tunnel take effect at the next restart");
    }
    let desired = desired_peers(&new, Some(&live.config));
    let message = apply_peers(live, &desired).await?;
    if let Some(m) = &live.memory {
        m.set_config(&new);
    }
    let _ = live.hosts.send(hostnames(&new));
    live.config = new;
    refresh_switch(live);
    Ok(message)
}
