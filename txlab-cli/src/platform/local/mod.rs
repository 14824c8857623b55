//! The embedded local platform: zero set-up, everything on loopback.
//!
//! `start` makes a scratch directory, starts a throw-away PostgreSQL cluster
//! (as an unprivileged user when txlab is root) and a tansu broker, unless
//! the user passed URLs of their own. `deploy` starts the five services for
//! a method. `shutdown` stops them in order and removes the scratch
//! directory; the [`reaper`] does the same if txlab is killed outright.

mod postgres;
mod process;
mod reaper;
mod services;
mod tansu;
mod tools;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use txlab_api::{Role, TxMode};

use super::{Endpoints, Platform};
use crate::chaos::fault::{FaultKind, Pick, PodAction};
use crate::chaos::{Component, Fault};
use crate::metrics::resources;
pub use crate::platform::databases::{database_name, database_url};
use crate::proxy::{LinkTraffic, Proxy};
pub use process::{contain, free_port, kill_group, log_tail};
pub use tools::on_path;

/// What the user chose for the local platform.
#[derive(Debug, Clone, Default)]
pub struct LocalOptions {
    /// Keep the scratch directory (PostgreSQL's data) after the run.
    pub keep: bool,
    /// Use this PostgreSQL server (an admin URL) instead of starting one.
    pub database_url: Option<String>,
    /// Use this Kafka-API broker instead of starting tansu.
    pub kafka_brokers: Option<String>,
    /// Where the services' and infrastructure's logs go.
    pub log_dir: PathBuf,
    /// Route every link through txlab's proxy, so network chaos can be
    /// switched on (it costs CPU, so runs without chaos go direct).
    pub proxy: bool,
}

pub struct LocalPlatform {
    opts: LocalOptions,
    scratch: PathBuf,
    reaper: Arc<reaper::Reaper>,
    postgres: Option<postgres::Postgres>,
    tansu: Option<tansu::Tansu>,
    fleet: Option<Arc<Mutex<services::Fleet>>>,
    /// The method and replicas per service deployed last.
    deployed: Option<(TxMode, u32)>,
    admin_url: String,
    brokers: String,
    service_bin: PathBuf,
    /// PostgreSQL's bin directory when the platform started its own server.
    pg_bin: Option<PathBuf>,
    /// The tansu binary when the platform runs its own broker.
    tansu_bin: Option<PathBuf>,
    /// Whether services have used the running broker (it is then replaced
    /// before the next cell).
    broker_used: bool,
    versions: BTreeMap<&'static str, String>,
    /// The proxy every link goes through, when the options ask for it.
    proxy: Option<Arc<Proxy>>,
    /// The proxy's port for the embedded broker (the address tansu advertises).
    kafka_port: Option<u16>,
    /// The proxy's port for the load driver's connections to the order service.
    load_port: Option<u16>,
    /// The proxy's port for each link a service opens (sender role →
    /// service or PostgreSQL): a port per link tells the proxy who is
    /// sending without looking the socket up in /proc. Broker traffic
    /// goes through the one advertised port and is looked up.
    link_ports: BTreeMap<(Role, Component), u16>,
    /// Network faults that switch themselves off, by name.
    chaos_timers: BTreeMap<String, tokio::task::JoinHandle<()>>,
    /// Pod failures switched on, by name, with the processes they hold
    /// down (and the process group each had when killed).
    pod_failures: BTreeMap<String, Vec<(services::Instance, i32)>>,
}

