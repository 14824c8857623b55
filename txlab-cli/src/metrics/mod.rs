//! Reading the services' Prometheus exposition: the business event counters
//! (retries, compensations, votes, decisions, outcomes) a cell reports as
//! deltas between its start and its end. [`resources`]: CPU and memory of
//! each process of the lab. [`prometheus`]: the same figures from a
//! Prometheus server, for the Kubernetes platform.

pub mod prometheus;
pub mod resources;

use std::collections::BTreeMap;

use txlab_api::Role;

use crate::platform::Endpoints;

/// `txlab_events_total` summed per `kind` label, from exposition text.
pub fn events_by_kind(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("txlab_events_total{")) {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else { continue };
        let kind = labels
            .split(['{', ',', '}'])
            .find_map(|l| l.strip_prefix("kind=\""))
            .and_then(|v| v.strip_suffix('"'));
        if let Some(kind) = kind {
            *out.entry(kind.to_string()).or_default() += value;
        }
    }
    out
}

/// Event counters of all services (every replica) together. A process
/// that cannot be scraped just contributes nothing: counters are
/// informative, the audit is not.
pub async fn scrape(client: &reqwest::Client, endpoints: &Endpoints) -> BTreeMap<String, f64> {
    let mut total = BTreeMap::new();
    for url in Role::ALL.iter().flat_map(|r| endpoints.replica_urls(*r)) {
        let text = match client.get(format!("{url}/metrics")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => continue,
        };
        for (k, v) in events_by_kind(&text) {
            *total.entry(k).or_default() += v;
        }
    }
    total
}

/// `after - before`, per kind; a counter that went down (a restarted
/// service starts from zero) counts from zero.
pub fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, a)| {
            let b = before.get(k).copied().unwrap_or(0.0);
            (k.clone(), if a >= &b { a - b } else { *a })
        })
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_event_counters_by_kind() {
        let text = "# HELP txlab_events_total x\n# TYPE txlab_events_total counter\n\
            txlab_events_total{kind=\"retry\",detail=\"payment\",role=\"order\"} 3\n\
            txlab_events_total{kind=\"retry\",detail=\"shipping\",role=\"order\"} 2\n\
            txlab_events_total{kind=\"compensation\",detail=\"payment\",role=\"order\"} 1\n\
            txlab_http_requests_total{method=\"GET\"} 9\n";
        let m = events_by_kind(text);
        assert_eq!(m.get("retry"), Some(&5.0));
        assert_eq!(m.get("compensation"), Some(&1.0));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn deltas_survive_a_restarted_counter() {
        let before = BTreeMap::from([("retry".to_string(), 10.0), ("step".to_string(), 4.0)]);
        let after = BTreeMap::from([("retry".to_string(), 3.0), ("step".to_string(), 9.0)]);
        assert_eq!(
            delta(&before, &after),
            BTreeMap::from([("retry".to_string(), 3.0), ("step".to_string(), 5.0)])
        );
    }
}
