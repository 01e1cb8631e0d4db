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

    /// Reads what is waiting, without blocking: packets (a super-packet is split into them)
    /// into `slots`, at most `slots.len()`; returns how many. `WouldBlock` when nothing is
    /// waiting. `scratch` holds a super-packet while it is split.
    fn read_batch(&self, scratch: &mut [u8], slots: &mut Slots<'_>) -> io::Result<usize>;

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

/// Most slots a read may be given (`Slots::with_list` lists them in an array this long).
pub const MAX_SLOTS: usize = 256;

/// The free packet slots of a send batch, back to back in one buffer: slot `i` is
/// `data[i * stride..(i + 1) * stride]`, its packet goes at `offset` in it and its length into
/// `sizes[i]`. A lone packet touches only the first slot; only a super-packet's split lists them
/// all (`with_list`): listing 256 slots for every read cost more than the rest of a lone
/// packet's way through the send path.
pub struct Slots<'a> {
    data: &'a mut [u8],
    stride: usize,
    sizes: &'a mut [usize],
    offset: usize,
}

impl<'a> Slots<'a> {
    /// `data` is cut into slots of `stride` bytes; as many as `sizes` has room for, at most
    /// `MAX_SLOTS`.
    pub fn new(data: &'a mut [u8], stride: usize, sizes: &'a mut [usize], offset: usize) -> Self {
        let stride = stride.max(1);
        let count = (data.len() / stride).min(sizes.len()).min(MAX_SLOTS);
        Slots {
            data: &mut data[..count * stride],
            stride,
            sizes: &mut sizes[..count],
            offset,
        }
    }

    pub fn len(&self) -> usize {
        self.sizes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sizes.is_empty()
    }

    /// Where a packet starts in its slot.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The room for a packet in slot `i` (from `offset` to the slot's end).
    pub fn room(&mut self, i: usize) -> Option<&mut [u8]> {
        let start = i.checked_mul(self.stride)?.checked_add(self.offset)?;
        let end = (i + 1) * self.stride;
        self.data.get_mut(start..end)
    }

    /// Records that slot `i` holds `len` bytes.
    pub fn set_size(&mut self, i: usize, len: usize) {
        if let Some(s) = self.sizes.get_mut(i) {
            *s = len;
        }
    }

    /// Copies `packet` into slot `i`; an error if it does not fit.
    pub fn put(&mut self, i: usize, packet: &[u8]) -> io::Result<()> {
        let room = self.room(i).ok_or_else(|| no_room(i, packet.len()))?;
        room.get_mut(..packet.len())
            .ok_or_else(|| no_room(i, packet.len()))?
            .copy_from_slice(packet);
        self.set_size(i, packet.len());
        Ok(())
    }

    /// Calls `f` with every slot listed (whole, `offset` included) and the sizes, for a
    /// splitter that takes a list of buffers.
    pub fn with_list<R>(&mut self, f: impl FnOnce(&mut [&mut [u8]], &mut [usize]) -> R) -> R {
        let count = self.sizes.len();
        let mut chunks = self.data.chunks_mut(self.stride);
        let mut list: [&mut [u8]; MAX_SLOTS] =
            std::array::from_fn(|_| chunks.next().unwrap_or_default());
        f(&mut list[..count], self.sizes)
    }
}

fn no_room(i: usize, len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("a packet of {len} bytes does not fit slot {i}"),
    )
}

#[cfg(test)]
mod tests {
    // Test code: a failed unwrap is a failed test.
    #![allow(clippy::unwrap_used)]
    use super::Slots;

    #[test]
    fn slots_give_room_one_at_a_time_and_list_themselves_for_a_split() {
        let mut data = vec![0u8; 10 * 100 + 50];
        let mut sizes = [0usize; 8];
        let mut slots = Slots::new(&mut data, 100, &mut sizes, 16);
        assert_eq!(slots.len(), 8, "as many as there are sizes");
        slots.put(0, &[7u8; 84]).unwrap();
        assert_eq!(
            slots.room(1).unwrap().len(),
            84,
            "the slot after the offset"
        );
        assert!(
            slots.put(1, &[7u8; 85]).is_err(),
            "one byte more than the room"
        );
        assert!(slots.put(8, &[1]).is_err(), "no slot 8");
        assert!(slots.room(8).is_none());
        slots.with_list(|bufs, sizes| {
            assert_eq!(bufs.len(), 8);
            assert!(bufs.iter().all(|b| b.len() == 100), "whole slots");
            bufs[2][16] = 9;
            sizes[2] = 1;
        });
        assert_eq!((sizes[0], sizes[1], sizes[2]), (84, 0, 1));
        assert_eq!(&data[16..100], &[7u8; 84][..]);
        assert_eq!(data[216], 9);
        let mut few = [0usize; 300];
        assert_eq!(
            Slots::new(&mut data, 3, &mut few, 0).len(),
            super::MAX_SLOTS
        );
    }
}
