//! The environment a service starts with. Everything is read once here, so
//! a missing or malformed variable stops the service at start with a
//! message naming it, never half-way through a request.

use std::net::SocketAddr;

use anyhow::{bail, Context};
use txlab_api::fault::StandingFault;
use txlab_api::{Role, TxMode};

#[derive(Debug, Clone)]
pub struct Config {
    pub role: Role,
    /// `LISTEN_ADDR`, default 127.0.0.1:8080.
    pub listen: SocketAddr,
    /// `DATABASE_URL`: this service's own database.
    pub database_url: String,
    /// `KAFKA_BROKERS`: needed by order (outbox relay) and notification.
    pub kafka_brokers: Option<String>,
    /// `TX_MODE`: the transaction method of this deployment.
    pub tx_mode: TxMode,
    /// `PAYMENT_URL`, `INVENTORY_URL`, `SHIPPING_URL`: the order service's peers.
    pub peers: Peers,
    /// `ORDER_URL`: where participants ask about in-doubt 2PC branches.
    pub order_url: Option<String>,
    /// `FAULT_MODE`, `FAULT_POINT`, `FAULT_PERCENT`, `FAULT_ACTION`.
    pub standing_fault: StandingFault,
    /// `MAX_OPEN_ORDERS`: the order service refuses new orders (503
    /// `overloaded`) while this many are open, default 500.
    pub max_open_orders: u64,
    /// `REPLICA_INDEX`, `REPLICA_COUNT`: which of the role's processes this is.
    pub replica: Replica,
}

/// One of `count` processes of a role (0-based `index`), as a
/// StatefulSet's ordinal would say. Event consumers split the topic's
/// partitions by it; everything else a replica does is coordinated
/// through its database, not through this number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replica {
    pub index: u32,
    pub count: u32,
}

impl Default for Replica {
    fn default() -> Self {
        Replica { index: 0, count: 1 }
    }
}

impl Replica {
    /// Whether this is its role's only process: then whatever another
    /// replica would have to be told (by NOTIFY) stays in this process.
    pub fn is_lone(&self) -> bool {
        self.count <= 1
    }

    /// Whether this replica reads `partition` (of a topic every replica reads).
    pub fn reads(&self, partition: i32) -> bool {
        partition.rem_euclid(self.count as i32) == self.index as i32
    }

    fn from_env(index: Option<String>, count: Option<String>) -> anyhow::Result<Replica> {
        let number = |v: Option<String>, k: &str, default: u32| match v {
            None => Ok(default),
            Some(v) => v
                .parse::<u32>()
                .with_context(|| format!("{k} is not a whole number: `{v}`")),
        };
        let index = number(index, "REPLICA_INDEX", 0)?;
        let count = number(count, "REPLICA_COUNT", 1)?;
        if count == 0 || index >= count {
            bail!("REPLICA_INDEX {index} is not below REPLICA_COUNT {count}");
        }
        Ok(Replica { index, count })
    }
}

#[derive(Debug, Clone, Default)]
pub struct Peers {
    pub payment: String,
    pub inventory: String,
    pub shipping: String,
}

impl Config {
    pub fn from_args_and_env(mut args: impl Iterator<Item = String>) -> anyhow::Result<Config> {
        let role = match args.next() {
            Some(r) => r.parse::<Role>().map_err(anyhow::Error::msg)?,
            None => bail!("usage: txlab-svc <order|payment|inventory|shipping|notification>"),
        };
        Config::from_env(role, |k| std::env::var(k).ok())
    }

