//! Chaos Mesh objects (`chaos-mesh.org/v1alpha1` NetworkChaos and PodChaos)
//! read into [`Fault`]s. The same files are applied as they are on
//! Kubernetes; locally, every field either means something to txlab's
//! enforcers or is refused with the file, line and field, so nothing in a
//! chaos file is silently ignored.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::fault::*;
use crate::spec::yaml::{parse_yaml, SpecError};

pub const API_VERSION: &str = "chaos-mesh.org/v1alpha1";

/// What every object starts with; read first to pick the kind's own type.
#[derive(Deserialize)]
struct Head {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    kind: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Object<S> {
    #[serde(rename = "apiVersion")]
    #[allow(dead_code)] // checked from the head
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: Metadata,
    spec: S,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
    /// Where Chaos Mesh creates it; locally a run is one namespace.
    #[serde(default)]
    #[allow(dead_code)]
    namespace: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    #[allow(dead_code)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Selector {
    /// The run's namespace on Kubernetes; locally every component is in it.
    #[serde(default)]
    #[allow(dead_code)]
    namespaces: Vec<String>,
    #[serde(default)]
    label_selectors: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Target {
    mode: String,
    #[serde(default)]
    value: Option<String>,
    selector: Selector,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NetworkChaosSpec {
    action: String,
    mode: String,
    #[serde(default)]
    value: Option<String>,
    selector: Selector,
    #[serde(default)]
    direction: Option<String>,
    #[serde(default)]
    target: Option<Target>,
    #[serde(default)]
    delay: Option<DelaySpec>,
    #[serde(default)]
    loss: Option<LossSpec>,
    #[serde(default)]
    duplicate: Option<DuplicateSpec>,
    #[serde(default)]
    bandwidth: Option<BandwidthSpec>,
    #[serde(default)]
    duration: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DelaySpec {
    latency: String,
    #[serde(default)]
    jitter: Option<String>,
    #[serde(default)]
    correlation: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LossSpec {
    loss: String,
    #[serde(default)]
    correlation: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DuplicateSpec {
    duplicate: String,
    #[serde(default)]
    correlation: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BandwidthSpec {
    rate: String,
    limit: u64,
    buffer: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PodChaosSpec {
    action: String,
    mode: String,
    #[serde(default)]
    value: Option<String>,
    selector: Selector,
    #[serde(default)]
    duration: Option<String>,
    /// Seconds a killed pod gets to stop; only 0 (SIGKILL) exists locally.
    #[serde(default)]
    grace_period: Option<i64>,
    /// For container-kill; locally a pod is one process.
    #[serde(default)]
    container_names: Vec<String>,
}

/// Reads one chaos object from `path`.
pub fn load(path: &Path) -> Result<Fault, SpecError> {
    parse(path, &crate::spec::yaml::read_spec(path)?)
}

/// Reads one chaos object from `text` (read from `path`).
pub fn parse(path: &Path, text: &str) -> Result<Fault, SpecError> {
    let invalid = |message: String| SpecError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let head: Head = parse_yaml(path, text)?;
    match head.api_version.as_deref() {
        Some(API_VERSION) => {}
        other => {
            return Err(invalid(format!(
                "apiVersion: expected {API_VERSION}, found {}",
                other.unwrap_or("nothing")
            )))
        }
    }
    let fault = match head.kind.as_deref() {
        Some("NetworkChaos") => {
            let o: Object<NetworkChaosSpec> = parse_yaml(path, text)?;
            network(o.metadata.name, o.spec)
        }
        Some("PodChaos") => {
            let o: Object<PodChaosSpec> = parse_yaml(path, text)?;
            pod(o.metadata.name, o.spec)
        }
        other => Err(format!(
            "kind: txlab enforces NetworkChaos and PodChaos, not {}",
            other.unwrap_or("nothing")
        )),
    };
    let mut fault = fault.map_err(invalid)?;
    fault.source = parse_yaml(path, text)?;
    Ok(fault)
}

fn network(name: String, s: NetworkChaosSpec) -> Result<Fault, String> {
    let selector = components(&s.selector, "spec.selector")?;
    let picked = pick(&s.mode, s.value.as_deref(), "spec")?;
    let direction = match s.direction.as_deref() {
        None | Some("to") => Direction::To,
        Some("from") => Direction::From,
        Some("both") => Direction::Both,
        Some(other) => {
            return Err(format!(
                "spec.direction: expected to, from or both, found {other}"
            ))
        }
    };
    let target = match &s.target {
        None => Vec::new(),
        Some(t) => {
            // Every replica of the target: locally a link reaches them all alike.
            if pick(&t.mode, t.value.as_deref(), "spec.target")? != Pick::All {
                return Err(
                    "spec.target.mode: the local proxy faults every replica of a target; use all".into(),
                );
            }
            components(&t.selector, "spec.target.selector")?
        }
    };
    let given = [
        ("delay", s.delay.is_some()),
        ("loss", s.loss.is_some()),
        ("duplicate", s.duplicate.is_some()),
        ("bandwidth", s.bandwidth.is_some()),
    ];
    // Which of delay/loss/duplicate/bandwidth each action may carry.
    let allowed: &[&str] =
        match s.action.as_str() {
            "delay" => &["delay"],
            "loss" => &["loss"],
            "duplicate" => &["duplicate"],
            "bandwidth" => &["bandwidth"],
            "netem" => &["delay", "loss", "duplicate"],
            "partition" => &[],
            "corrupt" => return Err(
                "spec.action: corrupt is not enforced locally (TCP's checksums turn it into loss; use loss)"
                    .into(),
            ),
            other => {
                return Err(format!(
                "spec.action: expected delay, loss, duplicate, bandwidth, netem or partition, found {other}"
            ))
            }
        };
    for (field, present) in given {
        if present && !allowed.contains(&field) {
            return Err(format!("spec.{field}: does not apply to action {}", s.action));
        }
    }
    if let Some(&missing) = allowed
        .iter()
        .find(|f| s.action != "netem" && !given.iter().any(|(g, present)| g == *f && *present))
    {
        return Err(format!("spec.{missing}: required by action {}", s.action));
    }
    let effect = match s.action.as_str() {
        "partition" => NetworkEffect::Partition,
        "bandwidth" => {
            let b = s.bandwidth.as_ref().expect("checked above");
            NetworkEffect::Bandwidth(Bandwidth {
                bytes_per_s: rate(&b.rate).map_err(|e| format!("spec.bandwidth.rate: {e}"))?,
                buffer: b.buffer,
                limit: b.limit,
            })
        }
        _ => {
            let delay = s
                .delay
                .as_ref()
                .map(|d| -> Result<Delay, String> {
                    Ok(Delay {
                        latency: duration(&d.latency).map_err(|e| format!("spec.delay.latency: {e}"))?,
                        jitter: d
                            .jitter
                            .as_deref()
                            .map(duration)
                            .transpose()
                            .map_err(|e| format!("spec.delay.jitter: {e}"))?
                            .unwrap_or_default(),
                        correlation: percent_or_zero(d.correlation.as_deref(), "spec.delay.correlation")?,
                    })
                })
                .transpose()?;
            let loss = s
                .loss
                .as_ref()
                .map(|l| chance(&l.loss, l.correlation.as_deref(), "spec.loss"))
                .transpose()?;
            let duplicate = s
                .duplicate
                .as_ref()
                .map(|d| chance(&d.duplicate, d.correlation.as_deref(), "spec.duplicate"))
                .transpose()?;
            if delay.is_none() && loss.is_none() && duplicate.is_none() {
                return Err("spec: netem needs at least one of delay, loss, duplicate".into());
            }
            NetworkEffect::Shape {
                delay,
                loss,
                duplicate,
            }
        }
    };
    Ok(Fault {
        source: serde_json::Value::Null,
        name,
        duration: optional_duration(s.duration.as_deref())?,
        kind: FaultKind::Network(NetworkFault {
            selector,
            pick: picked,
            direction,
            target,
            effect,
        }),
    })
}

fn pod(name: String, s: PodChaosSpec) -> Result<Fault, String> {
    let selector = components(&s.selector, "spec.selector")?;
    if let Some(c) = selector.iter().find(|c| !matches!(c, Component::Service(_))) {
        return Err(format!(
            "spec.selector: PodChaos on {c} is not enforced locally (the lab's own infrastructure is not a pod it can restart); select a service"
        ));
    }
    let action = match s.action.as_str() {
        "pod-kill" | "container-kill" => PodAction::Kill,
        "pod-failure" => PodAction::Failure,
        other => {
            return Err(format!(
                "spec.action: expected pod-kill, pod-failure or container-kill, found {other}"
            ))
        }
    };
    if s.action == "container-kill" && s.container_names.is_empty() {
        return Err("spec.containerNames: required by container-kill".into());
    }
    if s.action != "container-kill" && !s.container_names.is_empty() {
        return Err(format!(
            "spec.containerNames: does not apply to action {}",
            s.action
        ));
    }
    if s.grace_period.is_some_and(|g| g != 0) {
        return Err("spec.gracePeriod: only 0 (an abrupt kill) is enforced locally".into());
    }
    let duration = optional_duration(s.duration.as_deref())?;
    if action == PodAction::Failure && duration.is_none() {
        return Err("spec.duration: pod-failure needs one (how long the pod stays down)".into());
    }
    Ok(Fault {
        source: serde_json::Value::Null,
        name,
        duration,
        kind: FaultKind::Pod(PodFault {
            selector,
            pick: pick(&s.mode, s.value.as_deref(), "spec")?,
            action,
        }),
    })
}

fn components(s: &Selector, at: &str) -> Result<Vec<Component>, String> {
    if s.label_selectors.is_empty() {
        return Err(format!(
            "{at}.labelSelectors: name the component, e.g. app: payment"
        ));
    }
    let mut out = Vec::new();
    for (key, value) in &s.label_selectors {
        if key != "app" {
            return Err(format!(
                "{at}.labelSelectors.{key}: the lab's components are selected by their app label only"
            ));
        }
        let c = Component::from_label(value).ok_or_else(|| {
            let known: Vec<&str> = Component::ALL.iter().map(|c| c.label()).collect();
            format!(
                "{at}.labelSelectors.app: no component {value} (known: {})",
                known.join(", ")
            )
        })?;
        out.push(c);
    }
    Ok(out)
}

fn pick(mode: &str, value: Option<&str>, at: &str) -> Result<Pick, String> {
    let p = match mode {
        "all" => Pick::All,
        "one" => Pick::One,
        "fixed" | "fixed-percent" | "random-max-percent" => {
            return Err(format!(
                "{at}.mode: {mode} is not enforced locally yet; use one or all"
            ))
        }
        other => return Err(format!("{at}.mode: expected one or all, found {other}")),
    };
    if value.is_some_and(|v| !v.is_empty()) {
        return Err(format!("{at}.value: does not apply to mode {mode}"));
    }
    Ok(p)
}

fn chance(probability: &str, correlation: Option<&str>, at: &str) -> Result<Chance, String> {
    Ok(Chance {
        probability: percent(probability).map_err(|e| format!("{at}: {e}"))?,
        correlation: percent_or_zero(correlation, &format!("{at}.correlation"))?,
    })
}

fn percent_or_zero(text: Option<&str>, at: &str) -> Result<f64, String> {
    text.map(percent)
        .transpose()
        .map(Option::unwrap_or_default)
        .map_err(|e| format!("{at}: {e}"))
}

/// Chaos Mesh writes percentages as strings: "25" or "0.5" (percent).
fn percent(text: &str) -> Result<f64, String> {
    let p: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("expected a percentage such as \"25\", found {text:?}"))?;
    if !(0.0..=100.0).contains(&p) {
        return Err(format!("{p} is not a percentage between 0 and 100"));
    }
    Ok(p / 100.0)
}

fn optional_duration(text: Option<&str>) -> Result<Option<Duration>, String> {
    text.map(duration)
        .transpose()
        .map_err(|e| format!("spec.duration: {e}"))
}

/// A Go duration as Chaos Mesh takes it: "10ms", "1.5s", "1m30s".
pub fn duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("expected a duration such as \"10ms\" or \"1m30s\", found {text:?}");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let value: f64 = rest[..number_end].parse().map_err(|_| bad())?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * seconds;
        rest = &rest[unit_end..];
    }
    Ok(Duration::from_secs_f64(total))
}

/// A tc rate as Chaos Mesh takes it, in bytes per second: "bps" units are
/// bytes, "bit" units are bits, prefixes are powers of 1000.
pub fn rate(text: &str) -> Result<f64, String> {
    let t = text.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let value: f64 = t[..split]
        .parse()
        .map_err(|_| format!("expected a rate such as \"1mbps\", found {text:?}"))?;
    let per_byte = match &t[split..] {
        "bps" => 1.0,
        "kbps" => 1e3,
        "mbps" => 1e6,
        "gbps" => 1e9,
        "tbps" => 1e12,
        "" | "bit" => 1.0 / 8.0,
        "kbit" => 1e3 / 8.0,
        "mbit" => 1e6 / 8.0,
        "gbit" => 1e9 / 8.0,
        "tbit" => 1e12 / 8.0,
        unit => {
            return Err(format!(
                "unknown rate unit {unit:?} (bps, kbps, mbps, gbps, tbps or kbit, mbit...)"
            ))
        }
    };
    let bytes = value * per_byte;
    if bytes <= 0.0 {
        return Err(format!("a rate must be above zero, found {text:?}"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use txlab_api::Role;

    fn read(text: &str) -> Result<Fault, String> {
        parse(Path::new("chaos/x.yaml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn reads_a_delay_with_jitter_between_two_services() {
        let f = read(
            "apiVersion: chaos-mesh.org/v1alpha1\nkind: NetworkChaos\nmetadata: {name: slow-payment}\n\
             spec:\n  action: delay\n  mode: all\n  selector: {labelSelectors: {app: order}}\n  direction: both\n\
             \x20 target: {mode: all, selector: {labelSelectors: {app: payment}}}\n\
             \x20 delay: {latency: 50ms, jitter: 10ms, correlation: \"25\"}\n  duration: 30s\n",
        )
        .unwrap();
        assert_eq!(f.name, "slow-payment");
        assert_eq!(f.duration, Some(Duration::from_secs(30)));
        let FaultKind::Network(n) = f.kind else {
            panic!("{f:?}")
        };
        assert_eq!(n.selector, vec![Component::Service(Role::Order)]);
        assert_eq!(n.target, vec![Component::Service(Role::Payment)]);
        assert_eq!(n.direction, Direction::Both);
        assert_eq!(
            n.effect,
            NetworkEffect::Shape {
                delay: Some(Delay {
                    latency: Duration::from_millis(50),
                    jitter: Duration::from_millis(10),
                    correlation: 0.25
                }),
                loss: None,
                duplicate: None
            }
        );
    }

    #[test]
    fn reads_bandwidth_and_pod_kill() {
        let f = read(
            "apiVersion: chaos-mesh.org/v1alpha1\nkind: NetworkChaos\nmetadata: {name: bw}\nspec:\n  action: bandwidth\n  mode: one\n\
             \x20 selector: {labelSelectors: {app: postgres}}\n  bandwidth: {rate: 1mbps, limit: 20971520, buffer: 10000}\n",
        )
        .unwrap();
        let FaultKind::Network(n) = f.kind else { panic!() };
        assert_eq!(
            n.effect,
            NetworkEffect::Bandwidth(Bandwidth {
                bytes_per_s: 1e6,
                buffer: 10000,
                limit: 20971520
            })
        );
        let k = read(
            "apiVersion: chaos-mesh.org/v1alpha1\nkind: PodChaos\nmetadata: {name: k}\nspec: {action: pod-kill, mode: one, selector: {labelSelectors: {app: inventory}}}\n",
        )
        .unwrap();
        assert_eq!(
            k.kind,
            FaultKind::Pod(PodFault {
                selector: vec![Component::Service(Role::Inventory)],
                pick: Pick::One,
                action: PodAction::Kill
            })
        );
    }

    #[test]
    fn refuses_what_it_would_not_enforce_and_says_where() {
        let head = "apiVersion: chaos-mesh.org/v1alpha1\nkind: NetworkChaos\nmetadata: {name: x}\nspec:\n  mode: all\n  selector: {labelSelectors: {app: order}}\n";
        let cases = [
            // An unknown (or not enforced) field names its line and path.
            (
                format!("{head}  action: delay\n  delay: {{latency: 1ms, reorder: {{reorder: \"5\"}}}}\n"),
                "chaos/x.yaml:8:",
            ),
            (
                format!("{head}  action: delay\n  delay: {{latency: 1ms, reorder: {{reorder: \"5\"}}}}\n"),
                "spec.delay.reorder: unknown field `reorder`",
            ),
            (
                format!("{head}  action: corrupt\n"),
                "corrupt is not enforced locally",
            ),
            (
                format!("{head}  action: delay\n"),
                "spec.delay: required by action delay",
            ),
            (
                format!("{head}  action: loss\n  loss: {{loss: \"150\"}}\n"),
                "not a percentage",
            ),
            (
                format!("{head}  action: delay\n  delay: {{latency: 10 ms}}\n"),
                "spec.delay.latency: expected a duration",
            ),
            (
                format!("{head}  action: partition\n  delay: {{latency: 1ms}}\n"),
                "spec.delay: does not apply to action partition",
            ),
            (
                format!("{head}  action: partition\n  externalTargets: [example.org]\n"),
                "unknown field `externalTargets`",
            ),
            (
                head.replace("app: order", "app: redis") + "  action: partition\n",
                "no component redis",
            ),
            (
                head.replace("mode: all", "mode: fixed-percent") + "  action: partition\n",
                "fixed-percent is not enforced locally",
            ),
            (
                head.replace("NetworkChaos", "StressChaos") + "  action: partition\n",
                "not StressChaos",
            ),
        ];
        for (text, expected) in cases {
            let err = read(&text).unwrap_err();
            assert!(err.contains(expected), "{expected:?} not in {err:?}");
        }
        let down = "apiVersion: chaos-mesh.org/v1alpha1\nkind: PodChaos\nmetadata: {name: d}\nspec: {action: pod-failure, mode: one, selector: {labelSelectors: {app: payment}}}\n";
        assert!(read(down).unwrap_err().contains("pod-failure needs one"));
        let pg = "apiVersion: chaos-mesh.org/v1alpha1\nkind: PodChaos\nmetadata: {name: d}\nspec: {action: pod-kill, mode: one, selector: {labelSelectors: {app: postgres}}}\n";
        assert!(read(pg).unwrap_err().contains("PodChaos on postgres"));
    }

    #[test]
    fn parses_go_durations_and_tc_rates() {
        assert_eq!(duration("10ms").unwrap(), Duration::from_millis(10));
        assert_eq!(duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(duration("250us").unwrap(), Duration::from_micros(250));
        for bad in ["", "10", "ms", "10 ms", "1x"] {
            assert!(duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(rate("1mbps").unwrap(), 1e6);
        assert_eq!(rate("8kbit").unwrap(), 1e3);
        assert_eq!(rate("100bps").unwrap(), 100.0);
        assert!(rate("0mbps").is_err());
        assert!(rate("1mb").is_err());
    }
}
