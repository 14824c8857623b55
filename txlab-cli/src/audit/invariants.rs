//! The invariants, each violation naming its orders.
//!
//! Every check is anchored to something the system under test did not
//! compute about itself: conservation to the seed the lab sent, effects to
//! the append-only ledger the participants write with each change, each
//! participant's part to the order's own content (customer, amount, lines,
//! slot), outcomes to the outcome events and notifications as sequences,
//! and the whole to what the load driver saw.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use txlab_api::admin::Seed;
use txlab_api::order::OrderState;
use txlab_api::participant::{LedgerCount, LedgerOp, RecordState};
use txlab_api::{Role, TxMode};
use uuid::Uuid;

use super::collect::{active_consumers, OrderRow, ParticipantDb, Snapshots};

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// One of [`INVARIANTS`].
    pub invariant: &'static str,
    pub detail: String,
    /// The orders involved, for finding them in the logs.
    pub orders: Vec<Uuid>,
    /// True when the method's contract accepts this inconsistency (an
    /// `outbox` order left needing attention): reported, not a bug.
    pub by_design: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditReport {
    pub orders_checked: usize,
    pub violations: Vec<Violation>,
    /// Violations per invariant (bugs only), zeros included, so a reader sees what was checked.
    pub by_invariant: BTreeMap<&'static str, usize>,
    /// Time from an order's decision to its notification (ms): how long the
    /// asynchronous part takes to become consistent.
    pub notification_lag_p50_ms: Option<i64>,
    pub notification_lag_max_ms: Option<i64>,
}

/// What is checked; see the README's audit section for each one's anchor.
pub const INVARIANTS: [&str; 10] = [
    "money",
    "stock",
    "slots",
    "atomicity",
    "exactly_once",
    "termination",
    "outcomes",
    "notification",
    "client",
    "dead_letter",
];

/// What the load driver saw of the cell: every order it got a 2xx for, and
/// the final state it saw (`None`: it never saw one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ClientView {
    pub orders: BTreeMap<Uuid, Option<OrderState>>,
}

/// The legal histories of an order's outcomes (docs/architecture.md: a terminal
/// state changes only by a cancel of a confirmed or needs-attention order).
const LEGAL_OUTCOMES: [&[OrderState]; 6] = {
    use OrderState::{Cancelled, Confirmed, NeedsAttention, Rejected};
    [
        &[Confirmed],
        &[Rejected],
        &[Cancelled],
        &[Confirmed, Cancelled],
        &[NeedsAttention],
        &[NeedsAttention, Cancelled],
    ]
};

const PARTICIPANTS: [Role; 3] = [Role::Payment, Role::Inventory, Role::Shipping];

struct Audit {
    violations: Vec<Violation>,
}

impl Audit {
    fn flag(&mut self, invariant: &'static str, detail: String, orders: Vec<Uuid>) {
        self.violations.push(Violation {
            invariant,
            detail,
            orders,
            by_design: false,
        });
    }

    fn by_design(&mut self, invariant: &'static str, detail: String, orders: Vec<Uuid>) {
        self.violations.push(Violation {
            invariant,
            detail,
            orders,
            by_design: true,
        });
    }
}

/// Checks a settled cell of `method`. `client` is what the load driver saw,
/// when there was a load.
pub fn check(seed: &Seed, s: &Snapshots, method: TxMode, client: Option<&ClientView>) -> AuditReport {
    let mut a = Audit {
        violations: Vec::new(),
    };
    let orders: HashMap<Uuid, &OrderRow> = s.orders.iter().map(|o| (o.id, o)).collect();
    let wallets = seed
        .wallets
        .iter()
        .map(|w| (w.customer.as_str(), w.balance))
        .collect();
    conservation(&mut a, Role::Payment, &wallets, &s.payment);
    let stock = seed.stock.iter().map(|l| (l.sku.as_str(), l.available)).collect();
    conservation(&mut a, Role::Inventory, &stock, &s.inventory);
    let capacity = seed.slots.iter().map(|l| (l.slot.as_str(), l.capacity)).collect();
    slots(&mut a, &capacity, &s.shipping);
    for role in PARTICIPANTS {
        exactly_once(&mut a, role, s.participant(role), &orders);
    }
    atomicity(&mut a, s);
    termination(&mut a, s, method);
    outcomes(&mut a, s, &orders);
    let (p50, max) = notifications(&mut a, s, &orders);
    if let Some(c) = client {
        reconcile(&mut a, c, &orders);
    }
    dead_letters(&mut a, s);
    let mut by_invariant: BTreeMap<&'static str, usize> = INVARIANTS.iter().map(|i| (*i, 0)).collect();
    for v in a.violations.iter().filter(|v| !v.by_design) {
        *by_invariant.entry(v.invariant).or_default() += 1;
    }
    AuditReport {
        orders_checked: s.orders.len(),
        violations: a.violations,
        by_invariant,
        notification_lag_p50_ms: p50,
        notification_lag_max_ms: max,
    }
}

