//! The invariants of ARCHITECTURE §4, each violation naming its orders.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use txlab_api::admin::Seed;
use txlab_api::order::OrderState;
use uuid::Uuid;

use super::Snapshots;

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// `money`, `stock`, `slots`, `atomicity`, `termination`, `exactly_once` or `notification`.
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

pub const INVARIANTS: [&str; 7] = ["money", "stock", "slots", "atomicity", "termination", "exactly_once", "notification"];

struct Audit {
    violations: Vec<Violation>,
}

impl Audit {
    fn flag(&mut self, invariant: &'static str, detail: String, orders: Vec<Uuid>) {
        self.violations.push(Violation { invariant, detail, orders, by_design: false });
    }

    fn by_design(&mut self, invariant: &'static str, detail: String, orders: Vec<Uuid>) {
        self.violations.push(Violation { invariant, detail, orders, by_design: true });
    }
}

/// How many business changes a participant record implies under `method`.
/// A saga step or 2PC branch applies in one change; a TCC branch holds
/// (try) then takes (confirm); undoing or letting go is one more.
fn expected_movements(state: &str, applied: &str, undone: &str, method: &str) -> Option<i32> {
    let tcc = method == "tcc";
    match state {
        "rejected" | "voided" => Some(0),
        "tried" if tcc => Some(1),
        "aborted" if tcc => Some(2),
        s if s == applied => Some(if tcc { 2 } else { 1 }),
        s if s == undone => Some(if tcc { 3 } else { 2 }),
        _ => None,
    }
}

pub fn check(seed: &Seed, s: &Snapshots) -> AuditReport {
    let mut a = Audit { violations: Vec::new() };
    money(&mut a, seed, s);
    stock(&mut a, seed, s);
    slots(&mut a, s);
    atomicity_and_termination(&mut a, s);
    exactly_once(&mut a, s);
    let (p50, max) = notifications(&mut a, s);
    let mut by_invariant: BTreeMap<&'static str, usize> = INVARIANTS.iter().map(|i| (*i, 0)).collect();
    for v in a.violations.iter().filter(|v| !v.by_design) {
        *by_invariant.entry(v.invariant).or_default() += 1;
    }
    AuditReport {
        orders_checked: s.order.orders.len(),
        violations: a.violations,
        by_invariant,
        notification_lag_p50_ms: p50,
        notification_lag_max_ms: max,
    }
}

fn money(a: &mut Audit, seed: &Seed, s: &Snapshots) {
    let seeded: HashMap<&str, i64> = seed.wallets.iter().map(|w| (w.customer.as_str(), w.balance)).collect();
    let mut captured: HashMap<&str, (i64, Vec<Uuid>)> = HashMap::new();
    for p in &s.payment.payments {
        let e = captured.entry(p.customer.as_str()).or_default();
        if p.state == "captured" {
            e.0 += p.amount;
        }
        e.1.push(p.order_id);
    }
    for w in &s.payment.wallets {
        let (taken, orders) = captured.get(w.customer.as_str()).cloned().unwrap_or_default();
        match seeded.get(w.customer.as_str()) {
            None => a.flag("money", format!("wallet {} exists but was never seeded", w.customer), orders),
            Some(&start) if w.balance + w.reserved + taken != start => a.flag(
                "money",
                format!(
                    "customer {}: balance {} + reserved {} + captured {} = {}, but {} was seeded",
                    w.customer,
                    w.balance,
                    w.reserved,
                    taken,
                    w.balance + w.reserved + taken,
                    start
                ),
                orders,
            ),
            Some(_) => {}
        }
        if w.balance < 0 || w.reserved < 0 {
            a.flag("money", format!("customer {} has a negative balance or reservation", w.customer), vec![]);
        }
    }
    for c in seeded.keys() {
        if !s.payment.wallets.iter().any(|w| w.customer == *c) {
            a.flag("money", format!("seeded wallet {c} is missing"), vec![]);
        }
    }
}

