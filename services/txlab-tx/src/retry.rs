//! Exponential backoff with "equal jitter": the delay before attempt `n` is
//! half of `min(cap, base·2ⁿ)` plus a random share of the other half. The
//! jitter spreads retries of many callers apart; the fixed half keeps a
//! floor so a struggling service is not hammered (see the AWS Architecture
//! Blog post "Exponential Backoff And Jitter", 2015).

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    /// Attempts before giving up; `None` retries for ever (compensations).
    pub max_attempts: Option<u32>,
}

impl Backoff {
    /// Forward steps: retries over about one to two seconds — long enough
    /// to ride out a participant's restart — then the outcome counts as unknown.
    pub const FORWARD: Backoff = Backoff {
        base: Duration::from_millis(20),
        cap: Duration::from_millis(500),
        max_attempts: Some(7),
    };

    /// Compensations must eventually succeed, so they never give up.
    pub const UNTIL_DONE: Backoff = Backoff {
        base: Duration::from_millis(50),
        cap: Duration::from_secs(2),
        max_attempts: None,
    };

    /// Delay before retry number `attempt` (1 is the first retry).
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let ceiling = exp.min(self.cap);
        let half = ceiling / 2;
        half + half.mul_f64(rng.gen::<f64>())
    }

    /// Whether another attempt is allowed after `attempts` have failed.
    pub fn allows(&self, attempts: u32) -> bool {
        self.max_attempts.is_none_or(|max| attempts < max)
    }
}

/// The result of one attempt of a retried operation.
pub enum Attempt<T, E> {
    Done(T),
    /// Final: retrying would not change the answer.
    Fail(E),
    /// Transient: worth another try.
    Retry(E),
}

/// Runs `op` until it is done, fails finally, or the policy gives up; the
/// last transient error is returned in that case. `on_retry` sees each
/// transient error (for logs and counters).
pub async fn retry<T, E, F, Fut>(
    policy: Backoff,
    mut op: F,
    mut on_retry: impl FnMut(u32, &E),
) -> Result<T, E>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Attempt<T, E>>,
{
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match op(attempt).await {
            Attempt::Done(v) => return Ok(v),
            Attempt::Fail(e) => return Err(e),
            Attempt::Retry(e) => {
                if !policy.allows(attempt) {
                    return Err(e);
                }
                on_retry(attempt, &e);
                let delay = policy.delay(attempt, &mut rand::thread_rng());
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, SeedableRng};

    #[test]
    fn delays_grow_then_stay_under_the_cap() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            max_attempts: None,
        };
        let mut rng = SmallRng::seed_from_u64(7);
        for attempt in 1..30 {
            let ceiling = Duration::from_millis(100)
                .saturating_mul(1 << (attempt - 1).min(20))
                .min(Duration::from_secs(1));
            let d = b.delay(attempt, &mut rng);
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "attempt {attempt}: {d:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
        }
    }

    #[test]
    fn attempt_limit() {
        assert!(Backoff::FORWARD.allows(6));
        assert!(!Backoff::FORWARD.allows(7));
        assert!(Backoff::UNTIL_DONE.allows(u32::MAX - 1));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_and_stops_at_the_limit() {
        let started = tokio::time::Instant::now();
        let mut seen = Vec::new();
        let out: Result<(), &str> = retry(
            Backoff::FORWARD,
            |_| async { Attempt::Retry("503") },
            |n, _| seen.push(n),
        )
        .await;
        assert_eq!(out, Err("503"));
        assert_eq!(seen, vec![1, 2, 3, 4, 5, 6]);
        // Six sleeps, each at least half its ceiling: 10+20+40+80+160+250 ms.
        assert!(started.elapsed() >= Duration::from_millis(560));
    }

    #[tokio::test(start_paused = true)]
    async fn final_failures_are_not_retried_and_success_ends_the_loop() {
        let mut calls = 0;
        let out: Result<u32, &str> = retry(
            Backoff::UNTIL_DONE,
            |_| {
                calls += 1;
                async { Attempt::Fail("422") }
            },
            |_, _| {},
        )
        .await;
        assert_eq!((out, calls), (Err("422"), 1));

        let out: Result<u32, &str> = retry(
            Backoff::UNTIL_DONE,
            |n| async move {
                if n < 3 {
                    Attempt::Retry("503")
                } else {
                    Attempt::Done(n)
                }
            },
            |_, _| {},
        )
        .await;
        assert_eq!(out, Ok(3));
    }
}
