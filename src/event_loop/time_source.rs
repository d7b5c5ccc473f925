//! Where the loop reads its clock. Normally the monotonic clock directly;
//! but asyncio's scheduler reads `self.time()`, and tests (aiohttp's, with
//! `mock.patch.object(loop, "time")`) or subclasses replace that method to
//! move time. While `time` is replaced on the instance or the class, the
//! loop calls it, as the standard loop does.

use std::sync::atomic::Ordering;

use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyString};

use super::LoopCore;
use crate::clock;

/// Re-check whether `time` is replaced, after `slf.time` was set
/// (`instance_attr`) or deleted, or when the loop is created.
pub fn refresh(slf: &Bound<'_, LoopCore>, instance_attr: bool) -> PyResult<()> {
    let py = slf.py();
    let name = pyo3::intern!(py, "time");
    let ours = py.get_type::<LoopCore>().getattr(name)?;
    let replaced = instance_attr || !slf.get_type().getattr(name)?.is(&ours);
    slf.get().python_time.store(replaced, Ordering::Relaxed);
    Ok(())
}

/// Whether setting or deleting attribute `name` may change the time source.
pub fn is_time_attr(name: &Bound<'_, PyString>) -> bool {
    name.to_str().is_ok_and(|n| n == "time")
}

/// `self.time()`: a float of seconds.
pub fn now(slf: &Bound<'_, LoopCore>) -> PyResult<f64> {
    if !slf.get().python_time.load(Ordering::Relaxed) {
        return Ok(clock::monotonic());
    }
    slf.call_method0(pyo3::intern!(slf.py(), "time"))?.extract()
}

/// `self.time() + delay` as asyncio's `call_later` computes it: the value
/// and, when it is not a plain float, the object itself.
pub fn after<'py>(slf: &Bound<'py, LoopCore>, delay: &Bound<'py, PyAny>) -> PyResult<(f64, Option<Bound<'py, PyAny>>)> {
    let py = slf.py();
    let now = if slf.get().python_time.load(Ordering::Relaxed) {
        slf.call_method0(pyo3::intern!(py, "time"))?
    } else {
        match delay.extract::<f64>() {
            Ok(d) => return Ok((clock::monotonic() + d, None)),
            Err(_) => PyFloat::new(py, clock::monotonic()).into_any(),
        }
    };
    // Let Python raise exactly what `loop.time() + delay` raises.
    let when = now.add(delay)?;
    Ok((when.extract()?, (!when.is_exact_instance_of::<PyFloat>()).then_some(when)))
}