fn stock(a: &mut Audit, seed: &Seed, s: &Snapshots) {
    let seeded: HashMap<&str, i64> = seed.stock.iter().map(|l| (l.sku.as_str(), l.available)).collect();
    let mut held: HashMap<&str, (i64, Vec<Uuid>)> = HashMap::new();
    for r in &s.inventory.reservations {
        for l in &r.lines {
            let e = held.entry(l.sku.as_str()).or_default();
            if r.state == "reserved" {
                e.0 += i64::from(l.qty);
            }
            e.1.push(r.order_id);
        }
    }
    for row in &s.inventory.stock {
        let (sold, orders) = held.get(row.sku.as_str()).cloned().unwrap_or_default();
        match seeded.get(row.sku.as_str()) {
            None => a.flag("stock", format!("SKU {} exists but was never seeded", row.sku), orders),
            Some(&start) if row.available + row.reserved + sold != start => a.flag(
                "stock",
                format!(
                    "SKU {}: available {} + reserved {} + sold {} = {}, but {} was seeded",
                    row.sku,
                    row.available,
                    row.reserved,
                    sold,
                    row.available + row.reserved + sold,
                    start
                ),
                orders,
            ),
            Some(_) => {}
        }
        if row.available < 0 || row.reserved < 0 {
            a.flag("stock", format!("SKU {} is oversold (negative stock)", row.sku), vec![]);
        }
    }
}

fn slots(a: &mut Audit, s: &Snapshots) {
    let mut live: HashMap<&str, (i64, Vec<Uuid>)> = HashMap::new();
    for sh in &s.shipping.shipments {
        let e = live.entry(sh.slot.as_str()).or_default();
        // A TCC try already occupies the slot.
        if sh.state == "booked" || sh.state == "tried" {
            e.0 += 1;
            e.1.push(sh.order_id);
        }
    }
    for slot in &s.shipping.slots {
        let (booked, orders) = live.get(slot.slot.as_str()).cloned().unwrap_or_default();
        if slot.booked > slot.capacity {
            a.flag("slots", format!("slot {}: {} booked over a capacity of {}", slot.slot, slot.booked, slot.capacity), orders.clone());
        }
        if slot.booked != booked {
            a.flag("slots", format!("slot {}: counter says {} booked, {} live shipments", slot.slot, slot.booked, booked), orders);
        }
    }
}

