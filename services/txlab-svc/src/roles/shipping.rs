//! Shipping: courier slots with a capacity, booked per order.

use sqlx::PgConnection;
use txlab_api::admin::Slot;
use txlab_api::participant::{reasons, BookRequest, RecordState};
use txlab_api::{Role, Step};

use crate::participant::{BusinessTable, Participant, Refusal};

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

    /// A held booking already occupies the slot: capacity is what is promised.
    async fn hold(conn: &mut PgConnection, req: &BookRequest) -> sqlx::Result<Result<(), Refusal>> {
        let booked =
            sqlx::query("UPDATE slots SET booked = booked + 1 WHERE slot = $1 AND booked < capacity")
                .bind(&req.slot)
                .execute(&mut *conn)
                .await?
                .rows_affected();
        if booked == 1 {
            return Ok(Ok(()));
        }
        let exists: Option<(i64,)> = sqlx::query_as("SELECT capacity FROM slots WHERE slot = $1")
            .bind(&req.slot)
            .fetch_optional(&mut *conn)
            .await?;
        Ok(Err(match exists {
            None => Refusal {
                code: reasons::UNKNOWN_SLOT,
                message: format!("no courier slot {}", req.slot),
            },
            Some((capacity,)) => Refusal {
                code: reasons::NO_SLOT,
                message: format!("courier slot {} is full ({capacity} booked)", req.slot),
            },
        }))
    }

    /// A held booking is the booking.
    async fn take(conn: &mut PgConnection, req: &BookRequest) -> sqlx::Result<Result<(), Refusal>> {
        Self::hold(conn, req).await
    }

    /// Nothing more to take: the held booking is the booking.
    async fn capture(_conn: &mut PgConnection, _req: &BookRequest) -> sqlx::Result<()> {
        Ok(())
    }

    async fn release(conn: &mut PgConnection, req: &BookRequest) -> sqlx::Result<()> {
        unbook(conn, req).await
    }

    async fn restore(conn: &mut PgConnection, req: &BookRequest) -> sqlx::Result<()> {
        unbook(conn, req).await
    }
}

async fn unbook(conn: &mut PgConnection, req: &BookRequest) -> sqlx::Result<()> {
    sqlx::query("UPDATE slots SET booked = booked - 1 WHERE slot = $1")
        .bind(&req.slot)
        .execute(conn)
        .await
        .map(drop)
}

pub async fn seed(conn: &mut PgConnection, slots: &[Slot]) -> sqlx::Result<usize> {
    let rows: Vec<(&str, i64)> = slots.iter().map(|s| (s.slot.as_str(), s.capacity)).collect();
    crate::participant::seed::<Shipping>(conn, &rows).await
}
