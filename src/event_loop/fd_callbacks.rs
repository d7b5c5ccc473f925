//! `add_reader`/`add_writer`/`remove_reader`/`remove_writer`: one reader and
//! one writer handle per fd, polled level-triggered as asyncio's selector
//! loop does. The fd's blocking mode is never touched.

use std::os::fd::RawFd;

use pyo3::exceptions::{PyAttributeError, PyOverflowError, PyTypeError, PyValueError};
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::{lock, LoopCore, Ready};
use crate::handles::Handle;
use crate::poller::{Readiness, Registrar, WAKER};
use crate::transport::socket_io::os_error;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Read,
    Write,
}

impl Dir {
    pub fn of(writable: bool) -> Dir {
        if writable { Dir::Write } else { Dir::Read }
    }
}

/// What is registered for one fd: the object the user passed (for lookups
/// after it was closed) and the two callbacks.
pub struct FdEntry {
    fileobj: Py<PyAny>,
    reader: Option<Py<Handle>>,
    writer: Option<Py<Handle>>,
    /// Polled for one event at a time (see [`add_once`]), not level-triggered.
    once: Option<Once>,
}

/// The state of an fd polled for one event at a time.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Once {
    /// epoll will report the next event.
    Armed,
    /// epoll reported one and disabled the registration.
    Fired,
}

impl FdEntry {
    /// Drop the callbacks (the loop is closing).
    pub fn release_handles(&self) {
        for h in [&self.reader, &self.writer].into_iter().flatten() {
            h.get().release(true);
        }
    }

    fn new(fileobj: &Bound<'_, PyAny>) -> Self {
        FdEntry { fileobj: fileobj.clone().unbind(), reader: None, writer: None, once: None }
    }

    fn slot(&mut self, dir: Dir) -> &mut Option<Py<Handle>> {
        match dir {
            Dir::Read => &mut self.reader,
            Dir::Write => &mut self.writer,
        }
    }
}

/// Registered fds, indexed by fd number, and the epoll registrations
/// behind them (gone once the loop is closed).
pub struct FdTable {
    registrar: Option<Registrar>,
    entries: Vec<Option<FdEntry>>,
    /// The loop's own self-pipe, which only carries signal numbers.
    internal_fd: Option<RawFd>,
    /// Registered fds other than the self-pipe.
    user_fds: usize,
    /// fds with no entry whose disabled one-event registration epoll still
    /// holds: the next [`add_once`] re-arms it with one modification.
    parked: std::collections::HashSet<RawFd>,
}

impl FdTable {
    pub fn new(registrar: Registrar) -> Self {
        FdTable { registrar: Some(registrar), entries: Vec::new(), internal_fd: None, user_fds: 0, parked: Default::default() }
    }

    fn registrar(&self) -> std::io::Result<&Registrar> {
        self.registrar.as_ref().ok_or_else(|| std::io::Error::from_raw_os_error(libc::EBADF))
    }

    fn set_interest(&self, fd: RawFd, readable: bool, writable: bool, registered: bool) -> std::io::Result<()> {
        self.registrar()?.set_level_interest(fd, readable, writable, registered)
    }

    pub fn set_internal_fd(&mut self, fd: RawFd) {
        self.internal_fd = Some(fd);
    }

    /// Whether anything but the loop's own wake-up fds is being polled.
    pub fn has_user_fds(&self) -> bool {
        self.user_fds > 0
    }

    fn count(&mut self, fd: RawFd, added: bool) {
        if self.internal_fd != Some(fd) {
            if added {
                self.user_fds += 1;
            } else {
                self.user_fds = self.user_fds.saturating_sub(1);
            }
        }
    }

    fn entry(&self, fd: RawFd) -> Option<&FdEntry> {
        self.entries.get(fd as usize).and_then(Option::as_ref)
    }

    fn entry_mut(&mut self, fd: RawFd) -> &mut Option<FdEntry> {
        let i = fd as usize;
        if i >= self.entries.len() {
            self.entries.resize_with(i + 1, || None);
        }
        &mut self.entries[i]
    }

    pub fn get(&self, py: Python<'_>, fd: RawFd) -> (Option<Py<Handle>>, Option<Py<Handle>>) {
        match self.entry(fd) {
            Some(e) => (e.reader.as_ref().map(|h| h.clone_ref(py)), e.writer.as_ref().map(|h| h.clone_ref(py))),
            None => (None, None),
        }
    }

    /// The fd registered with this very object (asyncio's exhaustive lookup
    /// for file objects that no longer have a valid fileno()).
    fn find_fileobj(&self, obj: &Bound<'_, PyAny>) -> Option<RawFd> {
        self.entries
            .iter()
            .position(|e| e.as_ref().is_some_and(|e| e.fileobj.as_ptr() == obj.as_ptr()))
            .map(|i| i as RawFd)
    }