/// The applied (taken) and undone record states of a participant.
fn applied(role: Role) -> RecordState {
    match role {
        Role::Payment => RecordState::Captured,
        Role::Inventory => RecordState::Reserved,
        _ => RecordState::Booked,
    }
}

fn part_name(role: Role) -> &'static str {
    match role {
        Role::Payment => "payment",
        Role::Inventory => "stock reservation",
        _ => "courier slot",
    }
}

/// What an order asks of a participant, from the order's own content:
/// item → quantity.
fn content(role: Role, o: &OrderRow) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    match role {
        Role::Payment => {
            m.insert(o.customer.clone(), o.amount);
        }
        Role::Inventory => {
            for i in o.items.iter() {
                *m.entry(i.sku.clone()).or_insert(0) += i64::from(i.qty);
            }
        }
        _ => {
            m.insert(o.slot.clone(), 1);
        }
    }
    m
}

/// Ledger quantities per item for each operation.
#[derive(Default)]
struct Moved {
    by_op: BTreeMap<LedgerOp, BTreeMap<String, i64>>,
    orders: Vec<Uuid>,
}

impl Moved {
    fn sum(&self, op: LedgerOp) -> i64 {
        self.by_op.get(&op).map(|m| m.values().sum()).unwrap_or(0)
    }
}

/// The ledger of one participant, per item (for conservation) or per order.
fn ledger_by<K: Ord>(
    db: &ParticipantDb,
    key: impl Fn(&super::collect::LedgerRow) -> K,
) -> BTreeMap<K, Moved> {
    let mut out: BTreeMap<K, Moved> = BTreeMap::new();
    for row in &db.ledger {
        let m = out.entry(key(row)).or_default();
        *m.by_op
            .entry(row.op)
            .or_default()
            .entry(row.item.clone())
            .or_default() += row.qty;
        if !m.orders.contains(&row.order_id) {
            m.orders.push(row.order_id);
        }
    }
    out
}

/// Money and stock: for every seeded customer or SKU, what is left plus
/// what is held plus what was taken (captures less restores, from the
/// ledger) equals the seed; and what is held equals what the ledger holds.
fn conservation(a: &mut Audit, role: Role, seeded: &BTreeMap<&str, i64>, db: &ParticipantDb) {
    let (invariant, what, amount, held) = match role {
        Role::Payment => ("money", "customer", "balance", "reserved"),
        _ => ("stock", "SKU", "available", "reserved"),
    };
    let per_item = ledger_by(db, |r| r.item.clone());
    let empty = Moved::default();
    for row in &db.items {
        let m = per_item.get(&row.item).unwrap_or(&empty);
        let (hold, capture, release, restore) = (
            m.sum(LedgerOp::Hold),
            m.sum(LedgerOp::Capture),
            m.sum(LedgerOp::Release),
            m.sum(LedgerOp::Restore),
        );
        let taken = capture - restore;
        let item = &row.item;
        match seeded.get(item.as_str()) {
            None => a.flag(
                invariant,
                format!("{what} {item} exists but was never seeded"),
                m.orders.clone(),
            ),
            Some(&start) if row.amount + row.held + taken != start => a.flag(
                invariant,
                format!(
                    "{what} {item}: {amount} {} + {held} {} + taken {taken} = {}, but {start} was seeded",
                    row.amount,
                    row.held,
                    row.amount + row.held + taken
                ),
                m.orders.clone(),
            ),
            Some(_) => {}
        }
        let ledger_held = hold - capture - release;
        if row.held != ledger_held {
            a.flag(
                invariant,
                format!(
                    "{what} {item}: {held} {} but the ledger holds {ledger_held}",
                    row.held
                ),
                m.orders.clone(),
            );
        }
        if row.amount < 0 || row.held < 0 || taken < 0 {
            a.flag(
                invariant,
                format!(
                    "{what} {item} went negative ({amount} {}, {held} {}, taken {taken})",
                    row.amount, row.held
                ),
                m.orders.clone(),
            );
        }
    }
    for item in seeded.keys() {
        if !db.items.iter().any(|r| r.item == *item) {
            a.flag(invariant, format!("seeded {what} {item} is missing"), vec![]);
        }
    }
}