impl LocalPlatform {
    /// Starts the infrastructure (not yet the services).
    pub async fn start(opts: LocalOptions) -> anyhow::Result<LocalPlatform> {
        // Find everything before starting anything, so a missing tool costs nothing.
        let service_bin = tools::service_binary()?;
        let pg_bin = match opts.database_url {
            None => Some(tools::postgres_bin_dir()?),
            Some(_) => None,
        };
        let tansu_bin = match opts.kafka_brokers {
            None => Some(tools::tansu()?),
            Some(_) => None,
        };
        let run_as = process::unprivileged_user()?;
        std::fs::create_dir_all(&opts.log_dir)
            .with_context(|| format!("creating {}", opts.log_dir.display()))?;

        let scratch = std::env::temp_dir().join(format!("txlab-{}-{}", std::process::id(), unique_suffix()));
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("creating scratch directory {}", scratch.display()))?;
        // The unprivileged PostgreSQL user must be able to enter it.
        std::fs::set_permissions(&scratch, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let reaper = Arc::new(reaper::Reaper::start()?);
        reaper.watch_root(&scratch)?;
        if opts.keep {
            reaper.keep_root();
        }
        let mut platform = LocalPlatform {
            scratch,
            reaper,
            postgres: None,
            tansu: None,
            fleet: None,
            deployed: None,
            admin_url: opts.database_url.clone().unwrap_or_default(),
            brokers: opts.kafka_brokers.clone().unwrap_or_default(),
            service_bin,
            pg_bin: pg_bin.clone(),
            tansu_bin: tansu_bin.clone(),
            broker_used: false,
            versions: BTreeMap::new(),
            proxy: None,
            kafka_port: None,
            load_port: None,
            link_ports: BTreeMap::new(),
            chaos_timers: BTreeMap::new(),
            pod_failures: BTreeMap::new(),
            opts,
        };
        if platform.opts.proxy {
            let proxy = Arc::new(Proxy::new()?);
            proxy.identify_senders(lab_processes);
            // An external broker tells clients its own address, so only
            // the embedded one can be reached through the proxy; its
            // clients all come back through the one address it advertises.
            if platform.tansu_bin.is_some() {
                platform.kafka_port = Some(proxy.listen(Component::Kafka)?);
            }
            // The load's own way in, and a port per service link: their
            // connections need no look-up of their sender.
            platform.load_port = Some(proxy.listen_from(Component::Service(Role::Order), Component::Load)?);
            for from in Role::ALL {
                let destinations = Role::ALL
                    .into_iter()
                    .filter(|to| *to != from)
                    .map(Component::Service)
                    .chain([Component::Postgres]);
                for to in destinations {
                    let port = proxy.listen_from(to, Component::Service(from))?;
                    platform.link_ports.insert((from, to), port);
                }
            }
            platform.proxy = Some(proxy);
        }
        if let Err(e) = platform.start_infrastructure(pg_bin, tansu_bin, run_as).await {
            let _ = platform.shutdown().await;
            return Err(e);
        }
        Ok(platform)
    }

    async fn start_infrastructure(
        &mut self,
        pg_bin: Option<PathBuf>,
        tansu_bin: Option<PathBuf>,
        run_as: Option<process::RunAs>,
    ) -> anyhow::Result<()> {
        self.versions
            .insert("txlab-svc", tools::version_of(&self.service_bin).await);
        if let Some(bin) = pg_bin {
            self.versions
                .insert("postgres", tools::version_of(&bin.join("postgres")).await);
            let log = self.opts.log_dir.join("postgres.log");
            let pg =
                postgres::Postgres::start(&bin, &self.scratch, &log, run_as.as_ref(), &self.reaper).await?;
            self.admin_url = pg.admin_url.clone();
            self.postgres = Some(pg);
        }
        crate::platform::databases::create_databases(&self.admin_url).await?;
        if let Some(proxy) = &self.proxy {
            proxy.route(Component::Postgres, resolve(&self.admin_url).await?);
        }
        if let Some(bin) = tansu_bin {
            // The file name tells txlab's patched build from a plain one.
            let name = bin.file_name().map(|n| n.to_string_lossy().into_owned());
            let version = tools::version_of(&bin).await;
            self.versions
                .insert("tansu", format!("{version} ({})", name.unwrap_or_default()));
            self.start_broker(&bin).await?;
        }
        Ok(())
    }

    async fn start_broker(&mut self, bin: &Path) -> anyhow::Result<()> {
        let log = self.opts.log_dir.join("tansu.log");
        let advertised = self.kafka_port;
        let t = tansu::Tansu::start(bin, &log, &self.reaper, advertised).await?;
        self.brokers = t.brokers.clone();
        if let Some(proxy) = &self.proxy {
            proxy.route(Component::Kafka, resolve_all(&t.brokers).await?);
        }
        self.tansu = Some(t);
        Ok(())
    }

    async fn stop_broker(&mut self) {
        if let Some(mut t) = self.tansu.take() {
            t.proc
                .stop(libc::SIGTERM, Duration::from_secs(5), &self.reaper)
                .await;
        }
    }

