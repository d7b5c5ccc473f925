//! One iteration of the loop, step for step as asyncio's `_run_once`:
//! prune cancelled timers, poll, queue fd callbacks, queue due timers, then
//! run exactly the callbacks that were ready when the run phase began.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

use super::{fd_callbacks, lock, time_source, LoopCore, Ready};
use crate::clock;
use crate::handles::Handle;
use crate::poller::{Poller, Readiness};
use crate::pyhelpers;

/// asyncio's `_MIN_SCHEDULED_TIMER_HANDLES` and `_MIN_CANCELLED_TIMER_HANDLES_FRACTION`.
const MIN_SCHEDULED_TIMER_HANDLES: usize = 100;
const MIN_CANCELLED_TIMER_HANDLES_FRACTION: f64 = 0.5;
/// asyncio's `MAXIMUM_SELECT_TIMEOUT`.
const MAXIMUM_SELECT_TIMEOUT: f64 = 24.0 * 3600.0;
/// With callbacks ready and no fd but the self-pipe registered, poll at most
/// this often: there is no I/O to interleave, only signal numbers, which
/// can wait this long. With any other fd registered, every iteration polls,
/// as the standard loop does.
const IDLE_FD_POLL_INTERVAL: f64 = 0.001;

/// What one run of the loop reuses from iteration to iteration.
struct RunState {
    events: Vec<Readiness>,
    /// The handles of the fds found ready, on their way to the ready queue.
    fired: Vec<Ready>,
    batch: VecDeque<Ready>,
    last_poll: f64,
}

/// `while True: _run_once(); if _stopping: break`
pub fn run_until_stopped(slf: &Bound<'_, LoopCore>) -> PyResult<()> {
    run(slf, true)
}

pub fn run_once(slf: &Bound<'_, LoopCore>) -> PyResult<()> {
    run(slf, false)
}

fn run(slf: &Bound<'_, LoopCore>, until_stopped: bool) -> PyResult<()> {
    let core = slf.get();
    let mut guard = core.poller.try_lock().map_err(|_| PyRuntimeError::new_err("This event loop is already running"))?;
    let poller = guard.as_mut().ok_or_else(|| PyRuntimeError::new_err("Event loop is closed"))?;
    let mut state = RunState { events: Vec::with_capacity(64), fired: Vec::new(), batch: VecDeque::new(), last_poll: f64::NEG_INFINITY };
    loop {
        iterate(slf, poller, &mut state)?;
        if !until_stopped || core.stopping.load(Ordering::Relaxed) {
            return Ok(());
        }
    }
}

fn iterate(slf: &Bound<'_, LoopCore>, poller: &mut Poller, state: &mut RunState) -> PyResult<()> {
    let py = slf.py();
    let core = slf.get();
    let RunState { events, fired, batch, last_poll } = state;

    let timeout = prune_and_compute_timeout(slf)?;

    events.clear();
    let polled = if timeout == Some(Duration::ZERO) {
        let now = clock::monotonic();
        if now - *last_poll < IDLE_FD_POLL_INTERVAL && !lock(&core.fds).has_user_fds() {
            Ok(())
        } else {
            *last_poll = now;
            poller.poll(timeout, events)
        }
    } else {
        *last_poll = f64::NEG_INFINITY;
        py.detach(|| {
            let polled = poller.poll(timeout, events);
            // Cleared before waiting for the GIL, so threads that keep
            // scheduling meanwhile do not wake us again and again.
            let mut s = lock(&core.sched);
            s.polling = false;
            s.wake_sent = false;
            drop(s);
            polled
        })
    };
    match polled {
        Ok(()) => {}
        // A signal arrived: run Python's handlers now (Ctrl-C raises here).
        Err(e) if e.kind() == io::ErrorKind::Interrupted => py.check_signals()?,
        Err(e) => return Err(e.into()),
    }
    if !events.is_empty() {
        fd_callbacks::dispatch(slf, events, fired)?;
    }

    queue_due_timers(slf)?;
    run_ready(slf, batch)
}

