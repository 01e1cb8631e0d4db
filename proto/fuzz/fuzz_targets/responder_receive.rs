//! The responder's whole receive path: whatever arrives, no panic, and no reply to anything
//! that is not authenticated.
//!
//! The first input byte picks a mode: raw bytes as a datagram, or a real initiation / transport
//! message from a known peer with the rest of the input XORed over it (so the fuzzer explores
//! inside well-formed messages, past the length checks). A mutated real message may still be
//! genuine (a flip in mac2, which is not checked when not under load): then the only reply
//! allowed is a handshake response of the exact size. With under_load set, cookie replies (64
//! bytes) are allowed too, but only to messages whose mac1 was right.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use suidao_proto::keys::PrivateKey;
use suidao_proto::constants::{COOKIE_REPLY_LEN, RESPONSE_LEN};
use suidao_proto::{Device, PeerConfig, Received, Time};

struct World {
    responder: Device,
    initiation: Vec<u8>,
    transport: Vec<u8>,
    start: Instant,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let r_key = PrivateKey::from_bytes([0x11; 32]);
        let i_key = PrivateKey::from_bytes([0x22; 32]);
        let responder = Device::new(r_key.clone(), StdRng::seed_from_u64(1));
        let initiator = Device::new(i_key.clone(), StdRng::seed_from_u64(2));
        let mut p = PeerConfig::new(i_key.public_key());
        p.allowed_ips = vec!["10.0.0.1/32".parse().unwrap()];
        responder.add_peer(p).unwrap();
        let mut p = PeerConfig::new(r_key.public_key());
        p.allowed_ips = vec!["10.0.0.0/24".parse().unwrap()];
        p.endpoint = Some("198.18.0.2:51820".parse().unwrap());
        initiator.add_peer(p).unwrap();
        let start = Instant::now();
        let now = Time::new(start, Duration::from_secs(1_800_000_000));
        // A handshake between them, to get a real initiation and a real transport message.
        let mut packet = vec![0u8; 128];
        packet[16] = 0x45;
        packet[16 + 3] = 28;
        packet[16 + 12..16 + 16].copy_from_slice(&[10, 0, 0, 1]);
        packet[16 + 16..16 + 20].copy_from_slice(&[10, 0, 0, 2]);
        let mut out = Vec::new();
        initiator.encapsulate(&mut packet, 28, now, &mut out);
        let initiation = out[0].bytes.clone();
        let mut init_copy = initiation.clone();
        let mut replies = Vec::new();
        let src: SocketAddr = "198.18.0.1:51820".parse().unwrap();
        responder.receive(src, &mut init_copy, now, &mut replies);
        let mut resp = replies[0].bytes.clone();
        let mut flushed = Vec::new();
        initiator.receive("198.18.0.2:51820".parse::<SocketAddr>().unwrap(), &mut resp, now, &mut flushed);
        let transport = flushed[0].bytes.clone();
        World {
            responder,
            initiation,
            transport,
            start,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut datagram = match mode % 3 {
        0 => rest.to_vec(),
        1 => xor_over(&w.initiation, rest),
        _ => xor_over(&w.transport, rest),
    };
    let under_load = mode & 0x80 != 0;
    let now = Time::new(w.start + Duration::from_secs(u64::from(mode & 0x0f)), Duration::from_secs(1_800_000_000));
    if under_load {
        w.responder.handshake_queue_backed_up(now.instant);
    }
    // The world is shared between runs: an earlier run's load may still be in force.
    let under_load = w.responder.under_load(now.instant);
    let src: SocketAddr = if mode & 0x40 != 0 { "198.18.0.66:6666" } else { "[fd00::66]:6666" }.parse().unwrap();
    let mut out = Vec::new();
    let r = w.responder.receive(src, &mut datagram, now, &mut out);
    for o in &out {
        let ok = o.bytes.len() == RESPONSE_LEN || (under_load && o.bytes.len() == COOKIE_REPLY_LEN);
        assert!(ok, "replied {} bytes to {r:?}", o.bytes.len());
        assert_eq!(o.to.addr, src);
    }
    if mode % 3 == 0 {
        // Raw bytes cannot carry a valid mac1 or tag by chance.
        assert!(out.is_empty());
        assert!(!matches!(r, Received::Packet { .. } | Received::Handshake { .. } | Received::Keepalive { .. }));
    }
    let mut timers = Vec::new();
    w.responder.update_timers(now, &mut timers);
});

fn xor_over(base: &[u8], mask: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for (b, m) in v.iter_mut().zip(mask) {
        *b ^= m;
    }
    // Extra input bytes extend or (with a marker) truncate the message.
    if mask.len() > base.len() {
        let extra = &mask[base.len()..];
        if extra[0] & 1 == 0 {
            v.extend_from_slice(&extra[1..]);
        } else {
            v.truncate(usize::from(extra[0]) % (base.len() + 1));
        }
    }
    v
}
