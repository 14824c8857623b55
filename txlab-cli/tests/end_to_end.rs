//! The whole lab through its CLI entry: a short profile on the embedded
//! platform, every order decided, every audit clean, results on disk.

mod common;

use clap::Parser;
use txlab_cli::Cli;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_profile_decides_every_order_and_audits_clean() {
    let results = common::temp_dir("e2e");
    let profile = common::repo().join("profiles/smoke.yaml");
    let cli = Cli::parse_from([
        "txlab",
        "run",
        "--matrix",
        "--profile",
        profile.to_str().unwrap(),
        "--results",
        results.to_str().unwrap(),
    ]);
    let code = txlab_cli::main(cli).await;
    assert_eq!(code, std::process::ExitCode::SUCCESS);

    let runs: Vec<_> = std::fs::read_dir(&results)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(runs.len(), 1, "one run directory");
    let run = &runs[0];
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(meta["status"], "finished");
    assert_eq!(meta["seed"], 7);
    let wall_s = meta["wall_s"].as_f64().unwrap();
    assert!(wall_s >= 10.0, "five cells of 2 s load took {wall_s} s in all");
    assert!(meta["platform"]["versions"]["postgres"]
        .as_str()
        .unwrap()
        .contains("PostgreSQL"));

    let summaries = txlab_cli::results::read_summaries(run).unwrap();
    let scenarios: Vec<_> = summaries.iter().map(|s| s.scenario.as_str()).collect();
    assert_eq!(
        scenarios,
        [
            "happy-path",
            "fail-payment",
            "fail-inventory",
            "fail-shipping",
            "cancel-after-payment"
        ]
    );
    for s in &summaries {
        assert_eq!(s.sent, 20, "{}: 10/s for 2 s", s.cell);
        assert_eq!(s.decided, s.sent, "{}: every order decided", s.cell);
        assert_eq!(
            s.outcomes.get(&s.expect).copied(),
            Some(s.sent),
            "{}: outcomes {:?}, e.g. {:?}",
            s.cell,
            s.outcomes,
            s.unexpected_examples
        );
        assert_eq!((s.errors, s.undecided, s.unexpected), (0, 0, 0), "{}", s.cell);
        assert!(s.settled, "{} settled", s.cell);
        assert_eq!(
            s.violations, 0,
            "{}: audit {:?}",
            s.cell, s.violations_by_invariant
        );
        assert!(s.decided_ms.p50 > 0.0 && s.decided_ms.count == 20);
        let dir = run.join("cells").join(&s.cell);
        for f in [
            "cell.json",
            "audit.json",
            "accepted.hdr",
            "decided.hdr",
            "percentiles.csv",
            "timeseries.csv",
            "logs/order.log",
        ] {
            assert!(dir.join(f).is_file(), "{} lacks {f}", s.cell);
        }
    }
    // The cell's own slice of the order log names its orders.
    let audit: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("cells/saga_orch-fail-shipping-r1-1/audit.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(audit["orders_checked"], 20);
    let log = std::fs::read_to_string(run.join("cells/saga_orch-fail-shipping-r1-1/logs/order.log")).unwrap();
    assert!(
        log.contains("\"order_id\"") && log.contains("compensated"),
        "order log has structured, per-order lines"
    );

    // Sampled orders as the order service recorded them: a refused
    // shipping step, the two before it done and then compensated, in order.
    let sampled =
        txlab_cli::results::workflows::read(&run.join("cells/saga_orch-fail-shipping-r1-1")).unwrap();
    let labels: Vec<&str> = sampled.iter().map(|s| s.label.as_str()).collect();
    assert_eq!(
        labels,
        ["fastest", "median", "slowest"],
        "all rejected: one of each"
    );
    for s in &sampled {
        let w = &s.workflow;
        assert_eq!(w.order.state.as_str(), "rejected");
        let t = |v: Option<i64>| v.unwrap_or_else(|| panic!("a time is missing in {w:#?}"));
        let [payment, inventory, shipping] = &w.steps[..] else {
            panic!("{w:#?}")
        };
        assert_eq!(
            (
                payment.forward.as_str(),
                inventory.forward.as_str(),
                shipping.forward.as_str()
            ),
            ("done", "done", "rejected")
        );
        assert!(t(payment.forward_started_ms) >= w.order.created_ms);
        assert!(t(payment.forward_ended_ms) <= t(inventory.forward_started_ms));
        assert!(t(inventory.forward_ended_ms) <= t(shipping.forward_started_ms));
        assert!(t(shipping.forward_ended_ms) <= t(inventory.compensation_started_ms));
        assert!(t(payment.compensation_ended_ms) <= t(w.order.decided_ms));
        assert!(
            w.events
                .iter()
                .any(|e| e.kind == "rejected" && e.published_ms.is_some()),
            "the outcome event was published: {:?}",
            w.events
        );
    }

    // The report: CSV, charts (a sampled-orders chart per cell) and the page.
    let reports = common::temp_dir("e2e-reports");
    let out = common::report(run, &reports).await;
    let mut files = vec![
        "summary.csv".to_string(),
        "latency.png".into(),
        "index.html".into(),
    ];
    files.extend(summaries.iter().map(|s| format!("orders-{}.png", s.cell)));
    let page = std::fs::read_to_string(out.join("index.html")).unwrap();
    for f in &files {
        assert!(out.join(f).is_file(), "the report lacks {f}");
        if f.ends_with(".png") {
            assert!(page.contains(&format!("src=\"{f}\"")), "index.html shows {f}");
        }
    }
    // The percentile spectra of every cell in one long table.
    let mut spectra = csv::Reader::from_path(out.join("percentiles.csv")).unwrap();
    let rows: Vec<std::collections::HashMap<String, String>> =
        spectra.deserialize().map(Result::unwrap).collect();
    assert_eq!(
        rows.len(),
        summaries.len() * 2 * 9,
        "2 latencies x 9 quantiles per cell"
    );
    for s in &summaries {
        let median = rows
            .iter()
            .find(|r| r["cell"] == s.cell && r["latency"] == "decided" && r["quantile"] == "0.5")
            .unwrap_or_else(|| panic!("{}'s decided median", s.cell));
        let v: f64 = median["value_ms"].parse().unwrap();
        assert!(
            (v - s.decided_ms.p50).abs() < 0.01,
            "{}: {v} vs {}",
            s.cell,
            s.decided_ms.p50
        );
    }
    std::fs::remove_dir_all(&reports).unwrap();
    std::fs::remove_dir_all(&results).unwrap();
}

#[tokio::test]
async fn bad_input_is_refused_before_anything_starts() {
    let dir = common::temp_dir("bad-input");
    std::fs::write(dir.join("typo.yaml"), "name: t\nmethods: [saga_orch]\nscenarios: [happy-path]\nload: {arrival: poisson, rate: 5, duration: 2}\n").unwrap();
    let args = |profile: &str| {
        let cli = Cli::parse_from([
            "txlab",
            "run",
            "--profile",
            profile,
            "--scenarios",
            common::repo().join("scenarios").to_str().unwrap(),
        ]);
        match cli.command {
            txlab_cli::Command::Run(a) => a,
            _ => unreachable!(),
        }
    };
    let err = args(dir.join("typo.yaml").to_str().unwrap())
        .resolve()
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("typo.yaml:4:") && text.contains("load.duration: unknown field `duration`"),
        "{text}"
    );

    std::fs::write(dir.join("unknown.yaml"), "name: t\nmethods: [saga_orch]\nscenarios: [happy-paht]\nload: {arrival: poisson, rate: 5, duration_s: 2}\n").unwrap();
    let err = args(dir.join("unknown.yaml").to_str().unwrap())
        .resolve()
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("unknown scenario `happy-paht`"),
        "{err:#}"
    );

    // --matrix means the whole matrix: it refuses to be narrowed.
    let both = Cli::try_parse_from(["txlab", "run", "--matrix", "--only", "fail-payment"]).unwrap_err();
    assert!(both.to_string().contains("cannot be used with"), "{both}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Issue 6: orders dropped at `max_in_flight` were left out of the
/// percentiles (p99 over the survivors) and the run exited 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_arrivals_stay_in_the_percentiles_and_fail_the_run() {
    let dir = common::temp_dir("overload");
    std::fs::create_dir_all(dir.join("scenarios")).unwrap();
    std::fs::write(
        dir.join("scenarios/slow-payment.yaml"),
        "name: slow-payment\ndescription: Every charge takes 1.5 s.\nfault: payment.before_db=delay:1500\nexpect: confirmed\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("overload.yaml"),
        "name: overload\nmethods: [saga_orch]\nscenarios: [slow-payment]\n\
         load: {arrival: constant, rate: 20, duration_s: 2, max_in_flight: 5}\nquiesce_timeout_s: 20\n",
    )
    .unwrap();
    let cli = Cli::parse_from([
        "txlab",
        "run",
        "--profile",
        dir.join("overload.yaml").to_str().unwrap(),
        "--scenarios",
        dir.join("scenarios").to_str().unwrap(),
        "--results",
        dir.join("results").to_str().unwrap(),
    ]);
    assert_eq!(
        txlab_cli::main(cli).await,
        std::process::ExitCode::from(txlab_cli::commands::run::EXIT_THRESHOLDS)
    );

    let run = std::fs::read_dir(dir.join("results"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let s = &txlab_cli::results::read_summaries(&run).unwrap()[0];
    assert!(
        s.dropped > 20,
        "most of the 40 arrivals find 5 orders in flight: {}",
        s.dropped
    );
    assert_eq!(s.violations, 0, "what was sent is consistent");
    assert_eq!(
        s.decided_ms.count, 40,
        "every arrival is in the decided percentiles"
    );
    assert_eq!((s.censored, s.accepted_ms.count), (s.dropped, 40));
    // At the follow limit, to the histogram's 3 significant digits.
    assert!(
        (s.decided_ms.p99 - 60_000.0).abs() < 100.0,
        "p99 {} is censored, not computed over the survivors",
        s.decided_ms.p99
    );
    assert!(
        s.threshold_failures
            .iter()
            .any(|f| f.contains("dropped arrivals")),
        "{:?}",
        s.threshold_failures
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
