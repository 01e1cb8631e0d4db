//! What the data threads share: each worker's queue pair and the doorbells of its quiet and
//! busy modes (`Worker`), and the engine-wide state every thread reads (`Shared`): the
//! protocol device, the handshake queue, the flags that end the threads, and how failed sends
//! and writes are counted and logged.

use super::send::TxState;
use crate::packet_device::PacketDevice;
use crate::poll::Doorbell;
use crate::switch::Switch;
use crate::transport::{SendError, Transport};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use suidao_proto::keys::PublicKey;
use suidao_proto::{Device, DropReason, Endpoint, Outgoing, PeerId};
use tracing::{debug, warn};

/// One data-path worker: a queue of the packet device, a transport socket on the listen port,
/// and a thread per direction. Flows are spread over workers by the kernel: outgoing by the
/// TUN's per-flow queue choice, incoming by SO_REUSEPORT's per-sender socket choice, so the
/// packets of one flow (or one peer) always go through one worker, in order.
///
/// **Quiet and busy.** While traffic is light the receive thread watches the device too and
/// sends what it finds, and the send thread sleeps: a request and its answer then pass
/// through one thread on each side, with no wake-up of a second thread (on another CPU, in a
/// VM an interrupt to an idle vCPU) on the way. When the receive thread finds a burst in the
/// device it hands the device to the send thread (`send_bell`), which keeps it while packets
/// keep coming and hands it back (`recv_bell`) after `QUIET_AFTER` without any. Whoever reads
/// the device holds `tx`, so packets leave in the order they were read either way.
///
/// In the order written (`repr(C)`), `tx` last: a packet reads the small fields and the start
/// of `tx`, which then share a page (see `TxState`).
#[repr(C)]
pub(super) struct Worker {
    pub(super) device: Box<dyn PacketDevice>,
    pub(super) transport: Box<dyn Transport>,
    /// Both ends can be waited on together (their `readiness_fd`s), so quiet mode is possible.
    pub(super) fds: Option<(RawFd, RawFd)>,
    /// Quiet: the receive thread watches the device (see above).
    pub(super) quiet: AtomicBool,
    pub(super) send_bell: Doorbell,
    pub(super) recv_bell: Doorbell,
    /// Times the device was handed to the send thread.
    pub(super) handoffs: AtomicUsize,
    /// The send path's buffers (see `TxState`), held by whichever thread sends.
    pub(super) tx: Mutex<TxState>,
}

/// A burst: a read of the device by the receive thread that finds this many packets hands the
/// device to the send thread.
pub(super) const HANDOFF_AT: usize = 8;
/// The send thread hands the device back after this long without a packet.
pub(super) const QUIET_AFTER: Duration = Duration::from_millis(50);

impl Worker {
    /// The receive thread read `n` packets from the device: a burst makes the send thread
    /// take over.
    pub(super) fn read_by_receiver(&self, n: usize) {
        if n >= HANDOFF_AT && self.quiet.swap(false, Ordering::AcqRel) {
            self.handoffs.fetch_add(1, Ordering::Relaxed);
            self.send_bell.ring();
        }
    }
}

/// What every thread shares.
pub(super) struct Shared {
    pub(super) device: Arc<Device>,
    pub(super) workers: Vec<Worker>,
    pub(super) hairpin: bool,
    pub(super) own_addrs: Vec<IpAddr>,
    /// Layer 2 (`mode = "l2"`): frames are switched by MAC (`None`: IP packets, routed by the
    /// protocol's allowed IPs).
    pub(super) switch: Option<Arc<Switch>>,
    /// Peers whose packets of the other layer were reported, and when last.
    pub(super) wrong_layer_logged: Mutex<HashMap<PeerId, std::time::Instant>>,
    pub(super) names: Arc<RwLock<HashMap<PublicKey, String>>>,
    pub(super) handshakes: SyncSender<(Endpoint, Vec<u8>)>,
    pub(super) queued_handshakes: AtomicUsize,
    pub(super) stopping: AtomicBool,
    /// A thread died: go down.
    pub(super) failed: AtomicBool,
    /// The packet device is gone: go down.
    pub(super) gone: AtomicBool,
    /// Wakes whoever runs the timers: the protocol asked for attention, or a thread failed.
    pub(super) attention: tokio::sync::Notify,
    /// Causes of failed sends and writes already logged (each is logged once, then counted).
    pub(super) logged: Mutex<HashSet<(DropReason, Option<i32>)>>,
}

