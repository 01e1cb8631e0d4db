// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]
//! The coalescer checked against `tun-rs`'s `gso_split` (what the kernel does to a super-packet
//! it forwards): every super-packet written must split back into exactly the packets that went
//! in, byte for byte, checksums included, and every flow must keep its order.

use super::*;
use rand::{Rng, SeedableRng};

const SLOT: usize = 2048;

#[derive(Clone)]
pub(crate) struct Flow {
    pub(crate) v6: bool,
    pub(crate) sport: u16,
    pub(crate) dport: u16,
}

fn src(v6: bool) -> Vec<u8> {
    if v6 {
        vec![0xfd, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    } else {
        vec![10, 99, 0, 2]
    }
}

fn dst(v6: bool) -> Vec<u8> {
    if v6 {
        vec![0xfd, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    } else {
        vec![10, 99, 0, 1]
    }
}

/// An IP header for `l4` bytes of protocol `proto`, checksummed (IPv4).
fn ip_header(v6: bool, proto: u8, l4: usize, id: u16) -> Vec<u8> {
    if v6 {
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&(l4 as u16).to_be_bytes());
        h.extend_from_slice(&[proto, 64]);
        h.extend(src(true));
        h.extend(dst(true));
        h
    } else {
        let mut h = vec![0x45, 0];
        h.extend_from_slice(&((20 + l4) as u16).to_be_bytes());
        h.extend_from_slice(&id.to_be_bytes());
        h.extend_from_slice(&[0x40, 0, 64, proto, 0, 0]);
        h.extend(src(false));
        h.extend(dst(false));
        let c = !fold(sum16(&h, 0));
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }
}

/// Fills in the full L4 checksum of `pkt` (checksum field at `ip_len + at`).
fn l4_checksum(pkt: &mut [u8], v6: bool, proto: u8, at: usize) {
    let ip_len = if v6 { 40 } else { 20 };
    let addrs = if v6 { &pkt[8..40] } else { &pkt[12..20] };
    let l4 = pkt.len() - ip_len;
    let mut sum = sum16(addrs, 0) + u64::from(proto) + l4 as u64;
    pkt[ip_len + at..ip_len + at + 2].copy_from_slice(&[0, 0]);
    sum = sum16(&pkt[ip_len..], sum);
    let c = !fold(sum);
    pkt[ip_len + at..ip_len + at + 2].copy_from_slice(&c.to_be_bytes());
}

#[allow(clippy::too_many_arguments)]
fn tcp(
    f: &Flow,
    id: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let tcp_len = 20 + options.len();
    let mut p = ip_header(f.v6, 6, tcp_len + payload.len(), id);
    p.extend_from_slice(&f.sport.to_be_bytes());
    p.extend_from_slice(&f.dport.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ack.to_be_bytes());
    p.push(((tcp_len / 4) as u8) << 4);
    p.push(flags);
    p.extend_from_slice(&window.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0]);
    p.extend_from_slice(options);
    p.extend_from_slice(payload);
    l4_checksum(&mut p, f.v6, 6, 16);
    p
}

fn udp(f: &Flow, id: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = ip_header(f.v6, 17, 8 + payload.len(), id);
    p.extend_from_slice(&f.sport.to_be_bytes());
    p.extend_from_slice(&f.dport.to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    l4_checksum(&mut p, f.v6, 17, 6);
    p
}

fn payload(seed: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| seed.wrapping_add(i as u8)).collect()
}

/// A stream of `sizes.len()` in-sequence TCP segments of one flow, PSH on the last.
pub(crate) fn stream(f: &Flow, sizes: &[usize], options: &[u8]) -> Vec<Vec<u8>> {
    let mut seq = 1000u32;
    let mut out = Vec::new();
    for (i, n) in sizes.iter().enumerate() {
        let last = i + 1 == sizes.len();
        let flags = TCP_ACK | if last { TCP_PSH } else { 0 };
        out.push(tcp(
            f,
            7 + i as u16,
            seq,
            555,
            flags,
            512,
            options,
            &payload(i as u8, *n),
        ));
        seq = seq.wrapping_add(*n as u32);
    }
    out
}

/// Lays the packets out as the receive buffer holds them, runs the coalescer over them, and
/// returns what was written (each write's iovecs joined).
fn coalesce(packets: &[Vec<u8>], vnet: bool, udp: bool) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; packets.len().max(1) * SLOT];
    let mut c = Coalescer::new(vnet, udp);
    for (i, p) in packets.iter().enumerate() {
        let start = i * SLOT + 16;
        buf[start..start + p.len()].copy_from_slice(p);
        c.push(&buf, start, p.len());
    }
    let mut writes = Vec::new();
    c.flush(&mut buf, |iov| {
        let mut w = Vec::new();
        for s in iov {
            w.extend_from_slice(s);
        }
        let n = w.len();
        writes.push(w);
        Ok(n)
    })
    .unwrap();
    assert!(c.is_empty());
    writes
}

