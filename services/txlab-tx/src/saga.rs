//! The orchestrated saga as a pure state machine.
//!
//! The orchestrator persists a [`StepRecord`] for each step before and after
//! every call, then asks [`Saga::next`] what to do. Because the decision is a
//! function of the records alone, a restarted orchestrator resumes by loading
//! them: a step found `Started` is run again (participants deduplicate), and
//! in compensation every step that may have had an effect is compensated in
//! reverse order (participants treat a compensation of an unknown operation
//! as a null compensation and refuse that operation afterwards).

use serde::{Deserialize, Serialize};

txlab_api::text_enum! {
    /// How far a step's forward operation got, as persisted.
    pub enum Forward ("forward state") {
        NotStarted = "not_started",
        /// Persisted before the call; the outcome is not known yet.
        Started = "started",
        Done = "done",
        /// The participant refused on business grounds; it applied nothing.
        Rejected = "rejected",
        /// Retries ran out without an answer; the effect may or may not exist.
        Unknown = "unknown",
    }
}

txlab_api::text_enum! {
    /// How far a step's compensation got, as persisted.
    pub enum Compensation ("compensation state") {
        NotStarted = "not_started",
        Started = "started",
        Done = "done",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub forward: Forward,
    pub compensation: Compensation,
}

impl StepRecord {
    pub const NEW: StepRecord = StepRecord {
        forward: Forward::NotStarted,
        compensation: Compensation::NotStarted,
    };

    /// Whether the step may have left an effect that a compensation must undo.
    fn may_have_effect(&self) -> bool {
        matches!(self.forward, Forward::Started | Forward::Done | Forward::Unknown)
    }
}

/// What the saga ended as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Every step done, no cancel asked for.
    Confirmed,
    /// A step failed; every effect has been compensated.
    Rejected,
    /// A cancel was asked for; every effect has been compensated.
    Cancelled,
}

/// The orchestrator's next move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Run(usize),
    Compensate(usize),
    Finish(Outcome),
}

/// One saga's persisted progress: a record per step, in forward order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saga {
    pub steps: Vec<StepRecord>,
    pub cancel_requested: bool,
}

impl Saga {
    pub fn new(step_count: usize) -> Saga {
        Saga {
            steps: vec![StepRecord::NEW; step_count],
            cancel_requested: false,
        }
    }

    /// Whether the saga has turned back: a step failed or a cancel came in.
    pub fn is_compensating(&self) -> bool {
        self.cancel_requested
            || self
                .steps
                .iter()
                .any(|s| matches!(s.forward, Forward::Rejected | Forward::Unknown))
    }

    /// The next action, decided from the records alone.
    pub fn next(&self) -> Next {
        if self.is_compensating() {
            // Reverse order: undo the latest effect first.
            let pending = self
                .steps
                .iter()
                .rposition(|s| s.may_have_effect() && s.compensation != Compensation::Done);
            return match pending {
                Some(i) => Next::Compensate(i),
                None if self.cancel_requested => Next::Finish(Outcome::Cancelled),
                None => Next::Finish(Outcome::Rejected),
            };
        }
        match self.steps.iter().position(|s| s.forward != Forward::Done) {
            Some(i) => Next::Run(i),
            None => Next::Finish(Outcome::Confirmed),
        }
    }

    pub fn record_forward(&mut self, step: usize, forward: Forward) {
        self.steps[step].forward = forward;
    }

