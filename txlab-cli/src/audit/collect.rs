//! Reading what the audit checks: raw rows from each service's database,
//! one consistent snapshot per database, and the ends of the Kafka topics.
//! Nothing here asks a service about itself.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool};
use txlab_api::event::{checkout_topics, CHECKOUT_TOPICS, ORDER_EVENTS_TOPIC};
use txlab_api::order::{OrderItem, OrderState};
use txlab_api::participant::{LedgerOp, RecordState};
use txlab_api::{Role, TxMode};
use uuid::Uuid;

use crate::platform::Endpoints;

/// An order as the order service's database holds it. The audit keeps its
/// own row types: it shares no code with the services it checks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
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
    pub decided_ms: Option<i64>,
}

/// A business row of a participant: a wallet, a stock level or a slot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ItemRow {
    /// Customer, SKU or slot.
    pub item: String,
    /// Balance, available stock or capacity.
    pub amount: i64,
    /// Reserved money, reserved stock or booked places.
    pub held: i64,
}

/// A participant's record of one order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct RecordRow {
    pub order_id: Uuid,
    #[sqlx(try_from = "String")]
    pub state: RecordState,
}

/// One line of a participant's ledger: what moved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct LedgerRow {
    pub order_id: Uuid,
    #[sqlx(try_from = "String")]
    pub op: LedgerOp,
    pub item: String,
    pub qty: i64,
}

/// What one participant's database holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ParticipantDb {
    pub items: Vec<ItemRow>,
    pub records: Vec<RecordRow>,
    pub ledger: Vec<LedgerRow>,
    /// Prepared transactions of the lab (2PC branches) still in this database.
    pub prepared: Vec<String>,
}

/// An outcome event the order service wrote to its outbox: its outcome
/// history, in order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OutcomeRow {
    pub order_id: Uuid,
    pub state: OrderState,
    pub decided_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct NotificationRow {
    pub order_id: Uuid,
    /// The outcome it announces.
    #[sqlx(try_from = "String")]
    pub kind: OrderState,
    pub received_ms: i64,
}

/// A message a consumer gave up on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct DeadLetter {
    pub consumer: String,
    pub key: Option<String>,
    pub error: String,
}

/// Where a consumer stands in one partition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct ConsumerOffset {
    pub consumer: String,
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
}

/// The messaging tables every service has.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Messaging {
    /// Outbox rows not yet published.
    pub unpublished: i64,
    pub dead_letters: Vec<DeadLetter>,
    pub offsets: Vec<ConsumerOffset>,
}

/// Everything the audit reads, after a cell.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Snapshots {
    pub orders: Vec<OrderRow>,
    pub outcomes: Vec<OutcomeRow>,
    pub payment: ParticipantDb,
    pub inventory: ParticipantDb,
    pub shipping: ParticipantDb,
    pub notifications: Vec<NotificationRow>,
    pub messaging: BTreeMap<Role, Messaging>,
    /// The end (high watermark) of each partition of the lab's topics, read
    /// after the databases: a consumer at it has seen everything before.
    pub topic_ends: BTreeMap<(String, i32), i64>,
}

impl Snapshots {
    pub fn participant(&self, role: Role) -> &ParticipantDb {
        match role {
            Role::Payment => &self.payment,
            Role::Inventory => &self.inventory,
            _ => &self.shipping,
        }
    }

    /// What still moves, in words; empty once the cell has settled: every
    /// order terminal with each outcome notified, every outbox published,
    /// every consumer of `method` at its topic's end, no branch left tried
    /// or prepared. Auditing anything still moving would be unfair.
    pub fn unsettled(&self, method: TxMode) -> Vec<String> {
        let mut out = Vec::new();
        let open = self.orders.iter().filter(|o| !o.state.is_terminal()).count();
        if open > 0 {
            out.push(format!("{open} orders not decided"));
        }
        // Per order: a duplicate notification is the audit's to report, not a reason to wait.
        let mut owed: BTreeMap<Uuid, i64> = BTreeMap::new();
        for o in &self.outcomes {
            *owed.entry(o.order_id).or_default() += 1;
        }
        for n in &self.notifications {
            *owed.entry(n.order_id).or_default() -= 1;
        }
        let unnotified = owed.values().filter(|n| **n > 0).count();
        if unnotified > 0 {
            out.push(format!("{unnotified} orders' outcomes not yet notified"));
        }
        for (role, m) in &self.messaging {
            if m.unpublished > 0 {
                out.push(format!("{role}: {} outbox rows unpublished", m.unpublished));
            }
        }
        for role in [Role::Payment, Role::Inventory, Role::Shipping] {
            let p = self.participant(role);
            let tried = p.records.iter().filter(|r| r.state == RecordState::Tried).count();
            if tried > 0 {
                out.push(format!("{role}: {tried} branches tried"));
            }
            if !p.prepared.is_empty() {
                out.push(format!("{role}: {} branches prepared", p.prepared.len()));
            }
        }
        for (consumer, topic) in active_consumers(method) {
            let behind = self.consumer_lag(consumer, topic);
            if behind != 0 {
                out.push(format!("{consumer} is {behind} messages from the end of {topic}"));
            }
        }
        out
    }

