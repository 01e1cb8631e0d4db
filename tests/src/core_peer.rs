//! A WireGuard peer made of nothing but suidao's protocol core and a plain UDP socket: the
//! smallest possible engine, for testing the core against real peers.

use anyhow::{Context, Result};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use suidao_common::clock;
use suidao_lab::Netns;
use suidao_proto::{Device, Outgoing, Received, Sent};

pub struct CorePeer {
    pub device: Device,
    pub socket: UdpSocket,
    out: Vec<Outgoing>,
}

impl CorePeer {
    /// A UDP socket bound to `bind` inside `ns`, driving `device`.
    pub fn new(ns: &Netns, bind: SocketAddr, device: Device) -> Result<CorePeer> {
        let socket = ns
            .run(|| UdpSocket::bind(bind))?
            .with_context(|| format!("binding {bind}"))?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        Ok(CorePeer {
            device,
            socket,
            out: Vec::new(),
        })
    }

    fn flush(&mut self) -> Result<()> {
        for o in self.out.drain(..) {
            self.socket.send_to(&o.bytes, o.to.addr)?;
        }
        Ok(())
    }

    /// Sends an IP packet through the tunnel (sealed at once, or queued behind a handshake).
    pub fn send_ip(&mut self, packet: &[u8]) -> Result<Sent> {
        let mut buf = vec![0u8; packet.len() + 64];
        buf[16..16 + packet.len()].copy_from_slice(packet);
        let sent = self
            .device
            .encapsulate(&mut buf, packet.len(), clock::now(), &mut self.out);
        if let Sent::Ready { to, len } = &sent {
            self.socket.send_to(&buf[..*len], to.addr)?;
        }
        self.flush()?;
        Ok(sent)
    }

    /// Receives and processes datagrams (and runs the timers) until `on_packet` returns true for
    /// an IP packet that came out of the tunnel, or `timeout` passes. Returns whether it did.
    pub fn run_until(
        &mut self,
        timeout: Duration,
        mut on_packet: impl FnMut(&mut Self, &[u8]) -> Result<bool>,
    ) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline {
            match self.socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let r = self
                        .device
                        .receive(from, &mut buf[..n], clock::now(), &mut self.out);
                    self.flush()?;
                    if let Received::Packet { range, .. } = r {
                        let packet = buf[range].to_vec();
                        if on_packet(self, &packet)? {
                            return Ok(true);
                        }
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e.into()),
            }
            self.device.update_timers(clock::now(), &mut self.out);
            self.flush()?;
        }
        Ok(false)
    }
}
