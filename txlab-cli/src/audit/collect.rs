//! Fetching the services' audit snapshots, and waiting for the system to settle.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{bail, Context};
use txlab_api::admin::{InventorySnapshot, NotificationSnapshot, OrderSnapshot, PaymentSnapshot, ShippingSnapshot, Snapshot};
use txlab_api::Role;

use crate::platform::Endpoints;

/// One snapshot per service, taken after the load.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Snapshots {
    pub order: OrderSnapshot,
    pub payment: PaymentSnapshot,
    pub inventory: InventorySnapshot,
    pub shipping: ShippingSnapshot,
    pub notification: NotificationSnapshot,
}

impl Snapshots {
    /// Settled: every order terminal, the outbox drained, every terminal
    /// order notified. Anything still moving would make the audit unfair.
    pub fn settled(&self) -> bool {
        let notified: HashSet<(uuid::Uuid, &str)> =
            self.notification.notifications.iter().map(|n| (n.order_id, n.kind.as_str())).collect();
        self.order.outbox_unpublished == 0
            && self
                .order
                .orders
                .iter()
                .all(|o| o.state.is_terminal() && notified.contains(&(o.id, o.state.as_str())))
    }
}

async fn fetch(client: &reqwest::Client, endpoints: &Endpoints, role: Role) -> anyhow::Result<Snapshot> {
    let url = format!("{}/admin/audit", endpoints.url(role)?);
    let resp = client.get(&url).send().await.with_context(|| format!("fetching {url}"))?;
    if !resp.status().is_success() {
        bail!("{url} answered {}: {}", resp.status(), resp.text().await.unwrap_or_default());
    }
    resp.json().await.with_context(|| format!("decoding the snapshot from {url}"))
}

pub async fn collect(client: &reqwest::Client, endpoints: &Endpoints) -> anyhow::Result<Snapshots> {
    let mut s = Snapshots::default();
    for role in Role::ALL {
        match fetch(client, endpoints, role).await? {
            Snapshot::Order(o) => s.order = o,
            Snapshot::Payment(p) => s.payment = p,
            Snapshot::Inventory(i) => s.inventory = i,
            Snapshot::Shipping(x) => s.shipping = x,
            Snapshot::Notification(n) => s.notification = n,
        }
    }
    Ok(s)
}

/// Polls until the system has settled or `timeout` passes; returns the last
/// snapshots, how long it took, and whether it settled.
pub async fn quiesce(client: &reqwest::Client, endpoints: &Endpoints, timeout: Duration) -> anyhow::Result<(Snapshots, Duration, bool)> {
    let started = tokio::time::Instant::now();
    loop {
        let s = collect(client, endpoints).await?;
        let waited = started.elapsed();
        if s.settled() {
            return Ok((s, waited, true));
        }
        if waited >= timeout {
            return Ok((s, waited, false));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
