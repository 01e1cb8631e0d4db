//! Layer 2 (`mode = "l2"`): hosts at two or three sites on one Ethernet segment through
//! suidao's TAP in each site's bridge (`suidao_lab::l2`): ARP, broadcasts, IPv6 neighbour
//! discovery and DHCP across; the hub switching with split horizon; MACs aging out; the
//! per-peer limits (a spoofed MAC, a broadcast storm); a mismatched l2/l3 pair; frames too
//! large for the TAP; teardown.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use suidao_lab::l2::{self, LanVpn, LAN_MTU};
use suidao_lab::suidao::{ping, ping_until, run};
use suidao_lab::Netns;
use suidao_tests::eventually;

fn mac(ns: &Netns, dev: &str) -> String {
    l2::mac(ns, dev).unwrap()
}

/// The MACs a gateway's status shows as learned from each peer, by peer name.
fn learned(vpn: &LanVpn, gw: usize) -> Vec<(String, Vec<String>)> {
    let v = vpn.gateways[gw].status().unwrap();
    v["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let macs = p["macs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["mac"].as_str().map(str::to_string))
                .collect();
            (p["name"].as_str().unwrap_or("").to_string(), macs)
        })
        .collect()
}

fn learned_from(vpn: &LanVpn, gw: usize, peer: &str) -> Vec<String> {
    learned(vpn, gw)
        .into_iter()
        .find(|(n, _)| n == peer)
        .map(|(_, m)| m)
        .unwrap_or_default()
}

fn answer_broadcasts(ns: &Netns) {
    l2::answer_broadcasts(ns).unwrap()
}

fn broadcast_responders(ns: &Netns) -> Vec<String> {
    l2::broadcast_responders(ns).unwrap()
}

#[test]
fn hosts_at_two_sites_are_on_one_segment_and_teardown_leaves_nothing() {
    if !suidao_lab::require(
        "hosts_at_two_sites_are_on_one_segment_and_teardown_leaves_nothing",
        &["ping"],
    ) {
        return;
    }
    let mut vpn = LanVpn::start(2, false).unwrap();
    let (a1, a2) = (vpn.host(0, 1).unwrap(), vpn.host(0, 2).unwrap());
    let (b1, b2) = (vpn.host(1, 1).unwrap(), vpn.host(1, 2).unwrap());
    // ARP across: a1 learns b1's MAC from b1 itself, through the tunnel.
    assert!(
        ping_until(a1, &LanVpn::v4(1, 1), Duration::from_secs(10)).unwrap(),
        "a1 -> b1\n{}",
        vpn.logs()
    );
    let neigh = run(a1, "ip", &["neigh", "show", &LanVpn::v4(1, 1)]).unwrap();
    assert!(
        neigh.contains(&mac(b1, "eth0")),
        "a1's ARP entry for b1 is b1's own MAC: {neigh}"
    );
    // A broadcast reaches every other host, at both sites.
    for ns in [a2, b1, b2] {
        answer_broadcasts(ns);
    }
    let want: Vec<String> = [(0, 2), (1, 1), (1, 2)]
        .iter()
        .map(|&(i, j)| LanVpn::v4(i, j))
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || broadcast_responders(a1) == want),
        "a broadcast from a1 answered by {:?}, expected {want:?}",
        broadcast_responders(a1)
    );
    // IPv6: neighbour discovery across, to a global and a link-local address.
    assert!(ping_until(b2, &LanVpn::v6(0, 1), Duration::from_secs(10)).unwrap());
    let a1_mac = mac(a1, "eth0");
    let ll = run(
        a1,
        "ip",
        &["-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"],
    )
    .unwrap();
    let ll = ll
        .split("inet6 ")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap()
        .to_string();
    assert!(
        ping(b2, &format!("{ll}%eth0"), 2).unwrap(),
        "b2 -> a1's link-local {ll}"
    );
    // The hub learned site b's MACs from gw-b, and site b's gateway a1's from the hub.
    let b1_mac = mac(b1, "eth0");
    assert!(learned_from(&vpn, 0, "gw-b").contains(&b1_mac));
    assert!(learned_from(&vpn, 1, "gw-a").contains(&a1_mac));
    assert_eq!(vpn.gateways[0].drops("layer_mismatch").unwrap(), 0);
    // Teardown: each gateway's namespace as it was before suidao started (the TAP gone with
    // its bridge port, nothing else touched).
    vpn.gateways.clear();
    for i in 0..2 {
        let after = suidao_lab::netlink::snapshot_of(vpn.gateway_ns(i).unwrap()).unwrap();
        assert_eq!(after, vpn.before[i], "gateway {i} after teardown");
        let ports = run(
            vpn.gateway_ns(i).unwrap(),
            "ip",
            &["-o", "link", "show", "master", "br0"],
        )
        .unwrap();
        assert_eq!(
            ports.lines().count(),
            2,
            "only p1 and p2 left in br0: {ports}"
        );
    }
}

