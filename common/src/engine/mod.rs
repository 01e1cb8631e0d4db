//! The engine: moves packets between the packet device (the TUN interface) and the transport
//! (the UDP sockets) through the protocol core, and runs the control plane around it.
//!
//! ```text
//!  per worker (`workers`; each has a device queue and a transport socket on the listen port):
//!  thread send       device read → Device::encapsulate (in place) → transport send (GSO runs)
//!  thread receive    transport receive → transport data: Device::receive (in place) → device
//!                                   write (coalesced), or relayed to another peer (hairpin)
//!                               → handshake messages: bounded queue → handshake thread
//!  shared:
//!  thread handshake  Device::receive of initiations, responses, cookie replies: the costly
//!                    Diffie-Hellman work never stalls the data path. A backed-up queue
//!                    puts the device "under load" (cookies and rate limits).
//!  thread uapi       the WireGuard userspace API socket (`wg show`, `wg set`, `status`)
//!  main (tokio)      setup, timers, endpoint memory, signals, reload, teardown
//! ```
//!
//! While traffic is light (a ping, a keystroke, a request and its answer) a worker is *quiet*:
//! its receive thread also watches the device and sends what it finds there, and the send
//! thread sleeps, so one thread on each side carries a round trip and no second thread is
//! woken on the way. A burst read from the device hands it to the send thread, which hands it
//! back after 50 ms without packets (`shared::Worker`).
//!
//! Every thread sleeps until it has work: the data threads until a packet comes, the main one
//! until the next timer is due (at most 10 s ahead while a session lives) or the data path
//! raises the protocol's attention (a deadline armed sooner, an endpoint that moved). An idle
//! tunnel wakes a few times a minute at most.
//!
//! | file | holds |
//! |---|---|
//! | dataplane | `Engine`: starts, moves and stops the threads; the timers; run-time changes (MTU, mark, sockets) |
//! | shared | what the threads share: each `Worker`'s queues and modes, `Shared`'s state and drop logging |
//! | send | the send path: read a batch, seal in place, send runs |
//! | receive | the receive path: receive a batch, open in place, coalesce, write |
//! | relay | hairpin: packets from one peer for another, sealed again and sent on in GSO runs |
//! | handshakes | the handshake queue and its thread |
//! | setup | addresses, routes, full tunnel, name servers; the data path's devices and sockets |
//! | layer2 | `mode = "l2"`: the switch made from the config, the peers' limits |
//! | reload | SIGHUP, `reload` and `wg set`: the peers made what is asked, routes with them |
//! | endpoints | the endpoint memory across restarts; re-resolving host names |
//! | control | the main loop: timers, signals, control requests; the API socket |
//! | teardown | what `up` added, undone in reverse order |
//! | up | `up`: setup → run → undo |
//! | describe | `check`: what `up` would do |
//!
//! The device and the transport are traits (`PacketDevice`, `Transport`): the TUN and the UDP
//! sockets in `up`, in-memory ones (`testing`) in the engine's own tests.

mod control;
mod dataplane;
mod describe;
mod endpoints;
mod handshakes;
mod layer2;
mod receive;
mod relay;
mod reload;
mod send;
mod setup;
mod shared;
mod teardown;
mod up;

#[cfg(test)]
mod tests;

pub use dataplane::{Engine, Options};
pub use describe::describe;
pub use endpoints::{state_path, ENDPOINTS_SUFFIX, STATE_DIR};
pub use setup::{full_tunnel, planned_routes};
pub use up::{up, up_for_api};

use crate::netlink::NetlinkError;
use std::sync::RwLock;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn setup_error(msg: impl Into<String>) -> EngineError {
    EngineError::Setup(msg.into())
}

/// Says something at debug level from a cold function: the data path calls this where a
/// `debug!` would put the event's code in the middle of its own, on the pages a lone packet
/// runs through (see `build/hot-path.ld`); a call to a cold function is laid out of the way.
#[cold]
#[inline(never)]
fn debug_cold(what: std::fmt::Arguments<'_>) {
    tracing::debug!("{what}");
}

fn read_lock<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write_lock<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
