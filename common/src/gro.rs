//! Coalescing opened packets into super-packets before they are written to the TUN (GRO),
//! without copying them and without allocating.
//!
//! The packets stay where they were opened, in the receive buffer, each with the 16 bytes of
//! its transport header free in front of it. Consecutive TCP segments of one flow (and, where
//! the TUN takes USO, UDP datagrams of one flow and one size) form a group; a group is written
//! with one `writev`: the virtio header and the first packet's headers, rewritten in place to
//! describe the whole super-packet, then every member's payload where it lies. The kernel
//! takes the super-packet as one (TSO/USO, CHECKSUM_PARTIAL) and splits it only if it forwards
//! it. A packet that joins nothing is written as it is, with an empty virtio header, and the
//! kernel checks its checksum as usual.
//!
//! `tun-rs` has a GRO table too; it is not used on this path because it copies every packet
//! into a freshly allocated `Vec` before looking at it (one allocation per packet written, and
//! a copy), hashes flows with SipHash, and verifies each segment's checksum in software first.
//! Like the kernel's WireGuard, which marks decrypted packets CHECKSUM_UNNECESSARY, this does
//! not verify inner checksums again: the AEAD tag has already authenticated every byte as the
//! peer's.
//!
//! The rules are the kernel's (tcp_gro_receive, udp_gro_receive) in their strict form: same
//! addresses, ports, IP header fields, acknowledgment number, window and TCP options; payloads
//! in sequence; IPv4 identifications counting up by one; every segment but the last of the
//! same size; no SYN, FIN, RST, URG, ECE, CWR; a PSH ends the group; at most 64 KB. So a
//! super-packet split again (if the kernel forwards it) gives back exactly the packets that
//! went in (`gro_tests.rs` checks this against `tun-rs`'s splitter).

use crate::tun::{VirtioNetHdr, VIRTIO_NET_HDR_LEN};
use std::io::{self, IoSlice};
use suidao_proto::l2::ETHERNET_HEADER_LEN;

/// At most this many packets wait for one flush.
pub const MAX_PACKETS: usize = 256;
/// At most this many groups are open at once; a packet of another flow starts its group by
/// closing the oldest.
const OPEN_GROUPS: usize = 8;
/// At most this many packets in one group (iovecs per write, with the header's).
const MAX_MEMBERS: usize = 64;
/// An IP packet's length field holds at most this.
const MAX_SUPER: usize = 65535;
/// Room the caller leaves in front of each packet (at least the virtio header).
pub const HEADROOM: usize = VIRTIO_NET_HDR_LEN;

const NONE: u16 = u16::MAX;

const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;

const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_UDP_L4: u8 = 5;
const F_NEEDS_CSUM: u8 = 1;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Proto {
    Tcp,
    Udp,
}

/// What a coalescing candidate's headers say (offsets are within the packet).
#[derive(Clone, Copy, Debug)]
struct Candidate {
    proto: Proto,
    v6: bool,
    /// IP header length (20 or 40).
    ip_len: usize,
    /// IP + TCP/UDP header length.
    hdr_len: usize,
    payload: usize,
    seq: u32,
    psh: bool,
}

/// One packet waiting in the caller's buffer.
#[derive(Clone, Copy, Default)]
struct Packet {
    start: usize,
    len: usize,
    /// Next member of its group (NONE: last), or of no group.
    next: u16,
    /// For a group's first packet: its last member and totals.
    last: u16,
    members: u16,
    payload_total: usize,
    /// Set by a member with PSH.
    psh: bool,
    /// Not the first of a group: written with its group.
    member: bool,
}

/// An open group: where it starts, and what the next member must look like.
#[derive(Clone, Copy)]
struct Open {
    head: u16,
    cand: Candidate,
    next_seq: u32,
    /// IPv4: the identification the next member must carry (a TSO sender counts up by one
    /// per segment, and so does the kernel when it splits the super-packet again).
    next_id: u16,
    /// A shorter segment (or PSH) was added: nothing more may follow.
    closed: bool,
}

pub struct Coalescer {
    packets: Vec<Packet>,
    open: Vec<Open>,
    /// The TUN takes a virtio header: coalesce, and write the header in front of each packet.
    vnet: bool,
    udp: bool,
    /// Bytes in front of each IP packet: 0 on a TUN, the Ethernet header on a TAP (frames of
    /// one flow coalesce when their Ethernet headers are equal too).
    link: usize,
}

