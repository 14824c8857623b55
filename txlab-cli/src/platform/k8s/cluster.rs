//! What txlab does to a cluster, through kube-rs: a namespace per run,
//! server-side apply of the rendered objects (field manager `txlab`),
//! waiting for the StatefulSets to roll out, Chaos Mesh objects on and off,
//! and teardown by the run's label. Every call is bounded in time and every
//! error names the object and what the API server said.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersion};
use kube::Client;
use serde_json::Value;
use txlab_api::Role;

use super::chart::RUN_LABEL;
use super::RunScope;

/// The field manager of every apply: what `kubectl` shows as the owner.
pub const FIELD_MANAGER: &str = "txlab";

/// The kinds txlab applies, with their plural (the path segment) and
/// whether they live in a namespace.
const KINDS: [(&str, &str, bool); 14] = [
    ("Namespace", "namespaces", false),
    ("ServiceAccount", "serviceaccounts", true),
    ("ClusterRole", "clusterroles", false),
    ("ClusterRoleBinding", "clusterrolebindings", false),
    ("Secret", "secrets", true),
    ("ConfigMap", "configmaps", true),
    ("Service", "services", true),
    ("StatefulSet", "statefulsets", true),
    ("NetworkPolicy", "networkpolicies", true),
    ("HorizontalPodAutoscaler", "horizontalpodautoscalers", true),
    ("ServiceMonitor", "servicemonitors", true),
    ("Job", "jobs", true),
    ("NetworkChaos", "networkchaos", true),
    ("PodChaos", "podchaos", true),
];

/// The chaos kinds, as (apiVersion, kind).
const CHAOS_KINDS: [(&str, &str); 2] = [
    (crate::chaos::mesh::API_VERSION, "NetworkChaos"),
    (crate::chaos::mesh::API_VERSION, "PodChaos"),
];

/// How often rollouts are polled.
const POLL: Duration = Duration::from_millis(1000);

/// A client for the cluster of the current kubeconfig (or of the pod
/// txlab runs in).
pub async fn connect() -> anyhow::Result<Client> {
    Client::try_default().await.map_err(|e| {
        anyhow!("no Kubernetes cluster to talk to (set KUBECONFIG, or run txlab inside a pod): {e}")
    })
}

/// One run's namespace on one cluster.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    pub scope: RunScope,
}

/// The API resource of `apiVersion` + `kind`, and whether it is namespaced.
fn resource(api_version: &str, kind: &str) -> anyhow::Result<(ApiResource, bool)> {
    let (_, plural, namespaced) = KINDS
        .iter()
        .find(|(k, _, _)| *k == kind)
        .with_context(|| format!("{api_version} {kind} is not a kind txlab applies"))?;
    let gv: GroupVersion = api_version
        .parse()
        .map_err(|e| anyhow!("apiVersion {api_version}: {e}"))?;
    Ok((
        ApiResource::from_gvk_with_plural(&gv.with_kind(kind), plural),
        *namespaced,
    ))
}

/// An API error in words: the status code's meaning and the server's message.
fn explain(e: kube::Error, doing: &str) -> anyhow::Error {
    match e {
        kube::Error::Api(s) => {
            let why = match s.code {
                403 => "forbidden: the credentials txlab uses may not do this (check the RBAC of the kubeconfig user or service account)",
                404 => "not found (is the CRD installed?)",
                409 => "conflict",
                422 => "refused as invalid",
                _ => "failed",
            };
            anyhow!("{doing}: {why}: {} (HTTP {})", s.message, s.code)
        }
        other => anyhow!("{doing}: {other}"),
    }
}

impl Cluster {
    pub fn new(client: Client, scope: RunScope) -> Cluster {
        Cluster { client, scope }
    }

    fn api(&self, api_version: &str, kind: &str) -> anyhow::Result<(Api<DynamicObject>, bool)> {
        let (ar, namespaced) = resource(api_version, kind)?;
        let api = if namespaced {
            Api::namespaced_with(self.client.clone(), &self.scope.namespace, &ar)
        } else {
            Api::all_with(self.client.clone(), &ar)
        };
        Ok((api, namespaced))
    }

