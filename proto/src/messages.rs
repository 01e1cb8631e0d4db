//! The four WireGuard messages as zero-copy views over a datagram.
//!
//! `Message::parse` does the only checks that need doing before any cryptography: the type byte,
//! the three reserved bytes (must be zero) and the exact length. A view holds a reference to a
//! fixed-size array, so none of its accessors can panic. Multi-byte integers are little-endian
//! on the wire.
//!
//! ```text
//! initiation (148): type=1 | 0 0 0 | sender u32 | ephemeral 32 | static 32+16 | timestamp 12+16 | mac1 16 | mac2 16
//! response    (92): type=2 | 0 0 0 | sender u32 | receiver u32 | ephemeral 32 | empty 0+16       | mac1 16 | mac2 16
//! cookie reply(64): type=3 | 0 0 0 | receiver u32 | nonce 24 | cookie 16+16
//! transport  (32+): type=4 | 0 0 0 | receiver u32 | counter u64 | payload padded to 16, sealed +16
//! ```

use super::constants::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("empty datagram")]
    Empty,
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("reserved bytes are not zero")]
    Reserved,
    #[error("wrong length {len} for message type {kind}")]
    Length { kind: u8, len: usize },
}

/// A parsed datagram.
#[derive(Debug, Clone, Copy)]
pub enum Message<'a> {
    Initiation(Initiation<'a>),
    Response(Response<'a>),
    CookieReply(CookieReply<'a>),
    Transport(Transport<'a>),
}

impl<'a> Message<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Message<'a>, MessageError> {
        let kind = *bytes.first().ok_or(MessageError::Empty)?;
        let wrong_len = MessageError::Length {
            kind,
            len: bytes.len(),
        };
        if !(MESSAGE_INITIATION..=MESSAGE_TRANSPORT).contains(&kind) {
            return Err(MessageError::UnknownType(kind));
        }
        if bytes.len() < 4 {
            return Err(wrong_len);
        }
        if bytes[1..4] != [0, 0, 0] {
            return Err(MessageError::Reserved);
        }
        Ok(match kind {
            MESSAGE_INITIATION => {
                Message::Initiation(Initiation(bytes.try_into().map_err(|_| wrong_len)?))
            }
            MESSAGE_RESPONSE => {
                Message::Response(Response(bytes.try_into().map_err(|_| wrong_len)?))
            }
            MESSAGE_COOKIE_REPLY => {
                Message::CookieReply(CookieReply(bytes.try_into().map_err(|_| wrong_len)?))
            }
            _ => {
                if bytes.len() < TRANSPORT_MIN_LEN {
                    return Err(wrong_len);
                }
                let (header, sealed) = bytes.split_at(TRANSPORT_HEADER_LEN);
                Message::Transport(Transport {
                    header: header.try_into().map_err(|_| wrong_len)?,
                    sealed,
                })
            }
        })
    }
}

fn u32_at<const N: usize>(bytes: &[u8; N], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn array_at<const N: usize, const L: usize>(bytes: &[u8; N], at: usize) -> [u8; L] {
    let mut out = [0u8; L];
    out.copy_from_slice(&bytes[at..at + L]);
    out
}

/// Byte offsets inside each message, shared by the views and by the code that builds messages.
pub mod offsets {
    pub const INIT_SENDER: usize = 4;
    pub const INIT_EPHEMERAL: usize = 8;
    pub const INIT_STATIC: usize = 40;
    pub const INIT_TIMESTAMP: usize = 88;
    pub const INIT_MAC1: usize = 116;
    pub const INIT_MAC2: usize = 132;

    pub const RESP_SENDER: usize = 4;
    pub const RESP_RECEIVER: usize = 8;
    pub const RESP_EPHEMERAL: usize = 12;
    pub const RESP_EMPTY: usize = 44;
    pub const RESP_MAC1: usize = 60;
    pub const RESP_MAC2: usize = 76;

    pub const COOKIE_RECEIVER: usize = 4;
    pub const COOKIE_NONCE: usize = 8;
    pub const COOKIE_SEALED: usize = 32;

    pub const TRANSPORT_RECEIVER: usize = 4;
    pub const TRANSPORT_COUNTER: usize = 8;
}
use offsets::*;

/// Handshake initiation (type 1).
#[derive(Debug, Clone, Copy)]
pub struct Initiation<'a>(pub &'a [u8; INITIATION_LEN]);

impl Initiation<'_> {
    pub fn sender(&self) -> u32 {
        u32_at(self.0, INIT_SENDER)
    }
    pub fn ephemeral(&self) -> [u8; 32] {
        array_at(self.0, INIT_EPHEMERAL)
    }
    pub fn encrypted_static(&self) -> [u8; 48] {
        array_at(self.0, INIT_STATIC)
    }
    pub fn encrypted_timestamp(&self) -> [u8; 28] {
        array_at(self.0, INIT_TIMESTAMP)
    }
    pub fn bytes(&self) -> &[u8] {
        self.0
    }
}

/// Handshake response (type 2).
#[derive(Debug, Clone, Copy)]
pub struct Response<'a>(pub &'a [u8; RESPONSE_LEN]);

