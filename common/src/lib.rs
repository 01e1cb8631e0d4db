//! suidao-common: everything `suidao-client` and `suidao-server` share around the protocol,
//! which is a crate of its own (`suidao-proto`: no I/O, no randomness of its own).
//!
//! - [`config`]: the TOML configuration and its validation.
//! - [`engine`]: threads and control plane around the protocol core.
//! - [`apply`]: the one path by which a running interface's peers change (reload, `wg set`).
//! - [`packet_device`], [`transport`]: the data path's two edges, as traits; [`tun`] and
//!   [`udp`] implement them, [`testing`] has in-memory ones for tests.
//! - [`switch`]: the layer-2 switch (`mode = "l2"`): MAC learning, flooding, per-peer limits.
//! - [`netlink`]: addresses, routes, rules.
//! - [`uapi`], [`status`]: the WireGuard userspace API socket (`wg show`, `wg set`, `status`).
//! - [`cli`]: the commands both binaries share.
//! - [`clock`]: the real clock, read here and passed into `suidao_proto`.

pub mod apply;
pub mod cli;
pub mod clock;
pub mod config;
pub mod config_writer;
pub mod dns;
pub mod engine;
pub mod gro;
pub mod hooks;
pub mod netlink;
pub mod notify;
pub mod packet_device;
pub mod poll;
pub mod provision;
pub mod status;
pub mod switch;
pub mod testing;
pub mod transport;
pub mod tun;
pub mod uapi;
pub mod udp;
pub mod wgquick;
