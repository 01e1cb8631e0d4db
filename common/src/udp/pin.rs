//! A socket connected to the one peer a socket talks to (a client and its server, the two ends
//! of a point-to-point tunnel), beside it on the same port.
//!
//! Why: an unconnected socket looks up the route of every datagram it sends; a connected one
//! keeps the route. A lone datagram after an idle spell (a ping, a keystroke, the answer to a
//! request) pays that lookup cold: here `sendmsg` after 50 ms idle costs about 70 µs from the
//! unconnected socket and 62 µs from a connected IPv4 one (connecting a dual-stack socket to a
//! v4-mapped address saves almost nothing, so the pinned socket is of the peer's own family),
//! and a round trip has two such sends. boringtun connects a socket per peer for this.
//!
//! How: the first lone datagram to an endpoint whose local address is known (the peer has sent
//! something) makes a socket bound to the port (SO_REUSEPORT) and to that local address,
//! connected to the peer. The kernel hands that
//! peer's datagrams to the connected socket from then on (the better match), so it is read as
//! well: the two sockets share one epoll set, whose descriptor is what the receive thread
//! waits on. Runs (GSO) still leave through the main socket: one lookup per 64 KB is nothing.
//! A socket that talks to several endpoints (a server with several clients) stops pinning:
//! after `MAX_CHANGES` new pins within `WINDOW` it rests for `PAUSE`.

use super::{allow_fragmentation, drop_unread_control, SOCKET_BUFFER};
use crate::poll::WaitSet;
use quinn_udp::{UdpSockRef, UdpSocketState};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use suidao_proto::Endpoint;
use tracing::debug;

const MAX_CHANGES: u32 = 4;
const WINDOW: Duration = Duration::from_secs(10);
const PAUSE: Duration = Duration::from_secs(60);

/// A connected socket and the endpoint it is for.
pub(super) struct Pinned {
    pub(super) to: Endpoint,
    pub(super) sock: UdpSocket,
}

struct State {
    pin: Option<Arc<Pinned>>,
    /// New pins since `window_start`.
    changes: u32,
    window_start: Instant,
    paused_until: Option<Instant>,
    /// SO_MARK for new pinned sockets (`set_mark` on the main socket).
    mark: Option<u32>,
    /// The receive thread's set, where the sockets are watched directly (`register`).
    outer: Option<(Arc<WaitSet>, u32)>,
}

/// The pin of one socket, and the epoll set that waits on both.
pub(super) struct Pins {
    set: WaitSet,
    state: Mutex<State>,
    /// The last receive from the pinned socket filled the batch: look at the main socket first
    /// next time, so that a busy peer does not starve the others (and handshakes).
    main_first: AtomicBool,
}

impl Pins {
    /// An epoll set holding `main` (level-triggered: readable while it has datagrams).
    pub(super) fn new(main: &UdpSocket) -> io::Result<Pins> {
        let set = WaitSet::new()?;
        set.add(main.as_raw_fd(), 1)?;
        Ok(Pins {
            set,
            state: Mutex::new(State {
                pin: None,
                changes: 0,
                window_start: Instant::now(),
                paused_until: None,
                mark: None,
                outer: None,
            }),
            main_first: AtomicBool::new(false),
        })
    }

