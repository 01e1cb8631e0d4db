//! The TUN device (through `tun-rs`), with offloads when the kernel has them: one read can
//! return a 64 KB TCP (or UDP) super-packet that `tun-rs` splits into MTU-sized packets, and
//! received packets of one flow are coalesced back (GRO) before they are written. Addresses, MTU
//! and link state are set through netlink (see `netlink`), not here.

use crate::packet_device::{Offload, PacketDevice, Slots};
use crate::poll::Interrupt;
use std::io;
pub use tun_rs::{VirtioNetHdr, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

/// virtio-net's header values (virtio_net.h) `tun-rs` keeps to itself.
const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;

/// Room to read one super-packet with its virtio header (on a TAP, with its Ethernet header,
/// VLAN tag included).
pub const MAX_READ: usize = VIRTIO_NET_HDR_LEN + 18 + 65535;

pub struct Tun {
    dev: tun_rs::SyncDevice,
    name: String,
    offload: bool,
    /// A TAP: frames, not IP packets.
    layer2: bool,
    interrupt: Interrupt,
}

fn explain(name: &str, kind: &str, e: io::Error) -> io::Error {
    let hint = match e.raw_os_error() {
        Some(libc::EBUSY) => " (an interface of that name is in use: is it up already?)",
        Some(libc::EPERM) => " (creating a TUN or TAP interface needs CAP_NET_ADMIN)",
        Some(libc::ENOENT) => " (/dev/net/tun is missing)",
        _ => "",
    };
    io::Error::new(
        e.kind(),
        format!("creating {kind} interface {name}: {e}{hint}"),
    )
}

impl Tun {
    /// A super-packet (or, on layer 2, a frame) into the slots: kept out of `read_batch`,
    /// whose frame a lone packet (a ping) then keeps small (its list of slots is 1 KB of stack).
    #[inline(never)]
    fn split(
        &self,
        packet: &mut [u8],
        hdr: VirtioNetHdr,
        slots: &mut Slots<'_>,
    ) -> io::Result<usize> {
        if self.layer2 {
            return Self::split_frames(packet, hdr, slots);
        }
        let offset = slots.offset();
        slots.with_list(|bufs, sizes| split_packets(packet, hdr, bufs, sizes, offset))
    }

    /// Creates the TUN interface `name`, with offloads where the kernel supports them, and
    /// `queues` queues (IFF_MULTI_QUEUE when more than one): each queue is a file descriptor of
    /// its own, and the kernel hands each flow's packets to one queue, so one flow stays in
    /// order while flows are read in parallel. Each queue is non-blocking.
    ///
    /// `layer2`: a TAP device (Ethernet frames, `mode = "l2"`) instead. Its offloads work the
    /// same way on frames: a read may return a TCP super-frame (split here, `read_tap`), and
    /// writes take coalesced frames (`gro` with the Ethernet header in front).
    pub fn create_queues(name: &str, queues: usize, layer2: bool) -> io::Result<Vec<Tun>> {
        let multi = queues > 1;
        let (layer, kind) = if layer2 {
            (tun_rs::Layer::L2, "TAP")
        } else {
            (tun_rs::Layer::L3, "TUN")
        };
        let build = |offload: bool| {
            tun_rs::DeviceBuilder::new()
                .name(name)
                .layer(layer)
                // Down until configured: `up` sets it up after its addresses, wg-quick after
                // `wg setconf` (nothing reaches a device without a key meanwhile).
                .enable(false)
                .offload(offload)
                .multi_queue(multi)
                .build_sync()
        };
        let (first, offload) = match build(true) {
            Ok(dev) => (dev, true),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)
                ) =>
            {
                (build(false).map_err(|e| explain(name, kind, e))?, false)
            }
            Err(e) => return Err(explain(name, kind, e)),
        };
        let mut devs = Vec::with_capacity(queues);
        for _ in 1..queues.max(1) {
            let q = first.try_clone().map_err(|e| {
                io::Error::new(e.kind(), format!("opening another queue of {name}: {e}"))
            })?;
            devs.push(q);
        }
        devs.insert(0, first);
        devs.into_iter()
            .map(|dev| {
                // Non-blocking: the engine reads in batches until EAGAIN, then waits.
                dev.set_nonblocking(true)?;
                Ok(Tun {
                    dev,
                    name: name.to_string(),
                    offload,
                    layer2,
                    interrupt: Interrupt::new()?,
                })
            })
            .collect()
    }
}