fn atomicity_and_termination(a: &mut Audit, s: &Snapshots) {
    let pay: HashMap<Uuid, _> = s.payment.payments.iter().map(|p| (p.order_id, p)).collect();
    let inv: HashMap<Uuid, _> = s.inventory.reservations.iter().map(|r| (r.order_id, r)).collect();
    let shp: HashMap<Uuid, _> = s.shipping.shipments.iter().map(|x| (x.order_id, x)).collect();
    for o in &s.order.orders {
        let captured = pay.get(&o.id).is_some_and(|p| p.state == "captured");
        let reserved = inv.get(&o.id).is_some_and(|r| r.state == "reserved");
        let booked = shp.get(&o.id).is_some_and(|x| x.state == "booked");
        // Held by a TCC try that was never confirmed nor cancelled.
        let held = [pay.get(&o.id).map(|p| p.state.as_str()), inv.get(&o.id).map(|r| r.state.as_str()), shp.get(&o.id).map(|x| x.state.as_str())]
            .into_iter()
            .any(|st| st == Some("tried"));
        match o.state {
            OrderState::Pending | OrderState::Compensating => {
                a.flag("termination", format!("order {} is still {} after quiesce", o.id, o.state), vec![o.id]);
            }
            OrderState::Confirmed => {
                let mut missing = Vec::new();
                match pay.get(&o.id) {
                    Some(p) if captured && p.amount == o.amount && p.customer == o.customer => {}
                    Some(p) if captured => missing.push(format!("payment of {} by {} (order says {} by {})", p.amount, p.customer, o.amount, o.customer)),
                    _ => missing.push("payment".to_string()),
                }
                if !reserved {
                    missing.push("stock reservation".into());
                } else if let Some(r) = inv.get(&o.id) {
                    let mut want: BTreeMap<&str, i64> = BTreeMap::new();
                    for i in &o.items {
                        *want.entry(i.sku.as_str()).or_default() += i64::from(i.qty);
                    }
                    let mut got: BTreeMap<&str, i64> = BTreeMap::new();
                    for l in &r.lines {
                        *got.entry(l.sku.as_str()).or_default() += i64::from(l.qty);
                    }
                    if want != got {
                        missing.push(format!("the ordered quantities (reserved {got:?}, ordered {want:?})"));
                    }
                }
                match shp.get(&o.id) {
                    Some(x) if booked && x.slot == o.slot => {}
                    Some(x) if booked => missing.push(format!("courier slot {} (booked {})", o.slot, x.slot)),
                    _ => missing.push("courier slot".into()),
                }
                if !missing.is_empty() {
                    a.flag("atomicity", format!("confirmed order {} lacks its {}", o.id, missing.join(", ")), vec![o.id]);
                }
            }
            OrderState::NeedsAttention => {
                // Outbox applies without compensation: a refused step leaves
                // the others' effects standing until a person acts.
                let kept: Vec<&str> = [(captured, "payment"), (reserved, "stock reservation"), (booked, "courier slot")]
                    .into_iter()
                    .filter_map(|(held, what)| held.then_some(what))
                    .collect();
                if !kept.is_empty() {
                    a.by_design("atomicity", format!("order {} needs attention and holds its {} (outbox, by design)", o.id, kept.join(", ")), vec![o.id]);
                }
            }
            OrderState::Rejected | OrderState::Cancelled => {
                let kept: Vec<&str> = [(captured, "payment"), (reserved, "stock reservation"), (booked, "courier slot"), (held, "held (tried) resources")]
                    .into_iter()
                    .filter_map(|(held, what)| held.then_some(what))
                    .collect();
                if !kept.is_empty() {
                    a.flag("atomicity", format!("{} order {} still holds its {}", o.state, o.id, kept.join(", ")), vec![o.id]);
                }
            }
        }
    }
    let known: std::collections::HashSet<Uuid> = s.order.orders.iter().map(|o| o.id).collect();
    let live = pay
        .values()
        .filter(|p| p.state == "captured")
        .map(|p| (p.order_id, "payment"))
        .chain(inv.values().filter(|r| r.state == "reserved").map(|r| (r.order_id, "stock reservation")))
        .chain(shp.values().filter(|x| x.state == "booked").map(|x| (x.order_id, "courier slot")));
    for (id, what) in live {
        if !known.contains(&id) {
            a.flag("atomicity", format!("a {what} is held for order {id}, which the order service does not know"), vec![id]);
        }
    }
    if s.order.outbox_unpublished > 0 {
        a.flag("termination", format!("{} outbox events were never published", s.order.outbox_unpublished), vec![]);
    }
    let tried = pay
        .values()
        .filter(|p| p.state == "tried")
        .map(|p| (p.order_id, "payment"))
        .chain(inv.values().filter(|r| r.state == "tried").map(|r| (r.order_id, "inventory")))
        .chain(shp.values().filter(|x| x.state == "tried").map(|x| (x.order_id, "shipping")));
    for (id, who) in tried {
        a.flag("termination", format!("the {who} TCC branch of order {id} was left tried"), vec![id]);
    }
    for (who, n) in [
        ("payment", s.payment.prepared_transactions),
        ("inventory", s.inventory.prepared_transactions),
        ("shipping", s.shipping.prepared_transactions),
    ] {
        if n > 0 {
            a.flag("termination", format!("{n} prepared transactions left in the {who} database"), vec![]);
        }
    }
}

