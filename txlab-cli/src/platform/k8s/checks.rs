//! What every object txlab would apply must pass before it goes anywhere:
//! it reads as its Kubernetes type (k8s-openapi, or txlab's own reading of
//! Chaos Mesh objects), no field of it is unknown to that type, and every
//! workload runs hardened — probes, limits, not as root, a read-only root
//! filesystem, no privilege escalation, every capability dropped.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PodTemplateSpec, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Fails with every problem of `objects` listed, `what` naming them.
pub fn ensure_fit(objects: &[Value], what: &str) -> anyhow::Result<()> {
    let problems = problems(objects);
    anyhow::ensure!(
        problems.is_empty(),
        "{what} fail their checks:\n  {}",
        problems.join("\n  ")
    );
    Ok(())
}

/// The problems of `objects`, each naming the object; empty when all pass.
pub fn problems(objects: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    for o in objects {
        let name = format!(
            "{} {}",
            o["kind"].as_str().unwrap_or("object"),
            o["metadata"]["name"].as_str().unwrap_or("(no name)")
        );
        for p in check(o) {
            out.push(format!("{name}: {p}"));
        }
    }
    out
}

/// Checks one object by its apiVersion and kind.
fn check(o: &Value) -> Vec<String> {
    let api = o["apiVersion"].as_str().unwrap_or_default();
    let kind = o["kind"].as_str().unwrap_or_default();
    match (api, kind) {
        ("v1", "Namespace") => fits::<Namespace>(o),
        ("v1", "ConfigMap") => fits::<ConfigMap>(o),
        ("v1", "Secret") => fits::<Secret>(o),
        ("v1", "ServiceAccount") => fits::<ServiceAccount>(o),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => fits::<ClusterRole>(o),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => fits::<ClusterRoleBinding>(o),
        ("v1", "Service") => fits::<Service>(o),
        ("networking.k8s.io/v1", "NetworkPolicy") => fits::<NetworkPolicy>(o),
        ("autoscaling/v2", "HorizontalPodAutoscaler") => fits::<HorizontalPodAutoscaler>(o),
        ("apps/v1", "StatefulSet") => workload(typed::<StatefulSet>(o).map(|s| s.spec.map(|s| s.template))),
        ("apps/v1", "Deployment") => workload(typed::<Deployment>(o).map(|d| d.spec.map(|s| s.template))),
        ("batch/v1", "Job") => workload(typed::<Job>(o).map(|j| j.spec.map(|s| s.template))),
        ("monitoring.coreos.com/v1", "ServiceMonitor") => fits::<ServiceMonitor>(o),
        (crate::chaos::mesh::API_VERSION, _) => {
            // txlab's reader of Chaos Mesh objects refuses any field it
            // does not enforce, as it does for the chaos/ files.
            let text = serde_yaml::to_string(o).unwrap_or_default();
            crate::chaos::mesh::parse(std::path::Path::new("(rendered)"), &text)
                .err()
                .map(|e| e.to_string())
                .into_iter()
                .collect()
        }
        _ => vec![format!("{api} {kind} is not a kind txlab applies")],
    }
}

/// The problems of reading `o` as `T` (none, or the one [`typed`] names).
fn fits<T: DeserializeOwned + Serialize>(o: &Value) -> Vec<String> {
    typed::<T>(o).err().into_iter().collect()
}

/// `o` read as `T`; an error names the field that does not fit, or the
/// fields `T` does not have (k8s-openapi ignores those, the API server
/// would drop or refuse them).
fn typed<T: DeserializeOwned + Serialize>(o: &Value) -> Result<T, String> {
    let t: T = serde_path_to_error::deserialize(o).map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
    let back = serde_json::to_value(&t).map_err(|e| e.to_string())?;
    let mut unknown = Vec::new();
    lost_fields(o, &back, "", &mut unknown);
    if unknown.is_empty() {
        Ok(t)
    } else {
        Err(format!("unknown fields: {}", unknown.join(", ")))
    }
}

