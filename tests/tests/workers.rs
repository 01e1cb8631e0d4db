//! Several data-path workers (`workers = 3`): a multi-queue TUN and one UDP socket per worker on
//! the listen port; data intact, and every flow in order while flows run in parallel.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use suidao_tests::transfer::{self, UdpFlow};
use suidao_tests::vpn::{P2pVpn, CLIENT_V4, PORT, SERVER_V4, SERVER_V6};

const WORKERS: usize = 3;

/// UDP sockets bound to `port` in the namespace (IPv4 and IPv6 tables).
/// Unconnected UDP sockets bound to `port` in `ns`.
fn sockets_on_port(ns: &suidao_lab::Netns, port: u16) -> usize {
    let hex = format!(":{port:04X} ");
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .map(|table| {
            let text = ns
                .command("cat")
                .and_then(|mut c| Ok(c.arg(table).output()?))
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            // Lines: "sl local_address rem_address ..."; the local address is the second field.
            // Unconnected sockets only (a remote address of zeros): a worker may also have a
            // socket connected to the peer on the port (`udp::pin`).
            text.lines()
                .skip(1)
                .filter(|l| {
                    let mut f = l.split_whitespace().skip(1);
                    let local = f.next().is_some_and(|a| format!("{a} ").ends_with(&hex));
                    let unconnected = f
                        .next()
                        .is_some_and(|r| r.chars().all(|c| c == '0' || c == ':'));
                    local && unconnected
                })
                .count()
        })
        .sum()
}

/// CPU time so far (ns, from schedstat) of each of `pid`'s threads named `name`.
fn thread_cpu_ns(pid: u32, name: &str) -> Vec<u64> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return vec![];
    };
    let mut v: Vec<(String, u64)> = tasks
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
            let ns = stat.split_whitespace().next()?.parse().ok()?;
            Some((t.file_name().to_string_lossy().into_owned(), ns))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, ns)| ns).collect()
}

fn check_flows(what: &str, flows: &[UdpFlow], logs: &str) {
    eprintln!("{what}: {flows:?}");
    for (i, f) in flows.iter().enumerate() {
        // Unpaced bursts from eight senders overflow buffers on the way (most of all with the
        // debug builds the tests run): loss is expected, but enough must arrive to judge order.
        assert!(
            f.received >= 1000,
            "{what}, flow {i}: only {} of {} datagrams arrived\n{logs}",
            f.received,
            f.sent
        );
        assert_eq!(
            f.out_of_order, 0,
            "{what}, flow {i}: datagrams arrived out of order\n{logs}"
        );
    }
}

#[test]
fn three_workers_keep_flows_in_order_and_data_intact() {
    if !suidao_lab::require("three_workers_keep_flows_in_order_and_data_intact", &[]) {
        return;
    }
    let mut vpn = P2pVpn::start_with(false, &format!("workers = {WORKERS}\n")).unwrap();
    let (s, c) = (&vpn.lab.server.ns, &vpn.lab.client.ns);

    // The TUN has one queue per worker, and the listen port one socket per worker.
    let link = s
        .command("ip")
        .unwrap()
        .args(["-d", "link", "show", &vpn.server_spec.ifname])
        .output()
        .unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(
        link.contains("multi_queue") && link.contains(&format!("numqueues {WORKERS}")),
        "a multi-queue TUN with {WORKERS} queues: {link}"
    );
    assert_eq!(
        sockets_on_port(s, PORT),
        WORKERS,
        "one UDP socket per worker on port {PORT}"
    );
    assert!(
        vpn.server.log().contains(&format!("{WORKERS} worker(s)")),
        "{}",
        vpn.logs()
    );

    // Bytes intact through a TCP stream, both ways.
    for (from, to_ns, addr) in [(c, s, SERVER_V4), (s, c, CLIENT_V4)] {
        let t = transfer::tcp(
            from,
            to_ns,
            format!("{addr}:5001").parse().unwrap(),
            64 << 20,
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", vpn.logs()));
        assert_eq!(t.sent, t.received, "SHA-256 of what was sent and arrived");
    }

    // Eight UDP flows at once, each in order, both ways and over IPv6 inside. The client's
    // flows are spread over its TUN queues: more than one worker seals them.
    let client_pid = vpn.client.process.pid().unwrap();
    let before = thread_cpu_ns(client_pid, "send");
    let flows = transfer::udp_flows(
        c,
        s,
        format!("{SERVER_V4}:5002").parse().unwrap(),
        8,
        20_000,
        1000,
    )
    .unwrap();
    check_flows("client to server", &flows, &vpn.logs());
    let after = thread_cpu_ns(client_pid, "send");
    assert_eq!(before.len(), WORKERS, "one send thread per worker");
    let busy = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| a.saturating_sub(**b) > 5_000_000)
        .count();
    eprintln!(
        "CPU ms per send thread during the flows: {:?}",
        before
            .iter()
            .zip(&after)
            .map(|(b, a)| a.saturating_sub(*b) / 1_000_000)
            .collect::<Vec<_>>()
    );
    assert!(busy >= 2, "the flows kept at least two workers busy");
    let flows = transfer::udp_flows(
        s,
        c,
        format!("{CLIENT_V4}:5003").parse().unwrap(),
        8,
        20_000,
        1000,
    )
    .unwrap();
    check_flows("server to client", &flows, &vpn.logs());
    let flows = transfer::udp_flows(
        c,
        s,
        format!("[{SERVER_V6}]:5004").parse().unwrap(),
        4,
        20_000,
        1200,
    )
    .unwrap();
    check_flows("client to server, IPv6 inside", &flows, &vpn.logs());

    // SIGTERM: every queue and socket goes, and the interface with them.
    let status = vpn
        .server
        .process
        .stop_with(
            nix::sys::signal::Signal::SIGTERM,
            std::time::Duration::from_secs(5),
        )
        .unwrap();
    assert!(status.success(), "{}", vpn.server.log());
    let s = &vpn.lab.server.ns;
    assert_eq!(sockets_on_port(s, PORT), 0, "no socket left on {PORT}");
    let link = s
        .command("ip")
        .unwrap()
        .args(["link", "show", &vpn.server_spec.ifname])
        .output()
        .unwrap();
    assert!(!link.status.success(), "the TUN interface is gone");
}
