//! `suidao-lab demo l2`: one LAN at two sites. Each site is a bridge with two hosts on it and a
//! gateway running suidao in layer-2 mode, its TAP in the bridge; all four hosts are on
//! 10.50.0.0/24. The demo shows what only a layer-2 tunnel carries: ARP resolving across it, a
//! broadcast reaching every host, IPv6 neighbour discovery to a link-local address, and a host
//! at site B getting its address by DHCP from dnsmasq at site A.

use crate::interrupt;
use crate::l2::{self, LanVpn, LAN_MTU};
use crate::require::have_tool;
use anyhow::{bail, Result};
use std::time::Duration;

fn step(n: usize, total: usize, what: &str) {
    println!("[{n}/{total}] {what}");
}

/// One check of the summary.
struct Row {
    what: String,
    pass: bool,
    detail: String,
}

/// Prints the table of checks (and `logs` if one failed); whether all passed.
fn summary(rows: &[Row], logs: impl FnOnce() -> String) -> bool {
    println!("\n{:<28} {:<6} detail", "check", "result");
    for r in rows {
        println!(
            "{:<28} {:<6} {}",
            r.what,
            if r.pass { "ok" } else { "FAIL" },
            r.detail
        );
    }
    let pass = rows.iter().all(|r| r.pass);
    if !pass {
        println!("\n{}", logs());
    }
    pass
}