    /// How far `consumer` is from the end of `topic`, over all partitions
    /// (a partition with no stored offset counts from its start). A stored
    /// offset past the end the broker reports counts as caught up: tansu
    /// was seen to report a partition's end a few messages below offsets a
    /// consumer had already read.
    pub fn consumer_lag(&self, consumer: Role, topic: &str) -> i64 {
        let stored: BTreeMap<i32, i64> = self
            .messaging
            .get(&consumer)
            .map(|m| {
                m.offsets
                    .iter()
                    .filter(|o| o.topic == topic)
                    .map(|o| (o.partition, o.next_offset))
                    .collect()
            })
            .unwrap_or_default();
        self.topic_ends
            .iter()
            .filter(|((t, _), _)| t == topic)
            .map(|((_, p), end)| (end - stored.get(p).copied().unwrap_or(0)).max(0))
            .sum()
    }
}

/// The Kafka consumers that run under `method`, with their topics.
pub fn active_consumers(method: TxMode) -> Vec<(Role, &'static str)> {
    let mut out = vec![(Role::Notification, ORDER_EVENTS_TOPIC)];
    if method.is_event_driven() {
        out.extend(CHECKOUT_TOPICS);
    }
    out
}

/// Connections to every service's database and to the broker, kept for a
/// cell's quiesce polls and audit.
pub struct Reader {
    pools: BTreeMap<Role, PgPool>,
    kafka: std::sync::Arc<BaseConsumer>,
}

impl Reader {
    pub async fn connect(endpoints: &Endpoints) -> anyhow::Result<Reader> {
        let mut pools = BTreeMap::new();
        for role in Role::ALL {
            let url = endpoints.database(role)?;
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await
                .with_context(|| format!("connecting to the {role} database for the audit"))?;
            pools.insert(role, pool);
        }
        let kafka: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &endpoints.brokers)
            .set("group.id", "txlab-audit")
            .set("enable.auto.commit", "false")
            .create()
            .with_context(|| format!("connecting to the broker at {}", endpoints.brokers))?;
        Ok(Reader {
            pools,
            kafka: std::sync::Arc::new(kafka),
        })
    }

    /// Reads every database (each in one repeatable-read transaction), then
    /// the topics' ends.
    pub async fn read(&self) -> anyhow::Result<Snapshots> {
        let mut s = Snapshots::default();
        for (role, pool) in &self.pools {
            let mut tx = pool.begin().await?;
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .execute(&mut *tx)
                .await?;
            match role {
                Role::Order => read_orders(&mut tx, &mut s).await,
                Role::Notification => read_notifications(&mut tx, &mut s).await,
                participant => {
                    let db = read_participant(&mut tx, *participant).await;
                    db.map(|db| match participant {
                        Role::Payment => s.payment = db,
                        Role::Inventory => s.inventory = db,
                        _ => s.shipping = db,
                    })
                }
            }
            .with_context(|| format!("reading the {role} database"))?;
            s.messaging.insert(
                *role,
                read_messaging(&mut tx)
                    .await
                    .with_context(|| format!("reading {role}'s messaging tables"))?,
            );
            tx.commit().await?;
        }
        s.topic_ends = self.topic_ends().await?;
        Ok(s)
    }

    async fn topic_ends(&self) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
        let kafka = self.kafka.clone();
        tokio::task::spawn_blocking(move || {
            let timeout = Duration::from_secs(5);
            let mut ends = BTreeMap::new();
            for topic in [ORDER_EVENTS_TOPIC].into_iter().chain(checkout_topics()) {
                let metadata = kafka
                    .fetch_metadata(Some(topic), timeout)
                    .with_context(|| format!("reading the partitions of {topic}"))?;
                let partitions = metadata
                    .topics()
                    .first()
                    .map(|t| t.partitions().len())
                    .unwrap_or(0);
                for p in 0..partitions as i32 {
                    let (_, high) = kafka
                        .fetch_watermarks(topic, p, timeout)
                        .with_context(|| format!("reading the end of {topic}/{p}"))?;
                    ends.insert((topic.to_string(), p), high);
                }
            }
            Ok(ends)
        })
        .await?
    }
}

