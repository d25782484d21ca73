//! Coarse time, for what needs no better than a few milliseconds: hyper's header-read
//! deadline, the arrival second a request's keys are dated by, and the spool's last good
//! write (readiness).
//!
//! `CLOCK_MONOTONIC_COARSE` and `CLOCK_REALTIME_COARSE` give the kernel's last tick (1–4 ms
//! old), read from the vDSO page; the precise clocks also read the CPU's time-stamp counter,
//! which took tens of ns per read on this project's VM, several times per request
//! (benches/results/2026-12-07-clock-reads.md).

use rustix::time::{clock_gettime, ClockId};
use std::time::{Duration, Instant};
#[cfg(test)]
use std::time::{SystemTime, UNIX_EPOCH};

/// Clock `id` as a `Duration` from its origin.
fn read(id: ClockId) -> Duration {
    let t = clock_gettime(id);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

fn monotonic_coarse() -> Duration {
    read(ClockId::MonotonicCoarse)
}

thread_local! {
    /// A precise `Instant` and the coarse monotonic clock, read together once per thread:
    /// both count from the same boot-time origin, so their difference is constant.
    static BASE: (Instant, Duration) = (Instant::now(), monotonic_coarse());
}

/// Now, to within the kernel's tick: an `Instant` that can be a tick early or late, and
/// never goes back.
pub fn coarse_now() -> Instant {
    BASE.with(|(at, coarse)| *at + monotonic_coarse().saturating_sub(*coarse))
}

/// Time since the Unix epoch, to within the kernel's tick.
fn realtime_coarse() -> Duration {
    read(ClockId::RealtimeCoarse)
}

/// Seconds since the Unix epoch, to within the kernel's tick.
pub fn coarse_unix_secs() -> u64 {
    realtime_coarse().as_secs()
}

/// Milliseconds since the Unix epoch, to within the kernel's tick (the spool's last good
/// write, stamped per durable request, for readiness).
pub fn coarse_unix_ms() -> u64 {
    u64::try_from(realtime_coarse().as_millis()).unwrap_or(u64::MAX)
}

/// Seconds since the Unix epoch from the precise clock (for comparisons).
#[cfg(test)]
fn unix_secs_precise() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_time_stays_within_a_few_ticks_of_the_precise_clocks_and_never_goes_back() {
        let mut last = coarse_now();
        for _ in 0..2_000 {
            let (coarse, precise) = (coarse_now(), Instant::now());
            let apart = if coarse > precise {
                coarse - precise
            } else {
                precise - coarse
            };
            assert!(apart < Duration::from_millis(50), "{apart:?} apart");
            assert!(coarse >= last, "went back");
            last = coarse;
            let (secs, precise_secs) = (coarse_unix_secs(), unix_secs_precise());
            assert!(
                secs.abs_diff(precise_secs) <= 1,
                "{secs} and {precise_secs}"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}
