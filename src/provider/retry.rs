//! When and how long to wait before trying a failed model call again.
//!
//! Only calls that failed before their stream began are retried: once text has been
//! shown, repeating the call would show it twice.

use std::time::Duration;

use super::{ProviderError, RetryNotice, StreamObserver};

/// How a provider retries: up to `max_attempts` calls in all, waiting `base`, then
/// twice as long each time (at most `max_delay`), with random jitter so that many
/// workers hitting the same rate limit do not retry in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            base: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

/// The attempts of one model call, for every provider alike (the HTTP ones and the
/// scripted one, so a test of retries sees what a real server's failures do): after
/// each failure, [`Attempts::after`] decides whether to try again, reports the retry
/// and waits out its delay.
pub struct Attempts {
    policy: RetryPolicy,
    made: u32,
}

impl Attempts {
    /// Before the first attempt.
    pub fn new(policy: RetryPolicy) -> Attempts {
        Attempts { policy, made: 1 }
    }

    /// After an attempt failed with `error` (and the server's `Retry-After`, if any):
    /// `Ok` once the wait before the next attempt is over, else the error to give up
    /// with: a fatal one as it is, a transient one saying why no retry follows.
    pub async fn after(
        &mut self,
        error: ProviderError,
        retry_after: Option<Duration>,
        observer: &mut dyn StreamObserver,
    ) -> Result<(), ProviderError> {
        let ProviderError::Transient { status, message } = error else {
            return Err(error);
        };
        if self.made >= self.policy.max_attempts {
            return Err(ProviderError::Transient {
                status,
                message: format!(
                    "{message} (gave up after {})",
                    crate::plural::count(u64::from(self.made), "attempt", "attempts")
                ),
            });
        }
        let Some(delay) = self.policy.delay(self.made + 1, retry_after, jitter()) else {
            return Err(ProviderError::Transient {
                status,
                message: format!(
                    "{message} (the server asks to wait {}s, longer than agentq waits)",
                    retry_after.map_or(0, |d| d.as_secs())
                ),
            });
        };
        self.made += 1;
        let notice = RetryNotice {
            attempt: self.made,
            delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            http_status: status,
            error: message,
        };
        observer
            .retry(&notice)
            .map_err(|_| ProviderError::Interrupted)?;
        sleep_unless_interrupted(delay, observer).await
    }
}

/// How often a wait checks whether to stop.
pub const CHECK_EVERY: Duration = Duration::from_millis(50);

/// Sleeps for `delay`, giving way as soon as the observer asks to stop.
async fn sleep_unless_interrupted(
    delay: Duration,
    observer: &mut dyn StreamObserver,
) -> Result<(), ProviderError> {
    let until = tokio::time::Instant::now() + delay;
    loop {
        if observer.interrupted() {
            return Err(ProviderError::Interrupted);
        }
        let now = tokio::time::Instant::now();
        if now >= until {
            return Ok(());
        }
        tokio::time::sleep((until - now).min(CHECK_EVERY)).await;
    }
}

/// The longest `Retry-After` waited for; a server asking for more is treated as down
/// for now, and the call fails at once (the execution can be continued later).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

impl RetryPolicy {
    /// The default policy, with the `max_attempts` of a definition if it sets one (at
    /// least 1: the call itself).
    pub fn with_max_attempts(max_attempts: Option<u32>) -> RetryPolicy {
        let mut policy = RetryPolicy::default();
        if let Some(attempts) = max_attempts {
            policy.max_attempts = attempts.max(1);
        }
        policy
    }

    /// The wait before attempt `next` (2 for the first retry), or `None` when the
    /// server asks for a longer wait than [`MAX_RETRY_AFTER`]. A server's `Retry-After`
    /// wins over the backoff; `jitter` is a number in [0, 1).
    pub fn delay(&self, next: u32, retry_after: Option<Duration>, jitter: f64) -> Option<Duration> {
        if let Some(after) = retry_after {
            return (after <= MAX_RETRY_AFTER).then_some(after);
        }
        let exponent = next.saturating_sub(2).min(20);
        let backoff = self.base.saturating_mul(1 << exponent).min(self.max_delay);
        // "Equal jitter": half fixed, half random, so the wait never collapses to zero.
        Some(backoff.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0)))
    }
}

/// The wait a response's `Retry-After` header asks for, if it has a readable one.
pub fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get("retry-after")?.to_str().ok()?;
    parse_retry_after(
        value,
        crate::time::Timestamp::from_system(std::time::SystemTime::now()).0,
    )
}

/// Parses a `Retry-After` value: seconds, or an HTTP date (relative to `now_ms`).
pub fn parse_retry_after(value: &str, now_ms: i64) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = parse_http_date(value)?;
    Some(Duration::from_millis(
        u64::try_from(at - now_ms).unwrap_or(0),
    ))
}

/// Parses the IMF-fixdate form of HTTP dates: `Sun, 06 Nov 1994 08:49:37 GMT`.
fn parse_http_date(value: &str) -> Option<i64> {
    let parts: Vec<&str> = value.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == month)? + 1;
    let text = format!("{year}-{month:02}-{:0>2}T{time}Z", day);
    crate::time::Timestamp::parse(&text).map(|t| t.0)
}

/// A number in [0, 1) that differs between processes and calls; good enough to spread
/// retries, not for anything that needs real randomness.
pub fn jitter() -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = STATE.load(Ordering::Relaxed);
    let mut x = if seed == 0 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        nanos ^ (u64::from(std::process::id()) << 32) | 1
    } else {
        seed
    };
    // xorshift64
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.store(x, Ordering::Relaxed);
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_between_half_and_all() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
        };
        assert_eq!(policy.delay(2, None, 1.0), Some(Duration::from_millis(100)));
        assert_eq!(policy.delay(3, None, 1.0), Some(Duration::from_millis(200)));
        assert_eq!(policy.delay(4, None, 0.0), Some(Duration::from_millis(200)));
        assert_eq!(
            policy.delay(9, None, 1.0),
            Some(Duration::from_millis(1000))
        );
    }

    #[test]
    fn retry_after_wins_unless_it_is_too_long() {
        let policy = RetryPolicy::default();
        assert_eq!(
            policy.delay(2, Some(Duration::from_secs(7)), 0.3),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            policy.delay(2, Some(Duration::from_secs(99_999)), 0.3),
            None,
            "gives up"
        );
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        assert_eq!(parse_retry_after("3", 0), Some(Duration::from_secs(3)));
        // 1994-11-06T08:49:37Z
        let at = 784_111_777_000;
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", at - 2_000),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", at + 5_000),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", 0), None);
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..1000 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }
}
