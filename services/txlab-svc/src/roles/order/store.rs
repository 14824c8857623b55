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
    /// The row a new order's insert writes (see `api::insert_order`).
    pub fn written(order: &OrderView, fault: Option<String>, epoch: String) -> OrderRow {
        OrderRow {
            id: order.id,
            customer: order.customer.clone(),
            items: sqlx::types::Json(order.items.clone()),
            amount: order.amount,
            slot: order.slot.clone(),
            method: order.method,
            state: order.state,
            reason: order.reason.clone(),
            fault,
            cancel_requested: false,
            created_ms: order.created_ms,
            decided_ms: order.decided_ms,
            epoch,
        }
    }

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

/// The order and its saga log, as the pure state machine sees them, in one
/// round trip: a row per logged step with the order's columns beside it
/// (one row with no step when nothing is logged yet).
pub async fn load_order_and_saga(
    conn: &mut PgConnection,
    id: Uuid,
) -> sqlx::Result<Option<(OrderRow, Saga)>> {
    use sqlx::{FromRow, Row};
    static COLUMNS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        // saga_steps has a `reason` too: the order's columns are named by table.
        ORDER_COLUMNS
            .split(", ")
            .map(|c| format!("o.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    });
    let rows = sqlx::query(&format!(
        "SELECT {}, s.step, s.forward, s.compensation \
         FROM orders o LEFT JOIN saga_steps s ON s.order_id = o.id WHERE o.id = $1 ORDER BY s.step",
        *COLUMNS
    ))
    .bind(id)
    .fetch_all(conn)
    .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let order = OrderRow::from_row(first)?;
    let mut saga = Saga::new(Step::ALL.len());
    for row in &rows {
        let Some(step) = row.try_get::<Option<i32>, _>("step")? else {
            continue; // the one row of an order with nothing logged
        };
        let fwd: String = row.try_get("forward")?;
        let comp: String = row.try_get("compensation")?;
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
    Ok(Some((order, saga)))
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

/// An engine's log table: the two state columns a mark may set and the
/// columns that keep when each kind of mark was made.
#[derive(Debug, PartialEq, Eq)]
struct Log {
    table: &'static str,
    states: [&'static str; 2],
    times: [&'static str; 4],
}

/// The saga log (`saga_steps`), also what the event-driven methods have heard.
const SAGA_LOG: Log = Log {
    table: "saga_steps",
    states: ["forward", "compensation"],
    times: [
        "forward_started_ms",
        "forward_ended_ms",
        "compensation_started_ms",
        "compensation_ended_ms",
    ],
};

/// The two-phase log (`tx_branches`).
const TWO_PHASE_LOG: Log = Log {
    table: "tx_branches",
    states: ["vote", "phase2"],
    times: ["asked_ms", "voted_ms", "phase2_started_ms", "phase2_ended_ms"],
};

/// A new value for one state column of a step's row in an engine's log.
#[derive(Debug, Clone, Copy)]
pub enum Mark {
    Forward(Forward),
    Compensation(Compensation),
    Vote(Vote),
    Phase2(Phase2),
}

impl Mark {
    fn log(self) -> &'static Log {
        match self {
            Mark::Forward(_) | Mark::Compensation(_) => &SAGA_LOG,
            Mark::Vote(_) | Mark::Phase2(_) => &TWO_PHASE_LOG,
        }
    }

    /// The state column the mark sets.
    fn column(self) -> &'static str {
        let states = self.log().states;
        match self {
            Mark::Forward(_) | Mark::Vote(_) => states[0],
            Mark::Compensation(_) | Mark::Phase2(_) => states[1],
        }
    }

    /// The column that keeps when this kind of mark was made: a state
    /// column's start, or its end.
    fn time_column(self) -> &'static str {
        let times = self.log().times;
        let started = self.is_call();
        match self {
            Mark::Forward(_) | Mark::Vote(_) => times[usize::from(!started)],
            Mark::Compensation(_) | Mark::Phase2(_) => times[2 + usize::from(!started)],
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

/// The statement that records a run of marks on distinct steps of `log`,
/// one row of arrays each: the step, the state column and its value, the
/// reason (the first one given is kept), the time column and the time, and
/// the attempts it counts. Any mix of kinds shares it.
///
/// With `fenced`, it first locks the order row and writes nothing unless
/// the order's driver is `$9` (see [`super::drivers`]); it returns the
/// driver it found, and no row when the order is gone.
fn marks_statement(log: &Log, fenced: bool) -> String {
    let states = log
        .states
        .iter()
        .map(|c| format!("{c} = CASE m.state WHEN '{c}' THEN m.value ELSE t.{c} END"));
    let times = log
        .times
        .iter()
        .map(|c| format!("{c} = CASE m.time WHEN '{c}' THEN m.at_ms ELSE t.{c} END"));
    let set: Vec<String> = states.chain(times).collect();
    let update = format!(
        "UPDATE {table} AS t SET {set}, reason = COALESCE(m.reason, t.reason), updated_ms = m.at_ms, \
         attempts = t.attempts + m.calls \
         FROM UNNEST($2::int[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::int[]) \
         AS m (step, state, value, reason, time, at_ms, calls) \
         WHERE t.order_id = $1 AND t.step = m.step",
        table = log.table,
        set = set.join(", "),
    );
    if !fenced {
        return update;
    }
    format!(
        "WITH fence AS (SELECT driver FROM orders WHERE id = $1 FOR NO KEY UPDATE), \
         marked AS ({update} AND NOT EXISTS (SELECT FROM fence WHERE driver IS DISTINCT FROM $9)) \
         SELECT driver FROM fence"
    )
}

/// Writes a run of marks (one log, distinct steps) in one statement. With
/// `fence`, only if this replica (`fence`) drives the order: false when
/// another one does, and nothing was written.
async fn write_run(
    conn: &mut PgConnection,
    id: Uuid,
    run: &[Unwritten],
    fence: Option<i32>,
) -> sqlx::Result<bool> {
    let steps: Vec<i32> = run.iter().map(|u| u.step.index() as i32).collect();
    let states: Vec<&str> = run.iter().map(|u| u.mark.column()).collect();
    let values: Vec<&str> = run.iter().map(|u| u.mark.value()).collect();
    let reasons: Vec<Option<&str>> = run.iter().map(|u| u.reason.as_deref()).collect();
    let times: Vec<&str> = run.iter().map(|u| u.mark.time_column()).collect();
    let at: Vec<i64> = run.iter().map(|u| u.at_ms).collect();
    let calls: Vec<i32> = run.iter().map(|u| i32::from(u.mark.is_call())).collect();
    let sql = marks_statement(run[0].mark.log(), fence.is_some());
    let query = sqlx::query_scalar::<_, Option<i32>>(&sql)
        .bind(id)
        .bind(&steps)
        .bind(&states)
        .bind(&values)
        .bind(&reasons)
        .bind(&times)
        .bind(&at)
        .bind(&calls);
    match fence {
        None => query.fetch_optional(conn).await.map(|_| true),
        Some(key) => {
            let found = query.bind(key).fetch_optional(conn).await?;
            // An order reset away passes: there was nothing to write.
            Ok(found.is_none_or(|driver| driver == Some(key)))
        }
    }
}

/// Writes a new order's rows in `log`, one per checkout step in the
/// `initial` states, with `first` already made on the first step: a call
/// whose intent is logged with the order itself.
async fn insert_log(
    tx: &mut PgConnection,
    log: &Log,
    initial: [&str; 2],
    id: Uuid,
    now: i64,
    first: Option<Mark>,
) -> sqlx::Result<()> {
    let steps: Vec<i32> = Step::ALL.iter().map(|s| s.index() as i32).collect();
    let names: Vec<&str> = Step::ALL.iter().map(|s| s.as_str()).collect();
    let mut states = [vec![initial[0]; steps.len()], vec![initial[1]; steps.len()]];
    let mut attempts = vec![0i32; steps.len()];
    let mut at: Vec<Option<i64>> = vec![None; steps.len()];
    let time = match first {
        Some(mark) => {
            let column = usize::from(mark.column() != log.states[0]);
            states[column][0] = mark.value();
            attempts[0] = i32::from(mark.is_call());
            at[0] = Some(now);
            mark.time_column()
        }
        None => log.times[0],
    };
    let [s0, s1] = log.states;
    sqlx::query(&format!(
        "INSERT INTO {table} (order_id, step, name, {s0}, {s1}, attempts, {time}, updated_ms) \
         SELECT $1, s.*, $8 FROM UNNEST($2::int[], $3::text[], $4::text[], $5::text[], $6::int[], $7::bigint[]) \
         AS s (step, name, s0, s1, attempts, at_ms)",
        table = log.table
    ))
    .bind(id)
    .bind(&steps)
    .bind(&names)
    .bind(&states[0])
    .bind(&states[1])
    .bind(&attempts)
    .bind(&at)
    .bind(now)
    .execute(tx)
    .await
    .map(drop)
}

/// A new order's saga log (every method keeps one: the event-driven ones
/// record there what they hear), with `first` made on its first step.
pub async fn insert_saga_log(
    tx: &mut PgConnection,
    id: Uuid,
    now: i64,
    first: Option<Mark>,
) -> sqlx::Result<()> {
    let initial = [Forward::NotStarted.as_str(), Compensation::NotStarted.as_str()];
    insert_log(tx, &SAGA_LOG, initial, id, now, first).await
}

/// A new order's two-phase log: nothing asked yet.
pub async fn insert_two_phase_log(tx: &mut PgConnection, id: Uuid, now: i64) -> sqlx::Result<()> {
    let initial = [Vote::NotAsked.as_str(), Phase2::Pending.as_str()];
    insert_log(tx, &TWO_PHASE_LOG, initial, id, now, None).await
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

/// Writes the marks in `unwritten` (in order) on `conn` and empties it. A
/// run of marks on different steps of one log (a step's result with the
/// next step's start, the three votes) is one statement.
pub async fn write_marks(
    conn: &mut PgConnection,
    id: Uuid,
    unwritten: &mut Vec<Unwritten>,
) -> sqlx::Result<()> {
    write_runs(conn, id, unwritten, None).await?;
    unwritten.clear();
    Ok(())
}

/// As [`write_marks`], but only while this replica (`driver`) drives the
/// order: the first statement locks the order row and checks its driver
/// (so a takeover waits for this write, then sees it). False when another
/// replica drives it now; then nothing is written and `unwritten` is kept.
pub async fn write_marks_fenced(
    conn: &mut PgConnection,
    id: Uuid,
    unwritten: &mut Vec<Unwritten>,
    driver: i32,
) -> sqlx::Result<bool> {
    let ours = write_runs(conn, id, unwritten, Some(driver)).await?;
    if ours {
        unwritten.clear();
    }
    Ok(ours)
}

/// Writes `marks` a run at a time, the first run fenced by `fence` (see
/// [`write_run`]); stops, false, if the fence refuses it.
async fn write_runs(
    conn: &mut PgConnection,
    id: Uuid,
    marks: &[Unwritten],
    mut fence: Option<i32>,
) -> sqlx::Result<bool> {
    let mut rest = marks;
    while !rest.is_empty() {
        let run = one_statement(rest);
        if !write_run(conn, id, &rest[..run], fence.take()).await? {
            return Ok(false);
        }
        rest = &rest[run..];
    }
    Ok(true)
}

/// How many marks from the first of `marks` on one statement writes: those
/// of the first one's log, on steps not yet in the run (one statement
/// updates a row once, so a second mark on a step starts a new run).
pub fn one_statement(marks: &[Unwritten]) -> usize {
    let log = marks[0].mark.log();
    let mut steps = Vec::with_capacity(marks.len());
    for u in marks {
        if u.mark.log() != log || steps.contains(&u.step) {
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
            let n = one_statement(rest);
            runs.push(n);
            rest = &rest[n..];
        }
        runs
    }

    #[test]
    fn marks_on_distinct_steps_of_one_log_share_a_statement() {
        let [p, i, s] = Step::ALL;
        // The votes of three branches, then the decision's phase two on a
        // step already in the run.
        let votes = [
            (p, Mark::Vote(Vote::Yes)),
            (i, Mark::Vote(Vote::Yes)),
            (s, Mark::Vote(Vote::No)),
            (p, Mark::Phase2(Phase2::Done)),
        ];
        assert_eq!(run_lengths(&votes), [3, 1]);
        // A step's result and the next step's start: one statement.
        let saga = [
            (p, Mark::Forward(Forward::Done)),
            (i, Mark::Forward(Forward::Started)),
        ];
        assert_eq!(run_lengths(&saga), [2]);
        // One statement updates a row once: a second mark on a step waits.
        let again = [
            (p, Mark::Forward(Forward::Done)),
            (p, Mark::Forward(Forward::Done)),
            (i, Mark::Forward(Forward::Done)),
        ];
        assert_eq!(run_lengths(&again), [1, 2]);
        // Another log is another table, another statement.
        let both = [
            (p, Mark::Phase2(Phase2::Done)),
            (i, Mark::Phase2(Phase2::Done)),
            (s, Mark::Forward(Forward::Done)),
        ];
        assert_eq!(run_lengths(&both), [2, 1]);
    }

    #[test]
    fn each_mark_sets_its_own_columns() {
        let cols = |m: Mark| (m.log().table, m.column(), m.time_column(), m.is_call());
        let cases = [
            (
                Mark::Forward(Forward::Started),
                ("saga_steps", "forward", "forward_started_ms", true),
            ),
            (
                Mark::Forward(Forward::Rejected),
                ("saga_steps", "forward", "forward_ended_ms", false),
            ),
            (
                Mark::Compensation(Compensation::Done),
                ("saga_steps", "compensation", "compensation_ended_ms", false),
            ),
            (Mark::Vote(Vote::Asked), ("tx_branches", "vote", "asked_ms", true)),
            (
                Mark::Phase2(Phase2::Started),
                ("tx_branches", "phase2", "phase2_started_ms", true),
            ),
            (
                Mark::Phase2(Phase2::Done),
                ("tx_branches", "phase2", "phase2_ended_ms", false),
            ),
        ];
        for (mark, columns) in cases {
            assert_eq!(cols(mark), columns, "{mark:?}");
        }
    }
}
