//! Replicas on the real local lab: three processes per service behind the
//! proxy, under every method, and an order replica killed mid-load whose
//! transactions the other replicas take over and finish.

mod common;

use txlab_api::{Role, TxMode};
use txlab_cli::chaos::mesh;
use txlab_cli::platform::local::LocalPlatform;
use txlab_cli::platform::Platform;
use txlab_cli::results::{CellSummary, RunDir};
use txlab_cli::spec::{Cell, CellChaos, Plan};

/// One lab at a time: fifteen services each are plenty for two cores.
static ONE_LAB: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One cell of the smoke profile's happy path with 3 replicas per service
/// and payment slowed by 1 s per call (before it locks anything, and first, so
/// no 2PC branch holds locks meanwhile), so every order is open for a
/// while (several at once per replica), at `rate` for `secs`.
fn plan(method: TxMode, chaos: CellChaos, rate: f64, secs: f64, warmup_s: f64) -> Plan {
    let mut plan = common::plan("smoke.yaml");
    plan.cells.retain(|c| c.scenario.name == "happy-path");
    plan.set_constant_load(rate, secs);
    plan.profile.load.warmup_s = warmup_s;
    let mut cell: Cell = plan.cells[0].clone();
    cell.id = format!("{method}-r3-{}", chaos.name);
    cell.method = method;
    cell.replicas = 3;
    cell.chaos = chaos;
    cell.scenario.fault = Some("payment.before_db=delay:1000".into());
    plan.cells = vec![cell];
    plan
}

/// Runs the plan's one cell; its summary and its results directory.
async fn run(
    platform: &mut LocalPlatform,
    plan: &Plan,
    dir: &std::path::Path,
) -> (CellSummary, std::path::PathBuf) {
    let run = RunDir::create(&dir.join("results"), &plan.profile.name).unwrap();
    let mut s = txlab_cli::commands::run::run_cells(platform, plan, &run)
        .await
        .unwrap();
    (s.remove(0), run.cell_dir(&plan.cells[0].id))
}

fn assert_every_order_decided_cleanly(s: &CellSummary) {
    assert!(s.settled, "{}: settled ({:?})", s.cell, s.unsettled);
    assert_eq!(s.violations, 0, "{}: {:?}", s.cell, s.violations_by_invariant);
    assert_eq!(s.errors, 0, "{}: {:?}", s.cell, s.error_kinds);
    assert_eq!(s.decided, s.sent, "{}: every order decided", s.cell);
    assert_eq!(s.unexpected, 0, "{}: {:?}", s.cell, s.unexpected_examples);
}

async fn metrics_text(url: &str) -> String {
    common::client()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_of_every_service_share_the_work_under_every_method() {
    let _serial = ONE_LAB.lock().await;
    let (mut platform, dir) = common::proxied_lab("replicas-share").await;
    for method in TxMode::ALL {
        let (s, cell_dir) = run(
            &mut platform,
            &plan(method, CellChaos::none(), 10.0, 3.0, 0.0),
            &dir,
        )
        .await;
        assert_every_order_decided_cleanly(&s);
        assert_eq!(s.replicas, 3);
        // The sampled orders' records, read from whichever replica answered.
        let sampled = txlab_cli::results::workflows::read(&cell_dir).unwrap();
        assert!(!sampled.is_empty(), "{method}: sampled workflows");
        for w in sampled.iter().map(|s| &s.workflow) {
            assert_eq!(w.order.state.as_str(), "confirmed");
            assert_eq!(w.driver.is_some(), !method.is_event_driven(), "{method}: {w:?}");
            if matches!(method, TxMode::Twopc | TxMode::Tcc) {
                let d = w.decision.as_ref().expect("a decision");
                assert_eq!(d.decision, "commit");
                for b in &w.branches {
                    let (asked, voted, done) = (
                        b.asked_ms.unwrap(),
                        b.voted_ms.unwrap(),
                        b.phase2_ended_ms.unwrap(),
                    );
                    assert!(
                        asked <= voted && voted <= d.decided_ms && d.decided_ms <= done,
                        "{method}: {b:?}"
                    );
                }
            } else {
                assert!(
                    w.steps
                        .iter()
                        .all(|s| s.forward == "done" && s.forward_ended_ms.is_some()),
                    "{method}: {w:?}"
                );
            }
        }
        // Each process did business work: the proxy spread the callers'
        // connections, and the consumers split the topics' partitions.
        let e = platform.endpoints();
        if method.is_event_driven() {
            // The order's relay may run in any of its replicas: its
            // writers wake it by NOTIFY, not in memory.
            let mut woken = (0.0, 0.0);
            for url in e.replica_urls(Role::Order) {
                let text = metrics_text(url).await;
                let count = |cause: &str| {
                    let cause = format!("cause=\"{cause}\"");
                    common::counter_sum(&text, "txlab_relay_wakeups_total", |l| l.contains(&cause))
                };
                woken = (woken.0 + count("notify"), woken.1 + count("memory"));
            }
            assert!(
                woken.0 > 0.0 && woken.1 == 0.0,
                "{method}: order relay wake-ups (notify, memory) {woken:?}"
            );
        }
        for role in Role::ALL {
            let urls = e.replica_urls(role);
            assert_eq!(urls.len(), 3, "{method}: {role} replicas {urls:?}");
            for (i, url) in urls.iter().enumerate() {
                let work = common::counter_sum(&metrics_text(url).await, "txlab_events_total", |_| true);
                assert!(work > 0.0, "{method}: {role}-{i} did no work");
                assert!(
                    s.resources.contains_key(&format!("{role}-{i}")),
                    "{method}: {role}-{i} measured: {:?}",
                    s.resources.keys()
                );
            }
        }
    }
    platform.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_order_replica_s_transactions_are_taken_over_and_finish() {
    let _serial = ONE_LAB.lock().await;
    let (mut platform, dir) = common::proxied_lab("replicas-takeover").await;
    // order-0 killed 1.5 s into the load and kept down for 4 s: its open
    // transactions can only finish if another replica takes them over.
    let path = common::repo().join("chaos/order-replica-down.yaml");
    let down = CellChaos {
        name: "order-replica-down".into(),
        faults: vec![mesh::load(&path).unwrap()],
    };
    for method in [TxMode::SagaOrch, TxMode::Tcc, TxMode::Twopc] {
        let (s, _) = run(&mut platform, &plan(method, down.clone(), 20.0, 4.0, 1.5), &dir).await;
        assert_every_order_decided_cleanly(&s);
        // Taken over by the replicas that stayed up (order-0, restarted
        // after 4 s, is a new process with counters of its own).
        let mut taken = 0.0;
        for url in &platform.endpoints().replica_urls(Role::Order)[1..] {
            taken += common::counter_sum(&metrics_text(url).await, "txlab_events_total", |l| {
                l.contains("kind=\"taken_over\"")
            });
        }
        assert!(
            taken >= 1.0,
            "{method}: order-1 and order-2 took over order-0's open orders ({:?})",
            s.events
        );
        eprintln!("{method}: {taken} orders taken over");
        assert!(
            s.chaos_windows.iter().any(|w| w.name == "order-replica-down"),
            "{:?}",
            s.chaos_windows
        );
    }
    platform.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
