//! Load shedding (issue 8): past `MAX_OPEN_ORDERS` open orders the order
//! service refuses new ones at once with 503 `overloaded` and a reason, the
//! orders it took still finish cleanly, and it takes orders again as soon
//! as they do.

mod common;

use std::time::Duration;

use serde_json::{json, Value};
use txlab_api::{Role, TxMode};
use txlab_cli::platform::Platform;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_beyond_the_open_limit_are_shed_with_a_reason() {
    // A test binary of its own: the services inherit this environment.
    std::env::set_var("MAX_OPEN_ORDERS", "5");
    let (platform, e, dir) = common::deployed_with("overload", TxMode::SagaOrch).await;
    let plan = common::plan("smoke.yaml");
    let http = common::client();
    common::reset_and_seed(&http, &e, &plan.seed.seed).await;
    let order_url = e.url(Role::Order).unwrap().to_string();
    let body = json!({"customer": "c00001", "items": [{"sku": "sku-0001", "qty": 1, "unit_price": 100}], "slot": "slot-001"});
    // Every payment call stalls 1 s, so the orders taken stay open meanwhile.
    let (mut taken, mut shed) = (Vec::new(), 0);
    for _ in 0..12 {
        let resp = http
            .post(format!("{order_url}/orders"))
            .header("x-txlab-fault", "payment.before_db=delay:1000")
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let reply: Value = resp.json().await.unwrap();
        match status {
            202 => taken.push(reply["id"].as_str().unwrap().to_string()),
            503 => {
                assert_eq!(reply["error"], "overloaded", "{reply}");
                assert!(reply["message"].as_str().unwrap().contains("(5)"), "{reply}");
                shed += 1;
            }
            other => panic!("unexpected {other}: {reply}"),
        }
    }
    // The count is refreshed from the database every 200 ms; one order may
    // slip in between a count and the orders admitted since.
    assert!((5..=6).contains(&taken.len()), "took {}", taken.len());
    assert_eq!(taken.len() + shed, 12);
    for id in &taken {
        let v = common::wait_decided(&http, &order_url, id).await;
        assert_eq!(v["state"], "confirmed", "{v}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let id = common::create_order(&http, &e, &body, None).await;
    assert_eq!(
        common::wait_decided(&http, &order_url, &id).await["state"],
        "confirmed"
    );
    let (_, unsettled, report) =
        common::settle_and_audit(&e, TxMode::SagaOrch, &plan.seed.seed, Duration::from_secs(10)).await;
    assert_eq!((unsettled, report.violations), (vec![], vec![]));
    platform.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
