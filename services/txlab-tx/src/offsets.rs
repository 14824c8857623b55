//! Offset bookkeeping of a Kafka consumer that handles messages
//! concurrently: an offset may be committed only once every message before
//! it in its partition is done, so a crash redelivers anything unfinished.

use std::collections::{BTreeMap, BTreeSet};

/// Which offsets of each partition are still being handled.
#[derive(Debug, Default)]
pub struct Progress {
    in_flight: BTreeMap<i32, BTreeSet<i64>>,
    next: BTreeMap<i32, i64>,
    committed: BTreeMap<i32, i64>,
}

impl Progress {
    /// Records a received message; returns the offset expected instead
    /// when messages were skipped (Kafka offsets of this topic are dense).
    pub fn started(&mut self, partition: i32, offset: i64) -> Option<i64> {
        self.in_flight.entry(partition).or_default().insert(offset);
        let gap = self
            .next
            .get(&partition)
            .copied()
            .filter(|expected| offset > *expected);
        let next = self.next.entry(partition).or_insert(offset + 1);
        *next = (*next).max(offset + 1);
        gap
    }

    /// Where the messages of `partition` start (its assigned offset).
    pub fn resume_at(&mut self, partition: i32, next: i64) {
        self.next.insert(partition, next);
    }

    /// Forgets a message that will be fetched again from `expected`.
    pub fn rewind(&mut self, partition: i32, offset: i64, expected: i64) {
        if let Some(set) = self.in_flight.get_mut(&partition) {
            set.remove(&offset);
        }
        self.next.insert(partition, expected);
    }

    /// Marks `offset` done; returns the offset to commit for its partition
    /// if it moved: the lowest one still in flight, or past the last seen.
    pub fn finished(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let in_flight = self.in_flight.entry(partition).or_default();
        in_flight.remove(&offset);
        let commit = in_flight
            .first()
            .copied()
            .unwrap_or_else(|| self.next.get(&partition).copied().unwrap_or(offset + 1));
        let last = self.committed.entry(partition).or_insert(-1);
        (commit > *last).then(|| {
            *last = commit;
            commit
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Progress;

    #[test]
    fn offsets_are_committed_only_past_finished_runs() {
        let mut p = Progress::default();
        for o in 10..14 {
            assert_eq!(p.started(0, o), None);
        }
        // 11 and 12 finish first: 10 is still in flight, nothing may be committed past it.
        assert_eq!(p.finished(0, 11), Some(10));
        assert_eq!(p.finished(0, 12), None);
        // 10 finishes: everything up to 13 (still running) is safe.
        assert_eq!(p.finished(0, 10), Some(13));
        assert_eq!(p.finished(0, 13), Some(14));
        // Partitions are independent; a jump is reported.
        assert_eq!(p.started(1, 5), None);
        assert_eq!(p.started(1, 8), Some(6));
        p.rewind(1, 8, 6);
        assert_eq!(p.started(1, 6), None, "refetched from the gap");
        assert_eq!(p.finished(1, 5), Some(6));
    }

    #[test]
    fn a_first_message_past_the_assigned_start_is_a_gap() {
        let mut p = Progress::default();
        p.resume_at(2, 40);
        assert_eq!(p.started(2, 42), Some(40), "40 and 41 were skipped");
        p.rewind(2, 42, 40);
        assert_eq!(p.started(2, 40), None);
        assert_eq!(p.finished(2, 40), Some(41));
    }
}
