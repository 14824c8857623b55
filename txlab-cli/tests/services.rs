//! The services on the real local platform: the API refuses bad input with
//! JSON reasons, idempotency keys hold, a cancel after the verdict gets a
//! clear answer, and an in-flight saga survives a killed order service.

mod common;

use std::time::Duration;

use serde_json::{json, Value};
use txlab_api::{Role, TxMode};
use txlab_cli::platform::Platform;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_bad_input_with_json_reasons_and_honours_idempotency_keys() {
    let (platform, e, dir) = common::deployed("api").await;
    let plan = common::plan("smoke.yaml");
    let client = common::client();
    common::reset_and_seed(&client, &e, &plan.seed.seed).await;
    let order_url = format!("{}/orders", e.url(Role::Order).unwrap());
    let good = json!({"customer": "c00001", "items": [{"sku": "sku-0001", "qty": 1, "unit_price": 250}], "slot": "slot-001"});

    let cases = [
        (
            client
                .post(&order_url)
                .header("content-type", "application/json")
                .body("{not json"),
            400,
            "bad_request",
        ),
        (
            client
                .post(&order_url)
                .json(&json!({"customer": "c00001", "items": [], "slot": "slot-001"})),
            400,
            "bad_request",
        ),
        (
            client
                .post(&order_url)
                .json(&json!({"customer": "c1", "items": [], "slot": "s", "coupon": 1})),
            400,
            "bad_request",
        ),
        (
            client.post(&order_url).body(good.to_string()),
            415,
            "unsupported_media_type",
        ),
        (
            client
                .post(&order_url)
                .header("x-txlab-fault", "payment.nowhere=error")
                .json(&good),
            400,
            "bad_request",
        ),
        (client.get(format!("{order_url}/not-a-uuid")), 400, "bad_request"),
        (
            client.get(format!("{order_url}/{}", uuid::Uuid::nil())),
            404,
            "not_found",
        ),
        (
            client.get(format!("{order_url}/nope/workflow")),
            400,
            "bad_request",
        ),
        (
            client.get(format!("{order_url}/{}/workflow", uuid::Uuid::nil())),
            404,
            "not_found",
        ),
        (client.delete(&order_url), 405, "method_not_allowed"),
        (
            client
                .post(&order_url)
                .header("content-type", "application/json")
                .body(vec![b' '; 100 * 1024]),
            413,
            "payload_too_large",
        ),
    ];
    for (i, (req, status, code)) in cases.into_iter().enumerate() {
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "case {i}");
        if !code.is_empty() {
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"], code, "case {i}: {body}");
            assert!(
                body["message"].as_str().is_some_and(|m| !m.is_empty()),
                "case {i}: {body}"
            );
        }
    }

    // The same key and body: the same order, once.
    let first = client
        .post(&order_url)
        .header("idempotency-key", "k-1")
        .json(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status().as_u16(), 202);
    let first: Value = first.json().await.unwrap();
    let again = client
        .post(&order_url)
        .header("idempotency-key", "k-1")
        .json(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(first["id"], again["id"]);
    // The same key with another body is the client's mistake.
    let mut other = good.clone();
    other["slot"] = json!("slot-002");
    let clash = client
        .post(&order_url)
        .header("idempotency-key", "k-1")
        .json(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(clash.status().as_u16(), 422);
    assert_eq!(
        clash.json::<Value>().await.unwrap()["error"],
        "idempotency_key_reused"
    );

    let decided = common::get_json(
        &client,
        &format!("{order_url}/{}?wait_ms=10000", first["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(decided["state"], "confirmed");
    let (snaps, unsettled, _) =
        common::settle_and_audit(&e, TxMode::SagaOrch, &plan.seed.seed, Duration::from_secs(20)).await;
    assert_eq!(unsettled, Vec::<String>::new());
    assert_eq!(snaps.orders.len(), 1, "one order for two requests with one key");
    assert_eq!(snaps.payment.records.len(), 1);
    // Cancelling a cancelled order is refused with a reason.
    let id = first["id"].as_str().unwrap();
    assert_eq!(
        client
            .post(format!("{order_url}/{id}/cancel"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        202
    );
    let after = common::get_json(&client, &format!("{order_url}/{id}?wait_ms=10000")).await;
    assert_eq!(
        after["state"], "cancelled",
        "cancel after confirm compensates everything"
    );
    let twice = client
        .post(format!("{order_url}/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status().as_u16(), 409);
    assert_eq!(twice.json::<Value>().await.unwrap()["error"], "already_terminal");

    // A refused order being compensated has its verdict: a cancel is refused
    // and the order ends rejected (the payment's refund is slowed to see it).
    let refused = json!({"customer": "c00003", "items": [{"sku": "sku-0003", "qty": 1, "unit_price": 100}], "slot": "full"});
    let id = common::create_order(&client, &e, &refused, Some("payment.before_db=delay:700")).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while common::get_json(&client, &format!("{order_url}/{id}")).await["state"] != "compensating" {
        assert!(
            std::time::Instant::now() < deadline,
            "the refused order never compensated"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let late = client
        .post(format!("{order_url}/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(late.status().as_u16(), 409);
    assert_eq!(late.json::<Value>().await.unwrap()["error"], "already_failing");
    assert_eq!(
        common::wait_decided(&client, e.url(Role::Order).unwrap(), &id).await["state"],
        "rejected"
    );
    let (_, unsettled, report) =
        common::settle_and_audit(&e, TxMode::SagaOrch, &plan.seed.seed, Duration::from_secs(20)).await;
    assert_eq!((unsettled, report.violations), (vec![], vec![]));

    let metrics = common::metrics(&client, &e, Role::Order).await;
    assert!(
        metrics.contains("txlab_http_requests_total{") && metrics.contains("route=\"/orders\""),
        "{metrics}"
    );
    assert!(metrics.contains("txlab_http_request_duration_seconds_bucket"));
    platform.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Waits for saga_orch order `id` to be confirmed, then for the lab to
/// settle, and asserts the audit finds nothing wrong; the audit's snapshots.
async fn confirmed_and_clean(
    client: &reqwest::Client,
    e: &txlab_cli::platform::Endpoints,
    plan: &txlab_cli::spec::Plan,
    id: &str,
) -> txlab_cli::audit::Snapshots {
    let after = common::get_json(
        client,
        &format!("{}/orders/{id}?wait_ms=20000", e.url(Role::Order).unwrap()),
    )
    .await;
    assert_eq!(after["state"], "confirmed", "{after}");
    let (snaps, unsettled, report) =
        common::settle_and_audit(e, TxMode::SagaOrch, &plan.seed.seed, Duration::from_secs(20)).await;
    assert_eq!((unsettled, report.violations), (vec![], vec![]));
    snaps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_flight_saga_resumes_after_the_order_service_is_killed() {
    let (mut platform, e, dir) = common::deployed("resume").await;
    let plan = common::plan("smoke.yaml");
    let client = common::client();
    common::reset_and_seed(&client, &e, &plan.seed.seed).await;
    let order = json!({"customer": "c00002", "items": [{"sku": "sku-0002", "qty": 2, "unit_price": 400}], "slot": "slot-002"});
    // Hold the inventory step long enough to kill the orchestrator mid-saga.
    let id = common::create_order(&client, &e, &order, Some("inventory.before_db=delay:1500")).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    platform.crash(Role::Order).await.unwrap();
    assert_eq!(
        platform.restarts().await.get(&Role::Order),
        Some(&1),
        "the supervisor restarted it once"
    );

    let snaps = confirmed_and_clean(&client, &e, &plan, &id).await;
    let payment = snaps
        .payment
        .records
        .iter()
        .find(|p| p.order_id.to_string() == id)
        .unwrap();
    let moved: Vec<&str> = snaps
        .payment
        .ledger
        .iter()
        .filter(|l| l.order_id.to_string() == id)
        .map(|l| l.op.as_str())
        .collect();
    assert_eq!(
        (payment.state.as_str(), moved),
        ("captured", vec!["hold", "capture"]),
        "charged exactly once"
    );
    let order_log = std::fs::read_to_string(dir.join("logs/order.log")).unwrap();
    assert!(
        order_log.contains("taking over an order whose driver is gone"),
        "the restarted service says it took over its predecessor's saga"
    );
    platform.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An engine whose order another live replica has taken over writes
/// nothing more: its next write (a step's result with the next step's
/// intent, one statement that also checks the driver) is refused whole.
/// Here the test plays the other replica: it holds a driver lock of its
/// own and names itself the order's driver while the orchestrator waits on
/// the inventory call. Once the test lets go, the service takes the order
/// back (its driver is gone), repeats the call, and finishes it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_whose_order_was_taken_over_writes_nothing_more() {
    use sqlx::Connection;
    let (platform, e, dir) = common::deployed("fence").await;
    let plan = common::plan("smoke.yaml");
    let client = common::client();
    common::reset_and_seed(&client, &e, &plan.seed.seed).await;
    // The order service's class of driver locks (services' db::locks); a
    // key its sequence will not reach in this test (and positive: the
    // services find live drivers by the lock's unsigned object id).
    const ORDER_DRIVERS: i32 = 0x7478_0001;
    let mut other = common::db(&e, Role::Order).await;
    sqlx::query("SELECT pg_advisory_lock($1, 999999)")
        .bind(ORDER_DRIVERS)
        .execute(&mut other)
        .await
        .unwrap();
    let order = json!({"customer": "c00003", "items": [{"sku": "sku-0003", "qty": 1, "unit_price": 500}], "slot": "slot-003"});
    let id = common::create_order(&client, &e, &order, Some("inventory.before_db=delay:1500")).await;
    let uuid: uuid::Uuid = id.parse().unwrap();
    async fn log(conn: &mut sqlx::PgConnection, id: uuid::Uuid) -> Vec<(String, String)> {
        sqlx::query_as("SELECT name, forward FROM saga_steps WHERE order_id = $1 ORDER BY step")
            .bind(id)
            .fetch_all(conn)
            .await
            .unwrap()
    }
    // Payment done and the inventory call under way.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while log(&mut other, uuid).await[1].1 != "started" {
        assert!(std::time::Instant::now() < deadline, "the saga reached inventory");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sqlx::query("UPDATE orders SET driver = 999999 WHERE id = $1")
        .bind(uuid)
        .execute(&mut other)
        .await
        .unwrap();
    // The call ends after 1.5 s; its result must not be written.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let held = log(&mut other, uuid).await;
    assert_eq!(
        held.iter().map(|(_, f)| f.as_str()).collect::<Vec<_>>(),
        ["done", "started", "not_started"],
        "the stale engine wrote nothing after the takeover: {held:?}"
    );
    let lost = common::metrics(&client, &e, Role::Order).await;
    assert!(
        lost.lines()
            .any(|l| l.starts_with("txlab_events_total{") && l.contains("driver_lost") && l.ends_with(" 1")),
        "the engine said it lost the order:\n{lost}"
    );
    // The other replica dies: its lock goes, and the service takes the order back.
    other.close().await.unwrap();
    let snaps = confirmed_and_clean(&client, &e, &plan, &id).await;
    let moved: Vec<&str> = snaps
        .inventory
        .ledger
        .iter()
        .filter(|l| l.order_id == uuid)
        .map(|l| l.op.as_str())
        .collect();
    assert_eq!(moved, ["hold", "capture"], "stock taken exactly once");
    platform.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// One outbox relay per database publishes, the holder of the relay lock;
/// another takes over when the holder's session ends. Here the test takes
/// the lock from the order service's relay (ending the relay's session, as
/// a crash would): while the test holds it the order's first event stays
/// in the outbox, and once the test lets go the service's relay takes the
/// lock back and the order completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_relay_lock_holder_publishes_and_a_waiting_relay_takes_over() {
    use txlab_api::event::OUTBOX_RELAY_LOCK;
    let (platform, e, dir, client) = common::seeded_with("relay-lock", TxMode::SagaChor).await;
    let mut db = common::db(&e, Role::Order).await;
    let holder = || {
        sqlx::query_scalar::<_, i32>(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND ((classid::bigint << 32) | objid::bigint) = $1",
        )
        .bind(OUTBOX_RELAY_LOCK)
    };
    let relay = holder()
        .fetch_one(&mut db)
        .await
        .expect("the service's relay holds the lock");
    let mut test_session = common::db(&e, Role::Order).await;
    // One statement: the relay's session is told to end, and the test's
    // queues for the lock while that session still holds it, so the lock
    // passes to the test when the session exits. (Waiting for the exit
    // before asking left a gap in which the relay, reconnected, could take
    // the lock back first.)
    let take = sqlx::query("SELECT pg_terminate_backend($1), pg_advisory_lock($2)")
        .bind(relay)
        .bind(OUTBOX_RELAY_LOCK)
        .execute(&mut test_session);
    tokio::time::timeout(Duration::from_secs(10), take)
        .await
        .expect("the relay's lock is free once its session ended")
        .unwrap();
    // The relay notices at its next check of the lock's session (every
    // 0.5 s); until then it would still publish.
    let log = dir.join("logs/order.log");
    let lost = "outbox relay's lock connection failed";
    for _ in 0..100 {
        if std::fs::read_to_string(&log).unwrap_or_default().contains(lost) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        std::fs::read_to_string(&log).unwrap().contains(lost),
        "the relay says it lost the lock"
    );

    let order = json!({"customer": "c00003", "items": [{"sku": "sku-0003", "qty": 1, "unit_price": 300}], "slot": "slot-003"});
    let id = common::create_order(&client, &e, &order, None).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let waiting = common::get_json(&client, &format!("{}/orders/{id}", e.url(Role::Order).unwrap())).await;
    assert_eq!(
        waiting["state"], "pending",
        "nobody relays while the test holds the lock: {waiting}"
    );
    let unpublished: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_ms IS NULL")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(unpublished, 1, "the order's first event waits in the outbox");

    sqlx::Connection::close(test_session).await.unwrap();
    let decided = common::wait_decided(&client, e.url(Role::Order).unwrap(), &id).await;
    assert_eq!(decided["state"], "confirmed", "{decided}");
    holder()
        .fetch_one(&mut db)
        .await
        .expect("the relay holds the lock again");
    platform.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With one replica per service, whoever writes an outbox row runs the
/// relay that publishes it: the writers wake it in memory after their
/// commit and send no NOTIFY (each would serialize its commit with every
/// other notifying commit of the cluster). The test listens on the
/// relays' channel in the order's and the payment's databases while a
/// choreographed order goes through: nothing is heard, both services
/// count wake-ups from memory, and every outbox row of the order reached
/// the relay from its writer, none read back from the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_replica_hands_its_rows_to_its_relay_in_memory_without_a_notify() {
    let (platform, e, dir, client) = common::seeded_with("relay-wake", TxMode::SagaChor).await;
    let mut listeners = Vec::new();
    for role in [Role::Order, Role::Payment] {
        let mut l = sqlx::postgres::PgListener::connect(e.database(role).unwrap())
            .await
            .unwrap();
        l.listen("txlab_outbox").await.unwrap();
        listeners.push((role, l));
    }
    let order = json!({"customer": "c00005", "items": [{"sku": "sku-0005", "qty": 1, "unit_price": 500}], "slot": "slot-005"});
    let id = common::create_order(&client, &e, &order, None).await;
    let decided = common::wait_decided(&client, e.url(Role::Order).unwrap(), &id).await;
    assert_eq!(decided["state"], "confirmed", "{decided}");
    for (role, mut l) in listeners {
        // A NOTIFY is delivered at its commit, long before the decision.
        let heard = tokio::time::timeout(Duration::from_millis(500), l.try_recv()).await;
        assert!(heard.is_err(), "{role}: a writer notified: {heard:?}");
        let text = common::metrics(&client, &e, role).await;
        let memory = common::counter_sum(&text, "txlab_relay_wakeups_total", |l| {
            l.contains("cause=\"memory\"")
        });
        assert!(memory >= 1.0, "{role}: no relay wake-up from memory:\n{text}");
        let relayed = |how: &str| {
            common::counter_sum(&text, "txlab_events_total", |l| {
                l.contains("kind=\"relayed\"") && l.contains(&format!("detail=\"{how}\""))
            })
        };
        let mut db = common::db(&e, role).await;
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE key = $1")
            .bind(&id)
            .fetch_one(&mut db)
            .await
            .unwrap();
        assert!(rows >= 2, "{role}: {rows} outbox rows of the order");
        assert_eq!(
            (relayed("handed"), relayed("read")),
            (rows as f64, 0.0),
            "{role}: rows handed over and read back\n{text}"
        );
    }
    platform.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A consumer applies an event once and only in its own cell: a copy of
/// an event already handled changes nothing, and an event stamped with an
/// older cell's epoch is dropped, counted as stale. Both are published by
/// the test to the real broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_drop_repeated_events_and_events_of_an_older_cell() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let payment_topic = txlab_api::event::checkout_topic(Role::Payment).unwrap();
    let (platform, e, dir, client) = common::seeded_with("inbox", TxMode::SagaChor).await;
    let order = json!({"customer": "c00004", "items": [{"sku": "sku-0004", "qty": 1, "unit_price": 400}], "slot": "slot-004"});
    let id = common::create_order(&client, &e, &order, None).await;
    let base = e.url(Role::Order).unwrap();
    assert_eq!(
        common::wait_decided(&client, base, &id).await["state"],
        "confirmed"
    );

    // The order's own event, which made the payment service charge.
    let mut order_db = common::db(&e, Role::Order).await;
    let placed: Value = sqlx::query_scalar("SELECT payload FROM outbox WHERE key = $1 ORDER BY id LIMIT 1")
        .bind(&id)
        .fetch_one(&mut order_db)
        .await
        .unwrap();
    let mut payment_db = common::db(&e, Role::Payment).await;
    // The payment service's rows for an order: its record, ledger lines
    // and the events it wrote (handling an event again would write one more).
    async fn count(db: &mut sqlx::PgConnection, order: String) -> i64 {
        sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM payments WHERE order_id::text = $1) \
                  + (SELECT count(*) FROM ledger WHERE order_id::text = $1) \
                  + (SELECT count(*) FROM outbox WHERE key = $1)",
        )
        .bind(order)
        .fetch_one(db)
        .await
        .unwrap()
    }
    let before = count(&mut payment_db, id.clone()).await;
    assert!(before > 0, "the payment service charged the order");

    // A copy of that event, and one of an older cell for a new order.
    let mut stale = placed.clone();
    let other = uuid::Uuid::new_v4().to_string();
    stale["event_id"] = json!(uuid::Uuid::new_v4());
    stale["order_id"] = json!(other);
    stale["epoch"] = json!("a-cell-reset-away");
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &e.brokers)
        .create()
        .unwrap();
    let mut sent = Vec::new();
    for (key, event) in [(&id, &placed), (&other, &stale)] {
        let body = event.to_string();
        let delivered = producer
            .send(
                FutureRecord::to(payment_topic).key(key.as_str()).payload(&body),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        sent.push((delivered.partition, delivered.offset));
    }
    // Wait until the payment service's consumer is past both.
    for (partition, offset) in sent {
        let mut past = false;
        for _ in 0..100 {
            let next: Option<i64> = sqlx::query_scalar(
                "SELECT next_offset FROM consumer_offsets WHERE consumer = 'payment' AND topic = $1 AND partition = $2",
            )
            .bind(payment_topic)
            .bind(partition)
            .fetch_optional(&mut payment_db)
            .await
            .unwrap();
            past = next.is_some_and(|n| n > offset);
            if past {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            past,
            "the payment service consumed partition {partition} past {offset}"
        );
    }
    assert_eq!(
        count(&mut payment_db, id.clone()).await,
        before,
        "a repeated event charged again"
    );
    assert_eq!(
        count(&mut payment_db, other).await,
        0,
        "an event of an older cell took effect"
    );
    let metrics = common::metrics(&client, &e, Role::Payment).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("stale_event") && l.contains("payment")),
        "the payment service counted the stale event:\n{metrics}"
    );
    let view = common::get_json(&client, &format!("{base}/orders/{id}")).await;
    assert_eq!(view["state"], "confirmed");

    platform.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The event-driven order service holds a participant's result that
/// cannot decide its order (payment's and inventory's in saga_chor) and
/// writes it with the event that does; its consumer offset waits for that
/// write. A result held for 2 s is written on its own. Killed while it
/// holds results, the service hears them again after its restart, and the
/// decided order's log has all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_results_are_written_when_overdue_and_heard_again_after_a_crash() {
    let (mut platform, e, dir, client) = common::seeded_with("held", TxMode::SagaChor).await;
    let base = e.url(Role::Order).unwrap();
    let mut order_db = common::db(&e, Role::Order).await;
    let order = |n: u32| json!({"customer": format!("c0000{n}"), "items": [{"sku": format!("sku-000{n}"), "qty": 1, "unit_price": 300}], "slot": format!("slot-00{n}")});
    let counted = |metrics: &str, detail: &str| -> u64 {
        metrics
            .lines()
            .find(|l| {
                l.contains("events_total{")
                    && l.contains("kind=\"result\"")
                    && l.contains(&format!("detail=\"{detail}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    let wait_held = async |n: u64| {
        let mut held = 0;
        for _ in 0..60 {
            held = counted(&common::metrics(&client, &e, Role::Order).await, "held");
            if held >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(held, n, "payment's and inventory's results are held");
    };
    // The order's saga log while it is still pending (empty once decided).
    async fn pending_log(db: &mut sqlx::PgConnection, id: &str) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT s.forward FROM saga_steps s JOIN orders o ON o.id = s.order_id \
             WHERE o.id::text = $1 AND o.state = 'pending' ORDER BY s.step",
        )
        .bind(id)
        .fetch_all(db)
        .await
        .unwrap()
    }

    // Shipping waits 6 s before its write: the first two results wait for
    // it in memory until they have waited 2 s, then they are written.
    let first = common::create_order(&client, &e, &order(5), Some("shipping.before_db=delay:6000")).await;
    wait_held(2).await;
    let held_at = std::time::Instant::now();
    let mut log = vec![];
    for _ in 0..50 {
        log = pending_log(&mut order_db, &first).await;
        if log.first().is_some_and(|f| f == "done") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        log,
        ["done", "done", "not_started"],
        "written before shipping's result"
    );
    assert!(
        held_at.elapsed() >= Duration::from_millis(1500),
        "held for about 2 s first, written after {:?}",
        held_at.elapsed()
    );
    let metrics = common::metrics(&client, &e, Role::Order).await;
    assert_eq!(counted(&metrics, "held_overdue"), 1, "{metrics}");

    // Shipping waits 4 s: the crash comes while the results are held.
    let second = common::create_order(&client, &e, &order(6), Some("shipping.before_db=delay:4000")).await;
    wait_held(4).await;
    // Longer than the consumer takes to store the offsets of messages done
    // (200 ms), shorter than a result may be held (2 s).
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        pending_log(&mut order_db, &second).await,
        ["not_started"; 3],
        "nothing heard is written yet"
    );
    platform.crash(Role::Order).await.unwrap();

    for id in [&first, &second] {
        assert_eq!(
            common::wait_decided(&client, base, id).await["state"],
            "confirmed"
        );
        let flow = common::get_json(&client, &format!("{base}/orders/{id}/workflow")).await;
        for step in flow["steps"].as_array().unwrap() {
            assert_eq!(step["forward"], "done", "{flow:#}");
            assert!(step["forward_ended_ms"].is_i64(), "{flow:#}");
        }
    }
    let (_, unsettled, report) = common::settle_and_audit(
        &e,
        TxMode::SagaChor,
        &common::plan("smoke.yaml").seed.seed,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!((unsettled, report.violations), (vec![], vec![]));
    platform.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The lab's broker answers a fetch that finds records at once rather
/// than after the consumer's whole fetch wait (txlab's tansu patch
/// scripts/tansu/fetch-answers-when-found.patch): unpatched, every
/// delivery of an event-driven checkout waited out `fetch.wait.max.ms`.
/// The wait here is 8 s and the record is there before the first fetch;
/// unpatched, tansu sleeps out half of a long wait (all of a short one)
/// before it answers, so an answer within a quarter of the wait can only
/// come from a broker that answers when it finds records.
///
/// Then a record produced while the consumer's fetch waits with nothing
/// found (fetch-wakes-on-produce.patch): without the wake-up it is read
/// when that sleep ends, 4 s into the wait; with it, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_answers_a_fetch_as_soon_as_it_has_records() {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{Message, Offset, TopicPartitionList};
    const TOPIC: &str = "fetch-probe";
    const FETCH_WAIT: Duration = Duration::from_secs(8);

    let (platform, e, dir) = common::deployed("broker-fetch").await;
    one_partition_topic(&e.brokers, TOPIC).await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &e.brokers)
        .create()
        .unwrap();
    let produce = |payload: &'static str| {
        let send = producer.send(
            FutureRecord::to(TOPIC).key("k").payload(payload),
            Duration::from_secs(10),
        );
        async move {
            send.await
                .map_err(|(e, _)| e)
                .expect("the record is acknowledged")
        }
    };
    let delivered = produce("probe").await;

    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &e.brokers)
        .set("group.id", "fetch-probe")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", FETCH_WAIT.as_millis().to_string())
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, delivered.partition, Offset::Offset(delivered.offset))
        .unwrap();
    consumer.assign(&tpl).unwrap();
    /// Reads the next record, which must be `payload` and come within a
    /// quarter of the fetch wait after `since`.
    async fn read_soon(consumer: &StreamConsumer, since: std::time::Instant, payload: &str, what: &str) {
        let message = tokio::time::timeout(2 * FETCH_WAIT, consumer.recv())
            .await
            .expect("the record is delivered")
            .unwrap();
        let took = since.elapsed();
        eprintln!("{what}: answered after {took:?}");
        assert_eq!(message.payload(), Some(payload.as_bytes()));
        assert!(
            took < FETCH_WAIT / 4,
            "{what}: answered after {took:?} of a {FETCH_WAIT:?} wait: is the lab's tansu built with scripts/tansu/*.patch?"
        );
    }
    read_soon(
        &consumer,
        std::time::Instant::now(),
        "probe",
        "a fetch with a record there",
    )
    .await;

    // The consumer's next fetch finds nothing and waits; a second into
    // that wait, a record arrives (fetch-wakes-on-produce.patch).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let produced = std::time::Instant::now();
    produce("second").await;
    read_soon(&consumer, produced, "second", "a waiting fetch, from the produce").await;
    platform.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Producers that overlap on one partition never make a consumer skip a
/// record or get an answer it cannot use. A produce takes its offsets
/// before it stores its batch; tansu without fetch-stops-at-a-hole.patch
/// answered a fetch that came in between with the batch after the hole
/// (the consumer saw an offset jump) or only the batch before it
/// (librdkafka fetched again at once until it reported MSG_SIZE_TOO_LARGE).
/// Four producers sending one record at a time, as the relays do, and a
/// consumer with the lab's settings reading the partition as it fills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_reads_every_offset_in_order_while_producers_overlap() {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{Message, Offset, TopicPartitionList};
    const TOPIC: &str = "overlap-probe";
    const PRODUCERS: usize = 4;
    const EACH: usize = 300;
    const TOTAL: i64 = (PRODUCERS * EACH) as i64;

    let (platform, e, dir) = common::deployed("broker-overlap").await;
    one_partition_topic(&e.brokers, TOPIC).await;

    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &e.brokers)
        .set("group.id", "overlap-probe")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "500")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, 0, Offset::Offset(0)).unwrap();
    consumer.assign(&tpl).unwrap();
    // Offset jumps (expected, got) and receive errors, until every record
    // was read or 60 s passed.
    let reader = tokio::spawn(async move {
        let (mut next, mut jumps, mut errors) = (0_i64, Vec::new(), Vec::new());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while next < TOTAL {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Err(_) => break,
                Ok(Ok(message)) => {
                    if message.offset() != next {
                        jumps.push((next, message.offset()));
                    }
                    next = message.offset() + 1;
                }
                Ok(Err(e)) => errors.push(e.to_string()),
            }
        }
        (next, jumps, errors)
    });

    let started = std::time::Instant::now();
    let mut producers = tokio::task::JoinSet::new();
    for p in 0..PRODUCERS {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", &e.brokers);
        for (k, v) in txlab_api::event::PRODUCER_SETTINGS {
            config.set(k, v);
        }
        let producer: FutureProducer = config.create().unwrap();
        producers.spawn(async move {
            for i in 0..EACH {
                let key = format!("{p}-{i}");
                producer
                    .send(
                        FutureRecord::to(TOPIC).key(&key).payload("overlap"),
                        Duration::from_secs(10),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .expect("the record is acknowledged");
            }
        });
    }
    while let Some(done) = producers.join_next().await {
        done.unwrap();
    }
    let produced = started.elapsed();
    let (read_to, jumps, errors) = reader.await.unwrap();
    eprintln!(
        "{TOTAL} records produced in {produced:?}, read in {:?}: to offset {read_to}; jumps {jumps:?}; errors {errors:?}",
        started.elapsed()
    );
    assert!(
        jumps.is_empty(),
        "the consumer was served past records not stored yet (expected, got): {jumps:?}"
    );
    assert!(errors.is_empty(), "the consumer's fetches failed: {errors:?}");
    assert_eq!(read_to, TOTAL, "every record acknowledged is read");
    platform.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Creates `topic` with one partition on the lab's broker, for a probe.
async fn one_partition_topic(brokers: &str, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<_> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for created in admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap()
    {
        created.expect("the probe topic is created");
    }
}

/// A forward call that is refused moves nothing, even when it is refused
/// partway — a basket whose second SKU is out of stock, after the first
/// was taken, rolled back to a savepoint — under a saga step's take and a
/// TCC try's hold alike. An accepted saga step takes the stock in one
/// update per SKU, and its ledger still shows the hold and the capture the
/// audit counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_basket_moves_nothing_and_a_taken_one_is_ledgered_in_full() {
    let (platform, e, dir, client) = common::seeded_with("take", TxMode::SagaOrch).await;
    let inventory = e.url(Role::Inventory).unwrap();
    let mut db = common::db(&e, Role::Inventory).await;
    for (sku, available) in [("sku-0001", 10_i64), ("sku-0002", 0)] {
        let set = sqlx::query("UPDATE stock SET available = $2, reserved = 0 WHERE sku = $1")
            .bind(sku)
            .bind(available)
            .execute(&mut db)
            .await
            .unwrap();
        assert_eq!(set.rows_affected(), 1, "{sku} is seeded");
    }
    async fn first_sku(db: &mut sqlx::PgConnection) -> (i64, i64) {
        sqlx::query_as("SELECT available, reserved FROM stock WHERE sku = 'sku-0001'")
            .fetch_one(db)
            .await
            .unwrap()
    }
    async fn ledger(db: &mut sqlx::PgConnection, order: uuid::Uuid) -> Vec<(String, String, i64)> {
        sqlx::query_as("SELECT op, item, qty FROM ledger WHERE order_id = $1 ORDER BY op, item")
            .bind(order)
            .fetch_all(db)
            .await
            .unwrap()
    }

    let basket = json!({"lines": [{"sku": "sku-0001", "qty": 3}, {"sku": "sku-0002", "qty": 1}]});
    for op in ["reservations/{id}/reserve", "tcc/reservations/{id}/try"] {
        let id = uuid::Uuid::new_v4();
        let url = format!("{inventory}/{}", op.replace("{id}", &id.to_string()));
        let r = client.post(url).json(&basket).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 422, "{op}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "out_of_stock", "{op}");
        assert_eq!(
            first_sku(&mut db).await,
            (10, 0),
            "{op}: the first SKU is as it was"
        );
        assert_eq!(ledger(&mut db, id).await, [], "{op}");
        let state: String = sqlx::query_scalar("SELECT state FROM reservations WHERE order_id = $1")
            .bind(id)
            .fetch_one(&mut db)
            .await
            .unwrap();
        assert_eq!(state, "rejected", "{op}: the refusal is recorded");
    }

    let id = uuid::Uuid::new_v4();
    let r = client
        .post(format!("{inventory}/reservations/{id}/reserve"))
        .json(&json!({"lines": [{"sku": "sku-0001", "qty": 3}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(first_sku(&mut db).await, (7, 0), "taken, not left held");
    assert_eq!(
        ledger(&mut db, id).await,
        [
            ("capture".to_string(), "sku-0001".to_string(), 3),
            ("hold".to_string(), "sku-0001".to_string(), 3)
        ]
    );
    platform.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A forward call is one statement (epoch, record, change, ledger lines,
/// record insert), and so is a TCC confirm; they must still refuse a stale
/// epoch and write nothing, answer a repeat from the record, refuse a step
/// whose compensation came first, record a refusal with its reason — as
/// the step-by-step path did — and move a basket's SKUs all or none while
/// many baskets contend for the same rows. To see it fail: drop the epoch
/// comparison from `go` in `ledger::forward_at_once` or
/// `ledger::capture_at_once` (the stale calls then write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_statement_step_keeps_the_fence_and_the_record_rules() {
    use txlab_api::admin::EPOCH_HEADER;
    let (platform, e, dir, client) = common::seeded_with("at-once", TxMode::SagaOrch).await;
    let inventory = e.url(Role::Inventory).unwrap();
    let mut db = common::db(&e, Role::Inventory).await;
    sqlx::query("UPDATE stock SET available = 10, reserved = 0 WHERE sku = 'sku-0001'")
        .execute(&mut db)
        .await
        .unwrap();
    let epoch: String = sqlx::query_scalar("SELECT epoch FROM lab_epoch")
        .fetch_one(&mut db)
        .await
        .unwrap();
    async fn stock(db: &mut sqlx::PgConnection) -> (i64, i64) {
        sqlx::query_as("SELECT available, reserved FROM stock WHERE sku = 'sku-0001'")
            .fetch_one(db)
            .await
            .unwrap()
    }
    async fn written(db: &mut sqlx::PgConnection, order: uuid::Uuid) -> (Option<String>, Vec<String>) {
        let record = sqlx::query_scalar("SELECT state FROM reservations WHERE order_id = $1")
            .bind(order)
            .fetch_optional(&mut *db)
            .await
            .unwrap();
        let ops = sqlx::query_scalar("SELECT op FROM ledger WHERE order_id = $1 ORDER BY id")
            .bind(order)
            .fetch_all(db)
            .await
            .unwrap();
        (record, ops)
    }
    let basket = |op: &str, id: uuid::Uuid, lines: Value, epoch: &str| {
        client
            .post(format!("{inventory}/{}", op.replace("{id}", &id.to_string())))
            .header(EPOCH_HEADER, epoch)
            .json(&json!({ "lines": lines }))
            .send()
    };
    let call = |op: &str, id: uuid::Uuid, qty: u32, epoch: &str| {
        basket(op, id, json!([{"sku": "sku-0001", "qty": qty}]), epoch)
    };
    async fn answer(r: reqwest::Response) -> (u16, Value) {
        (r.status().as_u16(), r.json().await.unwrap())
    }

    // A call from a cell the lab has reset away writes nothing.
    let stale = uuid::Uuid::new_v4();
    let (status, body) = answer(
        call("reservations/{id}/reserve", stale, 3, "an-older-epoch")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("stale_epoch")),
        "{body}"
    );
    assert_eq!(written(&mut db, stale).await, (None, vec![]));
    assert_eq!(stock(&mut db).await, (10, 0));

    // Taken once; the repeat is answered from the record and moves nothing.
    let id = uuid::Uuid::new_v4();
    for repeated in [false, true] {
        let (status, body) = answer(call("reservations/{id}/reserve", id, 3, &epoch).await.unwrap()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (body["state"].as_str(), body["repeated"].as_bool()),
            (Some("reserved"), Some(repeated))
        );
    }
    assert_eq!(stock(&mut db).await, (7, 0));
    assert_eq!(
        written(&mut db, id).await,
        (Some("reserved".into()), vec!["hold".into(), "capture".into()])
    );

    // A compensation that came first leaves a voided record: the late step is refused.
    let late = uuid::Uuid::new_v4();
    let (status, body) = answer(call("reservations/{id}/release", late, 3, &epoch).await.unwrap()).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("voided")), "{body}");
    let (status, body) = answer(call("reservations/{id}/reserve", late, 3, &epoch).await.unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("already_compensated")),
        "{body}"
    );
    assert_eq!(written(&mut db, late).await, (Some("voided".into()), vec![]));

    // More than is there: refused with its reason, recorded, nothing moved.
    let short = uuid::Uuid::new_v4();
    let (status, body) = answer(call("reservations/{id}/reserve", short, 8, &epoch).await.unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("out_of_stock")),
        "{body}"
    );
    assert_eq!(written(&mut db, short).await, (Some("rejected".into()), vec![]));

    // A TCC try holds in one statement too.
    let tried = uuid::Uuid::new_v4();
    let (status, body) = answer(call("tcc/reservations/{id}/try", tried, 2, &epoch).await.unwrap()).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("tried")), "{body}");
    assert_eq!(stock(&mut db).await, (5, 2));
    assert_eq!(
        written(&mut db, tried).await,
        (Some("tried".into()), vec!["hold".into()])
    );

    // Its confirm captures what the try held, in one statement too, behind
    // the same fence; a repeat is answered from the record.
    let confirm = |id: uuid::Uuid, epoch: &str| {
        client
            .post(format!("{inventory}/tcc/reservations/{id}/confirm"))
            .header(EPOCH_HEADER, epoch)
            .send()
    };
    let (status, body) = answer(confirm(tried, "an-older-epoch").await.unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("stale_epoch")),
        "{body}"
    );
    assert_eq!(stock(&mut db).await, (5, 2));
    for repeated in [false, true] {
        let (status, body) = answer(confirm(tried, &epoch).await.unwrap()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (body["state"].as_str(), body["repeated"].as_bool()),
            (Some("reserved"), Some(repeated))
        );
    }
    assert_eq!(stock(&mut db).await, (5, 0));
    assert_eq!(
        written(&mut db, tried).await,
        (Some("reserved".into()), vec!["hold".into(), "capture".into()])
    );
    // Nothing tried, or tried and let go: nothing to confirm.
    let (status, body) = answer(confirm(uuid::Uuid::new_v4(), &epoch).await.unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("wrong_state")),
        "{body}"
    );
    let (status, body) = answer(confirm(late, &epoch).await.unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("wrong_state")),
        "{body}"
    );
    assert_eq!(written(&mut db, late).await, (Some("voided".into()), vec![]));

    // Baskets of several SKUs, many at once on the same two rows: each
    // moves all its SKUs or none (refused while sku-0001 lasts), and none
    // deadlocks on another, so the rows end where the records say.
    sqlx::query("UPDATE stock SET available = CASE sku WHEN 'sku-0001' THEN 6 ELSE 40 END, reserved = 0 WHERE sku IN ('sku-0001', 'sku-0002')")
        .execute(&mut db)
        .await
        .unwrap();
    let lines = json!([{"sku": "sku-0002", "qty": 2}, {"sku": "sku-0001", "qty": 1}]);
    let orders: Vec<uuid::Uuid> = (0..16).map(|_| uuid::Uuid::new_v4()).collect();
    let calls: Vec<_> = orders
        .iter()
        .map(|id| {
            let sent = basket("reservations/{id}/reserve", *id, lines.clone(), &epoch);
            tokio::spawn(async move { answer(sent.await.unwrap()).await })
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }
    let mut taken = 0;
    for (id, (status, body)) in orders.iter().zip(&answers) {
        let (record, ops) = written(&mut db, *id).await;
        match status {
            200 => {
                taken += 1;
                assert_eq!((record.as_deref(), ops.len()), (Some("reserved"), 4), "{body}");
            }
            422 => {
                assert_eq!(body["error"].as_str(), Some("out_of_stock"), "{body}");
                assert_eq!((record.as_deref(), ops.len()), (Some("rejected"), 0));
            }
            _ => panic!("basket {id}: {status} {body}"),
        }
    }
    assert_eq!(taken, 6, "{answers:?}");
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT available, reserved FROM stock WHERE sku IN ('sku-0001', 'sku-0002') ORDER BY sku",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(rows, vec![(0, 0), (40 - 2 * 6, 0)]);
    platform.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