fn exactly_once(a: &mut Audit, s: &Snapshots) {
    let method: HashMap<Uuid, &str> = s.order.orders.iter().map(|o| (o.id, o.method.as_str())).collect();
    let records = s
        .payment
        .payments
        .iter()
        .map(|p| ("payment", p.order_id, p.state.as_str(), p.movements, "captured", "refunded"))
        .chain(s.inventory.reservations.iter().map(|r| ("reservation", r.order_id, r.state.as_str(), r.movements, "reserved", "released")))
        .chain(s.shipping.shipments.iter().map(|x| ("shipment", x.order_id, x.state.as_str(), x.movements, "booked", "cancelled")));
    for (what, id, state, moved, applied, undone) in records {
        let m = method.get(&id).copied().unwrap_or("saga_orch");
        match expected_movements(state, applied, undone, m) {
            None => a.flag("exactly_once", format!("{what} of order {id} is in a state `{state}` that {m} never produces"), vec![id]),
            Some(want) if want != moved => a.flag(
                "exactly_once",
                format!("{what} of order {id} ({state}) moved {moved} times, {want} expected"),
                vec![id],
            ),
            Some(_) => {}
        }
    }
}

fn notifications(a: &mut Audit, s: &Snapshots) -> (Option<i64>, Option<i64>) {
    let mut count: HashMap<(Uuid, &str), (usize, i64)> = HashMap::new();
    for n in &s.notification.notifications {
        let e = count.entry((n.order_id, n.kind.as_str())).or_insert((0, n.received_ms));
        e.0 += 1;
    }
    let orders: HashMap<Uuid, _> = s.order.orders.iter().map(|o| (o.id, o)).collect();
    let mut lags = Vec::new();
    for o in s.order.orders.iter().filter(|o| o.state.is_terminal()) {
        match count.get(&(o.id, o.state.as_str())) {
            None => a.flag("notification", format!("{} order {} was never notified", o.state, o.id), vec![o.id]),
            Some(&(n, received)) => {
                if n > 1 {
                    a.flag("notification", format!("{} order {} was notified {n} times", o.state, o.id), vec![o.id]);
                }
                if let Some(d) = o.decided_ms {
                    lags.push(received - d);
                }
            }
        }
    }
    for (&(id, kind), &(n, _)) in &count {
        match orders.get(&id) {
            None => a.flag("notification", format!("notification `{kind}` for unknown order {id}"), vec![id]),
            Some(o) if o.state.as_str() != kind && n > 1 => {
                a.flag("notification", format!("order {id} was notified `{kind}` {n} times"), vec![id]);
            }
            Some(_) => {}
        }
    }
    lags.sort_unstable();
    (lags.get(lags.len() / 2).copied(), lags.last().copied())
}

#[cfg(test)]
mod tests {
    use super::*;
    use txlab_api::admin::*;
    use txlab_api::order::{OrderItem, OrderView};
    use txlab_api::participant::ReserveLine;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn order(n: u128, state: OrderState) -> OrderView {
        OrderView {
            id: id(n),
            state,
            customer: "c1".into(),
            amount: 300,
            slot: "s1".into(),
            items: vec![OrderItem { sku: "k1".into(), qty: 2, unit_price: 150 }],
            reason: None,
            method: "saga_orch".into(),
            created_ms: 1_000,
            decided_ms: Some(1_010),
        }
    }

    fn seed() -> Seed {
        Seed {
            wallets: vec![Wallet { customer: "c1".into(), balance: 1_000 }],
            stock: vec![StockLevel { sku: "k1".into(), available: 10 }],
            slots: vec![Slot { slot: "s1".into(), capacity: 5 }],
        }
    }

