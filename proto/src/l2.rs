//! Layer 2 (`mode = "l2"`): Ethernet frames in transport messages, and how a receiver tells
//! them from IP packets.
//!
//! WireGuard's transport plaintext is an IP packet (its first nibble is the version, 4 or 6)
//! followed by zero padding to a multiple of 16; the receiver finds the packet's end in its IP
//! header. An Ethernet frame has no length of its own, and its first byte (the destination
//! MAC's) could be anything, so a frame goes behind one byte of its own:
//!
//! ```text
//!  plaintext = 0x1P ‖ Ethernet frame (destination MAC first, no FCS) ‖ P zero bytes
//!              │└ P: how many padding bytes follow the frame (0-15)
//!              └─ 1: "a layer-2 frame, format 1" (never 4 or 6: no IP packet starts so)
//! ```
//!
//! The byte is inside the AEAD, so nobody on the way can turn an IP packet into a frame or
//! back. A receiver of the other mode sees the first nibble and reports the mismatch instead of
//! delivering garbage: an l2 end getting 4 or 6 (a layer-3 suidao, or a stock WireGuard peer),
//! an l3 suidao getting 1. (A stock WireGuard receiver drops such a packet as not IP; only
//! suidao ends can say why.) Keepalives are empty either way.

use crate::session::padded_len;
use std::ops::Range;

/// The bytes in front of a frame.
pub const L2_HEADER_LEN: usize = 1;
/// Destination MAC, source MAC, EtherType.
pub const ETHERNET_HEADER_LEN: usize = 14;
/// The first nibble of a layer-2 plaintext.
const L2_NIBBLE: u8 = 0x1;

/// What an interface carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Layer {
    /// IP packets (a TUN device): WireGuard itself.
    #[default]
    L3,
    /// Ethernet frames (a TAP device): suidao peers only.
    L2,
}

impl Layer {
    pub fn name(self) -> &'static str {
        match self {
            Layer::L3 => "l3",
            Layer::L2 => "l2",
        }
    }
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a non-empty plaintext holds, by its first nibble: `None` for neither.
pub fn layer_of(plain: &[u8]) -> Option<Layer> {
    match plain.first().map(|b| b >> 4) {
        Some(4) | Some(6) => Some(Layer::L3),
        Some(L2_NIBBLE) => Some(Layer::L2),
        _ => None,
    }
}

/// The header byte for a frame of `frame_len` bytes on a tunnel of `mtu`, and the plaintext's
/// length before padding (`seal_in_place` pads it to exactly the count the byte says).
pub fn header(frame_len: usize, mtu: usize) -> (u8, usize) {
    let len = L2_HEADER_LEN + frame_len;
    let pad = padded_len(len, mtu) - len;
    // padded_len rounds up to a multiple of 16 at most: pad < 16.
    ((L2_NIBBLE << 4) | (pad as u8 & 0x0f), len)
}

/// The frame inside a layer-2 plaintext: `None` if the plaintext is not one (wrong first
/// nibble, padding longer than what follows, shorter than an Ethernet header).
pub fn frame(plain: &[u8]) -> Option<Range<usize>> {
    let first = *plain.first()?;
    if first >> 4 != L2_NIBBLE {
        return None;
    }
    let pad = usize::from(first & 0x0f);
    let end = plain.len().checked_sub(pad)?;
    if end < L2_HEADER_LEN + ETHERNET_HEADER_LEN {
        return None;
    }
    Some(L2_HEADER_LEN..end)
}

/// A MAC address.
pub type Mac = [u8; 6];

/// A frame's destination MAC.
pub fn destination(frame: &[u8]) -> Option<Mac> {
    frame.get(0..6)?.try_into().ok()
}

/// A frame's source MAC.
pub fn source(frame: &[u8]) -> Option<Mac> {
    frame.get(6..12)?.try_into().ok()
}

/// Broadcast or multicast (the group bit, the first byte's lowest).
pub fn is_group(mac: &Mac) -> bool {
    mac[0] & 1 == 1
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_to_string(mac: &Mac) -> String {
    let hex: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    hex.join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with `-`), any case.
pub fn parse_mac(text: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = text.split([':', '-']);
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_says_the_padding_and_the_frame_comes_back() {
        for frame_len in [14, 15, 60, 1405 + 14, 1500] {
            let (byte, len) = header(frame_len, 1420);
            let padded = padded_len(len, 1420);
            let mut plain = vec![0u8; padded];
            plain[0] = byte;
            assert_eq!(layer_of(&plain), Some(Layer::L2));
            assert_eq!(frame(&plain), Some(1..1 + frame_len), "{frame_len}");
        }
    }

    #[test]
    fn ip_packets_and_short_or_overpadded_plaintexts_are_not_frames() {
        assert_eq!(layer_of(&[0x45, 0]), Some(Layer::L3));
        assert_eq!(layer_of(&[0x60, 0]), Some(Layer::L3));
        assert_eq!(layer_of(&[0x00]), None);
        assert_eq!(frame(&[0x45; 40]), None);
        // 14 bytes of header needed.
        assert_eq!(frame(&[0x10; 14]), None);
        // Padding of 15 that is not there.
        assert_eq!(frame(&[0x1f; 20]), None);
        assert_eq!(frame(&[]), None);
    }

    #[test]
    fn macs_parse_and_print() {
        let m = parse_mac("02:AA:bb:cc:dd:0e").unwrap_or_default();
        assert_eq!(mac_to_string(&m), "02:aa:bb:cc:dd:0e");
        assert_eq!(parse_mac("02-aa-bb-cc-dd-0e"), Some(m));
        assert_eq!(parse_mac("02:aa:bb:cc:dd"), None);
        assert_eq!(parse_mac("02:aa:bb:cc:dd:0e:ff"), None);
        assert_eq!(parse_mac("02:aa:bb:cc:dd:0g"), None);
        assert!(is_group(&[0xff; 6]));
        assert!(is_group(&[0x33, 0x33, 0, 0, 0, 1]));
        assert!(!is_group(&m));
    }
}