/// Runs the demo; true on PASS.
pub fn run(explain: bool, keep: bool) -> Result<bool> {
    for (tool, pkg) in [
        ("ping", "iputils-ping"),
        ("dnsmasq", "dnsmasq-base"),
        ("busybox", "busybox"),
    ] {
        if !have_tool(tool) {
            bail!("demo l2 needs `{tool}` (Debian: apt-get install {pkg})");
        }
    }
    let total = 6;
    println!(
        "suidao-lab demo l2: one Ethernet segment (10.50.0.0/24) at two sites, joined by suidao in layer-2 mode"
    );
    println!(
        "\n  [a1]--+                                    +--[b1]\n        [gw-a: br0 + TAP]==(WAN)==[gw-b: br0 + TAP]\n  [a2]--+                                    +--[b2]\n"
    );
    step(
        1,
        total,
        "building both sites (namespaces, veth pairs, bridges, MTU 1405) and starting suidao with mode = \"l2\", bridge = \"br0\" on each gateway",
    );
    let vpn = LanVpn::start(2, explain)?;
    interrupt::check()?;
    let mut rows = Vec::new();
    let (a1, b1, b2) = (vpn.host(0, 1)?, vpn.host(1, 1)?, vpn.host(1, 2)?);

    step(
        2,
        total,
        "ARP across the tunnel: a1 pings b1 and learns b1's MAC",
    );
    let say = |line: String| {
        if explain {
            println!("  $ {line}");
        }
    };
    say(format!(
        "ip netns exec {} ping -c 3 {}",
        a1.name(),
        LanVpn::v4(1, 1)
    ));
    let reached = crate::suidao::ping_until(a1, &LanVpn::v4(1, 1), Duration::from_secs(10))?;
    say(format!(
        "ip -n {} neigh show {}",
        a1.name(),
        LanVpn::v4(1, 1)
    ));
    let neigh = crate::suidao::run(a1, "ip", &["neigh", "show", &LanVpn::v4(1, 1)])?;
    let b1_mac = l2::mac(b1, "eth0")?;
    rows.push(Row {
        what: "ARP a1 -> b1".into(),
        pass: reached && neigh.contains(&b1_mac),
        detail: format!("a1's neighbour entry: {}", neigh.trim()),
    });
    interrupt::check()?;

    step(
        3,
        total,
        "a broadcast from a1 reaches every other host, at both sites",
    );
    for (i, j) in [(0, 2), (1, 1), (1, 2)] {
        say(format!(
            "ip netns exec {} sysctl -w net.ipv4.icmp_echo_ignore_broadcasts=0",
            vpn.host(i, j)?.name()
        ));
        l2::answer_broadcasts(vpn.host(i, j)?)?;
    }
    say(format!(
        "ip netns exec {} ping -b -c 3 10.50.0.255",
        a1.name()
    ));
    let want: Vec<String> = [(0, 2), (1, 1), (1, 2)]
        .iter()
        .map(|&(i, j)| LanVpn::v4(i, j))
        .collect();
    let mut got = Vec::new();
    for _ in 0..3 {
        got = l2::broadcast_responders(a1)?;
        if got == want {
            break;
        }
    }
    rows.push(Row {
        what: "broadcast from a1".into(),
        pass: got == want,
        detail: format!("answered by {}", got.join(", ")),
    });
    interrupt::check()?;

    step(
        4,
        total,
        "IPv6 neighbour discovery: b2 pings a1's link-local address",
    );
    let ll = l2::link_local(a1, "eth0")?;
    say(format!("ip netns exec {} ping -c 3 {ll}%eth0", b2.name()));
    // The first reply waits for neighbour discovery; the round trip is timed after it.
    let target = format!("{ll}%eth0");
    let rtt = if crate::suidao::ping_until(b2, &target, Duration::from_secs(10))? {
        crate::measure::ping_rtt(b2, &target, 3, "0.2")?
    } else {
        None
    };
    rows.push(Row {
        what: "IPv6 link-local b2 -> a1".into(),
        pass: rtt.is_some(),
        detail: rtt.map_or("no reply".into(), |ms| format!("{ll}: {ms:.3} ms")),
    });
    interrupt::check()?;

    step(
        5,
        total,
        "DHCP across the tunnel: b2 asks, dnsmasq at a1 answers",
    );
    let lease = l2::dhcp(a1, b2, vpn.dir.path(), explain);
    let (pass, detail) = match &lease {
        Ok(l) => {
            let back = crate::suidao::ping(b2, &LanVpn::v4(0, 1), 2).unwrap_or(false);
            (
                back && l.mtu == Some(LAN_MTU),
                format!(
                    "b2 leased {} (MTU {}){}",
                    l.ip,
                    l.mtu.map_or("none".into(), |m| m.to_string()),
                    if back {
                        ", and reaches a1 with it"
                    } else {
                        ", but cannot reach a1"
                    }
                ),
            )
        }
        Err(e) => (false, format!("{e:#}")),
    };
    rows.push(Row {
        what: "DHCP b2 <- dnsmasq at a1".into(),
        pass,
        detail,
    });

    step(
        6,
        total,
        "what gw-a's switch learned (suidao-server status)",
    );
    let hub = &vpn.gateways[0];
    say(format!(
        "ip netns exec {} suidao-server status {}",
        vpn.gateway_ns(0)?.name(),
        hub.ifname
    ));
    if let Ok(v) = hub.status() {
        for line in suidao_common::status::render(&v).lines() {
            println!("    {line}");
        }
    }

    let pass = summary(&rows, || vpn.logs());
    if keep {
        let hint = format!(
            "  ip netns exec {} ping -b 10.50.0.255",
            vpn.host(1, 1)?.name()
        );
        let LanVpn {
            mut gateways,
            dir,
            mut lab,
            ..
        } = vpn;
        lab.keep();
        for g in &mut gateways {
            g.detach();
        }
        let dir = dir.keep();
        println!(
            "\nkept: namespaces {}-*, configs and logs in {}; try\n{hint}",
            lab.stem,
            dir.display()
        );
        println!("remove everything with: suidao-lab down");
    }
    println!("{}", if pass { "PASS" } else { "FAIL" });
    Ok(pass)
}