impl Coalescer {
    /// `vnet`: the TUN was opened with offloads (a virtio header in front of every packet;
    /// TCP super-packets); without, packets are written one by one as they are. `udp`: it
    /// takes UDP super-packets (USO) too.
    pub fn new(vnet: bool, udp: bool) -> Coalescer {
        Coalescer {
            packets: Vec::with_capacity(MAX_PACKETS),
            open: Vec::with_capacity(OPEN_GROUPS),
            vnet,
            udp: vnet && udp,
            link: 0,
        }
    }

    /// The same for Ethernet frames (a TAP): IPv4 and IPv6 frames without a VLAN tag are
    /// coalesced, every other frame is written as it is.
    pub fn for_frames(vnet: bool, udp: bool) -> Coalescer {
        Coalescer {
            link: ETHERNET_HEADER_LEN,
            ..Coalescer::new(vnet, udp)
        }
    }

    /// The IP packet in `frame` (all of it on a TUN), if it is one.
    fn ip_part<'b>(&self, frame: &'b [u8]) -> Option<&'b [u8]> {
        if self.link == 0 {
            return Some(frame);
        }
        match frame.get(12..14)? {
            [0x08, 0x00] | [0x86, 0xdd] => frame.get(self.link..),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.packets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.packets.len() >= MAX_PACKETS
    }

    /// Adds the packet at `buf[start..start + len]` (with `HEADROOM` free bytes in front of it);
    /// the caller flushes before the buffer is reused, and before `is_full`.
    pub fn push(&mut self, buf: &[u8], start: usize, len: usize) {
        if self.is_full() || start < HEADROOM || start + len > buf.len() {
            // The caller's mistake; never reached from the engine. Drop rather than panic.
            return;
        }
        let idx = self.packets.len() as u16;
        self.packets.push(Packet {
            start,
            len,
            next: NONE,
            last: idx,
            members: 1,
            payload_total: 0,
            psh: false,
            member: false,
        });
        if !self.vnet {
            return;
        }
        let frame = &buf[start..start + len];
        // Not IP at all (ARP, a VLAN): of no flow, written as it is.
        let Some(pkt) = self.ip_part(frame) else {
            return;
        };
        let Some(c) = candidate(pkt, self.udp) else {
            // It may belong to a flow with an open group (a pure ACK, a FIN): nothing of that
            // flow may join a group begun before it, or it would be overtaken. Close the
            // groups it could belong to.
            let proto = match pkt.first().map(|b| b >> 4) {
                Some(4) if pkt.len() >= 20 => Some(pkt[9]),
                Some(6) if pkt.len() >= 40 => Some(pkt[6]),
                _ => None,
            };
            self.open.retain(|o| {
                !matches!(
                    (proto, o.cand.proto),
                    (Some(6), Proto::Tcp) | (Some(17), Proto::Udp) | (None, _)
                )
            });
            return;
        };
        self.packets[idx as usize].payload_total = c.payload;
        // Join the open group of this flow, if it takes this packet.
        let mut slot = None;
        let link = self.link;
        for (k, o) in self.open.iter().enumerate() {
            let head = &self.packets[o.head as usize];
            let head_frame = &buf[head.start..head.start + head.len];
            if head_frame[..link] == frame[..link]
                && same_flow(&head_frame[link..], &o.cand, pkt, &c)
            {
                slot = Some(k);
                break;
            }
        }
        if let Some(k) = slot {
            let o = self.open[k];
            let head = self.packets[o.head as usize];
            let head_pkt = &buf[head.start + link..head.start + head.len];
            let fits = !o.closed
                && c.payload <= o.cand.payload
                && (c.proto == Proto::Udp || c.seq == o.next_seq)
                && (c.v6 || be16(pkt, 4) == o.next_id)
                && (head.members as usize) < MAX_MEMBERS
                && o.cand.hdr_len + head.payload_total + c.payload <= MAX_SUPER
                && headers_match(head_pkt, &o.cand, pkt, &c);
            if fits {
                let last = head.last;
                self.packets[last as usize].next = idx;
                self.packets[idx as usize].member = true;
                let h = &mut self.packets[o.head as usize];
                h.last = idx;
                h.members += 1;
                h.payload_total += c.payload;
                h.psh |= c.psh;
                let closed = c.payload < o.cand.payload || c.psh;
                self.open[k].next_seq = o.next_seq.wrapping_add(c.payload as u32);
                self.open[k].next_id = o.next_id.wrapping_add(1);
                self.open[k].closed = closed;
                return;
            }
            // This flow's group ends here; the packet starts the next one.
            self.open.remove(k);
        }
        if self.open.len() == OPEN_GROUPS {
            self.open.remove(0);
        }
        self.open.push(Open {
            head: idx,
            cand: c,
            next_seq: c.seq.wrapping_add(c.payload as u32),
            next_id: if c.v6 {
                0
            } else {
                be16(pkt, 4).wrapping_add(1)
            },
            closed: c.psh,
        });
    }

    /// Writes every waiting packet, groups as super-packets, in the order their first packets
    /// came (so each flow keeps its order), then forgets them. Headers of group heads and the
    /// bytes in front of each packet are rewritten in `buf`. Returns the first write error, if
    /// any, after trying every write.
    pub fn flush(
        &mut self,
        buf: &mut [u8],
        mut write: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<()> {
        let mut result = Ok(());
        for i in 0..self.packets.len() {
            let p = self.packets[i];
            if p.member {
                continue;
            }
            let (start, len) = (p.start, p.len);
            if !self.vnet {
                if let Err(e) = write(&[IoSlice::new(&buf[start..start + len])]) {
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
                continue;
            }
            let link = self.link;
            let hdr = if p.members > 1 {
                // Rewrite the head into the super-packet's headers (offsets from the start of
                // the frame, link header included).
                let pkt = &buf[start + link..start + len];
                match candidate(pkt, self.udp) {
                    Some(c) => {
                        let pkt = &mut buf[start + link..start + len];
                        let mut h = rewrite_head(pkt, &c, p.payload_total, p.psh);
                        h.hdr_len += link as u16;
                        h.csum_start += link as u16;
                        h
                    }
                    None => VirtioNetHdr::default(),
                }
            } else {
                VirtioNetHdr::default()
            };
            if hdr.encode(&mut buf[start - HEADROOM..start]).is_err() {
                continue;
            }
            let r = if p.members > 1 {
                // Headers (with the virtio header in front), the head's payload, then each
                // member's payload where it lies.
                let h = hdr.hdr_len as usize;
                let mut iov: [IoSlice<'_>; MAX_MEMBERS + 1] = [IoSlice::new(&[]); MAX_MEMBERS + 1];
                iov[0] = IoSlice::new(&buf[start - HEADROOM..start + h]);
                iov[1] = IoSlice::new(&buf[start + h..start + len]);
                let mut n = 2;
                let mut m = p.next;
                while m != NONE && n < iov.len() {
                    let q = &self.packets[m as usize];
                    iov[n] = IoSlice::new(&buf[q.start + h..q.start + q.len]);
                    n += 1;
                    m = q.next;
                }
                write(&iov[..n])
            } else {
                write(&[IoSlice::new(&buf[start - HEADROOM..start + len])])
            };
            if let Err(e) = r {
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        self.packets.clear();
        self.open.clear();
        result
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The packet's headers if it may be coalesced at all.
fn candidate(pkt: &[u8], udp: bool) -> Option<Candidate> {
    let (v6, ip_len, proto) = match pkt.first()? >> 4 {
        4 => {
            if pkt.len() < 20 || pkt[0] & 0x0f != 5 || be16(pkt, 2) as usize != pkt.len() {
                return None;
            }
            // Fragments (MF set or an offset) never.
            if be16(pkt, 6) & 0x3fff != 0 {
                return None;
            }
            (false, 20, pkt[9])
        }
        6 => {
            if pkt.len() < 40 || be16(pkt, 4) as usize != pkt.len() - 40 {
                return None;
            }
            (true, 40, pkt[6])
        }
        _ => return None,
    };
    match proto {
        6 => {
            if pkt.len() < ip_len + 20 {
                return None;
            }
            let tcp_len = ((pkt[ip_len + 12] >> 4) as usize) * 4;
            if tcp_len < 20 || pkt.len() < ip_len + tcp_len {
                return None;
            }
            let flags = pkt[ip_len + 13];
            // Only ACK, or ACK with PSH; nothing in the reserved bits.
            if flags & !(TCP_ACK | TCP_PSH) != 0
                || flags & TCP_ACK == 0
                || pkt[ip_len + 12] & 0x0f != 0
            {
                return None;
            }
            let payload = pkt.len() - ip_len - tcp_len;
            if payload == 0 {
                return None;
            }
            Some(Candidate {
                proto: Proto::Tcp,
                v6,
                ip_len,
                hdr_len: ip_len + tcp_len,
                payload,
                seq: be32(pkt, ip_len + 4),
                psh: flags & TCP_PSH != 0,
            })
        }
        17 if udp => {
            if pkt.len() < ip_len + 8 || be16(pkt, ip_len + 4) as usize != pkt.len() - ip_len {
                return None;
            }
            let payload = pkt.len() - ip_len - 8;
            if payload == 0 {
                return None;
            }
            Some(Candidate {
                proto: Proto::Udp,
                v6,
                ip_len,
                hdr_len: ip_len + 8,
                payload,
                seq: 0,
                psh: false,
            })
        }
        _ => None,
    }
}

/// Same flow: protocol, family, addresses and ports.
fn same_flow(a: &[u8], ca: &Candidate, b: &[u8], cb: &Candidate) -> bool {
    if ca.proto != cb.proto || ca.v6 != cb.v6 {
        return false;
    }
    let (addr_at, addr_len) = if ca.v6 { (8, 32) } else { (12, 8) };
    a[addr_at..addr_at + addr_len] == b[addr_at..addr_at + addr_len]
        && a[ca.ip_len..ca.ip_len + 4] == b[cb.ip_len..cb.ip_len + 4]
}

/// Everything but lengths, checksums, identification and the sequence number must be equal
/// for `b` to continue `a`'s super-packet.
fn headers_match(a: &[u8], ca: &Candidate, b: &[u8], cb: &Candidate) -> bool {
    if ca.hdr_len != cb.hdr_len {
        return false;
    }
    let ip_same = if ca.v6 {
        // Version, traffic class, flow label; next header, hop limit.
        a[0..4] == b[0..4] && a[6..8] == b[6..8]
    } else {
        // Version/IHL, TOS; flags (DF); TTL, protocol.
        a[0..2] == b[0..2] && a[6] == b[6] && a[8..10] == b[8..10]
    };
    if !ip_same {
        return false;
    }
    match ca.proto {
        // Acknowledgment number, data offset, flags but PSH, window; options.
        Proto::Tcp => {
            let (ta, tb) = (&a[ca.ip_len..ca.hdr_len], &b[cb.ip_len..cb.hdr_len]);
            ta[8..12] == tb[8..12]
                && ta[12] == tb[12]
                && (ta[13] & !TCP_PSH) == (tb[13] & !TCP_PSH)
                && ta[14..16] == tb[14..16]
                && ta[20..] == tb[20..]
        }
        Proto::Udp => true,
    }
}

/// One's-complement sum of `data` added to `sum` (not folded).
fn sum16(data: &[u8], mut sum: u64) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    sum
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Rewrites the first packet's headers to describe the whole super-packet (lengths, IPv4
/// header checksum, PSH, the partial checksum the kernel completes) and returns its virtio
/// header.
fn rewrite_head(pkt: &mut [u8], c: &Candidate, payload_total: usize, psh: bool) -> VirtioNetHdr {
    let l4_len = c.hdr_len - c.ip_len + payload_total;
    if c.v6 {
        pkt[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
    } else {
        pkt[2..4].copy_from_slice(&((c.ip_len + l4_len) as u16).to_be_bytes());
        pkt[10..12].copy_from_slice(&[0, 0]);
        let check = !fold(sum16(&pkt[..20], 0));
        pkt[10..12].copy_from_slice(&check.to_be_bytes());
    }
    let (proto, csum_offset, gso_type) = match (c.proto, c.v6) {
        (Proto::Tcp, false) => (6u8, 16u16, GSO_TCPV4),
        (Proto::Tcp, true) => (6, 16, GSO_TCPV6),
        (Proto::Udp, _) => (17, 6, GSO_UDP_L4),
    };
    match c.proto {
        Proto::Tcp if psh => pkt[c.ip_len + 13] |= TCP_PSH,
        Proto::Udp => {
            pkt[c.ip_len + 4..c.ip_len + 6].copy_from_slice(&(l4_len as u16).to_be_bytes())
        }
        _ => {}
    }
    // CHECKSUM_PARTIAL: the pseudo-header's sum, folded and not inverted, in the checksum field.
    let addrs = if c.v6 { &pkt[8..40] } else { &pkt[12..20] };
    let mut sum = sum16(addrs, 0);
    sum += u64::from(proto);
    sum += l4_len as u64;
    let partial = fold(sum);
    let at = c.ip_len + csum_offset as usize;
    pkt[at..at + 2].copy_from_slice(&partial.to_be_bytes());
    VirtioNetHdr {
        flags: F_NEEDS_CSUM,
        gso_type,
        hdr_len: c.hdr_len as u16,
        gso_size: c.payload as u16,
        csum_start: c.ip_len as u16,
        csum_offset,
    }
}

/// Also the engine's tests' packet builders (TCP streams) and splitter.
#[cfg(test)]
#[path = "gro_tests.rs"]
pub(crate) mod tests;
