//! `suidao-lab bench`: on the `p2p` topology, side by side in one run, the raw veth link,
//! suidao, suidao-wg, wireguard-go and boringtun (each when installed): iperf3 TCP with 1 and 4
//! streams, UDP with 64-byte payloads at full rate (delivered packets per second). Several
//! repetitions, interleaved (the order rotated from one to the next) so that the machine's
//! noise spreads evenly; medians and ratios. Then the round trip, in rounds of 20 pings 50 ms
//! apart through each tunnel in turn, the order rotated (see `round_trips`).
//! Then, every tunnel idle at once after one ping, how often each tunnel process wakes
//! (context switches of all its threads per second, over IDLE_SECONDS). Last, on the `hub`
//! topology (a server and two clients on a bridge), one TCP stream client → server beside one
//! client → client, which the server relays (hairpin).

use crate::interrupt;
use crate::measure::{
    context_switches, cpu_seconds, iperf3, median, paired_ratio, ping_rtt, tcp_bps, udp_pps,
};
use crate::require::have_tool;
use crate::suidao::{NodeSpec, Role, TempDir};
use crate::topology::P2p;
use crate::wggo::{Userspace, WireguardGo};
use anyhow::{bail, Result};
use serde_json::json;
use std::net::SocketAddr;

/// The idle spell over which wake-ups are counted.
const IDLE_SECONDS: u64 = 20;

pub struct Options {
    pub reps: usize,
    pub seconds: u32,
    pub json: bool,
    /// `workers` for both suidao ends (None: suidao's default).
    pub workers: Option<u32>,
    /// Another build of suidao, measured beside this one as "suidao before".
    pub before: Option<std::path::PathBuf>,
    /// Only the hub row.
    pub hub_only: bool,
    /// Layer 2 beside layer 3: a suidao pair in `mode = "l2"` measured beside the layer-3
    /// one (the other implementations and the hub left out).
    pub l2: bool,
}

/// The figures of one target.
#[derive(Default, Clone)]
struct Figures {
    tcp1: Vec<f64>,
    /// CPU seconds both tunnel processes spent per gigabyte of the 1-stream TCP run.
    cpu_per_gb: Vec<f64>,
    tcp4: Vec<f64>,
    udp64: Vec<f64>,
    rtt: Vec<f64>,
    /// Context switches per second of one tunnel process, idle (the mean of both ends).
    idle_wakeups: f64,
}

struct Target {
    name: &'static str,
    /// The address iperf3 and ping aim at (on the server side).
    addr: String,
    /// The tunnel's processes (both ends), for CPU accounting; none for the raw link.
    pids: Vec<u32>,
    figures: Figures,
}

fn measure(lab: &P2p, t: &mut Target, seconds: u32, progress: bool) -> Result<()> {
    let secs = seconds.to_string();
    let (s, c) = (&lab.server.ns, &lab.client.ns);
    let run = |args: &[&str]| iperf3(s, c, &t.addr, args);
    let cpu_before = cpu_seconds(&t.pids);
    let tcp1_report = run(&["-t", &secs])?;
    let cpu = cpu_seconds(&t.pids) - cpu_before;
    let tcp1 = missing_if_zero(tcp_bps(&tcp1_report), t.name, "tcp1", &tcp1_report);
    let bytes = tcp1_report["end"]["sum_received"]["bytes"]
        .as_f64()
        .unwrap_or(0.0);
    let cpu_per_gb = if t.pids.is_empty() || bytes <= 0.0 || tcp1.is_nan() {
        f64::NAN
    } else {
        cpu / (bytes / 1e9)
    };
    interrupt::check()?;
    let tcp4_report = run(&["-t", &secs, "-P", "4"])?;
    let tcp4 = missing_if_zero(tcp_bps(&tcp4_report), t.name, "tcp4", &tcp4_report);
    interrupt::check()?;
    let udp = udp_pps(&run(&["-t", &secs, "-u", "-b", "0", "-l", "64"])?);
    if progress {
        eprintln!(
            "  {:<13} tcp1 {:>8.0} Mbit/s  tcp4 {:>8.0} Mbit/s  udp64 {:>9.0} pkt/s  cpu {:.2} s/GB",
            t.name,
            tcp1 / 1e6,
            tcp4 / 1e6,
            udp,
            cpu_per_gb
        );
    }
    t.figures.tcp1.push(tcp1);
    t.figures.cpu_per_gb.push(cpu_per_gb);
    t.figures.tcp4.push(tcp4);
    t.figures.udp64.push(udp);
    Ok(())
}

