//! Prometheus's HTTP API (`/api/v1/query`): where a cell on Kubernetes gets
//! CPU, memory and network per pod (cAdvisor's container series) and the
//! services' event counters, instead of reading /proc and scraping each
//! process as the local platform does.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde::Deserialize;

/// A Prometheus server, by its base URL (e.g. `http://127.0.0.1:9090`).
#[derive(Debug, Clone)]
pub struct Prometheus {
    base: String,
    http: reqwest::Client,
}

/// One series of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A pod's use of resources over a cell.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodUse {
    pub cpu_s: f64,
    pub memory_mib: f64,
    pub transmit_bytes: f64,
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(rename = "errorType", default)]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    result_type: String,
    result: Vec<Series>,
}

#[derive(Deserialize)]
struct Series {
    metric: BTreeMap<String, String>,
    /// `[unix seconds, "value"]`.
    value: (f64, String),
}

fn unix_s(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

/// A label value inside a PromQL string literal.
fn quoted(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

impl Prometheus {
    pub fn new(base: &str) -> Prometheus {
        Prometheus {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("a client with a timeout builds"),
        }
    }

    /// An instant query at `at` (now when None).
    pub async fn query(&self, promql: &str, at: Option<SystemTime>) -> anyhow::Result<Vec<Sample>> {
        let mut form = vec![("query", promql.to_string())];
        if let Some(t) = at {
            form.push(("time", format!("{:.3}", unix_s(t))));
        }
        let url = format!("{}/api/v1/query", self.base);
        let resp = self
            .http
            .post(&url)
            .form(&form)
            .send()
            .await
            .with_context(|| format!("asking Prometheus at {url}"))?;
        let code = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let answer: Answer = serde_json::from_str(&text).with_context(|| {
            format!("Prometheus answered {code} with something else than its API's JSON: {text}")
        })?;
        if answer.status != "success" {
            bail!(
                "Prometheus refused `{promql}`: {} ({})",
                answer.error.unwrap_or_default(),
                answer.error_type.unwrap_or_default()
            );
        }
        let data = answer.data.context("Prometheus answered success without data")?;
        if data.result_type != "vector" {
            bail!("`{promql}` gave a {}, not an instant vector", data.result_type);
        }
        data.result
            .into_iter()
            .map(|s| {
                let value = s
                    .value
                    .1
                    .parse::<f64>()
                    .with_context(|| format!("a sample of `{promql}` is not a number: {}", s.value.1))?;
                Ok(Sample {
                    labels: s.metric,
                    value,
                })
            })
            .collect()
    }

    /// `sum by (label) (expr)` at `at`, keyed by the label's values.
    pub async fn sum_by(
        &self,
        expr: &str,
        label: &str,
        at: Option<SystemTime>,
    ) -> anyhow::Result<BTreeMap<String, f64>> {
        let samples = self.query(&format!("sum by ({label}) ({expr})"), at).await?;
        Ok(samples
            .into_iter()
            .map(|s| (s.labels.get(label).cloned().unwrap_or_default(), s.value))
            .collect())
    }

    /// The services' event counters over `[from, to]`, per kind: the
    /// counters at `to` less those at `from`, as the local platform takes
    /// them from each process. (Not `increase()`: a counter's series starts
    /// with its first event, which `increase()` would not count.)
    pub async fn events(
        &self,
        namespace: &str,
        from: SystemTime,
        to: SystemTime,
    ) -> anyhow::Result<BTreeMap<String, f64>> {
        let expr = format!("txlab_events_total{{namespace={}}}", quoted(namespace));
        let before = self.sum_by(&expr, "kind", Some(from)).await?;
        let after = self.sum_by(&expr, "kind", Some(to)).await?;
        Ok(super::delta(&before, &after))
    }

    /// CPU seconds, working-set memory and bytes sent per pod
    /// of `namespace` over `[from, to]`, from cAdvisor's container series
    /// (the pod's own cgroup, not the pause container's): counters read at
    /// both ends, as for the events. Only pods with a sample inside the
    /// window are reported: a cell shorter than the kubelet's scrape
    /// interval has no figures rather than zeros.
    pub async fn pod_usage(
        &self,
        namespace: &str,
        from: SystemTime,
        to: SystemTime,
    ) -> anyhow::Result<BTreeMap<String, PodUse>> {
        let ns = quoted(namespace);
        let containers = format!("namespace={ns},container!=\"\",container!=\"POD\"");
        let cpu = format!("container_cpu_usage_seconds_total{{{containers}}}");
        let sampled = self
            .query(&format!("max by (pod) (timestamp({cpu}))"), Some(to))
            .await?;
        let mut out: BTreeMap<String, PodUse> = sampled
            .into_iter()
            .filter(|s| s.value > unix_s(from))
            .filter_map(|s| s.labels.get("pod").cloned())
            .map(|pod| (pod, PodUse::default()))
            .collect();
        // Network counters belong to the pod's sandbox, not a container.
        let counters: [(String, SetFigure); 2] = [
            (cpu, |u, v| u.cpu_s = v),
            (
                format!("container_network_transmit_bytes_total{{namespace={ns}}}"),
                |u, v| u.transmit_bytes = v,
            ),
        ];
        for (expr, set) in counters {
            let before = self.sum_by(&expr, "pod", Some(from)).await?;
            let after = self.sum_by(&expr, "pod", Some(to)).await?;
            for (pod, v) in super::delta(&before, &after) {
                if let Some(u) = out.get_mut(&pod) {
                    set(u, v);
                }
            }
        }
        let memory = format!("container_memory_working_set_bytes{{{containers}}}");
        for (pod, bytes) in self.sum_by(&memory, "pod", Some(to)).await? {
            if let Some(u) = out.get_mut(&pod) {
                u.memory_mib = bytes / (1024.0 * 1024.0);
            }
        }
        Ok(out)
    }
}

/// Puts one queried figure into a pod's use.
type SetFigure = fn(&mut PodUse, f64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_valid_promql_literals() {
        assert_eq!(quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
