//! The two-phase coordinator as a pure state machine, shared by 2PC
//! (prepare / commit / rollback) and TCC (try / confirm / cancel): both ask
//! every participant for a vote, log one decision durably — the commit
//! point — and then drive that decision to every participant until done.
//!
//! As with [`crate::saga`], the next action is a function of the persisted
//! records alone, so a restarted coordinator resumes by loading them: a
//! logged decision is finished; an undecided transaction whose vote was
//! under way is asked again (participants answer repeated calls the same).

use crate::saga::Outcome;

txlab_api::text_enum! {
    /// A participant's answer to phase one, as persisted.
    pub enum Vote ("vote") {
        NotAsked = "not_asked",
        /// Persisted before the call.
        Asked = "asked",
        Yes = "yes",
        /// Refused on business grounds.
        No = "no",
        /// Retries ran out (e.g. a try timed out): counts as no.
        Unknown = "unknown",
    }
}

/// The coordinator's decision: the one the participants ask about.
pub use txlab_api::participant::DecisionKind as Decision;

txlab_api::text_enum! {
    /// Phase two at one participant, as persisted.
    pub enum Phase2 ("phase-two state") {
        Pending = "pending",
        Started = "started",
        Done = "done",
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Ask these participants for their votes (prepare / try), all at once.
    Ask(Vec<usize>),
    /// Log this decision durably before anything else.
    Decide(Decision),
    /// Drive the decision to these participants, all at once (commit or
    /// rollback / confirm or cancel).
    Complete(Vec<usize>, Decision),
    Finish(Outcome),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwoPhase {
    /// Ask every vote at once (TCC: a try commits locally and holds no
    /// lock) rather than one after the other in a fixed order (2PC: a
    /// prepared branch holds its row locks, and asking in one global order
    /// keeps two transactions from waiting on each other's branches across
    /// databases — a deadlock no database can see).
    pub votes_at_once: bool,
    pub votes: Vec<Vote>,
    pub phase2: Vec<Phase2>,
    pub decision: Option<Decision>,
    pub cancel_requested: bool,
}

impl TwoPhase {
    pub fn new(participants: usize, votes_at_once: bool) -> TwoPhase {
        TwoPhase {
            votes_at_once,
            votes: vec![Vote::NotAsked; participants],
            phase2: vec![Phase2::Pending; participants],
            decision: None,
            cancel_requested: false,
        }
    }

    pub fn next(&self) -> Next {
        match self.decision {
            None => {
                if self.cancel_requested || self.votes.iter().any(|v| matches!(v, Vote::No | Vote::Unknown)) {
                    return Next::Decide(Decision::Abort);
                }
                let mut missing = indices(&self.votes, |v| *v != Vote::Yes);
                if !self.votes_at_once {
                    missing.truncate(1);
                }
                if missing.is_empty() {
                    Next::Decide(Decision::Commit)
                } else {
                    Next::Ask(missing)
                }
            }
            // Every participant hears the decision, including those never
            // asked: an abort leaves them a record that refuses a late vote.
            Some(d) => {
                let undone = indices(&self.phase2, |p| *p != Phase2::Done);
                if undone.is_empty() {
                    Next::Finish(match d {
                        Decision::Commit => Outcome::Confirmed,
                        Decision::Abort if self.cancel_requested => Outcome::Cancelled,
                        Decision::Abort => Outcome::Rejected,
                    })
                } else {
                    Next::Complete(undone, d)
                }
            }
        }
    }
}

fn indices<T>(items: &[T], pick: impl Fn(&T) -> bool) -> Vec<usize> {
    (0..items.len()).filter(|i| pick(&items[*i])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs to the end answering votes from `answers`; returns the actions.
    fn drive(tp: &mut TwoPhase, answers: &[Vote]) -> Vec<Next> {
        let mut taken = Vec::new();
        for _ in 0..50 {
            let next = tp.next();
            taken.push(next.clone());
            match next {
                Next::Ask(asked) => asked.into_iter().for_each(|i| tp.votes[i] = answers[i]),
                Next::Decide(d) => tp.decision = Some(d),
                Next::Complete(told, _) => told.into_iter().for_each(|i| tp.phase2[i] = Phase2::Done),
                Next::Finish(_) => return taken,
            }
        }
        panic!("did not finish: {taken:?}");
    }

    #[test]
    fn all_yes_commits_everywhere() {
        let mut tp = TwoPhase::new(3, true);
        let taken = drive(&mut tp, &[Vote::Yes; 3]);
        assert_eq!(
            taken,
            vec![
                Next::Ask(vec![0, 1, 2]),
                Next::Decide(Decision::Commit),
                Next::Complete(vec![0, 1, 2], Decision::Commit),
                Next::Finish(Outcome::Confirmed)
            ]
        );
    }

    #[test]
    fn ordered_votes_are_asked_one_after_the_other() {
        let mut tp = TwoPhase::new(3, false);
        let taken = drive(&mut tp, &[Vote::Yes, Vote::No, Vote::Yes]);
        assert_eq!(
            taken[..3],
            [
                Next::Ask(vec![0]),
                Next::Ask(vec![1]),
                Next::Decide(Decision::Abort)
            ]
        );
        // The never-asked third participant hears the abort too.
        assert_eq!(taken[3], Next::Complete(vec![0, 1, 2], Decision::Abort));
    }

    #[test]
    fn a_no_aborts_and_everyone_hears_it() {
        let mut tp = TwoPhase::new(3, true);
        let taken = drive(&mut tp, &[Vote::Yes, Vote::No, Vote::Yes]);
        assert_eq!(
            taken,
            [
                Next::Ask(vec![0, 1, 2]),
                Next::Decide(Decision::Abort),
                Next::Complete(vec![0, 1, 2], Decision::Abort),
                Next::Finish(Outcome::Rejected)
            ]
        );
        // A participant never asked (cancelled before the votes) is told too:
        // its record then refuses a late vote.
        let mut tp = TwoPhase::new(3, true);
        tp.cancel_requested = true;
        let taken = drive(&mut tp, &[Vote::Yes; 3]);
        assert_eq!(taken[1], Next::Complete(vec![0, 1, 2], Decision::Abort));
    }

    #[test]
    fn a_vote_that_timed_out_aborts() {
        let mut tp = TwoPhase::new(2, true);
        let taken = drive(&mut tp, &[Vote::Unknown, Vote::Yes]);
        assert_eq!(taken[1], Next::Decide(Decision::Abort));
        // A retry after a crash asks only the votes still missing.
        let mut tp = TwoPhase::new(3, true);
        tp.votes = vec![Vote::Yes, Vote::Asked, Vote::NotAsked];
        assert_eq!(tp.next(), Next::Ask(vec![1, 2]));
    }

    #[test]
    fn cancel_before_the_decision_aborts_as_cancelled() {
        let mut tp = TwoPhase::new(3, true);
        tp.votes[0] = Vote::Yes;
        tp.cancel_requested = true;
        assert_eq!(tp.next(), Next::Decide(Decision::Abort));
        tp.decision = Some(Decision::Abort);
        tp.phase2 = vec![Phase2::Done; 3];
        assert_eq!(tp.next(), Next::Finish(Outcome::Cancelled));
    }

    #[test]
    fn a_logged_decision_wins_over_a_later_cancel() {
        // The commit point has passed: the cancel becomes a business
        // compensation after confirmation, not an abort.
        let mut tp = TwoPhase::new(3, true);
        tp.votes = vec![Vote::Yes; 3];
        tp.decision = Some(Decision::Commit);
        tp.cancel_requested = true;
        assert_eq!(tp.next(), Next::Complete(vec![0, 1, 2], Decision::Commit));
    }

    #[test]
    fn a_restarted_coordinator_asks_again_or_finishes_the_decision() {
        let mut tp = TwoPhase::new(3, true);
        tp.votes = vec![Vote::Yes, Vote::Asked, Vote::NotAsked];
        assert_eq!(tp.next(), Next::Ask(vec![1, 2]));
        tp.votes = vec![Vote::Yes; 3];
        tp.decision = Some(Decision::Commit);
        tp.phase2 = vec![Phase2::Done, Phase2::Started, Phase2::Pending];
        assert_eq!(tp.next(), Next::Complete(vec![1, 2], Decision::Commit));
    }

    #[test]
    fn names_round_trip() {
        for v in [Vote::NotAsked, Vote::Asked, Vote::Yes, Vote::No, Vote::Unknown] {
            assert_eq!(Vote::parse(v.as_str()), Some(v));
        }
        for p in [Phase2::Pending, Phase2::Started, Phase2::Done] {
            assert_eq!(Phase2::parse(p.as_str()), Some(p));
        }
        for d in [Decision::Commit, Decision::Abort] {
            assert_eq!(Decision::parse(d.as_str()), Some(d));
        }
    }
}