/// Courier slots: the capacity is the one seeded, the booked counter equals
/// the live bookings in the ledger, and those never exceed the seeded capacity.
fn slots(a: &mut Audit, seeded: &BTreeMap<&str, i64>, db: &ParticipantDb) {
    let per_slot = ledger_by(db, |r| r.item.clone());
    let empty = Moved::default();
    for row in &db.items {
        let m = per_slot.get(&row.item).unwrap_or(&empty);
        let live = m.sum(LedgerOp::Hold) - m.sum(LedgerOp::Release) - m.sum(LedgerOp::Restore);
        let slot = &row.item;
        let Some(&capacity) = seeded.get(slot.as_str()) else {
            a.flag(
                "slots",
                format!("slot {slot} exists but was never seeded"),
                m.orders.clone(),
            );
            continue;
        };
        if row.amount != capacity {
            a.flag(
                "slots",
                format!(
                    "slot {slot}: capacity is {}, but {capacity} was seeded",
                    row.amount
                ),
                m.orders.clone(),
            );
        }
        if row.held != live {
            a.flag(
                "slots",
                format!(
                    "slot {slot}: booked counter says {}, the ledger holds {live} live bookings",
                    row.held
                ),
                m.orders.clone(),
            );
        }
        if live > capacity || live < 0 {
            a.flag(
                "slots",
                format!("slot {slot}: {live} live bookings against a seeded capacity of {capacity}"),
                m.orders.clone(),
            );
        }
    }
    for slot in seeded.keys() {
        if !db.items.iter().any(|r| r.item == *slot) {
            a.flag("slots", format!("seeded slot {slot} is missing"), vec![]);
        }
    }
}

/// Each participant record's state implies how often each operation moved
/// the order's items; the ledger must show exactly that, item by item, with
/// the quantities of the order's own content.
fn exactly_once(a: &mut Audit, role: Role, db: &ParticipantDb, orders: &HashMap<Uuid, &OrderRow>) {
    let what = part_name(role);
    let per_order = ledger_by(db, |r| r.order_id);
    let mut recorded = std::collections::HashSet::new();
    for rec in &db.records {
        recorded.insert(rec.order_id);
        let id = rec.order_id;
        let state = rec.state;
        let Some(order) = orders.get(&id) else {
            // A call for an order the coordinator never logged that came to
            // nothing (a branch rolled back by presumed abort) holds nothing.
            let came_to_nothing =
                matches!(state, RecordState::Rejected | RecordState::Voided) && !per_order.contains_key(&id);
            if !came_to_nothing {
                a.flag("atomicity", format!("a {what} record ({state}) exists for order {id}, which the order service does not know"), vec![id]);
            }
            continue;
        };
        let want_counts: LedgerCount = state.ledger_ops();
        let content = content(role, order);
        let empty = Moved::default();
        let moved = per_order.get(&id).unwrap_or(&empty);
        for op in LedgerOp::ALL {
            let times = want_counts.times(op);
            let want: BTreeMap<String, i64> = if times == 0 {
                BTreeMap::new()
            } else {
                content
                    .iter()
                    .map(|(k, q)| (k.clone(), q * i64::from(times)))
                    .collect()
            };
            let got = moved.by_op.get(&op).cloned().unwrap_or_default();
            if got != want {
                a.flag(
                    "exactly_once",
                    format!("{what} of order {id} ({state}): {} moved {got:?}, the order and its record call for {want:?}", op.as_str()),
                    vec![id],
                );
            }
        }
    }
    for (id, _) in per_order.iter().filter(|(id, _)| !recorded.contains(*id)) {
        a.flag(
            "exactly_once",
            format!("the {role} ledger moved items for order {id}, which has no {what} record"),
            vec![*id],
        );
    }
}

