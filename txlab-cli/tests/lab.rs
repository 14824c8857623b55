//! `txlab up`, `txlab chaos on/off/status` and `txlab down` as a user runs
//! them: the real binary, a lab in the background, orders sent to it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use txlab_cli::lab::state::alive;
use txlab_cli::lab::LabState;

fn txlab(args: &[&str], state_dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_txlab"))
        .args(args)
        .arg("--state-dir")
        .arg(state_dir)
        .current_dir(common::repo())
        .output()
        .expect("txlab runs")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stops the lab even when an assertion fails midway, by its pid.
struct Up {
    dir: PathBuf,
    pid: u32,
}

impl Drop for Up {
    fn drop(&mut self) {
        if alive(self.pid) {
            let _ = txlab(&["down"], &self.dir);
        }
    }
}

/// The time from sending an order to seeing it decided.
async fn decided_ms(client: &reqwest::Client, order_url: &str, customer: &str) -> f64 {
    let started = Instant::now();
    let body = json!({"customer": customer, "items": [{"sku": "sku-0001", "qty": 1, "unit_price": 100}], "slot": "slot-001"});
    let id = common::create_order_at(client, order_url, &body, None).await;
    let order = common::wait_decided(client, order_url, &id).await;
    assert_eq!(order["state"], "confirmed", "{order}");
    started.elapsed().as_secs_f64() * 1e3
}

async fn median_decided_ms(client: &reqwest::Client, order_url: &str, tag: &str) -> f64 {
    let mut v = Vec::new();
    for i in 0..15 {
        v.push(decided_ms(client, order_url, &format!("c{:05}", tag.len() * 20 + i)).await);
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lab_kept_up_takes_chaos_on_and_off_and_comes_down_clean() {
    let dir = common::temp_dir("lab-up");
    let state_dir = dir.join("state");
    let out = ok(&txlab(&["up"], &state_dir));
    assert!(out.contains("lab up"), "{out}");
    let lab = LabState::find(&state_dir).unwrap().expect("state written");
    let _up = Up {
        dir: state_dir.clone(),
        pid: lab.pid,
    };

    let again = txlab(&["up"], &state_dir);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already up"));

    let client = common::client();
    let before = median_decided_ms(&client, &lab.order_url, "a").await;
    // latency-10ms's own delay, five times over: far above how much a
    // debug build's medians wander between batches (up to about 10 ms).
    let slow = dir.join("slow-payment.yaml");
    let text = std::fs::read_to_string(common::repo().join("chaos/latency-10ms.yaml"))
        .unwrap()
        .replace("latency: 10ms", "latency: 50ms")
        .replace("name: latency-10ms", "name: slow-payment");
    std::fs::write(&slow, text).unwrap();
    assert!(ok(&txlab(&["chaos", "on", slow.to_str().unwrap()], &state_dir)).contains("on: slow-payment"));
    let status = ok(&txlab(&["chaos", "status"], &state_dir));
    assert!(status.contains("chaos on: slow-payment"), "{status}");
    assert!(status.contains("order→payment"), "{status}");
    let during = median_decided_ms(&client, &lab.order_url, "bb").await;
    assert!(
        during - before > 70.0,
        "50 ms each way on the one payment call: median {before:.1} → {during:.1} ms"
    );

    // A bad file is refused before the lab is asked, naming line and field.
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: chaos-mesh.org/v1alpha1\nkind: NetworkChaos\nmetadata: {name: x}\nspec:\n  action: delay\n  mode: all\n  selector: {labelSelectors: {app: order}}\n  delay: {latency: 1ms, reorder: {reorder: \"1\"}}\n",
    )
    .unwrap();
    let refused = txlab(&["chaos", "on", bad.to_str().unwrap()], &state_dir);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("bad.yaml:8:") && err.contains("spec.delay.reorder"),
        "{err}"
    );
    // The control API answers bad input with a 4xx and a JSON reason.
    let garbage = client
        .post(format!("{}/chaos", lab.control))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 400);
    assert!(garbage.json::<Value>().await.unwrap()["error"].is_string());
    let unknown = txlab(&["chaos", "off", "nothing-like-this"], &state_dir);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no chaos named nothing-like-this is on"));

    assert!(ok(&txlab(&["chaos", "off"], &state_dir)).contains("off: slow-payment"));
    assert!(ok(&txlab(&["chaos", "status"], &state_dir)).contains("chaos on: none"));
    let after = median_decided_ms(&client, &lab.order_url, "ccc").await;
    eprintln!("median decided: {before:.1} ms, {during:.1} with slow-payment, {after:.1} after");
    assert!(
        after < before + 20.0 && during - after > 70.0,
        "off again: median {before:.1}, {during:.1} with the fault, then {after:.1} ms"
    );

    // A pod kill through the same command: restarted, and counted.
    ok(&txlab(&["chaos", "on", "chaos/kill-inventory.yaml"], &state_dir));
    assert!(ok(&txlab(&["chaos", "status"], &state_dir)).contains("restarts: inventory 1"));
    decided_ms(&client, &lab.order_url, "c00150").await;

    assert!(ok(&txlab(&["down"], &state_dir)).contains("lab down"));
    assert!(!alive(lab.pid), "the lab process is gone");
    assert!(LabState::find(&state_dir).unwrap().is_none());
    let services_gone = tokio::time::timeout(Duration::from_secs(5), async {
        while reqwest::get(format!("{}/health", lab.services["order"]))
            .await
            .is_ok()
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(services_gone.is_ok(), "the services stopped with the lab");
    assert!(ok(&txlab(&["down"], &state_dir)).contains("no lab is up"));
    std::fs::remove_dir_all(&dir).unwrap();
}
