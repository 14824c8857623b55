//! Long-polls waiting for an order's decision, woken one order at a time:
//! a decision wakes only the readers of that order, not every reader (a
//! broadcast of every decision to every reader costs each decision as many
//! wake-ups as there are readers). A decision made here hands its readers
//! the decided order, so they need not read it again; one heard from
//! another replica wakes them to read it.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::oneshot;
use txlab_api::order::OrderView;
use uuid::Uuid;

/// What wakes a reader: the decided order, when the decision was made here.
pub type WakeUp = Option<OrderView>;

#[derive(Default)]
pub struct Waiters(Mutex<HashMap<Uuid, Vec<oneshot::Sender<WakeUp>>>>);

impl Waiters {
    /// A wake-up for the next decision of `id`. Subscribe before reading
    /// the order, so a decision between the read and the wait is not missed.
    pub fn wait(&self, id: Uuid) -> oneshot::Receiver<WakeUp> {
        let (tx, rx) = oneshot::channel();
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.entry(id).or_default();
        // Readers that gave up (timed out) leave closed senders behind.
        list.retain(|s| !s.is_closed());
        list.push(tx);
        rx
    }

    /// Wakes every reader waiting for `id`, with the decided order if known.
    pub fn wake(&self, id: Uuid, decided: Option<&OrderView>) {
        let woken = self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        for tx in woken.into_iter().flatten() {
            let _ = tx.send(decided.cloned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_decision_wakes_its_own_readers_only() {
        let w = Waiters::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let (mut ra1, mut ra2, mut rb) = (w.wait(a), w.wait(a), w.wait(b));
        w.wake(a, None);
        assert_eq!((ra1.try_recv(), ra2.try_recv()), (Ok(None), Ok(None)));
        assert!(rb.try_recv().is_err(), "b is not decided");
        drop(rb);
        let _again = w.wait(b);
        assert_eq!(
            w.0.lock().unwrap()[&b].len(),
            1,
            "the abandoned reader was pruned"
        );
    }
}