/// All or nothing, from each order's own state: a confirmed order has every
/// part taken, a rejected or cancelled one none held or taken, and only an
/// `outbox` order may be left needing attention (by design).
fn atomicity(a: &mut Audit, s: &Snapshots) {
    let records: Vec<HashMap<Uuid, RecordState>> = PARTICIPANTS
        .iter()
        .map(|r| {
            s.participant(*r)
                .records
                .iter()
                .map(|x| (x.order_id, x.state))
                .collect()
        })
        .collect();
    for o in &s.orders {
        let parts: Vec<(Role, Option<RecordState>)> = PARTICIPANTS
            .iter()
            .zip(&records)
            .map(|(r, m)| (*r, m.get(&o.id).copied()))
            .collect();
        let holding: Vec<String> = parts
            .iter()
            .filter(|(r, st)| *st == Some(applied(*r)) || *st == Some(RecordState::Tried))
            .map(|(r, st)| format!("{} ({})", part_name(*r), st.map(|x| x.as_str()).unwrap_or("")))
            .collect();
        let id = o.id;
        match o.state {
            OrderState::Confirmed => {
                let missing: Vec<String> = parts
                    .iter()
                    .filter(|(r, st)| *st != Some(applied(*r)))
                    .map(|(r, st)| {
                        format!(
                            "{} (record: {})",
                            part_name(*r),
                            st.map(|x| x.as_str()).unwrap_or("none")
                        )
                    })
                    .collect();
                if !missing.is_empty() {
                    a.flag(
                        "atomicity",
                        format!("confirmed order {id} lacks its {}", missing.join(", ")),
                        vec![id],
                    );
                }
            }
            OrderState::Rejected | OrderState::Cancelled if !holding.is_empty() => {
                a.flag(
                    "atomicity",
                    format!("{} order {id} still holds its {}", o.state, holding.join(", ")),
                    vec![id],
                );
            }
            OrderState::NeedsAttention if o.method != TxMode::Outbox => a.flag(
                "atomicity",
                format!(
                    "order {id} needs attention under {}; only outbox leaves an order for a person",
                    o.method
                ),
                vec![id],
            ),
            // Outbox applies without compensation: a refused step leaves the
            // others' effects standing until a person acts.
            OrderState::NeedsAttention if !holding.is_empty() => a.by_design(
                "atomicity",
                format!(
                    "order {id} needs attention and holds its {} (outbox, by design)",
                    holding.join(", ")
                ),
                vec![id],
            ),
            _ => {}
        }
    }
}

/// Nothing left moving: every order decided, no branch tried or prepared,
/// every outbox published, every consumer at its topic's end.
fn termination(a: &mut Audit, s: &Snapshots, method: TxMode) {
    for o in s.orders.iter().filter(|o| !o.state.is_terminal()) {
        a.flag(
            "termination",
            format!("order {} is still {} after quiesce", o.id, o.state),
            vec![o.id],
        );
    }
    for role in PARTICIPANTS {
        let db = s.participant(role);
        for r in db.records.iter().filter(|r| r.state == RecordState::Tried) {
            a.flag(
                "termination",
                format!("the {role} TCC branch of order {} was left tried", r.order_id),
                vec![r.order_id],
            );
        }
        for gid in &db.prepared {
            let order = gid.rsplit('_').next().and_then(|hex| Uuid::parse_str(hex).ok());
            a.flag(
                "termination",
                format!("prepared transaction {gid} was left in the {role} database"),
                order.into_iter().collect(),
            );
        }
    }
    for (role, m) in &s.messaging {
        if m.unpublished > 0 {
            a.flag(
                "termination",
                format!(
                    "{} outbox rows of the {role} service were never published",
                    m.unpublished
                ),
                vec![],
            );
        }
    }
    for (consumer, topic) in active_consumers(method) {
        let behind = s.consumer_lag(consumer, topic);
        if behind != 0 {
            a.flag(
                "termination",
                format!("the {consumer} consumer is {behind} messages from the end of {topic}"),
                vec![],
            );
        }
    }
}

/// An outcome history in words, e.g. `confirmed → cancelled`.
fn history(seq: &[OrderState]) -> String {
    if seq.is_empty() {
        return "none".into();
    }
    seq.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" → ")
}

fn sequences(pairs: impl Iterator<Item = (Uuid, OrderState)>) -> BTreeMap<Uuid, Vec<OrderState>> {
    let mut out: BTreeMap<Uuid, Vec<OrderState>> = BTreeMap::new();
    for (id, state) in pairs {
        out.entry(id).or_default().push(state);
    }
    out
}

/// Each decided order's outcome events form a legal history ending in its
/// current state.
fn outcomes(a: &mut Audit, s: &Snapshots, orders: &HashMap<Uuid, &OrderRow>) {
    let seqs = sequences(s.outcomes.iter().map(|o| (o.order_id, o.state)));
    for o in s.orders.iter().filter(|o| o.state.is_terminal()) {
        let seq = seqs.get(&o.id).cloned().unwrap_or_default();
        if seq.is_empty() {
            a.flag(
                "outcomes",
                format!("order {} is {} but no outcome event was written", o.id, o.state),
                vec![o.id],
            );
        } else if !LEGAL_OUTCOMES.contains(&seq.as_slice()) {
            a.flag(
                "outcomes",
                format!(
                    "order {} has outcome events {}, not a legal history",
                    o.id,
                    history(&seq)
                ),
                vec![o.id],
            );
        } else if seq.last() != Some(&o.state) {
            a.flag(
                "outcomes",
                format!(
                    "order {}'s outcome events say {}, the order is {}",
                    o.id,
                    history(&seq),
                    o.state
                ),
                vec![o.id],
            );
        }
    }
    for id in seqs.keys().filter(|id| !orders.contains_key(id)) {
        a.flag(
            "outcomes",
            format!("outcome events for order {id}, which the order service does not know"),
            vec![*id],
        );
    }
}

