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

use super::process::{contain, free_ports, log_sink, log_tail, Supervised};
use super::reaper::Reaper;
use crate::chaos::Component;
use crate::platform::databases::{database_name, database_url};

pub struct Service {
    pub proc: Supervised,
    pub url: String,
    pub log: PathBuf,
}

/// One process of a role: replica `index` of its role's replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instance {
    pub role: Role,
    pub index: u32,
}

impl Instance {
    /// Its name in logs and results: the role alone when the role has one
    /// replica (as every result before replicas named it), else `order-1`.
    pub fn name(&self, replicas: u32) -> String {
        if replicas == 1 {
            self.role.to_string()
        } else {
            format!("{}-{}", self.role, self.index)
        }
    }
}

/// Everything a service needs to know about its surroundings.
#[derive(Clone)]
pub struct Wiring {
    pub binary: PathBuf,
    /// The PostgreSQL server's admin URL (direct).
    pub admin_url: String,
    /// The broker as the services reach it (maybe via the proxy).
    pub brokers: String,
    /// The proxy's port for each link (sender role → service or
    /// PostgreSQL), when calls go through it.
    pub links: BTreeMap<(Role, Component), u16>,
    pub method: TxMode,
    /// Processes per role; more than one needs the proxy to balance them.
    pub replicas: u32,
    pub log_dir: PathBuf,
}

/// The running services, shared with the supervisor task.
pub struct Fleet {
    wiring: Wiring,
    ports: BTreeMap<Instance, u16>,
    pub services: BTreeMap<Instance, Service>,
    /// Restarts per role since the fleet started.
    pub restarts: BTreeMap<Role, u32>,
    /// Processes kept down (an injected pod failure) until then.
    pub down_until: BTreeMap<Instance, tokio::time::Instant>,
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

impl Fleet {
    pub fn replicas(&self) -> u32 {
        self.wiring.replicas
    }

    /// Every process of `role`.
    pub fn instances(&self, role: Role) -> impl Iterator<Item = Instance> {
        (0..self.wiring.replicas).map(move |index| Instance { role, index })
    }

    /// Where `from` reaches `role`: through its own port of the proxy
    /// when there is one.
    fn peer_url(&self, from: Role, role: Role) -> String {
        url(self
            .wiring
            .links
            .get(&(from, Component::Service(role)))
            .copied()
            .unwrap_or(self.ports[&Instance { role, index: 0 }]))
    }

    /// Where `role` reaches its database.
    fn database_url(&self, role: Role) -> String {
        let w = &self.wiring;
        let admin = match w.links.get(&(role, Component::Postgres)) {
            Some(&port) => super::with_port(&w.admin_url, port),
            None => w.admin_url.clone(),
        };
        database_url(&admin, &database_name(role))
    }

    /// Where each process of `role` listens.
    pub fn addresses(&self, role: Role) -> Vec<std::net::SocketAddr> {
        self.instances(role)
            .map(|i| ([127, 0, 0, 1], self.ports[&i]).into())
            .collect()
    }

    /// Where the log of `instance` goes.
    pub fn log_path(&self, instance: Instance) -> PathBuf {
        log_path(&self.wiring.log_dir, instance, self.wiring.replicas)
    }

    fn spawn(&self, instance: Instance, reaper: &Reaper) -> anyhow::Result<Service> {
        let w = &self.wiring;
        let role = instance.role;
        let log = self.log_path(instance);
        let port = self.ports[&instance];
        let mut cmd = tokio::process::Command::new(&w.binary);
        cmd.arg(role.as_str())
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", self.database_url(role))
            .env("KAFKA_BROKERS", &w.brokers)
            .env("TX_MODE", w.method.as_str())
            .env("REPLICA_INDEX", instance.index.to_string())
            .env("REPLICA_COUNT", w.replicas.to_string())
            .env("PAYMENT_URL", self.peer_url(role, Role::Payment))
            .env("INVENTORY_URL", self.peer_url(role, Role::Inventory))
            .env("SHIPPING_URL", self.peer_url(role, Role::Shipping))
            .env("ORDER_URL", self.peer_url(role, Role::Order));
        let (out, err) = log_sink(&log)?;
        cmd.stdout(out).stderr(err);
        contain(&mut cmd, None);
        let proc = Supervised::spawn(&instance.name(w.replicas), &mut cmd, reaper)?;
        Ok(Service {
            proc,
            url: url(port),
            log,
        })
    }

