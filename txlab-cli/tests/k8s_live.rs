//! The cluster operations against a real API server: run by the nightly
//! workflow on its kind cluster (`cargo test --test k8s_live -- --ignored`),
//! skipped elsewhere, since no cluster can run on the development machines.

use std::time::Duration;

use serde_json::json;
use txlab_cli::platform::k8s::cluster::{connect, Cluster};
use txlab_cli::platform::k8s::RunScope;

#[tokio::test]
#[ignore = "needs cluster"]
async fn a_runs_namespace_is_applied_twice_the_same_and_torn_down_by_its_label() {
    let client = connect().await.unwrap();
    let scope = RunScope::of(&format!("live-{}", std::process::id()));
    let cluster = Cluster::new(client.clone(), scope.clone());
    let config = json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "probe", "labels": {"txlab.dev/run": scope.run}},
                        "data": {"a": "1"}});
    // Server-side apply is idempotent: the second apply changes nothing.
    for _ in 0..2 {
        cluster
            .apply(&[scope.namespace_object(), config.clone()])
            .await
            .unwrap();
    }
    let maps: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client.clone(), &scope.namespace);
    let got = maps.get("probe").await.unwrap();
    assert_eq!(got.data.unwrap()["a"], "1");
    let managers: Vec<String> = got
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|f| f.manager)
        .collect();
    assert_eq!(managers, ["txlab"]);
    // Nothing to roll out: the wait returns at once.
    cluster.wait_rollout(Duration::from_secs(30)).await.unwrap();
    assert!(cluster.chaos_status().await.unwrap_or_default().is_empty());
    cluster.teardown().await.unwrap();
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client);
    let gone = namespaces.get_opt(&scope.namespace).await.unwrap();
    assert!(
        gone.is_none_or(|ns| ns.metadata.deletion_timestamp.is_some()),
        "the namespace is deleted or terminating"
    );
}
