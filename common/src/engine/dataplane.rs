//! `Engine`: the running data plane. Its workers each own a packet device queue and a
//! transport socket and run a send and a receive thread; a handshake thread does the costly
//! handshake work; `run_timers` runs the protocol's timers and says when to run them next.
//!
//! `up` wraps one around a TUN and UDP sockets; the engine's tests wrap two or three around
//! in-memory ones and let them talk.

use super::handshakes::{self, HANDSHAKE_QUEUE};
use super::send::TxState;
use super::{receive, send, setup_error, EngineError};
use crate::clock;
use crate::packet_device::PacketDevice;
use crate::poll::Doorbell;
use crate::transport::{SendError, Transport};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;
use suidao_proto::keys::PublicKey;
use suidao_proto::{Device, DropReason, Endpoint, Outgoing, PeerId};
use tracing::{debug, warn};

/// What the engine needs besides the protocol device and its queues.
pub struct Options {
    /// Relay packets between peers inside the engine (a server's clients reach each other).
    pub hairpin: bool,
    /// The interface's own addresses: a packet for one of them is for this host, not relayed.
    pub own_addrs: Vec<IpAddr>,
    /// The tunnel MTU (the send path's buffers are sized for it).
    pub mtu: usize,
    /// Peers' names, for the logs.
    pub names: Arc<RwLock<HashMap<PublicKey, String>>>,
}

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
pub(super) struct Worker {
    pub(super) device: Box<dyn PacketDevice>,
    pub(super) transport: Box<dyn Transport>,
    /// The send path's buffers (see `TxState`), held by whichever thread sends.
    pub(super) tx: Mutex<TxState>,
    /// Both ends can be waited on together (their `readiness_fd`s), so quiet mode is possible.
    pub(super) fds: Option<(RawFd, RawFd)>,
    /// Quiet: the receive thread watches the device (see above).
    pub(super) quiet: AtomicBool,
    pub(super) send_bell: Doorbell,
    pub(super) recv_bell: Doorbell,
    /// Times the device was handed to the send thread.
    pub(super) handoffs: AtomicUsize,
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
    logged: Mutex<HashSet<(DropReason, Option<i32>)>>,
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
    /// engine stop (`gone`); other errors are only logged.
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

/// The running data plane; stops (and joins its threads) on `stop` or drop.
pub struct Engine {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Engine {
    /// Starts a send and a receive thread per (device, transport) queue pair, and the
    /// handshake thread.
    pub fn start(
        device: Arc<Device>,
        queues: Vec<(Box<dyn PacketDevice>, Box<dyn Transport>)>,
        options: Options,
    ) -> Result<Engine, EngineError> {
        if queues.is_empty() {
            return Err(setup_error("an engine needs at least one worker"));
        }
        let (hs_tx, hs_rx) = sync_channel(HANDSHAKE_QUEUE);
        let workers = queues
            .into_iter()
            .map(|(dev, transport)| {
                let fds = dev.readiness_fd().zip(transport.readiness_fd());
                Ok(Worker {
                    tx: Mutex::new(TxState::new(options.mtu, dev.offload().tcp)),
                    device: dev,
                    transport,
                    fds,
                    quiet: AtomicBool::new(fds.is_some()),
                    send_bell: Doorbell::new().map_err(|e| setup_error(format!("eventfd: {e}")))?,
                    recv_bell: Doorbell::new().map_err(|e| setup_error(format!("eventfd: {e}")))?,
                    handoffs: AtomicUsize::new(0),
                })
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        let shared = Arc::new(Shared {
            device,
            workers,
            hairpin: options.hairpin,
            own_addrs: options.own_addrs,
            names: options.names,
            handshakes: hs_tx,
            queued_handshakes: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            attention: tokio::sync::Notify::new(),
            logged: Mutex::default(),
        });
        let mut engine = Engine {
            shared: shared.clone(),
            threads: Vec::new(),
        };
        engine.spawn_threads(hs_rx)?;
        Ok(engine)
    }

    /// The data threads of every worker, and the handshake thread.
    fn spawn_threads(&mut self, hs_rx: Receiver<(Endpoint, Vec<u8>)>) -> Result<(), EngineError> {
        let shared = self.shared.clone();
        for i in 0..shared.workers.len() {
            let s = shared.clone();
            self.spawn("send", move || send::run(&s, &s.workers[i]))?;
            let s = shared.clone();
            self.spawn("receive", move || receive::run(&s, &s.workers[i]))?;
        }
        let s = shared;
        self.spawn("handshakes", move || handshakes::run(&s, hs_rx))
    }

    /// Moves the engine to new transports (a new listen port: `wg set listen-port`), one per
    /// worker: the threads stop, each worker's transport is replaced, and they start again on
    /// the same devices. The protocol device is untouched, so sessions go on (the peers learn
    /// the new address from the next authenticated packet, as when roaming). Datagrams that
    /// reach the old sockets meanwhile are lost. Needs sole ownership of the engine and
    /// devices that can be waited on with others (`readiness_fd`): they are not interrupted
    /// (an interrupt is for good), the threads see the stop through their doorbells.
    pub fn replace_transports(
        &mut self,
        transports: Vec<Box<dyn Transport>>,
    ) -> Result<(), EngineError> {
        if transports.len() != self.shared.workers.len() {
            return Err(setup_error(format!(
                "{} transports for {} workers",
                transports.len(),
                self.shared.workers.len()
            )));
        }
        if self
            .shared
            .workers
            .iter()
            .any(|w| w.device.readiness_fd().is_none())
            || transports.iter().any(|t| t.readiness_fd().is_none())
        {
            return Err(setup_error(
                "these transports cannot be replaced at run time",
            ));
        }
        self.halt(false);
        let Some(shared) = Arc::get_mut(&mut self.shared) else {
            // Held elsewhere (nothing does): the threads are gone, so the engine must go down
            // visibly rather than run on without a data path.
            self.shared.failed.store(true, Ordering::Relaxed);
            self.shared.attention.notify_one();
            return Err(setup_error("the engine is still in use elsewhere"));
        };
        let (hs_tx, hs_rx) = sync_channel(HANDSHAKE_QUEUE);
        shared.handshakes = hs_tx;
        for (w, t) in shared.workers.iter_mut().zip(transports) {
            w.fds = w.device.readiness_fd().zip(t.readiness_fd());
            w.transport = t;
            w.quiet.store(true, Ordering::Release);
            w.send_bell.clear();
            w.recv_bell.clear();
        }
        shared.stopping.store(false, Ordering::Relaxed);
        self.spawn_threads(hs_rx)
    }

    /// Starts a thread; if it ever panics, `failed` says so (and the timers' runner is woken
    /// to see it), rather than the engine running on with a dead half.
    fn spawn(&mut self, name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), EngineError> {
        let shared = self.shared.clone();
        let thread_name = name.to_string();
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
                    tracing::error!("thread {thread_name} failed: taking the interface down");
                    shared.failed.store(true, Ordering::Relaxed);
                    shared.attention.notify_one();
                }
            })
            .map_err(|e| setup_error(format!("starting thread {name}: {e}")))?;
        self.threads.push(handle);
        Ok(())
    }

