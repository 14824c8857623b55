//! The checkout services as contained child processes, one per role.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use txlab_api::{Role, TxMode};

use super::postgres::{database_name, database_url};
use super::process::{contain, free_ports, log_sink, log_tail, Supervised};
use super::reaper::Reaper;

pub struct Service {
    pub proc: Supervised,
    pub url: String,
    pub log: PathBuf,
}

/// Everything a service needs to know about its surroundings.
pub struct Wiring<'a> {
    pub binary: &'a Path,
    pub admin_url: &'a str,
    pub brokers: &'a str,
    pub method: TxMode,
    pub log_dir: &'a Path,
}

/// Starts all five services and waits until each answers `/health`.
pub async fn start_all(w: &Wiring<'_>, reaper: &mut Reaper) -> anyhow::Result<BTreeMap<Role, Service>> {
    let ports: BTreeMap<Role, u16> = Role::ALL.into_iter().zip(free_ports(Role::ALL.len())?).collect();
    let url = |r: Role| format!("http://127.0.0.1:{}", ports[&r]);
    let mut started = BTreeMap::new();
    for role in Role::ALL {
        let log = w.log_dir.join(format!("{role}.log"));
        let mut cmd = tokio::process::Command::new(w.binary);
        cmd.arg(role.as_str())
            .env("LISTEN_ADDR", format!("127.0.0.1:{}", ports[&role]))
            .env("DATABASE_URL", database_url(w.admin_url, &database_name(role)))
            .env("KAFKA_BROKERS", w.brokers)
            .env("TX_MODE", w.method.as_str())
            .env("PAYMENT_URL", url(Role::Payment))
            .env("INVENTORY_URL", url(Role::Inventory))
            .env("SHIPPING_URL", url(Role::Shipping))
            .env("ORDER_URL", url(Role::Order));
        let (out, err) = log_sink(&log)?;
        cmd.stdout(out).stderr(err);
        contain(&mut cmd, None);
        let proc = Supervised::spawn(role.as_str(), &mut cmd, reaper)?;
        started.insert(role, Service { proc, url: url(role), log });
    }
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for (role, svc) in started.iter_mut() {
        loop {
            if let Some(status) = svc.proc.exited() {
                bail!("the {role} service exited during start-up ({status}); its log says:\n{}", log_tail(&svc.log, 15));
            }
            let healthy = client
                .get(format!("{}/health", svc.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if healthy {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("the {role} service was not healthy within 60 s; log:\n{}", log_tail(&svc.log, 15));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(started)
}
