//! `txlab compare` on real runs: two runs of the same code show no
//! regression; a run with one step slowed on purpose shows one.

mod common;

use std::process::ExitCode;

use clap::Parser;
use txlab_api::TxMode;
use txlab_cli::platform::Platform;
use txlab_cli::results::RunDir;
use txlab_cli::spec::Plan;
use txlab_cli::Cli;

/// saga_orch's happy path, four repetitions of 2 s at 10 orders/s; with
/// `slow_payment`, every payment call waits 80 ms first.
fn plan(slow_payment: bool) -> Plan {
    let mut plan = common::plan("smoke.yaml");
    plan.cells.retain(|c| c.scenario.name == "happy-path");
    plan.set_constant_load(10.0, 2.0);
    let template = plan.cells[0].clone();
    plan.cells = (1..=4)
        .map(|repetition| {
            let mut cell = template.clone();
            cell.method = TxMode::SagaOrch;
            cell.repetition = repetition;
            cell.id = format!("saga_orch-happy-path-r1-{repetition}");
            if slow_payment {
                cell.scenario.fault = Some("payment.before_db=delay:80".into());
            }
            cell
        })
        .collect();
    plan
}

async fn compare(baseline: &RunDir, current: &RunDir, out: &std::path::Path) -> ExitCode {
    let cli = Cli::parse_from([
        "txlab",
        "compare",
        baseline.root.to_str().unwrap(),
        current.root.to_str().unwrap(),
        // Debug builds on a shared machine wander: runs a minute apart were
        // seen 40% apart, so the band is wide and the slowed step large.
        "--noise",
        "0.5",
        "--out",
        out.to_str().unwrap(),
    ]);
    txlab_cli::main(cli).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_code_shows_no_regression_and_a_slowed_step_does() {
    let (mut platform, _e, dir) = common::deployed("compare").await;
    let variants = [("baseline", false), ("same", false), ("slowed", true)];
    let plans = variants.map(|(_, slow)| plan(slow));
    let runs = variants.map(|(name, _)| RunDir::create(&dir.join("results"), name).unwrap());
    // The three runs take turns, one repetition each, and baseline and
    // same swap places every round: a machine that slows down over the
    // minute (seen on CI: the third run 3x the first) then slows all three
    // alike instead of reading as a regression of whichever ran last.
    let client = txlab_cli::commands::run::admin_client().unwrap();
    for repetition in 0..4 {
        let order: [usize; 3] = if repetition % 2 == 0 { [0, 1, 2] } else { [1, 0, 2] };
        for which in order {
            let summary = txlab_cli::commands::run::run_cell(
                &mut platform,
                &plans[which],
                &runs[which],
                &client,
                repetition,
                &plans[which].cells[repetition],
            )
            .await
            .unwrap();
            txlab_cli::commands::run::print_cell_line(repetition, 4, &summary);
        }
    }
    platform.shutdown().await.unwrap();

    let same_out = dir.join("same");
    assert_eq!(compare(&runs[0], &runs[1], &same_out).await, ExitCode::SUCCESS);
    let md = std::fs::read_to_string(same_out.join("comparison.md")).unwrap();
    assert!(md.contains("**no regression**"), "{md}");

    let slowed_out = dir.join("slowed");
    assert_eq!(
        compare(&runs[0], &runs[2], &slowed_out).await,
        ExitCode::from(txlab_cli::commands::compare::EXIT_REGRESSION)
    );
    let csv = std::fs::read_to_string(slowed_out.join("comparison.csv")).unwrap();
    let p50 = csv
        .lines()
        .find(|l| l.contains(",decided_p50_ms,"))
        .expect("a decided p50 row");
    assert!(p50.ends_with(",regression"), "{p50}");

    report_groups_the_repetitions(&runs[0].root, &dir.join("reports")).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `txlab report` of a real run of four repetitions: summary.csv holds
/// one row for them, with the orders of all four in its percentiles.
async fn report_groups_the_repetitions(run: &std::path::Path, reports: &std::path::Path) {
    let out = common::report(run, reports).await;
    let mut reader = csv::Reader::from_path(out.join("summary.csv")).unwrap();
    let rows: Vec<std::collections::HashMap<String, String>> =
        reader.deserialize().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    let reps = txlab_cli::results::read_summaries(run).unwrap();
    assert_eq!(row["repetitions"], "4");
    assert_eq!(row["sent"], reps.iter().map(|s| s.sent).sum::<u64>().to_string());
    // The pooled median is the median of all four repetitions' orders.
    let mut all =
        txlab_cli::results::read_histogram(&run.join("cells").join(&reps[0].cell).join("decided.hdr"))
            .unwrap();
    for s in &reps[1..] {
        all.add(
            txlab_cli::results::read_histogram(&run.join("cells").join(&s.cell).join("decided.hdr")).unwrap(),
        )
        .unwrap();
    }
    let p50: f64 = row["decided_p50_ms"].parse().unwrap();
    assert!(
        (p50 - all.value_at_quantile(0.5) as f64 / 1000.0).abs() < 0.001,
        "{p50} vs {}",
        all.value_at_quantile(0.5)
    );
    let worst = reps.iter().map(|s| s.decided_ms.p99).fold(0.0, f64::max);
    assert_eq!(row["decided_p99_ms_worst_repetition"], format!("{worst:.3}"));
    for f in ["repetitions.csv", "summary.md", "memory.png"] {
        assert!(out.join(f).is_file(), "the report lacks {f}");
    }
}