    /// Reads the configuration through `var` (the process environment in
    /// production, a map in tests).
    pub fn from_env(role: Role, var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
        let required = |k: &str| {
            var(k)
                .filter(|v| !v.is_empty())
                .with_context(|| format!("{k} is not set"))
        };
        let listen = var("LISTEN_ADDR")
            .unwrap_or_else(|| "127.0.0.1:8080".into())
            .parse()
            .context("LISTEN_ADDR is not an address like 127.0.0.1:8080")?;
        let tx_mode: TxMode = var("TX_MODE")
            .unwrap_or_else(|| "saga_orch".into())
            .parse()
            .map_err(anyhow::Error::msg)
            .context("TX_MODE")?;
        let kafka_brokers = match role {
            Role::Order | Role::Notification => Some(required("KAFKA_BROKERS")?),
            _ => var("KAFKA_BROKERS"),
        };
        let peers = if role == Role::Order {
            Peers {
                payment: required("PAYMENT_URL")?,
                inventory: required("INVENTORY_URL")?,
                shipping: required("SHIPPING_URL")?,
            }
        } else {
            Peers::default()
        };
        let standing_fault = StandingFault::from_env(
            var("FAULT_MODE").as_deref(),
            var("FAULT_POINT").as_deref(),
            var("FAULT_PERCENT").as_deref(),
            var("FAULT_ACTION").as_deref(),
        )
        .map_err(anyhow::Error::msg)?;
        let max_open_orders = match var("MAX_OPEN_ORDERS") {
            None => 500,
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .context("MAX_OPEN_ORDERS is not a whole number above 0")?,
        };
        let replica = Replica::from_env(var("REPLICA_INDEX"), var("REPLICA_COUNT"))?;
        Ok(Config {
            replica,
            max_open_orders,
            order_url: var("ORDER_URL").filter(|v| !v.is_empty()),
            standing_fault,
            role,
            listen,
            database_url: required("DATABASE_URL")?,
            kafka_brokers,
            tx_mode,
            peers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn order_needs_its_peers_and_kafka() {
        let err = Config::from_env(Role::Order, env(&[("DATABASE_URL", "postgres://x")])).unwrap_err();
        assert_eq!(format!("{err:#}"), "KAFKA_BROKERS is not set");
        let err = Config::from_env(
            Role::Order,
            env(&[("DATABASE_URL", "postgres://x"), ("KAFKA_BROKERS", "k:1")]),
        )
        .unwrap_err();
        assert_eq!(format!("{err:#}"), "PAYMENT_URL is not set");
    }

    #[test]
    fn an_unknown_method_is_refused_at_start() {
        let err = Config::from_env(
            Role::Payment,
            env(&[("DATABASE_URL", "postgres://x"), ("TX_MODE", "xa")]),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("unknown transaction method `xa`"));
    }

    #[test]
    fn a_malformed_fault_setting_stops_the_service_at_start() {
        let err = Config::from_env(
            Role::Payment,
            env(&[("DATABASE_URL", "postgres://x"), ("FAULT_MODE", "always")]),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("needs a point"));
        let c = Config::from_env(
            Role::Payment,
            env(&[
                ("DATABASE_URL", "postgres://x"),
                ("FAULT_MODE", "percent"),
                ("FAULT_POINT", "during_try"),
                ("FAULT_PERCENT", "10"),
            ]),
        )
        .unwrap();
        assert_eq!(c.standing_fault.percent, 10.0);
    }

    #[test]
    fn a_participant_needs_only_its_database() {
        let c = Config::from_env(
            Role::Payment,
            env(&[("DATABASE_URL", "postgres://x"), ("LISTEN_ADDR", "127.0.0.1:9")]),
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9);
        assert_eq!(c.tx_mode, TxMode::SagaOrch);
        assert_eq!(c.max_open_orders, 500);
    }

    #[test]
    fn replicas_split_partitions_and_bad_numbers_are_named() {
        let c = Config::from_env(
            Role::Payment,
            env(&[
                ("DATABASE_URL", "postgres://x"),
                ("REPLICA_INDEX", "1"),
                ("REPLICA_COUNT", "3"),
            ]),
        )
        .unwrap();
        let read: Vec<i32> = (0..6).filter(|p| c.replica.reads(*p)).collect();
        assert_eq!(read, vec![1, 4]);
        assert!(
            (0..3).all(|p| Replica::default().reads(p)),
            "a lone replica reads everything"
        );
        for (index, count, says) in [
            ("3", "3", "not below"),
            ("x", "3", "REPLICA_INDEX"),
            ("0", "0", "not below"),
        ] {
            let err = Config::from_env(
                Role::Payment,
                env(&[
                    ("DATABASE_URL", "postgres://x"),
                    ("REPLICA_INDEX", index),
                    ("REPLICA_COUNT", count),
                ]),
            )
            .unwrap_err();
            assert!(format!("{err:#}").contains(says), "{err:#}");
        }
    }

    #[test]
    fn a_bad_open_order_limit_is_named() {
        for bad in ["0", "many", "-5"] {
            let err = Config::from_env(
                Role::Payment,
                env(&[("DATABASE_URL", "postgres://x"), ("MAX_OPEN_ORDERS", bad)]),
            )
            .unwrap_err();
            assert!(format!("{err:#}").contains("MAX_OPEN_ORDERS"), "{err:#}");
        }
    }
}