/// `suidao-lab demo vxlan`: the interoperable alternative on the same two sites. An ordinary
/// layer-3 tunnel joins the gateways (suidao at gw-a, wireguard-go at gw-b when installed),
/// and a VXLAN device over it sits in each site's bridge. Shows ARP and a broadcast crossing,
/// and the MTU arithmetic: a 1370-byte packet crosses with DF set, one byte more does not.
pub fn run_vxlan(explain: bool, keep: bool) -> Result<bool> {
    if !have_tool("ping") {
        bail!("demo vxlan needs `ping` (Debian: apt-get install iputils-ping)");
    }
    let peer = (have_tool("wireguard-go") && have_tool("wg"))
        .then_some(crate::wggo::Userspace::WireguardGo);
    let total = 4;
    println!(
        "suidao-lab demo vxlan: one Ethernet segment at two sites as VXLAN over a layer-3 tunnel between suidao (gw-a) and {} (gw-b)",
        if peer.is_some() {
            "wireguard-go"
        } else {
            "suidao (wireguard-go is not installed: apt-get install wireguard-go wireguard-tools)"
        }
    );
    step(
        1,
        total,
        &format!(
            "building both sites (hosts at MTU {}), the layer-3 tunnel 10.60.0.1 <-> 10.60.0.2, and vx0 (VNI {}) in each bridge",
            l2::VXLAN_MTU,
            l2::VNI
        ),
    );
    let lan = l2::VxlanLan::start(peer, explain)?;
    interrupt::check()?;
    let mut rows = Vec::new();
    let (a1, b1) = (lan.host(0, 1)?, lan.host(1, 1)?);
    let say = |line: String| {
        if explain {
            println!("  $ {line}");
        }
    };
    step(2, total, "ARP across: a1 pings b1");
    say(format!(
        "ip netns exec {} ping -c 3 {}",
        a1.name(),
        LanVpn::v4(1, 1)
    ));
    let reached = crate::suidao::ping_until(a1, &LanVpn::v4(1, 1), Duration::from_secs(15))?;
    let neigh = crate::suidao::run(a1, "ip", &["neigh", "show", &LanVpn::v4(1, 1)])?;
    rows.push(Row {
        what: "ARP a1 -> b1".into(),
        pass: reached && neigh.contains(&l2::mac(b1, "eth0")?),
        detail: format!("a1's neighbour entry: {}", neigh.trim()),
    });
    step(3, total, "a broadcast from a1 reaches b1");
    l2::answer_broadcasts(b1)?;
    say(format!(
        "ip netns exec {} ping -b -c 3 10.50.0.255",
        a1.name()
    ));
    let got = l2::broadcast_responders(a1)?;
    rows.push(Row {
        what: "broadcast from a1".into(),
        pass: got.contains(&LanVpn::v4(1, 1)),
        detail: format!("answered by {}", got.join(", ")),
    });
    step(
        4,
        total,
        &format!(
            "the MTU: 1420 (tunnel) - 20 (IPv4) - 8 (UDP) - 8 (VXLAN) - 14 (Ethernet) = {}",
            l2::VXLAN_MTU
        ),
    );
    let df = |size: u32| -> Result<bool> {
        say(format!(
            "ip netns exec {} ping -M do -c 2 -s {} {}",
            a1.name(),
            size - 28,
            LanVpn::v4(1, 1)
        ));
        l2::df_ping(a1, size, &LanVpn::v4(1, 1))
    };
    let fits = df(l2::VXLAN_MTU)?;
    // One byte more: a1's own MTU refuses it (the segment is at 1370 everywhere).
    let over = df(l2::VXLAN_MTU + 1)?;
    rows.push(Row {
        what: format!("{}-byte packet, DF", l2::VXLAN_MTU),
        pass: fits && !over,
        detail: format!(
            "{} crosses; {} bytes {}",
            l2::VXLAN_MTU,
            l2::VXLAN_MTU + 1,
            if over { "crossed too (?)" } else { "do not" }
        ),
    });
    let pass = summary(&rows, || lan.logs());
    println!(
        "\nsuidao's own layer-2 mode carries the same segment at MTU {} (suidao-lab demo l2), when both ends are suidao.",
        LAN_MTU
    );
    if keep {
        println!("(--keep applies to demo l2; this one is always taken down)");
    }
    println!("{}", if pass { "PASS" } else { "FAIL" });
    Ok(pass)
}
