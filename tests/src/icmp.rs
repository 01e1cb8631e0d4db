//! Just enough IPv4 and ICMP to build an echo request and recognise the reply.

use std::net::Ipv4Addr;

/// The Internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = match chunk {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => 0,
        };
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 ICMP echo (type 8 request, 0 reply) with `payload`.
pub fn echo(kind: u8, src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let icmp_len = 8 + payload.len();
    let total = 20 + icmp_len;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40; // don't fragment
    p[8] = 64;
    p[9] = 1; // ICMP
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let icmp = &mut p[20..];
    icmp[0] = kind;
    icmp[4..6].copy_from_slice(&id.to_be_bytes());
    icmp[6..8].copy_from_slice(&seq.to_be_bytes());
    icmp[8..].copy_from_slice(payload);
    let c = checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// A parsed IPv4 ICMP echo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Echo {
    pub kind: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub id: u16,
    pub seq: u16,
    pub payload: Vec<u8>,
}

/// Parses an IPv4 ICMP echo request or reply, checking both checksums.
pub fn parse_echo(p: &[u8]) -> Option<Echo> {
    if p.len() < 28 || p[0] >> 4 != 4 || p[9] != 1 {
        return None;
    }
    let ihl = usize::from(p[0] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    if total > p.len() || ihl + 8 > total || checksum(&p[..ihl]) != 0 {
        return None;
    }
    let icmp = &p[ihl..total];
    if checksum(icmp) != 0 || !(icmp[0] == 0 || icmp[0] == 8) {
        return None;
    }
    Some(Echo {
        kind: icmp[0],
        src: Ipv4Addr::new(p[12], p[13], p[14], p[15]),
        dst: Ipv4Addr::new(p[16], p[17], p[18], p[19]),
        id: u16::from_be_bytes([icmp[4], icmp[5]]),
        seq: u16::from_be_bytes([icmp[6], icmp[7]]),
        payload: icmp[8..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_round_trip() {
        let p = echo(
            8,
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            7,
            9,
            b"hi!",
        );
        let e = parse_echo(&p).unwrap();
        assert_eq!((e.kind, e.id, e.seq), (8, 7, 9));
        assert_eq!(e.payload, b"hi!");
        let mut bad = p.clone();
        bad[30] ^= 1;
        assert!(parse_echo(&bad).is_none());
    }
}
