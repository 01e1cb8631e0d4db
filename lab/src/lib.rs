//! suidao-lab: the Linux virtual-network classics — network namespaces, veth pairs, bridges —
//! built with netlink (never by shelling out to `ip`), and suidao run across them.
//!
//! The end-to-end tests stand on this library. Everything it creates is owned by a guard that
//! removes it on drop, so a failing or panicking test leaves nothing behind; every name it
//! creates starts with [`PREFIX`], so `suidao-lab down` can find leftovers of a killed run.

pub mod bench;
pub mod demo;
pub mod demo_l2;
pub mod down;
pub mod interrupt;
pub mod l2;
pub mod measure;
pub mod netlink;
pub mod netns;
pub mod process;
pub mod require;
pub mod suidao;
pub mod topology;
pub mod vpn;
pub mod wggo;

pub use netns::Netns;
pub use process::Process;
pub use require::{require, unmet};

use std::sync::atomic::{AtomicU32, Ordering};

/// Every namespace the lab creates is named `PREFIX...`.
pub const PREFIX: &str = "sdlab-";

/// A name unique to this process and call: `{stem}{pid}x{n}` (short enough for interface
/// names when `stem` is short).
pub fn unique(stem: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{stem}{}x{n}", std::process::id())
}
