//! Where an event-driven checkout's time goes, hop by hop, read from what
//! the services store anyway: each outbox row's `created_ms` (written with
//! the business change) and `published_ms` (the broker's acknowledgement),
//! each inbox row's `received_ms` (the consumer's transaction began), and
//! the order's `created_ms` / `decided_ms`. All clocks are the same host's.
//!
//! Stages, per order (happy path: one event per service and order):
//! - `relay <service>`: its event written → first acknowledged by the
//!   broker (commit, wake-up, the relay's read, the produce round trip);
//! - `<from> → <to>`: the copy on `<to>`'s topic acknowledged → the
//!   consumer's transaction began (the broker's fetch, the consumer's
//!   dispatch);
//! - `handle <service>`: that transaction began → its own event written;
//! - `verdict`: the order's last inbox row → the order decided;
//! - `checkout`: order created → decided.

use std::collections::BTreeMap;

use anyhow::Context;
use serde::Serialize;
use sqlx::Connection;
use txlab_api::event::{checkout_topics, CHECKOUT_TOPICS};
use txlab_api::Role;

/// One stage's spread over the orders measured, in ms.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub stage: String,
    pub orders: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

/// A service's first checkout event of an order: its outbox rows, one per
/// service it was sent to.
#[derive(Debug, Default)]
struct Sent {
    event: String,
    written: i64,
    /// When the broker acknowledged the copy for each reader.
    published: BTreeMap<Role, i64>,
}

/// The rows read from one service's database.
#[derive(Default)]
struct ServiceRows {
    /// Order id → its first checkout event.
    sent: BTreeMap<String, Sent>,
    /// Event id → when this service's transaction for it began.
    received: BTreeMap<String, i64>,
}

/// The services of the chain, in the order they appear in the stage list.
const SERVICES: [Role; 4] = [Role::Order, Role::Payment, Role::Inventory, Role::Shipping];

/// Reads the stored timestamps of the cell just run and returns each
/// stage's spread over the orders created `skip_ms` or more after the first.
pub async fn measure(databases: &BTreeMap<Role, String>, skip_ms: i64) -> anyhow::Result<Vec<Stage>> {
    let mut rows = BTreeMap::new();
    let mut orders: Vec<(String, i64, Option<i64>)> = Vec::new();
    for role in SERVICES {
        let url = databases
            .get(&role)
            .with_context(|| format!("no database for {role}"))?;
        let mut db = sqlx::PgConnection::connect(url)
            .await
            .with_context(|| format!("connecting to {role}'s database"))?;
        let rows_sent: Vec<(String, String, String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT key, payload->>'event_id', topic, created_ms, published_ms \
             FROM outbox WHERE topic = ANY($1) ORDER BY id",
        )
        .bind(checkout_topics().collect::<Vec<_>>())
        .fetch_all(&mut db)
        .await?;
        let received: Vec<(String, i64)> = sqlx::query_as("SELECT message_id, received_ms FROM inbox")
            .fetch_all(&mut db)
            .await?;
        if role == Role::Order {
            orders = sqlx::query_as("SELECT id::text, created_ms, decided_ms FROM orders")
                .fetch_all(&mut db)
                .await?;
        }
        let mut sent = BTreeMap::<String, Sent>::new();
        for (order, event, topic, written, published) in rows_sent {
            let first = sent.entry(order).or_insert_with(|| Sent {
                event: event.clone(),
                written,
                ..Sent::default()
            });
            let reader = CHECKOUT_TOPICS.iter().find(|(_, t)| *t == topic).map(|(r, _)| *r);
            if let (true, Some(reader), Some(at)) = (first.event == event, reader, published) {
                first.published.insert(reader, at);
            }
        }
        rows.insert(
            role,
            ServiceRows {
                sent,
                received: received.into_iter().collect(),
            },
        );
    }
    Ok(stages(&rows, &orders, skip_ms))
}

