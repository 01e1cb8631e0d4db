//! The main loop of a running interface: the protocol's timers, the endpoint memory, signals
//! (SIGINT/SIGTERM: go down; SIGHUP: reload) and the control plane's requests (`reload` and
//! `wg set` through the API socket, new addresses of re-resolved host names). It sleeps until
//! the next timer is due or something arrives; the data path wakes it when the protocol asks
//! (`Engine::attention`), so an idle interface does not wake at all.

use super::dataplane::Engine;
use super::endpoints::Moved;
use super::reload::{apply_peers, reload, Live};
use super::setup;
use super::up::Managed;
use super::{read_lock, setup_error, EngineError};
use crate::apply;
use crate::uapi::{self, ApiState};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{debug, info, warn};

/// The signals `up` answers, caught from its first step on: one that comes during setup is
/// kept for the loop (the interface comes up, then goes down cleanly), never the default
/// action that would skip the teardown.
pub(super) struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    pub(super) fn catch() -> std::io::Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// What comes to the main loop besides signals and due timers.
pub(super) struct Inbox {
    /// `reload` and `wg set` through the API socket.
    pub(super) requests: UnboundedReceiver<uapi::Control>,
    /// Endpoints whose host name resolves to a new address.
    pub(super) moved: UnboundedReceiver<Moved>,
    /// The interface's MTU, as the kernel announces it.
    pub(super) mtus: UnboundedReceiver<u32>,
}

/// Until SIGINT or SIGTERM (Ok), or a failed thread (Err).
pub(super) async fn run(
    engine: &mut Engine,
    live: &mut Live<'_>,
    signals: &mut Signals,
    inbox: &mut Inbox,
) -> Result<(), EngineError> {
    let ifname = live.config.interface.name.clone();
    loop {
        if engine.failed() {
            return Err(setup_error("an internal thread failed (see the log above)"));
        }
        if engine.device_gone() {
            return Err(setup_error(format!(
                "the interface {ifname} was deleted from outside"
            )));
        }
        // Deadlines are in protocol time; the nap is real time (see `clock`).
        let nap = engine.run_timers();
        if let Some(m) = &live.memory {
            m.save();
        }
        let sleep = async {
            match nap {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            _ = engine.attention() => {}
            _ = signals.int.recv() => return Ok(()),
            _ = signals.term.recv() => return Ok(()),
            _ = signals.hup.recv() => {
                let _ = reload(live).await;
            }
            Some((key, addr, host)) = inbox.moved.recv() => {
                if let Some(id) = live.device.peer_id(&key) {
                    let was = live.device.peer_info(id).and_then(|i| i.endpoint);
                    let name = read_lock(&live.names).get(&key).cloned().unwrap_or_else(|| {
                        format!("{}…", &key.to_base64()[..8])
                    });
                    info!(
                        "{name}: {host} resolves to {addr} now (was {}): trying there",
                        was.map_or("none".into(), |e| e.to_string())
                    );
                    let _ = live.device.set_endpoint(id, Some(addr), true);
                }
            }
            Some(mtu) = inbox.mtus.recv() => {
                let mtu = live.config.interface.tunnel_mtu(mtu) as usize;
                if mtu != live.device.mtu() {
                    info!("{ifname}: MTU {} -> {mtu}", live.device.mtu());
                    engine.set_mtu(mtu);
                }
            }
            Some(request) = inbox.requests.recv() => match request {
                uapi::Control::Reload(meant, reply) => {
                    let started = live.config.path.clone();
                    let same = |p: &Path| {
                        std::fs::canonicalize(p).ok() == std::fs::canonicalize(&started).ok()
                    };
                    let r = match meant {
                        Some(m) if live.managed == Managed::ByFile && !same(&m) => Err(format!(
                            "{ifname} was started with {}, which is what reload re-reads; to use {} instead, restart with it",
                            started.display(),
                            m.display()
                        )),
                        _ => reload(live).await,
                    };
                    let _ = reply.send(r);
                }
                uapi::Control::Set(request, reply) => {
                    let r = set(engine, live, &request).await;
                    if let Err(e) = &r {
                        warn!("set refused: {e}");
                    }
                    let _ = reply.send(r);
                }
            }
        }
    }
}

/// `wg set`: the peers as asked and, if asked, a new UDP port, a new mark on the UDP sockets
/// and (where the API configures the interface) a new private key. Everything that can fail
/// comes first: the new sockets are bound (a port in use refuses the whole request before
/// anything changes), then the peers change (refused whole or done whole); then the key, the
/// mark and the move to the new sockets, which do not fail. Peers learn the new port from the
/// next packet they get from us, as when we roam.
async fn set(
    engine: &mut Engine,
    live: &mut Live<'_>,
    request: &uapi::SetRequest,
) -> Result<String, String> {
    let current = live.listen_port.load(Ordering::Relaxed);
    // Only suidao-wg takes a mark; a config file's interface keeps its own (the API refused
    // any other, and a 0 changes nothing there).
    let asked_mark = request.fwmark().filter(|_| live.managed == Managed::ByApi);
    let mark = asked_mark.unwrap_or_else(|| live.fwmark.load(Ordering::Relaxed));
    let moving = match request.listen_port().filter(|p| *p != current) {
        Some(p) => Some(
            setup::bind_sockets(
                (p != 0).then_some(p),
                engine.worker_count(),
                (mark != 0).then_some(mark),
            )
            .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    let names = read_lock(&live.names).clone();
    let mut desired = request.desired(apply::current(&live.device, &names));
    // A device is never its own peer: one with the new key's public key goes.
    let new_key = request.private_key();
    if let Some(k) = new_key {
        let public = k.public_key();
        desired.retain(|p| p.public_key != public);
    }
    let message = apply_peers(live, &desired).await?;
    if let Some(k) = new_key {
        let had = live.device.has_private_key();
        live.device.set_private_key(k.clone());
        info!(
            "{}: private key {} (public key {})",
            live.config.interface.name,
            if had { "changed" } else { "set" },
            live.device.public_key()
        );
    }
    if asked_mark.is_some() && mark != live.fwmark.load(Ordering::Relaxed) {
        // The live sockets are marked now; new ones (a new port) were bound with the mark.
        if moving.is_none() {
            engine
                .set_mark(mark)
                .map_err(|e| format!("marking the UDP sockets with {mark}: {e}"))?;
        }
        live.config.interface.fwmark = (mark != 0).then_some(mark);
        live.fwmark.store(mark, Ordering::Relaxed);
        info!("{}: UDP sockets marked {mark}", live.config.interface.name);
    }
    if let Some((sockets, port)) = moving {
        engine
            .replace_transports(
                sockets
                    .into_iter()
                    .map(|u| Box::new(u) as Box<dyn crate::transport::Transport>)
                    .collect(),
            )
            .map_err(|e| e.to_string())?;
        live.listen_port.store(port, Ordering::Relaxed);
        info!(
            "{}: UDP port {current} -> {port} (wg set listen-port)",
            live.config.interface.name
        );
    }
    Ok(message)
}

/// The API socket's thread: one thread per client (`wg` connects, asks once and leaves).
pub(super) fn serve_api(listener: UnixListener, api: Arc<ApiState>) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let api = api.clone();
                let _ = std::thread::Builder::new()
                    .name("uapi-conn".into())
                    .spawn(move || {
                        if let Err(e) = uapi::serve_connection(&api, stream) {
                            debug!("api connection: {e}");
                        }
                    });
            }
            Err(e) => debug!("api accept: {e}"),
        }
    }
}