/// Drop cancelled timers (all of them when they are the majority, else those
/// at the head) and work out how long poll may block.
fn prune_and_compute_timeout(slf: &Bound<'_, LoopCore>) -> PyResult<Option<Duration>> {
    let (py, core) = (slf.py(), slf.get());
    // Read before taking the lock, as a replaced `time` runs Python code.
    let python_now = if core.python_time.load(Ordering::Relaxed) { Some(time_source::now(slf)?) } else { None };
    let cancelled = core.shared.timer_cancelled_count.load(Ordering::Relaxed);
    let mut pruned = Vec::new();
    let mut s = lock(&core.sched);
    let scheduled = s.timers.len();
    if scheduled > MIN_SCHEDULED_TIMER_HANDLES && cancelled as f64 / scheduled as f64 > MIN_CANCELLED_TIMER_HANDLES_FRACTION {
        pruned = s.timers.retain_and_heapify(|e| !e.item.bind(py).as_super().get().is_cancelled());
        core.shared.timer_cancelled_count.store(0, Ordering::Relaxed);
    } else {
        while s.timers.peek().is_some_and(|e| e.item.bind(py).as_super().get().is_cancelled()) {
            let _ = core.shared.timer_cancelled_count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| Some(c.saturating_sub(1)));
            pruned.extend(s.timers.pop());
        }
    }
    for e in &pruned {
        e.item.get().set_scheduled(false);
    }
    let timeout = if !s.ready.is_empty() || core.stopping.load(Ordering::Relaxed) {
        Some(Duration::ZERO)
    } else if let Some(first) = s.timers.peek() {
        // min(max(0, when - now), MAX) with Python's comparison semantics,
        // so a NaN deadline gives 0 instead of a panic.
        let wait = first.when.secs - python_now.unwrap_or_else(clock::monotonic);
        let secs = if wait > 0.0 { wait } else { 0.0 };
        let secs = if MAXIMUM_SELECT_TIMEOUT < secs { MAXIMUM_SELECT_TIMEOUT } else { secs };
        Some(Duration::from_secs_f64(secs))
    } else {
        None
    };
    s.polling = timeout != Some(Duration::ZERO);
    s.wake_sent = false;
    drop(s);
    // Released only now that no lock is held: finalizers may run Python code.
    drop(pruned);
    Ok(timeout)
}

/// Move the timers whose deadline has come (within the clock's resolution)
/// to the ready queue.
fn queue_due_timers(slf: &Bound<'_, LoopCore>) -> PyResult<()> {
    let (py, core) = (slf.py(), slf.get());
    let end_time = time_source::now(slf)? + core.clock_resolution;
    let mut s = lock(&core.sched);
    // `if handle._when >= end_time: break`, NaN deadlines included.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    while s.timers.peek().is_some_and(|e| !(e.when.secs >= end_time)) {
        let Some(entry) = s.timers.pop() else { break };
        entry.item.get().set_scheduled(false);
        let handle = entry.item.into_bound(py).into_super().unbind();
        s.ready.push_back(Ready::Native(handle));
    }
    Ok(())
}

/// Run the callbacks that are ready now; those they schedule wait for the
/// next iteration. They are taken off the queue in one go; an exception that
/// escapes a handle (SystemExit, KeyboardInterrupt) puts the ones not yet run
/// back at the front, so the queue is left as asyncio leaves it.
fn run_ready(slf: &Bound<'_, LoopCore>, batch: &mut VecDeque<Ready>) -> PyResult<()> {
    let core = slf.get();
    {
        let mut s = lock(&core.sched);
        std::mem::swap(&mut s.ready, batch);
        s.foreign_queued = 0;
    }
    let result = run_batch(slf, batch);
    if !batch.is_empty() {
        let mut s = lock(&core.sched);
        s.foreign_queued += batch.iter().filter(|r| matches!(r, Ready::Foreign(_))).count();
        // What the batch's callbacks scheduled goes after what they left.
        let scheduled = std::mem::take(&mut s.ready);
        s.ready = std::mem::take(batch);
        s.ready.extend(scheduled);
    }
    result
}

fn run_batch(slf: &Bound<'_, LoopCore>, batch: &mut VecDeque<Ready>) -> PyResult<()> {
    let py = slf.py();
    let core = slf.get();
    while let Some(item) = batch.pop_front() {
        let handle = match item {
            Ready::Native(h) => {
                let h = h.into_bound(py);
                if h.get().is_cancelled() {
                    continue;
                }
                if !core.debug() {
                    h.get().run(h.as_any(), true)?;
                    continue;
                }
                h.into_any()
            }
            Ready::Foreign(h) => {
                let h = h.into_bound(py);
                if h.getattr(pyo3::intern!(py, "_cancelled"))?.is_truthy()? {
                    continue;
                }
                h
            }
        };
        if core.debug() {
            run_timed(slf, &handle)?;
        } else {
            run_handle(&handle, true)?;
        }
    }
    Ok(())
}

fn run_handle(handle: &Bound<'_, PyAny>, release: bool) -> PyResult<()> {
    match handle.cast::<Handle>() {
        Ok(h) => h.get().run(handle, release),
        Err(_) => handle.call_method0(pyo3::intern!(handle.py(), "_run")).map(drop),
    }
}

/// Debug mode: remember the current handle and warn about slow callbacks.
fn run_timed(slf: &Bound<'_, LoopCore>, handle: &Bound<'_, PyAny>) -> PyResult<()> {
    let core = slf.get();
    let previous = lock(&core.current_handle).replace(handle.clone().unbind());
    drop(previous);
    // (a replaced `time` that raises still gets the cleanup below)
    let result = time_source::now(slf).and_then(|t0| {
        run_handle(handle, false)?;
        let dt = time_source::now(slf)? - t0;
        // (compared in Python: the attribute may be any object, as in asyncio)
        if dt.into_pyobject(slf.py())?.ge(core.slow_callback_duration(slf.py()))? {
            pyhelpers::warn_slow_callback(slf.py(), handle, dt)?;
        }
        Ok(())
    });
    if let Ok(h) = handle.cast::<Handle>() {
        h.get().release(false);
    }
    let current = lock(&core.current_handle).take();
    drop(current);
    result
}
