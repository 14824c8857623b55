//! Chaos on the real local lab: the repository's Chaos Mesh files switched
//! on during cells by the proxy and the platform, and what the lab's own
//! measurements and audit then show.

mod common;

use txlab_api::TxMode;
use txlab_cli::chaos::mesh;
use txlab_cli::platform::local::LocalPlatform;
use txlab_cli::platform::Platform;
use txlab_cli::results::{CellSummary, RunDir};
use txlab_cli::spec::{Cell, CellChaos, Plan};

/// One lab at a time: these tests compare latencies, which two other labs
/// starting on the same two cores would swamp.
static ONE_LAB: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `chaos/<names>.yaml` joined as a profile would name them.
fn chaos(names: &[&str]) -> CellChaos {
    if names.is_empty() {
        return CellChaos::none();
    }
    CellChaos {
        name: names.join("+"),
        faults: names
            .iter()
            .map(|n| mesh::load(&common::repo().join(format!("chaos/{n}.yaml"))).unwrap())
            .collect(),
    }
}

/// The smoke profile's happy path, once per (method, chaos), at a constant
/// `rate` for `secs` with chaos on from the first arrival.
fn plan(cells: &[(TxMode, CellChaos)], rate: f64, secs: f64) -> Plan {
    let mut plan = common::plan("smoke.yaml");
    plan.cells.retain(|c| c.scenario.name == "happy-path");
    plan.set_constant_load(rate, secs);
    let template: Cell = plan.cells[0].clone();
    plan.cells = cells
        .iter()
        .enumerate()
        .map(|(i, (method, chaos))| Cell {
            id: format!("{i}-{method}-{}", chaos.name),
            method: *method,
            chaos: chaos.clone(),
            ..template.clone()
        })
        .collect();
    plan
}

async fn run(platform: &mut LocalPlatform, plan: &Plan, dir: &std::path::Path) -> Vec<CellSummary> {
    run_kept(platform, plan, dir).await.1
}

/// [`run`], and the run's directory for the cells' files.
async fn run_kept(
    platform: &mut LocalPlatform,
    plan: &Plan,
    dir: &std::path::Path,
) -> (RunDir, Vec<CellSummary>) {
    let run = RunDir::create(&dir.join("results"), &plan.profile.name).unwrap();
    let summaries = txlab_cli::commands::run::run_cells(platform, plan, &run)
        .await
        .unwrap();
    (run, summaries)
}