    /// A consistent world: order 1 confirmed, order 2 rejected at inventory
    /// after its payment was refunded.
    fn world() -> Snapshots {
        let pay = |n, state: &str, movements| PaymentRow { order_id: id(n), customer: "c1".into(), amount: 300, state: state.into(), movements };
        Snapshots {
            order: OrderSnapshot { orders: vec![order(1, OrderState::Confirmed), order(2, OrderState::Rejected)], outbox_unpublished: 0 },
            payment: PaymentSnapshot {
                wallets: vec![WalletRow { customer: "c1".into(), balance: 700, reserved: 0 }],
                payments: vec![pay(1, "captured", 1), pay(2, "refunded", 2)],
                ..Default::default()
            },
            inventory: InventorySnapshot {
                stock: vec![StockRow { sku: "k1".into(), available: 8, reserved: 0 }],
                reservations: vec![
                    ReservationRow { order_id: id(1), state: "reserved".into(), lines: vec![ReserveLine { sku: "k1".into(), qty: 2 }], movements: 1 },
                    ReservationRow { order_id: id(2), state: "rejected".into(), lines: vec![ReserveLine { sku: "k1".into(), qty: 2 }], movements: 0 },
                ],
                ..Default::default()
            },
            shipping: ShippingSnapshot {
                slots: vec![SlotRow { slot: "s1".into(), capacity: 5, booked: 1 }],
                shipments: vec![ShipmentRow { order_id: id(1), slot: "s1".into(), state: "booked".into(), movements: 1 }],
                ..Default::default()
            },
            notification: NotificationSnapshot {
                notifications: vec![
                    NotificationRow { order_id: id(1), kind: "confirmed".into(), received_ms: 1_020 },
                    NotificationRow { order_id: id(2), kind: "rejected".into(), received_ms: 1_050 },
                ],
            },
        }
    }

    fn only(report: &AuditReport, invariant: &str) -> Vec<String> {
        assert!(
            report.violations.iter().all(|v| v.invariant == invariant),
            "expected only {invariant}: {:#?}",
            report.violations
        );
        assert!(!report.violations.is_empty(), "expected a {invariant} violation");
        report.violations.iter().map(|v| v.detail.clone()).collect()
    }

    #[test]
    fn a_consistent_world_passes_every_invariant() {
        let r = check(&seed(), &world());
        assert_eq!(r.violations, vec![]);
        assert_eq!(r.orders_checked, 2);
        assert_eq!(r.by_invariant.len(), INVARIANTS.len());
        assert_eq!((r.notification_lag_p50_ms, r.notification_lag_max_ms), (Some(40), Some(40)));
    }

    #[test]
    fn money_taken_behind_the_saga_is_found() {
        let mut w = world();
        w.payment.wallets[0].balance -= 50;
        let d = only(&check(&seed(), &w), "money");
        assert!(d[0].contains("customer c1: balance 650") && d[0].contains("1000 was seeded"), "{d:?}");
    }

    #[test]
    fn oversold_or_leaked_stock_is_found() {
        let mut w = world();
        w.inventory.stock[0].available = 9;
        assert!(only(&check(&seed(), &w), "stock")[0].contains("SKU k1"));
    }

    #[test]
    fn a_slot_counter_out_of_step_with_shipments_is_found() {
        let mut w = world();
        w.shipping.slots[0].booked = 6;
        let d = only(&check(&seed(), &w), "slots");
        assert_eq!(d.len(), 2, "over capacity and out of step: {d:?}");
    }

    #[test]
    fn half_done_orders_break_atomicity() {
        let mut w = world();
        // The confirmed order lost its shipment and the slot counter agrees.
        w.shipping.shipments.clear();
        w.shipping.slots[0].booked = 0;
        let r = check(&seed(), &w);
        let d = only(&r, "atomicity");
        assert!(d[0].contains("lacks its courier slot"), "{d:?}");
        assert_eq!(r.violations[0].orders, vec![id(1)]);
    }

