//! Waiting for a file descriptor to become readable, for the data-path threads that read in
//! non-blocking batches (read until EAGAIN, then wait here).

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// Waits until `fd` is readable, or `timeout` passes (false).
pub fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `p` is a valid pollfd for the duration of the call, and nfds is 1.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    match r {
        r if r > 0 => Ok(true),
        0 => Ok(false),
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}