#[test]
fn a_host_at_site_b_gets_its_address_by_dhcp_from_dnsmasq_at_site_a() {
    if !suidao_lab::require(
        "a_host_at_site_b_gets_its_address_by_dhcp_from_dnsmasq_at_site_a",
        &["ping", "dnsmasq", "busybox"],
    ) {
        return;
    }
    let vpn = LanVpn::start(2, false).unwrap();
    let (a1, b2) = (vpn.host(0, 1).unwrap(), vpn.host(1, 2).unwrap());
    let lease =
        l2::dhcp(a1, b2, vpn.dir.path(), false).unwrap_or_else(|e| panic!("{e:#}\n{}", vpn.logs()));
    let last: u8 = lease
        .ip
        .rsplit('.')
        .next()
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    assert!(
        lease.ip.starts_with("10.50.0.") && (l2::DHCP_RANGE.0..=l2::DHCP_RANGE.1).contains(&last),
        "a lease from dnsmasq's range: {lease:?}"
    );
    assert_eq!(lease.mtu, Some(LAN_MTU), "{lease:?}");
    // The leased address works across the tunnel.
    assert!(ping_until(b2, &LanVpn::v4(0, 1), Duration::from_secs(5)).unwrap());
}

#[test]
fn three_sites_on_one_hub_are_switched_with_split_horizon() {
    if !suidao_lab::require(
        "three_sites_on_one_hub_are_switched_with_split_horizon",
        &["ping", "tcpdump"],
    ) {
        return;
    }
    let vpn = LanVpn::start(3, false).unwrap();
    let (b1, c1) = (vpn.host(1, 1).unwrap(), vpn.host(2, 1).unwrap());
    // Spoke to spoke through the hub.
    assert!(
        ping_until(b1, &LanVpn::v4(2, 1), Duration::from_secs(10)).unwrap(),
        "b1 -> c1 through the hub\n{}",
        vpn.logs()
    );
    // Watch what gw-b's TAP is handed from the tunnel while b1 broadcasts: frames from the
    // other sites, never b1's own back.
    let b1_mac = mac(b1, "eth0");
    let gw_b = vpn.gateway_ns(1).unwrap();
    let tap = vpn.gateways[1].ifname.clone();
    let mut child = gw_b
        .command("tcpdump")
        .unwrap()
        .args(["-i", &tap, "-Q", "in", "-n", "-e", "-l", "broadcast"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        text
    });
    let mut dump = suidao_lab::Process::new("tcpdump", child);
    std::thread::sleep(Duration::from_secs(1));
    for i in [0, 2] {
        answer_broadcasts(vpn.host(i, 1).unwrap());
    }
    let responders = broadcast_responders(b1);
    // And one broadcast from site c, which gw-b must be handed.
    let _ = broadcast_responders(c1);
    std::thread::sleep(Duration::from_millis(500));
    dump.stop();
    let seen = reader.join().unwrap();
    assert!(
        responders.contains(&LanVpn::v4(0, 1)) && responders.contains(&LanVpn::v4(2, 1)),
        "b1's broadcast reached a1 and c1: {responders:?}"
    );
    let from_b1 = seen.lines().filter(|l| l.contains(&b1_mac)).count();
    let from_c1 = seen
        .lines()
        .filter(|l| l.contains(&mac(c1, "eth0")))
        .count();
    assert_eq!(from_b1, 0, "b1's broadcasts came back to gw-b:\n{seen}");
    assert!(from_c1 > 0, "c1's broadcast reached gw-b:\n{seen}");
    // No MAC moved anywhere (a frame coming back would have moved its source).
    for g in &vpn.gateways {
        assert_eq!(g.status().unwrap()["mac_moves"].as_u64(), Some(0));
    }
}

