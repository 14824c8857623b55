//! A few orders of each cell, as the order service recorded them
//! (`GET /orders/{id}/workflow`), kept in `workflows.json` for the
//! report's timeline chart: the fastest, the median and the slowest
//! decided order, and one of every other outcome.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use txlab_api::order::Workflow;
use txlab_api::Role;

use crate::load::driver::DecidedOrder;
use crate::platform::Endpoints;

/// File name of a cell's sampled workflows.
pub const FILE: &str = "workflows.json";

/// One sampled order: why it was picked, its latency, and its records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sampled {
    /// `fastest`, `median`, `slowest`, or the outcome it stands for.
    pub label: String,
    /// From its intended send to its decision, as the driver measured.
    pub decided_ms: f64,
    pub workflow: Workflow,
}

/// Which orders to show: the fastest, median and slowest, then the first
/// of every outcome not shown yet. Each order once.
pub fn pick(decided: &[DecidedOrder]) -> Vec<(String, DecidedOrder)> {
    let mut by_latency: Vec<&DecidedOrder> = decided.iter().collect();
    by_latency.sort_by_key(|o| o.decided_us);
    let mut picked: Vec<(String, DecidedOrder)> = Vec::new();
    let take = |label: String, o: &DecidedOrder, picked: &mut Vec<(String, DecidedOrder)>| {
        if !picked.iter().any(|(_, p)| p.id == o.id) {
            picked.push((label, o.clone()));
        }
    };
    if let (Some(first), Some(last)) = (by_latency.first(), by_latency.last()) {
        take("fastest".into(), first, &mut picked);
        take("median".into(), by_latency[by_latency.len() / 2], &mut picked);
        take("slowest".into(), last, &mut picked);
    }
    for o in decided {
        if !picked.iter().any(|(_, p)| p.state == o.state) {
            take(o.state.to_string(), o, &mut picked);
        }
    }
    picked
}

/// Fetches the workflows of `decided`'s sampled orders and writes them to
/// `<dir>/workflows.json`. A workflow that cannot be read is left out
/// with a warning: the file is for the reader, the audit does not use it.
pub async fn save(
    client: &reqwest::Client,
    endpoints: &Endpoints,
    decided: &[DecidedOrder],
    dir: &Path,
) -> anyhow::Result<()> {
    let base = endpoints.url(Role::Order)?;
    let mut sampled = Vec::new();
    for (label, order) in pick(decided) {
        let url = format!("{base}/orders/{}/workflow", order.id);
        let read = async {
            let resp = client.get(&url).send().await?.error_for_status()?;
            resp.json::<Workflow>().await
        };
        match read.await {
            Ok(workflow) => sampled.push(Sampled {
                label,
                decided_ms: order.decided_us as f64 / 1000.0,
                workflow,
            }),
            Err(e) => tracing::warn!(%url, error = %e, "reading a sampled workflow failed"),
        }
    }
    let path = dir.join(FILE);
    std::fs::write(&path, serde_json::to_vec_pretty(&sampled)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// A cell's sampled workflows; none when the cell has no such file
/// (results written before there were any).
pub fn read(cell_dir: &Path) -> anyhow::Result<Vec<Sampled>> {
    let path = cell_dir.join(FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use txlab_api::order::OrderState;
    use uuid::Uuid;

    fn order(us: u64, state: OrderState) -> DecidedOrder {
        DecidedOrder {
            id: Uuid::new_v4(),
            state,
            decided_us: us,
        }
    }

    #[test]
    fn picks_the_extremes_the_median_and_one_of_each_other_outcome() {
        let decided = vec![
            order(500, OrderState::Confirmed),
            order(100, OrderState::Confirmed),
            order(900, OrderState::Rejected),
            order(300, OrderState::Confirmed),
            order(700, OrderState::Rejected),
            order(200, OrderState::Cancelled),
        ];
        let picked: Vec<(String, u64)> = pick(&decided)
            .into_iter()
            .map(|(label, o)| (label, o.decided_us))
            .collect();
        assert_eq!(
            picked,
            [
                ("fastest".to_string(), 100),
                ("median".to_string(), 500),
                ("slowest".to_string(), 900),
                ("cancelled".to_string(), 200),
            ],
            "confirmed and rejected are shown already"
        );
        assert!(pick(&[]).is_empty());
        let one = [order(5, OrderState::Confirmed)];
        assert_eq!(pick(&one).len(), 1, "one order is shown once");
    }
}
