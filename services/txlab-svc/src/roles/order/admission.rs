//! Load shedding: the order service takes on at most `MAX_OPEN_ORDERS`
//! open (undecided) orders and answers 503 `overloaded` beyond that, so an
//! overload makes the excess fail fast instead of queueing every order
//! behind it — the queue, and with it the latency of the orders that are
//! taken, stays bounded, and it drains within seconds once the overload ends.
//!
//! The open count is read from the database every [`RECOUNT`] (so it
//! follows resets, restarts and decisions made anywhere), plus the orders
//! admitted here since that count.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use txlab_api::order::OrderState;

/// How often the open orders are counted.
const RECOUNT: Duration = Duration::from_millis(200);

pub struct Admission {
    limit: u64,
    counted: AtomicU64,
    admitted_since: AtomicU64,
}

impl Admission {
    pub fn new(limit: u64) -> Admission {
        Admission {
            limit,
            counted: AtomicU64::new(0),
            admitted_since: AtomicU64::new(0),
        }
    }

    /// Takes on one more order, or says how many are open.
    pub fn admit(&self) -> Result<(), u64> {
        let since = self.admitted_since.fetch_add(1, Ordering::Relaxed);
        let open = self.counted.load(Ordering::Relaxed) + since;
        if open >= self.limit {
            self.admitted_since.fetch_sub(1, Ordering::Relaxed);
            return Err(open);
        }
        Ok(())
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn recounted(&self, open: u64) {
        self.counted.store(open, Ordering::Relaxed);
        self.admitted_since.store(0, Ordering::Relaxed);
    }

    /// Counts the open orders every [`RECOUNT`] until `stop`.
    pub async fn recount(&self, pool: PgPool, stop: watch::Receiver<bool>) {
        let stopped = crate::stopped(stop);
        tokio::pin!(stopped);
        loop {
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
}
