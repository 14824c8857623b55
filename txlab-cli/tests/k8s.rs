//! The Kubernetes platform without a cluster: the chart rendered by a real
//! helm into objects that pass the typed checks, and the cluster operations
//! against a scripted API server that checks every request's method, path,
//! field manager and body, and answers with successes and failures.

mod common;

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{json, Value};
use txlab_api::TxMode;
use txlab_cli::platform::k8s::chart::{self, Chart, DeploymentValues};
use txlab_cli::platform::k8s::cluster::Cluster;
use txlab_cli::platform::k8s::{checks, RunObjects, RunScope};

fn chart(values: &[&str]) -> Chart {
    Chart {
        dir: common::repo().join("charts/txlab"),
        values: values
            .iter()
            .map(|v| common::repo().join("charts/txlab/values-experiments").join(v))
            .collect(),
        helm: chart::find_helm().expect("helm for the chart tests: scripts/setup.sh installs it"),
    }
}

fn render(c: &Chart, method: TxMode, replicas: u32) -> Vec<Value> {
    c.render("txlab-test", &DeploymentValues::new("test-run", method, replicas))
        .unwrap()
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

#[test]
fn every_method_and_experiment_renders_objects_that_pass_the_typed_checks() {
    for method in TxMode::ALL {
        for replicas in [1, 3] {
            let objects = render(&chart(&[]), method, replicas);
            assert_eq!(
                checks::problems(&objects),
                Vec::<String>::new(),
                "{method} x{replicas}"
            );
            let sets = of_kind(&objects, "StatefulSet");
            assert_eq!(sets.len(), 5, "a StatefulSet per role");
            for s in sets {
                assert_eq!(s["spec"]["replicas"], replicas);
                assert_eq!(s["metadata"]["namespace"], "txlab-test");
                assert_eq!(s["metadata"]["labels"][chart::RUN_LABEL], "test-run");
            }
            let config = of_kind(&objects, "ConfigMap")[0];
            assert_eq!(config["data"]["TX_MODE"], method.as_str());
            assert_eq!(config["data"]["REPLICA_COUNT"], replicas.to_string());
        }
    }
    for experiment in ["scale-3.yaml", "chaos-latency.yaml", "twopc.yaml", "outbox.yaml"] {
        let objects = chart(&[experiment])
            .render("txlab-test", &DeploymentValues::new("r", TxMode::Tcc, 1))
            .unwrap();
        assert_eq!(checks::problems(&objects), Vec::<String>::new(), "{experiment}");
    }
    // txlab's values come last: the method file's txMode does not win.
    let objects = render(&chart(&["outbox.yaml"]), TxMode::Twopc, 1);
    assert_eq!(of_kind(&objects, "ConfigMap")[0]["data"]["TX_MODE"], "twopc");
}

#[test]
fn only_the_labs_calls_are_let_in() {
    let objects = render(&chart(&[]), TxMode::Twopc, 1);
    let callers = |role: &str| -> Vec<String> {
        let policy = of_kind(&objects, "NetworkPolicy")
            .into_iter()
            .find(|p| p["metadata"]["name"] == format!("txlab-{role}"))
            .unwrap();
        policy["spec"]["ingress"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|rule| rule["from"].as_array().unwrap().iter())
            .map(|peer| {
                let pods = &peer["podSelector"]["matchLabels"];
                let who = pods
                    .get("app.kubernetes.io/component")
                    .or(pods.get("app"))
                    .and_then(Value::as_str);
                match (who, peer.get("namespaceSelector")) {
                    (Some(w), None) => w.to_string(),
                    (Some(w), Some(_)) => format!("{w} (any namespace)"),
                    (None, Some(ns)) => {
                        format!("namespace {}", ns["matchLabels"]["kubernetes.io/metadata.name"])
                    }
                    (None, None) => panic!("a peer that lets anyone in: {peer}"),
                }
            })
            .collect()
    };
    let lab = ["namespace \"monitoring\"", "load (any namespace)"];
    assert_eq!(
        callers("order"),
        [&lab[..], &["payment", "inventory", "shipping"]].concat()
    );
    assert_eq!(callers("payment"), [&lab[..], &["order"]].concat());
    assert_eq!(callers("notification"), lab);
}

#[test]
fn bad_values_are_refused_by_the_chart_or_by_the_checks() {
    let dir = common::temp_dir("k8s-values");
    let file = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let with = |values: std::path::PathBuf| Chart {
        values: vec![values],
        ..chart(&[])
    };
    // Without limits the workload is not hardened: the checks say so.
    let objects = with(file("no-limits.yaml", "resources:\n  limits: null\n"))
        .render("n", &DeploymentValues::new("r", TxMode::Tcc, 1))
        .unwrap();
    let p = checks::problems(&objects);
    assert_eq!(p.len(), 10, "cpu and memory limit of 5 containers: {p:?}");
    assert!(p[0].contains("no cpu limit"), "{p:?}");
    // Autoscaling a role that splits partitions by pod count: the chart refuses.
    let err = with(file(
        "hpa.yaml",
        "autoscaling: {enabled: true, roles: [notification]}\n",
    ))
    .render("n", &DeploymentValues::new("r", TxMode::Tcc, 1))
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("notification takes events"),
        "{err:#}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn scrapes_faults_and_autoscaling_render_as_the_services_need() {
    let dir = common::temp_dir("k8s-options");
    let values = dir.join("v.yaml");
    std::fs::write(
        &values,
        "serviceMonitor: {enabled: true}\nfault: {mode: always, point: before_db}\n\
         autoscaling: {enabled: true, roles: [payment]}\n",
    )
    .unwrap();
    let objects = Chart {
        values: vec![values],
        ..chart(&[])
    }
    .render("n", &DeploymentValues::new("r", TxMode::SagaOrch, 2))
    .unwrap();
    assert_eq!(checks::problems(&objects), Vec::<String>::new());
    // Each pod scraped once: the monitor's label is on one Service per role.
    let monitor = of_kind(&objects, "ServiceMonitor")[0];
    let scrape = &monitor["spec"]["selector"]["matchLabels"]["txlab.dev/scrape"];
    assert_eq!(scrape, "true");
    let scraped: Vec<&str> = of_kind(&objects, "Service")
        .into_iter()
        .filter(|s| &s["metadata"]["labels"]["txlab.dev/scrape"] == scrape)
        .map(|s| s["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        scraped,
        [
            "txlab-order",
            "txlab-payment",
            "txlab-inventory",
            "txlab-shipping",
            "txlab-notification"
        ]
    );
    // Only the fault values set are passed on (an empty one would not parse).
    let data = &of_kind(&objects, "ConfigMap")[0]["data"];
    assert_eq!(
        (&data["FAULT_MODE"], &data["FAULT_POINT"]),
        (&json!("always"), &json!("before_db"))
    );
    assert!(
        data.get("FAULT_PERCENT").is_none() && data.get("FAULT_ACTION").is_none(),
        "{data}"
    );
    // The autoscaled role's pods have no index; the others do.
    let has_index = |name: &str| {
        let set = of_kind(&objects, "StatefulSet")
            .into_iter()
            .find(|s| s["metadata"]["name"] == name)
            .unwrap();
        set["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "REPLICA_INDEX")
    };
    assert!(!has_index("txlab-payment") && has_index("txlab-order"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_dry_run_of_a_profile_lists_each_deployment_and_chaos_object_once() {
    let plan = common::plan("chaos.yaml");
    let objects = RunObjects::of(&plan, &chart(&[]), &RunScope::of("20261201-000000-chaos")).unwrap();
    assert_eq!(objects.deployments.len(), 10, "5 methods x replicas 1 and 3");
    assert_eq!(objects.deployments[0].cells.len(), 6, "one per chaos entry");
    let names: Vec<&str> = objects
        .chaos
        .iter()
        .map(|(o, _)| o["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "latency-10ms",
            "latency-50ms-jitter",
            "loss-1pct",
            "kill-inventory",
            "order-replica-down"
        ]
    );
    for (o, _) in &objects.chaos {
        assert_eq!(o["metadata"]["namespace"], "txlab-20261201-000000-chaos");
    }
    let yaml = objects.to_yaml().unwrap();
    let back = chart::parse_documents(&yaml).unwrap();
    assert_eq!(back, objects.all(), "the printed stream is the objects applied");
}

// ---- the cluster operations against a scripted API server ----

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn cluster() -> (Cluster, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    (Cluster::new(client, RunScope::of("run-1")), handle)
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// Takes the next request, checks its method and path (and query, when
/// `query` is given), answers `answer` with `code`; returns the body sent.
async fn expect(
    handle: &mut Handle,
    method: Method,
    path: &str,
    query: Option<&str>,
    code: u16,
    answer: Value,
) -> Value {
    let (request, respond) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("no request came; expected {method} {path}"))
        .expect("the client is gone");
    assert_eq!(request.method(), method, "{}", request.uri());
    assert_eq!(request.uri().path(), path);
    if let Some(q) = query {
        let pairs = |q: &str| {
            let mut p: Vec<String> = q.split('&').filter(|p| !p.is_empty()).map(String::from).collect();
            p.sort();
            p
        };
        assert_eq!(
            pairs(request.uri().query().unwrap_or_default()),
            pairs(q),
            "{}",
            request.uri()
        );
    }
    let is_apply = request
        .headers()
        .get("content-type")
        .is_some_and(|v| v == "application/apply-patch+yaml");
    assert_eq!(
        is_apply,
        method == Method::PATCH,
        "server-side apply, and only for patches"
    );
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    respond.send_response(
        Response::builder()
            .status(StatusCode::from_u16(code).unwrap())
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&answer).unwrap()))
            .unwrap(),
    );
    body
}

/// What the operation returned; it must end within 5 s of its last
/// expected request (an unexpected extra request would wait forever).
async fn finish<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the operation made a request that was not expected")
        .unwrap()
}

const APPLY: Option<&str> = Some("fieldManager=txlab&force=true");

#[tokio::test]
async fn deploy_applies_each_object_server_side_as_txlab() {
    let (cluster, mut api) = cluster();
    let mut objects = vec![cluster.scope.namespace_object()];
    objects.extend(render(&chart(&[]), TxMode::SagaOrch, 1).into_iter().map(|mut o| {
        o["metadata"]["namespace"] = json!("txlab-run-1");
        o
    }));
    let expected = objects.clone();
    let task = tokio::spawn(async move { cluster.apply(&objects).await });
    for o in &expected {
        let kind = o["kind"].as_str().unwrap();
        let name = o["metadata"]["name"].as_str().unwrap();
        let path = match kind {
            "Namespace" => format!("/api/v1/namespaces/{name}"),
            "ConfigMap" | "Service" => {
                format!("/api/v1/namespaces/txlab-run-1/{}s/{name}", kind.to_lowercase())
            }
            "StatefulSet" => format!("/apis/apps/v1/namespaces/txlab-run-1/statefulsets/{name}"),
            "NetworkPolicy" => {
                format!("/apis/networking.k8s.io/v1/namespaces/txlab-run-1/networkpolicies/{name}")
            }
            other => panic!("unexpected kind {other}"),
        };
        let body = expect(&mut api, Method::PATCH, &path, APPLY, 200, o.clone()).await;
        assert_eq!(&body, o, "the object is sent as rendered");
    }
    finish(task).await.unwrap();
}

#[tokio::test]
async fn scaling_is_the_same_apply_with_the_new_count() {
    let (cluster, mut api) = cluster();
    let three: Vec<Value> = of_kind(&render(&chart(&[]), TxMode::Tcc, 3), "StatefulSet")
        .into_iter()
        .take(1)
        .cloned()
        .collect();
    let task = tokio::spawn(async move { cluster.apply(&three).await });
    let body = expect(
        &mut api,
        Method::PATCH,
        "/apis/apps/v1/namespaces/txlab-run-1/statefulsets/txlab-order",
        APPLY,
        200,
        json!({}),
    )
    .await;
    assert_eq!(body["spec"]["replicas"], 3);
    assert_eq!(
        body["metadata"]["namespace"], "txlab-run-1",
        "placed in the run's namespace"
    );
    assert_eq!(body["spec"]["template"]["metadata"]["labels"]["app"], "order");
    finish(task).await.unwrap();
}

#[tokio::test]
async fn refusals_name_the_object_and_what_the_server_said() {
    for (code, reason, words) in [
        (409, "Conflict", "conflict"),
        (
            403,
            "Forbidden",
            "forbidden: the credentials txlab uses may not do this",
        ),
    ] {
        let (cluster, mut api) = cluster();
        let ns = cluster.scope.namespace_object();
        let task = tokio::spawn(async move { cluster.apply(&[ns]).await });
        expect(
            &mut api,
            Method::PATCH,
            "/api/v1/namespaces/txlab-run-1",
            APPLY,
            code,
            status(code, reason, "namespace txlab-run-1 is terminating"),
        )
        .await;
        let err = format!("{:#}", finish(task).await.unwrap_err());
        assert!(
            err.contains("applying Namespace txlab-run-1")
                && err.contains(words)
                && err.contains("is terminating")
                && err.contains(&format!("HTTP {code}")),
            "{err}"
        );
    }
}

fn statefulsets(ready: i32) -> Value {
    json!({"kind": "StatefulSetList", "apiVersion": "apps/v1", "metadata": {}, "items": [
        {"metadata": {"name": "txlab-order", "generation": 2},
         "spec": {"replicas": 3, "serviceName": "s", "selector": {}, "template": {}},
         "status": {"replicas": 3, "observedGeneration": 2, "readyReplicas": ready, "updatedReplicas": 3}}]})
}

const BY_RUN: Option<&str> = Some("labelSelector=txlab.dev%2Frun%3Drun-1");

#[tokio::test]
async fn a_rollout_is_waited_for_and_a_stuck_one_named_at_its_timeout() {
    let (cluster, mut api) = cluster();
    let waiting = cluster.clone();
    let task = tokio::spawn(async move { waiting.wait_rollout(Duration::from_secs(10)).await });
    let path = "/apis/apps/v1/namespaces/txlab-run-1/statefulsets";
    expect(&mut api, Method::GET, path, BY_RUN, 200, statefulsets(1)).await;
    expect(&mut api, Method::GET, path, BY_RUN, 200, statefulsets(3)).await;
    finish(task).await.unwrap();

    let task = tokio::spawn(async move { cluster.wait_rollout(Duration::from_millis(1500)).await });
    for _ in 0..2 {
        expect(&mut api, Method::GET, path, BY_RUN, 200, statefulsets(2)).await;
    }
    let err = format!("{:#}", finish(task).await.unwrap_err());
    assert!(err.contains("txlab-order (2 of 3 ready, 3 updated)"), "{err}");
}

fn list(kind: &str, names: &[&str]) -> Value {
    json!({"kind": format!("{kind}List"), "apiVersion": "chaos-mesh.org/v1alpha1", "metadata": {},
           "items": names.iter().map(|n| json!({"apiVersion": "chaos-mesh.org/v1alpha1", "kind": kind,
                                                  "metadata": {"name": n}})).collect::<Vec<_>>()})
}

/// The run's chaos objects listed (NetworkChaos `on`, no PodChaos), then
/// `deleted` deleted, as chaos off and teardown do.
async fn chaos_listed_and_deleted(api: &mut Handle, on: &[&str], deleted: &str) {
    chaos_listed(api, on, &[]).await;
    let one = format!("{CHAOS_PATH}/networkchaos/{deleted}");
    expect(api, Method::DELETE, &one, None, 200, json!({})).await;
}

const CHAOS_PATH: &str = "/apis/chaos-mesh.org/v1alpha1/namespaces/txlab-run-1";

/// The run's NetworkChaos and PodChaos objects listed.
async fn chaos_listed(api: &mut Handle, network: &[&str], pod: &[&str]) {
    let networkchaos = format!("{CHAOS_PATH}/networkchaos");
    let answer = list("NetworkChaos", network);
    expect(api, Method::GET, &networkchaos, BY_RUN, 200, answer).await;
    let podchaos = format!("{CHAOS_PATH}/podchaos");
    expect(api, Method::GET, &podchaos, BY_RUN, 200, list("PodChaos", pod)).await;
}

#[test]
fn chaos_aimed_at_the_database_selects_in_the_infrastructures_namespace() {
    let fault = txlab_cli::chaos::mesh::load(&common::repo().join("chaos/bandwidth-1mbps.yaml")).unwrap();
    let scope = RunScope {
        infra_namespace: "data".into(),
        ..RunScope::of("run-1")
    };
    let o = scope.chaos_object(&fault.source);
    let (selector, target) = (&o["spec"]["selector"], &o["spec"]["target"]["selector"]);
    let namespaces = |s: &Value| (s["labelSelectors"]["app"].clone(), s["namespaces"].clone());
    assert_eq!(namespaces(selector).1, json!(["txlab-run-1"]), "{o}");
    assert_eq!(namespaces(target), (json!("postgres"), json!(["data"])), "{o}");
    assert_eq!(
        checks::problems(&[o]),
        Vec::<String>::new(),
        "still a chaos object txlab reads"
    );
}

#[tokio::test]
async fn chaos_status_lists_the_runs_objects_of_both_kinds() {
    let (cluster, mut api) = cluster();
    let task = tokio::spawn(async move { cluster.chaos_status().await });
    chaos_listed(&mut api, &["loss-1pct"], &["kill-inventory"]).await;
    assert_eq!(
        finish(task).await.unwrap(),
        ["NetworkChaos/loss-1pct", "PodChaos/kill-inventory"]
    );
}

#[tokio::test]
async fn chaos_goes_on_as_the_file_says_and_off_by_name_or_by_run() {
    let (cluster, mut api) = cluster();
    let plan = common::plan("chaos.yaml");
    let source = plan
        .cells
        .iter()
        .flat_map(|c| c.chaos.faults.iter())
        .find(|f| f.name == "latency-10ms")
        .unwrap()
        .source
        .clone();
    let on = cluster.clone();
    let sent = source.clone();
    let task = tokio::spawn(async move { on.chaos_on(&sent).await });
    let body = expect(
        &mut api,
        Method::PATCH,
        "/apis/chaos-mesh.org/v1alpha1/namespaces/txlab-run-1/networkchaos/latency-10ms",
        APPLY,
        200,
        json!({}),
    )
    .await;
    finish(task).await.unwrap();
    // The spec as the chaos file has it, each selector in the run's namespace.
    let mut spec = source["spec"].clone();
    spec["selector"]["namespaces"] = json!(["txlab-run-1"]);
    spec["target"]["selector"]["namespaces"] = json!(["txlab-run-1"]);
    assert_eq!(body["spec"], spec);
    assert_eq!(body["metadata"]["labels"]["txlab.dev/run"], "run-1");

    let task = tokio::spawn(async move { cluster.chaos_off(Some("latency-10ms")).await });
    chaos_listed_and_deleted(&mut api, &["latency-10ms", "loss-1pct"], "latency-10ms").await;
    assert_eq!(
        finish(task).await.unwrap(),
        ["latency-10ms"],
        "loss-1pct stays on"
    );
}

#[tokio::test]
async fn teardown_removes_chaos_then_the_runs_own_namespace_only() {
    for (label, deleted) in [("run-1", true), ("someone-else", false)] {
        let (cluster, mut api) = cluster();
        let task = tokio::spawn(async move { cluster.teardown().await });
        chaos_listed_and_deleted(&mut api, &["partition-payment"], "partition-payment").await;
        let ns = json!({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": "txlab-run-1", "labels": {"txlab.dev/run": label}}});
        expect(
            &mut api,
            Method::GET,
            "/api/v1/namespaces/txlab-run-1",
            None,
            200,
            ns.clone(),
        )
        .await;
        if deleted {
            let body = expect(
                &mut api,
                Method::DELETE,
                "/api/v1/namespaces/txlab-run-1",
                None,
                200,
                ns,
            )
            .await;
            assert_eq!(body["propagationPolicy"], "Background");
            finish(task).await.unwrap();
        } else {
            let err = format!("{:#}", finish(task).await.unwrap_err());
            assert!(
                err.contains("is not this run's") && err.contains("left in place"),
                "{err}"
            );
        }
    }
}

#[tokio::test]
async fn restarts_are_summed_per_role_from_the_pods_status() {
    let (cluster, mut api) = cluster();
    let task = tokio::spawn(async move { cluster.pod_restarts().await });
    let pod = |name: &str, role: &str, restarts: i32| {
        json!({"metadata": {"name": name, "labels": {"app.kubernetes.io/component": role}},
               "status": {"containerStatuses": [{"name": role, "image": "i", "imageID": "", "ready": true,
                                                 "restartCount": restarts}]}})
    };
    let pods = json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [
        pod("txlab-order-0", "order", 2), pod("txlab-order-1", "order", 1), pod("txlab-payment-0", "payment", 0)]});
    expect(
        &mut api,
        Method::GET,
        "/api/v1/namespaces/txlab-run-1/pods",
        BY_RUN,
        200,
        pods,
    )
    .await;
    let restarts = finish(task).await.unwrap();
    assert_eq!(
        restarts,
        [(txlab_api::Role::Order, 3), (txlab_api::Role::Payment, 0)].into()
    );
}

#[tokio::test]
async fn teardown_works_where_chaos_mesh_is_not_installed() {
    let (cluster, mut api) = cluster();
    let task = tokio::spawn(async move { cluster.teardown().await });
    let missing = status(
        404,
        "NotFound",
        "the server could not find the requested resource",
    );
    for kind in ["networkchaos", "podchaos"] {
        let path = format!("{CHAOS_PATH}/{kind}");
        expect(&mut api, Method::GET, &path, BY_RUN, 404, missing.clone()).await;
    }
    let ns = "/api/v1/namespaces/txlab-run-1";
    let owned = json!({"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": "txlab-run-1", "labels": {"txlab.dev/run": "run-1"}}});
    expect(&mut api, Method::GET, ns, None, 200, owned.clone()).await;
    expect(&mut api, Method::DELETE, ns, None, 200, owned).await;
    finish(task).await.unwrap();
}

// ---- txlab starting itself inside the cluster ----

fn job_spec(host_path: Option<&str>, prometheus: Option<&str>) -> txlab_cli::platform::k8s::runner::JobSpec {
    txlab_cli::platform::k8s::runner::JobSpec {
        name: "txlab-run-1".into(),
        image: "txlab:test".into(),
        profile: "profiles/nightly.yaml".into(),
        results_host_path: host_path.map(String::from),
        values: vec![
            ("a.yaml".into(), "image: {tag: x}\n".into()),
            ("b.yaml".into(), "replicas: 1\n".into()),
        ],
        database_url: "postgres://admin:pw@pg/postgres".into(),
        brokers: "kafka:9092".into(),
        prometheus: prometheus.map(String::from),
    }
}

#[test]
fn the_runner_job_carries_the_profile_values_and_results_place() {
    use txlab_cli::platform::k8s::runner::objects;
    let with_host = objects(&job_spec(Some("/txlab-results/x"), Some("http://prom:9090"))).unwrap();
    assert_eq!(checks::problems(&with_host), Vec::<String>::new());
    let job = with_host.last().unwrap();
    let container = &job["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "run",
            "--target",
            "k8s",
            "--profile",
            "profiles/nightly.yaml",
            "--results",
            "/results",
            "--values",
            "/etc/txlab/values-0.yaml",
            "--values",
            "/etc/txlab/values-1.yaml"
        ]
    );
    let env = |name: &str| {
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    assert_eq!(env("TXLAB_KAFKA_BROKERS"), Some(json!("kafka:9092")));
    assert_eq!(env("TXLAB_PROMETHEUS_URL"), Some(json!("http://prom:9090")));
    let volumes = &job["spec"]["template"]["spec"]["volumes"];
    assert_eq!(volumes[0]["hostPath"]["path"], "/txlab-results/x");
    let config = with_host.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
    assert_eq!(config["data"]["values-1.yaml"], "replicas: 1\n");
    let secret = with_host.iter().find(|o| o["kind"] == "Secret").unwrap();
    assert_eq!(secret["stringData"]["url"], "postgres://admin:pw@pg/postgres");

    let without = objects(&job_spec(None, None)).unwrap();
    let job = without.last().unwrap();
    assert_eq!(
        job["spec"]["template"]["spec"]["volumes"][0],
        json!({"name": "results", "emptyDir": {}})
    );
    let container = &job["spec"]["template"]["spec"]["containers"][0];
    assert!(
        !container["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "TXLAB_PROMETHEUS_URL"),
        "no Prometheus: no variable (an empty one would be a URL)"
    );
}

#[tokio::test]
async fn a_launch_applies_the_runner_waits_for_its_job_and_passes_on_its_exit_code() {
    use txlab_cli::platform::k8s::runner::{exit_code, objects, NAMESPACE};
    let (service, mut api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let scope = RunScope {
        namespace: NAMESPACE.into(),
        run: "runner".into(),
        infra_namespace: "txlab-infra".into(),
    };
    let cluster = Cluster::new(kube::Client::new(service, "default"), scope);
    let objects = objects(&job_spec(None, None)).unwrap();
    let count = objects.len();
    let task = tokio::spawn(async move {
        cluster.apply(&objects).await?;
        cluster.wait_job("txlab-run-1", Duration::from_secs(30)).await
    });
    let paths = [
        "/api/v1/namespaces/txlab-runner",
        "/api/v1/namespaces/txlab-runner/serviceaccounts/txlab",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/txlab-runner",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/txlab-runner",
        "/api/v1/namespaces/txlab-runner/secrets/txlab-admin-db",
        "/api/v1/namespaces/txlab-runner/configmaps/txlab-run-values",
        "/apis/batch/v1/namespaces/txlab-runner/jobs/txlab-run-1",
    ];
    assert_eq!(count, paths.len());
    for path in paths {
        expect(&mut api, Method::PATCH, path, APPLY, 200, json!({})).await;
    }
    let job = |conditions: Value| {
        json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "txlab-run-1"}, "status": {"conditions": conditions}})
    };
    let at = "/apis/batch/v1/namespaces/txlab-runner/jobs/txlab-run-1";
    expect(&mut api, Method::GET, at, None, 200, job(json!([]))).await;
    expect(
        &mut api,
        Method::GET,
        at,
        None,
        200,
        job(json!([{"type": "Failed", "status": "True"}])),
    )
    .await;
    let pods = json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [
        {"metadata": {"name": "txlab-run-1-abcde"},
         "status": {"containerStatuses": [{"name": "txlab", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                                           "state": {"terminated": {"exitCode": 3}}}]}}]});
    let by_job = Some("labelSelector=job-name%3Dtxlab-run-1");
    expect(
        &mut api,
        Method::GET,
        "/api/v1/namespaces/txlab-runner/pods",
        by_job,
        200,
        pods,
    )
    .await;
    let (request, respond) = api.next_request().await.unwrap();
    assert_eq!(
        request.uri().path(),
        "/api/v1/namespaces/txlab-runner/pods/txlab-run-1-abcde/log"
    );
    respond.send_response(
        Response::builder()
            .status(200)
            .body(Body::from(b"txlab: the audit found 2 violations\n".to_vec()))
            .unwrap(),
    );
    let end = finish(task).await.unwrap();
    assert!(!end.succeeded && end.logs.contains("2 violations"), "{end:?}");
    assert_eq!(exit_code(&end), 3, "the run's own exit code");
}

