//! The steady-state packet path allocates nothing: once a session is up, sealing (encapsulate)
//! and opening (receive) packets in caller-owned buffers makes no heap allocation. Counted with
//! a global allocator that counts (this test binary only).
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand_core::OsRng;
use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use suidao_proto::keys::PrivateKey;
use suidao_proto::{Device, PeerConfig, Received, Sent, Time};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller upholds GlobalAlloc's contract, passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn ipv4(src: [u8; 4], dst: [u8; 4], len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p
}

#[test]
fn sealing_and_opening_allocate_nothing_once_the_session_is_up() {
    let (ka, kb) = (
        PrivateKey::generate(&mut OsRng),
        PrivateKey::generate(&mut OsRng),
    );
    let (a, b) = (
        Device::new(ka.clone(), OsRng),
        Device::new(kb.clone(), OsRng),
    );
    let a_addr: SocketAddr = "198.18.0.1:1".parse().unwrap();
    let b_addr: SocketAddr = "198.18.0.2:2".parse().unwrap();
    let mut p = PeerConfig::new(kb.public_key());
    p.endpoint = Some(b_addr);
    p.allowed_ips = vec!["10.0.0.2/32".parse().unwrap()];
    a.add_peer(p).unwrap();
    let mut p = PeerConfig::new(ka.public_key());
    p.allowed_ips = vec!["10.0.0.1/32".parse().unwrap()];
    b.add_peer(p).unwrap();
    let now = Time::new(Instant::now(), Duration::from_secs(1_800_000_000));

    // The handshake (control plane: allowed to allocate).
    let packet = ipv4([10, 0, 0, 1], [10, 0, 0, 2], 1400);
    let mut buf = vec![0u8; 2048];
    buf[16..16 + packet.len()].copy_from_slice(&packet);
    let mut out = Vec::with_capacity(16);
    assert_eq!(
        a.encapsulate(&mut buf, packet.len(), now, &mut out),
        Sent::Queued
    );
    let mut init = out.pop().unwrap().bytes;
    b.receive(a_addr, &mut init, now, &mut out);
    let mut resp = out.pop().unwrap().bytes;
    a.receive(b_addr, &mut resp, now, &mut out);
    let flushed = std::mem::take(&mut out);
    for o in flushed {
        let mut d = o.bytes;
        b.receive(a_addr, &mut d, now, &mut out);
    }
    out.clear();

    // Steady state, both directions: not one allocation.
    let back = ipv4([10, 0, 0, 2], [10, 0, 0, 1], 1400);
    let mut rbuf = vec![0u8; 2048];
    // The counter counts (so that zero below means something).
    COUNTING.store(true, Ordering::Relaxed);
    let probe = std::hint::black_box(Box::new(7u64));
    COUNTING.store(false, Ordering::Relaxed);
    assert!(ALLOCATIONS.load(Ordering::Relaxed) >= 1);
    drop(probe);
    ALLOCATIONS.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    let mut delivered = 0;
    for _ in 0..10_000 {
        for (from, to, from_addr, pkt) in [(&a, &b, a_addr, &packet), (&b, &a, b_addr, &back)] {
            buf[16..16 + pkt.len()].copy_from_slice(pkt);
            let Sent::Ready { len, .. } = from.encapsulate(&mut buf, pkt.len(), now, &mut out)
            else {
                panic!("no session")
            };
            rbuf[..len].copy_from_slice(&buf[..len]);
            if let Received::Packet { .. } = to.receive(from_addr, &mut rbuf[..len], now, &mut out)
            {
                delivered += 1;
            }
        }
    }
    COUNTING.store(false, Ordering::Relaxed);
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(delivered, 20_000);
    assert!(out.is_empty());
    assert_eq!(allocations, 0, "heap allocations on the steady-state path");
}
