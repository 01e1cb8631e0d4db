//! Helpers shared by the end-to-end tests.

pub mod attack;
pub mod badnet;
pub mod core_peer;
pub mod daemon;
pub mod etc;
pub mod icmp;
pub mod transfer;
pub mod vpn;
