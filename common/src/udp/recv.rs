//! Receiving: recvmmsg(2) into the caller's buffers, with the GRO segment size and the address
//! the datagram was sent to (IP_PKTINFO / IPV6_PKTINFO) read from the control messages.
//!
//! quinn-udp sets the sockets up for this (UDP_GRO, the PKTINFO options) and sends through
//! them; it can receive too, but each of its receives zeroes 32 message headers and the caller
//! initialises 16 of its metadata records: some 3.6 KB written before the system call. On a
//! busy socket that is nothing; for a lone datagram after a quiet spell (a ping, a keystroke,
//! a request) every one of those cache lines is a miss. Measured here (2 vCPUs, one datagram
//! after 20 ms of idle, median of 60): quinn-udp's receive 13.5 µs, the same recvmmsg with
//! only the offered headers written 7.4 µs. So the headers of the slots offered are made here,
//! and the metadata is written straight into the engine's own records. In the tunnel
//! (callgrind, the server, per ping) that is 7,130 → 6,920 instructions and 62 → 27 lines of
//! code touched to receive; the round trip moved by less than its noise (0.271 → 0.269 ms,
//! twelve rotated rounds side by side): one of many small pieces, see the README's
//! Performance section.

use crate::transport::RecvMeta;
use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use suidao_proto::Endpoint;

use super::{unmap, unmap_ip, MAX_RECV};

/// Room for one datagram's control messages: UDP_GRO (an int) and IP_PKTINFO or
/// IPV6_PKTINFO, 24 + 40 bytes at most; and room for the TOS byte and a timestamp (24 + 32)
/// should a kernel have refused to turn those off (`drop_unread_control`).
const CONTROL_LEN: usize = 128;

/// A control buffer, aligned as `cmsghdr` needs.
#[repr(C, align(8))]
struct Control([u8; CONTROL_LEN]);

/// What waits on `sock`, without blocking: up to `meta.len()` (at most `MAX_RECV`, and as many
/// as `buf` has slots of `slot` bytes) datagrams or GRO batches, message i at
/// `buf[i * slot..]`, their sizes, strides and addresses in `meta` (addresses unmapped).
/// `bound`: the address `sock` is bound to, when that is where everything it receives was sent
/// (a pinned socket, which reads no PKTINFO); else the address comes from PKTINFO.
pub(super) fn recv_on(
    sock: &UdpSocket,
    buf: &mut [u8],
    slot: usize,
    meta: &mut [RecvMeta],
    bound: Option<IpAddr>,
) -> io::Result<usize> {
    let slot = slot.max(1);
    let count = (buf.len() / slot).min(meta.len()).min(MAX_RECV);
    // A lone message (a ping after a quiet spell) gets a frame sized for one: the headers,
    // names and control buffers for a whole batch are 5 KB of stack, and every page of it a
    // round trip touches after an idle spell is a TLB miss (README, Performance).
    if count <= 1 {
        recv_into::<1>(sock, buf, slot, count, meta, bound)
    } else {
        recv_into::<MAX_RECV>(sock, buf, slot, count, meta, bound)
    }
}

