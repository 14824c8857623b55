//! The event-driven methods as pure rules: which checkout event makes a
//! participant act, and what the order's state becomes from what it has
//! heard. `saga_chor` chains the steps (each participant reacts to the one
//! before it, failures flow back as compensations); `outbox` lets every
//! participant apply on its own, with no compensation for a failure.

use txlab_api::event::{checkout_topic, CheckoutKind};
use txlab_api::order::OrderState;
use txlab_api::{Role, Step, TxMode};

/// What a participant does about an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaction {
    Apply,
    Compensate,
}

/// The reaction of the participant of `step`.
pub fn react(method: TxMode, step: Step, kind: &CheckoutKind) -> Option<Reaction> {
    match (method, kind) {
        // Every method's cancel: every participant undoes its part (or
        // leaves a voided record if it has none yet).
        (_, CheckoutKind::CancelRequested) => Some(Reaction::Compensate),
        (TxMode::Outbox, CheckoutKind::OrderPlaced) => Some(Reaction::Apply),
        (TxMode::SagaChor, CheckoutKind::OrderPlaced) if step == Step::Payment => Some(Reaction::Apply),
        (TxMode::SagaChor, CheckoutKind::Applied { step: s }) if s.next() == Some(step) => {
            Some(Reaction::Apply)
        }
        // The step after this one failed, or undid itself: undo this one.
        (
            TxMode::SagaChor,
            CheckoutKind::Rejected { step: s, .. } | CheckoutKind::Compensated { step: s },
        ) if step.next() == Some(*s) => Some(Reaction::Compensate),
        _ => None,
    }
}

/// The topics an event of `kind` goes to under `method`: the topic of
/// every participant that reacts to it, and the order service's for a
/// participant's result (the order's own events, placed and cancelled,
/// it writes rather than hears). Derived from [`react`], so a participant
/// is sent exactly what it acts on.
pub fn audience(method: TxMode, kind: &CheckoutKind) -> Vec<&'static str> {
    let heard_by_order = !matches!(kind, CheckoutKind::OrderPlaced | CheckoutKind::CancelRequested);
    let readers = Step::ALL
        .into_iter()
        .filter(|step| react(method, *step, kind).is_some())
        .map(Step::role)
        .chain(heard_by_order.then_some(Role::Order));
    readers.filter_map(checkout_topic).collect()
}

/// What the order service has heard from each participant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
/// Each array is indexed by [`Step::index`].
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
        TxMode::Outbox
            if !Step::ALL
                .iter()
                .all(|s| h.applied[s.index()] || h.rejected[s.index()]) =>
        {
            None
        }
        TxMode::Outbox if h.rejected.iter().any(|r| *r) => Some(OrderState::NeedsAttention),
        TxMode::Outbox => Some(OrderState::Confirmed),
        _ if h.applied[Step::Shipping.index()] => Some(OrderState::Confirmed),
        // Payment refused (nothing to undo), or payment undid itself: the
        // compensation chain has reached its start.
        _ if h.rejected[Step::Payment.index()]
            || (h.compensated[Step::Payment.index()] && h.rejected.iter().any(|r| *r)) =>
        {
            Some(OrderState::Rejected)
        }
        _ => None,
    }
}

