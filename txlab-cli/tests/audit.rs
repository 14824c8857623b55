//! The audit can fail: each invariant is broken on a real run and the audit
//! names it, and the races and leaks it would have caught (issue 6) each
//! have a run that shows them fixed. Everything runs on the real local
//! platform (PostgreSQL and tansu started by the lab's own code).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use sqlx::Connection;
use txlab_api::{Role, TxMode};
use txlab_cli::audit::{check, quiesce, AuditReport, ClientView, Reader};
use txlab_cli::platform::local::{LocalOptions, LocalPlatform};
use txlab_cli::platform::{Endpoints, Platform};
use txlab_cli::results::{CellSummary, RunDir};
use txlab_cli::spec::Plan;
use uuid::Uuid;

/// Runs `plan`'s cells on `platform` with `rate`/s for `secs`, constant arrivals, no warm-up.
async fn run(
    platform: &mut LocalPlatform,
    mut plan: Plan,
    rate: f64,
    secs: f64,
    dir: &std::path::Path,
) -> (Vec<CellSummary>, RunDir) {
    plan.set_constant_load(rate, secs);
    let run = RunDir::create(&dir.join("results"), &plan.profile.name).unwrap();
    let summaries = txlab_cli::commands::run::run_cells(platform, &plan, &run)
        .await
        .unwrap();
    (summaries, run)
}

