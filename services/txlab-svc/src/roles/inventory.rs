//! Inventory: stock per SKU, reserved per order and released on compensation.

use std::collections::BTreeMap;

use sqlx::PgConnection;
use txlab_api::admin::StockLevel;
use txlab_api::participant::{reasons, RecordState, ReserveLine, ReserveRequest};
use txlab_api::{Role, Step};

use crate::participant::{BusinessTable, Participant, Refusal};

pub struct Inventory;

/// Quantities per SKU in SKU order: locking rows in one global order keeps
/// concurrent reservations of overlapping baskets from deadlocking.
fn per_sku(lines: &[ReserveLine]) -> BTreeMap<&str, i64> {
    let mut m = BTreeMap::new();
    for l in lines {
        *m.entry(l.sku.as_str()).or_insert(0) += i64::from(l.qty);
    }
    m
}

impl Participant for Inventory {
    const STEP: Step = Step::Inventory;
    const BUSINESS: BusinessTable = BusinessTable {
        table: "stock",
        key: "sku",
        amount: "available",
        held: "reserved",
    };
    const ROLE: Role = Role::Inventory;
    const RECORDS: &'static str = "reservations";
    const APPLIED: RecordState = RecordState::Reserved;
    const UNDONE: RecordState = RecordState::Released;
    const COLLECTION: &'static str = "reservations";
    const FORWARD_OP: &'static str = "reserve";
    const UNDO_OP: &'static str = "release";
    type Request = ReserveRequest;

    fn validate(req: &ReserveRequest) -> Result<(), String> {
        if req.lines.is_empty() {
            return Err("`lines` must hold at least one line".into());
        }
        match req.lines.iter().position(|l| l.qty <= 0) {
            Some(i) => Err(format!("`lines[{i}].qty` must be positive")),
            None => Ok(()),
        }
    }

    fn request_for(order: &txlab_api::event::OrderSpec) -> Self::Request {
        order.reserve()
    }

    fn items(req: &ReserveRequest) -> Vec<(String, i64)> {
        per_sku(&req.lines)
            .into_iter()
            .map(|(sku, qty)| (sku.to_string(), qty))
            .collect()
    }

    async fn hold(conn: &mut PgConnection, req: &ReserveRequest) -> sqlx::Result<Result<(), Refusal>> {
        take_stock(conn, "available = available - $2, reserved = reserved + $2", req).await
    }

    async fn take(conn: &mut PgConnection, req: &ReserveRequest) -> sqlx::Result<Result<(), Refusal>> {
        take_stock(conn, "available = available - $2", req).await
    }

    /// SKU by SKU: the second of two may be out of stock after the first
    /// was taken.
    fn may_refuse_partway(req: &ReserveRequest) -> bool {
        per_sku(&req.lines).len() > 1
    }

    async fn capture(conn: &mut PgConnection, req: &ReserveRequest) -> sqlx::Result<()> {
        stock_update(conn, "reserved = reserved - $2", req).await
    }

    async fn release(conn: &mut PgConnection, req: &ReserveRequest) -> sqlx::Result<()> {
        stock_update(conn, "available = available + $2, reserved = reserved - $2", req).await
    }

    async fn restore(conn: &mut PgConnection, req: &ReserveRequest) -> sqlx::Result<()> {
        stock_update(conn, "available = available + $2", req).await
    }
}

/// Moves each SKU's quantity out of what is available as `set` says, or
/// says which SKU cannot give it (leaving the SKUs before it changed).
async fn take_stock(
    conn: &mut PgConnection,
    set: &str,
    req: &ReserveRequest,
) -> sqlx::Result<Result<(), Refusal>> {
    for (sku, qty) in per_sku(&req.lines) {
        let taken = sqlx::query(&format!(
            "UPDATE stock SET {set} WHERE sku = $1 AND available >= $2"
        ))
        .bind(sku)
        .bind(qty)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if taken == 0 {
            let exists: Option<(i64,)> = sqlx::query_as("SELECT available FROM stock WHERE sku = $1")
                .bind(sku)
                .fetch_optional(&mut *conn)
                .await?;
            return Ok(Err(match exists {
                None => Refusal {
                    code: reasons::UNKNOWN_SKU,
                    message: format!("no such SKU {sku}"),
                },
                Some((available,)) => Refusal {
                    code: reasons::OUT_OF_STOCK,
                    message: format!("SKU {sku} has {available} available, needs {qty}"),
                },
            }));
        }
    }
    Ok(Ok(()))
}

async fn stock_update(conn: &mut PgConnection, set: &str, req: &ReserveRequest) -> sqlx::Result<()> {
    for (sku, qty) in per_sku(&req.lines) {
        sqlx::query(&format!("UPDATE stock SET {set} WHERE sku = $1"))
            .bind(sku)
            .bind(qty)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

pub async fn seed(conn: &mut PgConnection, stock: &[StockLevel]) -> sqlx::Result<usize> {
    let rows: Vec<(&str, i64)> = stock.iter().map(|s| (s.sku.as_str(), s.available)).collect();
    crate::participant::seed::<Inventory>(conn, &rows).await
}