fn stages(
    rows: &BTreeMap<Role, ServiceRows>,
    orders: &[(String, i64, Option<i64>)],
    skip_ms: i64,
) -> Vec<Stage> {
    let first = orders.iter().map(|o| o.1).min().unwrap_or(0);
    let mut spans: Vec<(String, Vec<i64>)> = Vec::new();
    let mut add = |name: String, ms: i64| match spans.iter_mut().find(|(n, _)| *n == name) {
        Some((_, v)) => v.push(ms),
        None => spans.push((name, vec![ms])),
    };
    for (order, created, decided) in orders {
        let Some(decided) = decided.filter(|_| *created >= first + skip_ms) else {
            continue;
        };
        let mut last_heard_by_order = None;
        for from in SERVICES {
            let Some(sent) = rows[&from].sent.get(order) else {
                continue;
            };
            let Some(first_ack) = sent.published.values().min() else {
                continue;
            };
            add(format!("relay {from}"), first_ack - sent.written);
            for (to, published) in &sent.published {
                let Some(began) = rows[to].received.get(&sent.event) else {
                    continue;
                };
                add(format!("{from} → {to}"), began - published);
                if *to == Role::Order {
                    last_heard_by_order = last_heard_by_order.max(Some(*began));
                } else if let Some(answer) = rows[to].sent.get(order) {
                    add(format!("handle {to}"), answer.written - began);
                }
            }
        }
        if let Some(heard) = last_heard_by_order {
            add("verdict".into(), decided - heard);
        }
        add("checkout".into(), decided - created);
    }
    spans
        .into_iter()
        .map(|(stage, mut ms)| {
            ms.sort_unstable();
            let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize] as f64;
            Stage {
                stage,
                orders: ms.len(),
                p50_ms: at(0.5),
                p90_ms: at(0.9),
                p99_ms: at(0.99),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(order: &str, event: &str, written: i64, published: &[(Role, i64)]) -> (String, Sent) {
        let sent = Sent {
            event: event.into(),
            written,
            published: published.iter().copied().collect(),
        };
        (order.into(), sent)
    }

    #[test]
    fn a_chain_of_events_splits_into_relays_deliveries_and_handlers() {
        // Order o1 placed at 0: order's event e0 written at 2, acknowledged
        // at 5; payment began at 20, wrote e1 at 23 for the order and
        // inventory, acknowledged at 30 and 31; the order heard e1 at 45
        // and decided at 47 (inventory's handling is left out). Order o0,
        // placed before the skip, is left out.
        let mut rows: BTreeMap<Role, ServiceRows> =
            SERVICES.iter().map(|r| (*r, ServiceRows::default())).collect();
        let order = rows.get_mut(&Role::Order).unwrap();
        order.sent.extend([
            sent("o1", "e0", 2, &[(Role::Payment, 5)]),
            sent("o0", "x0", -99, &[(Role::Payment, -98)]),
        ]);
        order.received.insert("e1".into(), 45);
        let payment = rows.get_mut(&Role::Payment).unwrap();
        payment
            .sent
            .extend([sent("o1", "e1", 23, &[(Role::Order, 30), (Role::Inventory, 31)])]);
        payment.received.insert("e0".into(), 20);
        let orders = [
            ("o1".to_string(), 0, Some(47)),
            ("o0".to_string(), -100, Some(-50)),
        ];
        let got: Vec<(String, usize, f64)> = stages(&rows, &orders, 50)
            .into_iter()
            .map(|s| (s.stage, s.orders, s.p50_ms))
            .collect();
        let want = [
            ("relay order", 3.0),
            ("order → payment", 15.0),
            ("handle payment", 3.0),
            ("relay payment", 7.0),
            ("payment → order", 15.0),
            ("verdict", 2.0),
            ("checkout", 47.0),
        ];
        assert_eq!(
            got,
            want.iter()
                .map(|(s, ms)| (s.to_string(), 1, *ms))
                .collect::<Vec<_>>()
        );
    }
}
