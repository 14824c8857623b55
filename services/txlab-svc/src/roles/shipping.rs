//! Shipping: courier slots with a capacity, booked per order.

use sqlx::PgConnection;
use txlab_api::admin::Slot;
use txlab_api::participant::{reasons, BookRequest, RecordState};
use txlab_api::{Role, Step};

use crate::participant::{BusinessTable, GuardedChange, Participant, Refusal};

pub struct Shipping;

impl Participant for Shipping {
    const STEP: Step = Step::Shipping;
    const BUSINESS: BusinessTable = BusinessTable {
        table: "slots",
        key: "slot",
        amount: "capacity",
        held: "booked",
    };
    const ROLE: Role = Role::Shipping;
    const RECORDS: &'static str = "shipments";
    const APPLIED: RecordState = RecordState::Booked;
    const UNDONE: RecordState = RecordState::Cancelled;
    const COLLECTION: &'static str = "shipments";
    const FORWARD_OP: &'static str = "book";
    const UNDO_OP: &'static str = "cancel";
    /// A held booking already occupies the slot: capacity is what is
    /// promised, and a held booking is the booking.
    const HOLD: GuardedChange = GuardedChange {
        set: "booked = booked + req.qty",
        only_if: "booked + req.qty <= capacity",
    };
    const TAKE: GuardedChange = Self::HOLD;
    const CAPTURE: Option<&'static str> = None;
    const RELEASE: &'static str = "booked = booked - req.qty";
    const RESTORE: &'static str = "booked = booked - req.qty";

    type Request = BookRequest;

    fn validate(req: &BookRequest) -> Result<(), String> {
        if req.slot.is_empty() {
            return Err("`slot` must not be empty".into());
        }
        Ok(())
    }

    fn request_for(order: &txlab_api::event::OrderSpec) -> Self::Request {
        order.book()
    }

    /// One booking of one slot.
    fn items(req: &BookRequest) -> Vec<(String, i64)> {
        vec![(req.slot.clone(), 1)]
    }

    fn refusal(slot: &str, _: i64, capacity: Option<i64>) -> Refusal {
        match capacity {
            None => Refusal {
                code: reasons::UNKNOWN_SLOT,
                message: format!("no courier slot {slot}"),
            },
            Some(capacity) => Refusal {
                code: reasons::NO_SLOT,
                message: format!("courier slot {slot} is full ({capacity} booked)"),
            },
        }
    }
}

pub async fn seed(conn: &mut PgConnection, slots: &[Slot]) -> sqlx::Result<usize> {
    let rows: Vec<(&str, i64)> = slots.iter().map(|s| (s.slot.as_str(), s.capacity)).collect();
    crate::participant::seed::<Shipping>(conn, &rows).await
}
