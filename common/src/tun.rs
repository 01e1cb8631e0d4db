//! The TUN device (through `tun-rs`): layer-3 packets in and out, no packet-information header.
//! Addresses, MTU and link state are set through netlink (see `netlink`), not here.

use std::io;

pub struct Tun {
    dev: tun_rs::SyncDevice,
    name: String,
}

impl Tun {
    /// Creates the TUN interface `name`.
    pub fn create(name: &str) -> io::Result<Tun> {
        let dev = tun_rs::DeviceBuilder::new()
            .name(name)
            .build_sync()
            .map_err(|e| {
                let hint = match e.raw_os_error() {
                    Some(libc::EBUSY) => {
                        " (an interface of that name is in use: is it up already?)"
                    }
                    Some(libc::EPERM) => " (creating a TUN interface needs CAP_NET_ADMIN)",
                    Some(libc::ENOENT) => " (/dev/net/tun is missing)",
                    _ => "",
                };
                io::Error::new(
                    e.kind(),
                    format!("creating TUN interface {name}: {e}{hint}"),
                )
            })?;
        Ok(Tun {
            dev,
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// One IP packet (blocks until there is one).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.dev.recv(buf)
    }

    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        self.dev.send(packet)
    }
}