    /// Names of the chaos switched on (network faults and pod failures).
    pub fn chaos_active(&self) -> Vec<String> {
        let mut names = self.proxy.as_ref().map(|p| p.active()).unwrap_or_default();
        // A pod failure is on while one of its services is still held down.
        let now = tokio::time::Instant::now();
        if let Some(fleet) = &self.fleet {
            let f = fleet.lock().unwrap_or_else(|p| p.into_inner());
            names.extend(
                self.pod_failures
                    .iter()
                    .filter(|(_, held)| {
                        held.iter()
                            .any(|(i, _)| f.down_until.get(i).is_some_and(|t| *t > now))
                    })
                    .map(|(name, _)| name.clone()),
            );
        }
        names
    }

    /// The PostgreSQL admin URL (for tests that inspect or corrupt state).
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// Kills one process of `role` (its first replica) abruptly, as a
    /// crashing pod would, and waits until the supervisor has it running
    /// and healthy again (same endpoint).
    pub async fn crash(&mut self, role: Role) -> anyhow::Result<()> {
        self.crash_instance(services::Instance { role, index: 0 }).await
    }

    async fn crash_instance(&mut self, instance: services::Instance) -> anyhow::Result<()> {
        let killed = self.kill(instance, None)?;
        self.wait_restarted(instance, killed).await
    }