#[test]
fn learned_macs_age_out_after_mac_age() {
    if !suidao_lab::require("learned_macs_age_out_after_mac_age", &["ping"]) {
        return;
    }
    let vpn = LanVpn::start_with(2, false, |_, s| s.extra.push_str("mac_age = 3\n")).unwrap();
    let (a1, b1) = (vpn.host(0, 1).unwrap(), vpn.host(1, 1).unwrap());
    assert!(ping_until(a1, &LanVpn::v4(1, 1), Duration::from_secs(10)).unwrap());
    let b1_mac = mac(b1, "eth0");
    assert!(learned_from(&vpn, 0, "gw-b").contains(&b1_mac));
    // b1 goes quiet (its link down: not even neighbour discovery); within a few seconds of
    // the 3 s age the hub forgets it.
    run(b1, "ip", &["link", "set", "eth0", "down"]).unwrap();
    assert!(
        eventually(Duration::from_secs(8), || !learned_from(&vpn, 0, "gw-b")
            .contains(&b1_mac)),
        "b1's MAC still learned: {:?}",
        learned(&vpn, 0)
    );
    // Back up and heard from again: learned again.
    run(b1, "ip", &["link", "set", "eth0", "up"]).unwrap();
    assert!(ping_until(b1, &LanVpn::v4(0, 1), Duration::from_secs(10)).unwrap());
    assert!(learned_from(&vpn, 0, "gw-b").contains(&b1_mac));
}

#[test]
fn a_spoofed_source_mac_is_dropped_and_counted() {
    if !suidao_lab::require("a_spoofed_source_mac_is_dropped_and_counted", &["ping"]) {
        return;
    }
    let mut vpn = LanVpn::start(2, false).unwrap();
    // The hub allows gw-b's side only the MACs it has: b1, b2 and gw-b's bridge.
    let allowed = [
        mac(vpn.host(1, 1).unwrap(), "eth0"),
        mac(vpn.host(1, 2).unwrap(), "eth0"),
        mac(vpn.gateway_ns(1).unwrap(), "br0"),
    ];
    vpn.specs[0].peers[0].allowed_macs = allowed.to_vec();
    let config = vpn.specs[0].write(vpn.dir.path()).unwrap();
    let (b1, b2) = (vpn.host(1, 1).unwrap(), vpn.host(1, 2).unwrap());
    let out =
        suidao_lab::suidao::command(vpn.gateway_ns(0).unwrap(), suidao_lab::suidao::Role::Server)
            .unwrap()
            .args(["reload", "-c"])
            .arg(&config)
            .output()
            .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ping_until(b1, &LanVpn::v4(0, 1), Duration::from_secs(10)).unwrap());
    let before = vpn.gateways[0].drops("mac_not_allowed").unwrap();
    // b2 takes a MAC of its own making.
    run(
        b2,
        "ip",
        &["link", "set", "eth0", "address", "02:66:66:66:66:66"],
    )
    .unwrap();
    assert!(
        !ping(b2, &LanVpn::v4(0, 1), 3).unwrap(),
        "a spoofed MAC got through"
    );
    let after = vpn.gateways[0].drops("mac_not_allowed").unwrap();
    assert!(
        after >= before + 3,
        "mac_not_allowed went from {before} to {after}"
    );
    assert!(!learned_from(&vpn, 0, "gw-b").contains(&"02:66:66:66:66:66".to_string()));
    // b1 is not affected.
    assert!(ping(b1, &LanVpn::v4(0, 1), 2).unwrap());
    vpn.gateways.clear();
}

