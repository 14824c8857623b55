//! The checkout services as contained child processes, one per role, kept
//! alive by a supervisor: a service that exits (an injected `crash`, a
//! bug) is started again on the same port with the same environment, like
//! a restarted pod, and the restart is counted.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
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
#[derive(Clone)]
pub struct Wiring {
    pub binary: PathBuf,
    /// The PostgreSQL server as the services reach it (maybe via the proxy).
    pub admin_url: String,
    /// The broker as the services reach it (maybe via the proxy).
    pub brokers: String,
    /// The proxy's port for each service, when calls go through it.
    pub proxied: BTreeMap<Role, u16>,
    pub method: TxMode,
    pub log_dir: PathBuf,
}

/// The running services, shared with the supervisor task.
pub struct Fleet {
    wiring: Wiring,
    ports: BTreeMap<Role, u16>,
    pub services: BTreeMap<Role, Service>,
    /// Restarts per role since the fleet started.
    pub restarts: BTreeMap<Role, u32>,
    /// Services kept down (an injected pod failure) until then.
    pub down_until: BTreeMap<Role, tokio::time::Instant>,
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

impl Fleet {
    /// Where a service reaches `role`: through the proxy when there is one.
    fn peer_url(&self, role: Role) -> String {
        url(self
            .wiring
            .proxied
            .get(&role)
            .copied()
            .unwrap_or(self.ports[&role]))
    }

    /// Where `role` itself listens.
    pub fn address(&self, role: Role) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.ports[&role]).into()
    }

    fn spawn(&self, role: Role, reaper: &Reaper) -> anyhow::Result<Service> {
        let w = &self.wiring;
        let log = w.log_dir.join(format!("{role}.log"));
        let mut cmd = tokio::process::Command::new(&w.binary);
        cmd.arg(role.as_str())
            .env("LISTEN_ADDR", format!("127.0.0.1:{}", self.ports[&role]))
            .env("DATABASE_URL", database_url(&w.admin_url, &database_name(role)))
            .env("KAFKA_BROKERS", &w.brokers)
            .env("TX_MODE", w.method.as_str())
            .env("PAYMENT_URL", self.peer_url(Role::Payment))
            .env("INVENTORY_URL", self.peer_url(Role::Inventory))
            .env("SHIPPING_URL", self.peer_url(Role::Shipping))
            .env("ORDER_URL", self.peer_url(Role::Order));
        let (out, err) = log_sink(&log)?;
        cmd.stdout(out).stderr(err);
        contain(&mut cmd, None);
        let proc = Supervised::spawn(role.as_str(), &mut cmd, reaper)?;
        Ok(Service {
            proc,
            url: url(self.ports[&role]),
            log,
        })
    }

    /// Restarts every service that has exited; returns the roles restarted.
    fn heal(&mut self, reaper: &Reaper) -> Vec<Role> {
        let now = tokio::time::Instant::now();
        self.down_until.retain(|_, until| *until > now);
        let held = self.down_until.clone();
        let dead: Vec<Role> = self
            .services
            .iter_mut()
            .filter(|(role, _)| !held.contains_key(role))
            .filter_map(|(role, s)| s.proc.exited().map(|status| (*role, status)))
            .map(|(role, status)| {
                tracing::warn!(%role, %status, "service exited; restarting it");
                role
            })
            .collect();
        for role in &dead {
            if let Some(old) = self.services.remove(role) {
                reaper.release_group(old.proc.pgid());
            }
            match self.spawn(*role, reaper) {
                Ok(s) => {
                    self.services.insert(*role, s);
                    *self.restarts.entry(*role).or_default() += 1;
                }
                Err(e) => tracing::error!(%role, error = format!("{e:#}"), "restarting the service failed"),
            }
        }
        dead
    }
}

/// The service processes this txlab process started, by role, read from
/// /proc: known from the moment they exist, before the fleet records them
/// (they open their first connections while starting).
pub fn running_services() -> Vec<(u32, Role)> {
    crate::metrics::resources::children_of(std::process::id())
        .into_iter()
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let mut args = cmdline.split(|b| *b == 0);
            let binary = std::str::from_utf8(args.next()?).ok()?;
            if !binary.rsplit('/').next()?.starts_with("txlab-svc") {
                return None;
            }
            let role = std::str::from_utf8(args.next()?).ok()?.parse().ok()?;
            Some((pid, role))
        })
        .collect()
}

/// Starts all five services, waits until each answers `/health`, and keeps
/// them running until the fleet is emptied.
pub async fn start_all(wiring: Wiring, reaper: Arc<Reaper>) -> anyhow::Result<Arc<Mutex<Fleet>>> {
    let ports: BTreeMap<Role, u16> = Role::ALL.into_iter().zip(free_ports(Role::ALL.len())?).collect();
    let mut fleet = Fleet {
        wiring,
        ports,
        services: BTreeMap::new(),
        restarts: BTreeMap::new(),
        down_until: BTreeMap::new(),
    };
    for role in Role::ALL {
        let s = fleet.spawn(role, &reaper)?;
        fleet.services.insert(role, s);
    }
    let fleet = Arc::new(Mutex::new(fleet));
    wait_healthy(&fleet, &Role::ALL, Duration::from_secs(60)).await?;
    tokio::spawn(supervise(Arc::downgrade(&fleet), reaper));
    Ok(fleet)
}

/// Waits until every role in `roles` answers `/health`.
pub async fn wait_healthy(fleet: &Mutex<Fleet>, roles: &[Role], within: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let deadline = tokio::time::Instant::now() + within;
    for role in roles {
        loop {
            let (url, log, exited) = {
                let mut f = fleet.lock().unwrap_or_else(|p| p.into_inner());
                let Some(s) = f.services.get_mut(role) else {
                    bail!("the {role} service is not running")
                };
                (s.url.clone(), s.log.clone(), s.proc.exited())
            };
            if let Some(status) = exited {
                bail!(
                    "the {role} service exited during start-up ({status}); its log says:\n{}",
                    log_tail(&log, 15)
                );
            }
            let healthy = client
                .get(format!("{url}/health"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if healthy {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "the {role} service was not healthy within {} s; log:\n{}",
                    within.as_secs(),
                    log_tail(&log, 15)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Restarts crashed services until the fleet is dropped.
async fn supervise(fleet: std::sync::Weak<Mutex<Fleet>>, reaper: Arc<Reaper>) {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(fleet) = fleet.upgrade() else { return };
        let mut f = fleet.lock().unwrap_or_else(|p| p.into_inner());
        if f.services.is_empty() {
            return;
        }
        f.heal(&reaper);
    }
}