// ---- the command line ----

fn run_k8s(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_txlab"));
    cmd.current_dir(common::repo())
        .args(["run", "--target", "k8s", "--profile", "profiles/smoke.yaml"])
        .args(args)
        .env_remove("TXLAB_DATABASE_URL")
        .env_remove("TXLAB_KAFKA_BROKERS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_command_prints_the_objects_or_says_what_is_missing() {
    let helm = chart::find_helm().unwrap();
    let helm = helm.to_str().unwrap();
    let (code, stdout, stderr) = run_k8s(&["--dry-run"], &[("TXLAB_HELM", helm)]);
    assert_eq!(code, Some(0), "{stderr}");
    let objects = chart::parse_documents(&stdout).unwrap();
    assert_eq!(objects[0]["kind"], "Namespace");
    assert_eq!(
        objects.len(),
        1 + 21,
        "smoke.yaml: one deployment of saga_orch, no chaos"
    );

    let (code, _, stderr) = run_k8s(&["--dry-run"], &[("TXLAB_HELM", "/nonexistent/helm")]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("running /nonexistent/helm"), "{stderr}");

    let (code, _, stderr) = run_k8s(&["--dry-run"], &[("TXLAB_HELM", ""), ("PATH", "/nonexistent")]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("helm is not on PATH"), "{stderr}");

    // A run needs the database and broker as the cluster reaches them,
    // and says so before creating anything.
    let results = common::temp_dir("k8s-results");
    let (code, stdout, stderr) = run_k8s(&["--results", results.to_str().unwrap()], &[("TXLAB_HELM", helm)]);
    assert_eq!(code, Some(1));
    assert!(
        stdout.is_empty() && stderr.contains("--target k8s needs --database-url"),
        "{stderr}"
    );
    let (code, _, stderr) = run_k8s(
        &[
            "--results",
            results.to_str().unwrap(),
            "--database-url",
            "postgres://u@db/postgres",
            "--kafka-brokers",
            "kafka:9092",
        ],
        &[
            ("TXLAB_HELM", helm),
            ("KUBECONFIG", "/nonexistent/kubeconfig"),
            ("HOME", "/nonexistent"),
        ],
    );
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no Kubernetes cluster to talk to"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(&results).unwrap().count(),
        0,
        "no run directory for a run that never began"
    );
    std::fs::remove_dir_all(&results).unwrap();
}

