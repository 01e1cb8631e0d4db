//! In-memory implementations of the data path's two edges, so that engines can run and talk
//! to each other inside one test process, as any user, with no TUN, no socket and no root:
//!
//! - `MemoryNet`: a switch that carries datagrams between the transports attached to it, by
//!   address; it can be cut (everything dropped) and counts what it carried. Each receiving
//!   queue holds at most `QUEUE_LIMIT` datagrams, as a socket buffer does: beyond, they drop.
//! - `MemoryTransport`: a `Transport` on a `MemoryNet` at one address. With `gro` above 1 it
//!   hands consecutive same-size datagrams from one sender over as one message, as UDP GRO
//!   does, so the engine's splitting path runs too.
//! - `MemoryDevice`: a `PacketDevice`; the test is the operating system behind it: `inject`
//!   is a packet the host sends into the tunnel, `written` what came out of it.
//!
//! The same roles wireguard-go's `tun/tuntest` and `conn/bindtest` play.

use crate::packet_device::{Offload, PacketDevice, Slots};
use crate::poll::Doorbell;
use crate::transport::{RecvMeta, SendError, Transport};
use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use suidao_proto::Endpoint;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A queue one side fills and another waits on, which can be closed to end every wait.
struct Queue<T> {
    items: Mutex<VecDeque<T>>,
    ready: Condvar,
    closed: AtomicBool,
    /// An eventfd that polls readable exactly while something is queued (set and cleared
    /// under `items`' lock), so the engine can wait on this and another queue at once, as on
    /// a TUN and a socket (`readiness_fd`).
    level: Option<Doorbell>,
}

impl<T> Queue<T> {
    fn new() -> Self {
        Queue {
            items: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            closed: AtomicBool::new(false),
            level: Doorbell::new().ok(),
        }
    }

    fn push(&self, item: T) {
        let mut items = lock(&self.items);
        items.push_back(item);
        self.settle(&items);
        drop(items);
        self.ready.notify_all();
    }

    /// Makes `level` say whether `items` (this queue's, locked) holds anything.
    fn settle(&self, items: &VecDeque<T>) {
        if let Some(level) = &self.level {
            if items.is_empty() {
                level.clear();
            } else {
                level.ring();
            }
        }
    }