    pub fn record_compensation(&mut self, step: usize, compensation: Compensation) {
        self.steps[step].compensation = compensation;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a saga to the end, answering each forward call from `answers`
    /// (by step) and returning the actions taken.
    fn drive(saga: &mut Saga, answers: &[Forward]) -> (Vec<Next>, Outcome) {
        let mut taken = Vec::new();
        for _ in 0..100 {
            let next = saga.next();
            taken.push(next);
            match next {
                Next::Run(i) => {
                    saga.record_forward(i, Forward::Started);
                    saga.record_forward(i, answers[i]);
                }
                Next::Compensate(i) => {
                    saga.record_compensation(i, Compensation::Started);
                    saga.record_compensation(i, Compensation::Done);
                }
                Next::Finish(o) => return (taken, o),
            }
        }
        panic!("saga did not finish: {taken:?}");
    }

    #[test]
    fn all_steps_done_confirms() {
        let mut s = Saga::new(3);
        let (taken, outcome) = drive(&mut s, &[Forward::Done; 3]);
        assert_eq!(
            taken,
            vec![
                Next::Run(0),
                Next::Run(1),
                Next::Run(2),
                Next::Finish(Outcome::Confirmed)
            ]
        );
        assert_eq!(outcome, Outcome::Confirmed);
    }

    #[test]
    fn a_rejection_compensates_earlier_steps_in_reverse() {
        let mut s = Saga::new(3);
        let (taken, outcome) = drive(&mut s, &[Forward::Done, Forward::Done, Forward::Rejected]);
        assert_eq!(
            taken,
            vec![
                Next::Run(0),
                Next::Run(1),
                Next::Run(2),
                Next::Compensate(1),
                Next::Compensate(0),
                Next::Finish(Outcome::Rejected)
            ]
        );
        assert_eq!(outcome, Outcome::Rejected);
    }

    #[test]
    fn a_first_step_rejection_compensates_nothing() {
        let mut s = Saga::new(3);
        let (taken, outcome) = drive(&mut s, &[Forward::Rejected, Forward::Done, Forward::Done]);
        assert_eq!(taken, vec![Next::Run(0), Next::Finish(Outcome::Rejected)]);
        assert_eq!(outcome, Outcome::Rejected);
    }

    #[test]
    fn an_unknown_outcome_is_compensated_too() {
        // Retries ran out on step 1: it may have applied, so it is undone too.
        let mut s = Saga::new(3);
        let (taken, _) = drive(&mut s, &[Forward::Done, Forward::Unknown, Forward::Done]);
        assert_eq!(
            taken,
            vec![
                Next::Run(0),
                Next::Run(1),
                Next::Compensate(1),
                Next::Compensate(0),
                Next::Finish(Outcome::Rejected)
            ]
        );
    }

    #[test]
    fn cancel_midway_compensates_what_ran_and_ends_cancelled() {
        let mut s = Saga::new(3);
        s.record_forward(0, Forward::Done);
        s.cancel_requested = true;
        assert_eq!(s.next(), Next::Compensate(0));
        s.record_compensation(0, Compensation::Done);
        assert_eq!(s.next(), Next::Finish(Outcome::Cancelled));
    }

    #[test]
    fn cancel_after_confirm_compensates_everything() {
        let mut s = Saga::new(3);
        let (_, outcome) = drive(&mut s, &[Forward::Done; 3]);
        assert_eq!(outcome, Outcome::Confirmed);
        s.cancel_requested = true;
        let (taken, outcome) = drive(&mut s, &[Forward::Done; 3]);
        assert_eq!(
            taken,
            vec![
                Next::Compensate(2),
                Next::Compensate(1),
                Next::Compensate(0),
                Next::Finish(Outcome::Cancelled)
            ]
        );
        assert_eq!(outcome, Outcome::Cancelled);
    }

    #[test]
    fn resuming_after_a_crash_reruns_the_started_step() {
        // Crashed after persisting "started" for step 1 but before the answer.
        let mut s = Saga::new(3);
        s.record_forward(0, Forward::Done);
        s.record_forward(1, Forward::Started);
        assert_eq!(s.next(), Next::Run(1));
    }

    #[test]
    fn resuming_a_compensation_finishes_the_started_one_first() {
        let mut s = Saga::new(3);
        s.record_forward(0, Forward::Done);
        s.record_forward(1, Forward::Done);
        s.record_forward(2, Forward::Rejected);
        s.record_compensation(1, Compensation::Started);
        assert_eq!(s.next(), Next::Compensate(1));
        // A crash-interrupted forward call must be compensated when cancelling.
        let mut t = Saga::new(3);
        t.record_forward(0, Forward::Started);
        t.cancel_requested = true;
        assert_eq!(t.next(), Next::Compensate(0));
    }

    #[test]
    fn names_round_trip() {
        for f in [
            Forward::NotStarted,
            Forward::Started,
            Forward::Done,
            Forward::Rejected,
            Forward::Unknown,
        ] {
            assert_eq!(Forward::parse(f.as_str()), Some(f));
        }
        for c in [
            Compensation::NotStarted,
            Compensation::Started,
            Compensation::Done,
        ] {
            assert_eq!(Compensation::parse(c.as_str()), Some(c));
        }
        assert_eq!(Forward::parse("finished"), None);
    }
}
