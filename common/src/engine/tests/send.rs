//! The send path's runs, on their own: what `send_runs` hands the transport.

use crate::engine::send::send_runs;
use crate::testing::{MemoryNet, MemoryTransport};
use crate::transport::{RecvMeta, Transport};
use std::time::Duration;
use suidao_proto::Endpoint;

/// Runs of sealed packets leave as the same datagrams, in order, whether they go straight
/// from the slots (full-size, back to back) or are gathered first (shorter, or with a gap
/// where a packet was dropped), over a memory transport.
#[test]
fn send_runs_sends_every_datagram_in_order() {
    let net = MemoryNet::new();
    let (to, other_to) = (
        "198.18.0.2:1".parse().unwrap(),
        "198.18.0.3:1".parse().unwrap(),
    );
    let rx = net.attach(to, 1);
    let other = net.attach(other_to, 1);
    let from = net.attach("198.18.0.1:1".parse().unwrap(), 1);
    let stride = 64;
    let mut data = vec![0u8; 16 * stride];
    for (i, slot) in data.chunks_mut(stride).enumerate() {
        slot.fill(i as u8 + 1);
    }
    // (slot, destination, length)
    let (to, other_to) = (Endpoint::from(to), Endpoint::from(other_to));
    let ready = [
        (0, to, 64), // full-size, back to back: in place
        (1, to, 64),
        (2, to, 64),
        (3, to, 40),       // shorter: ends the run
        (4, to, 64),       // a new run...
        (6, to, 64),       // ...with a gap (slot 5 dropped): gathered
        (7, to, 64),       //
        (8, other_to, 64), // another endpoint
        (9, to, 30),       // short packets, one size: gathered
        (10, to, 30),
        (11, to, 30),
        (12, to, 64), // longer than the run's size: a new run
    ];
    let mut gso = Vec::new();
    send_runs(&from, &data, stride, &ready, &mut gso, 64, &mut |to, e| {
        panic!("sending to {to}: {e}")
    });
    let recv = |t: &MemoryTransport| {
        let mut buf = [0u8; 256];
        let mut meta = [RecvMeta::default(); 1];
        assert!(t.wait_readable(Some(Duration::from_secs(2))).unwrap());
        let n = t.recv(&mut buf, 256, &mut meta).unwrap();
        assert_eq!(n, 1);
        buf[..meta[0].len].to_vec()
    };
    for &(slot, dest, len) in ready.iter().filter(|r| r.1 == to) {
        let d = recv(&rx);
        assert_eq!(d.len(), len, "slot {slot} ({dest})");
        assert!(d.iter().all(|b| *b == slot as u8 + 1), "slot {slot}");
    }
    let d = recv(&other);
    assert_eq!((d.len(), d[0]), (64, 9));
}
