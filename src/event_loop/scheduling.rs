//! `call_soon`, `call_soon_threadsafe`, `call_later` and `call_at`: build the
//! handle and queue it. asyncio's checks are kept in asyncio's order (the
//! closed check first, then debug-mode thread/callback checks).

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyTuple};
use pyo3::PyClassInitializer;

use super::{lock, reject_none, LoopCore, Ready};
use crate::clock;
use crate::handles::{untrack, Handle, TimerHandle};
use crate::pyhelpers;

fn make_handle(slf: &Bound<'_, LoopCore>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>, context: Option<Bound<'_, PyAny>>, one_shot: bool) -> PyResult<Handle> {
    let py = slf.py();
    let shared = &slf.get().shared;
    shared.bind_loop(slf.as_any())?;
    let context = match context {
        Some(c) if !c.is_none() => c.unbind(),
        _ => pyhelpers::copy_context(py)?,
    };
    let source_traceback = if slf.get().debug() { Some(pyhelpers::extract_stack(py)?) } else { None };
    Ok(Handle::new(callback.unbind(), args.unbind(), context, shared.clone(), one_shot, source_traceback))
}

/// A handle for an fd callback, which runs every time the fd is ready.
pub fn new_fd_handle(slf: &Bound<'_, LoopCore>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>) -> PyResult<Py<Handle>> {
    let handle = Py::new(slf.py(), make_handle(slf, callback, args, None, false)?)?;
    untrack(&handle);
    Ok(handle)
}

/// `call_soon` and `call_soon_threadsafe`, which differ only in the thread
/// check and in waking a loop that sleeps in poll.
pub fn call_soon(slf: &Bound<'_, LoopCore>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>, context: Option<Bound<'_, PyAny>>, threadsafe: bool) -> PyResult<Py<Handle>> {
    let py = slf.py();
    let core = slf.get();
    core.check_closed()?;
    if core.debug() {
        let method = if threadsafe { "call_soon_threadsafe" } else { "call_soon" };
        LoopCore::debug_checks(slf, &callback, method, !threadsafe)?;
    }
    let handle = Py::new(py, make_handle(slf, callback, args, context, true)?)?;
    untrack(&handle);
    let wake = {
        let mut s = lock(&core.sched);
        s.ready.push_back(Ready::Native(handle.clone_ref(py)));
        threadsafe && s.claim_wake()
    };
    if wake {
        core.wake();
    }
    Ok(handle)
}

pub fn call_later(slf: &Bound<'_, LoopCore>, delay: Bound<'_, PyAny>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>, context: Option<Bound<'_, PyAny>>) -> PyResult<Py<TimerHandle>> {
    reject_none(slf.get(), &delay, "delay must not be None")?;
    let now = clock::monotonic();
    let when = match delay.extract::<f64>() {
        Ok(d) => now + d,
        // Let Python raise exactly what `loop.time() + delay` raises.
        Err(_) => PyFloat::new(slf.py(), now).add(&delay)?.extract()?,
    };
    // asyncio's call_later goes through call_at, whose name its checks report.
    schedule_at(slf, when, callback, args, context)
}

pub fn call_at(slf: &Bound<'_, LoopCore>, when: Bound<'_, PyAny>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>, context: Option<Bound<'_, PyAny>>) -> PyResult<Py<TimerHandle>> {
    reject_none(slf.get(), &when, "when cannot be None")?;
    schedule_at(slf, when.extract()?, callback, args, context)
}

fn schedule_at(slf: &Bound<'_, LoopCore>, when: f64, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>, context: Option<Bound<'_, PyAny>>) -> PyResult<Py<TimerHandle>> {
    let py = slf.py();
    let core = slf.get();
    core.check_closed()?;
    if core.debug() {
        LoopCore::debug_checks(slf, &callback, "call_at", true)?;
    }
    let init = PyClassInitializer::from(make_handle(slf, callback, args, context, true)?).add_subclass(TimerHandle::new(when));
    let timer = Py::new(py, init)?;
    untrack(&timer);
    lock(&core.sched).timers.push(when, timer.clone_ref(py));
    Ok(timer)
}

/// asyncio's `create_task`: the common case (no task factory, no debug mode)
/// is done here, the rest by asyncio's own code (`_create_task_fallback`).
pub fn create_task<'py>(slf: &Bound<'py, LoopCore>, coro: Bound<'py, PyAny>, name: Option<Bound<'py, PyAny>>, context: Option<Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
    let py = slf.py();
    let core = slf.get();
    core.check_closed()?;
    let name = name.filter(|n| !n.is_none());
    let context = context.filter(|c| !c.is_none());
    let plain = !core.debug() && (context.is_none() || core.py311_plus) && lock(&core.task_factory).is_none();
    if plain {
        return pyhelpers::new_task(slf.as_any(), &coro, name.as_ref(), context.as_ref());
    }
    let kwargs = PyDict::new(py);
    if let Some(name) = name {
        kwargs.set_item(pyo3::intern!(py, "name"), name)?;
    }
    if let Some(context) = context {
        kwargs.set_item(pyo3::intern!(py, "context"), context)?;
    }
    slf.call_method(pyo3::intern!(py, "_create_task_fallback"), (coro,), Some(&kwargs))
}

/// asyncio's `_add_callback`: queue an existing handle unless it is cancelled.
pub fn add_callback(core: &LoopCore, handle: Bound<'_, PyAny>) -> PyResult<()> {
    let entry = match handle.cast_into::<Handle>() {
        Ok(h) if h.get().is_cancelled() => return Ok(()),
        Ok(h) => Ready::Native(h.unbind()),
        Err(e) => {
            let handle = e.into_inner();
            if handle.getattr(pyo3::intern!(handle.py(), "_cancelled"))?.is_truthy()? {
                return Ok(());
            }
            Ready::Foreign(handle.unbind())
        }
    };
    let mut s = lock(&core.sched);
    s.foreign_queued += matches!(entry, Ready::Foreign(_)) as usize;
    s.ready.push_back(entry);
    Ok(())
}
