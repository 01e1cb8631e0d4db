//! Micro-benchmarks of the protocol core (`cargo bench -p suidao-proto`):
//! - one X25519 scalar multiplication, the unit of handshake cost, and one fixed-base
//!   multiplication (a public key from its private key);
//! - one full handshake between two devices: initiation, response, first transport packet
//!   (sealed by the initiator and opened by the responder);
//! - transport seal and open with `ring` at 64, 1420 and 8192 bytes, and RustCrypto's
//!   ChaCha20-Poly1305 at 1420 bytes for comparison.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand::rngs::OsRng;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use suidao_proto::keys::PrivateKey;
use suidao_proto::session::Keypair;
use suidao_proto::{Device, PeerConfig, Received, Time};

fn x25519(c: &mut Criterion) {
    let a = x25519_dalek::StaticSecret::random_from_rng(rand::rngs::OsRng);
    let b = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::random_from_rng(
        rand::rngs::OsRng,
    ));
    c.bench_function("x25519_scalar_mult", |bench| {
        bench.iter(|| black_box(a.diffie_hellman(black_box(&b))))
    });
    // What a public key costs from its private key (a fixed-base multiplication, with
    // dalek's precomputed table): what the responder's precomputed initial hash saves on
    // each initiation.
    c.bench_function("x25519_base_point_mult", |bench| {
        bench.iter(|| black_box(x25519_dalek::PublicKey::from(black_box(&a))))
    });
}

fn handshake(c: &mut Criterion) {
    let i_key = PrivateKey::generate(&mut OsRng);
    let r_key = PrivateKey::generate(&mut OsRng);
    let initiator = Device::new(i_key.clone(), OsRng);
    let responder = Device::new(r_key.clone(), OsRng);
    let i_addr: SocketAddr = "198.18.0.1:1".parse().unwrap_or_else(|_| unreachable!());
    let r_addr: SocketAddr = "198.18.0.2:1".parse().unwrap_or_else(|_| unreachable!());
    let mut p = PeerConfig::new(r_key.public_key());
    p.endpoint = Some(r_addr);
    p.allowed_ips = vec!["0.0.0.0/0".parse().unwrap_or_else(|_| unreachable!())];
    let _ = initiator.add_peer(p);
    let mut p = PeerConfig::new(i_key.public_key());
    p.allowed_ips = vec!["10.0.0.1/32".parse().unwrap_or_else(|_| unreachable!())];
    let _ = responder.add_peer(p);
    let mut packet = vec![0u8; 16 + 84 + 32];
    packet[16] = 0x45;
    packet[16 + 3] = 84;
    packet[16 + 12..16 + 16].copy_from_slice(&[10, 0, 0, 1]);
    packet[16 + 16..16 + 20].copy_from_slice(&[10, 0, 0, 2]);
    // A fake clock that moves 200 s per handshake: every handshake is a fresh one (past
    // REKEY_TIMEOUT and the initiation flood guard, and every old session expired).
    let mut now = Time::new(Instant::now(), Duration::from_secs(1_800_000_000));
    let mut out = Vec::new();
    c.bench_function("full_handshake_and_first_packet", |bench| {
        bench.iter(|| {
            now = now + Duration::from_secs(200);
            out.clear();
            let mut buf = packet.clone();
            initiator.encapsulate(&mut buf, 84, now, &mut out);
            let mut init = out.pop().map(|o| o.bytes).unwrap_or_default();
            responder.receive(i_addr, &mut init, now, &mut out);
            let mut resp = out.pop().map(|o| o.bytes).unwrap_or_default();
            initiator.receive(r_addr, &mut resp, now, &mut out);
            let mut first = out.pop().map(|o| o.bytes).unwrap_or_default();
            let r = responder.receive(i_addr, &mut first, now, &mut out);
            assert!(matches!(r, Received::Packet { .. }), "{r:?}");
        })
    });
}

fn keypairs() -> (Keypair, Keypair) {
    Keypair::test_pair(Instant::now())
}

fn transport(c: &mut Criterion) {
    let mut group = c.benchmark_group("transport");
    for size in [64usize, 1420, 8192] {
        let (i, r) = keypairs();
        let mut buf = vec![0u8; 16 + size + 32];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("seal_{size}"), |bench| {
            bench.iter(|| {
                let c = i.next_counter().unwrap_or(0);
                black_box(i.seal_in_place(c, &mut buf, size, usize::MAX))
            })
        });
        let now = Instant::now();
        group.bench_function(format!("open_{size}"), |bench| {
            bench.iter_batched_ref(
                || {
                    let mut b = vec![0u8; 16 + size + 32];
                    let c = i.next_counter().unwrap_or(0);
                    let n = i.seal_in_place(c, &mut b, size, usize::MAX).unwrap_or(0);
                    b.truncate(n);
                    (c, b)
                },
                |(c, b)| {
                    let ok = r.open_in_place(*c, &mut b[16..], now);
                    assert!(ok.is_ok());
                },
                BatchSize::SmallInput,
            )
        });
    }
    // The RustCrypto implementation, for the record of why the data path uses ring.
    {
        use chacha20poly1305::aead::{AeadInPlace, KeyInit};
        let cipher = chacha20poly1305::ChaCha20Poly1305::new(&[7u8; 32].into());
        let mut data = vec![0u8; 1420];
        let mut counter = 0u64;
        group.throughput(Throughput::Bytes(1420));
        group.bench_function("rustcrypto_seal_1420", |bench| {
            bench.iter(|| {
                counter += 1;
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&counter.to_le_bytes());
                black_box(cipher.encrypt_in_place_detached(&nonce.into(), &[], &mut data))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, x25519, handshake, transport);
criterion_main!(benches);