/// Exactly one notification per outcome event, in the same order; returns
/// the notification lag's median and maximum.
fn notifications(
    a: &mut Audit,
    s: &Snapshots,
    orders: &HashMap<Uuid, &OrderRow>,
) -> (Option<i64>, Option<i64>) {
    let outcomes = sequences(s.outcomes.iter().map(|o| (o.order_id, o.state)));
    let notified = sequences(s.notifications.iter().map(|n| (n.order_id, n.kind)));
    let mut ids: Vec<Uuid> = outcomes.keys().chain(notified.keys()).copied().collect();
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        let (want, got) = (
            outcomes.get(&id).cloned().unwrap_or_default(),
            notified.get(&id).cloned().unwrap_or_default(),
        );
        if !orders.contains_key(&id) && want.is_empty() {
            a.flag(
                "notification",
                format!(
                    "notifications {} for order {id}, which the order service does not know",
                    history(&got)
                ),
                vec![id],
            );
        } else if got.is_empty() {
            a.flag(
                "notification",
                format!("order {id} was never notified of its outcomes {}", history(&want)),
                vec![id],
            );
        } else if got != want {
            a.flag(
                "notification",
                format!(
                    "order {id} was notified {} for the outcomes {}",
                    history(&got),
                    history(&want)
                ),
                vec![id],
            );
        }
    }
    let decided: HashMap<Uuid, i64> = s.outcomes.iter().map(|o| (o.order_id, o.decided_ms)).collect();
    let mut lags: Vec<i64> = s
        .notifications
        .iter()
        .filter_map(|n| decided.get(&n.order_id).map(|d| n.received_ms - d))
        .collect();
    lags.sort_unstable();
    (lags.get(lags.len() / 2).copied(), lags.last().copied())
}

/// The client's view against the databases: every order the driver was
/// answered 2xx for exists, every outcome it saw is the outcome stored, and
/// the database holds no order the driver did not create.
fn reconcile(a: &mut Audit, client: &ClientView, orders: &HashMap<Uuid, &OrderRow>) {
    for (id, seen) in &client.orders {
        match (orders.get(id), seen) {
            (None, _) => a.flag(
                "client",
                format!("the driver was answered for order {id}, which the database does not hold"),
                vec![*id],
            ),
            (Some(o), Some(seen)) if *seen != o.state => a.flag(
                "client",
                format!(
                    "the driver saw order {id} decided {seen}, the database says {}",
                    o.state
                ),
                vec![*id],
            ),
            _ => {}
        }
    }
    let mut extra: Vec<Uuid> = orders
        .keys()
        .filter(|id| !client.orders.contains_key(id))
        .copied()
        .collect();
    extra.sort_unstable();
    for id in extra {
        a.flag(
            "client",
            format!("order {id} is in the database, but the driver never created it"),
            vec![id],
        );
    }
}