/// `recv_on` with room for `N` messages (`count` of them asked for, `count <= N`).
#[inline(never)]
fn recv_into<const N: usize>(
    sock: &UdpSocket,
    buf: &mut [u8],
    slot: usize,
    count: usize,
    meta: &mut [RecvMeta],
    bound: Option<IpAddr>,
) -> io::Result<usize> {
    let count = count.min(N);
    let base = buf.as_mut_ptr();
    let mut iovs = [const { MaybeUninit::<libc::iovec>::uninit() }; N];
    let mut names = [const { MaybeUninit::<libc::sockaddr_storage>::uninit() }; N];
    let mut controls = [const { MaybeUninit::<Control>::uninit() }; N];
    let mut headers = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; N];
    for i in 0..count {
        // SAFETY: an all-zero mmsghdr is valid (null pointers, zero lengths).
        let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
        h.msg_hdr.msg_name = names[i].as_mut_ptr().cast();
        h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        iovs[i].write(libc::iovec {
            // SAFETY: slot i lies within `buf` (count * slot <= buf.len()).
            iov_base: unsafe { base.add(i * slot) }.cast(),
            iov_len: slot,
        });
        h.msg_hdr.msg_iov = iovs[i].as_mut_ptr();
        h.msg_hdr.msg_iovlen = 1;
        h.msg_hdr.msg_control = controls[i].as_mut_ptr().cast();
        h.msg_hdr.msg_controllen = CONTROL_LEN as _;
        headers[i].write(h);
    }
    let n = loop {
        // One message is asked for with recvmsg: recvmmsg tries for a second one after the
        // first and comes back later (one datagram after 50 ms of idle, measured alone here:
        // recvmsg 7.0-7.3 µs, recvmmsg for 16 8.9-9.0).
        let r = if count == 1 {
            // SAFETY: header 0 is initialised and points at a name, a control buffer and an
            // iovec (a slot of `buf`, borrowed mutably) that outlive the call; the kernel
            // writes within their lengths.
            let h = unsafe { headers[0].assume_init_mut() };
            // SAFETY: as above.
            let r = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut h.msg_hdr, 0) };
            if r >= 0 {
                h.msg_len = r as libc::c_uint;
                1
            } else {
                -1
            }
        } else {
            // SAFETY: the first `count` headers are initialised and point at names, control
            // buffers and iovecs (slots of `buf`, borrowed mutably) that outlive the call;
            // the kernel writes within their lengths.
            unsafe {
                libc::recvmmsg(
                    sock.as_raw_fd(),
                    headers.as_mut_ptr().cast::<libc::mmsghdr>(),
                    count as libc::c_uint,
                    0,
                    std::ptr::null_mut(),
                )
            }
        };
        if r >= 0 {
            break r as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    for i in 0..n.min(count) {
        // SAFETY: the kernel filled the first `n` headers (and their names and control
        // messages, up to the lengths it wrote back).
        let h = unsafe { headers[i].assume_init_ref() };
        let len = h.msg_len as usize;
        // SAFETY: the kernel wrote `msg_namelen` bytes of a socket address into the storage.
        let from = unsafe { socket_addr(names[i].as_ptr(), h.msg_hdr.msg_namelen) };
        let Some(from) = from else {
            // Not an internet address (cannot happen on a UDP socket): nobody to answer.
            meta[i] = RecvMeta {
                len: 0,
                ..RecvMeta::default()
            };
            continue;
        };
        // SAFETY: the header's control pointer and the length the kernel wrote back.
        let (stride, local) = unsafe { control_messages(&h.msg_hdr) };
        meta[i] = RecvMeta {
            from: Endpoint {
                addr: unmap(from),
                local: bound.or(local.map(unmap_ip)),
            },
            len,
            stride: stride.unwrap_or(len),
        };
    }
    Ok(n)
}

/// The GRO segment size and the destination address among a received message's control
/// messages.
///
/// # Safety
/// `hdr` is a header recvmmsg filled: its control pointer and length describe control
/// messages the kernel wrote.
unsafe fn control_messages(hdr: &libc::msghdr) -> (Option<usize>, Option<IpAddr>) {
    let (mut stride, mut local) = (None, None);
    // SAFETY: (for the whole loop) CMSG_FIRSTHDR/CMSG_NXTHDR stay within `msg_controllen`;
    // each message's data is read unaligned, and only when its length covers the type read.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(hdr) };
    while !c.is_null() {
        let (level, kind, len) = unsafe { ((*c).cmsg_level, (*c).cmsg_type, (*c).cmsg_len) };
        let data = unsafe { libc::CMSG_DATA(c) };
        // cmsg_len is a size_t with glibc, a socklen_t with musl.
        #[allow(clippy::unnecessary_cast)]
        let len = len as usize;
        let fits = |n: usize| len >= unsafe { libc::CMSG_LEN(n as u32) } as usize;
        match (level, kind) {
            (libc::SOL_UDP, libc::UDP_GRO) if fits(size_of::<libc::c_int>()) => {
                let s = unsafe { std::ptr::read_unaligned(data.cast::<libc::c_int>()) };
                stride = usize::try_from(s).ok().filter(|s| *s > 0);
            }
            (libc::IPPROTO_IP, libc::IP_PKTINFO) if fits(size_of::<libc::in_pktinfo>()) => {
                let p = unsafe { std::ptr::read_unaligned(data.cast::<libc::in_pktinfo>()) };
                local = Some(IpAddr::V4(Ipv4Addr::from(p.ipi_addr.s_addr.to_ne_bytes())));
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) if fits(size_of::<libc::in6_pktinfo>()) => {
                let p = unsafe { std::ptr::read_unaligned(data.cast::<libc::in6_pktinfo>()) };
                local = Some(IpAddr::V6(Ipv6Addr::from(p.ipi6_addr.s6_addr)));
            }
            _ => {}
        }
        c = unsafe { libc::CMSG_NXTHDR(hdr, c) };
    }
    (stride, local)
}

