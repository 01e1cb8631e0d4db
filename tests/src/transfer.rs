//! Data integrity across the tunnel: a TCP stream of pseudo-random bytes whose SHA-256 is
//! computed on both ends; and iperf3 runs.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};
use suidao_lab::Netns;

/// A cheap deterministic byte stream (xorshift64*), so the sender need not hold the data.
fn fill(state: &mut u64, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        let v = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// The outcome of one transfer.
#[derive(Debug)]
pub struct Transfer {
    pub sent: [u8; 32],
    pub received: [u8; 32],
    pub bytes: u64,
    pub seconds: f64,
}

impl Transfer {
    pub fn mbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.seconds / 1e6
    }
}

/// Sends `bytes` from `from_ns` to a listener at `to` inside `to_ns`, over TCP.
pub fn tcp(from_ns: &Netns, to_ns: &Netns, to: SocketAddr, bytes: u64) -> Result<Transfer> {
    tcp_patient(from_ns, to_ns, to, bytes, Duration::from_secs(30))
}

/// `tcp`, waiting up to `stall` for progress (over a lossy link TCP backs off for long).
pub fn tcp_patient(
    from_ns: &Netns,
    to_ns: &Netns,
    to: SocketAddr,
    bytes: u64,
    stall: Duration,
) -> Result<Transfer> {
    let listener = to_ns
        .run(|| TcpListener::bind(to))?
        .with_context(|| format!("listening on {to}"))?;
    let receiver = std::thread::spawn(move || -> Result<([u8; 32], u64)> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(stall))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            total += n as u64;
        }
        Ok((h.finalize().into(), total))
    });
    let mut stream = from_ns
        .run(|| TcpStream::connect_timeout(&to, Duration::from_secs(10)))?
        .with_context(|| format!("connecting to {to}"))?;
    stream.set_write_timeout(Some(stall))?;
    let start = Instant::now();
    let mut h = Sha256::new();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut buf = vec![0u8; 1 << 16];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        fill(&mut state, &mut buf[..n]);
        stream.write_all(&buf[..n])?;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    let (received, total) = match receiver.join() {
        Ok(r) => r?,
        Err(_) => bail!("receiver thread panicked"),
    };
    let seconds = start.elapsed().as_secs_f64();
    if total != bytes {
        bail!("sent {bytes} bytes, received {total}");
    }
    Ok(Transfer {
        sent: h.finalize().into(),
        received,
        bytes,
        seconds,
    })
}

pub use suidao_lab::measure::iperf3;
