//! Whatever arrives at the server's port, it stays up, answers nothing unauthenticated, keeps
//! serving its real clients and keeps its memory bounded. The attacks are made by the test's own
//! tools (tests/src/attack.rs) from an attacker namespace on the same bridge.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand_core::OsRng;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use suidao_lab::measure::{rss_kib, udp_counter};
use suidao_lab::suidao::{ping, ping_until, Node, Role, TempDir};
use suidao_proto::constants::COOKIE_REPLY_LEN;
use suidao_tests::attack::{
    initiation_from_stranger, junk, send_paced, split_transport, udp_payloads, Rng,
};
use suidao_tests::vpn::{HubVpn, PORT, SERVER_V4};

/// One attack at a time: they are measured (memory, timing), and two floods at once on two
/// cores would only measure each other.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// A server and one real client on a hub whose second host is the attacker.
fn arena() -> HubVpn {
    HubVpn::start_on(2, 1).unwrap()
}

fn total_drops(n: &Node) -> u64 {
    n.status().unwrap()["drops"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap_or(0))
        .sum()
}

/// Counts every byte that comes back to the attacker's socket, until stopped.
fn listen(sock: UdpSocket, stop: Arc<AtomicBool>) -> (Arc<AtomicU64>, std::thread::JoinHandle<()>) {
    let got = Arc::new(AtomicU64::new(0));
    let g = got.clone();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let t = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                g.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    });
    (got, t)
}

#[test]
fn a_million_junk_datagrams_during_a_256_mib_transfer() {
    if !suidao_lab::require("junk flood", &["ping"]) {
        return;
    }
    let _alone = one_at_a_time();
    let mut a = arena();
    let (server_ns, client_ns, attacker_ns) =
        (&a.lab.server.ns, &a.lab.clients[0].ns, &a.lab.clients[1].ns);
    assert!(ping(client_ns, SERVER_V4, 1).unwrap());
    let pid = a.server.process.pid().unwrap();
    // Warm up first: the data path's buffers fill their pages on the first big transfer.
    let to: SocketAddr = format!("{SERVER_V4}:5001").parse().unwrap();
    suidao_tests::transfer::tcp(client_ns, server_ns, to, 32 << 20).unwrap();
    let rss_before = rss_kib(pid).unwrap();
    let drops_before = total_drops(&a.server);
    let kernel_before = udp_counter(server_ns, "RcvbufErrors").unwrap()
        + udp_counter(server_ns, "InErrors").unwrap();

    // Real messages to mutate: an initiation with a valid mac1 from a stranger, and
    // transport-shaped datagrams.
    let samples = vec![initiation_from_stranger(&a.server_spec.public_key()), {
        let mut t = vec![0u8; 96];
        t[0] = 4;
        t
    }];
    let target = SocketAddr::new(a.lab.server.v4, PORT);
    let sock = attacker_ns
        .run(|| UdpSocket::bind("0.0.0.0:40000"))
        .unwrap()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, listener) = listen(sock.try_clone().unwrap(), stop.clone());
    let checker = suidao_proto::cookie::CookieChecker::new(&a.server_spec.public_key());
    let flood = std::thread::spawn(move || {
        let mut rng = Rng::new(0x1a2b3c);
        let mut with_mac1 = 0u64;
        let sent = send_paced(&sock, target, 1_000_000, 150_000, |buf| {
            junk(&mut rng, &samples, buf);
            if checker.check_mac1(buf) {
                with_mac1 += 1;
            }
        });
        (sent, with_mac1)
    });
    let t = suidao_tests::transfer::tcp(client_ns, server_ns, to, 256 << 20).unwrap();
    let (sent, with_mac1) = flood.join().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    listener.join().unwrap();

    assert_eq!(t.sent, t.received, "the transfer's SHA-256 matches");
    assert!(sent >= 990_000, "the attacker sent {sent}");
    // Junk gets no answer at all. The only datagrams that may be answered are the few whose
    // mutation left a valid mac1 (a flip in mac2 only, or an untouched copy): under load they
    // get a 64-byte cookie reply, as the protocol says, and nothing else.
    let back = answered.load(Ordering::Relaxed);
    assert!(
        back <= with_mac1 * COOKIE_REPLY_LEN as u64,
        "{back} bytes back for {with_mac1} datagrams with a valid mac1"
    );
    let rss_after = rss_kib(pid).unwrap();
    assert!(
        rss_after < rss_before + 10 * 1024,
        "resident memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    // Every junk datagram is accounted for: counted by suidao by reason, or dropped by the
    // kernel before it (socket buffer full).
    let drops = total_drops(&a.server) - drops_before;
    let kernel = udp_counter(server_ns, "RcvbufErrors").unwrap()
        + udp_counter(server_ns, "InErrors").unwrap()
        - kernel_before;
    eprintln!(
        "junk: {sent} sent ({with_mac1} with a valid mac1, {back} bytes answered), {drops} counted by suidao, {kernel} dropped by the kernel; transfer {:.0} Mbit/s; RSS {rss_before} -> {rss_after} KiB",
        t.mbit_per_s()
    );
    assert!(
        drops + kernel >= sent as u64 * 99 / 100,
        "drops {drops} + kernel {kernel} < sent {sent}"
    );
    assert!(a.server.process.is_running());
    drop(a);
}