/// What the kernel would make of one write: the packets it stands for.
pub(crate) fn split(write: &[u8]) -> Vec<Vec<u8>> {
    let hdr = VirtioNetHdr::decode(&write[..HEADROOM]).unwrap();
    let mut body = write[HEADROOM..].to_vec();
    if hdr.gso_type == 0 {
        assert_eq!(hdr.flags, 0, "a single packet goes with an empty header");
        return vec![body];
    }
    assert_eq!(hdr.flags, F_NEEDS_CSUM);
    let v6 = body[0] >> 4 == 6;
    let mut out = vec![vec![0u8; 2048]; 128];
    let mut sizes = vec![0usize; 128];
    let n = tun_rs::gso_split(&mut body, hdr, &mut out, &mut sizes, 0, v6).unwrap();
    out.into_iter()
        .zip(sizes)
        .take(n)
        .map(|(mut p, s)| {
            p.truncate(s);
            p
        })
        .collect()
}

/// The flow a packet belongs to, as the tests tell them apart (junk: (0, 0)).
fn ports(p: &[u8]) -> (u16, u16) {
    let ip_len = if p.first().is_some_and(|b| b >> 4 == 6) {
        40
    } else {
        20
    };
    if p.len() < ip_len + 4 {
        return (0, 0);
    }
    (be16(p, ip_len), be16(p, ip_len + 2))
}

/// Every flow's packets come out exactly as they went in, in order.
fn assert_round_trip(packets: &[Vec<u8>], writes: &[Vec<u8>]) {
    let out: Vec<Vec<u8>> = writes.iter().flat_map(|w| split(w)).collect();
    assert_eq!(out.len(), packets.len(), "as many packets out as in");
    let mut flows: Vec<(u16, u16)> = packets.iter().map(|p| ports(p)).collect();
    flows.dedup();
    for f in flows {
        let a: Vec<&Vec<u8>> = packets.iter().filter(|p| ports(p) == f).collect();
        let b: Vec<&Vec<u8>> = out.iter().filter(|p| ports(p) == f).collect();
        assert_eq!(a.len(), b.len(), "flow {f:?}");
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(x, y, "flow {f:?}, packet {i}");
        }
    }
}

pub(crate) fn flow(v6: bool, sport: u16) -> Flow {
    Flow {
        v6,
        sport,
        dport: 5001,
    }
}

#[test]
fn a_tcp_stream_becomes_one_super_packet_and_splits_back_exactly() {
    for v6 in [false, true] {
        let f = flow(v6, 40000);
        let mut sizes = vec![1380; 40];
        sizes.push(500);
        let packets = stream(&f, &sizes, &[]);
        let writes = coalesce(&packets, true, true);
        assert_eq!(writes.len(), 1, "one write (v6 {v6})");
        let hdr = VirtioNetHdr::decode(&writes[0][..HEADROOM]).unwrap();
        assert_eq!(hdr.gso_size, 1380);
        assert_eq!(hdr.gso_type, if v6 { GSO_TCPV6 } else { GSO_TCPV4 });
        assert_round_trip(&packets, &writes);
    }
}

#[test]
fn timestamps_options_and_the_64_kb_limit() {
    // Options (NOP NOP timestamp) equal in every segment: coalesced; 60 segments of 1300
    // bytes are more than 64 KB: two super-packets.
    let opts = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
    let f = flow(false, 40001);
    let packets = stream(&f, &[1300; 60], &opts);
    let writes = coalesce(&packets, true, true);
    assert_eq!(writes.len(), 2);
    assert!(writes.iter().all(|w| w.len() - HEADROOM <= MAX_SUPER));
    assert_round_trip(&packets, &writes);
}

#[test]
fn interleaved_flows_each_keep_their_order() {
    let flows: Vec<Flow> = (0..3).map(|i| flow(i == 1, 41000 + i)).collect();
    let streams: Vec<Vec<Vec<u8>>> = flows.iter().map(|f| stream(f, &[1000; 10], &[])).collect();
    // Round robin: a, b, c, a, b, c, ...
    let mut packets = Vec::new();
    for i in 0..10 {
        for s in &streams {
            packets.push(s[i].clone());
        }
    }
    let writes = coalesce(&packets, true, true);
    assert_eq!(writes.len(), 3, "one super-packet per flow");
    assert_round_trip(&packets, &writes);
}

