//! The Kubernetes platform as a [`Platform`]: the run's namespace with the
//! databases' Secret, the chart's objects per deployment, chaos through
//! Chaos Mesh, and everything deleted by the run's label at the end.
//!
//! txlab reaches the services by their cluster DNS names, so it runs where
//! those resolve: in a pod of the cluster (the cli image as a Job,
//! deploy/runner/). PostgreSQL and the broker are the user's, given by
//! URL as on the local platform with an external database or broker.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use serde_json::{json, Value};
use txlab_api::{Role, TxMode};

use super::chart::{Chart, DeploymentValues};
use super::cluster::Cluster;
use crate::metrics::prometheus::{PodUse, Prometheus};
use crate::metrics::resources::Use;
use crate::platform::{databases, Endpoints, Platform, Usage};

/// The Secret the chart's pods read their database URLs from.
pub const DATABASE_SECRET: &str = "txlab-db";

/// What a run on a cluster needs besides the cluster.
#[derive(Debug, Clone)]
pub struct K8sOptions {
    pub chart: Chart,
    pub run_id: String,
    /// An admin URL of the PostgreSQL server the services use, as seen from
    /// the cluster; txlab creates the databases `txlab_<role>` on it.
    pub database_url: String,
    /// Bootstrap servers of the Kafka-API broker, as seen from the cluster.
    pub brokers: String,
    /// How long a deployment may take to be ready.
    pub rollout_timeout: Duration,
    /// A Prometheus with cAdvisor's series (kube-prometheus-stack's), for
    /// each cell's CPU, memory and network; without one a cell has none.
    pub prometheus: Option<String>,
}

pub struct K8sPlatform {
    cluster: Cluster,
    opts: K8sOptions,
    deployed: Option<(TxMode, u32)>,
}

impl K8sPlatform {
    /// Creates the run's namespace and its databases' Secret, and the
    /// databases themselves when missing.
    pub async fn start(cluster: Cluster, opts: K8sOptions) -> anyhow::Result<K8sPlatform> {
        databases::create_databases(&opts.database_url)
            .await
            .context("creating the services' databases")?;
        let platform = K8sPlatform {
            cluster,
            opts,
            deployed: None,
        };
        let namespace = platform.cluster.scope.namespace_object();
        platform.cluster.apply(&[namespace, platform.secret()]).await?;
        Ok(platform)
    }

    /// Each role's database on the server txlab was given.
    fn database_urls(&self) -> BTreeMap<Role, String> {
        Role::ALL
            .iter()
            .map(|r| {
                (
                    *r,
                    databases::database_url(&self.opts.database_url, &databases::database_name(*r)),
                )
            })
            .collect()
    }

    /// One database URL per role, under the role's name.
    fn secret(&self) -> Value {
        let urls: BTreeMap<String, String> = self
            .database_urls()
            .into_iter()
            .map(|(r, url)| (r.to_string(), url))
            .collect();
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": DATABASE_SECRET, "labels": {super::chart::RUN_LABEL: self.cluster.scope.run}},
            "type": "Opaque",
            "stringData": urls,
        })
    }

    /// Where each service is reached inside the cluster.
    pub fn endpoints(&self, replicas: u32) -> Endpoints {
        let ns = &self.cluster.scope.namespace;
        let port = super::chart::PORT;
        let service = |r: Role| format!("{}-{r}", super::chart::RELEASE);
        Endpoints {
            urls: Role::ALL
                .iter()
                .map(|r| (*r, format!("http://{}.{ns}.svc:{port}", service(*r))))
                .collect(),
            replicas: Role::ALL
                .iter()
                .map(|r| {
                    let s = service(*r);
                    let pods = (0..replicas)
                        .map(|i| format!("http://{s}-{i}.{s}-pods.{ns}.svc:{port}"))
                        .collect();
                    (*r, pods)
                })
                .collect(),
            databases: self.database_urls(),
            brokers: self.opts.brokers.clone(),
            load_url: None,
        }
    }
}

impl Platform for K8sPlatform {
    async fn deploy(&mut self, method: TxMode, replicas: u32) -> anyhow::Result<Endpoints> {
        if self.deployed != Some((method, replicas)) {
            let mut values = DeploymentValues::new(&self.opts.run_id, method, replicas);
            values.kafka = Some(super::chart::KafkaValues {
                brokers: self.opts.brokers.clone(),
            });
            let objects = self.opts.chart.render(&self.cluster.scope.namespace, &values)?;
            super::checks::ensure_fit(&objects, "the chart's objects")?;
            self.cluster.apply(&objects).await?;
            self.deployed = Some((method, replicas));
        }
        self.cluster.wait_rollout(self.opts.rollout_timeout).await?;
        Ok(self.endpoints(replicas))
    }