/// The smoke profile narrowed to one scenario and one method.
fn one_cell(scenario: &str, method: TxMode) -> Plan {
    let mut plan = common::plan("smoke.yaml");
    plan.cells.retain(|c| c.scenario.name == scenario);
    plan.cells[0].method = method;
    plan.cells[0].id = format!("{method}-{scenario}");
    plan
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> Value {
    client
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The violations in `after` that were not in `before`.
fn new_violations(before: &AuditReport, after: &AuditReport) -> Vec<(String, String, Vec<Uuid>)> {
    let seen: BTreeSet<String> = before.violations.iter().map(|v| v.detail.clone()).collect();
    after
        .violations
        .iter()
        .filter(|v| !seen.contains(&v.detail))
        .map(|v| (v.invariant.to_string(), v.detail.clone(), v.orders.clone()))
        .collect()
}

/// Audits the settled lab again with the client's view, asserts that the
/// tampering just done added a violation of `invariant` about `needle`
/// (an order id or an item), and returns the new report.
async fn expect_caught(
    reader: &Reader,
    plan: &Plan,
    client: &ClientView,
    before: &AuditReport,
    invariant: &str,
    needle: &str,
) -> AuditReport {
    // Give the relay and the notification consumer time to carry a tampered
    // event through; the audit itself reads the databases as they are.
    let (snaps, _, _) = quiesce(reader, TxMode::SagaOrch, Duration::from_secs(5))
        .await
        .unwrap();
    let after = check(&plan.seed.seed, &snaps, TxMode::SagaOrch, Some(client));
    let new = new_violations(before, &after);
    assert!(
        new.iter().any(|(i, d, orders)| i == invariant
            && (d.contains(needle) || orders.iter().any(|o| o.to_string() == needle))),
        "breaking {invariant} ({needle}) was not reported; new violations: {new:#?}"
    );
    after
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invariant_is_reported_when_a_real_run_breaks_it() {
    let (mut platform, _, dir) = common::deployed("break-audit").await;
    let plan = one_cell("happy-path", TxMode::SagaOrch);
    let (summaries, run) = run(&mut platform, plan.clone(), 10.0, 1.0, &dir).await;
    // The cell was deployed afresh (a new broker, new service processes).
    let e = platform.endpoints();
    assert_eq!(
        (summaries[0].violations, summaries[0].sent),
        (0, 10),
        "control: the honest run is clean"
    );
    let client_json =
        std::fs::read_to_string(run.root.join("cells").join(&plan.cells[0].id).join("client.json")).unwrap();
    let mut client: ClientView = serde_json::from_str(&client_json).unwrap();
    assert_eq!(
        client.orders.len(),
        10,
        "every order the driver created is in client.json"
    );

    // Two more orders by hand: one refused at shipping (then compensated),
    // one cancelled after its confirmation.
    let http = common::client();
    let orders = format!("{}/orders", e.url(Role::Order).unwrap());
    let refused = post(&http, orders.clone(), json!({"customer": "c00150", "items": [{"sku": "sku-0040", "qty": 1, "unit_price": 100}], "slot": "full"})).await;
    let refused = refused["id"].as_str().unwrap().to_string();
    let undone = post(&http, orders.clone(), json!({"customer": "c00151", "items": [{"sku": "sku-0041", "qty": 1, "unit_price": 100}], "slot": "slot-019"})).await;
    let undone = undone["id"].as_str().unwrap().to_string();
    assert_eq!(
        common::wait_decided(&http, &orders.replace("/orders", ""), &undone).await["state"],
        "confirmed"
    );
    http.post(format!("{orders}/{undone}/cancel"))
        .send()
        .await
        .unwrap();
    for (id, state) in [(&refused, "rejected"), (&undone, "cancelled")] {
        let seen = common::get_json(&http, &format!("{orders}/{id}?wait_ms=10000")).await;
        assert_eq!(seen["state"], state);
        client.orders.insert(
            id.parse().unwrap(),
            Some(serde_json::from_value(seen["state"].clone()).unwrap()),
        );
    }
    let reader = Reader::connect(&e).await.unwrap();
    let (snaps, _, unsettled) = quiesce(&reader, TxMode::SagaOrch, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(unsettled, Vec::<String>::new());
    let mut report = check(&plan.seed.seed, &snaps, TxMode::SagaOrch, Some(&client));
    assert_eq!(
        report.violations,
        vec![],
        "control: the hand-made orders are clean too"
    );
    let confirmed: Vec<_> = snaps
        .orders
        .iter()
        .filter(|o| o.state == txlab_api::order::OrderState::Confirmed)
        .collect();
    let (a, b, c, d) = (confirmed[0], confirmed[1], confirmed[2], confirmed[3]);
    let (mut pay, mut inv, mut shp, mut ord) = (
        common::db(&e, Role::Payment).await,
        common::db(&e, Role::Inventory).await,
        common::db(&e, Role::Shipping).await,
        common::db(&e, Role::Order).await,
    );

    // money: a wallet debited behind everyone's back.
    sqlx::query("UPDATE wallets SET balance = balance - 99 WHERE customer = $1")
        .bind(&a.customer)
        .execute(&mut pay)
        .await
        .unwrap();
    report = expect_caught(
        &reader,
        &plan,
        &client,
        &report,
        "money",
        &format!("customer {}", a.customer),
    )
    .await;

    // stock: units appear from nowhere.
    let sku = &b.items.0[0].sku;
    sqlx::query("UPDATE stock SET available = available + 3 WHERE sku = $1")
        .bind(sku)
        .execute(&mut inv)
        .await
        .unwrap();
    report = expect_caught(&reader, &plan, &client, &report, "stock", &format!("SKU {sku}")).await;

    // slots: a capacity changed mid-run.
    sqlx::query("UPDATE slots SET capacity = capacity + 5 WHERE slot = $1")
        .bind(&c.slot)
        .execute(&mut shp)
        .await
        .unwrap();
    report = expect_caught(
        &reader,
        &plan,
        &client,
        &report,
        "slots",
        &format!("slot {}: capacity", c.slot),
    )
    .await;

    // exactly_once: a step applied twice — the participant's barrier record
    // removed, and the real reserve operation called again for the order.
    sqlx::query("DELETE FROM reservations WHERE order_id = $1")
        .bind(d.id)
        .execute(&mut inv)
        .await
        .unwrap();
    let lines: Vec<Value> = d
        .items
        .0
        .iter()
        .map(|i| json!({"sku": i.sku, "qty": i.qty}))
        .collect();
    let again = http
        .post(format!(
            "{}/reservations/{}/reserve",
            e.url(Role::Inventory).unwrap(),
            d.id
        ))
        .json(&json!({ "lines": lines }))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 200, "the second reservation really ran");
    report = expect_caught(
        &reader,
        &plan,
        &client,
        &report,
        "exactly_once",
        &d.id.to_string(),
    )
    .await;

    // atomicity: a compensation skipped — the refused order's payment put
    // back to captured, and the money taken again.
    let amount: i64 =
        sqlx::query_scalar("SELECT (request->>'amount')::bigint FROM payments WHERE order_id = $1")
            .bind(Uuid::parse_str(&refused).unwrap())
            .fetch_one(&mut pay)
            .await
            .unwrap();
    sqlx::query("UPDATE payments SET state = 'captured' WHERE order_id = $1")
        .bind(Uuid::parse_str(&refused).unwrap())
        .execute(&mut pay)
        .await
        .unwrap();
    sqlx::query("UPDATE wallets SET balance = balance - $1 WHERE customer = 'c00150'")
        .bind(amount)
        .execute(&mut pay)
        .await
        .unwrap();
    report = expect_caught(&reader, &plan, &client, &report, "atomicity", &refused).await;

    // outcomes: a second outcome event for the refused order (rejected, then cancelled).
    let extra = txlab_api::event::OrderOutcome {
        event_id: Uuid::new_v4(),
        order_id: refused.parse().unwrap(),
        state: txlab_api::order::OrderState::Cancelled,
        customer: "c00150".into(),
        decided_ms: 1,
        epoch: sqlx::query_scalar("SELECT epoch FROM lab_epoch")
            .fetch_one(&mut ord)
            .await
            .unwrap(),
    };
    txlab_tx_enqueue(&mut ord, &extra).await;
    report = expect_caught(&reader, &plan, &client, &report, "outcomes", &refused).await;

    // notification: a notification lost.
    let mut note = common::db(&e, Role::Notification).await;
    let lost: Uuid = client
        .orders
        .keys()
        .find(|id| **id != a.id && **id != d.id && client.orders[id].is_some())
        .copied()
        .unwrap();
    sqlx::query("DELETE FROM notifications WHERE order_id = $1")
        .bind(lost)
        .execute(&mut note)
        .await
        .unwrap();
    report = expect_caught(
        &reader,
        &plan,
        &client,
        &report,
        "notification",
        &lost.to_string(),
    )
    .await;

    // client: the database says otherwise than what the driver saw.
    sqlx::query("UPDATE orders SET state = 'rejected' WHERE id = $1")
        .bind(b.id)
        .execute(&mut ord)
        .await
        .unwrap();
    report = expect_caught(&reader, &plan, &client, &report, "client", &b.id.to_string()).await;

    // termination: a 2PC branch prepared and never decided (no recovery runs under saga_orch).
    let stray = Uuid::new_v4();
    let prepared = http
        .post(format!(
            "{}/twopc/shipments/{stray}/prepare",
            e.url(Role::Shipping).unwrap()
        ))
        .json(&json!({"slot": "slot-000"}))
        .send()
        .await
        .unwrap();
    assert_eq!(prepared.status().as_u16(), 200);
    expect_caught(
        &reader,
        &plan,
        &client,
        &report,
        "termination",
        &stray.to_string(),
    )
    .await;

    platform.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Writes an outcome event to the order service's outbox, as its own code
/// does (the relay publishes it, the notification service consumes it).
async fn txlab_tx_enqueue(conn: &mut sqlx::PgConnection, event: &txlab_api::event::OrderOutcome) {
    sqlx::query("INSERT INTO outbox (topic, key, payload, created_ms) VALUES ($1, $2, $3, 0)")
        .bind(txlab_api::event::ORDER_EVENTS_TOPIC)
        .bind(event.order_id.to_string())
        .bind(serde_json::to_value(event).unwrap())
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("SELECT pg_notify('txlab_outbox', '')")
        .execute(conn)
        .await
        .unwrap();
}

/// Issue 6, bug 1: a cancel racing a refusal used to record `rejected`,
/// then `cancelled`, with two outcome events and two notifications.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_racing_a_refusal_leaves_one_outcome() {
    let (mut platform, _, dir) = common::deployed("cancel-race").await;
    let mut plan = one_cell("happy-path", TxMode::SagaOrch);
    let scenario = &mut plan.cells[0].scenario;
    scenario.order.slot = "full".into();
    scenario.cancel_after_ms = Some(20);
    scenario.expect = txlab_api::order::OrderState::Rejected;
    let (summaries, _) = run(&mut platform, plan, 40.0, 3.0, &dir).await;
    let s = &summaries[0];
    assert_eq!(s.sent, 120);
    // Either outcome is legitimate (the cancel may land before the refusal);
    // what must hold is one outcome per order, seen alike by client and database.
    assert_eq!(s.outcomes.values().sum::<u64>(), 120, "{:?}", s.outcomes);
    assert!(s.settled, "{:?}", s.unsettled);
    assert_eq!(s.violations, 0, "{:?}", s.violations_by_invariant);
    platform.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Issue 6, bug 2: consumer offsets kept in a reused database skipped the
/// first events of a new broker; the second run on the same database
/// left orders pending and notifications missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_the_same_database_is_clean() {
    let dir = common::temp_dir("same-db");
    // One PostgreSQL for both runs; each run starts a broker of its own.
    let db = LocalPlatform::start(LocalOptions {
        log_dir: dir.join("db-logs"),
        ..Default::default()
    })
    .await
    .unwrap();
    for round in 1..=2 {
        let opts = LocalOptions {
            log_dir: dir.join(format!("logs-{round}")),
            database_url: Some(db.admin_url().to_string()),
            ..Default::default()
        };
        let mut platform = LocalPlatform::start(opts).await.unwrap();
        platform.deploy(TxMode::SagaChor, 1).await.unwrap();
        let (summaries, _) = run(
            &mut platform,
            one_cell("happy-path", TxMode::SagaChor),
            10.0,
            2.0,
            &dir.join(format!("run-{round}")),
        )
        .await;
        let s = &summaries[0];
        assert!(s.settled, "run {round}: {:?}", s.unsettled);
        assert_eq!(
            (s.outcomes.get("confirmed").copied(), s.violations),
            (Some(20), 0),
            "run {round}: {:?}",
            s.violations_by_invariant
        );
        platform.shutdown().await.unwrap();
    }
    db.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Prepared branches of the lab, in all participant databases together.
async fn prepared(e: &Endpoints) -> i64 {
    let mut n = 0;
    for role in [Role::Payment, Role::Inventory, Role::Shipping] {
        let mut db = common::db(e, role).await;
        // pg_prepared_xacts lists the whole cluster: keep this database's.
        n += sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'txlab%' AND database = current_database()",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        db.close().await.unwrap();
    }
    n
}

/// Issue 6, bug 3: a 2PC branch left prepared by one cell blocked the next
/// cell's reset (its TRUNCATE waited behind the branch's locks), and the
/// old coordinator's late calls reached the new cell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_rolls_back_branches_left_prepared_and_fences_their_coordinator() {
    let (mut platform, e, dir) = common::deployed_with("prepared-reset", TxMode::Twopc).await;
    let plan = common::plan("smoke.yaml");
    let http = common::client();
    common::reset_and_seed(&http, &e, &plan.seed.seed).await;
    // Order A: the coordinator decides commit, then stalls for 8 s before
    // phase two: its three branches stay prepared, holding their rows,
    // until in-doubt recovery (after 5 s) would settle them.
    let a = json!({"customer": "c00007", "items": [{"sku": "sku-0007", "qty": 1, "unit_price": 100}], "slot": "slot-007"});
    common::create_order(&http, &e, &a, Some("order.during_commit=delay:8000")).await;
    // Order B: its payment commit call stalls 2.5 s (under the coordinator's
    // 3 s timeout), so it is still running when the reset comes; phase two
    // goes to all participants at once, so only its payment branch is left
    // prepared.
    let b = json!({"customer": "c00008", "items": [{"sku": "sku-0008", "qty": 1, "unit_price": 100}], "slot": "slot-008"});
    common::create_order(&http, &e, &b, Some("payment.during_commit=delay:2500")).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while prepared(&e).await < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "the branches were not prepared"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The next cell's reset, while the branches are prepared and well
    // before in-doubt recovery would resolve them: it must not wait.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_secs(4))
        .build()
        .unwrap();
    common::reset_and_seed(&impatient, &e, &plan.seed.seed).await;
    assert_eq!(prepared(&e).await, 0, "the reset rolled the branches back");
    // B's stalled commit call goes on, and A's coordinator wakes: the
    // participant refuses the stale call, so nothing of the old cell lands
    // in this one.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (snaps, unsettled, report) =
        common::settle_and_audit(&e, TxMode::Twopc, &plan.seed.seed, Duration::from_secs(10)).await;
    assert_eq!((unsettled, report.violations), (vec![], vec![]));
    assert!(
        snaps.payment.ledger.is_empty() && snaps.payment.records.is_empty(),
        "{:?}",
        snaps.payment
    );
    let metrics = common::metrics(&http, &e, Role::Payment).await;
    assert!(
        metrics.contains("stale_epoch"),
        "the payment service refused the stale call"
    );

    // And the next cell, under another method, runs clean.
    platform.deploy(TxMode::SagaOrch, 1).await.unwrap();
    let (summaries, _) = run(
        &mut platform,
        one_cell("happy-path", TxMode::SagaOrch),
        10.0,
        1.0,
        &dir,
    )
    .await;
    assert_eq!((summaries[0].violations, summaries[0].settled), (0, true));
    platform.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Issue 6, bug 5: an event whose handler always fails was retried for
/// ever, stalling its worker; now it is dead-lettered, counted, and the
/// audit names its order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_dead_lettered_and_reported() {
    let (platform, e, dir) = common::deployed_with("poison", TxMode::SagaChor).await;
    let plan = common::plan("smoke.yaml");
    let http = common::client();
    common::reset_and_seed(&http, &e, &plan.seed.seed).await;
    let payment = e.url(Role::Payment).unwrap();
    let always = json!({"mode": "always", "point": "before_db", "action": "error"});
    assert!(http
        .put(format!("{payment}/admin/faults"))
        .json(&always)
        .send()
        .await
        .unwrap()
        .status()
        .is_success());
    let orders = format!("{}/orders", e.url(Role::Order).unwrap());
    let body = |c: &str| json!({"customer": c, "items": [{"sku": "sku-0001", "qty": 1, "unit_price": 100}], "slot": "slot-001"});
    let poisoned = post(&http, orders.clone(), body("c00001")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The handler fails on every attempt until the attempts run out (about 5 s).
    let mut db = common::db(&e, Role::Payment).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM dead_letters")
        .fetch_one(&mut db)
        .await
        .unwrap()
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the poison event was not dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(http
        .put(format!("{payment}/admin/faults"))
        .json(&json!({"mode": "none"}))
        .send()
        .await
        .unwrap()
        .status()
        .is_success());
    // The consumer moved on: the next order goes through.
    let next = post(&http, orders.clone(), body("c00002")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        common::wait_decided(&http, &orders.replace("/orders", ""), &next).await["state"],
        "confirmed"
    );

    let (_, unsettled, report) =
        common::settle_and_audit(&e, TxMode::SagaChor, &plan.seed.seed, Duration::from_secs(3)).await;
    assert!(
        unsettled.iter().any(|u| u.contains("1 orders not decided")),
        "{unsettled:?}"
    );
    let named = |inv: &str| {
        report
            .violations
            .iter()
            .any(|v| v.invariant == inv && v.orders.iter().any(|o| o.to_string() == poisoned))
    };
    assert!(
        named("dead_letter") && named("termination"),
        "{:#?}",
        report.violations
    );
    let metrics = common::metrics(&http, &e, Role::Payment).await;
    assert!(metrics.contains("dead_lettered"), "counted in the metrics");
    platform.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