/// Every message a consumer gave up on: its effect never happened.
fn dead_letters(a: &mut Audit, s: &Snapshots) {
    for (role, m) in &s.messaging {
        for d in &m.dead_letters {
            let order = d.key.as_deref().and_then(|k| Uuid::parse_str(k).ok());
            a.flag(
                "dead_letter",
                format!(
                    "the {role} service's {} consumer gave up on an event of order {}: {}",
                    d.consumer,
                    d.key.as_deref().unwrap_or("?"),
                    d.error
                ),
                order.into_iter().collect(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::collect::*;
    use super::*;
    use txlab_api::admin::{Slot, StockLevel, Wallet};
    use txlab_api::event::ORDER_EVENTS_TOPIC;
    use txlab_api::order::OrderItem;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn order(n: u128, state: OrderState) -> OrderRow {
        OrderRow {
            id: id(n),
            customer: "c1".into(),
            items: sqlx::types::Json(vec![OrderItem {
                sku: "k1".into(),
                qty: 2,
                unit_price: 150,
            }]),
            amount: 300,
            slot: "s1".into(),
            method: TxMode::SagaOrch,
            state,
            decided_ms: Some(1_010),
        }
    }

    fn seed() -> Seed {
        Seed {
            wallets: vec![Wallet {
                customer: "c1".into(),
                balance: 1_000,
            }],
            stock: vec![StockLevel {
                sku: "k1".into(),
                available: 10,
            }],
            slots: vec![Slot {
                slot: "s1".into(),
                capacity: 5,
            }],
        }
    }

    fn rec(n: u128, state: RecordState) -> RecordRow {
        RecordRow {
            order_id: id(n),
            state,
        }
    }

    fn moved(n: u128, op: LedgerOp, item: &str, qty: i64) -> LedgerRow {
        LedgerRow {
            order_id: id(n),
            op,
            item: item.into(),
            qty,
        }
    }

    fn outcome(n: u128, state: OrderState) -> OutcomeRow {
        OutcomeRow {
            order_id: id(n),
            state,
            decided_ms: 1_010,
        }
    }

    fn notified(n: u128, kind: OrderState, at: i64) -> NotificationRow {
        NotificationRow {
            order_id: id(n),
            kind,
            received_ms: at,
        }
    }

    /// A consistent world: order 1 confirmed, order 2 rejected at inventory
    /// after its payment was refunded.
    fn world() -> Snapshots {
        let mut messaging: BTreeMap<Role, Messaging> =
            Role::ALL.iter().map(|r| (*r, Messaging::default())).collect();
        messaging.get_mut(&Role::Notification).unwrap().offsets = vec![ConsumerOffset {
            consumer: "notification".into(),
            topic: ORDER_EVENTS_TOPIC.into(),
            partition: 0,
            next_offset: 2,
        }];
        Snapshots {
            orders: vec![order(1, OrderState::Confirmed), order(2, OrderState::Rejected)],
            outcomes: vec![
                outcome(1, OrderState::Confirmed),
                outcome(2, OrderState::Rejected),
            ],
            payment: ParticipantDb {
                items: vec![ItemRow {
                    item: "c1".into(),
                    amount: 700,
                    held: 0,
                }],
                records: vec![rec(1, RecordState::Captured), rec(2, RecordState::Refunded)],
                ledger: vec![
                    moved(1, LedgerOp::Hold, "c1", 300),
                    moved(1, LedgerOp::Capture, "c1", 300),
                    moved(2, LedgerOp::Hold, "c1", 300),
                    moved(2, LedgerOp::Capture, "c1", 300),
                    moved(2, LedgerOp::Restore, "c1", 300),
                ],
                prepared: vec![],
            },
            inventory: ParticipantDb {
                items: vec![ItemRow {
                    item: "k1".into(),
                    amount: 8,
                    held: 0,
                }],
                records: vec![rec(1, RecordState::Reserved), rec(2, RecordState::Rejected)],
                ledger: vec![
                    moved(1, LedgerOp::Hold, "k1", 2),
                    moved(1, LedgerOp::Capture, "k1", 2),
                ],
                prepared: vec![],
            },
            shipping: ParticipantDb {
                items: vec![ItemRow {
                    item: "s1".into(),
                    amount: 5,
                    held: 1,
                }],
                records: vec![rec(1, RecordState::Booked)],
                ledger: vec![
                    moved(1, LedgerOp::Hold, "s1", 1),
                    moved(1, LedgerOp::Capture, "s1", 1),
                ],
                prepared: vec![],
            },
            notifications: vec![
                notified(1, OrderState::Confirmed, 1_020),
                notified(2, OrderState::Rejected, 1_050),
            ],
            messaging,
            topic_ends: [((ORDER_EVENTS_TOPIC.to_string(), 0), 2)].into_iter().collect(),
        }
    }

    fn client() -> ClientView {
        ClientView {
            orders: [
                (id(1), Some(OrderState::Confirmed)),
                (id(2), Some(OrderState::Rejected)),
            ]
            .into_iter()
            .collect(),
        }
    }

    fn audit(w: &Snapshots) -> AuditReport {
        check(&seed(), w, TxMode::SagaOrch, Some(&client()))
    }

    /// The details of the violations, after checking they are all of `invariant`.
    fn only(report: &AuditReport, invariant: &str) -> Vec<String> {
        assert!(
            report.violations.iter().all(|v| v.invariant == invariant),
            "expected only {invariant}: {:#?}",
            report.violations
        );
        assert!(!report.violations.is_empty(), "expected a {invariant} violation");
        report.violations.iter().map(|v| v.detail.clone()).collect()
    }

    fn kinds(report: &AuditReport) -> Vec<&'static str> {
        report.violations.iter().map(|v| v.invariant).collect()
    }

    #[test]
    fn a_consistent_world_passes_every_invariant() {
        let r = audit(&world());
        assert_eq!(r.violations, vec![]);
        assert_eq!(r.orders_checked, 2);
        assert_eq!(r.by_invariant.len(), INVARIANTS.len());
        assert_eq!(
            (r.notification_lag_p50_ms, r.notification_lag_max_ms),
            (Some(40), Some(40))
        );
        assert!(world().unsettled(TxMode::SagaOrch).is_empty());
    }

    #[test]
    fn money_taken_behind_the_ledger_is_found_against_the_seed() {
        let mut w = world();
        w.payment.items[0].amount -= 50;
        let d = only(&audit(&w), "money");
        assert!(
            d[0].contains("customer c1: balance 650") && d[0].contains("1000 was seeded"),
            "{d:?}"
        );
    }

    #[test]
    fn a_held_amount_out_of_step_with_the_ledger_is_found() {
        let mut w = world();
        // Moved from available to reserved: conserved, but not what the ledger holds.
        w.inventory.items[0].amount -= 1;
        w.inventory.items[0].held += 1;
        let d = only(&audit(&w), "stock");
        assert!(
            d[0].contains("SKU k1: reserved 1 but the ledger holds 0"),
            "{d:?}"
        );
    }

    #[test]
    fn a_changed_capacity_and_a_drifting_slot_counter_are_found() {
        let mut w = world();
        w.shipping.items[0].amount = 9;
        w.shipping.items[0].held = 2;
        let d = only(&audit(&w), "slots");
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(
            d[0].contains("capacity is 9, but 5 was seeded") && d[1].contains("the ledger holds 1"),
            "{d:?}"
        );
    }

    #[test]
    fn half_done_orders_break_atomicity() {
        let mut w = world();
        // The confirmed order lost its shipment, and everything else agrees.
        w.shipping.records.clear();
        w.shipping.ledger.clear();
        w.shipping.items[0].held = 0;
        let r = audit(&w);
        let d = only(&r, "atomicity");
        assert!(d[0].contains("lacks its courier slot (record: none)"), "{d:?}");
        assert_eq!(r.violations[0].orders, vec![id(1)]);
    }

    #[test]
    fn a_skipped_compensation_breaks_atomicity_and_exactly_once() {
        let mut w = world();
        w.payment.records[1].state = RecordState::Captured;
        let r = audit(&w);
        assert!(
            kinds(&r).contains(&"atomicity") && kinds(&r).contains(&"exactly_once"),
            "{:#?}",
            r.violations
        );
    }

    #[test]
    fn a_step_applied_twice_breaks_exactly_once_even_when_money_adds_up() {
        let mut w = world();
        w.inventory.ledger.extend([
            moved(1, LedgerOp::Hold, "k1", 2),
            moved(1, LedgerOp::Capture, "k1", 2),
        ]);
        w.inventory.items[0].amount = 6;
        let d = only(&audit(&w), "exactly_once");
        assert!(
            d.iter()
                .any(|x| x.contains("hold moved {\"k1\": 4}") && x.contains("{\"k1\": 2}")),
            "{d:?}"
        );
    }

    #[test]
    fn a_part_taken_with_other_content_than_the_order_breaks_exactly_once() {
        let mut w = world();
        // The payment took 300 from another customer's wallet.
        w.payment.items.push(ItemRow {
            item: "c2".into(),
            amount: 700,
            held: 0,
        });
        w.payment.items[0].amount = 1_000;
        for l in w.payment.ledger.iter_mut().filter(|l| l.order_id == id(1)) {
            l.item = "c2".into();
        }
        let mut s = seed();
        s.wallets.push(Wallet {
            customer: "c2".into(),
            balance: 1_000,
        });
        let r = check(&s, &w, TxMode::SagaOrch, Some(&client()));
        assert_eq!(
            kinds(&r),
            vec!["exactly_once", "exactly_once"],
            "{:#?}",
            r.violations
        );
    }

    #[test]
    fn unfinished_work_breaks_termination() {
        let mut w = world();
        w.orders.push(order(3, OrderState::Compensating));
        w.inventory
            .prepared
            .push(format!("txlab_inventory_{}", id(3).simple()));
        w.messaging.get_mut(&Role::Payment).unwrap().unpublished = 2;
        w.topic_ends.insert((ORDER_EVENTS_TOPIC.to_string(), 1), 4);
        let mut c = client();
        c.orders.insert(id(3), None);
        let r = check(&seed(), &w, TxMode::SagaOrch, Some(&c));
        let d = only(&r, "termination");
        assert_eq!(d.len(), 4, "{d:?}");
        assert!(d.iter().any(|x| x.contains("4 messages from the end")), "{d:?}");
        assert!(
            r.violations
                .iter()
                .any(|v| v.orders == vec![id(3)] && v.detail.contains("prepared")),
            "{d:?}"
        );
        assert_eq!(
            w.unsettled(TxMode::SagaOrch).len(),
            4,
            "{:?}",
            w.unsettled(TxMode::SagaOrch)
        );
    }

    #[test]
    fn a_branch_left_tried_breaks_termination_and_atomicity() {
        let mut w = world();
        w.shipping.records.push(rec(2, RecordState::Tried));
        w.shipping.ledger.push(moved(2, LedgerOp::Hold, "s1", 1));
        w.shipping.items[0].held = 2;
        let r = audit(&w);
        assert_eq!(kinds(&r), vec!["atomicity", "termination"], "{:#?}", r.violations);
    }

    #[test]
    fn an_overwritten_outcome_breaks_the_outcome_history() {
        let mut w = world();
        // Rejected, then cancelled as well: the race of issue 6.
        w.orders[1].state = OrderState::Cancelled;
        w.outcomes.push(outcome(2, OrderState::Cancelled));
        w.notifications.push(notified(2, OrderState::Cancelled, 1_060));
        let mut c = client();
        c.orders.insert(id(2), Some(OrderState::Rejected));
        let r = check(&seed(), &w, TxMode::SagaOrch, Some(&c));
        assert_eq!(kinds(&r), vec!["outcomes", "client"], "{:#?}", r.violations);
        assert!(
            r.violations[0].detail.contains("rejected → cancelled"),
            "{:#?}",
            r.violations
        );
    }

    #[test]
    fn a_confirmed_then_cancelled_order_is_a_legal_history() {
        let mut w = world();
        w.orders[0].state = OrderState::Cancelled;
        w.outcomes.push(outcome(1, OrderState::Cancelled));
        w.notifications.push(notified(1, OrderState::Cancelled, 1_070));
        w.payment.records[0].state = RecordState::Refunded;
        w.payment.ledger.push(moved(1, LedgerOp::Restore, "c1", 300));
        w.payment.items[0].amount = 1_000;
        w.inventory.records[0].state = RecordState::Released;
        w.inventory.ledger.push(moved(1, LedgerOp::Restore, "k1", 2));
        w.inventory.items[0].amount = 10;
        w.shipping.records[0].state = RecordState::Cancelled;
        w.shipping.ledger.push(moved(1, LedgerOp::Restore, "s1", 1));
        w.shipping.items[0].held = 0;
        let mut c = client();
        c.orders.insert(id(1), Some(OrderState::Cancelled));
        assert_eq!(check(&seed(), &w, TxMode::SagaOrch, Some(&c)).violations, vec![]);
    }

    #[test]
    fn missing_and_duplicate_notifications_are_found() {
        let mut w = world();
        let dup = w.notifications[0].clone();
        w.notifications.push(dup);
        w.notifications.remove(1);
        let d = only(&audit(&w), "notification");
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(
            d.iter().any(|x| x.contains("notified confirmed → confirmed"))
                && d.iter().any(|x| x.contains("never notified"))
        );
    }

    #[test]
    fn the_client_view_is_reconciled_with_the_database() {
        let mut c = client();
        c.orders.insert(id(1), Some(OrderState::Rejected));
        c.orders.insert(id(9), None);
        c.orders.remove(&id(2));
        let r = check(&seed(), &world(), TxMode::SagaOrch, Some(&c));
        let d = only(&r, "client");
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(
            d[0].contains("saw order") && d[1].contains("does not hold") && d[2].contains("never created it"),
            "{d:?}"
        );
    }

    #[test]
    fn dead_letters_name_their_orders() {
        let mut w = world();
        w.messaging.get_mut(&Role::Payment).unwrap().dead_letters = vec![DeadLetter {
            consumer: "payment".into(),
            key: Some(id(1).to_string()),
            error: "boom".into(),
        }];
        let r = audit(&w);
        assert_eq!(only(&r, "dead_letter").len(), 1);
        assert_eq!(r.violations[0].orders, vec![id(1)]);
    }

    #[test]
    fn needing_attention_is_by_design_only_under_outbox() {
        let mut w = world();
        // Inventory refused order 2, but its payment stayed taken: outbox's contract.
        w.orders[1].state = OrderState::NeedsAttention;
        w.orders[1].method = TxMode::Outbox;
        w.outcomes[1].state = OrderState::NeedsAttention;
        w.notifications[1].kind = OrderState::NeedsAttention;
        w.payment.records[1].state = RecordState::Captured;
        w.payment.ledger.pop();
        w.payment.items[0].amount = 400;
        let mut c = client();
        c.orders.insert(id(2), Some(OrderState::NeedsAttention));
        let r = check(&seed(), &w, TxMode::Outbox, Some(&c));
        assert_eq!(r.violations.len(), 1, "{:#?}", r.violations);
        assert!(r.violations[0].by_design && r.violations[0].invariant == "atomicity");
        assert_eq!(r.by_invariant.values().sum::<usize>(), 0, "no bugs counted");

        w.orders[1].method = TxMode::SagaOrch;
        let r = check(&seed(), &w, TxMode::SagaOrch, Some(&c));
        assert!(
            r.violations
                .iter()
                .any(|v| !v.by_design && v.detail.contains("only outbox")),
            "{:#?}",
            r.violations
        );
    }
}