#[test]
fn what_must_not_be_coalesced_is_not() {
    let f = flow(false, 42000);
    let id = std::cell::Cell::new(0u16);
    let p = |seq: u32, ack: u32, flags: u8, window: u16, n: usize| {
        id.set(id.get() + 1);
        tcp(
            &f,
            id.get(),
            seq,
            ack,
            flags,
            window,
            &[],
            &payload(seq as u8, n),
        )
    };
    let cases: Vec<(&str, Vec<Vec<u8>>, usize)> = vec![
        (
            "a gap in the sequence",
            vec![p(0, 1, TCP_ACK, 9, 100), p(200, 1, TCP_ACK, 9, 100)],
            2,
        ),
        (
            "another ack",
            vec![p(0, 1, TCP_ACK, 9, 100), p(100, 2, TCP_ACK, 9, 100)],
            2,
        ),
        (
            "another window",
            vec![p(0, 1, TCP_ACK, 9, 100), p(100, 1, TCP_ACK, 8, 100)],
            2,
        ),
        (
            "FIN",
            vec![p(0, 1, TCP_ACK, 9, 100), p(100, 1, TCP_ACK | 0x01, 9, 100)],
            2,
        ),
        (
            "SYN",
            vec![p(0, 1, 0x12, 9, 100), p(100, 1, TCP_ACK, 9, 100)],
            2,
        ),
        (
            "RST",
            vec![p(0, 1, TCP_ACK, 9, 100), p(100, 1, 0x14, 9, 100)],
            2,
        ),
        (
            "pure acks",
            vec![p(0, 1, TCP_ACK, 9, 0), p(0, 1, TCP_ACK, 9, 0)],
            2,
        ),
        (
            "larger after smaller",
            vec![p(0, 1, TCP_ACK, 9, 50), p(50, 1, TCP_ACK, 9, 100)],
            2,
        ),
        (
            "nothing after a shorter segment",
            vec![
                p(0, 1, TCP_ACK, 9, 100),
                p(100, 1, TCP_ACK, 9, 50),
                p(150, 1, TCP_ACK, 9, 50),
            ],
            2,
        ),
        (
            "nothing after PSH",
            vec![
                p(0, 1, TCP_ACK | TCP_PSH, 9, 100),
                p(100, 1, TCP_ACK, 9, 100),
            ],
            2,
        ),
        (
            "in sequence",
            vec![p(0, 1, TCP_ACK, 9, 100), p(100, 1, TCP_ACK, 9, 100)],
            1,
        ),
        (
            "a pure ack of the flow between two segments is not overtaken",
            vec![
                p(0, 1, TCP_ACK, 9, 100),
                p(100, 1, TCP_ACK, 9, 0),
                p(100, 1, TCP_ACK, 9, 100),
            ],
            3,
        ),
        (
            "nor is a packet that cannot be parsed",
            vec![
                p(0, 1, TCP_ACK, 9, 100),
                vec![0x45, 0, 0],
                p(100, 1, TCP_ACK, 9, 100),
            ],
            3,
        ),
        (
            "IPv4 identifications not counting up",
            vec![
                tcp(&f, 7, 0, 1, TCP_ACK, 9, &[], &[1; 100]),
                tcp(&f, 7, 100, 1, TCP_ACK, 9, &[], &[2; 100]),
            ],
            2,
        ),
    ];
    for (what, packets, expected) in cases {
        let writes = coalesce(&packets, true, true);
        assert_eq!(writes.len(), expected, "{what}");
        assert_round_trip(&packets, &writes);
    }
}

#[test]
fn udp_datagrams_of_one_size_coalesce_only_where_the_tun_takes_uso() {
    for v6 in [false, true] {
        let f = flow(v6, 43000);
        let sizes = [100, 100, 100, 60, 100, 100];
        let packets: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| udp(&f, i as u16, &payload(i as u8, *n)))
            .collect();
        let writes = coalesce(&packets, true, true);
        assert_eq!(writes.len(), 2, "[100, 100, 100, 60] and [100, 100]");
        assert_round_trip(&packets, &writes);
        let writes = coalesce(&packets, true, false);
        assert_eq!(writes.len(), sizes.len(), "no USO: one write each");
        assert_round_trip(&packets, &writes);
    }
}

#[test]
fn without_offload_packets_go_as_they_are() {
    let f = flow(false, 44000);
    let packets = stream(&f, &[500; 5], &[]);
    let writes = coalesce(&packets, false, true);
    assert_eq!(writes, packets);
}

