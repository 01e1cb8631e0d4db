//! `check`: what `up` would do, for a person to read.

use super::setup::{full_tunnel, planned_routes, socket_mark};
use crate::config::{Config, Table};
use crate::netlink;

/// `check`: what `up` would do, for a person to read.
pub fn describe(config: &Config) -> String {
    let i = &config.interface;
    let mut s = format!(
        "interface {}\n  public key   {}\n  listen port  {}\n  mtu          {}\n",
        i.name,
        i.private_key.public_key(),
        i.listen_port
            .map_or("random".to_string(), |p| p.to_string()),
        i.mtu
    );
    if let Some(l2) = &i.l2 {
        s.push_str(&format!(
            "  mode         l2: a TAP (MTU {}), Ethernet frames switched by MAC; MACs kept {} s, at most {} per peer and {} in all; {} flooded frames/s per peer\n",
            i.device_mtu(),
            l2.mac_age.as_secs(),
            l2.max_macs,
            l2.mac_table_size,
            l2.flood_rate
        ));
        if let Some(b) = &l2.bridge {
            s.push_str(&format!(
                "  bridge       {b} (the TAP joins it; taken out at exit)\n"
            ));
        }
    }
    match i.workers {
        Some(n) => s.push_str(&format!("  workers      {n}\n")),
        None => s.push_str(&format!(
            "  workers      {} (one per two CPUs)\n",
            crate::config::default_workers()
        )),
    }
    for a in &i.addresses {
        s.push_str(&format!("  address      {a}\n"));
    }
    let table = match i.table {
        Table::Id(n) if n != netlink::MAIN_TABLE => format!(" table {n}"),
        _ => String::new(),
    };
    if i.table == Table::Off {
        s.push_str("  routes       none (table = \"off\")\n");
    }
    for r in planned_routes(config) {
        s.push_str(&format!("  route        {r} dev {}{table}\n", i.name));
    }
    if let Some(m) = i.fwmark {
        s.push_str(&format!(
            "  fwmark       {m} (0x{m:x}) on the UDP sockets\n"
        ));
    }
    let (v4, v6) = full_tunnel(config);
    for (on, family) in [(v4, "IPv4"), (v6, "IPv6")] {
        if on {
            s.push_str(&format!(
                "  full tunnel  {family}: default route dev {} in table {t}, rules `not fwmark {m}` and `main suppress_prefixlength 0`\n",
                i.name,
                t = netlink::FULL_TUNNEL_TABLE,
                m = socket_mark(config).unwrap_or(netlink::FULL_TUNNEL_TABLE)
            ));
        }
    }
    if !i.dns.is_empty() {
        if !i.dns.servers.is_empty() {
            let servers: Vec<String> = i.dns.servers.iter().map(|s| s.to_string()).collect();
            s.push_str(&format!("  dns          {}\n", servers.join(", ")));
        }
        if !i.dns.search.is_empty() {
            s.push_str(&format!("  search       {}\n", i.dns.search.join(" ")));
        }
    }
    // Relaying between peers needs two of them.
    if config.peers.len() > 1 {
        s.push_str(&format!(
            "  hairpin      {}\n",
            if i.hairpin {
                "on (peers reach each other through this host)"
            } else {
                "off"
            }
        ));
    }
    // Hooks run as root: show every command.
    for (when, commands) in [
        ("pre_up", &i.hooks.pre_up),
        ("post_up", &i.hooks.post_up),
        ("pre_down", &i.hooks.pre_down),
        ("post_down", &i.hooks.post_down),
    ] {
        for c in commands {
            s.push_str(&format!("  {when:<12} {c}\n"));
        }
    }
    for p in &config.peers {
        s.push_str(&format!(
            "peer {}\n  public key   {}\n",
            p.label(),
            p.public_key
        ));
        if let Some(e) = &p.endpoint_text {
            s.push_str(&format!("  endpoint     {e}"));
            if let Some(a) = p.endpoint {
                if a.to_string() != *e {
                    s.push_str(&format!(" ({a})"));
                }
            }
            s.push('\n');
        }
        if i.l2.is_some() {
            let macs: Vec<String> =
                p.l2.allowed_macs
                    .iter()
                    .map(suidao_proto::l2::mac_to_string)
                    .collect();
            s.push_str(&format!(
                "  allowed macs {}\n",
                if macs.is_empty() {
                    "any".into()
                } else {
                    macs.join(", ")
                }
            ));
            for (key, v) in [
                ("max macs", p.l2.max_macs.map(|n| n.to_string())),
                ("flood rate", p.l2.flood_rate.map(|n| format!("{n}/s"))),
            ] {
                if let Some(v) = v {
                    s.push_str(&format!("  {key:<12} {v}\n"));
                }
            }
        }
        let ips: Vec<String> = p.allowed_ips.iter().map(|c| c.to_string()).collect();
        if i.l2.is_none() {
            s.push_str(&format!(
                "  allowed ips  {}\n",
                if ips.is_empty() {
                    "(none)".into()
                } else {
                    ips.join(", ")
                }
            ));
        }
        if p.preshared_key.is_some() {
            s.push_str("  preshared key  yes\n");
        }
        if let Some(k) = p.persistent_keepalive {
            s.push_str(&format!("  keepalive    every {} s\n", k.as_secs()));
        }
    }
    s
}
