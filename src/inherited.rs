//! `Inherited`: how `ferroloop.Loop` takes a method of the standard loop
//! (`ferroloop/_loop.py`, `_reuse`). Looked up on that class at each access,
//! as inheritance would do, so a patch of, say, `asyncio.BaseEventLoop.
//! create_connection` (libraries' tests do this) reaches ferroloop too.
//! In Rust because every call of a reused method (create_connection makes
//! about ten) pays for the lookup.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyFunction, PyString};

/// `types.MethodType`: binds a function to an object, as `function.__get__` does.
static METHOD_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

#[pyclass(module = "ferroloop._ferroloop", frozen)]
pub struct Inherited {
    name: Py<PyString>,
    /// The class the method is looked up on.
    source: Py<PyAny>,
}

#[pymethods]
impl Inherited {
    #[new]
    fn new(name: Bound<'_, PyString>, source: Bound<'_, PyAny>) -> Self {
        Inherited { name: name.unbind(), source: source.unbind() }
    }

    /// `getattr(source, name)`, bound to `obj` as the class attribute it is
    /// would be (a function becomes a method; a staticmethod, classmethod or
    /// other descriptor binds its own way; anything else is returned as is).
    fn __get__<'py>(&self, py: Python<'py>, obj: Option<Bound<'py, PyAny>>, owner: Option<Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        let method = self.source.bind(py).getattr(self.name.bind(py))?;
        let Some(obj) = obj.filter(|o| !o.is_none()) else { return Ok(method) };
        if method.is_instance_of::<PyFunction>() {
            let method_type = METHOD_TYPE.get_or_try_init(py, || Ok::<_, PyErr>(py.import("types")?.getattr("MethodType")?.unbind()))?;
            return method_type.bind(py).call1((method, obj));
        }
        match method.get_type().getattr(pyo3::intern!(py, "__get__")) {
            Ok(bind) => bind.call1((&method, obj, owner)),
            Err(_) => Ok(method),
        }
    }

    fn __traverse__(&self, visit: pyo3::gc::PyVisit<'_>) -> Result<(), pyo3::gc::PyTraverseError> {
        visit.call(&self.source)
    }
}
