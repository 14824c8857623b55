//! Calls from the order service to the participants, for every method: the
//! URL and body of each operation, and the two ways of retrying them.

use serde_json::json;
use txlab_api::admin::{EPOCH_HEADER, STALE_EPOCH};
use txlab_api::fault::FAULT_HEADER;
use txlab_api::ErrorBody;
use txlab_tx::retry::{retry, Attempt, Backoff};

use super::store::OrderRow;
use super::Orders;
use txlab_api::Step;

/// Why a participant call did not succeed.
#[derive(Debug)]
pub enum CallError {
    /// A final refusal (business reason or bad request): do not retry.
    Refused(String),
    /// Timeout, connection error, 5xx: worth retrying.
    Transient(String),
}

/// An operation on one participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Saga step (apply at once) and its compensation, which is also every
    /// method's business compensation after confirmation.
    Apply,
    Compensate,
    Try,
    Confirm,
    Cancel,
    Prepare,
    Commit,
    Rollback,
}

/// URL and body of `op` on participant `step` for `order`.
pub fn request(orders: &Orders, order: &OrderRow, step: Step, op: Op) -> (String, Option<serde_json::Value>) {
    let p = &orders.peers;
    let spec = order.spec();
    let (base, collection, apply, compensate, body) = match step {
        Step::Payment => (&p.payment, "payments", "charge", "refund", json!(spec.charge())),
        Step::Inventory => (
            &p.inventory,
            "reservations",
            "reserve",
            "release",
            json!(spec.reserve()),
        ),
        Step::Shipping => (&p.shipping, "shipments", "book", "cancel", json!(spec.book())),
    };
    let id = order.id;
    match op {
        Op::Apply => (format!("{base}/{collection}/{id}/{apply}"), Some(body)),
        Op::Compensate => (format!("{base}/{collection}/{id}/{compensate}"), None),
        Op::Try => (format!("{base}/tcc/{collection}/{id}/try"), Some(body)),
        Op::Confirm => (format!("{base}/tcc/{collection}/{id}/confirm"), None),
        Op::Cancel => (format!("{base}/tcc/{collection}/{id}/cancel"), None),
        Op::Prepare => (format!("{base}/twopc/{collection}/{id}/prepare"), Some(body)),
        Op::Commit => (format!("{base}/twopc/{collection}/{id}/commit"), None),
        Op::Rollback => (format!("{base}/twopc/{collection}/{id}/rollback"), None),
    }
}

/// The fault header goes with a call's first attempt only: a planned fault
/// fires once and the retry shows the recovery (a crash fault would
/// otherwise crash the restarted participant again on every retry).
fn fault_for(order: &OrderRow, attempt: u32) -> Option<&str> {
    if attempt == 1 {
        order.fault.as_deref()
    } else {
        None
    }
}

async fn call(
    orders: &Orders,
    order: &OrderRow,
    url: &str,
    body: &Option<serde_json::Value>,
    fault: Option<&str>,
) -> Attempt<(), CallError> {
    let mut req = orders.http.post(url).header(EPOCH_HEADER, &order.epoch);
    if let Some(b) = body {
        req = req.json(b);
    }
    if let Some(f) = fault {
        req = req.header(FAULT_HEADER, f);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Attempt::Retry(CallError::Transient(e.to_string())),
    };
    let status = resp.status();
    if status.is_success() {
        return Attempt::Done(());
    }
    let body: Option<ErrorBody> = resp.json().await.ok();
    let code = body
        .as_ref()
        .map(|b| b.error.clone())
        .unwrap_or_else(|| status.to_string());
    if status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
        Attempt::Fail(CallError::Refused(code))
    } else {
        Attempt::Retry(CallError::Transient(code))
    }
}

/// A forward call: a few retries of transient failures; a refusal is final.
pub async fn ask(orders: &Orders, order: &OrderRow, step: Step, op: Op) -> Result<(), CallError> {
    let (url, body) = request(orders, order, step, op);
    retry(
        Backoff::FORWARD,
        |attempt| call(orders, order, &url, &body, fault_for(order, attempt)),
        |attempt, e| {
            orders.app.metrics.event("retry", step.as_str());
            tracing::warn!(step = step.as_str(), ?op, attempt, error = ?e, "call failed; retrying");
        },
    )
    .await
}

/// A call that must eventually succeed (compensations, phase two): retried
/// for as long as it takes, refusals included — except a refusal for a
/// stale epoch: the lab has reset the cell, and the order is gone.
pub async fn insist(orders: &Orders, order: &OrderRow, step: Step, op: Op) {
    let (url, body) = request(orders, order, step, op);
    let (url, body) = (&url, &body);
    let _ = retry(
        Backoff::UNTIL_DONE,
        |attempt| async move {
            match call(orders, order, url, body, fault_for(order, attempt)).await {
                Attempt::Fail(CallError::Refused(e)) if e == STALE_EPOCH => {
                    Attempt::Fail(CallError::Refused(e))
                }
                Attempt::Fail(CallError::Refused(e)) => Attempt::Retry(CallError::Refused(e)),
                other => other,
            }
        },
        |attempt, e| {
            orders.app.metrics.event("retry", step.as_str());
            tracing::warn!(step = step.as_str(), ?op, attempt, error = ?e, "call must succeed; retrying");
        },
    )
    .await;
}
