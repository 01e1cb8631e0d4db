//! The inner side of the data path: where the tunnel's packets come from and go to.
//!
//! A TUN device (layer 3) and a TAP device (layer 2, `mode = "l2"`) are one implementation,
//! `tun::Tun`; `testing::MemoryDevice` is the one the engine's tests use. The engine calls these once
//! per batch, never per byte, so a trait object costs nothing that matters.

use std::io::{self, IoSlice};
use std::time::Duration;

/// What a device does with super-packets (segmentation offload, as virtio-net describes it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offload {
    /// Reads may return TCP super-packets (split into packets by `read_batch`), and writes take
    /// a virtio header and coalesced TCP segments (`gro`).
    pub tcp: bool,
    /// The same for UDP.
    pub udp: bool,
}

pub trait PacketDevice: Send + Sync {
    /// The interface's name, for logs.
    fn name(&self) -> &str;

    fn offload(&self) -> Offload;

    /// Reads what is waiting, without blocking: packets (a super-packet is split into them) at
    /// `bufs[i][offset..offset + sizes[i]]`, at most `bufs.len()`; returns how many.
    /// `WouldBlock` when nothing is waiting. `scratch` holds a super-packet while it is split.
    fn read_batch(
        &self,
        scratch: &mut [u8],
        bufs: &mut [&mut [u8]],
        sizes: &mut [usize],
        offset: usize,
    ) -> io::Result<usize>;

    /// Writes one packet gathered from `iov` (with offload: a virtio header, then a packet or
    /// coalesced segments).
    fn write_vectored(&self, iov: &[IoSlice<'_>]) -> io::Result<usize>;

    /// Waits until a packet can be read (true), `timeout` passes or `interrupt` was called
    /// (false). `None`: no timeout.
    fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<bool>;

    /// Ends every wait, now and later (the engine is stopping).
    fn interrupt(&self);

    /// A descriptor that polls readable when a packet can be read, for a thread that waits for
    /// this and something else at once (`poll::wait_any`). None (the default): wait with
    /// `wait_readable` only.
    fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}