/// Whether hearing that the steps in `applied` went through could decide
/// an order of `method` on its own, with nothing else heard. When it cannot,
/// the order service may hold the news back and write it with a later
/// event's transaction (see the order service's held results).
pub fn applied_may_decide(method: TxMode, applied: [bool; 3]) -> bool {
    verdict(
        method,
        &Heard {
            applied,
            ..Heard::default()
        },
    )
    .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    use Step::{Inventory, Payment, Shipping};

    fn rejected(step: Step) -> CheckoutKind {
        CheckoutKind::Rejected {
            step,
            reason: "x".into(),
        }
    }

    #[test]
    fn choreography_chains_forward_and_compensates_backward() {
        let m = TxMode::SagaChor;
        assert_eq!(
            react(m, Payment, &CheckoutKind::OrderPlaced),
            Some(Reaction::Apply)
        );
        assert_eq!(react(m, Inventory, &CheckoutKind::OrderPlaced), None);
        assert_eq!(
            react(m, Inventory, &CheckoutKind::Applied { step: Payment }),
            Some(Reaction::Apply)
        );
        assert_eq!(react(m, Shipping, &CheckoutKind::Applied { step: Payment }), None);
        assert_eq!(
            react(m, Inventory, &rejected(Shipping)),
            Some(Reaction::Compensate)
        );
        assert_eq!(
            react(m, Payment, &CheckoutKind::Compensated { step: Inventory }),
            Some(Reaction::Compensate)
        );
        assert_eq!(
            react(m, Payment, &rejected(Payment)),
            None,
            "a refusal is not undone by its own participant"
        );
        assert_eq!(
            react(m, Shipping, &CheckoutKind::CancelRequested),
            Some(Reaction::Compensate)
        );
    }

    #[test]
    fn outbox_applies_everywhere_at_once_and_never_compensates_a_failure() {
        let m = TxMode::Outbox;
        for step in Step::ALL {
            assert_eq!(react(m, step, &CheckoutKind::OrderPlaced), Some(Reaction::Apply));
            let other = Step::at((step.index() + 1) % Step::ALL.len()).unwrap();
            assert_eq!(react(m, step, &rejected(other)), None);
        }
        assert_eq!(
            react(m, Inventory, &CheckoutKind::CancelRequested),
            Some(Reaction::Compensate)
        );
    }

    #[test]
    fn each_event_goes_to_the_services_that_act_on_it() {
        let topic = |r| checkout_topic(r).unwrap();
        let (order, payment, inventory, shipping) = (
            topic(Role::Order),
            topic(Role::Payment),
            topic(Role::Inventory),
            topic(Role::Shipping),
        );
        let chor = TxMode::SagaChor;
        assert_eq!(audience(chor, &CheckoutKind::OrderPlaced), [payment]);
        assert_eq!(
            audience(chor, &CheckoutKind::Applied { step: Payment }),
            [inventory, order]
        );
        assert_eq!(audience(chor, &CheckoutKind::Applied { step: Shipping }), [order]);
        assert_eq!(audience(chor, &rejected(Shipping)), [inventory, order]);
        assert_eq!(
            audience(chor, &CheckoutKind::Compensated { step: Payment }),
            [order],
            "the end of the compensation chain"
        );
        let outbox = TxMode::Outbox;
        assert_eq!(
            audience(outbox, &CheckoutKind::OrderPlaced),
            [payment, inventory, shipping]
        );
        assert_eq!(audience(outbox, &rejected(Inventory)), [order]);
        for m in [chor, outbox] {
            assert_eq!(
                audience(m, &CheckoutKind::CancelRequested),
                [payment, inventory, shipping]
            );
            // Whatever the event, a participant is sent it exactly when it reacts.
            let kinds = [CheckoutKind::OrderPlaced, CheckoutKind::CancelRequested]
                .into_iter()
                .chain(Step::ALL.into_iter().flat_map(|s| {
                    [
                        CheckoutKind::Applied { step: s },
                        rejected(s),
                        CheckoutKind::Compensated { step: s },
                    ]
                }));
            for kind in kinds {
                for step in Step::ALL {
                    assert_eq!(
                        audience(m, &kind).contains(&topic(step.role())),
                        react(m, step, &kind).is_some(),
                        "{m} {kind:?} to {step}"
                    );
                }
            }
        }
    }

    #[test]
    fn only_the_last_forward_result_may_decide() {
        let chor = TxMode::SagaChor;
        assert!(!applied_may_decide(chor, [true, false, false]));
        assert!(!applied_may_decide(chor, [true, true, false]));
        assert!(
            applied_may_decide(chor, [false, false, true]),
            "shipping's confirms"
        );
        let outbox = TxMode::Outbox;
        assert!(!applied_may_decide(outbox, [true, false, true]));
        assert!(applied_may_decide(outbox, [true; 3]), "all three heard");
    }

    #[test]
    fn verdicts() {
        let chor = TxMode::SagaChor;
        let mut h = Heard::default();
        assert_eq!(verdict(chor, &h), None);
        h.applied = [true, true, true];
        assert_eq!(verdict(chor, &h), Some(OrderState::Confirmed));

        let h = Heard {
            rejected: [true, false, false],
            ..Heard::default()
        };
        assert_eq!(verdict(chor, &h), Some(OrderState::Rejected));
        // Shipping refused: not rejected until payment has undone its charge.
        let mut h = Heard {
            applied: [true, true, false],
            rejected: [false, false, true],
            ..Heard::default()
        };
        assert_eq!(verdict(chor, &h), None);
        h.compensated = [false, true, false];
        assert_eq!(verdict(chor, &h), None);
        h.compensated = [true, true, false];
        assert_eq!(verdict(chor, &h), Some(OrderState::Rejected));

        // A cancel waits for every participant, whatever else was heard.
        let mut h = Heard {
            applied: [true, true, true],
            cancel_requested: true,
            ..Heard::default()
        };
        h.compensated = [true, true, false];
        assert_eq!(verdict(chor, &h), None);
        h.compensated = [true; 3];
        assert_eq!(verdict(chor, &h), Some(OrderState::Cancelled));

        let outbox = TxMode::Outbox;
        let h = Heard {
            applied: [true, false, false],
            rejected: [false, true, false],
            ..Heard::default()
        };
        assert_eq!(verdict(outbox, &h), None, "shipping has not reported yet");
        let h = Heard {
            applied: [true, false, true],
            rejected: [false, true, false],
            ..Heard::default()
        };
        assert_eq!(verdict(outbox, &h), Some(OrderState::NeedsAttention));
        let h = Heard {
            applied: [true; 3],
            ..Heard::default()
        };
        assert_eq!(verdict(outbox, &h), Some(OrderState::Confirmed));
    }
}