    pub fn device(&self) -> &Arc<Device> {
        &self.shared.device
    }

    /// The device's MTU changed (`ip link set IFACE mtu N`): packets are padded up to it and
    /// the send path's slots hold packets of its size from now on.
    pub fn set_mtu(&self, mtu: usize) {
        self.shared.device.set_mtu(mtu);
        for w in &self.shared.workers {
            let fresh = TxState::new(mtu, w.device.offload().tcp);
            match w.tx.lock() {
                Ok(mut tx) => *tx = fresh,
                Err(poisoned) => *poisoned.into_inner() = fresh,
            }
        }
    }

    /// Marks every transport's packets with `mark` from now on (0: none): `wg set fwmark`.
    pub fn set_mark(&self, mark: u32) -> std::io::Result<()> {
        for w in &self.shared.workers {
            w.transport.set_mark(mark)?;
        }
        Ok(())
    }

    /// How many workers (each with one transport).
    pub fn worker_count(&self) -> usize {
        self.shared.workers.len()
    }

    /// Each worker's mode (quiet: the receive thread watches the device) and how often its
    /// device went to the send thread.
    #[cfg(test)]
    pub(super) fn worker_modes(&self) -> Vec<(bool, usize)> {
        self.shared
            .workers
            .iter()
            .map(|w| {
                (
                    w.quiet.load(Ordering::Acquire),
                    w.handoffs.load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// Whether a thread died (the engine should be stopped).
    pub fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// Whether the packet device is gone (its interface deleted): the engine should stop.
    pub fn device_gone(&self) -> bool {
        self.shared.gone.load(Ordering::Relaxed)
    }

    /// Whether the data threads should end: stopping, a thread died, or the device is gone.
    pub(super) fn ending(s: &Shared) -> bool {
        s.stopping.load(Ordering::Relaxed)
            || s.failed.load(Ordering::Relaxed)
            || s.gone.load(Ordering::Relaxed)
    }

    /// Runs every due timer and sends what they ask for; returns how long until the next one
    /// is due, in real time (None: nothing is scheduled; `attention` says when that changes).
    pub fn run_timers(&self) -> Option<Duration> {
        let mut out = Vec::new();
        let now = clock::now();
        self.shared.device.update_timers(now, &mut out);
        self.shared.send_all(&mut out);
        let due = self.shared.device.next_wake(now.instant)?;
        Some(clock::real(due.saturating_duration_since(now.instant)))
    }

    /// Resolves when `run_timers` should run before the time it last returned: the data path
    /// armed a sooner deadline, an endpoint moved, or a thread failed.
    pub async fn attention(&self) {
        self.shared.attention.notified().await
    }

    /// Stops every thread and waits for them: wakes the waiting ones, ends the handshake
    /// thread's queue. Idempotent.
    pub fn stop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        self.halt(true);
    }

    /// Stops every thread and waits for them: `stopping`, the transports' interrupts, both
    /// doorbells of each worker, the handshake thread's end message. With `devices`, the
    /// devices' interrupts too (for good: they cannot be waited on again).
    fn halt(&mut self, devices: bool) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        for w in &self.shared.workers {
            if devices {
                w.device.interrupt();
            }
            w.transport.interrupt();
            w.send_bell.ring();
            w.recv_bell.ring();
        }
        // The empty message ends the handshake thread (which drains the queue unread until
        // then, so this send cannot block for long).
        let nobody = Endpoint::from(SocketAddr::from(([0, 0, 0, 0], 0)));
        let _ = self.shared.handshakes.send((nobody, Vec::new()));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}