    /// Waits until the supervisor has replaced the process group `killed`
    /// of `instance` and the new process answers `/health`.
    async fn wait_restarted(&self, instance: services::Instance, killed: i32) -> anyhow::Result<()> {
        let fleet = self.fleet.clone().context("no services deployed")?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (now_running, name) = {
                let f = fleet.lock().unwrap_or_else(|p| p.into_inner());
                let pgid = f.services.get(&instance).map(|s| s.proc.pgid());
                (pgid, instance.name(f.replicas()))
            };
            if now_running.is_some_and(|p| p != killed) {
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the {name} service was not restarted within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        services::wait_healthy(&fleet, &[instance], Duration::from_secs(60)).await
    }

    /// Kills one process at once (SIGKILL); when `down_for` is given, the
    /// supervisor leaves it down that long before restarting it. Returns
    /// the process group killed.
    fn kill(&self, instance: services::Instance, down_for: Option<Duration>) -> anyhow::Result<i32> {
        let fleet = self.fleet.as_ref().context("no services deployed")?;
        let mut f = fleet.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = down_for {
            f.down_until.insert(instance, tokio::time::Instant::now() + d);
        }
        let pgid = f.services.get(&instance).context("no such service")?.proc.pgid();
        process::kill_group(pgid, libc::SIGKILL);
        Ok(pgid)
    }

    /// Freezes one service for `pause` (SIGSTOP, then SIGCONT), as a long
    /// garbage-collection pause or a stalled node would: its connections stay
    /// open and nothing is answered meanwhile.
    /// The returned future does it, and owns nothing of the platform, so
    /// it can run while a cell's load is under way.
    pub fn stall(
        &self,
        role: Role,
        pause: Duration,
    ) -> anyhow::Result<impl std::future::Future<Output = ()>> {
        let pgid = {
            let fleet = self.fleet.as_ref().context("no services deployed")?;
            let f = fleet.lock().unwrap_or_else(|p| p.into_inner());
            f.services
                .get(&services::Instance { role, index: 0 })
                .context("no such service")?
                .proc
                .pgid()
        };
        Ok(async move {
            process::kill_group(pgid, libc::SIGSTOP);
            tokio::time::sleep(pause).await;
            process::kill_group(pgid, libc::SIGCONT);
        })
    }

    async fn stop_services(&mut self) {
        let Some(fleet) = self.fleet.take() else { return };
        // Emptying the fleet stops the supervisor from restarting anything.
        let mut services = std::mem::take(&mut fleet.lock().unwrap_or_else(|p| p.into_inner()).services);
        // The order service first: it drives the others.
        let (orders, others): (Vec<_>, Vec<_>) = std::mem::take(&mut services)
            .into_iter()
            .partition(|(i, _)| i.role == Role::Order);
        for (_, mut svc) in orders.into_iter().chain(others) {
            svc.proc
                .stop(libc::SIGTERM, Duration::from_secs(10), &self.reaper)
                .await;
        }
    }

    /// Where the services deployed last are reached (every deploy may move
    /// them: new processes, new ports, a new broker).
    pub fn endpoints(&self) -> Endpoints {
        let mut replicas: BTreeMap<Role, Vec<String>> = BTreeMap::new();
        if let Some(f) = &self.fleet {
            for (i, s) in &f.lock().unwrap_or_else(|p| p.into_inner()).services {
                replicas.entry(i.role).or_default().push(s.url.clone());
            }
        }
        let urls = replicas
            .iter()
            .filter_map(|(r, u)| Some((*r, u.first()?.clone())))
            .collect();
        let databases = Role::ALL
            .iter()
            .map(|r| (*r, database_url(&self.admin_url, &database_name(*r))))
            .collect();
        Endpoints {
            urls,
            replicas,
            databases,
            brokers: self.brokers.clone(),
            load_url: self.load_port.map(|port| format!("http://127.0.0.1:{port}")),
        }
    }

    /// The embedded PostgreSQL server, for benchmarks that read its log
    /// or run pgbench against it; None when the user gave a server.
    pub fn postgres_server(&self) -> Option<crate::bench::commits::Server> {
        self.postgres.as_ref()?;
        Some(crate::bench::commits::Server {
            admin_url: self.admin_url.clone(),
            wal_dir: crate::bench::commits::wal_dir(&self.scratch.join(postgres::DATA_DIR)),
            bin_dir: self.pg_bin.clone()?,
        })
    }

    /// The scratch directory (PostgreSQL's data), removed at shutdown unless kept.
    pub fn scratch_dir(&self) -> &Path {
        &self.scratch
    }
}

/// Points the proxy's service routes at the fleet's processes: a
/// connection to a role goes to its replicas in turn.
fn route_services(proxy: &Proxy, fleet: &Mutex<services::Fleet>) {
    let f = fleet.lock().unwrap_or_else(|p| p.into_inner());
    for role in Role::ALL {
        proxy.route(Component::Service(role), f.addresses(role));
    }
}

/// Which process is which, for the proxy: its service children, named by
/// their command line, then this process, the load driver. This one is
/// last because it holds the most sockets (every proxied connection's two).
fn lab_processes() -> Vec<(u32, Component)> {
    let mut out: Vec<(u32, Component)> = services::running_services()
        .into_iter()
        .map(|(pid, role)| (pid, Component::Service(role)))
        .collect();
    out.push((std::process::id(), Component::Load));
    out
}

/// `url` (scheme://user@host:port/db?query) with another port on loopback.
fn with_port(url: &str, port: u16) -> String {
    let (start, end) = authority(url);
    let auth = &url[start..end];
    let user = auth.rfind('@').map(|i| &auth[..=i]).unwrap_or("");
    format!("{}{user}127.0.0.1:{port}{}", &url[..start], &url[end..])
}

/// Byte range of a URL's authority (user@host:port).
fn authority(url: &str) -> (usize, usize) {
    let start = url.find("://").map(|i| i + 3).unwrap_or(0);
    let end = url[start..]
        .find(['/', '?'])
        .map(|i| start + i)
        .unwrap_or(url.len());
    (start, end)
}

/// The socket addresses of a URL's host and port.
async fn resolve(url: &str) -> anyhow::Result<Vec<std::net::SocketAddr>> {
    let (start, end) = authority(url);
    let auth = &url[start..end];
    let host_port = auth.rsplit_once('@').map(|(_, h)| h).unwrap_or(auth);
    let host_port = if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:5432")
    };
    resolve_all(&host_port).await
}

/// The socket addresses of `host:port`.
async fn resolve_all(host_port: &str) -> anyhow::Result<Vec<std::net::SocketAddr>> {
    let addrs: Vec<_> = tokio::net::lookup_host(host_port)
        .await
        .with_context(|| format!("resolving {host_port} for the proxy"))?
        .collect();
    anyhow::ensure!(!addrs.is_empty(), "{host_port} resolves to no address");
    Ok(addrs)
}

/// A short unique suffix without pulling in a clock crate.
fn unique_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1_000_000_000)
        .unwrap_or(0)
}

