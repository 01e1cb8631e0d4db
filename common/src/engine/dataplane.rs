//! `Engine`: the running data plane. Its workers each own a packet device queue and a
//! transport socket and run a send and a receive thread; a handshake thread does the costly
//! handshake work; `run_timers` runs the protocol's timers and says when to run them next.
//!
//! `up` wraps one around a TUN and UDP sockets; the engine's tests wrap two or three around
//! in-memory ones and let them talk.

use super::handshakes::{self, HANDSHAKE_QUEUE};
use super::send::TxState;
use super::shared::{Shared, Worker};
use super::{receive, send, setup_error, EngineError};
use crate::clock;
use crate::packet_device::PacketDevice;
use crate::poll::Doorbell;
use crate::transport::Transport;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;
use suidao_proto::keys::PublicKey;
use suidao_proto::{Device, Endpoint};

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
    /// Layer 2: the switch (the device is set to carry frames). `None`: layer 3.
    pub switch: Option<Arc<crate::switch::Switch>>,
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
        if options.switch.is_some() {
            device.set_layer(suidao_proto::l2::Layer::L2);
        }
        let (hs_tx, hs_rx) = sync_channel(HANDSHAKE_QUEUE);
        let workers = queues
            .into_iter()
            .map(|(dev, transport)| {
                let fds = dev.readiness_fd().zip(transport.readiness_fd());
                Ok(Worker {
                    tx: Mutex::new(TxState::new(
                        options.mtu,
                        dev.offload().tcp,
                        options.switch.is_some(),
                    )),
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
            switch: options.switch,
            wrong_layer_logged: Mutex::default(),
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
            let fresh = TxState::new(mtu, w.device.offload().tcp, self.shared.switch.is_some());
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