async fn read_orders(conn: &mut PgConnection, s: &mut Snapshots) -> anyhow::Result<()> {
    s.orders = sqlx::query_as("SELECT id, customer, items, amount, slot, method, state, decided_ms FROM orders ORDER BY created_ms, id")
        .fetch_all(&mut *conn)
        .await?;
    let rows: Vec<(serde_json::Value,)> =
        sqlx::query_as("SELECT payload FROM outbox WHERE topic = $1 ORDER BY id")
            .bind(ORDER_EVENTS_TOPIC)
            .fetch_all(&mut *conn)
            .await?;
    s.outcomes = rows
        .into_iter()
        .map(|(p,)| {
            let e: txlab_api::event::OrderOutcome =
                serde_json::from_value(p).context("an outcome event in the outbox is unreadable")?;
            Ok(OutcomeRow {
                order_id: e.order_id,
                state: e.state,
                decided_ms: e.decided_ms,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(())
}

async fn read_notifications(conn: &mut PgConnection, s: &mut Snapshots) -> anyhow::Result<()> {
    s.notifications = sqlx::query_as("SELECT order_id, kind, received_ms FROM notifications ORDER BY id")
        .fetch_all(conn)
        .await?;
    Ok(())
}

/// The business table and the record table of a participant.
fn tables(role: Role) -> (&'static str, &'static str) {
    match role {
        Role::Payment => (
            "SELECT customer, balance, reserved FROM wallets ORDER BY customer",
            "payments",
        ),
        Role::Inventory => (
            "SELECT sku, available, reserved FROM stock ORDER BY sku",
            "reservations",
        ),
        _ => (
            "SELECT slot, capacity, booked FROM slots ORDER BY slot",
            "shipments",
        ),
    }
}

async fn read_participant(conn: &mut PgConnection, role: Role) -> anyhow::Result<ParticipantDb> {
    let (business, records) = tables(role);
    let items: Vec<(String, i64, i64)> = sqlx::query_as(business).fetch_all(&mut *conn).await?;
    Ok(ParticipantDb {
        items: items.into_iter().map(|(item, amount, held)| ItemRow { item, amount, held }).collect(),
        records: sqlx::query_as(&format!("SELECT order_id, state FROM {records} ORDER BY order_id")).fetch_all(&mut *conn).await?,
        ledger: sqlx::query_as("SELECT order_id, op, item, qty FROM ledger ORDER BY id").fetch_all(&mut *conn).await?,
        prepared: sqlx::query_scalar(
            "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE $1 AND database = current_database() ORDER BY gid",
        )
        .bind(format!("txlab\\_{role}\\_%"))
        .fetch_all(&mut *conn)
        .await?,
    })
}

async fn read_messaging(conn: &mut PgConnection) -> anyhow::Result<Messaging> {
    Ok(Messaging {
        unpublished: sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_ms IS NULL")
            .fetch_one(&mut *conn)
            .await?,
        dead_letters: sqlx::query_as("SELECT consumer, key, error FROM dead_letters ORDER BY id")
            .fetch_all(&mut *conn)
            .await?,
        offsets: sqlx::query_as("SELECT consumer, topic, partition, next_offset FROM consumer_offsets")
            .fetch_all(&mut *conn)
            .await?,
    })
}

/// Polls until the cell has settled or `timeout` passes; returns the last
/// snapshots, how long it took, and what was still moving (empty: settled).
pub async fn quiesce(
    reader: &Reader,
    method: TxMode,
    timeout: Duration,
) -> anyhow::Result<(Snapshots, Duration, Vec<String>)> {
    let started = tokio::time::Instant::now();
    // Each poll reads every table: back off (100 ms doubling to 500 ms) so
    // a long quiesce does not load the databases it waits for.
    let mut pause = Duration::from_millis(100);
    loop {
        let s = reader.read().await?;
        let waited = started.elapsed();
        let unsettled = s.unsettled(method);
        if unsettled.is_empty() || waited >= timeout {
            return Ok((s, waited, unsettled));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}