/// The length of a frame's link header: 14, or 18 with one VLAN tag.
fn link_header_len(frame: &[u8]) -> Option<usize> {
    match u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]) {
        0x8100 | 0x88a8 => Some(18),
        _ => Some(14),
    }
}

/// Completes a checksum the kernel left partial (CHECKSUM_PARTIAL: the pseudo-header's sum is
/// in the field): the one's complement of the sum from `start` to the end, at `start + at`
/// (`at` is 16 for TCP, 6 for UDP).
fn finish_checksum(frame: &mut [u8], start: usize, at: usize) -> io::Result<()> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "checksum offsets out of the frame",
        )
    };
    let field = start
        .checked_add(at)
        .filter(|f| f + 2 <= frame.len())
        .ok_or_else(bad)?;
    // tun-rs's sum (SIMD, and optimized in debug builds too, where a loop here cost more than
    // the rest of a packet's way at 50,000 packets a second).
    let mut sum = tun_rs::checksum_no_fold(frame.get(start..).ok_or_else(bad)?, 0);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut check = !(sum as u16);
    // A UDP checksum of 0 means "none" (and is refused over IPv6): 0xffff is the same sum.
    if check == 0 && at == 6 {
        check = 0xffff;
    }
    frame[field..field + 2].copy_from_slice(&check.to_be_bytes());
    Ok(())
}

