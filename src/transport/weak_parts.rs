//! What the methods of `weakref.WeakValueDictionary` and `weakref.WeakSet`
//! work on: `data` (the dict or set of weak references), `_remove` (the
//! callback each reference gets) and `_pending_removals`. Their `__init__`
//! sets these once and no method assigns them again, so they are looked up
//! once per container, not on each of the per-connection steps that
//! ferroloop does for the loop's transport registry and a server's clients.

use std::sync::{Mutex, PoisonError};

use pyo3::intern;
use pyo3::prelude::*;

pub struct WeakParts {
    /// The container, kept so that its address is not reused by another.
    container: Py<PyAny>,
    pub data: Py<PyAny>,
    pub remove: Py<PyAny>,
    pub pending_removals: Py<PyAny>,
}

impl WeakParts {
    fn clone_ref(&self, py: Python<'_>) -> Self {
        WeakParts {
            container: self.container.clone_ref(py),
            data: self.data.clone_ref(py),
            remove: self.remove.clone_ref(py),
            pending_removals: self.pending_removals.clone_ref(py),
        }
    }
}

/// The parts of the last container seen at one place in the code (a loop
/// registers all its transports in one registry, a server's connections
/// join one set of clients).
pub struct LastWeakParts(Mutex<Option<WeakParts>>);

impl Default for LastWeakParts {
    fn default() -> Self {
        Self::new()
    }
}

impl LastWeakParts {
    pub const fn new() -> Self {
        LastWeakParts(Mutex::new(None))
    }

    /// `container`'s parts, looked up unless it is the last one seen here.
    pub fn of(&self, container: &Bound<'_, PyAny>) -> PyResult<WeakParts> {
        let py = container.py();
        let last = || self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(parts) = last().as_ref().filter(|parts| parts.container.is(container)) {
            return Ok(parts.clone_ref(py));
        }
        let parts = WeakParts {
            container: container.clone().unbind(),
            data: container.getattr(intern!(py, "data"))?.unbind(),
            remove: container.getattr(intern!(py, "_remove"))?.unbind(),
            pending_removals: container.getattr(intern!(py, "_pending_removals"))?.unbind(),
        };
        let replaced = last().replace(parts.clone_ref(py));
        drop(replaced); // (with the lock released)
        Ok(parts)
    }
}
