//! The UDP socket: one dual-stack socket (`[::]:port`, IPv4 as v4-mapped addresses) so that
//! peers on IPv4 and IPv6 underlays share one port, as in WireGuard. Addresses handed to the
//! protocol are always unmapped (plain IPv4 for IPv4 peers).
//!
//! Batched: sends of runs of same-size datagrams to one endpoint go out as one UDP_SEGMENT
//! (GSO) system call through `quinn-udp`, which also sets the socket up (UDP GRO, PKTINFO) and
//! falls back by itself on kernels without those features; receives use recvmmsg with UDP
//! GRO, written here for a lone datagram's sake (`recv.rs`). The socket is non-blocking; a
//! reader waits with `wait_readable`.
//!
//! Outer datagrams may be fragmented, as the kernel's WireGuard and wireguard-go let them be:
//! quinn-udp forbids it (right for QUIC, which sizes its own packets), but a tunnel whose MTU
//! is above the path's must still deliver, so the sockets are switched back to
//! IP_PMTUDISC_DONT / IPV6_DONTFRAG off. A GSO send cannot be fragmented (the kernel refuses
//! a segment larger than the path MTU); such a run goes out one datagram at a time, and the
//! destination is remembered for a while so the next runs go that way at once.
//!
//! Replies leave from the address the peer sent to (`Endpoint::local`, IP_PKTINFO /
//! IPV6_PKTINFO); if that address is gone, from whatever routing picks.
//!
//! A socket that talks to one peer (a client, either end of a point-to-point tunnel) sends its
//! lone datagrams through a second socket on the port, connected to that peer, which keeps its
//! route instead of looking it up for every datagram; the peer's datagrams then arrive there
//! (`pin`).

mod pin;
mod recv;

use crate::poll::{Interrupt, WaitSet};
pub use crate::transport::SendError;
use crate::transport::{RecvMeta, Transport};
use quinn_udp::{Transmit, UdpSockRef, UdpSocketState};
use recv::recv_on;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use suidao_proto::Endpoint;

/// Socket buffers large enough for bursts at several gigabits per second.
const SOCKET_BUFFER: usize = 8 << 20;
/// A destination GSO failed for is sent to one datagram at a time this long, then tried again
/// (its path MTU may have grown).
const NO_GSO_FOR: Duration = Duration::from_secs(60);

pub struct Udp {
    sock: UdpSocket,
    state: UdpSocketState,
    dual_stack: bool,
    /// GSO segments per send, as found when the socket was made. quinn-udp lowers its own
    /// figure to 1 for good after one failed GSO send, even when only one destination's path
    /// was too narrow; this one stays, and such destinations are remembered in `no_gso`.
    gso_segments: usize,
    /// Destinations whose GSO sends failed, and when.
    no_gso: Mutex<HashMap<SocketAddr, Instant>>,
    any_no_gso: AtomicBool,
    interrupt: Interrupt,
    port: u16,
    /// A socket connected to the one peer this one talks to, and the epoll set of both.
    pins: pin::Pins,
}

/// Messages one `recv` takes at most: the engine asks for 16 (`recv.rs` keeps the message
/// headers on the stack).
const MAX_RECV: usize = 16;

/// Errors from a GSO send that mean "not as one run" (segment above the path MTU, or a
/// device without segmentation), rather than "not at all".
fn gso_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::EIO) | Some(libc::EMSGSIZE)
    )
}

