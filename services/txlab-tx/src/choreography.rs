//! The event-driven methods as pure rules: which checkout event makes a
//! participant act, and what the order's state becomes from what it has
//! heard. `saga_chor` chains the steps (each participant reacts to the one
//! before it, failures flow back as compensations); `outbox` lets every
//! participant apply on its own, with no compensation for a failure.

use txlab_api::event::CheckoutKind;
use txlab_api::order::OrderState;
use txlab_api::TxMode;

/// What a participant does about an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaction {
    Apply,
    Compensate,
}

/// The reaction of participant `step` (0 payment, 1 inventory, 2 shipping).
pub fn react(method: TxMode, step: usize, kind: &CheckoutKind) -> Option<Reaction> {
    match (method, kind) {
        // Every method's cancel: every participant undoes its part (or
        // leaves a voided record if it has none yet).
        (_, CheckoutKind::CancelRequested) => Some(Reaction::Compensate),
        (TxMode::Outbox, CheckoutKind::OrderPlaced) => Some(Reaction::Apply),
        (TxMode::SagaChor, CheckoutKind::OrderPlaced) if step == 0 => Some(Reaction::Apply),
        (TxMode::SagaChor, CheckoutKind::Applied { step: s }) if s + 1 == step => Some(Reaction::Apply),
        // The step after this one failed, or undid itself: undo this one.
        (TxMode::SagaChor, CheckoutKind::Rejected { step: s, .. } | CheckoutKind::Compensated { step: s }) if *s == step + 1 => {
            Some(Reaction::Compensate)
        }
        _ => None,
    }
}

/// What the order service has heard from each participant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Heard {
    pub applied: [bool; 3],
    pub rejected: [bool; 3],
    pub compensated: [bool; 3],
    pub cancel_requested: bool,
}

/// The terminal state the order has reached, if any.
pub fn verdict(method: TxMode, h: &Heard) -> Option<OrderState> {
    if h.cancel_requested {
        // Cancelled once every participant has confirmed its undo.
        return h.compensated.iter().all(|c| *c).then_some(OrderState::Cancelled);
    }
    match method {
        // Every participant acts on its own, so the verdict waits until all
        // three have reported: what a refused order still holds is then
        // settled, and the audit's by-design count does not depend on timing.
        TxMode::Outbox if !(0..3).all(|i| h.applied[i] || h.rejected[i]) => None,
        TxMode::Outbox if h.rejected.iter().any(|r| *r) => Some(OrderState::NeedsAttention),
        TxMode::Outbox => Some(OrderState::Confirmed),
        _ if h.applied[2] => Some(OrderState::Confirmed),
        // Payment refused (nothing to undo), or payment undid itself: the
        // compensation chain has reached its start.
        _ if h.rejected[0] || (h.compensated[0] && h.rejected.iter().any(|r| *r)) => Some(OrderState::Rejected),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(step: usize) -> CheckoutKind {
        CheckoutKind::Rejected { step, reason: "x".into() }
    }

    #[test]
    fn choreography_chains_forward_and_compensates_backward() {
        let m = TxMode::SagaChor;
        assert_eq!(react(m, 0, &CheckoutKind::OrderPlaced), Some(Reaction::Apply));
        assert_eq!(react(m, 1, &CheckoutKind::OrderPlaced), None);
        assert_eq!(react(m, 1, &CheckoutKind::Applied { step: 0 }), Some(Reaction::Apply));
        assert_eq!(react(m, 2, &CheckoutKind::Applied { step: 0 }), None);
        assert_eq!(react(m, 1, &rejected(2)), Some(Reaction::Compensate));
        assert_eq!(react(m, 0, &CheckoutKind::Compensated { step: 1 }), Some(Reaction::Compensate));
        assert_eq!(react(m, 0, &rejected(0)), None, "a refusal is not undone by its own participant");
        assert_eq!(react(m, 2, &CheckoutKind::CancelRequested), Some(Reaction::Compensate));
    }

    #[test]
    fn outbox_applies_everywhere_at_once_and_never_compensates_a_failure() {
        let m = TxMode::Outbox;
        for step in 0..3 {
            assert_eq!(react(m, step, &CheckoutKind::OrderPlaced), Some(Reaction::Apply));
            assert_eq!(react(m, step, &rejected((step + 1) % 3)), None);
        }
        assert_eq!(react(m, 1, &CheckoutKind::CancelRequested), Some(Reaction::Compensate));
    }

    #[test]
    fn verdicts() {
        let chor = TxMode::SagaChor;
        let mut h = Heard::default();
        assert_eq!(verdict(chor, &h), None);
        h.applied = [true, true, true];
        assert_eq!(verdict(chor, &h), Some(OrderState::Confirmed));

        let h = Heard { rejected: [true, false, false], ..Heard::default() };
        assert_eq!(verdict(chor, &h), Some(OrderState::Rejected));
        // Shipping refused: not rejected until payment has undone its charge.
        let mut h = Heard { applied: [true, true, false], rejected: [false, false, true], ..Heard::default() };
        assert_eq!(verdict(chor, &h), None);
        h.compensated = [false, true, false];
        assert_eq!(verdict(chor, &h), None);
        h.compensated = [true, true, false];
        assert_eq!(verdict(chor, &h), Some(OrderState::Rejected));

        // A cancel waits for every participant, whatever else was heard.
        let mut h = Heard { applied: [true, true, true], cancel_requested: true, ..Heard::default() };
        h.compensated = [true, true, false];
        assert_eq!(verdict(chor, &h), None);
        h.compensated = [true; 3];
        assert_eq!(verdict(chor, &h), Some(OrderState::Cancelled));

        let outbox = TxMode::Outbox;
        let h = Heard { applied: [true, false, false], rejected: [false, true, false], ..Heard::default() };
        assert_eq!(verdict(outbox, &h), None, "shipping has not reported yet");
        let h = Heard { applied: [true, false, true], rejected: [false, true, false], ..Heard::default() };
        assert_eq!(verdict(outbox, &h), Some(OrderState::NeedsAttention));
        let h = Heard { applied: [true; 3], ..Heard::default() };
        assert_eq!(verdict(outbox, &h), Some(OrderState::Confirmed));
    }
}