/// Fields of `original` with a value that `back` (its typed round trip)
/// does not have.
fn lost_fields(original: &Value, back: &Value, at: &str, out: &mut Vec<String>) {
    let empty = |v: &Value| match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    };
    match (original, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match b.get(k) {
                    Some(w) => lost_fields(v, w, &path, out),
                    None if !empty(v) => out.push(path),
                    None => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                lost_fields(v, w, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The hardening every pod template must have.
fn workload(template: Result<Option<PodTemplateSpec>, String>) -> Vec<String> {
    let template = match template {
        Ok(Some(t)) => t,
        Ok(None) => return vec!["no spec".into()],
        Err(e) => return vec![e],
    };
    let Some(pod) = template.spec else {
        return vec!["no pod spec in its template".into()];
    };
    let mut out = Vec::new();
    let pod_non_root = pod
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_non_root)
        .unwrap_or(false);
    if pod.containers.is_empty() {
        out.push("no containers".into());
    }
    for c in pod.containers.iter().chain(pod.init_containers.iter().flatten()) {
        let mut miss = |what: &str| out.push(format!("container {}: {what}", c.name));
        // Probes for what serves a port; a Job's load driver serves none.
        let serves = c.ports.as_ref().is_some_and(|p| !p.is_empty());
        if serves && c.readiness_probe.is_none() {
            miss("no readiness probe");
        }
        if serves && c.liveness_probe.is_none() {
            miss("no liveness probe");
        }
        let limits = c.resources.as_ref().and_then(|r| r.limits.as_ref());
        for resource in ["cpu", "memory"] {
            if !limits.is_some_and(|l| l.contains_key(resource)) {
                miss(&format!("no {resource} limit"));
            }
        }
        let sc = c.security_context.clone().unwrap_or_default();
        if !(pod_non_root || sc.run_as_non_root == Some(true)) {
            miss("may run as root (runAsNonRoot is not true)");
        }
        if sc.read_only_root_filesystem != Some(true) {
            miss("root filesystem is writable (readOnlyRootFilesystem is not true)");
        }
        if sc.allow_privilege_escalation != Some(false) {
            miss("allowPrivilegeEscalation is not false");
        }
        let drops_all = sc
            .capabilities
            .as_ref()
            .and_then(|c| c.drop.as_ref())
            .is_some_and(|d| d.iter().any(|x| x == "ALL"));
        if !drops_all {
            miss("capabilities are not all dropped");
        }
    }
    out
}

/// The fields of a Prometheus Operator ServiceMonitor txlab's chart uses
/// (its CRD has no k8s-openapi type).
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ServiceMonitor {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: ServiceMonitorSpec,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ServiceMonitorSpec {
    selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    endpoints: Vec<MonitorEndpoint>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct MonitorEndpoint {
    port: String,
    path: String,
    interval: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn statefulset(container: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "s"},
               "spec": {"serviceName": "s", "selector": {"matchLabels": {"a": "b"}},
                        "template": {"metadata": {"labels": {"a": "b"}},
                                     "spec": {"securityContext": {"runAsNonRoot": true},
                                              "containers": [container]}}}})
    }

    fn hardened() -> Value {
        json!({"name": "c", "image": "i", "ports": [{"containerPort": 8080}],
               "readinessProbe": {"httpGet": {"path": "/health", "port": 8080}},
               "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}},
               "resources": {"limits": {"cpu": "1", "memory": "256Mi"}},
               "securityContext": {"readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                                   "capabilities": {"drop": ["ALL"]}}})
    }

    #[test]
    fn a_hardened_workload_passes_and_each_missing_guard_is_named() {
        assert_eq!(problems(&[statefulset(hardened())]), Vec::<String>::new());
        for (remove, expect) in [
            ("/readinessProbe", "no readiness probe"),
            ("/livenessProbe", "no liveness probe"),
            ("/resources/limits/memory", "no memory limit"),
            (
                "/securityContext/readOnlyRootFilesystem",
                "root filesystem is writable",
            ),
            (
                "/securityContext/capabilities",
                "capabilities are not all dropped",
            ),
        ] {
            let mut c = hardened();
            let (parent, key) = remove.rsplit_once('/').unwrap();
            c.pointer_mut(if parent.is_empty() { "" } else { parent })
                .unwrap()
                .as_object_mut()
                .unwrap()
                .remove(key);
            let p = problems(&[statefulset(c)]);
            assert!(p.len() == 1 && p[0].contains(expect), "without {remove}: {p:?}");
        }
        let mut root = statefulset(hardened());
        root["spec"]["template"]["spec"]["securityContext"] = json!({});
        assert!(problems(&[root])[0].contains("may run as root"));
    }

    #[test]
    fn a_misspelt_or_mistyped_field_is_named_with_its_path() {
        let mut typo = statefulset(hardened());
        typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = json!({});
        typo["spec"]["replica"] = json!(3);
        let p = problems(&[typo]);
        assert!(
            p.iter().any(|p| p.contains("unknown fields: spec.replica")),
            "{p:?}"
        );

        let wrong = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
                           "spec": {"ports": [{"port": "eighty"}]}});
        let p = problems(&[wrong]);
        assert!(p[0].starts_with("Service x: spec.ports[0].port"), "{p:?}");

        let odd = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}});
        assert!(problems(&[odd])[0].contains("not a kind txlab applies"));
    }

    #[test]
    fn chaos_objects_are_read_as_the_local_platform_reads_them() {
        let good = json!({"apiVersion": "chaos-mesh.org/v1alpha1", "kind": "PodChaos",
                          "metadata": {"name": "k", "namespace": "n"},
                          "spec": {"action": "pod-kill", "mode": "one",
                                   "selector": {"labelSelectors": {"app": "inventory"}}}});
        assert_eq!(problems(std::slice::from_ref(&good)), Vec::<String>::new());
        let mut bad = good;
        bad["spec"]["selector"]["labelSelectors"]["app"] = json!("warehouse");
        assert_eq!(problems(&[bad]).len(), 1);
    }
}