impl Response<'_> {
    pub fn sender(&self) -> u32 {
        u32_at(self.0, RESP_SENDER)
    }
    pub fn receiver(&self) -> u32 {
        u32_at(self.0, RESP_RECEIVER)
    }
    pub fn ephemeral(&self) -> [u8; 32] {
        array_at(self.0, RESP_EPHEMERAL)
    }
    pub fn encrypted_nothing(&self) -> [u8; 16] {
        array_at(self.0, RESP_EMPTY)
    }
    pub fn bytes(&self) -> &[u8] {
        self.0
    }
}

/// Cookie reply (type 3).
#[derive(Debug, Clone, Copy)]
pub struct CookieReply<'a>(pub &'a [u8; COOKIE_REPLY_LEN]);

impl CookieReply<'_> {
    pub fn receiver(&self) -> u32 {
        u32_at(self.0, COOKIE_RECEIVER)
    }
    pub fn nonce(&self) -> [u8; 24] {
        array_at(self.0, COOKIE_NONCE)
    }
    pub fn encrypted_cookie(&self) -> [u8; 32] {
        array_at(self.0, COOKIE_SEALED)
    }
}

/// Transport data (type 4): the header and the sealed payload (ciphertext and tag).
#[derive(Debug, Clone, Copy)]
pub struct Transport<'a> {
    pub header: &'a [u8; TRANSPORT_HEADER_LEN],
    pub sealed: &'a [u8],
}

impl Transport<'_> {
    pub fn receiver(&self) -> u32 {
        u32_at(self.header, TRANSPORT_RECEIVER)
    }
    pub fn counter(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.header[TRANSPORT_COUNTER..TRANSPORT_COUNTER + 8]);
        u64::from_le_bytes(b)
    }
}

/// Writes a transport header (type, reserved, receiver, counter) into the first 16 bytes.
pub fn write_transport_header(out: &mut [u8; TRANSPORT_HEADER_LEN], receiver: u32, counter: u64) {
    out[0] = MESSAGE_TRANSPORT;
    out[1..4].fill(0);
    out[TRANSPORT_RECEIVER..TRANSPORT_RECEIVER + 4].copy_from_slice(&receiver.to_le_bytes());
    out[TRANSPORT_COUNTER..TRANSPORT_COUNTER + 8].copy_from_slice(&counter.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_types() {
        assert!(matches!(
            Message::parse(&[1; 148]),
            Err(MessageError::Reserved)
        ));
        let mut init = [0u8; 148];
        init[0] = 1;
        assert!(matches!(Message::parse(&init), Ok(Message::Initiation(_))));
        assert!(matches!(
            Message::parse(&init[..147]),
            Err(MessageError::Length { kind: 1, len: 147 })
        ));
        let mut resp = [0u8; 92];
        resp[0] = 2;
        assert!(matches!(Message::parse(&resp), Ok(Message::Response(_))));
        let mut cookie = [0u8; 64];
        cookie[0] = 3;
        assert!(matches!(
            Message::parse(&cookie),
            Ok(Message::CookieReply(_))
        ));
        let mut data = [0u8; 32];
        data[0] = 4;
        data[4] = 7;
        data[8] = 9;
        match Message::parse(&data) {
            Ok(Message::Transport(t)) => {
                assert_eq!(t.receiver(), 7);
                assert_eq!(t.counter(), 9);
                assert_eq!(t.sealed.len(), 16);
            }
            other => panic!("{other:?}"),
        }
        assert!(Message::parse(&data[..31]).is_err());
        assert!(matches!(Message::parse(&[]), Err(MessageError::Empty)));
        assert!(matches!(
            Message::parse(&[5, 0, 0, 0]),
            Err(MessageError::UnknownType(5))
        ));
        assert!(Message::parse(&[4, 0]).is_err());
    }

    #[test]
    fn transport_header_round_trip() {
        let mut h = [0xffu8; 16];
        write_transport_header(&mut h, 0xdead_beef, 0x0102_0304_0506_0708);
        let mut datagram = h.to_vec();
        datagram.extend_from_slice(&[0; 16]);
        let Ok(Message::Transport(t)) = Message::parse(&datagram) else {
            panic!("not transport")
        };
        assert_eq!(t.receiver(), 0xdead_beef);
        assert_eq!(t.counter(), 0x0102_0304_0506_0708);
    }
}
