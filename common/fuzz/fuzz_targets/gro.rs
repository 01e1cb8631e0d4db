//! The coalescer on whatever a peer may send inside the tunnel: packets cut from the input
//! (a length byte, then that many bytes), pushed as the receive path pushes them, flushed.
//! Nothing may panic, and every byte pushed is written exactly once (a super-packet carries
//! its members' headers once).
#![no_main]

use libfuzzer_sys::fuzz_target;
use suidao_common::gro::{Coalescer, HEADROOM};
use suidao_common::tun::VirtioNetHdr;

const SLOT: usize = 300;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let mut buf = vec![0u8; 64 * SLOT];
    let mut c = Coalescer::new(flags & 1 != 0, flags & 2 != 0);
    let mut pushed = 0usize;
    let mut i = 0;
    while let Some((&len, tail)) = rest.split_first() {
        let len = (len as usize).min(tail.len()).min(SLOT - 16);
        if i == 64 {
            break;
        }
        let start = i * SLOT + 16;
        buf[start..start + len].copy_from_slice(&tail[..len]);
        c.push(&buf, start, len);
        pushed += len;
        rest = &tail[len..];
        i += 1;
    }
    let vnet = flags & 1 != 0;
    let mut written = 0usize;
    let mut headers_saved = 0usize;
    let _ = c.flush(&mut buf, |iov| {
        let n: usize = iov.iter().map(|s| s.len()).sum();
        if vnet {
            let first = &iov[0];
            assert!(first.len() >= HEADROOM);
            if let Ok(h) = VirtioNetHdr::decode(&first[..HEADROOM]) {
                if h.gso_type != 0 {
                    assert!(h.gso_size > 0);
                    let body = n - HEADROOM - h.hdr_len as usize;
                    let segments = body.div_ceil(h.gso_size as usize);
                    headers_saved += (segments - 1) * h.hdr_len as usize;
                }
            }
            written += n - HEADROOM;
        } else {
            written += n;
        }
        Ok(n)
    });
    assert_eq!(written + headers_saved, pushed);
});
