//! The VPN fixtures live in the lab (`suidao_lab::vpn`), shared with its bench.
pub use suidao_lab::vpn::*;
