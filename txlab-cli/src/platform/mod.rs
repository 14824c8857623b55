//! Where a run happens. A [`Platform`] deploys the services for a cell and
//! tears everything down afterwards; the rest of a run (seed, load, audit,
//! results) only sees the [`Endpoints`] it hands out.
//!
//! - [`local`]: the embedded default: PostgreSQL, tansu and the services as
//!   child processes on loopback, nothing left behind.
//! - [`k8s`]: a Kubernetes cluster, the workload from charts/txlab.

pub mod databases;
pub mod k8s;
pub mod local;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use txlab_api::{Role, TxMode};

/// Where a run happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// The embedded lab on this machine.
    Local,
    /// The Kubernetes cluster of the current kubeconfig.
    K8s,
}

/// Where the services, their databases and the broker are reached.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Endpoints {
    /// Base URL of each service (its first replica), e.g.
    /// `http://127.0.0.1:41234`: for what any replica answers alike.
    pub urls: BTreeMap<Role, String>,
    /// Base URLs of every replica of each service: for what each process
    /// keeps to itself (standing faults, metrics).
    #[serde(skip)]
    pub replicas: BTreeMap<Role, Vec<String>>,
    /// Each service's own database, for the audit, which reads raw rows
    /// itself rather than asking a service about its own correctness.
    #[serde(skip)]
    pub databases: BTreeMap<Role, String>,
    /// The Kafka-API broker (host:port), for the topics' ends at quiesce.
    pub brokers: String,
    /// Where the load reaches the order service when that differs from
    /// `urls` (through the proxy, so chaos can fault the clients' link).
    pub load_url: Option<String>,
}

impl Endpoints {
    /// The database URL of `role`'s service.
    pub fn database(&self, role: Role) -> anyhow::Result<&str> {
        self.databases
            .get(&role)
            .map(String::as_str)
            .with_context(|| format!("no database for the {role} service"))
    }

    /// Where the load driver sends orders.
    pub fn order_entry(&self) -> anyhow::Result<&str> {
        match &self.load_url {
            Some(u) => Ok(u),
            None => self.url(Role::Order),
        }
    }

    /// Every replica's base URL of `role`.
    pub fn replica_urls(&self, role: Role) -> &[String] {
        self.replicas.get(&role).map(Vec::as_slice).unwrap_or_default()
    }

    pub fn url(&self, role: Role) -> anyhow::Result<&str> {
        self.urls
            .get(&role)
            .map(String::as_str)
            .with_context(|| format!("no endpoint for the {role} service"))
    }
}

/// What a platform measured of a cell's components itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub resources: BTreeMap<String, crate::metrics::resources::Use>,
    /// Bytes each component sent, keyed `component→*`.
    pub network: BTreeMap<String, u64>,
}

/// The cell lifecycle every platform offers.
#[allow(async_fn_in_trait)]
pub trait Platform {
    /// Makes the services run `method` with `replicas` processes each
    /// (restarting them if they ran otherwise, or to give the cell a fresh
    /// broker where the platform runs its own) and returns where to reach them.
    async fn deploy(&mut self, method: TxMode, replicas: u32) -> anyhow::Result<Endpoints>;
    /// Service restarts so far, per role (crashes the platform recovered from).
    async fn restarts(&self) -> BTreeMap<Role, u32>;
    /// Each service process's log file by its name (`order`, or `order-1`
    /// with replicas), for copying a cell's share into its results.
    fn log_files(&self) -> Vec<(String, PathBuf)>;
    /// The processes whose CPU and memory a cell reports, by component.
    fn processes(&self) -> Vec<crate::metrics::resources::Component>;
    /// Name, versions and settings, for the self-describing run.json.
    fn describe(&self) -> serde_json::Value;
    /// Switches a chaos fault on (a fault with a duration switches itself
    /// off); returns what the platform cannot show of it, to be reported.
    async fn chaos_on(&mut self, fault: &crate::chaos::Fault) -> anyhow::Result<Vec<String>>;
    /// Switches off the fault named, or every fault; returns the names.
    async fn chaos_off(&mut self, name: Option<&str>) -> anyhow::Result<Vec<String>>;
    /// Bytes per link and direction so far, where the platform sees them.
    fn traffic(&self) -> Vec<crate::proxy::LinkTraffic>;
    /// CPU and memory per component over `[from, to]`, and bytes each sent,
    /// where the platform measures them itself (a cluster's Prometheus);
    /// None where txlab samples the processes it started.
    async fn usage(
        &self,
        from: std::time::SystemTime,
        to: std::time::SystemTime,
    ) -> anyhow::Result<Option<Usage>> {
        let _ = (from, to);
        Ok(None)
    }
    /// Stops everything this platform started.
    async fn shutdown(self) -> anyhow::Result<()>;
}