impl Platform for LocalPlatform {
    /// With its own broker, every cell gets a fresh one (and the services
    /// restart to use it): tansu's in-memory engine was measured to cost
    /// more CPU the more it holds (outbox at 50 orders/s: tansu at 0.15
    /// cores fresh, 0.99 after four other methods' cells), so a method run
    /// late in a matrix would pay for the ones before it.
    async fn deploy(&mut self, method: TxMode, replicas: u32) -> anyhow::Result<Endpoints> {
        let fresh_broker = self
            .tansu_bin
            .clone()
            .filter(|_| self.tansu.is_some() && self.broker_used);
        if fresh_broker.is_none() && self.deployed == Some((method, replicas)) && self.fleet.is_some() {
            return Ok(self.endpoints());
        }
        if replicas > 1 && self.proxy.is_none() {
            anyhow::bail!(
                "{replicas} replicas per service need txlab's proxy, which balances them as a Kubernetes Service would; this lab was started without it"
            );
        }
        self.stop_services().await;
        if let Some(bin) = fresh_broker {
            self.stop_broker().await;
            self.start_broker(&bin).await?;
        }
        self.broker_used = true;
        let wiring = services::Wiring {
            binary: self.service_bin.clone(),
            admin_url: self.admin_url.clone(),
            brokers: match self.kafka_port {
                Some(port) => format!("127.0.0.1:{port}"),
                None => self.brokers.clone(),
            },
            links: self.link_ports.clone(),
            method,
            replicas,
            log_dir: self.opts.log_dir.clone(),
        };
        let fleet = services::start_all(wiring, self.reaper.clone()).await?;
        if let Some(proxy) = &self.proxy {
            route_services(proxy, &fleet);
        }
        self.fleet = Some(fleet);
        self.deployed = Some((method, replicas));
        Ok(self.endpoints())
    }

    async fn restarts(&self) -> BTreeMap<Role, u32> {
        self.fleet
            .as_ref()
            .map(|f| f.lock().unwrap_or_else(|p| p.into_inner()).restarts.clone())
            .unwrap_or_default()
    }

    fn log_files(&self) -> Vec<(String, PathBuf)> {
        let replicas = self.deployed.map(|(_, r)| r).unwrap_or(1);
        Role::ALL
            .into_iter()
            .flat_map(|role| (0..replicas).map(move |index| services::Instance { role, index }))
            .map(|i| {
                (
                    i.name(replicas),
                    services::log_path(&self.opts.log_dir, i, replicas),
                )
            })
            .collect()
    }

    fn processes(&self) -> Vec<resources::Component> {
        let tree = |name: &str, proc: &process::Supervised| resources::Component {
            name: name.to_string(),
            pid: proc.pgid() as u32,
            with_children: true,
        };
        let mut out = vec![resources::driver()];
        out.extend(self.postgres.as_ref().map(|p| tree("postgres", &p.proc)));
        out.extend(self.tansu.as_ref().map(|t| tree("tansu", &t.proc)));
        if let Some(fleet) = &self.fleet {
            let fleet = fleet.lock().unwrap_or_else(|p| p.into_inner());
            let replicas = fleet.replicas();
            out.extend(
                fleet
                    .services
                    .iter()
                    .map(|(i, s)| tree(&i.name(replicas), &s.proc)),
            );
        }
        out
    }

    fn describe(&self) -> serde_json::Value {
        json!({
            "name": "local",
            "postgres": if self.postgres.is_some() { "embedded".to_string() } else { crate::platform::databases::redact(&self.admin_url) },
            "postgres_settings": postgres::SETTINGS
                .into_iter()
                .chain(self.postgres.as_ref().filter(|p| p.statement_stats).map(|_| postgres::STATEMENT_STATS))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            "kafka": if self.tansu.is_some() { "embedded tansu (memory engine)".to_string() } else { self.brokers.clone() },
            "kafka_producer": txlab_api::event::PRODUCER_SETTINGS.iter().copied().collect::<BTreeMap<_, _>>(),
            "proxy": if self.proxy.is_some() { "every link through txlab's proxy" } else { "direct" },
            "versions": self.versions,
        })
    }

