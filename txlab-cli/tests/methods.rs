//! All five methods on the real local platform: the failure and cancel
//! scenarios audit clean, the TCC barrier stops its three anomalies, an
//! in-doubt 2PC branch is resolved, and crashes at each crash-capable point
//! leave no money, stock, slot, prepared transaction or tried branch behind.

mod common;

use std::time::Duration;

use serde_json::{json, Value};
use txlab_api::order::IDEMPOTENCY_KEY_HEADER;
use txlab_api::{Role, TxMode};
use txlab_cli::platform::local::LocalPlatform;
use txlab_cli::platform::Platform;

/// Runs `profiles/<name>.yaml` on a fresh platform, shortened to 15 orders
/// per cell (10/s for 1.5 s, evenly spaced, no warm-up).
async fn run_shortened(
    name: &str,
) -> (
    LocalPlatform,
    std::path::PathBuf,
    Vec<txlab_cli::results::CellSummary>,
) {
    let (mut platform, _, dir) = common::deployed_with(name, TxMode::SagaOrch).await;
    let mut plan = common::plan(&format!("{name}.yaml"));
    plan.set_constant_load(10.0, 1.5);
    let run = txlab_cli::results::RunDir::create(&dir.join("results"), name).unwrap();
    let summaries = txlab_cli::commands::run::run_cells(&mut platform, &plan, &run)
        .await
        .unwrap();
    (platform, dir, summaries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_passes_the_failure_and_cancel_scenarios() {
    let (platform, dir, summaries) = run_shortened("methods").await;
    assert_eq!(summaries.len(), 5 * 7);
    for s in &summaries {
        assert_eq!(s.sent, 15, "{}", s.cell);
        assert_eq!(
            s.outcomes.get(&s.expect).copied(),
            Some(s.sent),
            "{}: {:?} e.g. {:?}",
            s.cell,
            s.outcomes,
            s.unexpected_examples
        );
        assert_eq!((s.errors, s.undecided), (0, 0), "{}", s.cell);
        assert!(s.settled, "{}", s.cell);
        assert_eq!(s.violations, 0, "{}: {:?}", s.cell, s.violations_by_invariant);
    }
    // The methods really differ underneath: votes and decisions for the
    // two-phase ones, none for the saga.
    let events = |cell: &str| summaries.iter().find(|s| s.cell == cell).unwrap().events.clone();
    assert!(
        events("twopc-happy-path-r1-1")
            .get("decision")
            .copied()
            .unwrap_or(0.0)
            >= 15.0
    );
    assert!(
        events("tcc-fail-shipping-r1-1")
            .get("vote")
            .copied()
            .unwrap_or(0.0)
            >= 45.0
    );
    assert_eq!(events("saga_orch-happy-path-r1-1").get("decision"), None);
    // Outbox leaves refused orders for a person: reported by design, not as bugs.
    let outbox_fail = summaries
        .iter()
        .find(|s| s.cell == "outbox-fail-payment-r1-1")
        .unwrap();
    assert_eq!((outbox_fail.violations, outbox_fail.by_design), (0, 15));
    assert!(
        events("saga_orch-fail-shipping-r1-1")
            .get("compensation")
            .copied()
            .unwrap_or(0.0)
            >= 30.0
    );
    platform.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_point_and_crash_scenario_audits_clean_under_every_method() {
    let (platform, dir, summaries) = run_shortened("faults").await;
    assert_eq!(summaries.len(), 5 * 11);
    for s in &summaries {
        assert_eq!(
            s.outcomes.get(&s.expect).copied(),
            Some(s.sent),
            "{}: {:?} e.g. {:?}",
            s.cell,
            s.outcomes,
            s.unexpected_examples
        );
        assert!(
            s.settled && s.errors == 0,
            "{}: settled {}, errors {:?}",
            s.cell,
            s.settled,
            s.error_kinds
        );
        assert_eq!(s.violations, 0, "{}: {:?}", s.cell, s.violations_by_invariant);
    }
    // The injected errors really fired and were retried.
    let retries = |cell: &str| {
        summaries
            .iter()
            .find(|s| s.cell == cell)
            .unwrap()
            .events
            .get("retry")
            .copied()
            .unwrap_or(0.0)
    };
    assert!(retries("saga_orch-fault-after-db-r1-1") >= 15.0);
    assert!(retries("twopc-fault-during-prepare-r1-1") >= 15.0);
    assert!(retries("tcc-fault-during-confirm-r1-1") >= 15.0);
    platform.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The wallet of `customer`, read from the payment database: (balance, reserved).
async fn wallet(e: &txlab_cli::platform::Endpoints, customer: &str) -> (i64, i64) {
    let mut db = common::db(e, Role::Payment).await;
    sqlx::query_as("SELECT balance, reserved FROM wallets WHERE customer = $1")
        .bind(customer)
        .fetch_one(&mut db)
        .await
        .unwrap()
}

async fn post(client: &reqwest::Client, url: String, body: Option<&Value>) -> (u16, Value) {
    let mut req = client.post(url);
    if let Some(b) = body {
        req = req.json(b);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tcc_barrier_stops_repeats_empty_cancels_and_hanging_tries() {
    let (platform, e, dir) = common::deployed_with("barrier", TxMode::Tcc).await;
    let client = common::client();
    common::reset_and_seed(&client, &e, &common::plan("smoke.yaml").seed.seed).await;
    let pay = e.url(Role::Payment).unwrap().to_string();
    let charge = json!({"customer": "c00003", "amount": 700});
    let start = wallet(&e, "c00003").await;

    // 1. Repeated calls: a retried Try holds once, a retried Confirm takes once.
    // Without the barrier the second Try would hold another 700.
    let a = uuid::Uuid::new_v4();
    assert_eq!(
        post(&client, format!("{pay}/tcc/payments/{a}/try"), Some(&charge))
            .await
            .0,
        200
    );
    let (status, again) = post(&client, format!("{pay}/tcc/payments/{a}/try"), Some(&charge)).await;
    assert_eq!((status, again["repeated"].as_bool()), (200, Some(true)));
    assert_eq!(wallet(&e, "c00003").await, (start.0 - 700, start.1 + 700));
    for _ in 0..2 {
        assert_eq!(
            post(&client, format!("{pay}/tcc/payments/{a}/confirm"), None)
                .await
                .0,
            200
        );
    }
    assert_eq!(wallet(&e, "c00003").await, (start.0 - 700, start.1));

    // 2. Null compensation: a Cancel that overtakes its Try releases nothing.
    // Without the barrier it would release 700 that were never held.
    let b = uuid::Uuid::new_v4();
    let (status, cancelled) = post(&client, format!("{pay}/tcc/payments/{b}/cancel"), None).await;
    assert_eq!((status, cancelled["state"].as_str()), (200, Some("voided")));
    assert_eq!(wallet(&e, "c00003").await, (start.0 - 700, start.1));

    // 3. Hanging: the late Try after that Cancel is refused and holds nothing.
    // Without the barrier it would hold 700 that no Confirm or Cancel will ever free.
    let (status, late) = post(&client, format!("{pay}/tcc/payments/{b}/try"), Some(&charge)).await;
    assert_eq!(
        (status, late["error"].as_str()),
        (422, Some("already_compensated"))
    );
    assert_eq!(wallet(&e, "c00003").await, (start.0 - 700, start.1));
    platform.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `on_branch` leaves nothing in the connection's statement cache (through
/// `sqlx::query` every gid's command was kept there), keeps a quote inside
/// the gid's literal, and passes PostgreSQL's error for an unknown gid on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_phase_commands_leave_no_prepared_statement_behind() {
    use sqlx::Connection;
    use txlab_svc::db::{on_branch, OnBranch};

    let dir = common::temp_dir("branch-commands");
    let platform = LocalPlatform::start(txlab_cli::platform::local::LocalOptions {
        log_dir: dir.join("logs"),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut conn = sqlx::PgConnection::connect(platform.admin_url()).await.unwrap();
    // A quote in a gid is escaped, not taken for the literal's end.
    for (gid, end) in [
        ("txlab_test_1", OnBranch::Commit),
        ("txlab_test_it's", OnBranch::Rollback),
    ] {
        sqlx::Executor::execute(&mut conn, "BEGIN; SELECT 1")
            .await
            .unwrap();
        on_branch(&mut conn, OnBranch::Prepare, gid).await.unwrap();
        on_branch(&mut conn, end, gid).await.unwrap();
    }
    assert_eq!(
        conn.cached_statements_size(),
        0,
        "a gid's command was kept as a prepared statement"
    );
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'txlab\\_test\\_%'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(left, 0, "every branch prepared here was ended");
    // A gid that names no branch is PostgreSQL's error, passed on.
    let unknown = on_branch(&mut conn, OnBranch::Commit, "txlab_test_none")
        .await
        .unwrap_err();
    assert!(txlab_svc::db::is_unknown_gid(&unknown), "{unknown}");
    conn.close().await.unwrap();
    platform.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_doubt_2pc_branch_is_rolled_back_by_presumed_abort() {
    let (platform, e, dir) = common::deployed_with("in-doubt", TxMode::Twopc).await;
    let client = common::client();
    let plan = common::plan("smoke.yaml");
    common::reset_and_seed(&client, &e, &plan.seed.seed).await;
    let pay = e.url(Role::Payment).unwrap().to_string();
    // A branch prepared for a transaction the coordinator never heard of (its
    // coordinator died before logging anything): it holds the wallet's lock.
    let id = uuid::Uuid::new_v4();
    let (status, _) = post(
        &client,
        format!("{pay}/twopc/payments/{id}/prepare"),
        Some(&json!({"customer": "c00004", "amount": 900})),
    )
    .await;
    assert_eq!(status, 200);
    let mut db = common::db(&e, Role::Payment).await;
    let prepared = "SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'txlab_payment_%'";
    assert_eq!(
        sqlx::query_scalar::<_, i64>(prepared)
            .fetch_one(&mut db)
            .await
            .unwrap(),
        1
    );

    // The participant asks the coordinator, which presumes abort; the branch goes.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left: i64 = sqlx::query_scalar(prepared).fetch_one(&mut db).await.unwrap();
        // Rolled back, and then a `voided` record written (so a late prepare is refused).
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM payments WHERE order_id = $1")
            .bind(id)
            .fetch_optional(&mut db)
            .await
            .unwrap();
        if left == 0 && state.as_deref() == Some("voided") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the in-doubt branch was not resolved in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let decision = common::get_json(
        &client,
        &format!("{}/twopc/{id}/decision", e.url(Role::Order).unwrap()),
    )
    .await;
    assert_eq!(decision["decision"], "abort");
    let (_, unsettled, report) =
        common::settle_and_audit(&e, TxMode::Twopc, &plan.seed.seed, Duration::from_secs(10)).await;
    assert_eq!((unsettled, report.violations), (vec![], vec![]));
    platform.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every crash-capable point of every participant under `method`, and the
/// coordinator's own point under the two-phase methods: (role, fault header).
fn crash_points(method: TxMode) -> Vec<(Role, String)> {
    let generic: &[&str] = if method.is_event_driven() {
        // Event handlers: before the effect, between effect+event and commit, after commit.
        &["before_db", "after_event", "after_db"]
    } else {
        &["before_db", "after_db", "before_reply"]
    };
    let specific: &[&str] = match method {
        TxMode::Tcc => &["during_try", "during_confirm", "during_cancel"],
        TxMode::Twopc => &["during_prepare", "during_commit"],
        _ => &[],
    };
    let mut points = Vec::new();
    for role in [Role::Payment, Role::Inventory, Role::Shipping] {
        for point in generic.iter().chain(specific) {
            points.push((role, format!("{role}.{point}=crash")));
        }
    }
    match method {
        TxMode::Tcc => points.push((Role::Order, "order.during_confirm=crash".into())),
        TxMode::Twopc => points.push((Role::Order, "order.during_commit=crash".into())),
        _ => {}
    }
    points
}

/// Sends a burst of orders, `faulted` of which carries `fault`, while
/// `kill` (if any) is killed mid-burst; waits for every order to be decided.
async fn burst(
    platform: &mut LocalPlatform,
    order_url: &str,
    n: usize,
    fault: Option<&str>,
    kill: Option<Role>,
) {
    let client = common::client();
    // Only a cancel (an abort) passes during_cancel: that order's slot is full.
    let slot = if fault.is_some_and(|f| f.contains("during_cancel")) {
        "full"
    } else {
        "slot-001"
    };
    let mut ids = Vec::new();
    for i in 0..6 {
        if i == 3 {
            if let Some(role) = kill {
                platform.crash(role).await.unwrap();
            }
        }
        let body = json!({"customer": format!("c{:05}", n * 10 + i), "items": [{"sku": "sku-0001", "qty": 1, "unit_price": 300}],
            "slot": if i == 2 { slot } else { "slot-001" }});
        // The key makes the retry below safe: a POST whose answer was lost
        // to a crash must not create a second order.
        let mut req = client
            .post(format!("{order_url}/orders"))
            .header(IDEMPOTENCY_KEY_HEADER, format!("burst-{n}-{i}"))
            .json(&body);
        if let (2, Some(f)) = (i, fault) {
            req = req.header("x-txlab-fault", f);
        }
        // The order service itself may be the one restarting: retry the POST.
        let mut created = None;
        for _ in 0..100 {
            if let Ok(r) = req.try_clone().unwrap().send().await {
                if let Ok(v) = r.json::<Value>().await {
                    created = v["id"].as_str().map(str::to_string);
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ids.push(created.expect("order accepted"));
    }
    for id in &ids {
        common::wait_decided(&client, order_url, id).await;
    }
}

/// Crashes every service at every crash-capable point, and kills the order
/// and notification services mid-burst; after each, everything settles with
/// a clean audit: nothing lost or doubled, no prepared or tried branch left.
async fn crash_under_load(method: TxMode) {
    let (mut platform, e, dir) = common::deployed_with(&format!("crash-{method}"), method).await;
    let client = common::client();
    let plan = common::plan("smoke.yaml");
    let order_url = e.url(Role::Order).unwrap().to_string();
    let points = crash_points(method);
    let kills = [Role::Order, Role::Notification];
    let cases = points
        .iter()
        .map(|(role, fault)| (*role, Some(fault.as_str()), None))
        .chain(kills.iter().map(|r| (*r, None, Some(*r))));
    for (n, (role, fault, kill)) in cases.enumerate() {
        common::reset_and_seed(&client, &e, &plan.seed.seed).await;
        let before = platform.restarts().await.get(&role).copied().unwrap_or(0);
        burst(&mut platform, &order_url, n, fault, kill).await;
        let what = fault
            .map(str::to_string)
            .unwrap_or_else(|| format!("kill -9 {role}"));
        let (snaps, unsettled, report) =
            common::settle_and_audit(&e, method, &plan.seed.seed, Duration::from_secs(30)).await;
        assert_eq!(unsettled, Vec::<String>::new(), "{method} {what}: settled");
        assert_eq!(report.violations, vec![], "{method} {what}");
        assert_eq!(snaps.orders.len(), 6, "{method} {what}");
        // A point passed by both phases (after_db) crashes each phase's first attempt.
        let after = platform.restarts().await.get(&role).copied().unwrap_or(0);
        assert!(
            after > before,
            "{method} {what}: the {role} service crashed and was restarted"
        );
    }
    platform.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_orch_survives_crashes_at_every_point() {
    crash_under_load(TxMode::SagaOrch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_chor_survives_crashes_at_every_point() {
    crash_under_load(TxMode::SagaChor).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcc_survives_crashes_at_every_point() {
    crash_under_load(TxMode::Tcc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twopc_survives_crashes_at_every_point() {
    crash_under_load(TxMode::Twopc).await;
}

/// Issue 6, bug 4: presumed abort went by the order's age and accepted any
/// order. Now only an undriven `twopc` transaction whose vote phase has
/// stalled is presumed aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presumed_abort_covers_only_stalled_twopc_transactions() {
    let (mut platform, e, dir) = common::deployed_with("presume", TxMode::Twopc).await;
    let client = common::client();
    let plan = common::plan("smoke.yaml");
    common::reset_and_seed(&client, &e, &plan.seed.seed).await;
    let order_url = e.url(Role::Order).unwrap().to_string();
    let ask = |id: &str| format!("{order_url}/twopc/{id}/decision?presume_abort=true");
    // A twopc order whose vote phase is slow but driven: not presumed aborted.
    let body = json!({"customer": "c00005", "items": [{"sku": "sku-0005", "qty": 1, "unit_price": 100}], "slot": "slot-005"});
    let slow = common::create_order(&client, &e, &body, Some("shipping.during_prepare=delay:2000")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        common::get_json(&client, &ask(&slow)).await["decision"],
        Value::Null,
        "its coordinator is driving it"
    );
    assert_eq!(
        common::wait_decided(&client, &order_url, &slow).await["state"],
        "confirmed"
    );

    // A saga order, decided long ago (older than the 10 s window): not a
    // 2PC transaction, so there is nothing to presume.
    let e = platform.deploy(TxMode::SagaOrch, 1).await.unwrap();
    common::reset_and_seed(&client, &e, &plan.seed.seed).await;
    let order_url = e.url(Role::Order).unwrap().to_string();
    let saga = common::create_order(&client, &e, &body, None).await;
    assert_eq!(
        common::wait_decided(&client, &order_url, &saga).await["state"],
        "confirmed"
    );
    tokio::time::sleep(Duration::from_secs(11)).await;
    let asked = common::get_json(
        &client,
        &format!("{order_url}/twopc/{saga}/decision?presume_abort=true"),
    )
    .await;
    assert_eq!(
        asked["decision"],
        Value::Null,
        "no decision is presumed for a saga"
    );
    let mut db = common::db(&e, Role::Order).await;
    let decisions: i64 = sqlx::query_scalar("SELECT count(*) FROM tx_decisions")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(decisions, 0);
    platform.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
