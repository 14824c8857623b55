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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Ask participant `i` for its vote (prepare / try).
    Ask(usize),
    /// Log this decision durably before anything else.
    Decide(Decision),
    /// Drive the decision to participant `i` (commit or rollback / confirm or cancel).
    Complete(usize, Decision),
    Finish(Outcome),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwoPhase {
    pub votes: Vec<Vote>,
    pub phase2: Vec<Phase2>,
    pub decision: Option<Decision>,
    pub cancel_requested: bool,
}

impl TwoPhase {
    pub fn new(participants: usize) -> TwoPhase {
        TwoPhase {
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
                // Votes are asked one at a time, in order: a refusal early on
                // spares the later participants any work.
                match self.votes.iter().position(|v| *v != Vote::Yes) {
                    Some(i) => Next::Ask(i),
                    None => Next::Decide(Decision::Commit),
                }
            }
            // Every participant hears the decision, including those never
            // asked: an abort leaves them a record that refuses a late vote.
            Some(d) => match self.phase2.iter().position(|p| *p != Phase2::Done) {
                Some(i) => Next::Complete(i, d),
                None => Next::Finish(match d {
                    Decision::Commit => Outcome::Confirmed,
                    Decision::Abort if self.cancel_requested => Outcome::Cancelled,
                    Decision::Abort => Outcome::Rejected,
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs to the end answering votes from `answers`; returns the actions.
    fn drive(tp: &mut TwoPhase, answers: &[Vote]) -> Vec<Next> {
        let mut taken = Vec::new();
        for _ in 0..50 {
            let next = tp.next();
            taken.push(next);
            match next {
                Next::Ask(i) => tp.votes[i] = answers[i],
                Next::Decide(d) => tp.decision = Some(d),
                Next::Complete(i, _) => tp.phase2[i] = Phase2::Done,
                Next::Finish(_) => return taken,
            }
        }
        panic!("did not finish: {taken:?}");
    }

    #[test]
    fn all_yes_commits_everywhere() {
        let mut tp = TwoPhase::new(3);
        let taken = drive(&mut tp, &[Vote::Yes; 3]);
        assert_eq!(
            taken,
            vec![
                Next::Ask(0),
                Next::Ask(1),
                Next::Ask(2),
                Next::Decide(Decision::Commit),
                Next::Complete(0, Decision::Commit),
                Next::Complete(1, Decision::Commit),
                Next::Complete(2, Decision::Commit),
                Next::Finish(Outcome::Confirmed)
            ]
        );
    }

    #[test]
    fn a_no_aborts_at_once_and_everyone_hears_it() {
        let mut tp = TwoPhase::new(3);
        let taken = drive(&mut tp, &[Vote::Yes, Vote::No, Vote::Yes]);
        assert_eq!(
            taken[..3],
            [Next::Ask(0), Next::Ask(1), Next::Decide(Decision::Abort)]
        );
        // The never-asked third participant is told too (no late vote may hang).
        assert!(taken.contains(&Next::Complete(2, Decision::Abort)));
        assert_eq!(*taken.last().unwrap(), Next::Finish(Outcome::Rejected));
    }

    #[test]
    fn a_vote_that_timed_out_aborts() {
        let mut tp = TwoPhase::new(2);
        let taken = drive(&mut tp, &[Vote::Unknown, Vote::Yes]);
        assert_eq!(taken[1], Next::Decide(Decision::Abort));
    }

    #[test]
    fn cancel_before_the_decision_aborts_as_cancelled() {
        let mut tp = TwoPhase::new(3);
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
        let mut tp = TwoPhase::new(3);
        tp.votes = vec![Vote::Yes; 3];
        tp.decision = Some(Decision::Commit);
        tp.cancel_requested = true;
        assert_eq!(tp.next(), Next::Complete(0, Decision::Commit));
    }

    #[test]
    fn a_restarted_coordinator_asks_again_or_finishes_the_decision() {
        let mut tp = TwoPhase::new(3);
        tp.votes = vec![Vote::Yes, Vote::Asked, Vote::NotAsked];
        assert_eq!(tp.next(), Next::Ask(1));
        tp.votes = vec![Vote::Yes; 3];
        tp.decision = Some(Decision::Commit);
        tp.phase2 = vec![Phase2::Done, Phase2::Started, Phase2::Pending];
        assert_eq!(tp.next(), Next::Complete(1, Decision::Commit));
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