    async fn restarts(&self) -> BTreeMap<Role, u32> {
        // Counters are informative: an unreadable status counts nothing.
        self.cluster.pod_restarts().await.unwrap_or_else(|e| {
            tracing::warn!(error = %format!("{e:#}"), "pod restarts not read");
            BTreeMap::new()
        })
    }

    async fn usage(&self, from: SystemTime, to: SystemTime) -> anyhow::Result<Option<Usage>> {
        let Some(url) = &self.opts.prometheus else {
            return Ok(None);
        };
        let pods = Prometheus::new(url)
            .pod_usage(&self.cluster.scope.namespace, from, to)
            .await?;
        Ok(Some(usage_by_component(
            pods,
            to.duration_since(from).unwrap_or_default(),
        )))
    }

    fn log_files(&self) -> Vec<(String, PathBuf)> {
        Vec::new()
    }

    fn processes(&self) -> Vec<crate::metrics::resources::Component> {
        Vec::new()
    }

    fn describe(&self) -> Value {
        json!({
            "name": "k8s",
            "namespace": self.cluster.scope.namespace,
            "chart": self.opts.chart.dir.display().to_string(),
            "values": self.opts.chart.values.iter().map(|v| v.display().to_string()).collect::<Vec<_>>(),
            "postgres": databases::redact(&self.opts.database_url),
            "kafka": self.opts.brokers,
        })
    }

    async fn chaos_on(&mut self, fault: &crate::chaos::Fault) -> anyhow::Result<Vec<String>> {
        self.cluster.chaos_on(&fault.source).await?;
        Ok(Vec::new())
    }

    async fn chaos_off(&mut self, name: Option<&str>) -> anyhow::Result<Vec<String>> {
        self.cluster.chaos_off(name).await
    }

    fn traffic(&self) -> Vec<crate::proxy::LinkTraffic> {
        Vec::new()
    }

    async fn shutdown(self) -> anyhow::Result<()> {
        self.cluster.teardown().await
    }
}

/// Pods' figures under the names the local platform gives its processes:
/// `txlab-order-1` is `order-1`, or `order` when it is the role's only pod.
pub fn usage_by_component(pods: BTreeMap<String, PodUse>, window: Duration) -> Usage {
    let prefix = format!("{}-", super::chart::RELEASE);
    // `txlab-order-1` → (`order-1`, `order`).
    let split = |pod: &str| -> (String, String) {
        let bare = pod.strip_prefix(&prefix).unwrap_or(pod);
        let role = bare.rsplit_once('-').map_or(bare, |(r, _)| r);
        (bare.to_string(), role.to_string())
    };
    let mut pods_of: BTreeMap<String, usize> = BTreeMap::new();
    for pod in pods.keys() {
        *pods_of.entry(split(pod).1).or_default() += 1;
    }
    let name = |pod: &str| -> String {
        let (bare, role) = split(pod);
        if pods_of[&role] == 1 {
            role
        } else {
            bare
        }
    };
    let secs = window.as_secs_f64();
    let mut out = Usage::default();
    for (pod, u) in &pods {
        let component = name(pod);
        out.resources.insert(
            component.clone(),
            Use {
                cpu_s: u.cpu_s,
                cores: if secs > 0.0 { u.cpu_s / secs } else { 0.0 },
                rss_mib: u.memory_mib,
            },
        );
        if u.transmit_bytes > 0.0 {
            out.network
                .insert(format!("{component}→*"), u.transmit_bytes as u64);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_named_as_the_local_platform_names_processes() {
        let pod = |cpu_s: f64, tx: f64| PodUse {
            cpu_s,
            memory_mib: 20.0,
            transmit_bytes: tx,
        };
        let pods: BTreeMap<String, PodUse> = [
            ("txlab-order-0".to_string(), pod(2.0, 1000.0)),
            ("txlab-payment-0".to_string(), pod(1.0, 0.0)),
            ("txlab-payment-1".to_string(), pod(0.5, 10.0)),
        ]
        .into();
        let u = usage_by_component(pods, Duration::from_secs(4));
        assert_eq!(
            u.resources.keys().collect::<Vec<_>>(),
            ["order", "payment-0", "payment-1"]
        );
        assert_eq!(u.resources["order"].cores, 0.5);
        assert_eq!(
            u.network,
            [("order→*".to_string(), 1000), ("payment-1→*".to_string(), 10)].into()
        );
    }
}