    /// Empty the table and release the epoll registrations (loop close).
    pub fn take_all(&mut self) -> (Vec<FdEntry>, Option<Registrar>) {
        self.user_fds = 0;
        self.parked.clear();
        (self.entries.drain(..).flatten().collect(), self.registrar.take())
    }

    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        // The handles are not tracked by the collector; the file objects may be.
        for e in self.entries.iter().flatten() {
            visit.call(&e.fileobj)?;
        }
        Ok(())
    }
}

/// `selectors._fileobj_to_fd`: an int, or `int(obj.fileno())`. `None` for
/// a number too large for a C int, which no fd can have.
pub fn fileobj_to_fd(obj: &Bound<'_, PyAny>) -> PyResult<Option<RawFd>> {
    let py = obj.py();
    let number = if obj.is_instance_of::<pyo3::types::PyInt>() {
        obj.clone()
    } else {
        let invalid = |e: PyErr| {
            if e.is_instance_of::<PyAttributeError>(py) || e.is_instance_of::<PyTypeError>(py) || e.is_instance_of::<PyValueError>(py) {
                PyValueError::new_err(format!("Invalid file object: {}", obj.repr().map(|r| r.to_string()).unwrap_or_default()))
            } else {
                e
            }
        };
        obj.call_method0(pyo3::intern!(py, "fileno"))
            .and_then(|f| py.get_type::<pyo3::types::PyInt>().call1((f,)))
            .map_err(invalid)?
    };
    if number.lt(0)? {
        return Err(PyValueError::new_err(format!("Invalid file descriptor: {number}")));
    }
    Ok(number.extract::<RawFd>().ok())
}

/// What epoll's registration raises for a number beyond a C int.
fn too_large() -> PyErr {
    PyOverflowError::new_err("Python int too large to convert to C int")
}

/// The public methods refuse an fd that a live transport owns (asyncio's
/// `_ensure_fd_no_transport`, which also vets the file object).
fn ensure_no_transport(slf: &Bound<'_, LoopCore>, fileobj: &Bound<'_, PyAny>) -> PyResult<()> {
    slf.call_method1(pyo3::intern!(slf.py(), "_ensure_fd_no_transport"), (fileobj,)).map(drop)
}

/// Register `callback(*args)` for `fd` in direction `dir`, replacing (and
/// cancelling) a previous one. `public` is true for `add_reader`/`add_writer`,
/// false for the internal `_add_reader`/`_add_writer` transports use.
pub fn add(slf: &Bound<'_, LoopCore>, fileobj: &Bound<'_, PyAny>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>, dir: Dir, public: bool) -> PyResult<Py<Handle>> {
    let py = slf.py();
    let core = slf.get();
    if public {
        ensure_no_transport(slf, fileobj)?;
    }
    core.check_closed()?;
    let fd = fileobj_to_fd(fileobj)?.ok_or_else(too_large)?;
    let handle = super::scheduling::new_fd_handle(slf, callback, args)?;
    let old = {
        let mut table = lock(&core.fds);
        let current = table.entry(fd);
        let known = current.is_some();
        let registered = known || table.parked.contains(&fd);
        let (r, w) = match current {
            Some(e) => (e.reader.is_some() || dir == Dir::Read, e.writer.is_some() || dir == Dir::Write),
            None => (dir == Dir::Read, dir == Dir::Write),
        };
        // The kernel vets the fd before the table grows to hold it.
        table.set_interest(fd, r, w, registered).map_err(os_error)?;
        table.parked.remove(&fd);
        if !known {
            table.count(fd, true);
        }
        // The object of the first registration stays (asyncio's selector
        // key keeps it until the fd is unregistered).
        let entry = table.entry_mut(fd).get_or_insert_with(|| FdEntry::new(fileobj));
        // Level-triggered from now on, whatever it was.
        entry.once = None;
        entry.slot(dir).replace(handle.clone_ref(py))
    };
    if let Some(old) = old {
        let old = old.into_bound(py);
        old.get().cancel_inner(old.as_any())?;
    }
    Ok(handle)
}

/// `add` for a wait that ends at its first event (the `sock_*` operations):
/// when nothing else watches the fd, it is polled for one event at a time,
/// so that once the wait is over its registration can stay in epoll,
/// disabled, and the next wait on the fd re-arms it with one system call
/// instead of a delete and an add. A callback that finds the fd not ready
/// after all calls [`rearm`]. Otherwise it is `add`.
pub fn add_once(slf: &Bound<'_, LoopCore>, fd: RawFd, callback: Bound<'_, PyAny>, dir: Dir) -> PyResult<Py<Handle>> {
    let py = slf.py();
    let core = slf.get();
    let fileobj = fd.into_pyobject(py)?.into_any();
    if lock(&core.fds).entry(fd).is_some() {
        return add(slf, &fileobj, callback, PyTuple::empty(py), dir, false);
    }
    core.check_closed()?;
    let handle = super::scheduling::new_fd_handle(slf, callback, PyTuple::empty(py))?;
    let mut table = lock(&core.fds);
    let parked = table.parked.remove(&fd);
    table.registrar().and_then(|r| r.arm_once(fd, dir == Dir::Read, dir == Dir::Write, parked)).map_err(os_error)?;
    table.count(fd, true);
    let entry = table.entry_mut(fd).insert(FdEntry::new(&fileobj));
    entry.once = Some(Once::Armed);
    *entry.slot(dir) = Some(handle.clone_ref(py));
    Ok(handle)
}

