//! The TUN device (through `tun-rs`), with offloads when the kernel has them: one read can
//! return a 64 KB TCP (or UDP) super-packet that `tun-rs` splits into MTU-sized packets, and
//! received packets of one flow are coalesced back (GRO) before they are written. Addresses, MTU
//! and link state are set through netlink (see `netlink`), not here.

use crate::packet_device::{Offload, PacketDevice};
use crate::poll::Interrupt;
use std::io;
pub use tun_rs::{VirtioNetHdr, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

/// Room to read one super-packet with its virtio header.
pub const MAX_READ: usize = VIRTIO_NET_HDR_LEN + 65535;

pub struct Tun {
    dev: tun_rs::SyncDevice,
    name: String,
    offload: bool,
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
    /// Creates the TUN interface `name`, with offloads where the kernel supports them, and
    /// `queues` queues (IFF_MULTI_QUEUE when more than one): each queue is a file descriptor of
    /// its own, and the kernel hands each flow's packets to one queue, so one flow stays in
    /// order while flows are read in parallel. Each queue is non-blocking.
    ///
    /// `layer2`: a TAP device (Ethernet frames, `mode = "l2"`) instead, without offloads
    /// (`tun-rs` splits and coalesces IP super-packets, not frames).
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
        let (first, offload) = match build(!layer2) {
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
                    interrupt: Interrupt::new()?,
                })
            })
            .collect()
    }
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

    /// One read: a packet, or a super-packet split into MTU-sized packets.
    fn read_batch(
        &self,
        scratch: &mut [u8],
        bufs: &mut [&mut [u8]],
        sizes: &mut [usize],
        offset: usize,
    ) -> io::Result<usize> {
        self.dev.recv_multiple(scratch, bufs, sizes, offset)
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
