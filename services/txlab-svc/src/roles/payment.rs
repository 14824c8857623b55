//! Payment: wallets, charged per order and refunded on compensation.

use sqlx::PgConnection;
use txlab_api::admin::Wallet;
use txlab_api::participant::{reasons, ChargeRequest, RecordState};
use txlab_api::{Role, Step};

use crate::participant::{BusinessTable, GuardedChange, Participant, Refusal};

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
    const HOLD: GuardedChange = GuardedChange {
        set: "balance = balance - req.qty, reserved = reserved + req.qty",
        only_if: "balance >= req.qty",
    };
    const TAKE: GuardedChange = GuardedChange {
        set: "balance = balance - req.qty",
        only_if: "balance >= req.qty",
    };
    const CAPTURE: Option<&'static str> = Some("reserved = reserved - req.qty");
    const RELEASE: &'static str = "balance = balance + req.qty, reserved = reserved - req.qty";
    const RESTORE: &'static str = "balance = balance + req.qty";

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

    fn refusal(customer: &str, amount: i64, balance: Option<i64>) -> Refusal {
        match balance {
            None => Refusal {
                code: reasons::UNKNOWN_CUSTOMER,
                message: format!("no wallet for customer {customer}"),
            },
            Some(balance) => Refusal {
                code: reasons::INSUFFICIENT_FUNDS,
                message: format!("customer {customer} has {balance}, needs {amount}"),
            },
        }
    }
}

pub async fn seed(conn: &mut PgConnection, wallets: &[Wallet]) -> sqlx::Result<usize> {
    let rows: Vec<(&str, i64)> = wallets.iter().map(|w| (w.customer.as_str(), w.balance)).collect();
    crate::participant::seed::<Payment>(conn, &rows).await
}
