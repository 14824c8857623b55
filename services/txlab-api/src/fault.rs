//! Fault injection, as carried per request in the `X-Txlab-Fault` header.
//!
//! Grammar: a comma-separated list of `role.point=action`, where action is
//! `error` (the service answers 503 as a transient failure), `delay:<ms>`
//! or `crash` (the process exits on the spot, like a killed pod). Example:
//! `inventory.before_db=delay:300,payment.after_db=error`.
//! The order service forwards the header to every participant it calls, on
//! each call's first attempt only, so a scenario can fail one chosen step of
//! one chosen order once and watch the recovery.

use serde::{Deserialize, Serialize};

use crate::Role;

pub const FAULT_HEADER: &str = "x-txlab-fault";

crate::text_enum! {
    /// Where in a request a fault fires.
    pub enum FaultPoint ("fault point") {
        /// Before the handler touches its database.
        BeforeDb = "before_db",
        /// After the local transaction committed, before the reply is built.
        AfterDb = "after_db",
        /// Just before the reply is sent.
        BeforeReply = "before_reply",
        /// After an event was stored for publishing (event-driven methods).
        AfterEvent = "after_event",
        /// 2PC: the work is done, before `PREPARE TRANSACTION`.
        DuringPrepare = "during_prepare",
        /// 2PC: before `COMMIT PREPARED`.
        DuringCommit = "during_commit",
        /// TCC: the hold is made, before its transaction commits.
        DuringTry = "during_try",
        /// TCC: before the confirm's transaction commits.
        DuringConfirm = "during_confirm",
        /// TCC: before the cancel's transaction commits.
        DuringCancel = "during_cancel",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum FaultAction {
    Error,
    DelayMs(u64),
    Crash,
}

impl FaultAction {
    /// `error`, `crash` or `delay:<ms>` (at most 60 s).
    pub fn parse(text: &str) -> Result<FaultAction, String> {
        match text {
            "error" => Ok(FaultAction::Error),
            "crash" => Ok(FaultAction::Crash),
            other => match other.strip_prefix("delay:").map(str::parse::<u64>) {
                Some(Ok(ms)) if ms <= 60_000 => Ok(FaultAction::DelayMs(ms)),
                Some(Ok(_)) => Err(format!("delay `{other}` exceeds 60000 ms")),
                _ => Err(format!(
                    "unknown fault action `{other}`; expected error, crash or delay:<ms>"
                )),
            },
        }
    }
}

/// A fault that stands for every request a service serves, set at start
/// (`FAULT_MODE`, `FAULT_POINT`, `FAULT_PERCENT`, `FAULT_ACTION`) or at run
/// time (`PUT /admin/faults`). `FAULT_POINT=crash` is short for crashing
/// right after the local commit (`after_db` with action `crash`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct StandingFault {
    pub mode: FaultMode,
    #[serde(default)]
    pub point: Option<FaultPoint>,
    /// Share of requests hit in `percent` mode, 0 to 100.
    #[serde(default)]
    pub percent: f64,
    #[serde(default = "default_action")]
    pub action: FaultAction,
}

fn default_action() -> FaultAction {
    FaultAction::Error
}

crate::text_enum! {
    /// When a standing fault fires.
    pub enum FaultMode ("fault mode") {
        None = "none",
        Always = "always",
        Percent = "percent",
    }
}

impl StandingFault {
    pub const NONE: StandingFault = StandingFault {
        mode: FaultMode::None,
        point: None,
        percent: 0.0,
        action: FaultAction::Error,
    };

    /// From the four environment values (each may be absent).
    pub fn from_env(
        mode: Option<&str>,
        point: Option<&str>,
        percent: Option<&str>,
        action: Option<&str>,
    ) -> Result<StandingFault, String> {
        let mode: FaultMode = mode
            .unwrap_or("none")
            .parse()
            .map_err(|e| format!("FAULT_MODE: {e}"))?;
        let mut action = match action {
            Some(a) => FaultAction::parse(a).map_err(|e| format!("FAULT_ACTION: {e}"))?,
            None => FaultAction::Error,
        };
        let point = match point {
            None => None,
            Some("crash") => {
                action = FaultAction::Crash;
                Some(FaultPoint::AfterDb)
            }
            Some(p) => Some(p.parse::<FaultPoint>().map_err(|e| format!("FAULT_POINT: {e}"))?),
        };
        let percent = match percent {
            None => 0.0,
            Some(p) => p
                .parse::<f64>()
                .map_err(|_| format!("FAULT_PERCENT `{p}` is not a number"))?,
        };
        let fault = StandingFault {
            mode,
            point,
            percent,
            action,
        };
        fault.validate()?;
        Ok(fault)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.mode != FaultMode::None && self.point.is_none() {
            return Err("a fault mode other than none needs a point".into());
        }
        if !(0.0..=100.0).contains(&self.percent) {
            return Err(format!("fault percent {} is not between 0 and 100", self.percent));
        }
        if self.mode == FaultMode::Percent && self.percent == 0.0 {
            return Err("percent mode needs a percent above 0".into());
        }
        Ok(())
    }

    /// Whether this fault hits `point` now; `draw` is uniform in [0, 100).
    /// Whether [`StandingFault::hits`] can ever fire at `point`.
    pub fn may_hit(&self, point: FaultPoint) -> bool {
        self.point == Some(point)
            && match self.mode {
                FaultMode::None => false,
                FaultMode::Always => true,
                FaultMode::Percent => self.percent > 0.0,
            }
    }

    pub fn hits(&self, point: FaultPoint, draw: f64) -> Option<FaultAction> {
        if self.point != Some(point) {
            return None;
        }
        match self.mode {
            FaultMode::None => None,
            FaultMode::Always => Some(self.action),
            FaultMode::Percent => (draw < self.percent).then_some(self.action),
        }
    }
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
            let (target, action) = part.split_once('=').ok_or_else(|| {
                format!("fault `{part}` lacks `=action`; write e.g. `payment.before_db=error`")
            })?;
            let (role, point) = target.split_once('.').ok_or_else(|| {
                format!("fault target `{target}` must be `role.point`, e.g. `payment.before_db`")
            })?;
            let role: Role = role.parse()?;
            let point: FaultPoint = point.parse()?;
            let action = FaultAction::parse(action)?;
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
        let spec = FaultSpec::parse(
            "inventory.before_db=delay:300, payment.after_db=error,order.before_reply=crash",
        )
        .unwrap();
        assert_eq!(spec.rules.len(), 3);
        assert_eq!(
            spec.action_at(Role::Inventory, FaultPoint::BeforeDb),
            Some(FaultAction::DelayMs(300))
        );
        assert_eq!(
            spec.action_at(Role::Payment, FaultPoint::AfterDb),
            Some(FaultAction::Error)
        );
        assert_eq!(
            spec.action_at(Role::Order, FaultPoint::BeforeReply),
            Some(FaultAction::Crash)
        );
        assert_eq!(spec.action_at(Role::Payment, FaultPoint::BeforeDb), None);
    }

    #[test]
    fn rejects_malformed_rules_with_a_reason() {
        assert!(FaultSpec::parse("payment").unwrap_err().contains("=action"));
        assert!(FaultSpec::parse("payment=error")
            .unwrap_err()
            .contains("role.point"));
        assert!(FaultSpec::parse("bank.before_db=error")
            .unwrap_err()
            .contains("unknown role"));
        assert!(FaultSpec::parse("payment.during=error")
            .unwrap_err()
            .contains("unknown fault point"));
        assert!(FaultSpec::parse("payment.during_try=crash").is_ok());
        assert!(FaultSpec::parse("payment.before_db=explode")
            .unwrap_err()
            .contains("unknown fault action"));
        assert!(FaultSpec::parse("payment.before_db=delay:999999")
            .unwrap_err()
            .contains("60000"));
    }

    #[test]
    fn standing_faults_from_the_environment() {
        assert_eq!(
            StandingFault::from_env(None, None, None, None).unwrap(),
            StandingFault::NONE
        );
        let crash = StandingFault::from_env(Some("always"), Some("crash"), None, None).unwrap();
        assert_eq!(crash.hits(FaultPoint::AfterDb, 99.0), Some(FaultAction::Crash));
        assert_eq!(crash.hits(FaultPoint::BeforeDb, 0.0), None);
        let some = StandingFault::from_env(Some("percent"), Some("during_try"), Some("25"), Some("delay:10"))
            .unwrap();
        assert_eq!(
            some.hits(FaultPoint::DuringTry, 24.9),
            Some(FaultAction::DelayMs(10))
        );
        assert_eq!(some.hits(FaultPoint::DuringTry, 25.0), None);
        assert!(StandingFault::from_env(Some("sometimes"), None, None, None)
            .unwrap_err()
            .contains("FAULT_MODE"));
        assert!(StandingFault::from_env(Some("always"), None, None, None)
            .unwrap_err()
            .contains("needs a point"));
        assert!(
            StandingFault::from_env(Some("percent"), Some("after_db"), Some("120"), None)
                .unwrap_err()
                .contains("between 0 and 100")
        );
    }
}
