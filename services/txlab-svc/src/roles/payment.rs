//! Payment: wallets, charged per order and refunded on compensation.

use sqlx::PgConnection;
use txlab_api::admin::Wallet;
use txlab_api::participant::{reasons, ChargeRequest, RecordState};
use txlab_api::{Role, Step};

use crate::participant::{BusinessTable, Participant, Refusal};

pub struct Payment;

impl Participant for Payment {
    const STEP: Step = Step::Payment;
    const BUSINESS: BusinessTable = BusinessTable {
        table: "wallets",
        key: "customer",
        amount: "balance",
        held: "reserved",
    };
    const ROLE: Role = Role::Payment;
    const RECORDS: &'static str = "payments";
    const APPLIED: RecordState = RecordState::Captured;
    const UNDONE: RecordState = RecordState::Refunded;
    const COLLECTION: &'static str = "payments";
    const FORWARD_OP: &'static str = "charge";
    const UNDO_OP: &'static str = "refund";
    type Request = ChargeRequest;

    fn validate(req: &ChargeRequest) -> Result<(), String> {
        if req.amount < 0 {
            return Err("`amount` must not be negative".into());
        }
        if req.customer.is_empty() {
            return Err("`customer` must not be empty".into());
        }
        Ok(())
    }

    fn request_for(order: &txlab_api::event::OrderSpec) -> Self::Request {
        order.charge()
    }

    fn items(req: &ChargeRequest) -> Vec<(String, i64)> {
        vec![(req.customer.clone(), req.amount)]
    }

    async fn hold(conn: &mut PgConnection, req: &ChargeRequest) -> sqlx::Result<Result<(), Refusal>> {
        debit(conn, "balance = balance - $2, reserved = reserved + $2", req).await
    }

    async fn take(conn: &mut PgConnection, req: &ChargeRequest) -> sqlx::Result<Result<(), Refusal>> {
        debit(conn, "balance = balance - $2", req).await
    }

    async fn capture(conn: &mut PgConnection, req: &ChargeRequest) -> sqlx::Result<()> {
        wallet_update(conn, "reserved = reserved - $2", req).await
    }

    async fn release(conn: &mut PgConnection, req: &ChargeRequest) -> sqlx::Result<()> {
        wallet_update(conn, "balance = balance + $2, reserved = reserved - $2", req).await
    }

    async fn restore(conn: &mut PgConnection, req: &ChargeRequest) -> sqlx::Result<()> {
        wallet_update(conn, "balance = balance + $2", req).await
    }
}

/// Moves the amount out of the balance as `set` says, if the balance
/// covers it; otherwise says why not.
async fn debit(conn: &mut PgConnection, set: &str, req: &ChargeRequest) -> sqlx::Result<Result<(), Refusal>> {
    let debited = sqlx::query(&format!(
        "UPDATE wallets SET {set} WHERE customer = $1 AND balance >= $2"
    ))
    .bind(&req.customer)
    .bind(req.amount)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if debited == 1 {
        return Ok(Ok(()));
    }
    let exists: Option<(i64,)> = sqlx::query_as("SELECT balance FROM wallets WHERE customer = $1")
        .bind(&req.customer)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(Err(match exists {
        None => Refusal {
            code: reasons::UNKNOWN_CUSTOMER,
            message: format!("no wallet for customer {}", req.customer),
        },
        Some((balance,)) => Refusal {
            code: reasons::INSUFFICIENT_FUNDS,
            message: format!("customer {} has {balance}, needs {}", req.customer, req.amount),
        },
    }))
}

async fn wallet_update(conn: &mut PgConnection, set: &str, req: &ChargeRequest) -> sqlx::Result<()> {
    sqlx::query(&format!("UPDATE wallets SET {set} WHERE customer = $1"))
        .bind(&req.customer)
        .bind(req.amount)
        .execute(conn)
        .await
        .map(drop)
}

pub async fn seed(conn: &mut PgConnection, wallets: &[Wallet]) -> sqlx::Result<usize> {
    let rows: Vec<(&str, i64)> = wallets.iter().map(|w| (w.customer.as_str(), w.balance)).collect();
    crate::participant::seed::<Payment>(conn, &rows).await
}