#[test]
fn chaos_on_a_cluster_checks_files_and_says_when_there_is_no_cluster() {
    let chaos = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_txlab"))
            .current_dir(common::repo())
            .arg("chaos")
            .args(args)
            .args(["--target", "k8s"])
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .env("HOME", "/nonexistent")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = chaos(&["status"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("needs --run"), "{stderr}");

    let (code, stderr) = chaos(&["status", "--run", "r1"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no Kubernetes cluster to talk to"), "{stderr}");

    // A bad file is named before any cluster is asked.
    let bad = common::temp_dir("k8s-chaos").join("bad.yaml");
    std::fs::write(&bad, "apiVersion: chaos-mesh.org/v1alpha1\nkind: PodChaos\nmetadata: {name: x}\nspec: {action: pod-kill, mode: one, selector: {labelSelectors: {app: warehouse}}}\n").unwrap();
    let (code, stderr) = chaos(&["on", bad.to_str().unwrap(), "--run", "r1"]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("bad.yaml") && !stderr.contains("no Kubernetes cluster"),
        "{stderr}"
    );
    std::fs::remove_dir_all(bad.parent().unwrap()).unwrap();
}

// ---- the platform: a run's namespace, databases and deployments ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_on_a_cluster_gets_its_namespace_databases_and_deployments() {
    use txlab_cli::platform::k8s::lab::{K8sOptions, K8sPlatform};
    use txlab_cli::platform::Platform;
    // A real PostgreSQL for the databases txlab creates; the cluster is scripted.
    let dir = common::temp_dir("k8s-platform");
    let local = txlab_cli::platform::local::LocalPlatform::start(txlab_cli::platform::local::LocalOptions {
        log_dir: dir.join("logs"),
        ..Default::default()
    })
    .await
    .unwrap();
    let admin = local.admin_url().to_string();
    let (cluster, mut api) = cluster();
    let opts = K8sOptions {
        chart: chart(&[]),
        run_id: "run-1".into(),
        database_url: admin.clone(),
        brokers: "kafka.infra:9092".into(),
        rollout_timeout: Duration::from_secs(10),
        prometheus: None,
    };
    let task = tokio::spawn(async move {
        let mut p = K8sPlatform::start(cluster, opts).await?;
        let first = p.deploy(TxMode::Tcc, 3).await?;
        let again = p.deploy(TxMode::Tcc, 3).await?;
        p.shutdown().await?;
        anyhow::Ok((first, again))
    });
    let ns = "/api/v1/namespaces/txlab-run-1";
    expect(&mut api, Method::PATCH, ns, APPLY, 200, json!({})).await;
    let secret = expect(
        &mut api,
        Method::PATCH,
        &format!("{ns}/secrets/txlab-db"),
        APPLY,
        200,
        json!({}),
    )
    .await;
    for role in txlab_api::Role::ALL {
        let url = secret["stringData"][role.as_str()].as_str().unwrap();
        assert!(url.ends_with(&format!("/txlab_{role}")), "{url}");
        // The database exists on the server txlab was given.
        let db = url.to_string();
        sqlx::Connection::connect(&db)
            .await
            .map(|c: sqlx::PgConnection| drop(c))
            .unwrap_or_else(|e| panic!("{db}: {e}"));
    }
    // The deployment: every object of the chart, with the run's broker.
    for _ in 0..21 {
        let (request, respond) = api.next_request().await.unwrap();
        assert_eq!(request.method(), Method::PATCH);
        let body: Value =
            serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap()).unwrap();
        if body["kind"] == "ConfigMap" {
            assert_eq!(body["data"]["KAFKA_BROKERS"], "kafka.infra:9092");
            assert_eq!(body["data"]["TX_MODE"], "tcc");
        }
        respond.send_response(
            Response::builder()
                .status(200)
                .body(Body::from(b"{}".to_vec()))
                .unwrap(),
        );
    }
    let sets = "/apis/apps/v1/namespaces/txlab-run-1/statefulsets";
    expect(&mut api, Method::GET, sets, BY_RUN, 200, statefulsets(3)).await;
    // The same deployment again: nothing applied, the rollout checked.
    expect(&mut api, Method::GET, sets, BY_RUN, 200, statefulsets(3)).await;
    // Shutdown: the run's chaos (none), then its namespace.
    chaos_listed(&mut api, &[], &[]).await;
    let owned = json!({"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": "txlab-run-1", "labels": {"txlab.dev/run": "run-1"}}});
    expect(&mut api, Method::GET, ns, None, 200, owned.clone()).await;
    expect(&mut api, Method::DELETE, ns, None, 200, owned).await;

    let (first, again) = finish(task).await.unwrap();
    assert_eq!(
        first.url(txlab_api::Role::Order).unwrap(),
        "http://txlab-order.txlab-run-1.svc:8080"
    );
    assert_eq!(
        first.replica_urls(txlab_api::Role::Payment)[2],
        "http://txlab-payment-2.txlab-payment-pods.txlab-run-1.svc:8080"
    );
    assert_eq!(first.brokers, "kafka.infra:9092");
    assert_eq!(again.urls, first.urls);
    local.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_in_cluster_runner_is_typed_hardened_and_allowed_what_a_run_does() {
    let read = |name: &str| std::fs::read_to_string(common::repo().join("deploy/runner").join(name)).unwrap();
    let job = read("job.yaml")
        .replace("__IMAGE__", "txlab:test")
        .replace("__PROFILE__", "profiles/nightly.yaml")
        .replace("__RESULTS__", "/txlab-results/current");
    let objects = chart::parse_documents(&format!("{}\n---\n{job}", read("access.yaml"))).unwrap();
    assert_eq!(checks::problems(&objects), Vec::<String>::new());
    let kinds: Vec<&str> = objects.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Job"
        ]
    );
    // The pod is the one the chart's NetworkPolicies let in.
    assert_eq!(
        objects[4]["spec"]["template"]["metadata"]["labels"]["app"],
        "load"
    );
    // Every kind a run applies is allowed, with the verbs apply needs.
    let rules = objects[2]["rules"].as_array().unwrap();
    let allowed = |resource: &str, verb: &str| {
        rules.iter().any(|r| {
            r["resources"].as_array().unwrap().iter().any(|x| x == resource)
                && r["verbs"].as_array().unwrap().iter().any(|x| x == verb)
        })
    };
    for verb in ["create", "patch", "delete"] {
        assert!(allowed("secrets", verb), "{verb} secrets");
    }
    assert!(
        !allowed("secrets", "get") && !allowed("secrets", "list"),
        "secrets are never read"
    );
    assert!(allowed("pods", "list"), "restarts come from the pods' status");
    for resource in [
        "namespaces",
        "configmaps",
        "services",
        "statefulsets",
        "networkpolicies",
        "horizontalpodautoscalers",
        "servicemonitors",
        "networkchaos",
        "podchaos",
    ] {
        for verb in ["get", "create", "patch", "delete"] {
            assert!(allowed(resource, verb), "{verb} {resource}");
        }
    }
}
