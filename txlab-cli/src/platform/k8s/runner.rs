//! txlab starting itself inside a cluster (`txlab run --target k8s
//! --in-cluster <image>`): from a workstation the services' cluster DNS
//! names do not resolve, so txlab applies the runner of deploy/runner/
//! — its rights, a Secret with the database URL, a ConfigMap with the
//! chart values — and a Job running the same profile there, waits for it,
//! and prints what it printed.

use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::chart::parse_documents;

/// The runner's namespace, service account and rights.
pub const ACCESS: &str = include_str!("../../../../deploy/runner/access.yaml");
/// The Job, with placeholders for the image, profile and results.
pub const JOB: &str = include_str!("../../../../deploy/runner/job.yaml");
/// Where the runner lives.
pub const NAMESPACE: &str = "txlab-runner";

/// What the Job runs.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// A unique name: a finished Job's pod template cannot be changed.
    pub name: String,
    pub image: String,
    /// The profile's path inside the image (under /opt/txlab).
    pub profile: String,
    /// A node directory the results go to; none: the pod's own, gone with it.
    pub results_host_path: Option<String>,
    /// Chart value files: (file name, contents), in order.
    pub values: Vec<(String, String)>,
    pub database_url: String,
    pub brokers: String,
    pub prometheus: Option<String>,
}

/// The objects to apply, in order: access, Secret, ConfigMap, Job.
pub fn objects(spec: &JobSpec) -> anyhow::Result<Vec<Value>> {
    let mut out = parse_documents(ACCESS).context("deploy/runner/access.yaml")?;
    out.push(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "txlab-admin-db", "namespace": NAMESPACE},
        "type": "Opaque",
        "stringData": {"url": spec.database_url},
    }));
    let files: serde_json::Map<String, Value> = spec
        .values
        .iter()
        .enumerate()
        .map(|(i, (_, text))| (format!("values-{i}.yaml"), json!(text)))
        .collect();
    out.push(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "txlab-run-values", "namespace": NAMESPACE},
        "data": files,
    }));
    let text = JOB
        .replace("__IMAGE__", &spec.image)
        .replace("__PROFILE__", &spec.profile)
        .replace(
            "__RESULTS__",
            spec.results_host_path.as_deref().unwrap_or("/unused"),
        );
    let mut job = parse_documents(&text)
        .context("deploy/runner/job.yaml")?
        .pop()
        .context("deploy/runner/job.yaml holds no Job")?;
    job["metadata"]["name"] = json!(spec.name);
    // Finished runs go by themselves after a day.
    job["spec"]["ttlSecondsAfterFinished"] = json!(86_400);
    let pod = &mut job["spec"]["template"]["spec"];
    if spec.results_host_path.is_none() {
        for v in pod["volumes"].as_array_mut().into_iter().flatten() {
            if v["name"] == "results" {
                *v = json!({"name": "results", "emptyDir": {}});
            }
        }
    }
    let container = &mut pod["containers"][0];
    let args = container["args"]
        .as_array_mut()
        .context("the Job's container has no args")?;
    // One --values per file, in the user's order, instead of the template's one.
    if let Some(i) = args.iter().position(|a| a == "--values") {
        args.drain(i..i + 2);
    }
    for i in 0..spec.values.len() {
        args.push(json!("--values"));
        args.push(json!(format!("/etc/txlab/values-{i}.yaml")));
    }
    if let Some(env) = container["env"].as_array_mut() {
        env.retain(|e| e["name"] != "TXLAB_PROMETHEUS_URL" || spec.prometheus.is_some());
        for e in env.iter_mut() {
            match e["name"].as_str() {
                Some("TXLAB_KAFKA_BROKERS") => e["value"] = json!(spec.brokers),
                Some("TXLAB_PROMETHEUS_URL") => e["value"] = json!(spec.prometheus),
                _ => {}
            }
        }
    }
    out.push(job);
    Ok(out)
}

/// How a Job ended.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEnd {
    pub succeeded: bool,
    /// The txlab container's exit code, when its pod says.
    pub exit_code: Option<i32>,
    pub logs: String,
}

/// Whether a Job's status says it ended, and how.
pub fn ended(job: &Value) -> Option<bool> {
    let conditions = job["status"]["conditions"].as_array()?;
    conditions.iter().find_map(|c| {
        if c["status"] != "True" {
            return None;
        }
        match c["type"].as_str() {
            Some("Complete") => Some(true),
            Some("Failed") => Some(false),
            _ => None,
        }
    })
}

/// The exit code a launch passes on: the container's, or 1 when a failed
/// Job's pod never said.
pub fn exit_code(end: &JobEnd) -> u8 {
    match (end.succeeded, end.exit_code) {
        (true, _) => 0,
        (false, Some(code)) if (1..=255).contains(&code) => code as u8,
        _ => 1,
    }
}

/// Polls interval for the Job.
pub const POLL: Duration = Duration::from_secs(2);

/// Fails unless `spec` can run: names are checked here, not by the API.
pub fn check(spec: &JobSpec) -> anyhow::Result<()> {
    if spec.image.trim().is_empty() {
        bail!("--in-cluster needs an image: the cli image of the Dockerfile (--target cli)");
    }
    if spec.profile.starts_with('/') {
        bail!(
            "--in-cluster runs the profile inside the image: give its path under /opt/txlab (e.g. profiles/nightly.yaml), not {}",
            spec.profile
        );
    }
    Ok(())
}
