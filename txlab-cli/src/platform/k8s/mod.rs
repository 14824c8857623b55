//! The Kubernetes platform, for when one machine is too small: the workload
//! from charts/txlab (rendered with `helm template`, [`chart`]), every
//! object checked against its Kubernetes type first ([`checks`]), applied
//! with kube-rs server-side apply into a namespace per run, chaos through
//! Chaos Mesh from the same chaos/ files, teardown by the run's label
//! ([`cluster`]); [`lab`] puts these together as a [`crate::platform::Platform`]
//! for txlab running inside the cluster.

pub mod chart;
pub mod checks;
pub mod cluster;
pub mod lab;
pub mod runner;

use std::fmt::Write as _;

use serde_json::Value;
use txlab_api::TxMode;

use crate::spec::Plan;

/// One deployment of a run: a method at a replica count, and its cells.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub method: TxMode,
    pub replicas: u32,
    pub cells: Vec<String>,
    pub objects: Vec<Value>,
}

/// Everything a run applies, in the order it applies it.
#[derive(Debug, Clone)]
pub struct RunObjects {
    pub namespace: Value,
    pub deployments: Vec<Deployment>,
    /// Each chaos object once, by its name, with the cells it runs in.
    pub chaos: Vec<(Value, Vec<String>)>,
}

impl RunObjects {
    /// Renders and checks every object of `plan` for run `run_id`; the
    /// checks' problems are an error listing them all.
    pub fn of(plan: &Plan, chart: &chart::Chart, scope: &RunScope) -> anyhow::Result<RunObjects> {
        let mut deployments: Vec<Deployment> = Vec::new();
        let mut chaos: Vec<(Value, Vec<String>)> = Vec::new();
        for cell in &plan.cells {
            match deployments
                .iter_mut()
                .find(|d| d.method == cell.method && d.replicas == cell.replicas)
            {
                Some(d) => d.cells.push(cell.id.clone()),
                None => deployments.push(Deployment {
                    method: cell.method,
                    replicas: cell.replicas,
                    cells: vec![cell.id.clone()],
                    objects: chart.render(
                        &scope.namespace,
                        &chart::DeploymentValues::new(&scope.run, cell.method, cell.replicas),
                    )?,
                }),
            }
            for f in &cell.chaos.faults {
                match chaos
                    .iter_mut()
                    .find(|(o, _)| o["metadata"]["name"] == f.name.as_str())
                {
                    Some((_, cells)) => cells.push(cell.id.clone()),
                    None => chaos.push((scope.chaos_object(&f.source), vec![cell.id.clone()])),
                }
            }
        }
        let objects = RunObjects {
            namespace: scope.namespace_object(),
            deployments,
            chaos,
        };
        checks::ensure_fit(&objects.all(), "the rendered objects")?;
        Ok(objects)
    }

    /// Every object, the namespace first.
    pub fn all(&self) -> Vec<Value> {
        std::iter::once(self.namespace.clone())
            .chain(self.deployments.iter().flat_map(|d| d.objects.iter().cloned()))
            .chain(self.chaos.iter().map(|(o, _)| o.clone()))
            .collect()
    }

    /// The objects as one YAML stream, each group under a comment saying
    /// when it is applied.
    pub fn to_yaml(&self) -> anyhow::Result<String> {
        let mut out = String::new();
        let mut doc = |comment: &str, o: &Value| -> anyhow::Result<()> {
            if !comment.is_empty() {
                let _ = writeln!(out, "# {comment}");
            }
            out += "---\n";
            out += &serde_yaml::to_string(o)?;
            Ok(())
        };
        doc(
            "the run's namespace, created first and deleted last",
            &self.namespace,
        )?;
        for (i, d) in self.deployments.iter().enumerate() {
            let comment = format!(
                "deployment {} of {}: {} with {} replica(s), for cells {}",
                i + 1,
                self.deployments.len(),
                d.method,
                d.replicas,
                d.cells.join(", ")
            );
            for (k, o) in d.objects.iter().enumerate() {
                doc(if k == 0 { &comment } else { "" }, o)?;
            }
        }
        for (o, cells) in &self.chaos {
            doc(&format!("chaos, applied during cells {}", cells.join(", ")), o)?;
        }
        Ok(out)
    }
}

/// A run's place in a cluster: its namespace and the value of its label
/// on everything it creates.
#[derive(Debug, Clone, PartialEq)]
pub struct RunScope {
    pub namespace: String,
    pub run: String,
    /// Where PostgreSQL and the broker run (`app: postgres`, `app: kafka`),
    /// for chaos aimed at them.
    pub infra_namespace: String,
}

/// Where the kind cluster of deploy/kind/ runs PostgreSQL and Kafka.
pub const INFRA_NAMESPACE: &str = "txlab-infra";

impl RunScope {
    pub fn of(run_id: &str) -> RunScope {
        RunScope {
            namespace: chart::namespace_for(run_id),
            run: chart::label_value(run_id),
            infra_namespace: INFRA_NAMESPACE.to_string(),
        }
    }

    /// The label selector of the run's objects.
    pub fn selector(&self) -> String {
        format!("{}={}", chart::RUN_LABEL, self.run)
    }

    /// The run's namespace, labelled with the run.
    pub fn namespace_object(&self) -> Value {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": self.namespace, "labels": {chart::RUN_LABEL: self.run}},
        })
    }

    /// A chaos object as this run applies it: in the run's namespace and
    /// labelled with the run; each selector names the namespace its pods
    /// live in (Chaos Mesh would look in the object's own): the run's for
    /// the services and the load, the infrastructure's for the database and
    /// the broker.
    pub fn chaos_object(&self, source: &Value) -> Value {
        let mut o = source.clone();
        o["metadata"]["namespace"] = serde_json::json!(self.namespace);
        o["metadata"]["labels"][chart::RUN_LABEL] = serde_json::json!(self.run);
        for selector in ["/spec/selector", "/spec/target/selector"] {
            if let Some(s) = o.pointer_mut(selector).filter(|s| s.is_object()) {
                let infra = matches!(s["labelSelectors"]["app"].as_str(), Some("postgres" | "kafka"));
                let ns = if infra {
                    &self.infra_namespace
                } else {
                    &self.namespace
                };
                s["namespaces"] = serde_json::json!([ns]);
            }
        }
        o
    }
}
