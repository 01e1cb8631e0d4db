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

/// What arrived of one numbered UDP flow.
#[derive(Debug, Default, Clone, Copy)]
pub struct UdpFlow {
    pub sent: u64,
    pub received: u64,
    /// Datagrams that arrived after one with a higher number.
    pub out_of_order: u64,
}

/// Sends `count` numbered datagrams of `size` bytes on each of `flows` UDP flows at once (one
/// source port each) from `from_ns` to `to` inside `to_ns`, and reports per flow what arrived
/// and in what order. Sending is unpaced; what the receiver's buffer cannot hold is lost, which
/// is fine: order is what is measured.
/// Each flow sends in bursts of 64 datagrams with a millisecond's pause between them.
pub fn udp_flows(
    from_ns: &Netns,
    to_ns: &Netns,
    to: SocketAddr,
    flows: usize,
    count: u64,
    size: usize,
) -> Result<Vec<UdpFlow>> {
    use std::net::UdpSocket;
    let size = size.max(16);
    let receiver = to_ns
        .run(|| UdpSocket::bind(to))?
        .with_context(|| format!("binding {to}"))?;
    receiver.set_read_timeout(Some(Duration::from_secs(2)))?;
    let senders = (0..flows)
        .map(|_| -> Result<UdpSocket> {
            let any: SocketAddr = if to.is_ipv4() {
                "0.0.0.0:0".parse()?
            } else {
                "[::]:0".parse()?
            };
            Ok(from_ns.run(|| UdpSocket::bind(any))??)
        })
        .collect::<Result<Vec<_>>>()?;
    let ports: Vec<u16> = senders
        .iter()
        .map(|s| s.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<_>>()?;
    let reader = std::thread::spawn(move || {
        // per flow: (received, highest seen, out of order)
        let mut seen = vec![(0u64, None::<u64>, 0u64); ports.len()];
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = receiver.recv_from(&mut buf) {
            let Some(i) = ports.iter().position(|p| *p == from.port()) else {
                continue;
            };
            if n < 16 {
                continue;
            }
            let seq = u64::from_be_bytes(buf[8..16].try_into().unwrap_or_default());
            let f = &mut seen[i];
            f.0 += 1;
            match f.1 {
                Some(max) if seq < max => f.2 += 1,
                _ => f.1 = Some(seq),
            }
        }
        seen
    });
    std::thread::scope(|sc| {
        for (i, s) in senders.iter().enumerate() {
            sc.spawn(move || {
                let mut buf = vec![0u8; size];
                buf[..8].copy_from_slice(&(i as u64).to_be_bytes());
                for seq in 0..count {
                    buf[8..16].copy_from_slice(&seq.to_be_bytes());
                    // A full buffer drops the datagram (ENOBUFS): counted as lost.
                    let _ = s.send_to(&buf, to);
                    // Bursts of 64 with a pause: fast enough that several workers are busy
                    // at once, slow enough that most datagrams arrive.
                    if seq % 64 == 63 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            });
        }
    });
    let seen = reader
        .join()
        .map_err(|_| anyhow::anyhow!("receiver thread panicked"))?;
    Ok(seen
        .into_iter()
        .map(|(received, _, out_of_order)| UdpFlow {
            sent: count,
            received,
            out_of_order,
        })
        .collect())
}