/// Pings per round trip figure, and how far apart: a round trip from a tunnel that has been
/// idle for a moment (its threads asleep, as for a keystroke or a request), not one inside a
/// stream of pings 10 ms apart.
const RTT_PINGS: u32 = 20;
const RTT_INTERVAL: &str = "0.05";

/// The round trip: `rounds` rounds, each `RTT_PINGS` pings through every target in turn, the
/// order rotated from round to round, all after the throughput runs (a ping right after a
/// flood measures what the flood left behind). One figure per round and target: the mean of
/// its pings; the table gives the median of the rounds. Side by side like this, the noise of
/// the machine (which moves single runs by 30% here) falls on every target alike; the ratios
/// between tunnels are also given round by round (`paired_ratio`), which cancels the drift
/// of the machine's load over the minutes of the run.
fn round_trips(lab: &P2p, targets: &mut [Target], rounds: usize, progress: bool) -> Result<()> {
    let n = targets.len();
    for round in 0..rounds {
        let mut line = String::new();
        for k in 0..n {
            interrupt::check()?;
            let t = &mut targets[(round + k) % n];
            let rtt =
                ping_rtt(&lab.client.ns, &t.addr, RTT_PINGS, RTT_INTERVAL)?.unwrap_or(f64::NAN);
            t.figures.rtt.push(rtt);
            line.push_str(&format!("  {} {rtt:.3}", t.name));
        }
        if progress {
            eprintln!("  round trip {}/{rounds} (ms):{line}", round + 1);
        }
    }
    Ok(())
}

/// A run that moved nothing (iperf3 finished, but its report has no received bytes: a
/// control connection that failed, say) is left out of the medians, and said so, rather than
/// counted as a zero.
fn missing_if_zero(bps: f64, target: &str, what: &str, report: &serde_json::Value) -> f64 {
    if bps > 0.0 {
        return bps;
    }
    eprintln!(
        "  ({target} {what}: iperf3 reported nothing received ({}); left out)",
        report["error"].as_str().unwrap_or("no error given")
    );
    f64::NAN
}