#[test]
fn a_broadcast_storm_from_one_site_is_capped_and_a_transfer_between_others_goes_on() {
    if !suidao_lab::require(
        "a_broadcast_storm_from_one_site_is_capped_and_a_transfer_between_others_goes_on",
        &["ping"],
    ) {
        return;
    }
    let vpn = LanVpn::start_with(3, false, |_, s| s.extra.push_str("flood_rate = 200\n")).unwrap();
    let (a1, b1, c1) = (
        vpn.host(0, 1).unwrap(),
        vpn.host(1, 1).unwrap(),
        vpn.host(2, 1).unwrap(),
    );
    assert!(ping_until(b1, &LanVpn::v4(0, 1), Duration::from_secs(10)).unwrap());
    assert!(ping_until(c1, &LanVpn::v4(0, 1), Duration::from_secs(10)).unwrap());
    // c1 floods the segment with UDP broadcasts, as fast as it can.
    let stop = Arc::new(AtomicBool::new(false));
    let storm = {
        let stop = stop.clone();
        let sock = c1
            .run(|| {
                let s = UdpSocket::bind("10.50.0.31:0")?;
                s.set_broadcast(true)?;
                Ok::<_, std::io::Error>(s)
            })
            .unwrap()
            .unwrap();
        std::thread::spawn(move || {
            let to: SocketAddr = "10.50.0.255:9".parse().unwrap();
            let payload = [0u8; 1000];
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if sock.send_to(&payload, to).is_ok() {
                    sent += 1;
                }
            }
            sent
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let result = suidao_tests::transfer::tcp(
        a1,
        b1,
        format!("{}:5201", LanVpn::v4(1, 1)).parse().unwrap(),
        32 << 20,
    );
    stop.store(true, Ordering::Relaxed);
    let sent = storm.join().unwrap();
    let t = result.unwrap_or_else(|e| panic!("the transfer during the storm: {e}\n{}", vpn.logs()));
    assert_eq!(t.sent, t.received, "the digests differ");
    let capped = vpn.gateways[0].drops("flood_limit").unwrap();
    assert!(
        capped > 0,
        "the hub capped none of the {sent} broadcasts\n{}",
        vpn.logs()
    );
    eprintln!(
        "storm: {sent} broadcasts sent, {capped} capped at the hub; a1 -> b1 {:.0} Mbit/s meanwhile",
        t.mbit_per_s()
    );
}

#[test]
fn an_l2_end_and_an_l3_end_each_report_the_mismatch() {
    if !suidao_lab::require(
        "an_l2_end_and_an_l3_end_each_report_the_mismatch",
        &["ping"],
    ) {
        return;
    }
    // The hub stays layer 2; gw-b is started as layer 3 (its peer with an allowed IP).
    let mut vpn = LanVpn::start_with(2, false, |i, s| {
        if i == 1 {
            s.mode = None;
            s.bridge = None;
            s.addresses = vec!["10.51.0.2/24".into()];
            s.peers[0].allowed_ips = vec!["10.51.0.0/24".into()];
        }
    })
    .unwrap();
    let gw_b = vpn.gateway_ns(1).unwrap();
    // The l3 side sends IP packets, the l2 side frames (a1's ARP for anything).
    let _ = ping(gw_b, "10.51.0.1", 2);
    let _ = ping(vpn.host(0, 1).unwrap(), &LanVpn::v4(1, 1), 2);
    let reported = |i: usize| {
        vpn.gateways[i].drops("layer_mismatch").unwrap_or(0) > 0
            && vpn.gateways[i].log().contains("mode mismatch")
    };
    assert!(
        eventually(Duration::from_secs(10), || reported(0) && reported(1)),
        "both ends report the mismatch\n{}",
        vpn.logs()
    );
    assert!(vpn.gateways[0]
        .log()
        .contains("peer gw-b: mode mismatch: it sends IP packets"));
    assert!(vpn.gateways[1]
        .log()
        .contains("peer gw-a: mode mismatch: it sends layer-2 frames"));
    vpn.gateways.clear();
}

#[test]
fn a_frame_larger_than_the_tap_takes_is_dropped_by_the_bridge() {
    if !suidao_lab::require(
        "a_frame_larger_than_the_tap_takes_is_dropped_by_the_bridge",
        &["ping"],
    ) {
        return;
    }
    let vpn = LanVpn::start(2, false).unwrap();
    let a1 = vpn.host(0, 1).unwrap();
    let tap_mtu = run(
        vpn.gateway_ns(0).unwrap(),
        "ip",
        &["-o", "link", "show", &vpn.gateways[0].ifname],
    )
    .unwrap();
    assert!(tap_mtu.contains(&format!("mtu {LAN_MTU} ")), "{tap_mtu}");
    let b1 = LanVpn::v4(1, 1);
    assert!(ping_until(a1, &b1, Duration::from_secs(10)).unwrap());
    // The largest frame the TAP takes: an IP packet of 1405 bytes.
    assert!(l2::df_ping(a1, LAN_MTU, &b1).unwrap(), "{}", vpn.logs());
    // a1 raises its MTU to 1500: its larger frames stop at gw-a's bridge.
    run(a1, "ip", &["link", "set", "eth0", "mtu", "1500"]).unwrap();
    assert!(
        !l2::df_ping(a1, 1500, &b1).unwrap(),
        "a 1500-byte frame crossed a 1405-byte TAP"
    );
}

/// The interoperable alternative: a VXLAN segment in each site's bridge over an ordinary
/// layer-3 tunnel whose other end is wireguard-go. ARP and broadcasts cross; the segment's
/// MTU is the tunnel's less VXLAN's 50 bytes.
#[test]
fn a_vxlan_segment_over_a_layer_3_tunnel_to_wireguard_go_joins_the_sites() {
    if !suidao_lab::require(
        "a_vxlan_segment_over_a_layer_3_tunnel_to_wireguard_go_joins_the_sites",
        &["ping", "wireguard-go", "wg"],
    ) {
        return;
    }
    let lan = l2::VxlanLan::start(Some(suidao_lab::wggo::Userspace::WireguardGo), false).unwrap();
    let (a1, b1) = (lan.host(0, 1).unwrap(), lan.host(1, 1).unwrap());
    assert!(
        ping_until(a1, &LanVpn::v4(1, 1), Duration::from_secs(15)).unwrap(),
        "a1 -> b1 over VXLAN over suidao <-> wireguard-go\n{}",
        lan.logs()
    );
    let neigh = run(a1, "ip", &["neigh", "show", &LanVpn::v4(1, 1)]).unwrap();
    assert!(neigh.contains(&mac(b1, "eth0")), "{neigh}");
    answer_broadcasts(b1);
    assert!(broadcast_responders(a1).contains(&LanVpn::v4(1, 1)));
    // The largest frame: an IP packet of 1370 bytes, with DF.
    assert!(
        l2::df_ping(a1, l2::VXLAN_MTU, &LanVpn::v4(1, 1)).unwrap(),
        "{}",
        lan.logs()
    );
}

/// `bridge = ` naming no bridge (or something else): `up` says so, by name, and leaves the
/// namespace as it found it.
#[test]
fn a_missing_bridge_is_refused_by_name_and_nothing_is_left() {
    if !suidao_lab::require(
        "a_missing_bridge_is_refused_by_name_and_nothing_is_left",
        &[],
    ) {
        return;
    }
    let lab = suidao_lab::topology::P2p::new().unwrap();
    let dir = suidao_lab::suidao::TempDir::new().unwrap();
    let ns = &lab.server.ns;
    let before = suidao_lab::netlink::snapshot_of(ns).unwrap();
    for (bridge, expect) in [
        ("br9", "joining bridge br9: there is no such interface (make it first: ip link add br9 type bridge)"),
        ("lo", "joining lo: it is a"),
    ] {
        let mut spec = suidao_lab::suidao::NodeSpec::new("sdm");
        spec.mode = Some("l2".into());
        spec.bridge = Some(bridge.into());
        let config = spec.write(dir.path()).unwrap();
        let out = suidao_lab::suidao::command(ns, suidao_lab::suidao::Role::Server)
            .unwrap()
            .args(["up", "-c"])
            .arg(&config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(expect), "{bridge}: {err}");
        assert_eq!(suidao_lab::netlink::snapshot_of(ns).unwrap(), before, "{bridge}");
    }
}

/// The demos as a person runs them: `suidao-lab demo l2 --explain` and `demo vxlan`, each
/// PASS, with their steps printed, and nothing of theirs left after.
#[test]
fn the_layer_2_demos_pass_and_leave_nothing() {
    if !suidao_lab::require(
        "the_layer_2_demos_pass_and_leave_nothing",
        &["ping", "dnsmasq", "busybox", "wireguard-go", "wg"],
    ) {
        return;
    }
    for (args, expect) in [
        (
            &["demo", "l2", "--explain"][..],
            &[
                "master br0",
                "mtu 1405",
                "dnsmasq --keep-in-foreground",
                "DHCP b2 <- dnsmasq at a1     ok",
            ][..],
        ),
        (
            &["demo", "vxlan"][..],
            &["and wireguard-go (gw-b)", "1370-byte packet, DF         ok"][..],
        ),
    ] {
        let (pid, out) = suidao_tests::run_lab(args).unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.trim_end().ends_with("PASS"),
            "{args:?}:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for e in expect {
            assert!(text.contains(e), "{args:?} shows {e:?}:\n{text}");
        }
        let left = Netns::list(&format!("{}{pid}x", suidao_lab::PREFIX));
        assert!(left.is_empty(), "{args:?} left {left:?}");
    }
}

/// `wg set` on a layer-2 interface: a peer may be added (switched by MAC with the interface's
/// limits), but allowed IPs are refused, with the reason in the log, and no route appears.
#[test]
fn wg_set_on_a_layer_2_interface_refuses_allowed_ips() {
    if !suidao_lab::require("wg_set_on_a_layer_2_interface_refuses_allowed_ips", &["wg"]) {
        return;
    }
    let vpn = LanVpn::start(2, false).unwrap();
    let gw_a = vpn.gateway_ns(0).unwrap();
    let ifname = vpn.gateways[0].ifname.clone();
    let gw_b_key = vpn.specs[1].public_key().to_base64();
    let wg = |args: &[&str]| {
        gw_a.command("wg")
            .unwrap()
            .args(args)
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(!wg(&[
        "set",
        &ifname,
        "peer",
        &gw_b_key,
        "allowed-ips",
        "10.9.0.0/24"
    ]));
    let shown = run(gw_a, "wg", &["show", &ifname, "allowed-ips"]).unwrap();
    assert!(!shown.contains("10.9.0.0/24"), "{shown}");
    let routes = run(gw_a, "ip", &["route", "show", "10.9.0.0/24"]).unwrap();
    assert!(routes.trim().is_empty(), "{routes}");
    assert!(
        vpn.gateways[0]
            .log()
            .contains("a layer-2 interface takes no allowed IPs"),
        "{}",
        vpn.logs()
    );
    // A new peer without allowed IPs is taken.
    let other = suidao_proto::keys::PrivateKey::generate(&mut rand_core::OsRng).public_key();
    assert!(wg(&["set", &ifname, "peer", &other.to_base64()]));
    let peers = run(gw_a, "wg", &["show", &ifname, "peers"]).unwrap();
    assert_eq!(peers.lines().count(), 2, "{peers}");
    // And the segment still works.
    assert!(ping_until(
        vpn.host(1, 1).unwrap(),
        &LanVpn::v4(0, 1),
        Duration::from_secs(10)
    )
    .unwrap());
}
