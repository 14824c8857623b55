//! `txlab bench` end to end, on its cheapest parts: the durable commits a
//! saga_orch checkout costs, counted from PostgreSQL's write-ahead log, and
//! the driver's figures against the stub next to wrk (when wrk is there).

mod common;

use std::process::Command;

use serde_json::Value;

fn bench(name: &str, args: &[&str]) -> Value {
    let results = common::temp_dir(name);
    let out = Command::new(env!("CARGO_BIN_EXE_txlab"))
        .arg("bench")
        .arg("--profile")
        .arg(common::repo().join("profiles/bench.yaml"))
        .arg("--results")
        .arg(&results)
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let run = std::fs::read_dir(&results)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let report: Value = serde_json::from_slice(&std::fs::read(run.join("bench.json")).unwrap()).unwrap();
    std::fs::remove_dir_all(&results).unwrap();
    report
}

#[test]
fn a_saga_checkout_costs_its_commits_and_they_are_counted() {
    let report = bench(
        "bench-commits",
        &[
            "--methods",
            "saga_orch",
            "--parts",
            "commits",
            "--commits-rate",
            "50",
        ],
    );
    let c = &report["methods"][0]["commits"];
    assert_eq!(c["orders"], 400, "{c}");
    // Order with intent, three participants, two results with the next
    // intent, the verdict, the notification: 8, plus the relays' and
    // consumers' bookkeeping. Fewer than 8 would mean commits went
    // uncounted (or unwritten); many more, that steps cost extra commits.
    let per = c["per_checkout"].as_f64().unwrap();
    assert!((8.0..12.0).contains(&per), "{per} commits per checkout: {c}");
    assert_eq!(
        c["by_type"].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["COMMIT"]
    );
    // Read-only transactions come on top, in every service's database.
    assert!(c["all_per_checkout"].as_f64().unwrap() > per, "{c}");
    assert!(report["startup"]["infrastructure_s"].as_f64().unwrap() > 0.0);
}