fn assert_clean(s: &CellSummary) {
    assert!(s.settled, "{}: settled ({:?})", s.cell, s.unsettled);
    assert_eq!(s.violations, 0, "{}: {:?}", s.cell, s.violations_by_invariant);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_on_one_link_slows_its_calls_by_twice_the_delay_and_goes_away() {
    let _serial = ONE_LAB.lock().await;
    let (mut platform, dir) = common::proxied_lab("chaos-latency").await;
    let m = TxMode::SagaOrch;
    // latency-10ms with 50 ms: a debug build's cell-to-cell p50 wanders by
    // 10-20 ms on this machine, as much as 2 x 10 ms, so the repository's
    // file is scaled up to keep the proportion testable.
    let path = common::repo().join("chaos/latency-10ms.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("latency: 10ms", "latency: 50ms")
        .replace("name: latency-10ms", "name: latency-50ms");
    let slow = CellChaos {
        name: "latency-50ms".into(),
        faults: vec![mesh::parse(&path, &text).unwrap()],
    };
    let cells = [(m, chaos(&[])), (m, slow), (m, chaos(&[]))];
    let (run, s) = run_kept(&mut platform, &plan(&cells, 4.0, 6.0), &dir).await;
    platform.shutdown().await.unwrap();
    for c in &s {
        assert_clean(c);
        assert_eq!(c.unexpected, 0, "{}", c.cell);
    }
    // Judged by each cell's fastest order: a delay is a floor under every
    // order, while medians on a busy host (CI, stolen time) were seen to
    // move by as much as the delay itself (p50 120 -> 314 ms).
    let fastest = |i: usize| {
        let h = txlab_cli::results::read_histogram(&run.cell_dir(&s[i].cell).join("decided.hdr")).unwrap();
        h.min() as f64 / 1000.0
    };
    let (before, during, after) = (fastest(0), fastest(1), fastest(2));
    eprintln!(
        "fastest decided: {before:.1} / {during:.1} / {after:.1} ms; p50 {:.1} / {:.1} / {:.1} ms",
        s[0].decided_ms.p50, s[1].decided_ms.p50, s[2].decided_ms.p50
    );
    // saga_orch's happy path calls payment once: 50 ms each way, once.
    assert!(
        during >= 100.0 && during - before < 170.0,
        "50 ms both ways on order↔payment: the fastest order {before:.1} → {during:.1} ms"
    );
    assert!(
        after < before + 50.0,
        "switched off after its cell: the fastest order {before:.1} then {after:.1} ms"
    );
    assert!(s[1].chaos_notes.is_empty(), "{:?}", s[1].chaos_notes);
    // On from the first arrival (no warm-up) until the load's end.
    let w = &s[1].chaos_windows;
    assert!(
        w.len() == 1
            && w[0].name == "latency-50ms"
            && w[0].from_s < 0.5
            && (5.5..8.0).contains(&w[0].until_s),
        "{w:?}"
    );
    assert!(s[0].chaos_windows.is_empty() && s[2].chaos_windows.is_empty());
    // The proxy counted every link by its sender, the broker's too.
    for link in [
        "load→order",
        "order→load",
        "order→payment",
        "payment→order",
        "order→postgres",
        "payment→postgres",
    ] {
        assert!(
            s[1].network.get(link).is_some_and(|b| *b > 0),
            "{link} in {:?}",
            s[1].network
        );
    }
    assert!(
        !s[1].network.contains_key("?→order"),
        "every sender told: {:?}",
        s[1].network
    );
    // Resources per component, the proxy's threads apart from the driver.
    for component in [
        "order",
        "payment",
        "inventory",
        "shipping",
        "notification",
        "postgres",
        "tansu",
        "driver",
        "proxy",
    ] {
        assert!(
            s[1].resources.contains_key(component),
            "{component} in {:?}",
            s[1].resources.keys()
        );
    }
    assert!(s[1].resources["proxy"].cpu_s > 0.0, "the proxy did work");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_makes_coordinated_methods_recover_as_their_contracts_say() {
    let _serial = ONE_LAB.lock().await;
    let (mut platform, dir) = common::proxied_lab("chaos-partition").await;
    let cells: Vec<_> = [TxMode::SagaOrch, TxMode::Tcc, TxMode::Twopc]
        .into_iter()
        .map(|m| (m, chaos(&["partition-payment"])))
        .collect();
    let s = run(&mut platform, &plan(&cells, 10.0, 5.0), &dir).await;
    platform.shutdown().await.unwrap();
    for c in &s {
        assert_clean(c);
        // The 3 s partition held the calls made in it: they waited it out
        // or failed and were decided by the method's recovery.
        assert!(
            c.decided_ms.max > 1000.0,
            "{}: the partition showed in the latency (max {:.0} ms)",
            c.cell,
            c.decided_ms.max
        );
        assert_eq!(c.decided, c.sent, "{}: every order decided", c.cell);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_driven_methods_run_through_the_proxy_and_survive_a_pod_kill() {
    let _serial = ONE_LAB.lock().await;
    let (mut platform, dir) = common::proxied_lab("chaos-kill").await;
    let cells = [
        (TxMode::SagaChor, chaos(&["latency-50ms-jitter"])),
        (TxMode::Outbox, chaos(&["kill-inventory", "duplicate-1pct"])),
    ];
    let s = run(&mut platform, &plan(&cells, 10.0, 4.0), &dir).await;
    platform.shutdown().await.unwrap();
    for c in &s {
        assert_clean(c);
    }
    // The broker's clients reach it through the proxy too, told apart by process.
    assert!(
        s[0].network.get("inventory→kafka").is_some_and(|b| *b > 0),
        "{:?}",
        s[0].network
    );
    assert!(
        s[0].decided_ms.p50 >= 40.0,
        "inventory's events and answers wait 50 ± 10 ms: p50 {:.1} ms",
        s[0].decided_ms.p50
    );
    assert_eq!(s[1].restarts.get("inventory"), Some(&1), "{:?}", s[1].restarts);
    // The kill's window runs until the service was healthy again.
    let kill = s[1]
        .chaos_windows
        .iter()
        .find(|w| w.name == "kill-inventory")
        .expect("a window");
    assert!(
        kill.until_s > kill.from_s && kill.until_s - kill.from_s < 30.0,
        "{kill:?}"
    );
    assert!(
        s[1].resources.contains_key("inventory"),
        "a restarted service is still measured: {:?}",
        s[1].resources.keys()
    );
    assert!(
        s[1].chaos_notes.iter().any(|n| n.contains("duplicate")),
        "what the proxy cannot show is said: {:?}",
        s[1].chaos_notes
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