/// Arm an fd added by [`add_once`] for its next event, if the last one was
/// reported (the callback found it not ready after all).
pub fn rearm(slf: &Bound<'_, LoopCore>, fd: RawFd) -> PyResult<()> {
    let mut table = lock(&slf.get().fds);
    let Some(Some(entry)) = table.entries.get_mut(fd as usize) else { return Ok(()) };
    if entry.once != Some(Once::Fired) {
        return Ok(());
    }
    entry.once = Some(Once::Armed);
    let (r, w) = (entry.reader.is_some(), entry.writer.is_some());
    table.registrar().and_then(|reg| reg.arm_once(fd, r, w, true)).map_err(os_error)
}

/// Unregister the `dir` callback of `fileobj`; true if one was registered.
pub fn remove(slf: &Bound<'_, LoopCore>, fileobj: &Bound<'_, PyAny>, dir: Dir, public: bool) -> PyResult<bool> {
    let core = slf.get();
    if public {
        ensure_no_transport(slf, fileobj)?;
    }
    let fd = match fileobj_to_fd(fileobj) {
        // None: too large to have been registered.
        Ok(fd) => fd,
        Err(err) => match lock(&core.fds).find_fileobj(fileobj) {
            Some(fd) => Some(fd),
            None if core.is_closed() => None,
            None => return Err(err),
        },
    };
    if core.is_closed() {
        return Ok(false);
    }
    match fd {
        Some(fd) => remove_fd(slf, fd, dir),
        None => Ok(false),
    }
}

/// `remove` for an fd number the caller registered itself (the transports):
/// no file object to resolve.
pub fn remove_raw(slf: &Bound<'_, LoopCore>, fd: RawFd, dir: Dir) -> PyResult<bool> {
    if slf.get().is_closed() {
        return Ok(false);
    }
    remove_fd(slf, fd, dir)
}

fn remove_fd(slf: &Bound<'_, LoopCore>, fd: RawFd, dir: Dir) -> PyResult<bool> {
    let py = slf.py();
    let core = slf.get();
    let (old, emptied) = {
        let mut table = lock(&core.fds);
        let Some(Some(entry)) = table.entries.get_mut(fd as usize) else { return Ok(false) };
        let Some(old) = entry.slot(dir).take() else {
            // Nothing changes, and epoll is not asked (the fd may be closed).
            return Ok(false);
        };
        let (r, w) = (entry.reader.is_some(), entry.writer.is_some());
        let fired = entry.once == Some(Once::Fired);
        let forget = if fired && !r && !w {
            // epoll already disabled it; it stays there, silent, for the next wait.
            table.parked.insert(fd);
            true
        } else if table.set_interest(fd, r, w, true).is_err() {
            // The fd was closed behind our back: forget it entirely.
            let _ = table.set_interest(fd, false, false, true);
            true
        } else {
            !r && !w
        };
        let emptied = if forget { table.entries[fd as usize].take() } else { None };
        if emptied.is_some() {
            table.count(fd, false);
        }
        (old, emptied)
    };
    drop(emptied);
    let old = old.into_bound(py);
    old.get().cancel_inner(old.as_any())?;
    Ok(true)
}

/// Queue the callbacks of the fds that poll reported ready, and drop the
/// ones whose handle was cancelled, as asyncio's `_process_events` does.
/// (`ready`: an empty vector the caller reuses.)
pub fn dispatch(slf: &Bound<'_, LoopCore>, events: &[Readiness], ready: &mut Vec<Ready>) -> PyResult<()> {
    let py = slf.py();
    let core = slf.get();
    let mut stale = Vec::new();
    {
        let mut table = lock(&core.fds);
        for ev in events {
            if ev.token == WAKER {
                continue;
            }
            let fd = ev.token.0 as RawFd;
            let Some(Some(entry)) = table.entries.get_mut(fd as usize) else { continue };
            if entry.once == Some(Once::Armed) {
                entry.once = Some(Once::Fired);
            }
            let entry = &*entry;
            for (wanted, handle, dir) in [(ev.readable, &entry.reader, Dir::Read), (ev.writable, &entry.writer, Dir::Write)] {
                match handle {
                    Some(h) if wanted && h.get().is_cancelled() => stale.push((fd, dir)),
                    Some(h) if wanted => ready.push(Ready::Native(h.clone_ref(py))),
                    _ => {}
                }
            }
        }
    }
    if !ready.is_empty() {
        lock(&core.sched).ready.extend(ready.drain(..));
    }
    for (fd, dir) in stale {
        remove_fd(slf, fd, dir)?;
    }
    Ok(())
}