    /// Polls readable when either socket has a datagram.
    pub(super) fn readiness_fd(&self) -> RawFd {
        self.set.fd()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pinned socket, if any (to receive from).
    pub(super) fn current(&self) -> Option<Arc<Pinned>> {
        self.lock().pin.clone()
    }

    pub(super) fn main_first(&self) -> bool {
        self.main_first.swap(false, Ordering::Relaxed)
    }

    pub(super) fn filled_batch(&self) {
        self.main_first.store(true, Ordering::Relaxed);
    }

    /// The socket to send a lone datagram to `to` through: the pin for it (made now if this
    /// socket talks to one endpoint), or `None` for the main socket.
    /// Only once the local address the peer sends to is known: the pinned socket is bound to
    /// it, so its source never depends on the routes of the moment it was made.
    pub(super) fn for_send(&self, to: Endpoint, port: u16) -> Option<Arc<Pinned>> {
        to.local?;
        let mut st = self.lock();
        if let Some(p) = &st.pin {
            if p.to == to {
                return Some(p.clone());
            }
        }
        self.pin_anew(&mut st, to, port)
    }

    /// `for_send` without a pin for `to`: makes one unless endpoints change too often (a
    /// server's socket with several peers stays unpinned, and this is a few loads). Cold: laid
    /// out of the way of the code a pinned send runs.
    #[cold]
    fn pin_anew(&self, st: &mut State, to: Endpoint, port: u16) -> Option<Arc<Pinned>> {
        let now = Instant::now();
        if st.paused_until.is_some_and(|t| now < t) {
            return None;
        }
        if now.duration_since(st.window_start) > WINDOW {
            st.window_start = now;
            st.changes = 0;
        }
        st.changes += 1;
        if st.changes > MAX_CHANGES {
            // Several endpoints in turn: a pin would be rebuilt all the time.
            self.pause(st, now, "several endpoints");
            return None;
        }
        match self.pin(to, port, st.mark) {
            Ok(p) => {
                let p = Arc::new(p);
                self.replace(st, Some(p.clone()));
                Some(p)
            }
            Err(e) => {
                self.pause(st, now, &format!("{e}"));
                None
            }
        }
    }

    /// The pinned socket failed a send: drop it if its address is gone (the next send makes a
    /// new one, from where the peer sends to now). A full buffer (EAGAIN, ENOBUFS) or an ICMP
    /// error the connected socket reports (ECONNREFUSED) keeps the pin: the datagram goes
    /// through the main socket this time. (A pin dropped loses what waits in its receive
    /// queue: under a UDP flood that was most of it.)
    #[cold]
    pub(super) fn failed(&self, pinned: &Arc<Pinned>, e: &io::Error) {
        let gone = matches!(
            e.raw_os_error(),
            Some(libc::EINVAL | libc::EADDRNOTAVAIL | libc::ENETUNREACH | libc::EHOSTUNREACH)
        );
        if !gone {
            return;
        }
        let mut st = self.lock();
        if st.pin.as_ref().is_some_and(|p| Arc::ptr_eq(p, pinned)) {
            debug!(
                "connected socket for {}: {e}; sending through the main socket",
                pinned.to.addr
            );
            self.replace(&mut st, None);
        }
    }

    pub(super) fn set_mark(&self, mark: u32) -> io::Result<()> {
        let mut st = self.lock();
        st.mark = Some(mark);
        if let Some(p) = &st.pin {
            socket2::SockRef::from(&p.sock).set_mark(mark)?;
        }
        Ok(())
    }

    fn pause(&self, st: &mut State, now: Instant, why: &str) {
        debug!("not pinning a connected socket for {PAUSE:?}: {why}");
        st.paused_until = Some(now + PAUSE);
        self.replace(st, None);
    }

    /// Watches `main` and the pin (now and later) in `set` too, as `bit`.
    pub(super) fn register(
        &self,
        main: &UdpSocket,
        set: &Arc<WaitSet>,
        bit: u32,
    ) -> io::Result<()> {
        let mut st = self.lock();
        set.add(main.as_raw_fd(), bit)?;
        if let Some(p) = &st.pin {
            set.add(p.sock.as_raw_fd(), bit)?;
        }
        st.outer = Some((set.clone(), bit));
        Ok(())
    }

    /// Swaps the pin, keeping the epoll sets in step.
    fn replace(&self, st: &mut State, new: Option<Arc<Pinned>>) {
        if let Some(old) = st.pin.take() {
            let _ = self.set.remove(old.sock.as_raw_fd());
            if let Some((outer, _)) = &st.outer {
                let _ = outer.remove(old.sock.as_raw_fd());
            }
        }
        if let Some(p) = &new {
            let fd = p.sock.as_raw_fd();
            let watched = self.set.add(fd, 1).and_then(|()| match &st.outer {
                Some((outer, bit)) => outer.add(fd, *bit).inspect_err(|_| {
                    let _ = self.set.remove(fd);
                }),
                None => Ok(()),
            });
            if let Err(e) = watched {
                debug!("watching the connected socket: {e}");
                return;
            }
        }
        st.pin = new;
    }

    /// A socket of `to`'s family on `port`, bound to the address the peer sent to, connected to
    /// the peer.
    fn pin(&self, to: Endpoint, port: u16, mark: Option<u32>) -> io::Result<Pinned> {
        let v6 = to.addr.is_ipv6();
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        if v6 {
            sock.set_only_v6(true)?;
        }
        sock.set_reuse_port(true)?;
        if let Some(m) = mark {
            sock.set_mark(m)?;
        }
        let local = to
            .local
            .filter(|l| l.is_ipv6() == v6)
            .ok_or_else(|| io::Error::other("no local address of the peer's family"))?;
        sock.bind(&SockAddr::from(SocketAddr::new(local, port)))?;
        sock.connect(&SockAddr::from(to.addr))?;
        let sock: UdpSocket = sock.into();
        // quinn-udp's state sets the socket up as the main one (GRO, PKTINFO); receives are
        // ours (`recv.rs`) and lone sends plain send(2), so it is not kept.
        let state = UdpSocketState::new(UdpSockRef::from(&sock))?;
        let _ = state.set_recv_buffer_size(UdpSockRef::from(&sock), SOCKET_BUFFER);
        let _ = state.set_send_buffer_size(UdpSockRef::from(&sock), SOCKET_BUFFER);
        allow_fragmentation(&sock, v6)?;
        drop_unread_control(&sock, false);
        debug!("connected socket for {} from {local}:{port}", to.addr);
        Ok(Pinned { to, sock })
    }
}

#[cfg(test)]
mod tests {
    // Test code: a failed unwrap is a failed test.
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::super::{recv_on, Udp};
    use crate::transport::{RecvMeta, Transport};
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::time::Duration;
    use suidao_proto::Endpoint;

    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn addr(u: &Udp) -> SocketAddr {
        SocketAddr::new(LO, u.local_port().unwrap())
    }