impl Tun {
    /// One read(2) of the device into `buf`.
    fn read_into(&self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        // SAFETY: reads at most `buf.len()` bytes into `buf`, which is valid for that long;
        // the descriptor is the device's, open while `self` is.
        let n = unsafe { libc::read(self.dev.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// A super-frame of a TAP split into frames of the TAP's MTU: `tun-rs`'s splitter works on
    /// IP packets, so it gets the IP part, and each segment gets the super-frame's link header
    /// in front.
    fn split_frames(
        frame: &mut [u8],
        hdr: VirtioNetHdr,
        slots: &mut Slots<'_>,
    ) -> io::Result<usize> {
        let link =
            link_header_len(frame).ok_or_else(|| invalid("a super-frame without a link header"))?;
        let mut ip_hdr = hdr;
        ip_hdr.csum_start = hdr
            .csum_start
            .checked_sub(link as u16)
            .ok_or_else(|| invalid("bad csum_start"))?;
        let (head, ip) = frame.split_at_mut(link);
        let offset = slots.offset();
        slots.with_list(|bufs, sizes| {
            let count = split_packets(ip, ip_hdr, bufs, sizes, offset + link)?;
            for (out, size) in bufs.iter_mut().zip(sizes.iter_mut()).take(count) {
                out[offset..offset + link].copy_from_slice(head);
                *size += link;
            }
            Ok(count)
        })
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// An IP super-packet split into packets at `bufs[i][offset..]` by `tun-rs`'s splitter. The
/// header length is taken from the transport header, not from the kernel's `hdr_len`, which
/// can be the whole first packet on a forwarding path (as wireguard-go does).
fn split_packets(
    ip: &mut [u8],
    mut hdr: VirtioNetHdr,
    bufs: &mut [&mut [u8]],
    sizes: &mut [usize],
    offset: usize,
) -> io::Result<usize> {
    let is_v6 = match ip.first().map(|b| b >> 4) {
        Some(4) => false,
        Some(6) => true,
        _ => return Err(invalid("a super-packet that is not IP")),
    };
    let start = usize::from(hdr.csum_start);
    let transport_len = if hdr.gso_type & !VIRTIO_NET_HDR_GSO_ECN == VIRTIO_NET_HDR_GSO_UDP_L4 {
        8
    } else {
        let data_offset = ip
            .get(start + 12)
            .ok_or_else(|| invalid("a TCP super-packet too short for its header"))?;
        let len = usize::from(data_offset >> 4) * 4;
        if !(20..=60).contains(&len) {
            return Err(invalid("a TCP super-packet with a bad header length"));
        }
        len
    };
    hdr.hdr_len = u16::try_from(start + transport_len).map_err(|_| invalid("bad csum_start"))?;
    tun_rs::gso_split(ip, hdr, bufs, sizes, offset, is_v6)
}

impl PacketDevice for Tun {
    fn name(&self) -> &str {
        &self.name
    }

    /// TCP segmentation offload when the kernel took it (super-packets on read, coalescing
    /// on write); UDP too where the kernel has that.
    fn offload(&self) -> Offload {
        let tcp = self.offload && self.dev.tcp_gso();
        Offload {
            tcp,
            udp: tcp && self.dev.udp_gso(),
        }
    }

    /// One read: a packet (into the first slot), or a super-packet (frame) split into
    /// MTU-sized packets.
    fn read_batch(&self, scratch: &mut [u8], slots: &mut Slots<'_>) -> io::Result<usize> {
        if !self.offload {
            // No virtio header: one packet, straight into the first slot.
            let room = slots
                .room(0)
                .ok_or_else(|| invalid("no slot to read into"))?;
            let n = self.read_into(room)?;
            slots.set_size(0, n);
            return Ok(1);
        }
        let n = self.read_into(scratch)?;
        if n <= VIRTIO_NET_HDR_LEN {
            return Err(invalid("a read shorter than its virtio header"));
        }
        let hdr = VirtioNetHdr::decode(&scratch[..VIRTIO_NET_HDR_LEN])?;
        let packet = &mut scratch[VIRTIO_NET_HDR_LEN..n];
        if hdr.gso_type == VIRTIO_NET_HDR_GSO_NONE {
            if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
                finish_checksum(packet, hdr.csum_start.into(), hdr.csum_offset.into())?;
            }
            slots.put(0, packet)?;
            return Ok(1);
        }
        self.split(packet, hdr, slots)
    }

    fn wait_readable(&self, timeout: Option<std::time::Duration>) -> io::Result<bool> {
        use std::os::fd::AsRawFd;
        self.interrupt.wait_readable(self.dev.as_raw_fd(), timeout)
    }

    fn interrupt(&self) {
        self.interrupt.wake();
    }

    fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        Some(self.dev.as_raw_fd())
    }

    fn write_vectored(&self, iov: &[std::io::IoSlice<'_>]) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        let count = libc::c_int::try_from(iov.len())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: on Unix `IoSlice` is guaranteed ABI-compatible with `struct iovec`; the
        // slices outlive the call, and the descriptor is the device's, open while `self` is.
        let n = unsafe {
            libc::writev(
                self.dev.as_raw_fd(),
                iov.as_ptr().cast::<libc::iovec>(),
                count,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::finish_checksum;

    fn sum16(data: &[u8]) -> u64 {
        data.chunks(2)
            .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum()
    }

    fn fold(mut s: u64) -> u16 {
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    /// A UDP frame as the kernel hands it over with CHECKSUM_PARTIAL (the pseudo-header's sum
    /// in the field) comes out with the checksum a receiver verifies.
    #[test]
    fn a_partial_udp_checksum_is_completed() {
        for payload_len in [0usize, 1, 7, 100, 1377] {
            let mut f = vec![0u8; 14 + 20 + 8 + payload_len];
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            let ip = &mut f[14..34];
            ip[0] = 0x45;
            ip[9] = 17;
            ip[12..16].copy_from_slice(&[10, 50, 0, 11]);
            ip[16..20].copy_from_slice(&[10, 50, 0, 21]);
            let udp_len = (8 + payload_len) as u16;
            f[34..36].copy_from_slice(&1234u16.to_be_bytes());
            f[36..38].copy_from_slice(&5678u16.to_be_bytes());
            f[38..40].copy_from_slice(&udp_len.to_be_bytes());
            for (i, b) in f[42..].iter_mut().enumerate() {
                *b = (i * 7) as u8;
            }
            let pseudo = sum16(&f[26..34]) + 17 + u64::from(udp_len);
            f[40..42].copy_from_slice(&fold(pseudo).to_be_bytes());
            finish_checksum(&mut f, 34, 6).unwrap_or_else(|e| panic!("{e}"));
            // Verified as a receiver does: pseudo-header + segment sums to 0xffff.
            let total = fold(pseudo + sum16(&f[34..]));
            assert_eq!(total, 0xffff, "payload {payload_len}");
            assert_ne!(&f[40..42], &[0, 0]);
        }
        let mut short = vec![0u8; 20];
        assert!(finish_checksum(&mut short, 16, 6).is_err());
    }
}
