//! What a chaos object means once read: faults between components of the
//! lab, independent of the YAML they came from and of who enforces them
//! (txlab's proxy locally, Chaos Mesh on Kubernetes).

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use txlab_api::Role;

/// A part of the lab that traffic flows between, named by its `app` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "String")]
pub enum Component {
    Service(Role),
    Postgres,
    Kafka,
    /// txlab's load driver (the checkout's clients).
    Load,
}

impl Component {
    pub const ALL: [Component; 8] = [
        Component::Service(Role::Order),
        Component::Service(Role::Payment),
        Component::Service(Role::Inventory),
        Component::Service(Role::Shipping),
        Component::Service(Role::Notification),
        Component::Postgres,
        Component::Kafka,
        Component::Load,
    ];

    /// The value of its `app` label.
    pub fn label(self) -> &'static str {
        match self {
            Component::Service(r) => r.as_str(),
            Component::Postgres => "postgres",
            Component::Kafka => "kafka",
            Component::Load => "load",
        }
    }

    pub fn from_label(label: &str) -> Option<Component> {
        Component::ALL.into_iter().find(|c| c.label() == label)
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl From<Component> for String {
    fn from(c: Component) -> String {
        c.label().to_string()
    }
}

/// Which of the selected components' replicas a fault hits (Chaos Mesh's `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pick {
    All,
    One,
}

/// The direction of the traffic a network fault acts on, relative to its
/// selector (Chaos Mesh's `direction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Bytes the selected components send (to the target, when there is one).
    To,
    /// Bytes the selected components receive (from the target, when there is one).
    From,
    Both,
}

/// One fault read from one chaos object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fault {
    /// `metadata.name`: what `chaos off <name>` removes.
    pub name: String,
    /// How long it lasts once on; until switched off when absent.
    pub duration: Option<Duration>,
    pub kind: FaultKind,
    /// The object as written, for a platform that applies it as it is
    /// (Kubernetes, where Chaos Mesh enforces it).
    #[serde(skip)]
    pub source: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum FaultKind {
    Network(NetworkFault),
    Pod(PodFault),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetworkFault {
    pub selector: Vec<Component>,
    pub pick: Pick,
    pub direction: Direction,
    /// Components on the other end; every component when empty.
    pub target: Vec<Component>,
    pub effect: NetworkEffect,
}

/// What happens to the bytes a network fault matches.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum NetworkEffect {
    /// Chaos Mesh `delay` (and the delay part of `netem`).
    Shape {
        delay: Option<Delay>,
        loss: Option<Chance>,
        /// Duplicated segments: TCP's receiver discards them, so a
        /// byte-stream proxy cannot show them; kept to say so, not enforced.
        duplicate: Option<Chance>,
    },
    Bandwidth(Bandwidth),
    /// Nothing passes: connections hang, as when packets are dropped.
    Partition,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Delay {
    pub latency: Duration,
    pub jitter: Duration,
    /// 0..=1: how much each delay's random part follows the previous one's.
    pub correlation: f64,
}

/// A probability (0..=1) with its correlation to the previous draw.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Chance {
    pub probability: f64,
    pub correlation: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bandwidth {
    pub bytes_per_s: f64,
    /// Bytes that may pass at once after a quiet spell (the bucket's size).
    pub buffer: u64,
    /// Bytes that may queue behind the limit (tc's `limit`).
    pub limit: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PodFault {
    pub selector: Vec<Component>,
    pub pick: Pick,
    pub action: PodAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PodAction {
    /// Killed at once (SIGKILL) and restarted by its supervisor, as a pod is.
    Kill,
    /// Down for the fault's duration, then started again.
    Failure,
}

impl NetworkFault {
    /// Whether bytes sent by `sender` to `receiver` are subject to this fault.
    pub fn matches(&self, sender: Component, receiver: Component) -> bool {
        let selected = |c: Component| self.selector.contains(&c);
        let targeted = |c: Component| self.target.is_empty() || self.target.contains(&c);
        let outgoing = selected(sender) && targeted(receiver);
        let incoming = selected(receiver) && targeted(sender);
        match self.direction {
            Direction::To => outgoing,
            Direction::From => incoming,
            Direction::Both => outgoing || incoming,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(direction: Direction, target: Vec<Component>) -> NetworkFault {
        NetworkFault {
            selector: vec![Component::Service(Role::Order)],
            pick: Pick::All,
            direction,
            target,
            effect: NetworkEffect::Partition,
        }
    }

    const ORDER: Component = Component::Service(Role::Order);
    const PAYMENT: Component = Component::Service(Role::Payment);

    #[test]
    fn direction_and_target_select_the_bytes_chaos_mesh_would() {
        let to_payment = fault(Direction::To, vec![PAYMENT]);
        assert!(to_payment.matches(ORDER, PAYMENT));
        assert!(!to_payment.matches(PAYMENT, ORDER), "answers flow the other way");
        assert!(!to_payment.matches(ORDER, Component::Postgres), "not the target");

        let from_payment = fault(Direction::From, vec![PAYMENT]);
        assert!(from_payment.matches(PAYMENT, ORDER));
        assert!(!from_payment.matches(ORDER, PAYMENT));

        let both = fault(Direction::Both, vec![PAYMENT]);
        assert!(both.matches(ORDER, PAYMENT) && both.matches(PAYMENT, ORDER));
        assert!(!both.matches(ORDER, Component::Kafka));

        let everything_out = fault(Direction::To, vec![]);
        assert!(everything_out.matches(ORDER, Component::Kafka));
        assert!(!everything_out.matches(Component::Load, ORDER));
    }

    #[test]
    fn labels_round_trip() {
        for c in Component::ALL {
            assert_eq!(Component::from_label(c.label()), Some(c));
        }
        assert_eq!(Component::from_label("redis"), None);
    }
}
