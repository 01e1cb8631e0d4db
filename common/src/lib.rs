//! suidao-common: everything `suidao-client` and `suidao-server` share.
//!
//! - [`proto`]: the WireGuard protocol, sans-I/O.
//! - [`keys`]: private, public and pre-shared keys.
//! - [`allowed_ips`]: cryptokey routing's prefix table.

pub mod allowed_ips;
pub mod keys;
pub mod proto;
