//! The little the protocol needs to know about the inner IP packets: version, source,
//! destination and total length. Used for cryptokey routing (destination on send, source check
//! on receive) and to trim the padding off an opened packet.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A validated inner IP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpInfo {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The packet's own length from its header; never more than the buffer it came in.
    pub len: usize,
}

/// Parses an IPv4 or IPv6 header at the start of `packet`. `None` when it is neither, when it
/// is shorter than its header, or when the header claims more bytes than there are.
pub fn parse(packet: &[u8]) -> Option<IpInfo> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            let len = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
            if ihl < 20 || len < ihl || len > packet.len() {
                return None;
            }
            let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
            let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
            Some(IpInfo {
                src: src.into(),
                dst: dst.into(),
                len,
            })
        }
        6 if packet.len() >= 40 => {
            let len = 40 + usize::from(u16::from_be_bytes([packet[4], packet[5]]));
            if len > packet.len() {
                return None;
            }
            let mut s = [0u8; 16];
            s.copy_from_slice(&packet[8..24]);
            let mut d = [0u8; 16];
            d.copy_from_slice(&packet[24..40]);
            Some(IpInfo {
                src: Ipv6Addr::from(s).into(),
                dst: Ipv6Addr::from(d).into(),
                len,
            })
        }
        _ => None,
    }
}

/// The destination address alone, for routing an outgoing packet (the header's length field is
/// not checked: the kernel wrote this packet).
pub fn destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            Some(Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]).into())
        }
        6 if packet.len() >= 40 => {
            let mut d = [0u8; 16];
            d.copy_from_slice(&packet[24..40]);
            Some(Ipv6Addr::from(d).into())
        }
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal IPv4 packet (header only, ICMP) from `src` to `dst` with `payload` bytes after it.
    pub fn ipv4(src: [u8; 4], dst: [u8; 4], payload: usize) -> Vec<u8> {
        let len = 20 + payload;
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 1;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p
    }

    #[test]
    fn parses_v4_and_v6_and_refuses_lies() {
        let p = ipv4([10, 0, 0, 1], [10, 0, 0, 2], 8);
        let info = parse(&p).unwrap();
        assert_eq!(info.src, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(info.len, 28);
        // Padding after the packet is fine and trimmed by the caller.
        let mut padded = p.clone();
        padded.extend_from_slice(&[0; 4]);
        assert_eq!(parse(&padded).unwrap().len, 28);
        // A length beyond the buffer is refused.
        assert!(parse(&p[..27]).is_none());
        assert!(parse(&[0x45; 10]).is_none());
        assert!(parse(&[]).is_none());
        assert!(parse(&[0x00; 40]).is_none());
        let mut v6 = vec![0u8; 48];
        v6[0] = 0x60;
        v6[5] = 8;
        v6[23] = 1;
        v6[39] = 2;
        let info = parse(&v6).unwrap();
        assert_eq!(info.len, 48);
        assert_eq!(info.src, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(destination(&v6), Some("::2".parse().unwrap()));
        v6[5] = 9;
        assert!(parse(&v6).is_none());
    }
}
