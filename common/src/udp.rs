//! The UDP socket: one dual-stack socket (`[::]:port`, IPv4 as v4-mapped addresses) so that
//! peers on IPv4 and IPv6 underlays share one port, as in WireGuard. Addresses handed to the
//! protocol are always unmapped (plain IPv4 for IPv4 peers).

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

/// Socket buffers large enough for bursts at gigabit rates.
const SOCKET_BUFFER: usize = 4 << 20;

pub struct Udp {
    sock: UdpSocket,
    dual_stack: bool,
}

fn unmap(a: SocketAddr) -> SocketAddr {
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
        let port = port.unwrap_or(0);
        let in_use = |e: io::Error| {
            if e.kind() == io::ErrorKind::AddrInUse {
                io::Error::new(e.kind(), format!("UDP port {port} is already in use"))
            } else {
                io::Error::new(e.kind(), format!("binding UDP port {port}: {e}"))
            }
        };
        let (sock, dual_stack) = match Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)) {
            Ok(s) => {
                s.set_only_v6(false)?;
                s.bind(&SockAddr::from(SocketAddr::new(
                    Ipv6Addr::UNSPECIFIED.into(),
                    port,
                )))
                .map_err(in_use)?;
                (s, true)
            }
            Err(_) => {
                let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
                s.bind(&SockAddr::from(SocketAddr::new(
                    Ipv4Addr::UNSPECIFIED.into(),
                    port,
                )))
                .map_err(in_use)?;
                (s, false)
            }
        };
        // Best effort: the kernel caps these at net.core.{r,w}mem_max.
        let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
        Ok(Udp {
            sock: sock.into(),
            dual_stack,
        })
    }

    pub fn local_port(&self) -> io::Result<u16> {
        Ok(self.sock.local_addr()?.port())
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(t)
    }

    pub fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        let to = match (to, self.dual_stack) {
            (SocketAddr::V4(v4), true) => {
                SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            (a, _) => a,
        };
        self.sock.send_to(buf, to)
    }

    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let (n, from) = self.sock.recv_from(buf)?;
        Ok((n, unmap(from)))
    }
}