#[test]
fn junk_never_panics_and_every_write_is_whole() {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x6e0);
    let f = flow(false, 45000);
    let good = stream(&f, &[300; 8], &[]);
    for round in 0..2000 {
        let mut packets = Vec::new();
        for _ in 0..rng.gen_range(1..20) {
            let mut p = good[rng.gen_range(0..good.len())].clone();
            match rng.gen_range(0..4) {
                0 => p.truncate(rng.gen_range(0..p.len())),
                1 => {
                    let i = rng.gen_range(0..p.len());
                    p[i] ^= 1 << rng.gen_range(0..8);
                }
                2 => p = (0..rng.gen_range(0..100)).map(|_| rng.gen()).collect(),
                _ => {}
            }
            packets.push(p);
        }
        let writes = coalesce(&packets, true, rng.gen());
        let total: usize = writes.iter().map(|w| w.len() - HEADROOM).sum();
        let expected: usize = packets.iter().map(|p| p.len()).sum::<usize>()
            - writes
                .iter()
                .map(|w| {
                    let h = VirtioNetHdr::decode(&w[..HEADROOM]).unwrap();
                    // A super-packet carries its members' headers once.
                    if h.gso_type == 0 {
                        0
                    } else {
                        let n =
                            (w.len() - HEADROOM - h.hdr_len as usize).div_ceil(h.gso_size as usize);
                        (n - 1) * h.hdr_len as usize
                    }
                })
                .sum::<usize>();
        assert_eq!(total, expected, "round {round}: every byte written once");
    }
}

/// Frames (a TAP): the IP packets of one flow behind equal Ethernet headers coalesce into one
/// super-frame, which splits back into exactly the frames that went in; an ARP frame in the
/// middle is written as it is and does not cut the group; the same flow behind another MAC is
/// a group of its own.
#[test]
fn frames_of_one_flow_coalesce_behind_their_ethernet_header() {
    for v6 in [false, true] {
        let ether = |dst: u8, v6: bool| {
            let mut e = vec![2, 0, 0, 0, 0, dst, 2, 0, 0, 0, 0, 9];
            e.extend_from_slice(if v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
            e
        };
        let framed = |dst: u8, p: &Vec<u8>| [ether(dst, v6), p.clone()].concat();
        let packets = stream(&flow(v6, 40000), &[1380; 10], &[]);
        let mut frames: Vec<Vec<u8>> = packets[..5].iter().map(|p| framed(1, p)).collect();
        let arp = [
            vec![0xff; 6],
            vec![2, 0, 0, 0, 0, 9, 0x08, 0x06],
            vec![0; 28],
        ]
        .concat();
        frames.push(arp.clone());
        frames.extend(packets[5..].iter().map(|p| framed(1, p)));
        let other = stream(&flow(v6, 40000), &[1380; 2], &[]);
        frames.extend(other.iter().map(|p| framed(2, p)));

        let mut buf = vec![0u8; frames.len() * SLOT];
        let mut c = Coalescer::for_frames(true, true);
        for (i, f) in frames.iter().enumerate() {
            let start = i * SLOT + 17;
            buf[start..start + f.len()].copy_from_slice(f);
            c.push(&buf, start, f.len());
        }
        let mut writes = Vec::new();
        c.flush(&mut buf, |iov| {
            writes.push(
                iov.iter()
                    .flat_map(|s| s.iter().copied())
                    .collect::<Vec<u8>>(),
            );
            Ok(0)
        })
        .unwrap();
        assert_eq!(
            writes.len(),
            3,
            "the flow, the ARP frame, the other MAC's (v6 {v6})"
        );
        let unframe = |w: &Vec<u8>| -> Vec<Vec<u8>> {
            let mut hdr = VirtioNetHdr::decode(&w[..HEADROOM]).unwrap();
            let (eth, ip) = w[HEADROOM..].split_at(14);
            if hdr.gso_type == 0 {
                return vec![w[HEADROOM..].to_vec()];
            }
            hdr.csum_start -= 14;
            hdr.hdr_len -= 14;
            let mut v = vec![0u8; HEADROOM];
            hdr.encode(&mut v).unwrap();
            v.extend_from_slice(ip);
            split(&v)
                .into_iter()
                .map(|p| [eth.to_vec(), p].concat())
                .collect()
        };
        assert_eq!(unframe(&writes[0]), [&frames[..5], &frames[6..11]].concat());
        assert_eq!(unframe(&writes[1]), vec![arp]);
        assert_eq!(unframe(&writes[2]), frames[11..].to_vec());
    }
}
