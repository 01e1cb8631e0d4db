//! Waiting for a file descriptor to become readable, for the data-path threads that read in
//! non-blocking batches (read until EAGAIN, then wait here), with no timeout: an idle tunnel's
//! threads sleep until a packet comes, or until `Interrupt::wake` says to stop.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// An eventfd a waiting thread also watches: `wake` ends every wait on it, now and later.
pub struct Interrupt(OwnedFd);

impl Interrupt {
    pub fn new() -> io::Result<Interrupt> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and nothing else owns it.
        Ok(Interrupt(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes the eventfd readable for good (never read back): every wait returns at once.
    pub fn wake(&self) {
        Interrupt::wake_fd(self.0.as_raw_fd());
    }

    fn wake_fd(fd: RawFd) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd its caller owns. A full counter
        // (EAGAIN) is as readable as it gets, so the result is not needed.
        let _ = unsafe { libc::write(fd, (&one as *const u64).cast::<libc::c_void>(), 8) };
    }

    /// Waits until `fd` is readable (true), `timeout` passes or the interrupt is woken (false).
    /// `None`: no timeout.
    pub fn wait_readable(&self, fd: RawFd, timeout: Option<Duration>) -> io::Result<bool> {
        Ok(wait_any(&[fd, self.0.as_raw_fd()], timeout)? == 0b1)
    }
}

/// An eventfd one thread rings to wake another (and the woken one clears): unlike `Interrupt`
/// it is read back, so it can ring again and again.
pub struct Doorbell(OwnedFd);

impl Doorbell {
    pub fn new() -> io::Result<Doorbell> {
        Interrupt::new().map(|i| Doorbell(i.0))
    }

    pub fn ring(&self) {
        Interrupt::wake_fd(self.0.as_raw_fd());
    }

    /// Takes back every ring so far (the next wait sleeps until the next one).
    pub fn clear(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64 from a descriptor we own; a
        // non-blocking eventfd that was not rung answers EAGAIN, which is fine.
        let _ = unsafe {
            libc::read(
                self.0.as_raw_fd(),
                (&mut v as *mut u64).cast::<libc::c_void>(),
                8,
            )
        };
    }

    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// An epoll set a thread waits on again and again. Its descriptors are registered once, not on
/// every wait as with poll(2), which is what makes a wake-up cheaper: the kernel's side of a
/// receive thread's wake-up took 9 µs with poll(2) on three descriptors and 6-7 µs with
/// epoll_wait (medians, measured on an idle round trip here; boringtun's epoll_wait 5).
/// Level-triggered: a descriptor stays ready while it has something to read.
pub struct WaitSet(OwnedFd);

impl WaitSet {
    pub fn new() -> io::Result<WaitSet> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new descriptor
        // that nothing else owns.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        Ok(WaitSet(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, bit: u32) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: u64::from(bit),
        };
        // SAFETY: both descriptors are open (the caller keeps `fd` open while it is in the
        // set); `event` is a valid epoll_event that outlives the call.
        if unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut event) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Watches `fd`; `wait` reports it as `bit`.
    pub fn add(&self, fd: RawFd, bit: u32) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, bit)
    }

    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0)
    }

    /// Waits until something in the set is readable; returns the bits of those that are (0
    /// after a signal).
    pub fn wait(&self) -> io::Result<u32> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 8];
        // SAFETY: `events` is a valid array of 8 epoll_events for the duration of the call.
        let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), 8, -1) };
        if n < 0 {
            return nothing_if_signalled(io::Error::last_os_error());
        }
        Ok(events[..n as usize].iter().fold(0, |m, e| m | e.u64 as u32))
    }

    /// Polls readable while something in the set is (a set can be watched from another set).
    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// A wait a signal ended (EINTR) found nothing readable; any other error is one.
fn nothing_if_signalled(e: io::Error) -> io::Result<u32> {
    if e.kind() == io::ErrorKind::Interrupted {
        Ok(0)
    } else {
        Err(e)
    }
}

/// Waits until one of `fds` is readable or `timeout` passes (`None`: no timeout); returns which
/// are readable (bit i for `fds[i]`; 0 after the timeout or a signal).
pub fn wait_any(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<u32> {
    let mut p = [libc::pollfd {
        fd: -1,
        events: libc::POLLIN,
        revents: 0,
    }; 4];
    let n = fds.len().min(p.len());
    for (slot, fd) in p.iter_mut().zip(fds) {
        slot.fd = *fd;
    }
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    // SAFETY: `p` is a valid array of at least `n` pollfds for the duration of the call.
    let r = unsafe { libc::poll(p.as_mut_ptr(), n as libc::nfds_t, ms) };
    if r < 0 {
        return nothing_if_signalled(io::Error::last_os_error());
    }
    Ok(p[..n]
        .iter()
        .enumerate()
        .filter(|(_, q)| q.revents != 0)
        .fold(0, |m, (i, _)| m | 1 << i))
}

#[cfg(test)]
mod tests {
    // Test code: a failed unwrap is a failed test.
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_wait_set_reports_what_is_readable_by_its_bits_and_forgets_what_was_removed() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let set = WaitSet::new().unwrap();
        set.add(a.as_raw_fd(), 0b1).unwrap();
        set.add(b.as_raw_fd(), 0b10).unwrap();
        a.send_to(b"x", b.local_addr().unwrap()).unwrap();
        assert_eq!(set.wait().unwrap(), 0b10);
        // Level-triggered: still readable until read.
        assert_eq!(set.wait().unwrap(), 0b10);
        set.remove(b.as_raw_fd()).unwrap();
        b.send_to(b"y", a.local_addr().unwrap()).unwrap();
        assert_eq!(
            set.wait().unwrap(),
            0b1,
            "b is out of the set, though readable"
        );
        assert!(set.remove(b.as_raw_fd()).is_err());
    }

    #[test]
    fn a_wait_ends_when_readable_when_woken_and_at_its_timeout() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let stop = std::sync::Arc::new(Interrupt::new().unwrap());
        let t = Instant::now();
        assert!(!stop
            .wait_readable(a.as_raw_fd(), Some(Duration::from_millis(50)))
            .unwrap());
        assert!(t.elapsed() >= Duration::from_millis(50));
        b.send_to(b"x", a.local_addr().unwrap()).unwrap();
        assert!(stop.wait_readable(a.as_raw_fd(), None).unwrap());
        let mut buf = [0u8; 4];
        a.recv(&mut buf).unwrap();
        let waker = stop.clone();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            waker.wake();
        });
        // No timeout: only the wake ends it.
        assert!(!stop.wait_readable(a.as_raw_fd(), None).unwrap());
        h.join().unwrap();
        assert!(
            !stop.wait_readable(a.as_raw_fd(), None).unwrap(),
            "and stays woken"
        );
    }
}