    fn to(u: &Udp, local: Option<IpAddr>) -> Endpoint {
        Endpoint {
            addr: addr(u),
            local,
        }
    }

    fn recv_one(u: &Udp) -> (Vec<u8>, SocketAddr) {
        assert!(
            u.wait_readable(Some(Duration::from_secs(2))).unwrap(),
            "nothing arrived"
        );
        let mut buf = vec![0u8; 2048];
        let mut meta = [RecvMeta::default(); 1];
        let n = u.recv(&mut buf, 2048, &mut meta).unwrap();
        assert_eq!(n, 1);
        // Read from PKTINFO on the main socket, the bound address on a pinned one.
        assert_eq!(meta[0].from.local, Some(LO), "the address it was sent to");
        (buf[..meta[0].len].to_vec(), meta[0].from.addr)
    }

    #[test]
    fn a_socket_with_one_peer_sends_through_a_connected_socket_and_hears_the_peer_there() {
        let (a, b) = (Udp::bind(None).unwrap(), Udp::bind(None).unwrap());
        // Nothing heard from the peer yet (no local address): no pin.
        a.send(b"one", to(&b, None), None).unwrap();
        assert!(a.pins.current().is_none());
        assert_eq!(recv_one(&b), (b"one".to_vec(), addr(&a)));
        // With the local address: a socket connected to the peer, from the same port.
        a.send(b"two", to(&b, Some(LO)), None).unwrap();
        let pin = a.pins.current().expect("a pin");
        assert_eq!(pin.sock.peer_addr().unwrap(), addr(&b));
        assert_eq!(pin.sock.local_addr().unwrap(), addr(&a));
        assert_eq!(recv_one(&b), (b"two".to_vec(), addr(&a)));
        // The peer's answer waits on the pinned socket, not the main one, and `recv` finds it.
        b.send(b"three", to(&a, Some(LO)), None).unwrap();
        assert!(a.wait_readable(Some(Duration::from_secs(2))).unwrap());
        let mut buf = vec![0u8; 2048];
        let mut meta = [RecvMeta::default(); 1];
        let main = recv_on(&a.sock, &mut buf, 2048, &mut meta, None);
        assert_eq!(
            main.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::WouldBlock)
        );
        assert_eq!(recv_one(&a), (b"three".to_vec(), addr(&b)));
    }

    #[test]
    fn a_socket_that_talks_to_several_peers_in_turn_stops_pinning() {
        let a = Udp::bind(None).unwrap();
        let peers: Vec<Udp> = (0..3).map(|_| Udp::bind(None).unwrap()).collect();
        for round in 0..3 {
            for p in &peers {
                a.send(format!("{round}").as_bytes(), to(p, Some(LO)), None)
                    .unwrap();
                assert_eq!(recv_one(p), (format!("{round}").into_bytes(), addr(&a)));
            }
        }
        assert!(a.pins.current().is_none(), "pinning paused");
        assert!(a.pins.for_send(to(&peers[0], Some(LO)), a.port).is_none());
    }
}