#[test]
fn replayed_transport_packets_reach_nothing_and_move_nothing() {
    if !suidao_lab::require("replay", &["ping", "tcpdump"]) {
        return;
    }
    let _alone = one_at_a_time();
    let a = arena();
    let (server_ns, client_ns, attacker_ns) =
        (&a.lab.server.ns, &a.lab.clients[0].ns, &a.lab.clients[1].ns);
    assert!(ping(client_ns, SERVER_V4, 1).unwrap());
    // Capture the client's datagrams to the server on the bridge.
    let pcap = a.dir.path().join("capture.pcap");
    let mut dump = suidao_lab::Process::new(
        "tcpdump",
        a.lab
            .switch
            .ns
            .command("tcpdump")
            .unwrap()
            .args(["-i", "br0", "-U", "-c", "10000", "-w"])
            .arg(&pcap)
            .arg(format!(
                "udp dst port {PORT} and src host {}",
                a.lab.clients[0].v4
            ))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // (No wait for tcpdump to start: transfers go on until it has its 10,000 packets.)
    let to: SocketAddr = format!("{SERVER_V4}:5001").parse().unwrap();
    while dump.is_running() {
        suidao_tests::transfer::tcp(client_ns, server_ns, to, 16 << 20).unwrap();
    }
    let packets: Vec<Vec<u8>> = udp_payloads(&std::fs::read(&pcap).unwrap(), PORT)
        .iter()
        .flat_map(|p| split_transport(p))
        .filter(|p| p.first() == Some(&4))
        .collect();
    let mut sizes: Vec<usize> = packets.iter().map(|p| p.len()).collect();
    sizes.sort();
    sizes.dedup();
    eprintln!(
        "replay: {} transport packets captured, sizes {:?}",
        packets.len(),
        &sizes[..sizes.len().min(20)]
    );
    assert!(
        packets.len() >= 10_000,
        "captured {} transport packets",
        packets.len()
    );
    let packets = &packets[..10_000];

    let server_if = a.server.ifname.clone();
    let tun_rx = || {
        let n = server_if.clone();
        server_ns
            .netlink(|h| async move { suidao_lab::netlink::link_packets(&h, &n).await })
            .unwrap()
            .0
    };
    let endpoint = || {
        a.server.status().unwrap()["peers"][0]["endpoint"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let endpoint_before = endpoint();
    let rx_before = tun_rx();
    let drops_before = a.server.drops("replay").unwrap() + a.server.drops("unknown_index").unwrap();
    // Once from the client's own address (another port), once from the attacker's.
    let target = SocketAddr::new(a.lab.server.v4, PORT);
    let from_client = client_ns
        .run(|| UdpSocket::bind(SocketAddr::new(a.lab.clients[0].v4, 0)))
        .unwrap()
        .unwrap();
    let from_attacker = attacker_ns
        .run(|| UdpSocket::bind("0.0.0.0:0"))
        .unwrap()
        .unwrap();
    for sock in [&from_client, &from_attacker] {
        let mut i = 0;
        send_paced(sock, target, packets.len(), 20_000, |buf| {
            buf.clear();
            buf.extend_from_slice(&packets[i]);
            i += 1;
        });
    }
    // Until the server has counted them all (or has stopped counting for a second).
    let counted = || {
        a.server.drops("replay").unwrap() + a.server.drops("unknown_index").unwrap() - drops_before
    };
    let (mut last, mut since) = (counted(), std::time::Instant::now());
    while last < 2 * packets.len() as u64 && since.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(20));
        let now = counted();
        if now != last {
            (last, since) = (now, std::time::Instant::now());
        }
    }
    assert_eq!(
        tun_rx(),
        rx_before,
        "no replayed packet reached the server's TUN"
    );
    let dropped = counted();
    assert!(
        dropped >= 2 * packets.len() as u64 * 99 / 100,
        "dropped {dropped} of {}: {}",
        2 * packets.len(),
        a.server.status().unwrap()["drops"]
    );
    assert_eq!(
        endpoint(),
        endpoint_before,
        "the client's endpoint did not move to the replayer"
    );
    assert!(
        ping(client_ns, SERVER_V4, 1).unwrap(),
        "the real client goes on"
    );
    drop(a);
}

#[test]
fn handshake_flood_gets_cookies_and_the_real_client_still_gets_in() {
    if !suidao_lab::require("handshake flood", &["ping"]) {
        return;
    }
    let _alone = one_at_a_time();
    let mut a = arena();
    // The real client connects in the middle of the flood: stop the one the arena started.
    a.clients[0].process.stop();
    let (server_ns, client_ns, attacker_ns) =
        (&a.lab.server.ns, &a.lab.clients[0].ns, &a.lab.clients[1].ns);
    let pid = a.server.process.pid().unwrap();
    let rss_before = rss_kib(pid).unwrap();

    // Many source addresses: 32 extra addresses on the attacker's link.
    let mut socks = Vec::new();
    for i in 0..32u8 {
        let ip: IpAddr = format!("198.18.0.{}", 100 + i).parse().unwrap();
        attacker_ns
            .netlink(|h| async move { Ok(suidao_lab::netlink::add_addr(&h, "h2", ip, 24).await?) })
            .unwrap();
        socks.push(
            attacker_ns
                .run(move || UdpSocket::bind(SocketAddr::new(ip, 0)))
                .unwrap()
                .unwrap(),
        );
    }
    let initiation = initiation_from_stranger(&a.server_spec.public_key());
    let stop = Arc::new(AtomicBool::new(false));
    let mut listeners = Vec::new();
    let mut answered = Vec::new();
    for s in &socks {
        let (got, t) = listen(s.try_clone().unwrap(), stop.clone());
        answered.push(got);
        listeners.push(t);
    }
    let target = SocketAddr::new(a.lab.server.v4, PORT);
    let sent_bytes = Arc::new(AtomicU64::new(0));
    let sb = sent_bytes.clone();
    let flood = std::thread::spawn(move || {
        // 10,000 initiations a second for 12 seconds, round-robin over the sources.
        let total = 120_000;
        let mut n = 0;
        let start = Instant::now();
        while n < total {
            let due = start + Duration::from_secs_f64(n as f64 / 10_000.0);
            if let Some(w) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(w);
            }
            for s in &socks {
                if s.send_to(&initiation, target).is_ok() {
                    sb.fetch_add(initiation.len() as u64, Ordering::Relaxed);
                }
                n += 1;
            }
        }
    });
    std::thread::sleep(Duration::from_secs(3));
    // Now the legitimate client starts, in the thick of it.
    let started = Instant::now();
    let config = a.clients[0].config.clone();
    a.clients[0] =
        Node::start(client_ns, Role::Client, &config, &a.client_specs[0].ifname).unwrap();
    let mut handshake_after = None;
    while started.elapsed() < Duration::from_secs(10) {
        if a.clients[0]
            .handshakes()
            .unwrap()
            .iter()
            .any(|(_, t)| *t > 0)
        {
            handshake_after = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let cookies = a.server.drops("cookie_required").unwrap();
    let through = ping_until(client_ns, SERVER_V4, Duration::from_secs(5)).unwrap();
    let to: SocketAddr = format!("{SERVER_V4}:5001").parse().unwrap();
    let t = suidao_tests::transfer::tcp(client_ns, server_ns, to, 4 << 20).unwrap();
    flood.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for l in listeners {
        l.join().unwrap();
    }
    let back: u64 = answered.iter().map(|g| g.load(Ordering::Relaxed)).sum();
    let sent = sent_bytes.load(Ordering::Relaxed);
    let rss_after = rss_kib(pid).unwrap();
    eprintln!(
        "handshake flood: {sent} bytes sent, {back} bytes answered (cookie replies), {cookies} cookies; client in after {handshake_after:?}; RSS {rss_before} -> {rss_after} KiB"
    );
    let handshake_after = handshake_after.unwrap_or_else(|| {
        panic!(
            "no handshake within 10 s\n{}\ndrops: {}\n{}",
            a.clients[0].log(),
            a.server.status().unwrap()["drops"],
            a.server.log()
        )
    });
    assert!(handshake_after < Duration::from_secs(10));
    assert!(through, "the client's traffic goes through");
    assert_eq!(t.sent, t.received);
    assert!(cookies > 0, "the server switched to cookie replies");
    assert!(
        back < sent,
        "the server sent back fewer bytes ({back}) than it received ({sent})"
    );
    assert!(
        rss_after < rss_before + 10 * 1024,
        "memory bounded: {rss_before} -> {rss_after} KiB"
    );
}

#[test]
fn no_log_line_at_any_level_holds_key_material() {
    if !suidao_lab::require("secrets in logs", &["ping"]) {
        return;
    }
    let _alone = one_at_a_time();
    // Trace level, a pre-shared key, traffic, a reload, status: then grep every key in play.
    std::env::set_var("SUIDAO_LOG", "trace");
    let lab = suidao_lab::topology::P2p::new().unwrap();
    let dir = TempDir::new().unwrap();
    let (mut s, mut c) = suidao_tests::vpn::specs(&lab, false).unwrap();
    let psk = suidao_proto::keys::PresharedKey::generate(&mut OsRng);
    s.peers[0].preshared_key = Some(psk.clone());
    c.peers[0].preshared_key = Some(psk.clone());
    let server = s.start(&lab.server.ns, Role::Server, dir.path()).unwrap();
    let client = c.start(&lab.client.ns, Role::Client, dir.path()).unwrap();
    std::env::remove_var("SUIDAO_LOG");
    assert!(ping(&lab.client.ns, SERVER_V4, 3).unwrap());
    let _ = suidao_common::uapi::request(&s.ifname, "suidao_reload=1");
    let _ = server.status().unwrap();
    let mut logs = String::new();
    for mut n in [server, client] {
        n.process.stop();
        logs.push_str(&n.log());
    }
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "trace logging was on"
    );
    let secrets = [
        s.private_key.to_base64().to_string(),
        s.private_key.to_hex().to_string(),
        c.private_key.to_base64().to_string(),
        c.private_key.to_hex().to_string(),
        psk.to_base64().to_string(),
        psk.to_hex().to_string(),
    ];
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a log line holds key material"
        );
    }
    // Key files suidao writes are 0600; `import -o` writes one.
    use std::os::unix::fs::PermissionsExt;
    let conf = dir.path().join("x.conf");
    std::fs::write(
        &conf,
        suidao_common::wgquick::export(
            &suidao_common::config::Config::load(&dir.path().join(format!("{}.toml", c.ifname)))
                .unwrap(),
        ),
    )
    .unwrap();
    let out = dir.path().join("x.toml");
    let st = std::process::Command::new(suidao_lab::suidao::bin_path("suidao-client").unwrap())
        .args(["import"])
        .arg(&conf)
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );
}