    /// Server-side applies `objects` in order (the namespace first when it
    /// is among them), as field manager `txlab`, forcing ownership: the run's
    /// namespace is txlab's, and the chart is what its objects must say.
    pub async fn apply(&self, objects: &[Value]) -> anyhow::Result<()> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        for o in objects {
            let api_version = o["apiVersion"].as_str().unwrap_or_default();
            let kind = o["kind"].as_str().unwrap_or_default();
            let name = o["metadata"]["name"]
                .as_str()
                .with_context(|| format!("a {kind} without a name"))?;
            let (api, namespaced) = self.api(api_version, kind)?;
            // The path and the body must name the same namespace.
            let mut o = o.clone();
            if namespaced {
                o["metadata"]["namespace"] = Value::String(self.scope.namespace.clone());
            }
            let place = if namespaced {
                format!(" in {}", self.scope.namespace)
            } else {
                String::new()
            };
            api.patch(name, &params, &Patch::Apply(&o))
                .await
                .map_err(|e| explain(e, &format!("applying {kind} {name}{place}")))?;
        }
        Ok(())
    }

    /// Waits until every StatefulSet of the run has all its pods updated
    /// and ready, or `timeout` passes (then names the ones that are not).
    pub async fn wait_rollout(&self, timeout: Duration) -> anyhow::Result<()> {
        let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &self.scope.namespace);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let list = api
                .list(&ListParams::default().labels(&self.scope.selector()))
                .await
                .map_err(|e| explain(e, &format!("listing StatefulSets in {}", self.scope.namespace)))?;
            let waiting: Vec<String> = list
                .items
                .iter()
                .filter_map(|s| {
                    let want = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                    let st = s.status.clone().unwrap_or_default();
                    let current = st.observed_generation >= s.metadata.generation;
                    let ready = st.ready_replicas.unwrap_or(0);
                    let updated = st.updated_replicas.unwrap_or(0);
                    (!(current && ready == want && updated == want)).then(|| {
                        format!(
                            "{} ({ready} of {want} ready, {updated} updated)",
                            s.metadata.name.clone().unwrap_or_default()
                        )
                    })
                })
                .collect();
            if waiting.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() + POLL > deadline {
                bail!(
                    "rollout in {} not done after {:?}: {}",
                    self.scope.namespace,
                    timeout,
                    waiting.join(", ")
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Switches a chaos object on (Chaos Mesh enforces it).
    pub async fn chaos_on(&self, source: &Value) -> anyhow::Result<()> {
        self.apply(&[self.scope.chaos_object(source)]).await
    }

    /// Container restarts so far of the run's pods, per role (a pod that
    /// was replaced, as by a pod kill, starts again from zero).
    pub async fn pod_restarts(&self) -> anyhow::Result<BTreeMap<Role, u32>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.scope.namespace);
        let list = pods
            .list(&ListParams::default().labels(&self.scope.selector()))
            .await
            .map_err(|e| explain(e, &format!("listing pods in {}", self.scope.namespace)))?;
        let mut out = BTreeMap::new();
        for p in list.items {
            let role = p
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app.kubernetes.io/component"))
                .and_then(|c| c.parse::<Role>().ok());
            let Some(role) = role else { continue };
            let restarts: i32 = p
                .status
                .and_then(|s| s.container_statuses)
                .unwrap_or_default()
                .iter()
                .map(|c| c.restart_count)
                .sum();
            *out.entry(role).or_insert(0) += restarts.max(0) as u32;
        }
        Ok(out)
    }

    /// Waits for the Job `name` to end, for at most `timeout`; then how it
    /// ended, with its pod's exit code and logs.
    pub async fn wait_job(&self, name: &str, timeout: Duration) -> anyhow::Result<super::runner::JobEnd> {
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &self.scope.namespace);
        let deadline = tokio::time::Instant::now() + timeout;
        let succeeded = loop {
            let job = jobs
                .get(name)
                .await
                .map_err(|e| explain(e, &format!("reading Job {name}")))?;
            if let Some(ok) = super::runner::ended(&serde_json::to_value(&job)?) {
                break ok;
            }
            if tokio::time::Instant::now() + super::runner::POLL > deadline {
                bail!(
                    "Job {name} in {} still running after {timeout:?}",
                    self.scope.namespace
                );
            }
            tokio::time::sleep(super::runner::POLL).await;
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.scope.namespace);
        let list = pods
            .list(&ListParams::default().labels(&format!("job-name={name}")))
            .await
            .map_err(|e| explain(e, &format!("listing Job {name}'s pods")))?;
        let Some(pod) = list.items.into_iter().next() else {
            return Ok(super::runner::JobEnd {
                succeeded,
                exit_code: None,
                logs: String::new(),
            });
        };
        let exit_code = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.terminated.as_ref())
            .map(|t| t.exit_code);
        let pod_name = pod.metadata.name.unwrap_or_default();
        let logs = pods
            .logs(&pod_name, &Default::default())
            .await
            .map_err(|e| explain(e, &format!("reading pod {pod_name}'s log")))?;
        Ok(super::runner::JobEnd {
            succeeded,
            exit_code,
            logs,
        })
    }

    /// The run's chaos objects: each with its API, kind and name.
    async fn chaos_objects(&self) -> anyhow::Result<Vec<(Api<DynamicObject>, &'static str, String)>> {
        let mut out = Vec::new();
        for (api_version, kind) in CHAOS_KINDS {
            let (api, _) = self.api(api_version, kind)?;
            let list = match api
                .list(&ListParams::default().labels(&self.scope.selector()))
                .await
            {
                Ok(l) => l,
                // Chaos Mesh is not installed: there is no chaos to find.
                Err(kube::Error::Api(s)) if s.code == 404 => continue,
                Err(e) => return Err(explain(e, &format!("listing {kind} in {}", self.scope.namespace))),
            };
            for o in list.items {
                out.push((api.clone(), kind, o.metadata.name.unwrap_or_default()));
            }
        }
        Ok(out)
    }

    /// What chaos of the run is on: `kind/name` of each object.
    pub async fn chaos_status(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .chaos_objects()
            .await?
            .into_iter()
            .map(|(_, kind, name)| format!("{kind}/{name}"))
            .collect())
    }

    /// Deletes the chaos object named, or every chaos object of the run;
    /// returns the names deleted.
    pub async fn chaos_off(&self, name: Option<&str>) -> anyhow::Result<Vec<String>> {
        let mut gone = Vec::new();
        for (api, kind, n) in self.chaos_objects().await? {
            if name.is_some_and(|want| want != n) {
                continue;
            }
            api.delete(&n, &DeleteParams::default())
                .await
                .map_err(|e| explain(e, &format!("deleting {kind} {n}")))?;
            gone.push(n);
        }
        Ok(gone)
    }

    /// Deletes what the run created, by its label: chaos objects first
    /// (Chaos Mesh undoes them before the pods go), then the namespace,
    /// which takes the rest with it.
    pub async fn teardown(&self) -> anyhow::Result<()> {
        self.chaos_off(None).await?;
        let (namespaces, _) = self.api("v1", "Namespace")?;
        // Only a namespace this run labelled as its own is deleted.
        let existing = namespaces
            .get_opt(&self.scope.namespace)
            .await
            .map_err(|e| explain(e, &format!("reading namespace {}", self.scope.namespace)))?;
        let Some(ns) = existing else { return Ok(()) };
        let owner = ns.metadata.labels.as_ref().and_then(|l| l.get(RUN_LABEL));
        if owner != Some(&self.scope.run) {
            bail!(
                "namespace {} is not this run's (its {RUN_LABEL} label is {:?}): left in place",
                self.scope.namespace,
                owner
            );
        }
        match namespaces
            .delete(&self.scope.namespace, &DeleteParams::background())
            .await
        {
            Ok(_) => Ok(()),
            // Already gone: nothing left to clean.
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(explain(
                e,
                &format!("deleting namespace {}", self.scope.namespace),
            )),
        }
    }
}
