//! The Prometheus client against a real Prometheus (Debian's `prometheus`)
//! scraping the real services of the local platform: what it reads back is
//! what the services expose.

mod common;

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use txlab_api::Role;
use txlab_cli::metrics::prometheus::Prometheus;
use txlab_cli::platform::Platform as _;

/// A Prometheus process of the test's, killed (its group) when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        // The process group this test started, by its id (its leader's pid).
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

fn prometheus_binary() -> PathBuf {
    std::env::var_os("TXLAB_PROMETHEUS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths)
                .map(|d| d.join("prometheus"))
                .find(|p| p.is_file())
        })
        .expect("prometheus for this test: Debian's `prometheus` package (make setup installs it), or TXLAB_PROMETHEUS")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts Prometheus scraping every service of `targets` each second, as
/// a ServiceMonitor would, with the pods' namespace as a label.
fn start(dir: &Path, targets: &[String]) -> Server {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n  - job_name: txlab\n    static_configs:\n      - targets: {targets:?}\n        \
             labels: {{namespace: txlab-test}}\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new(prometheus_binary())
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap();
    Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// Polls `check` every 500 ms until it returns Some, for at most `limit`.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reads_what_the_services_expose() {
    let (platform, e, dir) = common::deployed("prometheus").await;
    let client = common::client();
    let plan = common::plan("smoke.yaml");
    common::reset_and_seed(&client, &e, &plan.seed.seed).await;
    let targets: Vec<String> = Role::ALL
        .iter()
        .map(|r| e.url(*r).unwrap().trim_start_matches("http://").to_string())
        .collect();
    let server = start(&dir, &targets);
    let prom = Prometheus::new(&server.url);

    // Every service scraped.
    eventually(Duration::from_secs(30), "all 5 services up", || async {
        let up = prom.query("up{job=\"txlab\"}", None).await.ok()?;
        (up.len() == 5 && up.iter().all(|s| s.value == 1.0)).then_some(())
    })
    .await;
    let before = SystemTime::now();
    for _ in 0..3 {
        let order = serde_json::json!({"customer": "c00001", "items": [{"sku": "sku-0001", "qty": 1, "unit_price": 100}], "slot": "slot-001"});
        let id = common::create_order(&client, &e, &order, None).await;
        common::wait_decided(&client, e.url(Role::Order).unwrap(), &id).await;
    }
    // Once the services are quiet and scraped again (notifications follow
    // the decisions), the sums per kind are the services' own counters.
    let (exposed, summed) = eventually(Duration::from_secs(30), "Prometheus has the counters", || async {
        let exposed = txlab_cli::metrics::scrape(&client, &e).await;
        let summed = prom.sum_by("txlab_events_total", "kind", None).await.ok()?;
        (summed == exposed).then_some((exposed, summed))
    })
    .await;
    assert!(summed.get("outcome").copied().unwrap_or(0.0) >= 3.0, "{summed:?}");
    // Over the orders' time, from nothing: the same figures.
    let over = prom
        .events("txlab-test", before, SystemTime::now())
        .await
        .unwrap();
    assert_eq!(over, exposed);
    assert!(prom
        .events("elsewhere", before, SystemTime::now())
        .await
        .unwrap()
        .is_empty());

    // The cAdvisor queries are valid PromQL (their series exist only in a
    // cluster: here they find nothing).
    assert!(prom
        .pod_usage("txlab-test", before, SystemTime::now())
        .await
        .unwrap()
        .is_empty());
    // A refusal is named with Prometheus's own words.
    let err = format!("{:#}", prom.query("sum(", None).await.unwrap_err());
    assert!(
        err.contains("Prometheus refused `sum(`") && err.contains("bad_data"),
        "{err}"
    );

    drop(server);
    platform.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
