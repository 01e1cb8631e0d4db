//! An attacker's tools, for the hardening tests: junk of every shape, initiations with a valid
//! mac1 from keys the server does not know, and reading packets back out of a capture file.

use rand_core::OsRng;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use suidao_proto::constants::*;
use suidao_proto::cookie::CookieGenerator;
use suidao_proto::handshake::Handshake;
use suidao_proto::keys::{PrivateKey, PublicKey};
use suidao_proto::time::Tai64N;

/// A small deterministic generator (xorshift64*), enough for junk.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next_u64() as u8;
        }
    }
}

/// A handshake initiation to `server` from a fresh key the server does not know, with a valid
/// mac1 (anyone who knows the server's public key can make one).
pub fn initiation_from_stranger(server: &PublicKey) -> Vec<u8> {
    let me = PrivateKey::generate(&mut OsRng);
    let mut hs = Handshake::new(&me, *server, None);
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut msg = hs
        .create_initiation(
            &me,
            0x5eed,
            Tai64N::from_since_epoch(since_epoch),
            PrivateKey::generate(&mut OsRng),
        )
        .map(|m| m.to_vec())
        .unwrap_or_default();
    CookieGenerator::new(server).add_macs(&mut msg, Instant::now());
    msg
}

/// One junk datagram: random lengths, lengths within one byte of each message size with a
/// plausible type byte, or a truncated or bit-flipped copy of one of `samples`.
pub fn junk(rng: &mut Rng, samples: &[Vec<u8>], buf: &mut Vec<u8>) {
    buf.clear();
    match rng.below(4) {
        0 => {
            buf.resize(rng.below(1501), 0);
            rng.fill(buf);
        }
        1 => {
            let (kind, len) = [
                (MESSAGE_INITIATION, INITIATION_LEN),
                (MESSAGE_RESPONSE, RESPONSE_LEN),
                (MESSAGE_COOKIE_REPLY, COOKIE_REPLY_LEN),
                (MESSAGE_TRANSPORT, TRANSPORT_MIN_LEN),
            ][rng.below(4)];
            buf.resize(len + rng.below(3) - 1, 0);
            rng.fill(buf);
            buf[0] = kind;
            buf[1..4].fill(0);
        }
        2 if !samples.is_empty() => {
            let s = &samples[rng.below(samples.len())];
            buf.extend_from_slice(&s[..rng.below(s.len() + 1)]);
        }
        _ if !samples.is_empty() => {
            let s = &samples[rng.below(samples.len())];
            buf.extend_from_slice(s);
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(buf.len());
                buf[at] ^= 1 << rng.below(8);
            }
        }
        _ => buf.push(0),
    }
}

/// Sends `count` datagrams from `sock` to `to`, at most `per_second` (0: as fast as it goes).
pub fn send_paced(
    sock: &UdpSocket,
    to: SocketAddr,
    count: usize,
    per_second: usize,
    mut next: impl FnMut(&mut Vec<u8>),
) -> usize {
    let start = Instant::now();
    let mut buf = Vec::with_capacity(2048);
    let mut sent = 0;
    for i in 0..count {
        if per_second > 0 && i % 100 == 0 {
            let due = start + Duration::from_secs_f64(i as f64 / per_second as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        next(&mut buf);
        // A full socket buffer drops the datagram (ENOBUFS/EAGAIN): still an attempt made.
        if sock.send_to(&buf, to).is_ok() {
            sent += 1;
        }
    }
    sent
}

/// Splits a captured UDP payload into WireGuard transport messages. A capture can hold a GSO
/// super-packet (several same-size datagrams sent in one system call, not yet segmented where
/// tcpdump sees them): the segment size shows where the next message's header (type 4 and the
/// same receiver index) starts again.
pub fn split_transport(payload: &[u8]) -> Vec<Vec<u8>> {
    if payload.len() < TRANSPORT_MIN_LEN || payload[0] != MESSAGE_TRANSPORT {
        return vec![payload.to_vec()];
    }
    // Any byte offset: padding never makes a message longer than the MTU, so full-size
    // messages need not be a multiple of 16 long (16 + 1420 + 16 = 1452).
    let header = &payload[..8];
    let size = (TRANSPORT_MIN_LEN..payload.len().saturating_sub(7))
        .find(|&at| &payload[at..at + 8] == header)
        .unwrap_or(payload.len());
    payload.chunks(size).map(|c| c.to_vec()).collect()
}

/// UDP payloads to `port` from a pcap file of Ethernet frames (tcpdump -w), in order.
pub fn udp_payloads(pcap: &[u8], port: u16) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    if pcap.len() < 24 {
        return out;
    }
    let mut off = 24;
    while off + 16 <= pcap.len() {
        let incl =
            u32::from_le_bytes([pcap[off + 8], pcap[off + 9], pcap[off + 10], pcap[off + 11]])
                as usize;
        let Some(frame) = pcap.get(off + 16..off + 16 + incl) else {
            break;
        };
        off += 16 + incl;
        // Ethernet, then IPv4 or IPv6, then UDP.
        let Some(ethertype) = frame.get(12..14) else {
            continue;
        };
        let (l4, proto) = match ethertype {
            [0x08, 0x00] => {
                let ihl = usize::from(frame.get(14).map_or(0, |b| b & 0xf)) * 4;
                (14 + ihl, frame.get(23).copied())
            }
            [0x86, 0xdd] => (54, frame.get(20).copied()),
            _ => continue,
        };
        if proto != Some(17) {
            continue;
        }
        let Some(udp) = frame.get(l4..l4 + 8) else {
            continue;
        };
        let dst = u16::from_be_bytes([udp[2], udp[3]]);
        let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
        if dst == port && len >= 8 {
            if let Some(p) = frame.get(l4 + 8..l4 + len) {
                out.push(p.to_vec());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn splits_gso_runs_of_unaligned_messages() {
        let mut blob = Vec::new();
        for (i, len) in [1452usize, 1452, 1452, 96].into_iter().enumerate() {
            let mut m = vec![0xaa; len];
            m[..8].copy_from_slice(&[4, 0, 0, 0, 9, 9, 9, 9]);
            m[8] = i as u8;
            blob.extend_from_slice(&m);
        }
        let parts = super::split_transport(&blob);
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            vec![1452, 1452, 1452, 96]
        );
        assert_eq!(parts[2][8], 2);
    }
}
