//! Overload: offer twice the knee, then half of it, and read from the
//! driver's figures what the orders that got through saw, and how long
//! latency took to come back once the overload ended.

use serde::Serialize;

use crate::load::LoadReport;

/// What an overload cell showed.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// Orders decided as expected per second while the overload was offered.
    pub goodput: f64,
    /// Orders refused or failed (not decided as expected), dropped or undecided.
    pub refused: u64,
    pub dropped: u64,
    pub undecided: u64,
    /// Seconds after the overload ended until every later second's
    /// arrivals were decided within the bound; None if they never were.
    pub recovery_s: Option<u64>,
}

/// Reads the figures of a load whose first `overload_s` seconds were the
/// overload, judged against a decided-latency bound.
pub fn figures(load: &LoadReport, overload_s: u64, p99_bound_ms: f64) -> Figures {
    let done: u64 = load.completions.iter().take(overload_s as usize).sum();
    let last = load.seconds.iter().map(|s| s.second).max().unwrap_or(0);
    // The first second from which every later one is within the bound and
    // had all its orders decided.
    let mut recovered_from = None;
    for s in load.seconds.iter().rev() {
        if s.second < overload_s {
            break;
        }
        if s.decided_p99_ms <= p99_bound_ms && s.decided == s.sent {
            recovered_from = Some(s.second);
        } else {
            break;
        }
    }
    let recovery_s = recovered_from
        .filter(|_| last >= overload_s)
        .map(|s| s - overload_s);
    Figures {
        goodput: done as f64 / overload_s.max(1) as f64,
        refused: load.outcomes.values().sum::<u64>() - load.completions.iter().sum::<u64>() + load.errors,
        dropped: load.dropped,
        undecided: load.undecided,
        recovery_s,
    }
}