/// Every tunnel idle at once: one ping through each (sessions up, timers armed), then the
/// context switches of their processes over IDLE_SECONDS.
fn idle_wakeups(lab: &P2p, targets: &mut [Target]) -> Result<()> {
    for t in targets.iter().filter(|t| !t.pids.is_empty()) {
        ping_rtt(&lab.client.ns, &t.addr, 1, "0.2")?;
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    let before: Vec<u64> = targets.iter().map(|t| context_switches(&t.pids)).collect();
    for _ in 0..IDLE_SECONDS {
        interrupt::check()?;
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    for (t, b) in targets.iter_mut().zip(before) {
        if !t.pids.is_empty() {
            let n = context_switches(&t.pids).saturating_sub(b) as f64;
            t.figures.idle_wakeups = n / IDLE_SECONDS as f64 / t.pids.len() as f64;
        }
    }
    Ok(())
}

/// The hub: one TCP stream from client 1 to the server, and one to client 2 through the
/// server's relay, interleaved; medians and their ratio.
fn hub(opts: &Options) -> Result<()> {
    let vpn = crate::vpn::HubVpn::start(2)?;
    let client2 = crate::vpn::hub_client_v4(2);
    for addr in ["10.99.0.1", client2.as_str()] {
        if !crate::suidao::ping_until(
            &vpn.lab.clients[0].ns,
            addr,
            std::time::Duration::from_secs(10),
        )? {
            bail!("hub: {addr} does not answer through the tunnel");
        }
    }
    let secs = opts.seconds.to_string();
    let (mut direct, mut relayed) = (Vec::new(), Vec::new());
    for rep in 1..=opts.reps {
        interrupt::check()?;
        let to_server = iperf3(
            &vpn.lab.server.ns,
            &vpn.lab.clients[0].ns,
            "10.99.0.1",
            &["-t", &secs],
        )?;
        let d = missing_if_zero(tcp_bps(&to_server), "hub", "client → server", &to_server);
        interrupt::check()?;
        let to_client = iperf3(
            &vpn.lab.clients[1].ns,
            &vpn.lab.clients[0].ns,
            &client2,
            &["-t", &secs],
        )?;
        let r = missing_if_zero(tcp_bps(&to_client), "hub", "client → client", &to_client);
        if !opts.json {
            eprintln!(
                "  hub {rep}/{}     client → server {:>8.0} Mbit/s  client → client {:>8.0} Mbit/s",
                opts.reps,
                d / 1e6,
                r / 1e6
            );
        }
        direct.push(d);
        relayed.push(r);
    }
    let (d, r) = (median(&direct), median(&relayed));
    if opts.json {
        println!(
            "{}",
            json!({"hub": {"client_to_server_bps": d, "client_to_client_bps": r, "relayed_over_direct": ratio(r, d),
                           "runs": {"client_to_server_bps": direct, "client_to_client_bps": relayed}}})
        );
    } else {
        println!("\n| hub, one TCP stream | client → server | client → client (relayed by the server) | relayed / direct |");
        println!("|---|---|---|---|");
        println!(
            "| suidao | {:.0} Mbit/s | {:.0} Mbit/s | {} |",
            d / 1e6,
            r / 1e6,
            ratio(r, d).map_or("-".into(), |v| format!("{v:.2}x"))
        );
    }
    Ok(())
}

/// The other build's server and client, on 10.96.0.0/24, port 51850.
fn start_before(
    lab: &P2p,
    bin: &std::path::Path,
    opts: &Options,
    dir: &std::path::Path,
) -> Result<Vec<crate::suidao::Node>> {
    let (mut server, mut client) = NodeSpec::pair(
        ["sdb", "sdb"],
        &["10.96.0.1/24"],
        &["10.96.0.2/24"],
        SocketAddr::new(lab.server.v4, 51850),
        &["10.96.0.0/24"],
    )?;
    if let Some(n) = opts.workers {
        for spec in [&mut server, &mut client] {
            spec.extra.push_str(&format!("workers = {n}\n"));
        }
    }
    let mut nodes = Vec::new();
    for (spec, role, ns) in [
        (&server, Role::Server, &lab.server.ns),
        (&client, Role::Client, &lab.client.ns),
    ] {
        let config = spec.write(dir)?;
        let binary = bin.join(role.binary());
        nodes.push(crate::suidao::Node::start_from(
            ns,
            role,
            &config,
            &spec.ifname,
            &binary,
        )?);
    }
    Ok(nodes)
}

/// A suidao pair in layer-2 mode on 10.94.0.0/24 (the addresses on the TAPs), port 51870.
fn start_l2(lab: &P2p, opts: &Options, dir: &std::path::Path) -> Result<Vec<crate::suidao::Node>> {
    let (mut server, mut client) = NodeSpec::pair(
        ["sdk", "sdk"],
        &["10.94.0.1/24"],
        &["10.94.0.2/24"],
        SocketAddr::new(lab.server.v4, 51870),
        &[],
    )?;
    for spec in [&mut server, &mut client] {
        spec.mode = Some("l2".into());
        for p in &mut spec.peers {
            p.allowed_ips.clear();
        }
        if let Some(n) = opts.workers {
            spec.extra.push_str(&format!("workers = {n}\n"));
        }
    }
    Ok(vec![
        server.start(&lab.server.ns, Role::Server, dir)?,
        client.start(&lab.client.ns, Role::Client, dir)?,
    ])
}

/// A userspace WireGuard pair on 10.NET.0.0/24: the server end on the server side (`port`),
/// the client end keeping the path open.
fn start_pair(lab: &P2p, kind: Userspace, net: u8, port: u16) -> Result<Vec<WireguardGo>> {
    // Described as suidao's own pair is: the same NodeSpec, started by another program.
    let (server, client) = NodeSpec::pair(
        ["wgs", "wgc"],
        &[&format!("10.{net}.0.1/24")],
        &[&format!("10.{net}.0.2/24")],
        SocketAddr::new(lab.server.v4, port),
        &[&format!("10.{net}.0.0/24")],
    )?;
    Ok(vec![
        WireguardGo::start_as(kind, &lab.server.ns, &server)?,
        WireguardGo::start_as(kind, &lab.client.ns, &client)?,
    ])
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

pub fn run(opts: Options) -> Result<()> {
    for tool in ["iperf3", "ping"] {
        if !have_tool(tool) {
            bail!("bench needs `{tool}`");
        }
    }
    if opts.hub_only {
        return hub(&opts);
    }
    let lab = P2p::new()?;
    let dir = TempDir::new()?;

    // suidao on 10.99.0.0/24, port 51820.
    let (mut server, mut client) = NodeSpec::pair(
        ["sdl", "sdl"],
        &["10.99.0.1/24"],
        &["10.99.0.2/24"],
        SocketAddr::new(lab.server.v4, 51820),
        &["10.99.0.0/24"],
    )?;
    if let Some(n) = opts.workers {
        for spec in [&mut server, &mut client] {
            spec.extra.push_str(&format!("workers = {n}\n"));
        }
    }
    let suidao_server = server.start(&lab.server.ns, Role::Server, dir.path())?;
    let suidao_client = client.start(&lab.client.ns, Role::Client, dir.path())?;
    // The other build, on 10.96.0.0/24, port 51850.
    let before = match &opts.before {
        Some(bin) => Some(start_before(&lab, bin, &opts, dir.path())?),
        None => None,
    };
    // Layer 2 on 10.94.0.0/24 (addresses on the TAPs), port 51870; and the alternative, a
    // VXLAN segment over the layer-3 tunnel (10.93.0.0/24 on vx0, MTU 1370).
    let l2 = if opts.l2 {
        for (ns, ends, addr) in [
            (&lab.server.ns, ("10.99.0.1", "10.99.0.2"), "10.93.0.1/24"),
            (&lab.client.ns, ("10.99.0.2", "10.99.0.1"), "10.93.0.2/24"),
        ] {
            crate::l2::vxlan(
                None,
                ns,
                "vx0",
                ends,
                crate::l2::VXLAN_MTU,
                None,
                Some(addr),
            )?;
        }
        Some(start_l2(&lab, &opts, dir.path())?)
    } else {
        None
    };

    // suidao-wg (suidao's data path configured through `wg set`, as under wg-quick) on
    // 10.95.0.0/24, port 51860; wireguard-go on 10.98.0.0/24, port 51830; boringtun on
    // 10.97.0.0/24, port 51840.
    let others: Vec<(Userspace, &'static str, u8, u16)> = [
        (Userspace::SuidaoWg, "suidao-wg", 95, 51860),
        (Userspace::WireguardGo, "wireguard-go", 98, 51830),
        (Userspace::Boringtun, "boringtun", 97, 51840),
    ]
    .into_iter()
    .filter(|_| !opts.l2)
    .filter(|(kind, ..)| {
        let there = match kind {
            Userspace::SuidaoWg => crate::suidao::bin_path(kind.program()).is_ok(),
            _ => have_tool(kind.program()),
        } && have_tool("wg");
        if !there && !opts.json {
            eprintln!(
                "({} is not installed: left out of the comparison)",
                kind.program()
            );
        }
        there
    })
    .collect();
    let mut running = Vec::new();
    for (kind, name, net, port) in &others {
        running.push((*name, start_pair(&lab, *kind, *net, *port)?));
    }
    // Every tunnel up before measuring.
    for addr in std::iter::once("10.99.0.1".to_string())
        .chain(before.is_some().then(|| "10.96.0.1".to_string()))
        .chain(l2.is_some().then(|| "10.94.0.1".to_string()))
        .chain(l2.is_some().then(|| "10.93.0.1".to_string()))
        .chain(others.iter().map(|(_, _, net, _)| format!("10.{net}.0.1")))
    {
        if !crate::suidao::ping_until(&lab.client.ns, &addr, std::time::Duration::from_secs(10))? {
            bail!("the tunnel to {addr} does not come up");
        }
    }

    let mut targets = vec![
        Target {
            name: "raw veth",
            addr: lab.server.v4.to_string(),
            pids: vec![],
            figures: Figures::default(),
        },
        Target {
            name: "suidao",
            addr: "10.99.0.1".into(),
            pids: [suidao_server.process.pid(), suidao_client.process.pid()]
                .into_iter()
                .flatten()
                .collect(),
            figures: Figures::default(),
        },
    ];
    if let Some(nodes) = &l2 {
        targets.push(Target {
            name: "suidao l2",
            addr: "10.94.0.1".into(),
            pids: nodes.iter().filter_map(|n| n.process.pid()).collect(),
            figures: Figures::default(),
        });
        targets.push(Target {
            name: "vxlan over suidao",
            addr: "10.93.0.1".into(),
            pids: targets[1].pids.clone(),
            figures: Figures::default(),
        });
    }
    if let Some(nodes) = &before {
        targets.push(Target {
            name: "suidao before",
            addr: "10.96.0.1".into(),
            pids: nodes.iter().filter_map(|n| n.process.pid()).collect(),
            figures: Figures::default(),
        });
    }
    for ((_, _, net, _), (name, pair)) in others.iter().zip(&running) {
        targets.push(Target {
            name,
            addr: format!("10.{net}.0.1"),
            pids: pair.iter().filter_map(|w| w.pid()).collect(),
            figures: Figures::default(),
        });
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let workers = opts
        .workers
        .map_or_else(suidao_common::config::default_workers, |n| n as usize);
    if !opts.json {
        eprintln!(
            "suidao-lab bench: p2p, {} repetition(s) of {} s per iperf3 run, {cores} cores, suidao workers {workers}",
            opts.reps, opts.seconds
        );
    }
    for rep in 1..=opts.reps {
        if !opts.json {
            eprintln!("repetition {rep}/{}", opts.reps);
        }
        // The order rotated from one repetition to the next, as for the round trips: a target
        // measured right after another (the raw link's flood, say) does not always follow it.
        let n = targets.len();
        for k in 0..n {
            interrupt::check()?;
            measure(
                &lab,
                &mut targets[(rep - 1 + k) % n],
                opts.seconds,
                !opts.json,
            )?;
        }
    }

    // Four rounds per repetition (at least six): about 1 s per target and round.
    let rounds = (4 * opts.reps).max(6);
    if !opts.json {
        eprintln!(
            "round trip: {rounds} rounds of {RTT_PINGS} pings {RTT_INTERVAL} s apart per target, the order rotated"
        );
    }
    round_trips(&lab, &mut targets, rounds, !opts.json)?;

    if !opts.json {
        eprintln!("idle: one ping each, then {IDLE_SECONDS} s of nothing");
    }
    idle_wakeups(&lab, &mut targets)?;

    let med = |t: &Target| {
        (
            median(&t.figures.tcp1),
            median(&t.figures.tcp4),
            median(&t.figures.udp64),
            median(&t.figures.rtt),
        )
    };
    let cpu = |t: &Target| median(&t.figures.cpu_per_gb);
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let raw = med(&targets[0]);
    let sd = med(&targets[1]);
    if opts.json {
        let mut results = serde_json::Map::new();
        for t in &targets {
            let (a, b, c, d) = med(t);
            results.insert(
                t.name.into(),
                json!({"tcp1_bps": a, "tcp4_bps": b, "udp64_pps": c, "rtt_ms": d,
                       "cpu_seconds_per_gb": if t.pids.is_empty() { None } else { Some(cpu(t)) },
                       "idle_wakeups_per_s": if t.pids.is_empty() { None } else { Some(t.figures.idle_wakeups) },
                       "runs": {"tcp1_bps": t.figures.tcp1, "tcp4_bps": t.figures.tcp4,
                                "udp64_pps": t.figures.udp64, "rtt_ms": t.figures.rtt,
                                "cpu_seconds_per_gb": t.figures.cpu_per_gb}}),
            );
        }
        let mut ratios = json!({
            "suidao/raw": {"tcp1": ratio(sd.0, raw.0), "tcp4": ratio(sd.1, raw.1), "udp64": ratio(sd.2, raw.2), "rtt": ratio(sd.3, raw.3)}
        });
        if let Some(t) = targets.iter().find(|t| t.name == "suidao l2") {
            let w = med(t);
            ratios["suidao l2/suidao"] = json!({"tcp1": ratio(w.0, sd.0), "tcp4": ratio(w.1, sd.1), "udp64": ratio(w.2, sd.2), "rtt": ratio(w.3, sd.3)});
        }
        for t in targets[2..]
            .iter()
            .filter(|t| t.name != "suidao l2" && t.name != "vxlan over suidao")
        {
            let w = med(t);
            ratios[format!("suidao/{}", t.name)] = json!({"tcp1": ratio(sd.0, w.0), "tcp4": ratio(sd.1, w.1), "udp64": ratio(sd.2, w.2), "rtt": ratio(sd.3, w.3),
                                                          "rtt_per_round": paired_ratio(&targets[1].figures.rtt, &t.figures.rtt),
                                                          "cpu_per_gb": ratio(cpu(&targets[1]), cpu(t))});
        }
        println!(
            "{}",
            json!({"date": date, "cores": cores, "workers": workers, "repetitions": opts.reps, "seconds": opts.seconds,
                   "medians": results, "ratios": ratios})
        );
    } else {
        println!(
            "\nsuidao-lab bench, {date}, {cores} cores, suidao workers {workers}, medians of {} repetitions:\n",
            opts.reps
        );
        println!("| target | TCP 1 stream | TCP 4 streams | UDP 64 B delivered | ping RTT | CPU per GB (TCP 1 stream, both ends) | idle wake-ups/s per process |");
        println!("|---|---|---|---|---|---|---|");
        for t in &targets {
            let (a, b, c, d) = med(t);
            let (per_gb, idle) = if t.pids.is_empty() {
                ("-".to_string(), "-".to_string())
            } else {
                (
                    format!("{:.2} s", cpu(t)),
                    format!("{:.1}", t.figures.idle_wakeups),
                )
            };
            println!(
                "| {} | {:.0} Mbit/s | {:.0} Mbit/s | {:.0} pkt/s | {:.3} ms | {per_gb} | {idle} |",
                t.name,
                a / 1e6,
                b / 1e6,
                c,
                d
            );
        }
        let fmt = |r: Option<f64>| r.map_or("-".into(), |v| format!("{v:.2}x"));
        println!(
            "| suidao / raw | {} | {} | {} | {} | | |",
            fmt(ratio(sd.0, raw.0)),
            fmt(ratio(sd.1, raw.1)),
            fmt(ratio(sd.2, raw.2)),
            fmt(ratio(sd.3, raw.3))
        );
        if let Some(t) = targets.iter().find(|t| t.name == "suidao l2") {
            let w = med(t);
            println!(
                "| suidao l2 / suidao | {} | {} | {} | {} | {} | {} |",
                fmt(ratio(w.0, sd.0)),
                fmt(ratio(w.1, sd.1)),
                fmt(ratio(w.2, sd.2)),
                fmt(ratio(w.3, sd.3)),
                fmt(ratio(cpu(t), cpu(&targets[1]))),
                fmt(ratio(
                    t.figures.idle_wakeups,
                    targets[1].figures.idle_wakeups
                ))
            );
        }
        if let (Some(l2t), Some(vx)) = (
            targets.iter().find(|t| t.name == "suidao l2"),
            targets.iter().find(|t| t.name == "vxlan over suidao"),
        ) {
            let (w, v) = (med(l2t), med(vx));
            println!(
                "| suidao l2 / vxlan over suidao | {} | {} | {} | {} | | |",
                fmt(ratio(w.0, v.0)),
                fmt(ratio(w.1, v.1)),
                fmt(ratio(w.2, v.2)),
                fmt(ratio(w.3, v.3))
            );
        }
        for t in targets[2..]
            .iter()
            .filter(|t| t.name != "suidao l2" && t.name != "vxlan over suidao")
        {
            let w = med(t);
            println!(
                "| suidao / {} | {} | {} | {} | {} (per round {}) | {} | {} |",
                t.name,
                fmt(ratio(sd.0, w.0)),
                fmt(ratio(sd.1, w.1)),
                fmt(ratio(sd.2, w.2)),
                fmt(ratio(sd.3, w.3)),
                fmt(paired_ratio(&targets[1].figures.rtt, &t.figures.rtt)),
                fmt(ratio(cpu(&targets[1]), cpu(t))),
                fmt(ratio(
                    targets[1].figures.idle_wakeups,
                    t.figures.idle_wakeups
                ))
            );
        }
        if targets.len() == 2 {
            println!("\n(neither wireguard-go nor boringtun is installed: no comparison)");
        }
    }
    drop(running);
    drop(before);
    drop(l2);
    if !opts.l2 {
        hub(&opts)?;
    }
    drop(suidao_client);
    drop(suidao_server);
    drop(dir);
    drop(lab);
    Ok(())
}
