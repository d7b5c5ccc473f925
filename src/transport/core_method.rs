//! How a transport's Python object takes its Rust core's methods as its
//! own: `CoreMethod` is a class attribute that, on first use on an object,
//! binds the core's method (`obj._core.<name>`) and keeps it as the
//! object's own attribute, which later lookups find before the class
//! (methods called about once per connection are bound at each use). So
//! `transport.write(data)` calls Rust with no Python frame in between, and
//! a connection pays only for the methods it uses (a short-lived server
//! connection uses three or four of about fifteen). On the class,
//! `Class.method(obj, ...)` gets a plain Python function that delegates.

use pyo3::prelude::*;
use pyo3::types::PyString;

#[pyclass(module = "ferroloop._ferroloop", frozen)]
pub struct CoreMethod {
    name: Py<PyString>,
    /// What the class attribute is when looked up on the class.
    unbound: Py<PyAny>,
    /// Whether the object keeps the bound method (false for methods called
    /// about once per connection).
    keep: bool,
    /// The class's `_core` slot (a member descriptor), read directly; None
    /// for a class that keeps `_core` in the object's dict.
    core_slot: Option<Py<PyAny>>,
}

#[pymethods]
impl CoreMethod {
    #[new]
    #[pyo3(signature = (name, unbound, keep, core_slot=None))]
    fn new(name: Bound<'_, PyString>, unbound: Bound<'_, PyAny>, keep: bool, core_slot: Option<Bound<'_, PyAny>>) -> Self {
        CoreMethod { name: name.unbind(), unbound: unbound.unbind(), keep, core_slot: core_slot.map(Bound::unbind) }
    }

    /// A non-data descriptor (no `__set__`): the object's own attribute, once
    /// cached, takes precedence, as does one the object's code assigns.
    fn __get__(&self, py: Python<'_>, obj: Option<Bound<'_, PyAny>>, _owner: Option<Bound<'_, PyAny>>) -> PyResult<Py<PyAny>> {
        let Some(obj) = obj.filter(|o| !o.is_none()) else { return Ok(self.unbound.clone_ref(py)) };
        let name = self.name.bind(py);
        let core = match &self.core_slot {
            Some(slot) => crate::pyhelpers::descriptor_get(slot.bind(py), &obj)?,
            None => obj.getattr(pyo3::intern!(py, "_core"))?,
        };
        let bound = core.getattr(name)?;
        // (set as an attribute: the class attribute is a non-data descriptor,
        // so this stores into the object's own values without making it
        // a `__dict__`)
        if self.keep {
            obj.setattr(name, &bound)?;
        }
        Ok(bound.unbind())
    }

    fn __traverse__(&self, visit: pyo3::gc::PyVisit<'_>) -> Result<(), pyo3::gc::PyTraverseError> {
        visit.call(&self.unbound)?;
        visit.call(&self.core_slot)
    }
}
