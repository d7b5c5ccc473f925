//! Readiness polling on mio, plus the level-triggered registrations that
//! asyncio's `add_reader`/`add_writer` contract needs.
//!
//! mio registers every source edge-triggered, which is what ferroloop's own
//! transports want (they drain until EAGAIN). A user's `add_reader` callback
//! may read only part of what is available and still expects to be called
//! again, as the standard loop's level-triggered selector does. Those fds are
//! therefore added to mio's epoll instance directly with `epoll_ctl` and no
//! `EPOLLET`; mio reports them like any other token.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use mio::{Events, Poll, Registry, Token, Waker};

/// Token of the cross-thread waker (`call_soon_threadsafe`, `stop()` from elsewhere).
pub const WAKER: Token = Token(usize::MAX - 1);

/// What a ready event said about one token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub token: Token,
    pub readable: bool,
    pub writable: bool,
}

/// Owns the mio `Poll`; only the loop's own thread polls, under a lock that
/// nothing else takes.
pub struct Poller {
    poll: Poll,
    events: Events,
}

/// Changes interest sets without touching the `Poll`, so callbacks may add
/// and remove fds while no poll is in progress, with no lock shared with it.
/// Holds its own handle on the epoll instance (a dup made by mio).
pub struct Registrar {
    registry: Registry,
}

impl Poller {
    /// The poller, its registrar and the cross-thread waker.
    pub fn new() -> io::Result<(Poller, Registrar, Waker)> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let registry = poll.registry().try_clone()?;
        Ok((Poller { poll, events: Events::with_capacity(1024) }, Registrar { registry }, waker))
    }

    /// Wait for readiness; `None` waits forever. Appends to `out`.
    /// EINTR comes back as `ErrorKind::Interrupted` so the caller can run
    /// Python's signal handlers before polling again.
    pub fn poll(&mut self, timeout: Option<Duration>, out: &mut Vec<Readiness>) -> io::Result<()> {
        self.poll.poll(&mut self.events, timeout)?;
        for ev in self.events.iter() {
            // Errors and hang-ups wake both directions, as select() reports them.
            let err = ev.is_error() || ev.is_read_closed() || ev.is_write_closed();
            out.push(Readiness {
                token: ev.token(),
                readable: ev.is_readable() || err,
                writable: ev.is_writable() || err,
            });
        }
        Ok(())
    }
}

impl Registrar {
    /// Set the level-triggered interest of `fd` (token = fd); none removes it.
    /// `registered`: whether epoll already holds the fd (modified, not added).
    pub fn set_level_interest(&self, fd: RawFd, readable: bool, writable: bool, registered: bool) -> io::Result<()> {
        self.set_interest(fd, readable, writable, registered, 0)
    }

    /// Arm `fd` for one report (`EPOLLONESHOT`): once reported, epoll keeps
    /// the registration but disabled, reporting nothing, not even hang-ups,
    /// until it is armed again by a modification, one system call instead of
    /// a delete and an add. Used for a wait that is done after one event.
    pub fn arm_once(&self, fd: RawFd, readable: bool, writable: bool, registered: bool) -> io::Result<()> {
        self.set_interest(fd, readable, writable, registered, libc::EPOLLONESHOT as u32)
    }

    fn set_interest(&self, fd: RawFd, readable: bool, writable: bool, registered: bool, flags: u32) -> io::Result<()> {
        if !readable && !writable {
            if registered {
                // Closed fds have already left the epoll set; that is not an error.
                let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0);
            }
            return Ok(());
        }
        let mut mask = flags;
        if readable {
            mask |= libc::EPOLLIN as u32;
        }
        if writable {
            mask |= libc::EPOLLOUT as u32;
        }
        if registered {
            match self.ctl(libc::EPOLL_CTL_MOD, fd, mask) {
                // The fd was closed and reopened under the same number since.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => self.ctl(libc::EPOLL_CTL_ADD, fd, mask),
                r => r,
            }
        } else {
            match self.ctl(libc::EPOLL_CTL_ADD, fd, mask) {
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => self.ctl(libc::EPOLL_CTL_MOD, fd, mask),
                r => r,
            }
        }
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, mask: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: mask, u64: fd as u64 };
        // SAFETY: the registry's fd is a live epoll instance this Registrar owns;
        // `ev` is a valid epoll_event we own for the duration of the call.
        let rc = unsafe { libc::epoll_ctl(self.registry.as_raw_fd(), op, fd, &mut ev) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::io::Write;

    #[test]
    fn level_triggered_reports_until_drained() {
        let (mut p, r, _w) = Poller::new().unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        let fd = b.as_raw_fd();
        r.set_level_interest(fd, true, false, false).unwrap();
        a.write_all(b"x").unwrap();
        for _ in 0..3 {
            let mut out = Vec::new();
            p.poll(Some(Duration::from_millis(100)), &mut out).unwrap();
            assert_eq!(out, vec![Readiness { token: Token(fd as usize), readable: true, writable: false }]);
        }
        r.set_level_interest(fd, false, false, true).unwrap();
        let mut out = Vec::new();
        p.poll(Some(Duration::from_millis(10)), &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn armed_once_reports_once_until_armed_again() {
        let (mut p, r, _w) = Poller::new().unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        let fd = b.as_raw_fd();
        r.arm_once(fd, true, false, false).unwrap();
        a.write_all(b"x").unwrap();
        let poll = |p: &mut Poller| {
            let mut out = Vec::new();
            p.poll(Some(Duration::from_millis(20)), &mut out).unwrap();
            out.len()
        };
        assert_eq!(poll(&mut p), 1);
        assert_eq!(poll(&mut p), 0, "disabled after one report, though still readable");
        drop(a);
        assert_eq!(poll(&mut p), 0, "a disabled registration does not report the hang-up either");
        r.arm_once(fd, true, false, true).unwrap();
        assert_eq!(poll(&mut p), 1);
    }

    #[test]
    fn waker_wakes_from_another_thread() {
        let (mut p, _r, w) = Poller::new().unwrap();
        std::thread::scope(|s| {
            s.spawn(|| w.wake().unwrap());
        });
        let mut out = Vec::new();
        p.poll(Some(Duration::from_secs(5)), &mut out).unwrap();
        assert_eq!(out[0].token, WAKER);
    }

    #[test]
    fn regular_files_are_refused_like_epoll() {
        let (_p, r, _w) = Poller::new().unwrap();
        let f = std::fs::File::open("/proc/self/status").unwrap();
        let err = r.set_level_interest(f.as_raw_fd(), true, false, false).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    }
}