    /// Restarts every process that has exited; returns the ones restarted.
    fn heal(&mut self, reaper: &Reaper) -> Vec<Instance> {
        let now = tokio::time::Instant::now();
        self.down_until.retain(|_, until| *until > now);
        let held = self.down_until.clone();
        let replicas = self.wiring.replicas;
        let dead: Vec<Instance> = self
            .services
            .iter_mut()
            .filter(|(instance, _)| !held.contains_key(instance))
            .filter_map(|(instance, s)| s.proc.exited().map(|status| (*instance, status)))
            .map(|(instance, status)| {
                tracing::warn!(service = instance.name(replicas), %status, "service exited; restarting it");
                instance
            })
            .collect();
        for instance in &dead {
            if let Some(old) = self.services.remove(instance) {
                reaper.release_group(old.proc.pgid());
            }
            match self.spawn(*instance, reaper) {
                Ok(s) => {
                    self.services.insert(*instance, s);
                    *self.restarts.entry(instance.role).or_default() += 1;
                }
                Err(e) => tracing::error!(
                    service = instance.name(replicas),
                    error = format!("{e:#}"),
                    "restarting the service failed"
                ),
            }
        }
        dead
    }
}

/// Where a process's log goes: `<role>.log`, or `<role>-<index>.log` when
/// its role has several replicas.
pub fn log_path(dir: &std::path::Path, instance: Instance, replicas: u32) -> PathBuf {
    dir.join(format!("{}.log", instance.name(replicas)))
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

/// Starts every process of the five services, waits until each answers
/// `/health`, and keeps them running until the fleet is emptied.
pub async fn start_all(wiring: Wiring, reaper: Arc<Reaper>) -> anyhow::Result<Arc<Mutex<Fleet>>> {
    if wiring.replicas > 1 && wiring.links.is_empty() {
        bail!(
            "{} replicas per service need the proxy, which balances them as a Kubernetes Service would",
            wiring.replicas
        );
    }
    let instances: Vec<Instance> = Role::ALL
        .into_iter()
        .flat_map(|role| (0..wiring.replicas).map(move |index| Instance { role, index }))
        .collect();
    let ports: BTreeMap<Instance, u16> = instances
        .iter()
        .copied()
        .zip(free_ports(instances.len())?)
        .collect();
    let mut fleet = Fleet {
        wiring,
        ports,
        services: BTreeMap::new(),
        restarts: BTreeMap::new(),
        down_until: BTreeMap::new(),
    };
    for &instance in &instances {
        let s = fleet.spawn(instance, &reaper)?;
        fleet.services.insert(instance, s);
    }
    let fleet = Arc::new(Mutex::new(fleet));
    wait_healthy(&fleet, &instances, Duration::from_secs(60)).await?;
    tokio::spawn(supervise(Arc::downgrade(&fleet), reaper));
    Ok(fleet)
}

/// Waits until every process in `instances` answers `/health`.
pub async fn wait_healthy(
    fleet: &Mutex<Fleet>,
    instances: &[Instance],
    within: Duration,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let deadline = tokio::time::Instant::now() + within;
    for instance in instances {
        loop {
            let (url, log, exited, role) = {
                let mut f = fleet.lock().unwrap_or_else(|p| p.into_inner());
                let role = instance.name(f.replicas());
                let Some(s) = f.services.get_mut(instance) else {
                    bail!("the {role} service is not running")
                };
                (s.url.clone(), s.log.clone(), s.proc.exited(), role)
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