pub fn unmap_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// setsockopt(2) of an int option.
fn set_int_option(
    sock: &UdpSocket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the fd is a live socket owned by `sock`; the value pointer and length describe
    // one c_int that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Lets the kernel fragment outer datagrams larger than the path MTU (quinn-udp set the
/// opposite): IPv4 (also v4-mapped on a dual-stack socket) and IPv6.
fn allow_fragmentation(sock: &UdpSocket, dual_stack: bool) -> io::Result<()> {
    set_int_option(
        sock,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_DONT,
    )?;
    if dual_stack {
        set_int_option(
            sock,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DONT,
        )?;
        set_int_option(sock, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 0)?;
    }
    Ok(())
}

/// Turns off again the ancillary data quinn-udp asks for that nothing here reads: receive
/// timestamps (SO_TIMESTAMPNS; while any socket asks, the kernel also stamps every packet it
/// receives) and the TOS byte or traffic class (ECN, which WireGuard does not carry). Without
/// `destination`, IP_PKTINFO / IPV6_RECVPKTINFO too: a pinned socket is bound to the address
/// its datagrams are sent to. Each is a control message the kernel builds and copies out for
/// every datagram, and a lone datagram after a quiet spell pays for those cache lines (one
/// recvmsg after 20 ms of idle, measured alone: 6.5-7.1 µs with all of them, 5.6 without the
/// timestamp and TOS, 5.1-5.2 without PKTINFO too). Best effort: a kernel that refuses only
/// leaves them on.
fn drop_unread_control(sock: &UdpSocket, destination: bool) {
    let _ = set_int_option(sock, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 0);
    let _ = set_int_option(sock, libc::IPPROTO_IP, libc::IP_RECVTOS, 0);
    let _ = set_int_option(sock, libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, 0);
    if !destination {
        let _ = set_int_option(sock, libc::IPPROTO_IP, libc::IP_PKTINFO, 0);
        let _ = set_int_option(sock, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 0);
    }
}

pub fn unmap(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

impl Udp {
    /// Binds `[::]:port` (dual stack), or `0.0.0.0:port` where IPv6 is unavailable. `None`: a
    /// random port.
    pub fn bind(port: Option<u16>) -> io::Result<Udp> {
        Ok(Udp::bind_group(port, 1)?.remove(0))
    }

    /// `count` sockets on one port (SO_REUSEPORT when more than one): the kernel hands each
    /// sender's datagrams to one of them, always the same one for one source address and port,
    /// so one peer's packets stay in order. `None`: a random port.
    ///
    /// SO_REUSEPORT would also let another process of the same user share a port in use, and
    /// steal part of its traffic: the port is first bound alone, without the option, so that a
    /// port in use is refused as it is with one socket.
    pub fn bind_group(port: Option<u16>, count: usize) -> io::Result<Vec<Udp>> {
        let count = count.max(1);
        let port = port.unwrap_or(0);
        let in_use = |e: io::Error, port: u16| {
            if e.kind() == io::ErrorKind::AddrInUse {
                io::Error::new(e.kind(), format!("UDP port {port} is already in use"))
            } else {
                io::Error::new(e.kind(), format!("binding UDP port {port}: {e}"))
            }
        };
        let open = |port: u16, reuse: bool| -> io::Result<(Socket, bool)> {
            let bind = |s: Socket, ip: IpAddr| -> io::Result<Socket> {
                if reuse {
                    s.set_reuse_port(true)?;
                }
                s.bind(&SockAddr::from(SocketAddr::new(ip, port)))
                    .map_err(|e| in_use(e, port))?;
                Ok(s)
            };
            match Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)) {
                Ok(s) => {
                    s.set_only_v6(false)?;
                    Ok((bind(s, Ipv6Addr::UNSPECIFIED.into())?, true))
                }
                // No IPv6 on this machine: IPv4 alone.
                Err(_) => {
                    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
                    Ok((bind(s, Ipv4Addr::UNSPECIFIED.into())?, false))
                }
            }
        };
        if count == 1 {
            return Ok(vec![Udp::new(open(port, false)?)?]);
        }
        // Claim the port alone (this fails if anyone has it, with or without SO_REUSEPORT),
        // then let the group in. For a random port, the kernel's pick is free.
        let port = {
            let (probe, _) = open(port, false)?;
            let p = probe
                .local_addr()?
                .as_socket()
                .map(|a| a.port())
                .unwrap_or(port);
            drop(probe);
            p
        };
        (0..count).map(|_| Udp::new(open(port, true)?)).collect()
    }

    fn new((sock, dual_stack): (Socket, bool)) -> io::Result<Udp> {
        // Bound already (alone where it had to be): let the connected socket of a pin share the
        // port (see `pin`).
        sock.set_reuse_port(true)?;
        let sock: UdpSocket = sock.into();
        let port = sock.local_addr()?.port();
        // Sets the socket non-blocking and turns on GRO and the ancillary data it reads.
        let state = UdpSocketState::new(UdpSockRef::from(&sock))?;
        // Best effort: the kernel caps these at net.core.{r,w}mem_max.
        let _ = state.set_recv_buffer_size(UdpSockRef::from(&sock), SOCKET_BUFFER);
        let _ = state.set_send_buffer_size(UdpSockRef::from(&sock), SOCKET_BUFFER);
        allow_fragmentation(&sock, dual_stack)?;
        drop_unread_control(&sock, true);
        Ok(Udp {
            gso_segments: state.max_gso_segments(),
            pins: pin::Pins::new(&sock)?,
            port,
            sock,
            state,
            dual_stack,
            no_gso: Mutex::new(HashMap::new()),
            any_no_gso: AtomicBool::new(false),
            interrupt: Interrupt::new()?,
        })
    }

    pub fn local_port(&self) -> io::Result<u16> {
        Ok(self.sock.local_addr()?.port())
    }

    fn wire_addr(&self, to: SocketAddr) -> SocketAddr {
        match (to, self.dual_stack) {
            (SocketAddr::V4(v4), true) => {
                SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            (a, _) => a,
        }
    }

    fn send_run(
        &self,
        contents: &[u8],
        to: Endpoint,
        segment_size: Option<usize>,
    ) -> Result<(), SendError> {
        let seg = segment_size.filter(|s| *s > 0 && *s < contents.len());
        let Some(seg) = seg else {
            return self
                .send_one(contents, to, None)
                .map_err(|error| SendError { lost: 1, error });
        };
        if !self.gso_failed_before(to.addr) {
            match self.send_one(contents, to, Some(seg)) {
                Ok(()) => return Ok(()),
                Err(e) if gso_refused(&e) => self.remember_no_gso(to.addr),
                Err(error) => {
                    return Err(SendError {
                        lost: contents.len().div_ceil(seg),
                        error,
                    })
                }
            }
        }
        let mut failed: Option<SendError> = None;
        for datagram in contents.chunks(seg) {
            if let Err(error) = self.send_one(datagram, to, None) {
                match &mut failed {
                    Some(f) => f.lost += 1,
                    None => failed = Some(SendError { lost: 1, error }),
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// One sendmsg; from `to.local` first, and if the kernel refuses that address (it was
    /// removed, say), again from the routing's choice. (A source that is no longer ours is
    /// EINVAL on an IPv4 socket, ENETUNREACH or EADDRNOTAVAIL through a dual-stack one. A run
    /// refused for GSO's sake fails the second time too, and the caller sends it one by one.)
    fn send_one(&self, contents: &[u8], to: Endpoint, seg: Option<usize>) -> io::Result<()> {
        if seg.is_none() {
            if let Some(pinned) = self.pins.for_send(to, self.port) {
                match pinned.sock.send(contents) {
                    Ok(_) => return Ok(()),
                    Err(e) => self.pins.failed(&pinned, &e),
                }
            }
        }
        let transmit = |src_ip: Option<IpAddr>| Transmit {
            destination: self.wire_addr(to.addr),
            ecn: None,
            contents,
            segment_size: seg,
            src_ip,
        };
        match self
            .state
            .try_send(UdpSockRef::from(&self.sock), &transmit(to.local))
        {
            Err(e)
                if to.local.is_some()
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | libc::ENETUNREACH | libc::EADDRNOTAVAIL)
                    ) =>
            {
                self.state
                    .try_send(UdpSockRef::from(&self.sock), &transmit(None))
            }
            r => r,
        }
    }

    fn gso_failed_before(&self, to: SocketAddr) -> bool {
        if !self.any_no_gso.load(Ordering::Relaxed) {
            return false;
        }
        let mut map = self.no_gso.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, since| now.duration_since(*since) < NO_GSO_FOR);
        if map.is_empty() {
            self.any_no_gso.store(false, Ordering::Relaxed);
        }
        map.contains_key(&to)
    }

    fn remember_no_gso(&self, to: SocketAddr) {
        tracing::debug!("GSO refused for {to}: sending there one datagram at a time");
        let mut map = self.no_gso.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(to, Instant::now());
        self.any_no_gso.store(true, Ordering::Relaxed);
    }
}

impl Transport for Udp {
    /// recvmmsg with GRO: what is waiting, without blocking. Addresses come unmapped.
    /// From the pinned socket first (where the one peer's datagrams arrive), then the main
    /// one; the main one first after the pinned one filled a batch.
    fn recv(&self, buf: &mut [u8], slot: usize, meta: &mut [RecvMeta]) -> io::Result<usize> {
        let Some(pinned) = self.pins.current() else {
            return recv_on(&self.sock, buf, slot, meta, None);
        };
        let from_pin = |buf: &mut [u8], meta: &mut [RecvMeta]| {
            // Sent to the address the socket is bound to (it reads no PKTINFO).
            match recv_on(&pinned.sock, buf, slot, meta, pinned.to.local) {
                Ok(n) => {
                    // (A lone receive, one message asked for, is not a full batch.)
                    let asked = (buf.len() / slot.max(1)).min(meta.len()).min(MAX_RECV);
                    if asked > 1 && n == asked {
                        self.pins.filled_batch();
                    }
                    Some(n)
                }
                // A connected socket also reports ICMP errors (ECONNREFUSED): consumed here.
                Err(_) => None,
            }
        };
        let main_first = self.pins.main_first();
        if !main_first {
            if let Some(n) = from_pin(buf, meta) {
                return Ok(n);
            }
        }
        match recv_on(&self.sock, buf, slot, meta, None) {
            Err(e) if main_first && e.kind() == io::ErrorKind::WouldBlock => {
                from_pin(buf, meta).ok_or(e)
            }
            r => r,
        }
    }

    /// One datagram, or a run in one UDP_SEGMENT system call where the path allows (else one
    /// at a time). From `to.local` where it is still ours.
    fn send(&self, contents: &[u8], to: Endpoint, segment: Option<usize>) -> Result<(), SendError> {
        self.send_run(contents, to, segment)
    }

    /// As found when the socket was made (1 without GSO).
    fn max_segments(&self) -> usize {
        self.gso_segments
    }

    /// 1 without GRO.
    fn gro_segments(&self) -> usize {
        self.state.gro_segments()
    }

    fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<bool> {
        self.interrupt
            .wait_readable(self.pins.readiness_fd(), timeout)
    }

    fn interrupt(&self) {
        self.interrupt.wake();
    }

    /// The epoll set of the socket and its pin (see `pin`).
    fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.pins.readiness_fd())
    }

    /// The socket and its pin go into `set` themselves (see `pin`).
    fn register(&self, set: &Arc<WaitSet>, bit: u32) -> io::Result<bool> {
        self.pins.register(&self.sock, set, bit)?;
        Ok(true)
    }

    /// SO_MARK on the socket, so that policy routing can tell the tunnel's own packets from
    /// those to be tunnelled (a full tunnel).
    fn set_mark(&self, mark: u32) -> io::Result<()> {
        socket2::SockRef::from(&self.sock).set_mark(mark)?;
        self.pins.set_mark(mark)
    }
}