    #[test]
    fn a_rejected_order_holding_money_breaks_atomicity_and_money() {
        let mut w = world();
        w.payment.payments[1] = PaymentRow { state: "captured".into(), movements: 1, ..w.payment.payments[1].clone() };
        let r = check(&seed(), &w);
        let kinds: Vec<_> = r.violations.iter().map(|v| v.invariant).collect();
        assert!(kinds.contains(&"atomicity") && kinds.contains(&"money"), "{kinds:?}");
    }

    #[test]
    fn unfinished_work_breaks_termination() {
        let mut w = world();
        w.order.orders.push(order(3, OrderState::Compensating));
        w.order.outbox_unpublished = 2;
        let d = only(&check(&seed(), &w), "termination");
        assert_eq!(d.len(), 2, "{d:?}");
    }

    #[test]
    fn tcc_records_count_the_try_and_the_confirm() {
        let mut w = world();
        for o in &mut w.order.orders {
            o.method = "tcc".into();
        }
        // Under TCC a captured payment took two changes (hold, take); one is short.
        let d = only(&check(&seed(), &w), "exactly_once");
        assert!(d.iter().any(|x| x.contains("payment of order") && x.contains("moved 1 times, 2 expected")), "{d:?}");
    }

    #[test]
    fn a_branch_left_tried_or_prepared_breaks_termination() {
        let mut w = world();
        w.order.orders[1].method = "tcc".into();
        // The rejected order still holds a tried slot (and the counter agrees).
        w.shipping.shipments.push(ShipmentRow { order_id: id(2), slot: "s1".into(), state: "tried".into(), movements: 1 });
        w.shipping.slots[0].booked = 2;
        w.inventory.prepared_transactions = 1;
        let r = check(&seed(), &w);
        let kinds: Vec<_> = r.violations.iter().map(|v| (v.invariant, v.detail.as_str())).collect();
        assert!(kinds.iter().any(|(i, d)| *i == "termination" && d.contains("left tried")), "{kinds:?}");
        assert!(kinds.iter().any(|(i, d)| *i == "termination" && d.contains("1 prepared transactions left in the inventory")), "{kinds:?}");
        assert!(kinds.iter().any(|(i, d)| *i == "atomicity" && d.contains("held (tried)")), "{kinds:?}");
        assert!(!kinds.iter().any(|(i, _)| *i == "slots"), "a tried booking counts as live: {kinds:?}");
    }

    #[test]
    fn outbox_orders_needing_attention_are_reported_by_design_not_as_bugs() {
        let mut w = world();
        // Payment refused order 2, but its stock stayed reserved: outbox's contract.
        w.order.orders[1].state = OrderState::NeedsAttention;
        w.order.orders[1].method = "outbox".into();
        w.inventory.reservations[1].state = "reserved".into();
        w.inventory.reservations[1].movements = 1;
        w.inventory.stock[0].available = 6;
        w.notification.notifications[1].kind = "needs_attention".into();
        let r = check(&seed(), &w);
        assert_eq!(r.violations.len(), 1, "{:#?}", r.violations);
        assert!(r.violations[0].by_design && r.violations[0].invariant == "atomicity");
        assert_eq!(r.by_invariant.values().sum::<usize>(), 0, "no bugs counted");
    }

    #[test]
    fn a_step_applied_twice_breaks_exactly_once() {
        let mut w = world();
        w.inventory.reservations[0].movements = 2;
        let d = only(&check(&seed(), &w), "exactly_once");
        assert!(d[0].contains("moved 2 times, 1 expected"), "{d:?}");
    }

    #[test]
    fn missing_and_duplicate_notifications_are_found() {
        let mut w = world();
        let dup = w.notification.notifications[0].clone();
        w.notification.notifications.push(dup);
        w.notification.notifications.remove(1);
        let d = only(&check(&seed(), &w), "notification");
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d.iter().any(|x| x.contains("notified 2 times")) && d.iter().any(|x| x.contains("never notified")));
    }
}
