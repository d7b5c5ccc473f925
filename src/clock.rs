//! The loop's clock: `time.monotonic()` computed the way CPython computes it,
//! so `loop.time()` and `time.monotonic()` agree to the last bit.

/// Seconds on CLOCK_MONOTONIC, as CPython's `time.monotonic()` returns them
/// (integer nanoseconds converted to a double, then divided by 1e9).
pub fn monotonic() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes into the timespec we own; CLOCK_MONOTONIC
    // is always available on Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    #[allow(clippy::unnecessary_cast)] // (time_t and c_long are not i64 everywhere)
    let ns = ts.tv_sec as i64 * 1_000_000_000 + ts.tv_nsec as i64;
    if ns % 1_000_000_000 == 0 {
        (ns / 1_000_000_000) as f64
    } else {
        ns as f64 / 1e9
    }
}

/// Resolution of the clock, as `time.get_clock_info('monotonic').resolution`.
pub fn resolution() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: as above, clock_getres writes only into our timespec.
    unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_never_goes_back() {
        let mut last = monotonic();
        for _ in 0..1000 {
            let now = monotonic();
            assert!(now >= last);
            last = now;
        }
        assert!(resolution() > 0.0 && resolution() < 0.01);
    }
}
