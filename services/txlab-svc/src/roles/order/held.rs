//! Results the order service has heard but not written yet (event-driven
//! methods). A participant's "applied" that cannot decide its order on its
//! own — payment's and inventory's in `saga_chor`, the first two of three
//! in `outbox` — is kept here with its consumer receipt and written in the
//! transaction of the order's next event, the one that decides it: one
//! commit per checkout instead of three.
//!
//! Nothing is lost by waiting: a held message is not done, so its
//! partition's stored offset stays before it and a crash delivers it
//! again. A result held longer than [`HOLD_LIMIT`] is written on its own,
//! so a slow or missing next event costs latency, not memory or offsets.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use txlab_api::Step;
use uuid::Uuid;

use crate::messaging::consumer::Receipt;

/// How long a result may wait for its order's next event.
pub const HOLD_LIMIT: Duration = Duration::from_secs(2);
/// At most this many orders with held results; beyond it results are
/// written as they come (a backlog this large is overload, not a checkout).
const MAX_ORDERS: usize = 2_000;
/// How long an order whose results are written is remembered as such.
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// One held "applied" event.
#[derive(Debug, Clone)]
pub struct HeldResult {
    pub event_id: Uuid,
    /// The cell the event belongs to (checked when it is written).
    pub epoch: String,
    pub step: Step,
    /// When the order service heard it (the time its mark keeps).
    pub heard_ms: i64,
    pub receipt: Receipt,
}

#[derive(Debug)]
struct Entry {
    results: Vec<HeldResult>,
    /// An event of this order took the written path: its later results
    /// are written too, since what is in the database may let them decide.
    written: bool,
    /// When the first result was held (or, once written, when it was).
    since: Instant,
}

impl Entry {
    fn new(written: bool) -> Entry {
        Entry {
            results: Vec::new(),
            written,
            since: Instant::now(),
        }
    }
}

/// The held results of every order, by order id.
#[derive(Debug, Default)]
pub struct Held {
    orders: Mutex<HashMap<Uuid, Entry>>,
}

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Entry>> {
        self.orders.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds `result` unless it must be written now: its order's results
    /// are already being written, it repeats one held (a redelivery), or
    /// `may_decide` says the steps applied so far, with it, could decide
    /// the order. Gives it back when it must be written now.
    pub fn hold(
        &self,
        order: Uuid,
        result: HeldResult,
        may_decide: impl FnOnce([bool; 3]) -> bool,
    ) -> Result<(), HeldResult> {
        let mut orders = self.lock();
        let entry = orders.get(&order);
        let held = entry.map_or(&[][..], |e| &e.results[..]);
        let must_write = match entry {
            Some(entry) => entry.written || held.iter().any(|r| r.event_id == result.event_id),
            None => orders.len() >= MAX_ORDERS,
        };
        let mut applied = [false; 3];
        for r in held.iter().chain([&result]) {
            applied[r.step.index()] = true;
        }
        if must_write || may_decide(applied) {
            return Err(result);
        }
        orders
            .entry(order)
            .or_insert_with(|| Entry::new(false))
            .results
            .push(result);
        Ok(())
    }

    /// Takes the order's held results to write them; its later results are
    /// written as they come.
    pub fn take(&self, order: Uuid) -> Vec<HeldResult> {
        let mut orders = self.lock();
        let entry = orders.entry(order).or_insert_with(|| Entry::new(true));
        entry.written = true;
        entry.since = Instant::now();
        std::mem::take(&mut entry.results)
    }

    /// Puts back results whose write failed (they are retried with the
    /// order's next event or when they are swept).
    pub fn restore(&self, order: Uuid, mut results: Vec<HeldResult>) {
        if results.is_empty() {
            return;
        }
        let mut orders = self.lock();
        let entry = orders.entry(order).or_insert_with(|| Entry::new(false));
        results.append(&mut entry.results);
        entry.results = results;
    }

    /// The order is decided: nothing of it is held any more.
    pub fn forget(&self, order: Uuid) {
        self.lock().remove(&order);
    }

    /// The orders with results held longer than `limit` (to be taken and
    /// written on their own); forgets orders written long ago and never
    /// decided here.
    pub fn overdue(&self, limit: Duration) -> Vec<Uuid> {
        let mut orders = self.lock();
        orders.retain(|_, e| !(e.written && e.results.is_empty() && e.since.elapsed() > FORGET_AFTER));
        orders
            .iter()
            .filter(|(_, e)| !e.results.is_empty() && e.since.elapsed() > limit)
            .map(|(id, _)| *id)
            .collect()
    }

    /// How many results are held right now.
    #[cfg(test)]
    fn results_held(&self) -> usize {
        self.lock().values().map(|e| e.results.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(step: Step, receipt: &Receipt) -> HeldResult {
        HeldResult {
            event_id: Uuid::new_v4(),
            epoch: "e".into(),
            step,
            heard_ms: 1,
            receipt: receipt.clone(),
        }
    }

    fn chor(applied: [bool; 3]) -> bool {
        txlab_tx::choreography::applied_may_decide(txlab_api::TxMode::SagaChor, applied)
    }

    #[test]
    fn results_that_cannot_decide_are_held_until_taken() {
        let held = Held::default();
        let receipt = Receipt::for_test();
        let order = Uuid::new_v4();
        let payment = result(Step::Payment, &receipt);
        assert!(held.hold(order, payment.clone(), chor).is_ok());
        assert!(
            held.hold(order, payment.clone(), chor).is_err(),
            "a redelivered copy is written, with the held one"
        );
        assert!(held.hold(order, result(Step::Inventory, &receipt), chor).is_ok());
        assert!(
            held.hold(order, result(Step::Shipping, &receipt), chor).is_err(),
            "shipping's may decide"
        );
        assert_eq!(held.results_held(), 2);
        let taken = held.take(order);
        assert_eq!(
            taken.iter().map(|r| r.step).collect::<Vec<_>>(),
            [Step::Payment, Step::Inventory]
        );
        assert!(
            held.hold(order, result(Step::Payment, &receipt), chor).is_err(),
            "once an order's results are written, the rest are too"
        );
        held.restore(order, taken);
        assert_eq!(held.results_held(), 2, "a failed write puts them back");
        held.forget(order);
        assert_eq!(held.results_held(), 0);
        assert!(held.hold(order, result(Step::Payment, &receipt), chor).is_ok());
    }

    #[test]
    fn overdue_results_are_taken_to_be_written() {
        let held = Held::default();
        let receipt = Receipt::for_test();
        let (late, early) = (Uuid::new_v4(), Uuid::new_v4());
        held.hold(late, result(Step::Payment, &receipt), chor).unwrap();
        assert!(held.overdue(Duration::from_secs(60)).is_empty());
        std::thread::sleep(Duration::from_millis(300));
        held.hold(early, result(Step::Payment, &receipt), chor).unwrap();
        assert_eq!(held.overdue(Duration::from_millis(150)), [late]);
        assert_eq!(held.take(late).len(), 1);
        assert!(
            held.hold(late, result(Step::Inventory, &receipt), chor).is_err(),
            "written on its own: the order's next results go the same way"
        );
        assert_eq!(held.results_held(), 1);
    }
}
