//! Load shedding: the order service takes on a bounded number of open
//! (undecided) orders and answers 503 `overloaded` beyond it, so an
//! overload makes the excess fail fast instead of queueing every order
//! behind it — the queue, and with it the latency of the orders that are
//! taken, stays bounded, and it drains within seconds once the overload ends.
//!
//! The bound is [`QUEUE_S`] seconds of work at the recent decision rate
//! (the highest one-second rate of the last [`PEAK_WINDOW`]), at least
//! [`FLOOR`] and at most `MAX_OPEN_ORDERS`. A fixed count drained slowly
//! for the slower methods: 500 orders took tcc and twopc 7–9 s at half
//! their knee. The peak over a window, not the latest rate, keeps a brief
//! stall (a participant restarting) from shrinking the bound while orders
//! wait for it.
//!
//! The open count is read from the database every [`RECOUNT`] (so it
//! follows resets, restarts and decisions made anywhere), plus the orders
//! admitted here since that count. Decisions are heard from every replica
//! through the drivers' wake-ups, so each replica's bound follows the
//! whole service's rate.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::watch;
use txlab_api::order::OrderState;

/// How often the open orders are counted and the bound is set again.
const RECOUNT: Duration = Duration::from_millis(200);
/// Seconds of work at the recent decision rate that may wait open.
const QUEUE_S: f64 = 2.0;
/// The bound when decisions are few or unknown (a cold start, a stall).
const FLOOR: u64 = 200;
/// How far back the decision rate's peak is taken from.
const PEAK_WINDOW: Duration = Duration::from_secs(10);
/// The span each decision rate is measured over.
const RATE_SPAN: Duration = Duration::from_secs(1);

pub struct Admission {
    /// `MAX_OPEN_ORDERS`: the bound never rises above it.
    max: u64,
    /// The bound in force.
    limit: AtomicU64,
    counted: AtomicU64,
    admitted_since: AtomicU64,
    /// Decisions heard so far, from every replica.
    decided: AtomicU64,
}

impl Admission {
    pub fn new(max: u64) -> Admission {
        Admission {
            max,
            limit: AtomicU64::new(bound(max, 0.0)),
            counted: AtomicU64::new(0),
            admitted_since: AtomicU64::new(0),
            decided: AtomicU64::new(0),
        }
    }

    /// One order decided, by this replica or another.
    pub fn heard_decision(&self) {
        self.decided.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes on one more order, or says how many are open.
    pub fn admit(&self) -> Result<(), u64> {
        let since = self.admitted_since.fetch_add(1, Ordering::Relaxed);
        let open = self.counted.load(Ordering::Relaxed) + since;
        if open >= self.limit() {
            self.admitted_since.fetch_sub(1, Ordering::Relaxed);
            return Err(open);
        }
        Ok(())
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    fn recounted(&self, open: u64) {
        self.counted.store(open, Ordering::Relaxed);
        self.admitted_since.store(0, Ordering::Relaxed);
    }

    /// Counts the open orders and sets the bound every [`RECOUNT`] until `stop`.
    pub async fn recount(&self, pool: PgPool, stop: watch::Receiver<bool>) {
        let stopped = crate::stopped(stop);
        tokio::pin!(stopped);
        let mut rate = PeakRate::default();
        loop {
            let peak = rate.observe(Instant::now(), self.decided.load(Ordering::Relaxed));
            self.limit.store(bound(self.max, peak), Ordering::Relaxed);
            let counted: sqlx::Result<i64> =
                sqlx::query_scalar("SELECT count(*) FROM orders WHERE state = ANY($1)")
                    .bind(OrderState::texts(&OrderState::OPEN))
                    .fetch_one(&pool)
                    .await;
            match counted {
                Ok(n) => self.recounted(n.max(0) as u64),
                Err(e) => tracing::warn!(error = %e, "counting open orders failed"),
            }
            tokio::select! {
                _ = &mut stopped => return,
                _ = tokio::time::sleep(RECOUNT) => {}
            }
        }
    }
}

/// The open orders to take on at a peak decision rate of `per_s`.
fn bound(max: u64, per_s: f64) -> u64 {
    ((per_s * QUEUE_S).ceil() as u64).max(FLOOR).min(max)
}

/// The highest decision rate over [`RATE_SPAN`] within the last [`PEAK_WINDOW`].
#[derive(Default)]
struct PeakRate {
    /// (when, decisions heard by then), oldest first, [`PEAK_WINDOW`] + [`RATE_SPAN`] long.
    counts: VecDeque<(Instant, u64)>,
    /// (when, rate over the span ending then), oldest first.
    rates: VecDeque<(Instant, f64)>,
}

impl PeakRate {
    fn observe(&mut self, now: Instant, decided: u64) -> f64 {
        self.counts.push_back((now, decided));
        while self
            .counts
            .get(1)
            .is_some_and(|(t, _)| now.duration_since(*t) >= RATE_SPAN)
        {
            self.counts.pop_front();
        }
        if let Some(&(then, before)) = self.counts.front() {
            let span = now.duration_since(then);
            if span >= RATE_SPAN {
                self.rates
                    .push_back((now, decided.saturating_sub(before) as f64 / span.as_secs_f64()));
            }
        }
        while self
            .rates
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > PEAK_WINDOW)
        {
            self.rates.pop_front();
        }
        self.rates.iter().map(|(_, r)| *r).fold(0.0, f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_then_refuses_until_a_recount_frees_room() {
        let a = Admission::new(3);
        a.recounted(1);
        assert_eq!((a.admit(), a.admit()), (Ok(()), Ok(())));
        assert_eq!(a.admit(), Err(3));
        assert_eq!(a.admit(), Err(3), "a refusal takes nothing");
        a.recounted(0);
        assert_eq!(a.admit(), Ok(()));
    }

    #[test]
    fn the_bound_is_two_seconds_of_decisions_between_the_floor_and_the_maximum() {
        assert_eq!(bound(500, 0.0), FLOOR);
        assert_eq!(bound(500, 119.0), 238);
        assert_eq!(bound(500, 400.0), 500);
        assert_eq!(bound(5, 119.0), 5, "MAX_OPEN_ORDERS below the floor wins");
    }

    #[test]
    fn the_rate_is_the_peak_of_the_last_ten_seconds() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut r = PeakRate::default();
        // 100 decisions a second for 3 s, read every 200 ms.
        let mut peak = 0.0;
        for i in 0..=15 {
            peak = r.observe(at(i * 200), i * 20);
        }
        assert!((peak - 100.0).abs() < 1e-9, "{peak}");
        // A stall: no decisions for 5 s. The bound holds at the peak.
        for i in 16..=40 {
            peak = r.observe(at(i * 200), 300);
        }
        assert!((peak - 100.0).abs() < 1e-9, "{peak}");
        // Still stalled 11 s after the last decision (the last span that
        // counted it ended 0.8 s after it): the peak has aged out.
        for i in 41..=70 {
            peak = r.observe(at(i * 200), 300);
        }
        assert_eq!(peak, 0.0);
    }
}
