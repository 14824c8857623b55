//! Helpers shared by the integration tests. They start the real local
//! platform (PostgreSQL and tansu, by the lab's own code), never mocks.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::Connection;
use txlab_cli::audit::{check, quiesce, AuditReport, Reader, Snapshots};
use txlab_cli::platform::local::{LocalOptions, LocalPlatform};
use txlab_cli::platform::{Endpoints, Platform};
use txlab_cli::spec::Plan;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A fresh directory under the system temp dir, named for the test.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("txlab-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The local platform with the services deployed for saga_orch.
pub async fn deployed(name: &str) -> (LocalPlatform, Endpoints, PathBuf) {
    deployed_with(name, txlab_api::TxMode::SagaOrch).await
}

/// The local platform with the services deployed for `method`.
pub async fn deployed_with(name: &str, method: txlab_api::TxMode) -> (LocalPlatform, Endpoints, PathBuf) {
    let dir = temp_dir(name);
    let mut p = LocalPlatform::start(LocalOptions {
        log_dir: dir.join("logs"),
        ..Default::default()
    })
    .await
    .expect("local platform starts (needs PostgreSQL and tansu: run `make setup`)");
    let e = p.deploy(method, 1).await.expect("services start");
    (p, e, dir)
}

/// The platform deployed for `method`, reset and seeded with the smoke
/// profile's data, and a client for it.
pub async fn seeded_with(
    name: &str,
    method: txlab_api::TxMode,
) -> (LocalPlatform, Endpoints, PathBuf, reqwest::Client) {
    let (platform, e, dir) = deployed_with(name, method).await;
    let client = client();
    reset_and_seed(&client, &e, &plan("smoke.yaml").seed.seed).await;
    (platform, e, dir, client)
}

/// Resets every service and seeds it with `seed`.
pub async fn reset_and_seed(client: &reqwest::Client, e: &Endpoints, seed: &txlab_api::admin::Seed) {
    // One new epoch for all services: events carry it from one to the next.
    let epoch = serde_json::json!({ "epoch": uuid::Uuid::new_v4().to_string() });
    for role in txlab_api::Role::ALL {
        let url = e.url(role).unwrap();
        assert!(client
            .post(format!("{url}/admin/reset"))
            .json(&epoch)
            .send()
            .await
            .unwrap()
            .status()
            .is_success());
        let r = client
            .post(format!("{url}/admin/seed"))
            .json(seed)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{role} seed: {}", r.status());
    }
}

/// Long-polls an order until it is terminal, riding out a restarting order
/// service (connection errors are retried for up to a minute).
pub async fn wait_decided(client: &reqwest::Client, order_url: &str, id: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = client
            .get(format!("{order_url}/orders/{id}?wait_ms=5000"))
            .send()
            .await;
        if let Ok(r) = r {
            if let Ok(v) = r.json::<serde_json::Value>().await {
                if matches!(v["state"].as_str(), Some("confirmed" | "rejected" | "cancelled")) {
                    return v;
                }
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "order {id} was not decided within a minute"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A plan from the repository's profiles and scenarios.
pub fn plan(profile: &str) -> Plan {
    Plan::load(&repo().join("profiles").join(profile), &repo().join("scenarios")).expect("profile is valid")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// GETs `url` and decodes its JSON reply.
pub async fn get_json(client: &reqwest::Client, url: &str) -> serde_json::Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// Processes whose parent is `pid`, from /proc.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // The command name may hold spaces; the fields after its closing paren are fixed.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let ppid = rest.split_whitespace().nth(1).and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// `pid` and all its descendants, with their command lines.
pub fn tree(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let cmd = std::fs::read(format!("/proc/{p}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        out.push((p, cmd));
        todo.extend(children_of(p));
    }
    out
}

/// Whether a process with this pid and command line still runs.
pub fn alive(pid: u32, cmd: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " ") == cmd)
        .unwrap_or(false)
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
}

/// Waits (up to `timeout`) until the lab has settled, then audits what it
/// holds as a cell of `method` with no client view. Returns the rows read,
/// what was still moving (empty: settled) and the audit.
pub async fn settle_and_audit(
    e: &Endpoints,
    method: txlab_api::TxMode,
    seed: &txlab_api::admin::Seed,
    timeout: Duration,
) -> (Snapshots, Vec<String>, AuditReport) {
    let reader = Reader::connect(e)
        .await
        .expect("the audit reaches every database");
    let (snaps, _, unsettled) = quiesce(&reader, method, timeout)
        .await
        .expect("the audit reads every database");
    let report = check(seed, &snaps, method, None);
    (snaps, unsettled, report)
}

/// A direct connection to `role`'s database, to inspect or tamper with it.
pub async fn db(e: &Endpoints, role: txlab_api::Role) -> sqlx::PgConnection {
    sqlx::PgConnection::connect(e.database(role).unwrap())
        .await
        .unwrap()
}

/// `POST /orders` with an optional `X-Txlab-Fault` header; returns the new order's id.
pub async fn create_order(
    client: &reqwest::Client,
    e: &Endpoints,
    order: &serde_json::Value,
    fault: Option<&str>,
) -> String {
    create_order_at(client, e.url(txlab_api::Role::Order).unwrap(), order, fault).await
}

/// Creates an order at the order service reached at `order_url`; its id.
pub async fn create_order_at(
    client: &reqwest::Client,
    order_url: &str,
    order: &serde_json::Value,
    fault: Option<&str>,
) -> String {
    let mut req = client.post(format!("{order_url}/orders")).json(order);
    if let Some(f) = fault {
        req = req.header(txlab_api::fault::FAULT_HEADER, f);
    }
    let created: serde_json::Value = req.send().await.unwrap().json().await.unwrap();
    created["id"]
        .as_str()
        .expect("the order was accepted")
        .to_string()
}

/// The Prometheus text `role`'s service exposes at `/metrics`.
pub async fn metrics(client: &reqwest::Client, e: &Endpoints, role: txlab_api::Role) -> String {
    let url = format!("{}/metrics", e.url(role).unwrap());
    client.get(url).send().await.unwrap().text().await.unwrap()
}

/// The sum of a service's counters named `metric` whose labels (the text
/// between the braces) pass `wanted`, from its /metrics text.
pub fn counter_sum(metrics_text: &str, metric: &str, wanted: impl Fn(&str) -> bool) -> f64 {
    metrics_text
        .lines()
        .filter_map(|l| {
            let (labels, value) = l.strip_prefix(metric)?.strip_prefix('{')?.split_once("} ")?;
            wanted(labels).then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// The local platform with every link through the proxy (chaos, replicas).
pub async fn proxied_lab(name: &str) -> (txlab_cli::platform::local::LocalPlatform, PathBuf) {
    let dir = temp_dir(name);
    let platform =
        txlab_cli::platform::local::LocalPlatform::start(txlab_cli::platform::local::LocalOptions {
            log_dir: dir.join("logs"),
            proxy: true,
            ..Default::default()
        })
        .await
        .expect("local platform starts (needs PostgreSQL and tansu: run `make setup`)");
    (platform, dir)
}

/// `txlab report <run> --reports <reports>` through the CLI entry, which
/// must succeed; returns the report's directory.
pub async fn report(run: &Path, reports: &Path) -> PathBuf {
    let cli = <txlab_cli::Cli as clap::Parser>::parse_from([
        "txlab",
        "report",
        run.to_str().unwrap(),
        "--reports",
        reports.to_str().unwrap(),
    ]);
    assert_eq!(txlab_cli::main(cli).await, std::process::ExitCode::SUCCESS);
    reports.join(run.file_name().unwrap())
}