    /// Waits until something is queued (true), `timeout` passes or the queue is closed.
    fn wait(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut items = lock(&self.items);
        loop {
            if self.closed.load(Ordering::Acquire) {
                return false;
            }
            if !items.is_empty() {
                return true;
            }
            items = match deadline {
                None => self.ready.wait(items).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    self.ready
                        .wait_timeout(items, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let _guard = lock(&self.items);
        self.ready.notify_all();
    }
}

/// Datagrams in flight: (from, to, bytes).
type Datagram = (SocketAddr, SocketAddr, Vec<u8>);

/// Datagrams one receiving queue holds (a socket buffer of a few MB, in full-size datagrams).
pub const QUEUE_LIMIT: usize = 4096;

/// The switch the memory transports hang on.
#[derive(Default)]
pub struct MemoryNet {
    /// Each address's queues: several when a group of transports shares it (SO_REUSEPORT),
    /// each sender always reaching the same one.
    ports: Mutex<HashMap<SocketAddr, Vec<Arc<Queue<Datagram>>>>>,
    cut: AtomicBool,
    carried: AtomicU64,
    dropped: AtomicU64,
}

impl MemoryNet {
    pub fn new() -> Arc<MemoryNet> {
        Arc::default()
    }

    /// A transport at `addr` (which receives what is sent there). `gro`: at most this many
    /// same-size datagrams from one sender per received message.
    pub fn attach(self: &Arc<Self>, addr: SocketAddr, gro: usize) -> MemoryTransport {
        self.attach_group(addr, 1, gro).remove(0)
    }

    /// `count` transports sharing `addr`, as SO_REUSEPORT sockets do: each sender's datagrams
    /// always reach the same one.
    pub fn attach_group(
        self: &Arc<Self>,
        addr: SocketAddr,
        count: usize,
        gro: usize,
    ) -> Vec<MemoryTransport> {
        let queues: Vec<Arc<Queue<Datagram>>> =
            (0..count.max(1)).map(|_| Arc::new(Queue::new())).collect();
        lock(&self.ports).insert(addr, queues.clone());
        queues
            .into_iter()
            .map(|inbox| MemoryTransport {
                net: self.clone(),
                addr,
                inbox,
                gro: gro.max(1),
                largest: Arc::new(AtomicU64::new(0)),
                sends: Arc::default(),
            })
            .collect()
    }

    /// While cut, every datagram is dropped.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Relaxed);
    }

    /// Datagrams delivered so far, and dropped (cut, or nobody at the address).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.carried.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }

    fn deliver(&self, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        let port = lock(&self.ports).get(&to).and_then(|qs| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            from.hash(&mut h);
            qs.get(h.finish() as usize % qs.len().max(1)).cloned()
        });
        match port {
            Some(q) if !self.cut.load(Ordering::Relaxed) && lock(&q.items).len() < QUEUE_LIMIT => {
                self.carried.fetch_add(1, Ordering::Relaxed);
                q.push((from, to, bytes.to_vec()));
            }
            _ => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A clone is another handle on the same transport (a test keeps one to look at it).
#[derive(Clone)]
pub struct MemoryTransport {
    net: Arc<MemoryNet>,
    addr: SocketAddr,
    inbox: Arc<Queue<Datagram>>,
    gro: usize,
    /// The most messages one `recv` returned.
    largest: Arc<AtomicU64>,
    /// `send` calls, and the datagrams they carried.
    sends: Arc<(AtomicU64, AtomicU64)>,
}

impl MemoryTransport {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The most messages one `recv` has returned so far.
    pub fn largest_batch(&self) -> usize {
        self.largest.load(Ordering::Relaxed) as usize
    }

    /// `send` calls so far, and the datagrams they carried.
    pub fn sends(&self) -> (u64, u64) {
        (
            self.sends.0.load(Ordering::Relaxed),
            self.sends.1.load(Ordering::Relaxed),
        )
    }
}

impl Transport for MemoryTransport {
    fn recv(&self, bufs: &mut [u8], slot: usize, meta: &mut [RecvMeta]) -> io::Result<usize> {
        let mut items = lock(&self.inbox.items);
        if items.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut n = 0;
        for buf in bufs.chunks_mut(slot.max(1)).take(meta.len()) {
            let Some((from, to, first)) = items.pop_front() else {
                break;
            };
            let stride = first.len();
            let mut len = first.len().min(buf.len());
            buf[..len].copy_from_slice(&first[..len]);
            // GRO: more datagrams of the same sender, of the same size (the last may be
            // shorter), while they fit.
            let mut count = 1;
            while count < self.gro && stride > 0 {
                let joins = items.front().is_some_and(|(f, _, d)| {
                    *f == from && d.len() <= stride && len + d.len() <= buf.len()
                });
                if !joins {
                    break;
                }
                let Some((_, _, d)) = items.pop_front() else {
                    break;
                };
                buf[len..len + d.len()].copy_from_slice(&d);
                len += d.len();
                count += 1;
                if d.len() < stride {
                    break;
                }
            }
            meta[n] = RecvMeta {
                from: Endpoint {
                    addr: from,
                    local: Some(to.ip()),
                },
                len,
                stride,
            };
            n += 1;
        }
        self.inbox.settle(&items);
        self.largest.fetch_max(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn send(&self, contents: &[u8], to: Endpoint, segment: Option<usize>) -> Result<(), SendError> {
        let seg = segment.filter(|s| *s > 0).unwrap_or(contents.len().max(1));
        self.sends.0.fetch_add(1, Ordering::Relaxed);
        for d in contents.chunks(seg) {
            self.sends.1.fetch_add(1, Ordering::Relaxed);
            self.net.deliver(self.addr, to.addr, d);
        }
        Ok(())
    }

    fn max_segments(&self) -> usize {
        64
    }

    fn gro_segments(&self) -> usize {
        self.gro
    }

    fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<bool> {
        Ok(self.inbox.wait(timeout))
    }

    fn interrupt(&self) {
        self.inbox.close();
    }

    fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
        self.inbox.level.as_ref().map(Doorbell::fd)
    }
}

/// The host side of a tunnel interface, in memory.
pub struct MemoryDevice {
    name: String,
    offload: Offload,
    /// Packets the host sends into the tunnel, for the engine to read.
    outgoing: Queue<Vec<u8>>,
    /// What the engine wrote: one entry per write (with offload, a virtio header first).
    written: Queue<Vec<u8>>,
}

impl MemoryDevice {
    pub fn new(name: &str, offload: Offload) -> Arc<MemoryDevice> {
        Arc::new(MemoryDevice {
            name: name.to_string(),
            offload,
            outgoing: Queue::new(),
            written: Queue::new(),
        })
    }

    /// The host sends `packet` into the tunnel.
    pub fn inject(&self, packet: &[u8]) {
        self.outgoing.push(packet.to_vec());
    }

    /// The host sends all of `packets` at once (the engine's next read finds them all).
    pub fn inject_burst(&self, packets: impl IntoIterator<Item = Vec<u8>>) {
        let mut items = lock(&self.outgoing.items);
        items.extend(packets);
        self.outgoing.settle(&items);
        drop(items);
        self.outgoing.ready.notify_all();
    }

    /// The next write of the engine (a packet, or with offload a virtio header and coalesced
    /// segments), waiting up to `timeout`.
    pub fn written(&self, timeout: Duration) -> Option<Vec<u8>> {
        if !self.written.wait(Some(timeout)) {
            return None;
        }
        lock(&self.written.items).pop_front()
    }
}

/// A `MemoryDevice` shared with the test (the engine gets one handle, the test keeps one).
impl PacketDevice for Arc<MemoryDevice> {
    fn name(&self) -> &str {
        &self.name
    }

    fn offload(&self) -> Offload {
        self.offload
    }

    fn read_batch(&self, _scratch: &mut [u8], slots: &mut Slots<'_>) -> io::Result<usize> {
        let mut items = lock(&self.outgoing.items);
        if items.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut n = 0;
        while n < slots.len() {
            let Some(p) = items.pop_front() else {
                break;
            };
            let Some(room) = slots.room(n) else {
                break;
            };
            let len = p.len().min(room.len());
            room[..len].copy_from_slice(&p[..len]);
            slots.set_size(n, len);
            n += 1;
        }
        self.outgoing.settle(&items);
        Ok(n)
    }

    fn write_vectored(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        let bytes: Vec<u8> = iov.iter().flat_map(|s| s.iter().copied()).collect();
        let n = bytes.len();
        self.written.push(bytes);
        Ok(n)
    }

    fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<bool> {
        Ok(self.outgoing.wait(timeout))
    }

    fn interrupt(&self) {
        self.outgoing.close();
    }

    fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
        self.outgoing.level.as_ref().map(Doorbell::fd)
    }
}
