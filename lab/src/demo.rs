//! `suidao-lab demo`: build a topology, run suidao across it, show that it works, tear it all
//! down (or leave it up with `--keep`).

use crate::interrupt;
use crate::measure::{iperf3, ping_rtt, tcp_bps};
use crate::require::have_tool;
use crate::suidao::{Node, NodeSpec, Role, TempDir};
use crate::topology::{Lab, Spec};
use anyhow::{bail, Context, Result};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const PORT: u16 = 51820;

pub struct Options {
    pub spec: Spec,
    pub explain: bool,
    pub keep: bool,
}

/// One line of the summary table.
struct Row {
    pair: String,
    reachable: bool,
    rtt_ms: Option<f64>,
    throughput: Option<f64>,
    handshake: Option<u64>,
}

/// The host that has `addr` (on a link or as a tunnel address).
fn owner_of(spec: &Spec, addr: &str) -> Option<String> {
    let matches = |a: &String| a.split('/').next() == Some(addr);
    for l in &spec.links {
        for e in [&l.a, &l.b] {
            if e.addresses.iter().any(matches) {
                return Some(e.host.clone());
            }
        }
    }
    let vpn = spec.vpn.as_ref()?;
    std::iter::once(&vpn.server)
        .chain(&vpn.clients)
        .find(|n| n.tunnel.iter().any(matches))
        .map(|n| n.host.clone())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn step(n: usize, total: usize, what: &str) {
    println!("[{n}/{total}] {what}");
}

/// Runs the demo; true on PASS.
pub fn run(opts: Options) -> Result<bool> {
    let spec = opts.spec;
    let vpn = spec
        .vpn
        .clone()
        .context("this topology has no [vpn] section: nothing to demo")?;
    for tool in spec.tools().into_iter().chain(["ping"]) {
        if !have_tool(tool) {
            bail!(
                "the {} topology needs `{tool}` (Debian: apt-get install {})",
                spec.name,
                match tool {
                    "nft" => "nftables",
                    "ping" => "iputils-ping",
                    t => t,
                }
            );
        }
    }
    let total = 6;
    // A namespace that only holds a bridge is the switch, not a host.
    let switches: std::collections::HashSet<&str> =
        spec.bridges.iter().map(|b| b.host.as_str()).collect();
    let hosts = spec
        .hosts
        .iter()
        .filter(|h| !switches.contains(h.as_str()))
        .count();
    let switch_note = match switches.len() {
        0 => String::new(),
        1 => " and a switch, a bridge in a namespace of its own".into(),
        n => format!(" and {n} switches, bridges in namespaces of their own"),
    };
    println!(
        "suidao-lab demo: topology {} ({hosts} hosts{switch_note}; server on {}, {} client(s))",
        spec.name,
        vpn.server.host,
        vpn.clients.len()
    );
    step(
        1,
        total,
        "building the topology: namespaces, veth pairs, bridges, addresses, routes",
    );
    let mut lab = Lab::build(spec.clone(), opts.explain)?;
    interrupt::check()?;

    let dir = TempDir::new()?;
    step(
        2,
        total,
        &format!("writing keys and configs to {}", dir.path().display()),
    );
    let endpoint: std::net::IpAddr = vpn
        .endpoint
        .parse()
        .with_context(|| format!("vpn.endpoint {:?}: not an address", vpn.endpoint))?;
    let (server_spec, client_specs) = NodeSpec::server_and_clients(
        ["sdl", "sdl"],
        &vpn.server,
        &vpn.clients,
        std::net::SocketAddr::new(endpoint, PORT),
    )?;
    let server_cfg = server_spec.write(dir.path())?;
    if opts.explain {
        println!(
            "  $ suidao-server genkey > {0}.key; chmod 600 {0}.key   (and one per client)",
            server_spec.ifname
        );
    }
    interrupt::check()?;

    step(
        3,
        total,
        "starting suidao-server and suidao-client(s) inside their namespaces",
    );
    let server_ns = lab.ns(&vpn.server.host)?;
    if opts.explain {
        explain_config(&server_cfg)?;
        println!(
            "  $ ip netns exec {} suidao-server up -c {}",
            server_ns.name(),
            server_cfg.display()
        );
    }
    let mut server = Node::start(server_ns, Role::Server, &server_cfg, &server_spec.ifname)?;
    let mut clients = Vec::new();
    for (c, cs) in vpn.clients.iter().zip(&client_specs) {
        let cfg = cs.write(dir.path())?;
        let ns = lab.ns(&c.host)?;
        if opts.explain {
            explain_config(&cfg)?;
            println!(
                "  $ ip netns exec {} suidao-client up -c {}",
                ns.name(),
                cfg.display()
            );
        }
        clients.push((
            c.host.clone(),
            Node::start(ns, Role::Client, &cfg, &cs.ifname)?,
        ));
        interrupt::check()?;
    }

    step(4, total, "waiting for every client's handshake");
    let started = Instant::now();
    loop {
        interrupt::check()?;
        let done = clients
            .iter()
            .all(|(_, n)| n.handshakes().is_ok_and(|h| h.iter().all(|(_, t)| *t > 0)));
        if done {
            println!(
                "  all {} handshake(s) done in {:.2} s",
                clients.len(),
                started.elapsed().as_secs_f64()
            );
            break;
        }
        if started.elapsed() > Duration::from_secs(15) {
            println!("  not every client completed a handshake within 15 s");
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    step(5, total, "pinging across the tunnel");
    let mut rows = Vec::new();
    // The latest handshake of the client a pair goes through: the pinging host if it is a
    // client, else the client that owns the target address, else the first.
    let handshake_of = |host: &str, target: &str, clients: &[(String, Node)]| -> Option<u64> {
        let owner = owner_of(&spec, target);
        let node = clients
            .iter()
            .find(|(h, _)| h == host)
            .or_else(|| clients.iter().find(|(h, _)| Some(h) == owner.as_ref()))
            .or(clients.first())?;
        node.1.handshakes().ok()?.first().map(|(_, t)| *t)
    };
    for c in &vpn.checks {
        interrupt::check()?;
        let ns = lab.ns(&c.from)?;
        if opts.explain {
            println!("  $ ip netns exec {} ping -c 3 {}", ns.name(), c.to);
        }
        let rtt = ping_rtt(ns, &c.to, 3, "0.2")?;
        rows.push(Row {
            pair: format!("{} -> {}", c.from, c.to),
            reachable: rtt.is_some(),
            rtt_ms: rtt,
            throughput: None,
            handshake: handshake_of(&c.from, &c.to, &clients),
        });
    }
    if let Some(r) = &vpn.roam {
        interrupt::check()?;
        println!(
            "  roaming: {}'s outer address changes ({} -> {})",
            r.client, r.remove, r.add
        );
        let endpoint_of = |server: &Node| -> Option<String> {
            let v = server.status().ok()?;
            v["peers"]
                .as_array()?
                .iter()
                .find(|p| p["name"] == r.client.as_str())?["endpoint"]
                .as_str()
                .map(str::to_string)
        };
        let before = endpoint_of(&server);
        lab.change_address(&r.host, &r.dev, &r.add, &r.remove)?;
        let target = vpn
            .server
            .tunnel
            .first()
            .map(|t| t.split('/').next().unwrap_or(t).to_string());
        let target = target.context("the server has no tunnel address")?;
        let ns = lab.ns(&r.client)?;
        let t0 = Instant::now();
        let back = crate::suidao::ping_until(ns, &target, Duration::from_secs(10))?;
        let after = endpoint_of(&server);
        let moved = back && before.is_some() && after.is_some() && before != after;
        println!(
            "  the server saw {} at {} before and at {} after; traffic {} after {:.1} s",
            r.client,
            before.as_deref().unwrap_or("?"),
            after.as_deref().unwrap_or("?"),
            if back { "resumed" } else { "did NOT resume" },
            t0.elapsed().as_secs_f64()
        );
        rows.push(Row {
            pair: format!("{} -> {} after roaming", r.client, target),
            reachable: moved,
            rtt_ms: ping_rtt(ns, &target, 3, "0.2")?,
            throughput: None,
            handshake: handshake_of(&r.client, &target, &clients),
        });
    }

    step(6, total, "measuring throughput with iperf3");
    if let Some(t) = &vpn.throughput {
        if have_tool("iperf3") {
            interrupt::check()?;
            let server_host = owner_of(&spec, &t.to).unwrap_or_else(|| vpn.server.host.clone());
            if opts.explain {
                println!(
                    "  $ ip netns exec {} iperf3 -c {} -t 2",
                    lab.ns(&t.from)?.name(),
                    t.to
                );
            }
            match iperf3(lab.ns(&server_host)?, lab.ns(&t.from)?, &t.to, &["-t", "2"]) {
                Ok(report) => {
                    let bps = tcp_bps(&report);
                    let pair = format!("{} -> {}", t.from, t.to);
                    match rows.iter_mut().find(|r| r.pair == pair) {
                        Some(r) => r.throughput = Some(bps),
                        None => rows.push(Row {
                            pair,
                            reachable: bps > 0.0,
                            rtt_ms: None,
                            throughput: Some(bps),
                            handshake: handshake_of(&t.from, &t.to, &clients),
                        }),
                    }
                }
                Err(e) => println!("  iperf3 failed: {e:#}"),
            }
        } else {
            println!("  (iperf3 is not installed: skipped)");
        }
    }

    let pass = !rows.is_empty() && rows.iter().all(|r| r.reachable);
    println!();
    println!(
        "{:<42} {:<10} {:>10} {:>14} {:>18}",
        "pair", "reachable", "rtt", "throughput", "latest handshake"
    );
    let now = now_secs();
    for r in &rows {
        println!(
            "{:<42} {:<10} {:>10} {:>14} {:>18}",
            r.pair,
            if r.reachable { "yes" } else { "NO" },
            r.rtt_ms.map_or("-".into(), |v| format!("{v:.3} ms")),
            r.throughput
                .map_or("-".into(), |v| format!("{:.0} Mbit/s", v / 1e6)),
            r.handshake
                .filter(|t| *t > 0)
                .map_or("never".into(), |t| format!(
                    "{} s ago",
                    now.saturating_sub(t)
                )),
        );
    }
    println!();
    if !pass {
        println!("--- server log ---\n{}", server.log());
        for (h, c) in &clients {
            println!("--- {h} log ---\n{}", c.log());
        }
    }
    println!("{}", if pass { "PASS" } else { "FAIL" });

    if opts.keep {
        lab.keep();
        let kept = dir.keep();
        server.detach();
        for (_, c) in &mut clients {
            c.detach();
        }
        println!("\nThe lab is still up. Explore it:");
        println!("  ip netns list | grep {}", lab.stem);
        if let Some(c) = vpn.checks.first() {
            println!("  ip netns exec {} ping {}", lab.ns(&c.from)?.name(), c.to);
        }
        println!(
            "  ip netns exec {} ip addr show {}",
            lab.ns(&vpn.server.host)?.name(),
            server_spec.ifname
        );
        println!(
            "  wg show {}            (suidao speaks the WireGuard userspace API)",
            server_spec.ifname
        );
        println!("  suidao-server status {}", server_spec.ifname);
        println!("  configs and logs: {}", kept.display());
        println!("Remove it all with: suidao-lab down");
    } else {
        // Guards drop in reverse: processes stop (and remove what they added), then the
        // configs go, then the namespaces.
        drop(clients);
        drop(server);
        drop(dir);
        drop(lab);
        println!("torn down: every namespace, link and process the demo made is gone");
    }
    Ok(pass)
}

/// `--explain`: the config a suidao gets (its key stays in its own file) and what `up` will
/// put on its interface.
fn explain_config(path: &std::path::Path) -> Result<()> {
    let text = std::fs::read_to_string(path)?;
    println!("  # {}:", path.display());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        println!("  #   {line}");
    }
    let config = suidao_common::config::Config::load(path)?;
    let name = &config.interface.name;
    for a in &config.interface.addresses {
        println!("  # up adds: ip addr add {a} dev {name}");
    }
    for r in suidao_common::engine::planned_routes(&config) {
        println!("  # up adds: ip route add {r} dev {name}");
    }
    Ok(())
}
