//! Every byte string through the message parser and every accessor of what it returns.
#![no_main]

use libfuzzer_sys::fuzz_target;
use suidao_proto::ip;
use suidao_proto::messages::Message;

fuzz_target!(|data: &[u8]| {
    match Message::parse(data) {
        Ok(Message::Initiation(m)) => {
            assert_eq!(data.len(), 148);
            let _ = (m.sender(), m.ephemeral(), m.encrypted_static(), m.encrypted_timestamp());
        }
        Ok(Message::Response(m)) => {
            assert_eq!(data.len(), 92);
            let _ = (m.sender(), m.receiver(), m.ephemeral(), m.encrypted_nothing());
        }
        Ok(Message::CookieReply(m)) => {
            assert_eq!(data.len(), 64);
            let _ = (m.receiver(), m.nonce(), m.encrypted_cookie());
        }
        Ok(Message::Transport(m)) => {
            assert!(data.len() >= 32);
            let _ = (m.receiver(), m.counter(), m.sealed.len());
        }
        Err(_) => {}
    }
    // The inner-packet parser sees decrypted bytes, which an authenticated peer controls.
    if let Some(info) = ip::parse(data) {
        assert!(info.len <= data.len());
    }
    let _ = ip::destination(data);
});
