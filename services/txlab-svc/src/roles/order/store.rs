//! The order service's tables: orders, the saga log, idempotency keys.

use sqlx::{PgConnection, PgPool};
use txlab_api::event::OrderSpec;
use txlab_api::order::{OrderItem, OrderState, OrderView};
use txlab_api::{Step, TxMode};
use txlab_tx::saga::{Compensation, Forward, Saga, StepRecord};
use txlab_tx::two_phase::{Decision, Phase2, TwoPhase, Vote};
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrderRow {
    pub id: Uuid,
    pub customer: String,
    pub items: sqlx::types::Json<Vec<OrderItem>>,
    pub amount: i64,
    pub slot: String,
    #[sqlx(try_from = "String")]
    pub method: TxMode,
    #[sqlx(try_from = "String")]
    pub state: OrderState,
    pub reason: Option<String>,
    pub fault: Option<String>,
    pub cancel_requested: bool,
    pub created_ms: i64,
    pub decided_ms: Option<i64>,
    /// The lab epoch the order was born in, sent with every participant call.
    pub epoch: String,
}

impl OrderRow {
    /// What participants need of the order, as checkout events carry it.
    pub fn spec(&self) -> OrderSpec {
        OrderSpec {
            customer: self.customer.clone(),
            amount: self.amount,
            items: self.items.0.clone(),
            slot: self.slot.clone(),
            fault: self.fault.clone(),
        }
    }

    pub fn view(&self) -> OrderView {
        OrderView {
            id: self.id,
            state: self.state,
            customer: self.customer.clone(),
            amount: self.amount,
            slot: self.slot.clone(),
            items: self.items.0.clone(),
            reason: self.reason.clone(),
            method: self.method,
            created_ms: self.created_ms,
            decided_ms: self.decided_ms,
        }
    }
}

const ORDER_COLUMNS: &str =
    "id, customer, items, amount, slot, method, state, reason, fault, cancel_requested, created_ms, decided_ms, epoch";

