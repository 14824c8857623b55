//! Fault injection, as carried per request in the `X-Txlab-Fault` header.
//!
//! Grammar: a comma-separated list of `role.point=action`, where action is
//! `error` (the service answers 503 as a transient failure), `delay:<ms>`
//! or `crash` (the process exits on the spot, like a killed pod). Example:
//! `inventory.before_db=delay:300,payment.after_db=error`.
//! The order service forwards the header to every participant it calls, so
//! a scenario can fail one chosen step of one chosen order.

use serde::{Deserialize, Serialize};

use crate::Role;

pub const FAULT_HEADER: &str = "x-txlab-fault";

/// Where in a request a fault fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultPoint {
    /// Before the handler touches its database.
    BeforeDb,
    /// After the local transaction committed, before the reply is built.
    AfterDb,
    /// Just before the reply is sent.
    BeforeReply,
}

impl FaultPoint {
    pub const ALL: [FaultPoint; 3] = [FaultPoint::BeforeDb, FaultPoint::AfterDb, FaultPoint::BeforeReply];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultPoint::BeforeDb => "before_db",
            FaultPoint::AfterDb => "after_db",
            FaultPoint::BeforeReply => "before_reply",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultAction {
    Error,
    DelayMs(u64),
    Crash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRule {
    pub role: Role,
    pub point: FaultPoint,
    pub action: FaultAction,
}

/// A parsed fault header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultSpec {
    pub rules: Vec<FaultRule>,
}

impl FaultSpec {
    /// Parses the header grammar; the error says which part is wrong.
    pub fn parse(text: &str) -> Result<FaultSpec, String> {
        let mut rules = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (target, action) = part
                .split_once('=')
                .ok_or_else(|| format!("fault `{part}` lacks `=action`; write e.g. `payment.before_db=error`"))?;
            let (role, point) = target
                .split_once('.')
                .ok_or_else(|| format!("fault target `{target}` must be `role.point`, e.g. `payment.before_db`"))?;
            let role: Role = role.parse()?;
            let point = FaultPoint::ALL
                .into_iter()
                .find(|p| p.as_str() == point)
                .ok_or_else(|| format!("unknown fault point `{point}`; expected before_db, after_db or before_reply"))?;
            let action = match action {
                "error" => FaultAction::Error,
                "crash" => FaultAction::Crash,
                other => match other.strip_prefix("delay:").map(str::parse::<u64>) {
                    Some(Ok(ms)) if ms <= 60_000 => FaultAction::DelayMs(ms),
                    Some(Ok(_)) => return Err(format!("delay in `{part}` exceeds 60000 ms")),
                    _ => {
                        return Err(format!(
                            "unknown fault action `{other}`; expected error, crash or delay:<ms>"
                        ))
                    }
                },
            };
            rules.push(FaultRule { role, point, action });
        }
        Ok(FaultSpec { rules })
    }

    /// The action planned for `role` at `point`, if any.
    pub fn action_at(&self, role: Role, point: FaultPoint) -> Option<FaultAction> {
        self.rules
            .iter()
            .find(|r| r.role == role && r.point == point)
            .map(|r| r.action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_list_of_rules() {
        let spec = FaultSpec::parse("inventory.before_db=delay:300, payment.after_db=error,order.before_reply=crash").unwrap();
        assert_eq!(spec.rules.len(), 3);
        assert_eq!(spec.action_at(Role::Inventory, FaultPoint::BeforeDb), Some(FaultAction::DelayMs(300)));
        assert_eq!(spec.action_at(Role::Payment, FaultPoint::AfterDb), Some(FaultAction::Error));
        assert_eq!(spec.action_at(Role::Order, FaultPoint::BeforeReply), Some(FaultAction::Crash));
        assert_eq!(spec.action_at(Role::Payment, FaultPoint::BeforeDb), None);
    }

    #[test]
    fn rejects_malformed_rules_with_a_reason() {
        assert!(FaultSpec::parse("payment").unwrap_err().contains("=action"));
        assert!(FaultSpec::parse("payment=error").unwrap_err().contains("role.point"));
        assert!(FaultSpec::parse("bank.before_db=error").unwrap_err().contains("unknown role"));
        assert!(FaultSpec::parse("payment.during=error").unwrap_err().contains("unknown fault point"));
        assert!(FaultSpec::parse("payment.before_db=explode").unwrap_err().contains("unknown fault action"));
        assert!(FaultSpec::parse("payment.before_db=delay:999999").unwrap_err().contains("60000"));
    }
}