    async fn chaos_on(&mut self, fault: &Fault) -> anyhow::Result<Vec<String>> {
        let mut caveats = Vec::new();
        match &fault.kind {
            FaultKind::Network(n) => {
                let proxy = self.proxy.clone().with_context(|| {
                    format!(
                        "{}: network chaos needs the proxy, and this lab was started without it",
                        fault.name
                    )
                })?;
                if let Some(c) = n
                    .selector
                    .iter()
                    .chain(&n.target)
                    .find(|c| **c == Component::Kafka && self.kafka_port.is_none())
                {
                    anyhow::bail!(
                        "{}: {c} is not reached through the proxy (an external broker?)",
                        fault.name
                    );
                }
                caveats.extend(crate::proxy::caveats(n).map(|c| format!("{}: {c}", fault.name)));
                if n.target.is_empty() && self.kafka_port.is_none() {
                    caveats.push(format!(
                        "{}: the external broker is reached directly, not through the proxy, so this fault does not touch broker traffic",
                        fault.name
                    ));
                }
                proxy.apply(&fault.name, n.clone());
                if let Some(old) = self.chaos_timers.remove(&fault.name) {
                    old.abort();
                }
                if let Some(d) = fault.duration {
                    let (proxy, name) = (Arc::downgrade(&proxy), fault.name.clone());
                    let timer = tokio::spawn(async move {
                        tokio::time::sleep(d).await;
                        if let Some(p) = proxy.upgrade() {
                            p.remove(&name);
                        }
                    });
                    self.chaos_timers.insert(fault.name.clone(), timer);
                }
            }
            FaultKind::Pod(p) => {
                let fleet = self.fleet.clone().context("no services deployed")?;
                let hit: Vec<services::Instance> = {
                    let f = fleet.lock().unwrap_or_else(|p| p.into_inner());
                    p.selector
                        .iter()
                        .filter_map(|c| match c {
                            Component::Service(r) => Some(*r),
                            _ => None,
                        })
                        .flat_map(|role| {
                            // `one`: the first replica (Chaos Mesh picks one at random).
                            let take = if p.pick == Pick::One { 1 } else { usize::MAX };
                            f.instances(role).take(take).collect::<Vec<_>>()
                        })
                        .collect()
                };
                match p.action {
                    PodAction::Kill => {
                        // Killed together, as pods of one PodChaos are.
                        let killed = hit
                            .iter()
                            .map(|&i| Ok((i, self.kill(i, None)?)))
                            .collect::<anyhow::Result<Vec<_>>>()?;
                        for (i, pgid) in killed {
                            self.wait_restarted(i, pgid).await?;
                        }
                    }
                    PodAction::Failure => {
                        let held = hit
                            .iter()
                            .map(|&i| Ok((i, self.kill(i, fault.duration)?)))
                            .collect::<anyhow::Result<Vec<_>>>()?;
                        self.pod_failures.insert(fault.name.clone(), held);
                    }
                }
            }
        }
        Ok(caveats)
    }

    async fn chaos_off(&mut self, name: Option<&str>) -> anyhow::Result<Vec<String>> {
        let mut off = Vec::new();
        if let Some(proxy) = &self.proxy {
            for active in proxy.active() {
                if name.is_none_or(|n| n == active) {
                    proxy.remove(&active);
                    off.push(active);
                }
            }
        }
        self.chaos_timers.retain(|n, timer| {
            let keep = name.is_some_and(|wanted| wanted != n);
            if !keep {
                timer.abort();
            }
            keep
        });
        let failures: Vec<String> = self
            .pod_failures
            .keys()
            .filter(|n| name.is_none_or(|wanted| wanted == *n))
            .cloned()
            .collect();
        for n in failures {
            let held = self.pod_failures.remove(&n).unwrap_or_default();
            if let Some(fleet) = &self.fleet {
                let mut f = fleet.lock().unwrap_or_else(|p| p.into_inner());
                for (i, _) in &held {
                    f.down_until.remove(i);
                }
            }
            for (i, killed) in held {
                self.wait_restarted(i, killed).await?;
            }
            off.push(n);
        }
        Ok(off)
    }

    fn traffic(&self) -> Vec<LinkTraffic> {
        self.proxy.as_ref().map(|p| p.traffic()).unwrap_or_default()
    }

    async fn shutdown(mut self) -> anyhow::Result<()> {
        self.chaos_off(None).await.ok();
        self.stop_services().await;
        self.stop_broker().await;
        if let Some(mut pg) = self.postgres.take() {
            // SIGINT is PostgreSQL's "fast" shutdown: roll back and exit.
            pg.proc
                .stop(libc::SIGINT, Duration::from_secs(10), &self.reaper)
                .await;
        }
        // The reaper removes the scratch directory (unless kept) as it exits.
        self.reaper.finish();
        Ok(())
    }
}