pub async fn load_order(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<OrderRow>> {
    sqlx::query_as(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// The saga's persisted records, as the pure state machine sees them.
pub async fn load_saga(conn: &mut PgConnection, order: &OrderRow) -> sqlx::Result<Saga> {
    let rows: Vec<(i32, String, String)> = sqlx::query_as(
        "SELECT step, forward, compensation FROM saga_steps WHERE order_id = $1 ORDER BY step",
    )
    .bind(order.id)
    .fetch_all(conn)
    .await?;
    let mut saga = Saga::new(Step::ALL.len());
    for (step, fwd, comp) in rows {
        let record = StepRecord {
            forward: Forward::parse(&fwd)
                .ok_or_else(|| sqlx::Error::Decode(format!("bad forward state {fwd}").into()))?,
            compensation: Compensation::parse(&comp)
                .ok_or_else(|| sqlx::Error::Decode(format!("bad compensation state {comp}").into()))?,
        };
        if let Some(slot) = saga.steps.get_mut(step as usize) {
            *slot = record;
        }
    }
    saga.cancel_requested = order.cancel_requested;
    Ok(saga)
}

/// The two-phase log of an order, as the pure state machine sees it.
pub async fn load_two_phase(conn: &mut PgConnection, order: &OrderRow) -> sqlx::Result<TwoPhase> {
    let rows: Vec<(i32, String, String)> =
        sqlx::query_as("SELECT step, vote, phase2 FROM tx_branches WHERE order_id = $1 ORDER BY step")
            .bind(order.id)
            .fetch_all(&mut *conn)
            .await?;
    let bad = |what: &str, v: &str| sqlx::Error::Decode(format!("bad {what} {v}").into());
    let mut tp = TwoPhase::new(Step::ALL.len(), order.method == TxMode::Tcc);
    for (step, vote, phase2) in rows {
        let i = step as usize;
        if i < Step::ALL.len() {
            tp.votes[i] = Vote::parse(&vote).ok_or_else(|| bad("vote", &vote))?;
            tp.phase2[i] = Phase2::parse(&phase2).ok_or_else(|| bad("phase-two state", &phase2))?;
        }
    }
    tp.decision = load_decision(conn, order.id).await?;
    tp.cancel_requested = order.cancel_requested;
    Ok(tp)
}

pub async fn load_decision(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<Decision>> {
    let d: Option<String> = sqlx::query_scalar("SELECT decision FROM tx_decisions WHERE order_id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Ok(d.as_deref().and_then(Decision::parse))
}

/// Logs a decision unless one is logged already (perhaps a presumed abort),
/// and returns the one that stands. This insert is the commit point.
pub async fn log_decision(
    conn: &mut PgConnection,
    id: Uuid,
    decision: Decision,
    presumed: bool,
) -> sqlx::Result<Decision> {
    sqlx::query("INSERT INTO tx_decisions (order_id, decision, presumed, decided_ms) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
        .bind(id)
        .bind(decision.as_str())
        .bind(presumed)
        .bind(txlab_tx::now_ms())
        .execute(&mut *conn)
        .await?;
    Ok(load_decision(conn, id).await?.unwrap_or(decision))
}

/// A new value for one column of a step's row in an engine's log: the
/// saga log (`saga_steps`, also what the event-driven methods have heard)
/// or the two-phase log (`tx_branches`).
#[derive(Debug, Clone, Copy)]
pub enum Mark {
    Forward(Forward),
    Compensation(Compensation),
    Vote(Vote),
    Phase2(Phase2),
}

impl Mark {
    fn table_and_column(self) -> (&'static str, &'static str) {
        match self {
            Mark::Forward(_) => ("saga_steps", "forward"),
            Mark::Compensation(_) => ("saga_steps", "compensation"),
            Mark::Vote(_) => ("tx_branches", "vote"),
            Mark::Phase2(_) => ("tx_branches", "phase2"),
        }
    }

    /// The column that keeps when this kind of mark was made.
    fn time_column(self) -> &'static str {
        match self {
            Mark::Forward(Forward::Started) => "forward_started_ms",
            Mark::Forward(_) => "forward_ended_ms",
            Mark::Compensation(Compensation::Started) => "compensation_started_ms",
            Mark::Compensation(_) => "compensation_ended_ms",
            Mark::Vote(Vote::Asked) => "asked_ms",
            Mark::Vote(_) => "voted_ms",
            Mark::Phase2(Phase2::Started) => "phase2_started_ms",
            Mark::Phase2(_) => "phase2_ended_ms",
        }
    }

    fn value(self) -> &'static str {
        match self {
            Mark::Forward(v) => v.as_str(),
            Mark::Compensation(v) => v.as_str(),
            Mark::Vote(v) => v.as_str(),
            Mark::Phase2(v) => v.as_str(),
        }
    }

    /// What decides the statement that writes the mark: its table and
    /// column, its time column, and whether it counts an attempt.
    fn kind(self) -> (&'static str, &'static str, &'static str, bool) {
        let (table, column) = self.table_and_column();
        (table, column, self.time_column(), self.is_call())
    }

    /// Whether the mark says a call is about to be made (an attempt).
    fn is_call(self) -> bool {
        matches!(
            self,
            Mark::Forward(Forward::Started)
                | Mark::Compensation(Compensation::Started)
                | Mark::Vote(Vote::Asked)
                | Mark::Phase2(Phase2::Started)
        )
    }
}

/// The statement that records a mark of `mark`'s kind: the new value,
/// the first reason given kept, the time, and an attempt counted when the
/// mark announces a call. `values` are the SQL for the value, reason and
/// time, `step` that of the row's step; `from` names where they come from.
fn mark_statement(mark: Mark, values: [&str; 3], from: &str, step: &str) -> String {
    let (table, column) = mark.table_and_column();
    let when = mark.time_column();
    let [value, reason, at] = values;
    let bump = if mark.is_call() {
        ", attempts = t.attempts + 1"
    } else {
        ""
    };
    format!(
        "UPDATE {table} AS t SET {column} = {value}, reason = COALESCE({reason}, t.reason), \
         updated_ms = {at}, {when} = {at}{bump} {from} WHERE t.order_id = $1 AND t.step = {step}"
    )
}

/// Records `mark`, made at `at_ms`, on the row of `step`.
pub async fn mark<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    id: Uuid,
    step: Step,
    mark: Mark,
    reason: Option<&str>,
    at_ms: i64,
) -> sqlx::Result<()> {
    sqlx::query(&mark_statement(mark, ["$3", "$4", "$5"], "", "$2"))
        .bind(id)
        .bind(step.index() as i32)
        .bind(mark.value())
        .bind(reason)
        .bind(at_ms)
        .execute(conn)
        .await
        .map(drop)
}

/// Records marks of one kind on distinct steps in one statement.
async fn marks_of_a_kind(conn: &mut PgConnection, id: Uuid, batch: &[Unwritten]) -> sqlx::Result<()> {
    let steps: Vec<i32> = batch.iter().map(|u| u.step.index() as i32).collect();
    let values: Vec<&str> = batch.iter().map(|u| u.mark.value()).collect();
    let reasons: Vec<Option<&str>> = batch.iter().map(|u| u.reason.as_deref()).collect();
    let times: Vec<i64> = batch.iter().map(|u| u.at_ms).collect();
    let from =
        "FROM UNNEST($2::int[], $3::text[], $4::text[], $5::bigint[]) AS m (step, value, reason, at_ms)";
    sqlx::query(&mark_statement(
        batch[0].mark,
        ["m.value", "m.reason", "m.at_ms"],
        from,
        "m.step",
    ))
    .bind(id)
    .bind(&steps)
    .bind(&values)
    .bind(&reasons)
    .bind(&times)
    .execute(conn)
    .await
    .map(drop)
}

/// A mark the engine has decided in memory; it is written together with
/// the engine's next write (the next call's mark or the outcome), which
/// saves a commit per step. Until then a crash loses it, and the step is
/// found as it was before — `Started` — and its call repeated, which the
/// participants' records absorb.
#[derive(Debug, Clone)]
pub struct Unwritten {
    pub step: Step,
    pub mark: Mark,
    pub reason: Option<String>,
    /// When the engine decided it (written as the mark's time).
    pub at_ms: i64,
}

impl Unwritten {
    /// `mark` on `step`, decided now.
    pub fn now(step: Step, mark: Mark, reason: Option<String>) -> Unwritten {
        Unwritten {
            step,
            mark,
            reason,
            at_ms: txlab_tx::now_ms(),
        }
    }
}

/// Writes the marks in `unwritten` (in order) on `conn` and empties it.
/// A run of marks of one kind on different steps (the three votes, the
/// three ends of phase two) is one statement.
pub async fn write_marks(
    conn: &mut PgConnection,
    id: Uuid,
    unwritten: &mut Vec<Unwritten>,
) -> sqlx::Result<()> {
    let mut rest = &unwritten[..];
    while let Some(first) = rest.first() {
        let run = of_a_kind(rest);
        if run == 1 {
            mark(
                &mut *conn,
                id,
                first.step,
                first.mark,
                first.reason.as_deref(),
                first.at_ms,
            )
            .await?;
        } else {
            marks_of_a_kind(conn, id, &rest[..run]).await?;
        }
        rest = &rest[run..];
    }
    unwritten.clear();
    Ok(())
}

/// How many marks from the first of `marks` on are of its kind (the same
/// statement) and on steps not yet in the run: one statement updates a
/// row once, so a second mark on a step starts a new run.
fn of_a_kind(marks: &[Unwritten]) -> usize {
    let kind = marks[0].mark.kind();
    let mut steps = Vec::with_capacity(marks.len());
    for u in marks {
        if u.mark.kind() != kind || steps.contains(&u.step) {
            break;
        }
        steps.push(u.step);
    }
    steps.len()
}

/// Orders whose saga has work left (a cancel of a confirmed order turns it
/// back to `compensating` in the same statement that records the cancel).
pub async fn open_orders(pool: &PgPool) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar("SELECT id FROM orders WHERE state = ANY($1) ORDER BY created_ms")
        .bind(OrderState::texts(&OrderState::OPEN))
        .fetch_all(pool)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_lengths(marks: &[(Step, Mark)]) -> Vec<usize> {
        let unwritten: Vec<Unwritten> = marks
            .iter()
            .map(|&(step, mark)| Unwritten::now(step, mark, None))
            .collect();
        let mut rest = &unwritten[..];
        let mut runs = vec![];
        while !rest.is_empty() {
            let n = of_a_kind(rest);
            runs.push(n);
            rest = &rest[n..];
        }
        runs
    }

    #[test]
    fn marks_of_one_kind_on_distinct_steps_share_a_statement() {
        let [p, i, s] = Step::ALL;
        // The votes of three branches, then the decision's phase two.
        let votes = [
            (p, Mark::Vote(Vote::Yes)),
            (i, Mark::Vote(Vote::Yes)),
            (s, Mark::Vote(Vote::No)),
            (p, Mark::Phase2(Phase2::Done)),
        ];
        assert_eq!(run_lengths(&votes), [3, 1]);
        // A step's result and the next step's start are different kinds
        // (a start counts an attempt and keeps another time).
        let saga = [
            (p, Mark::Forward(Forward::Done)),
            (i, Mark::Forward(Forward::Started)),
        ];
        assert_eq!(run_lengths(&saga), [1, 1]);
        // One statement updates a row once: a second mark on a step waits.
        let again = [
            (p, Mark::Forward(Forward::Done)),
            (p, Mark::Forward(Forward::Done)),
            (i, Mark::Forward(Forward::Done)),
        ];
        assert_eq!(run_lengths(&again), [1, 2]);
    }
}
