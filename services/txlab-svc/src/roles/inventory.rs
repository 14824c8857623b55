//! Inventory: stock per SKU, reserved per order and released on compensation.

use std::collections::BTreeMap;

use sqlx::PgConnection;
use txlab_api::admin::StockLevel;
use txlab_api::participant::{reasons, RecordState, ReserveLine, ReserveRequest};
use txlab_api::{Role, Step};

use crate::participant::{BusinessTable, GuardedChange, Participant, Refusal};

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
    const HOLD: GuardedChange = GuardedChange {
        set: "available = available - req.qty, reserved = reserved + req.qty",
        only_if: "available >= req.qty",
    };
    const TAKE: GuardedChange = GuardedChange {
        set: "available = available - req.qty",
        only_if: "available >= req.qty",
    };
    const CAPTURE: Option<&'static str> = Some("reserved = reserved - req.qty");
    const RELEASE: &'static str = "available = available + req.qty, reserved = reserved - req.qty";
    const RESTORE: &'static str = "available = available + req.qty";

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

    fn refusal(sku: &str, qty: i64, available: Option<i64>) -> Refusal {
        match available {
            None => Refusal {
                code: reasons::UNKNOWN_SKU,
                message: format!("no such SKU {sku}"),
            },
            Some(available) => Refusal {
                code: reasons::OUT_OF_STOCK,
                message: format!("SKU {sku} has {available} available, needs {qty}"),
            },
        }
    }
}

pub async fn seed(conn: &mut PgConnection, stock: &[StockLevel]) -> sqlx::Result<usize> {
    let rows: Vec<(&str, i64)> = stock.iter().map(|s| (s.sku.as_str(), s.available)).collect();
    crate::participant::seed::<Inventory>(conn, &rows).await
}
