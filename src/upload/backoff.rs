//! Pauses between attempts at the store: full jitter over a capped exponential for an
//! ordinary failure, longer ones when the store throttled or refused. Used by the worker's
//! retry loop, its sink check and spill redelivery, and by the S3 sink's multipart aborts.

use std::time::Duration;

/// Delay before retry number `attempt` (1-based): full jitter over an exponential cap.
pub fn backoff(attempt: u32, base_ms: u64, max_ms: u64) -> Duration {
    let exp = base_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
    let cap = exp.min(max_ms).max(1);
    Duration::from_millis(fastrand::u64(0..=cap))
}

/// Delay before retry number `attempt` (1-based) after the store throttled the last attempt
/// (`429`, `503`, `SlowDown`): the store asked for fewer requests, so this waits as if two
/// attempts further along, with twice the cap (`2 × max_ms`), and with equal jitter instead of
/// full jitter (at least half of that cap), so a throttled attempt is never retried at once:
/// the first retry waits between `2 × base_ms` and `4 × base_ms`, where an ordinary one waits
/// up to `base_ms`.
pub fn throttled_backoff(attempt: u32, base_ms: u64, max_ms: u64) -> Duration {
    let exp = base_ms.saturating_mul(1u64 << attempt.saturating_add(1).min(20));
    let cap = exp.min(max_ms.saturating_mul(2)).max(2);
    let floor = cap / 2;
    Duration::from_millis(floor + fastrand::u64(0..=cap - floor))
}

/// Delay before attempt number `n` (1-based) at data the store refused for good (or that used
/// up `max_attempts`): full jitter over one second doubling up to `max_ms`. Long, because the
/// store will not change its mind soon (an operator has to fix a permission or a bucket), and
/// capped, so the data is stored within about `max_ms` of the store accepting again.
pub fn refused_backoff(n: u32, max_ms: u64) -> Duration {
    backoff(n, 1_000.min(max_ms), max_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        for attempt in 1..40 {
            let d = backoff(attempt, 50, 5_000);
            assert!(d <= Duration::from_millis(5_000));
        }
        for _ in 0..100 {
            assert!(backoff(1, 50, 5_000) <= Duration::from_millis(50));
            assert!(backoff(3, 50, 5_000) <= Duration::from_millis(200));
        }
        let distinct: std::collections::HashSet<_> =
            (0..50).map(|_| backoff(10, 50, 5_000)).collect();
        assert!(distinct.len() > 10, "full jitter spreads retries");
    }

    #[test]
    fn throttled_backoff_waits_longer_and_never_zero() {
        for _ in 0..100 {
            let d = throttled_backoff(1, 50, 5_000);
            assert!(d >= Duration::from_millis(100) && d <= Duration::from_millis(200));
            let d = throttled_backoff(3, 50, 5_000);
            assert!(d >= Duration::from_millis(400) && d <= Duration::from_millis(800));
        }
        for attempt in 1..40 {
            let d = throttled_backoff(attempt, 50, 5_000);
            assert!(d <= Duration::from_millis(10_000), "cap doubled: {d:?}");
            assert!(
                d >= backoff(1, 50, 50),
                "never below the first ordinary pause"
            );
        }
        assert!(throttled_backoff(30, 50, 5_000) >= Duration::from_millis(5_000));
        assert!(throttled_backoff(1, 1, 1) >= Duration::from_millis(1));
    }
}