impl Shared {
    /// Tells whoever runs the timers to look again, if the protocol asks (a deadline armed
    /// sooner than planned, an endpoint that moved). Cheap: call it after every batch.
    pub(super) fn look_again(&self) {
        if self.device.take_attention() {
            self.attention.notify_one();
        }
    }

    /// Sends what the protocol asked for (handshakes, keepalives, cookie replies) from the
    /// first worker's socket: every worker's socket has the listen port.
    pub(super) fn send_all(&self, out: &mut Vec<Outgoing>) {
        let Some(w) = self.workers.first() else {
            out.clear();
            return;
        };
        for o in out.drain(..) {
            if let Err(e) = w.transport.send(&o.bytes, o.to, None) {
                self.send_failed(o.to, &e);
            }
        }
    }

    /// Counts a failed send by its reason; each cause (reason and error number) is logged the
    /// first time, later ones only at debug level.
    pub(super) fn send_failed(&self, to: Endpoint, e: &SendError) {
        let reason = if e.too_big() {
            DropReason::PacketTooBig
        } else {
            DropReason::SendError
        };
        self.device.count_engine_drop(reason, e.lost as u64);
        self.log_once(reason, e.error.raw_os_error(), || {
            format!("sending to {to}: {e}")
        });
    }

    /// A device read failed with `e`: if the device is gone (its interface deleted from
    /// outside: reads say EBADFD, and it polls readable for ever), says so once and makes the
    /// engine stop (`gone`); other errors are only logged. Cold, as every error path of the
    /// data path: out of the way of its code (see `super::debug_cold`).
    #[cold]
    pub(super) fn device_read_failed(&self, w: &Worker, e: &std::io::Error) {
        let gone = matches!(
            e.raw_os_error(),
            Some(libc::EBADFD | libc::EIO | libc::ENXIO | libc::ENODEV)
        );
        if !gone {
            debug!("reading {}: {e}", w.device.name());
            return;
        }
        if !self.gone.swap(true, Ordering::AcqRel) {
            tracing::error!(
                "{}: {e}: the interface is gone (deleted from outside?); going down",
                w.device.name()
            );
            self.attention.notify_one();
        }
    }

    #[cold]
    pub(super) fn device_write_failed(&self, w: &Worker, e: &std::io::Error) {
        self.device.count_engine_drop(DropReason::TunWriteError, 1);
        self.log_once(DropReason::TunWriteError, e.raw_os_error(), || {
            format!("writing to {}: {e}", w.device.name())
        });
    }

    fn log_once(&self, reason: DropReason, errno: Option<i32>, what: impl FnOnce() -> String) {
        let first = self
            .logged
            .lock()
            .map(|mut l| l.insert((reason, errno)))
            .unwrap_or(false);
        if first {
            warn!(
                "{} (counted as {}; further ones are not logged)",
                what(),
                reason.name()
            );
        } else {
            debug!("{}", what());
        }
    }

    /// A peer sent packets of the other layer (it runs the other mode, or is stock
    /// WireGuard): counted by the protocol; said at warning level, once a minute per peer.
    #[cold]
    pub(super) fn wrong_layer(&self, peer: PeerId, sent: suidao_proto::l2::Layer) {
        let now = std::time::Instant::now();
        let due = self.wrong_layer_logged.lock().is_ok_and(|mut l| {
            let due = l
                .get(&peer)
                .is_none_or(|t| now.duration_since(*t) >= Duration::from_secs(60));
            if due {
                l.insert(peer, now);
            }
            due
        });
        if !due {
            return;
        }
        use suidao_proto::l2::Layer;
        let (theirs, ours) = match sent {
            Layer::L3 => (
                "IP packets (a layer-3 suidao, or stock WireGuard, which cannot carry frames)",
                "layer-2 frames (mode = \"l2\")",
            ),
            Layer::L2 => (
                "layer-2 frames (its mode is \"l2\")",
                "IP packets (layer 3)",
            ),
        };
        warn!(
            "peer {}: mode mismatch: it sends {theirs}, this interface carries {ours}; its packets are dropped (counted as layer_mismatch). Set the same mode on both ends",
            self.peer_name(peer)
        );
    }

    pub(super) fn peer_name(&self, id: PeerId) -> String {
        let Some(info) = self.device.peer_info(id) else {
            return format!("peer {id}");
        };
        let name = self
            .names
            .read()
            .map(|n| n.get(&info.public_key).cloned())
            .ok()
            .flatten();
        name.unwrap_or_else(|| {
            let k = info.public_key.to_base64();
            format!("{}…", &k[..8])
        })
    }
}
