//! The outer side of the data path: how sealed datagrams reach peers.
//!
//! The UDP socket group (`udp::Udp`) is one implementation; a TCP transport for networks that
//! block UDP will be the next; `testing::MemoryTransport` is the one the engine's tests use.
//! Batched both ways: a receive may carry many datagrams (recvmmsg, GRO), a send a run of
//! same-size datagrams to one endpoint (GSO).

use crate::poll::WaitSet;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use suidao_proto::Endpoint;

/// One received message: `len` bytes from `from`, which are datagrams of `stride` bytes each
/// (the last may be shorter; a stride of 0 or of `len`: one datagram).
#[derive(Clone, Copy, Debug)]
pub struct RecvMeta {
    /// The sender, and the local address it sent to (where answers leave from).
    pub from: Endpoint,
    pub len: usize,
    pub stride: usize,
}

impl Default for RecvMeta {
    fn default() -> Self {
        RecvMeta {
            from: Endpoint::from(SocketAddr::from(([0, 0, 0, 0], 0))),
            len: 0,
            stride: 0,
        }
    }
}

/// A send that did not go (wholly): how many datagrams were lost, and the first error.
#[derive(Debug)]
pub struct SendError {
    pub lost: usize,
    pub error: io::Error,
}

impl SendError {
    /// The datagram was larger than the socket or the path allows (EMSGSIZE).
    pub fn too_big(&self) -> bool {
        self.error.raw_os_error() == Some(libc::EMSGSIZE)
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} datagram(s) lost)", self.error, self.lost)
    }
}

pub trait Transport: Send + Sync {
    /// Receives what is waiting, without blocking: up to `meta.len()` messages (as many as
    /// `buf` has slots of `slot` bytes), message i at `buf[i * slot..]` as `meta[i]` describes
    /// it. `WouldBlock` when nothing is waiting. One buffer cut into slots rather than a slice
    /// of `IoSliceMut`: the caller makes nothing per call, the transport writes each slot's
    /// address where it writes the rest of the message's header.
    fn recv(&self, buf: &mut [u8], slot: usize, meta: &mut [RecvMeta]) -> io::Result<usize>;

    /// Sends `contents` to `to`: one datagram, or with `segment` a run of datagrams of that
    /// size (the last may be shorter), in one go where the way allows.
    fn send(&self, contents: &[u8], to: Endpoint, segment: Option<usize>) -> Result<(), SendError>;

    /// How many datagrams one `send` may carry (1: no runs).
    fn max_segments(&self) -> usize;

    /// How many datagrams one received message may carry (1: one each).
    fn gro_segments(&self) -> usize;

    /// Waits until a message can be received (true), `timeout` passes or `interrupt` was
    /// called (false). `None`: no timeout.
    fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<bool>;

    /// Ends every wait, now and later (the engine is stopping).
    fn interrupt(&self);

    /// A descriptor that polls readable when a message can be received, for a thread that waits for
    /// this and something else at once (`poll::wait_any`). None (the default): wait with
    /// `wait_readable` only.
    fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    /// Puts the transport's descriptors into `set`, reported as `bit`, now and whenever it
    /// opens another (a thread then waits on its sockets directly, not on a set inside a set).
    /// `false` (the default): not done; wait on `readiness_fd` instead.
    fn register(&self, set: &Arc<WaitSet>, bit: u32) -> io::Result<bool> {
        let _ = (set, bit);
        Ok(false)
    }

    /// Marks what is sent from now on with `mark` (SO_MARK; 0: no mark), for policy routing
    /// (`wg set fwmark`). Unsupported by default.
    fn set_mark(&self, mark: u32) -> io::Result<()> {
        let _ = mark;
        Err(io::ErrorKind::Unsupported.into())
    }
}