/// The sender's address from a name recvmmsg wrote (`len` bytes), if IPv4 or IPv6. Only the
/// bytes the kernel wrote are read: socket2's `SockAddr` would take the whole storage, which
/// would then have to be zeroed before every receive (2 KB for 16 slots).
///
/// # Safety
/// `name` points at a `sockaddr_storage` of which the kernel wrote the first `len` bytes.
unsafe fn socket_addr(
    name: *const libc::sockaddr_storage,
    len: libc::socklen_t,
) -> Option<SocketAddr> {
    let len = len as usize;
    // SAFETY: the family is in the first bytes the kernel wrote for any address; each form is
    // read only when the kernel wrote all of it.
    match unsafe { (*name).ss_family } as libc::c_int {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            let a = unsafe { std::ptr::read(name.cast::<libc::sockaddr_in>()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(a.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            let a = unsafe { std::ptr::read(name.cast::<libc::sockaddr_in6>()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    // Test code: a failed unwrap is a failed test.
    #![allow(clippy::unwrap_used)]
    use super::super::Udp;
    use crate::transport::{RecvMeta, Transport};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
    use std::time::Duration;
    use suidao_proto::Endpoint;

    fn recv_all(u: &Udp) -> Vec<(Vec<u8>, RecvMeta)> {
        assert!(u.wait_readable(Some(Duration::from_secs(2))).unwrap());
        let mut buf = vec![0u8; 4 * 65536];
        let mut meta = [RecvMeta::default(); 4];
        let n = u.recv(&mut buf, 65536, &mut meta).unwrap();
        (0..n)
            .map(|i| (buf[i * 65536..i * 65536 + meta[i].len].to_vec(), meta[i]))
            .collect()
    }

    /// Datagrams waiting from two senders come in one receive, each with its sender (IPv4
    /// unmapped, IPv6 as it is), the address it was sent to, and its own size as its stride.
    #[test]
    fn waiting_datagrams_come_with_their_senders_and_the_address_they_were_sent_to() {
        let u = Udp::bind(None).unwrap();
        let port = u.local_port().unwrap();
        let v4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        v4.send_to(b"from four", ("127.0.0.1", port)).unwrap();
        let v6 = UdpSocket::bind("[::1]:0").unwrap();
        v6.send_to(b"from six!!", ("::1", port)).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let got = recv_all(&u);
        assert_eq!(got.len(), 2);
        let (four, m4) = &got[0];
        assert_eq!(four, b"from four");
        assert_eq!(m4.from.addr, v4.local_addr().unwrap());
        assert_eq!(m4.from.local, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(m4.stride, 9);
        let (six, m6) = &got[1];
        assert_eq!(six, b"from six!!");
        assert_eq!(m6.from.addr, v6.local_addr().unwrap());
        assert_eq!(m6.from.local, Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(m6.stride, 10);
    }

    /// A run sent with GSO arrives (loopback keeps it whole) as one batch whose stride is the
    /// segment size: the engine splits it there.
    #[test]
    fn a_run_arrives_as_one_batch_with_the_segment_size_as_its_stride() {
        let (a, b) = (Udp::bind(None).unwrap(), Udp::bind(None).unwrap());
        // The data path counts on both (UDP GSO since Linux 4.18, GRO since 5.0): a kernel
        // without them fails here rather than skipping.
        assert!(a.max_segments() >= 3, "no UDP GSO on this kernel");
        assert!(b.gro_segments() >= 3, "no UDP GRO on this kernel");
        let to = Endpoint::from(SocketAddr::from(([127, 0, 0, 1], b.local_port().unwrap())));
        let run: Vec<u8> = (0..250u32).map(|i| (i / 100) as u8 + 1).collect();
        a.send(&run, to, Some(100)).unwrap();
        let got = recv_all(&b);
        let total: usize = got.iter().map(|(d, _)| d.len()).sum();
        assert_eq!(total, 250);
        let (first, m) = &got[0];
        assert_eq!(m.stride, 100, "one batch of 100-byte segments");
        assert_eq!(first.len(), 250);
        assert_eq!(first[..], run[..]);
    }
}
