//! The UDP socket: one dual-stack socket (`[::]:port`, IPv4 as v4-mapped addresses) so that
//! peers on IPv4 and IPv6 underlays share one port, as in WireGuard. Addresses handed to the
//! protocol are always unmapped (plain IPv4 for IPv4 peers).
//!
//! Batched through `quinn-udp`: sends of runs of same-size datagrams to one endpoint go out as
//! one UDP_SEGMENT (GSO) system call, receives use recvmmsg with UDP GRO, and both fall back
//! by themselves on kernels without those features. The socket is non-blocking; a reader waits
//! with `wait_readable`.

use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Socket buffers large enough for bursts at several gigabits per second.
const SOCKET_BUFFER: usize = 8 << 20;

pub struct Udp {
    sock: UdpSocket,
    state: UdpSocketState,
    dual_stack: bool,
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
        let sock: UdpSocket = sock.into();
        // Sets the socket non-blocking and turns on GRO and the ancillary data it reads.
        let state = UdpSocketState::new(UdpSockRef::from(&sock))?;
        // Best effort: the kernel caps these at net.core.{r,w}mem_max.
        let _ = state.set_recv_buffer_size(UdpSockRef::from(&sock), SOCKET_BUFFER);
        let _ = state.set_send_buffer_size(UdpSockRef::from(&sock), SOCKET_BUFFER);
        Ok(Udp {
            sock,
            state,
            dual_stack,
        })
    }

    /// Marks every packet the socket sends (SO_MARK), so that policy routing can tell the
    /// tunnel's own packets from those to be tunnelled (full tunnel).
    pub fn set_mark(&self, mark: u32) -> io::Result<()> {
        socket2::SockRef::from(&self.sock).set_mark(mark)
    }

    pub fn local_port(&self) -> io::Result<u16> {
        Ok(self.sock.local_addr()?.port())
    }

    /// How many datagrams one GSO send may carry (1 without GSO).
    pub fn max_gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// How many datagrams one GRO receive may carry (1 without GRO).
    pub fn gro_segments(&self) -> usize {
        self.state.gro_segments()
    }

    fn wire_addr(&self, to: SocketAddr) -> SocketAddr {
        match (to, self.dual_stack) {
            (SocketAddr::V4(v4), true) => {
                SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            (a, _) => a,
        }
    }

    /// Sends `contents` to `to`: one datagram, or with `segment_size` a run of datagrams of that
    /// size (the last may be shorter) in one system call.
    pub fn send(
        &self,
        contents: &[u8],
        to: SocketAddr,
        segment_size: Option<usize>,
    ) -> io::Result<()> {
        let t = Transmit {
            destination: self.wire_addr(to),
            ecn: None,
            contents,
            segment_size: segment_size.filter(|s| *s < contents.len()),
            src_ip: None,
        };
        self.state.try_send(UdpSockRef::from(&self.sock), &t)
    }

    pub fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.send(buf, to, None).map(|()| buf.len())
    }

    /// Receives what is waiting, without blocking: up to `bufs.len()` messages, each possibly
    /// several datagrams of `meta.stride` bytes (GRO). Addresses in `meta` are unmapped.
    pub fn recv(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> io::Result<usize> {
        let n = self.state.recv(UdpSockRef::from(&self.sock), bufs, meta)?;
        for m in &mut meta[..n] {
            m.addr = unmap(m.addr);
        }
        Ok(n)
    }

    /// Waits until a datagram can be read, or `timeout` passes (false).
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        crate::poll::wait_readable(self.sock.as_raw_fd(), timeout)
    }
}
