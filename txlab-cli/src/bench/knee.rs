//! The knee search: the highest offered rate a method sustains.
//!
//! Start at a rate; double it while cells pass; after the first failure,
//! bisect between the highest pass and the lowest failure until they are
//! within `resolution` of each other. If even the starting rate fails,
//! halve it until one passes (or the floor is reached). Which rate a cell
//! passes at is decided elsewhere ([`Verdict`]); this is only the search.

use serde::Serialize;

use crate::metrics::resources::Steal;
use crate::results::CellSummary;

/// Bounds and precision of one search.
#[derive(Debug, Clone, Copy)]
pub struct Search {
    pub start: f64,
    /// No rate above this is tried.
    pub max: f64,
    /// Lowest rate tried when the start fails.
    pub floor: f64,
    /// Stop when (lowest failure − highest pass) / highest pass is below this.
    pub resolution: f64,
}

/// What the search has seen so far, and what it tries next.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Highest rate that passed.
    pub pass: Option<f64>,
    /// Lowest rate that failed.
    pub fail: Option<f64>,
}

impl Search {
    /// The next rate to try after `seen`, or None when the knee is found.
    pub fn next(&self, seen: &Progress) -> Option<f64> {
        // Rates are rounded to whole orders per second: finer is noise.
        let round = |r: f64| r.round().max(1.0);
        match (seen.pass, seen.fail) {
            (None, None) => Some(round(self.start)),
            (Some(p), None) => {
                let up = round((p * 2.0).min(self.max));
                (up > p).then_some(up)
            }
            (None, Some(f)) => {
                let down = round(f / 2.0);
                (down >= self.floor && down < f).then_some(down)
            }
            (Some(p), Some(f)) => {
                let mid = round((p + f) / 2.0);
                ((f - p) / p > self.resolution && mid > p && mid < f).then_some(mid)
            }
        }
    }
}

impl Progress {
    pub fn record(&mut self, rate: f64, passed: bool) {
        if passed {
            self.pass = Some(self.pass.map_or(rate, |p| p.max(rate)));
        } else {
            self.fail = Some(self.fail.map_or(rate, |f| f.min(rate)));
        }
    }
}

/// Share of the machine's CPU time the hypervisor may steal in a step's
/// worst second before a failure there says more about the host than
/// about the lab. A saturated lab itself sees up to about 18 % in its
/// worst second on this kind of VM; the bursts that fail a step at a rate
/// the lab holds reach 30-50 %.
pub const STEAL_DISTURBS: f64 = 0.25;
/// Runs of one rate at most, when its failures come with stolen time.
pub const ATTEMPTS: u32 = 3;

/// Whether a failed step should be run again: in its worst second the host
/// stole more than [`STEAL_DISTURBS`] of the CPU time (a burst that stalls
/// every component at once and shows as a p99 of seconds at rates the lab
/// otherwise holds with a few ms), and the rate has not yet been run
/// [`ATTEMPTS`] times.
pub fn run_again(passed: bool, steal: Option<Steal>, attempt: u32) -> bool {
    !passed && attempt < ATTEMPTS && steal.is_some_and(|s| s.peak > STEAL_DISTURBS)
}

/// What is told when a step at `rate` is run again for `steal`.
pub fn rerun_note(rate: f64, steal: Steal) -> String {
    format!(
        "the host stole {:.0} % of the CPU in the worst second of {rate}/s; running it again",
        100.0 * steal.peak
    )
}

/// Whether a cell sustained its offered rate, and if not, why.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub passed: bool,
    pub reasons: Vec<String>,
}

/// A cell passes when every order was sent on time and decided as
/// expected, nothing was dropped or failed, the audit is clean, the cell
/// settled, and the decided p99 is within `p99_bound_ms`.
pub fn judge(s: &CellSummary, p99_bound_ms: f64) -> Verdict {
    let mut reasons = Vec::new();
    if s.achieved_rate < 0.97 * s.target_rate {
        reasons.push(format!("sent {:.1}/s of {:.1}/s", s.achieved_rate, s.target_rate));
    }
    for (what, n) in [
        ("dropped", s.dropped),
        ("errors", s.errors),
        ("undecided", s.undecided),
        ("unexpected outcomes", s.unexpected),
        ("audit violations", s.violations as u64),
    ] {
        if n > 0 {
            reasons.push(format!("{n} {what}"));
        }
    }
    if !s.settled {
        reasons.push("did not settle".into());
    }
    if s.decided_ms.p99 > p99_bound_ms {
        reasons.push(format!(
            "decided p99 {:.0} ms > {p99_bound_ms:.0} ms",
            s.decided_ms.p99
        ));
    }
    Verdict {
        passed: reasons.is_empty(),
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search against a system whose true knee is `knee`.
    fn search(s: Search, knee: f64) -> (Vec<f64>, Progress) {
        let mut seen = Progress::default();
        let mut tried = Vec::new();
        while let Some(r) = s.next(&seen) {
            assert!(tried.len() < 30, "runaway search: {tried:?}");
            tried.push(r);
            seen.record(r, r <= knee);
        }
        (tried, seen)
    }

    const S: Search = Search {
        start: 50.0,
        max: 2000.0,
        floor: 5.0,
        resolution: 0.1,
    };

    #[test]
    fn only_a_failure_with_a_burst_of_stolen_time_is_run_again_and_not_forever() {
        let burst = Some(Steal {
            mean: 0.06,
            peak: 0.45,
        });
        assert!(run_again(false, burst, 1));
        assert!(run_again(false, burst, ATTEMPTS - 1));
        assert!(!run_again(false, burst, ATTEMPTS), "runs are bounded");
        assert!(!run_again(true, burst, 1), "a pass stands");
        let saturated = Some(Steal {
            mean: 0.09,
            peak: 0.18,
        });
        assert!(
            !run_again(false, saturated, 1),
            "a steady few percent is the lab's own load"
        );
        assert!(!run_again(false, None, 1), "no reading, no second run");
    }

    #[test]
    fn doubles_then_bisects_to_within_the_resolution() {
        let (tried, seen) = search(S, 330.0);
        assert_eq!(&tried[..4], [50.0, 100.0, 200.0, 400.0]);
        let (p, f) = (seen.pass.unwrap(), seen.fail.unwrap());
        assert!(p <= 330.0 && f > 330.0, "{p} {f}");
        assert!((f - p) / p <= 0.1, "{tried:?}");
        assert!(tried.len() <= 8, "{tried:?}");
    }

    #[test]
    fn halves_when_the_start_fails_and_stops_at_the_floor() {
        let (tried, seen) = search(S, 20.0);
        assert_eq!(&tried[..3], [50.0, 25.0, 13.0]);
        assert!(seen.pass.unwrap() <= 20.0 && seen.fail.unwrap() > 20.0);
        let (tried, seen) = search(S, 1.0);
        assert_eq!(seen.pass, None);
        assert!(tried.iter().all(|r| *r >= 5.0), "{tried:?}");
    }

    #[test]
    fn stops_at_the_maximum() {
        let (tried, seen) = search(S, 1e9);
        assert_eq!(seen.pass, Some(2000.0));
        assert_eq!(tried.last(), Some(&2000.0));
    }
}
