//! suidao-common: everything `suidao-client` and `suidao-server` share.
//!
//! - [`proto`]: the WireGuard protocol, sans-I/O.
//! - [`keys`]: private, public and pre-shared keys.
//! - [`allowed_ips`]: cryptokey routing's prefix table.
//! - [`clock`]: the real clock, read here and passed into `proto`.

pub mod allowed_ips;
pub mod clock;
pub mod keys;
pub mod proto;
