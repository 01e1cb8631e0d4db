//! Rekeying under traffic: with protocol time running 60 times faster (the debug-only test
//! setting SUIDAO_TEST_CLOCK_SCALE: REKEY_AFTER_TIME is 2 s, REJECT_AFTER_TIME 3 s), sessions
//! rekey many times during one long transfer, a 10 ms ping never pauses for a second, and the
//! digest matches. (Its own test binary: the setting is an environment variable.)
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;
use suidao_lab::measure::Pinger;
use suidao_lab::suidao::ping;
use suidao_tests::vpn::*;

#[test]
fn sessions_rekey_many_times_during_a_transfer_without_a_gap() {
    if !suidao_lab::require("rekey under traffic", &["ping"]) {
        return;
    }
    std::env::set_var("SUIDAO_TEST_CLOCK_SCALE", "60");
    let vpn = P2pVpn::start(false).unwrap();
    std::env::remove_var("SUIDAO_TEST_CLOCK_SCALE");
    let (s, c) = (&vpn.lab.server.ns, &vpn.lab.client.ns);
    assert!(ping(c, SERVER_V4, 2).unwrap(), "{}", vpn.logs());
    let mut pinger = Pinger::start(c, SERVER_V4, "0.01", &vpn.dir.path().join("ping.out")).unwrap();
    let to: SocketAddr = format!("{SERVER_V4}:5001").parse().unwrap();
    let t = suidao_tests::transfer::tcp(c, s, to, 2 << 30).unwrap();
    // The ping goes on past the transfer's end: the last rekey's gap would show.
    assert!(pinger.wait_replies(50, Duration::from_secs(5)));
    pinger.stop();

    assert_eq!(t.sent, t.received, "the digest matches");
    let handshakes = vpn.client.log().matches(": complete").count();
    let replies = pinger.replies();
    let gap = replies.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    eprintln!(
        "{} handshakes during a {:.1} s transfer ({:.0} Mbit/s); {} ping replies, longest gap {gap:.3} s",
        handshakes,
        t.seconds,
        t.mbit_per_s(),
        replies.len()
    );
    assert!(
        handshakes >= 4,
        "the sessions rekeyed many times ({handshakes})\n{}",
        vpn.logs()
    );
    assert!(replies.len() > 100);
    assert!(gap < 1.0, "a gap of {gap:.3} s in the 10 ms ping");
}
