//! Socket addresses as the socket module returns them (its
//! `makesockaddr`), for the families the transports make themselves:
//! `accept()`'s peer address and `getsockname()` of a plain socket.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::RawFd;
use std::sync::{Mutex, PoisonError};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};

/// The families [`python_address`] formats.
pub const FAMILIES: [i32; 3] = [libc::AF_INET, libc::AF_INET6, libc::AF_UNIX];

/// `getsockname(2)` into a zeroed buffer, as the socket module calls it.
pub fn local_address(fd: RawFd) -> io::Result<(libc::sockaddr_storage, libc::socklen_t)> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` is valid for writes of `len` bytes and `len` is a
    // valid in/out length; a bad fd is an error return, not UB.
    if unsafe { libc::getsockname(fd, storage.as_mut_ptr().cast(), &mut len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zero-initialised, then filled in by the kernel up to `len`.
    Ok((unsafe { storage.assume_init() }, len))
}

/// An IPv4 address as inet_ntop writes it, "a.b.c.d", without the
/// sprintf inet_ntop formats it with.
fn ipv4_text(octets: [u8; 4], text: &mut [u8; 15]) -> &str {
    let mut len = 0;
    for (i, octet) in octets.into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        let digits = [octet / 100, octet / 10 % 10, octet % 10];
        let skip = if octet >= 100 { 0 } else if octet >= 10 { 1 } else { 2 };
        for d in &digits[skip..] {
            text[len] = b'0' + d;
            len += 1;
        }
    }
    // (ASCII digits and dots only)
    std::str::from_utf8(&text[..len]).unwrap_or_default()
}

/// The `str` of an IPv4 host, kept for the hosts seen last: a server sees
/// the same few again and again (its own address, its clients'), and a
/// new `str` cost several hundred instructions, twice per connection.
fn ipv4_host<'py>(py: Python<'py>, octets: [u8; 4]) -> Bound<'py, PyString> {
    /// An address and its `str`.
    type Host = ([u8; 4], Py<PyString>);
    /// Hosts by the low bits of their last octet.
    static HOSTS: Mutex<[Option<Host>; 8]> = Mutex::new([const { None }; 8]);
    let slot = usize::from(octets[3]) % 8;
    let hosts = || HOSTS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((seen, host)) = &hosts()[slot] {
        if *seen == octets {
            return host.bind(py).clone();
        }
    }
    let host = PyString::new(py, ipv4_text(octets, &mut [0; 15]));
    let replaced = hosts()[slot].replace((octets, host.clone().unbind()));
    drop(replaced); // (with the lock released)
    host
}

// The C library's own formatting of host addresses (the `libc` crate does
// not bind it): the socket module formats with it, and Rust's Ipv6Addr
// Display differs for some addresses (`::1.2.3.4`).
extern "C" {
    fn inet_ntop(af: libc::c_int, src: *const libc::c_void, dst: *mut libc::c_char, size: libc::socklen_t) -> *const libc::c_char;
}

/// INET6_ADDRSTRLEN: the longest text inet_ntop writes, with its NUL.
const ADDRESS_TEXT_SIZE: usize = 46;

/// `inet_ntop(3)` of an address of `family`, as the socket module formats hosts.
fn host_string<'py>(py: Python<'py>, family: i32, address: *const libc::c_void) -> PyResult<Bound<'py, PyString>> {
    let mut text = [0 as libc::c_char; ADDRESS_TEXT_SIZE];
    // SAFETY: `address` points to an in_addr/in6_addr matching `family`
    // inside a sockaddr the caller owns; `text` is large enough for either.
    let written = unsafe { inet_ntop(family, address, text.as_mut_ptr(), text.len() as libc::socklen_t) };
    if written.is_null() {
        return Err(io::Error::last_os_error().into());
    }
    // SAFETY: on success inet_ntop wrote a NUL-terminated string into `text`.
    let text = unsafe { std::ffi::CStr::from_ptr(text.as_ptr()) };
    Ok(PyString::new(py, &text.to_string_lossy()))
}

/// An address tuple (str and ints only, which hold no references) taken
/// off the cycle collector's list, as its first collection would do: a
/// connection's addresses then cost no collector time.
fn untracked(address: Bound<'_, PyTuple>) -> Bound<'_, PyAny> {
    // SAFETY: the tuple is a live GC object tracked since PyTuple_New; its
    // items are a str and ints, which can be in no reference cycle, so
    // untracking it is what CPython's `_PyTuple_MaybeUntrack` does.
    unsafe { ffi::PyObject_GC_UnTrack(address.as_ptr().cast()) };
    address.into_any()
}

/// The address as the socket module's `makesockaddr` returns it for these
/// families: `(host, port)`, `(host, port, flowinfo, scope_id)`, or a Unix
/// path (str, or bytes for Linux's abstract namespace).
pub fn python_address<'py>(py: Python<'py>, storage: &libc::sockaddr_storage, len: libc::socklen_t) -> PyResult<Bound<'py, PyAny>> {
    if len == 0 {
        return Ok(py.None().into_bound(py));
    }
    match storage.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in (ss_family says so) into
            // storage, which is large enough and suitably aligned for it.
            let a = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let host = ipv4_host(py, a.sin_addr.s_addr.to_ne_bytes());
            Ok(untracked(PyTuple::new(py, [host.into_any(), u16::from_be(a.sin_port).into_pyobject(py)?.into_any()])?))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for a sockaddr_in6.
            let a = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let host = host_string(py, libc::AF_INET6, (&a.sin6_addr as *const libc::in6_addr).cast())?;
            let port = u16::from_be(a.sin6_port).into_pyobject(py)?.into_any();
            let flowinfo = u32::from_be(a.sin6_flowinfo).into_pyobject(py)?.into_any();
            let scope_id = a.sin6_scope_id.into_pyobject(py)?.into_any();
            Ok(untracked(PyTuple::new(py, [host.into_any(), port, flowinfo, scope_id])?))
        }
        _ => {
            // AF_UNIX (the only other family callers pass).
            // SAFETY: as above, for a sockaddr_un.
            let a = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_un>() };
            // SAFETY: sun_path is a plain byte array of the struct.
            let path: &[u8] = unsafe { std::slice::from_raw_parts(a.sun_path.as_ptr().cast(), a.sun_path.len()) };
            let path_len = (len as usize).saturating_sub(std::mem::offset_of!(libc::sockaddr_un, sun_path)).min(path.len());
            if path_len > 0 && path[0] == 0 {
                return Ok(PyBytes::new(py, &path[..path_len]).into_any());
            }
            let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
            // SAFETY: `path[..end]` is valid for reads; the call returns a new
            // reference or NULL with an exception set.
            unsafe {
                let decoded = ffi::PyUnicode_DecodeFSDefaultAndSize(path.as_ptr().cast(), end as ffi::Py_ssize_t);
                Bound::from_owned_ptr_or_err(py, decoded)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_text_is_inet_ntop_text() {
        for octets in [[0, 0, 0, 0], [127, 0, 0, 1], [255, 255, 255, 255], [10, 9, 100, 99], [1, 20, 200, 3]] {
            assert_eq!(ipv4_text(octets, &mut [0; 15]), std::net::Ipv4Addr::from(octets).to_string());
        }
    }
}
