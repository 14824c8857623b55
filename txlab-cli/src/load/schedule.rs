//! When each order is due, as offsets from the start of the load.

use std::time::Duration;

use rand::Rng;

use crate::spec::{Arrival, Stage};

/// Arrival offsets through the stages, one after the other, each at its rate.
pub fn arrivals(arrival: Arrival, stages: &[Stage], rng: &mut impl Rng) -> Vec<Duration> {
    let mut out = Vec::new();
    let mut begin = 0.0;
    for stage in stages {
        let (rate, length) = (stage.rate, stage.duration_s);
        match arrival {
            Arrival::Constant => {
                let n = (rate * length).floor() as u64;
                out.extend((0..n).map(|i| Duration::from_secs_f64(begin + i as f64 / rate)));
            }
            Arrival::Poisson => {
                // Exponential gaps with mean 1/rate (inverse transform sampling).
                let mut t = 0.0;
                loop {
                    let u: f64 = rng.gen();
                    t += -(1.0 - u).ln() / rate;
                    if t >= length {
                        break;
                    }
                    out.push(Duration::from_secs_f64(begin + t));
                }
            }
        }
        begin += length;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, SeedableRng};

    fn one(rate: f64, duration_s: f64) -> Vec<Stage> {
        vec![Stage { rate, duration_s }]
    }

    #[test]
    fn constant_arrivals_are_evenly_spaced() {
        let a = arrivals(Arrival::Constant, &one(4.0, 2.0), &mut SmallRng::seed_from_u64(1));
        assert_eq!(a.len(), 8);
        assert_eq!(a[0], Duration::ZERO);
        assert_eq!(a[1], Duration::from_millis(250));
        assert_eq!(a[7], Duration::from_millis(1750));
    }

    #[test]
    fn poisson_arrivals_are_seeded_sorted_and_near_the_rate() {
        let s = one(200.0, 50.0);
        let a = arrivals(Arrival::Poisson, &s, &mut SmallRng::seed_from_u64(9));
        let b = arrivals(Arrival::Poisson, &s, &mut SmallRng::seed_from_u64(9));
        assert_eq!(a, b, "same seed, same schedule");
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
        assert!(a.last().unwrap().as_secs_f64() < 50.0);
        // 10 000 expected; a Poisson count's standard deviation is 100.
        assert!((9_500..=10_500).contains(&a.len()), "{}", a.len());
        let c = arrivals(Arrival::Poisson, &s, &mut SmallRng::seed_from_u64(10));
        assert_ne!(a, c, "another seed, another schedule");
    }

    #[test]
    fn stages_follow_each_other_at_their_own_rates() {
        let stages = [
            Stage {
                rate: 10.0,
                duration_s: 1.0,
            },
            Stage {
                rate: 2.0,
                duration_s: 2.0,
            },
        ];
        let a = arrivals(Arrival::Constant, &stages, &mut SmallRng::seed_from_u64(1));
        assert_eq!(a.len(), 14);
        assert_eq!(a[9], Duration::from_millis(900));
        assert_eq!(a[10], Duration::from_secs(1));
        assert_eq!(a[13], Duration::from_millis(2500));
        let p = arrivals(Arrival::Poisson, &stages, &mut SmallRng::seed_from_u64(3));
        assert!(p.windows(2).all(|w| w[0] <= w[1]));
        assert!(p.last().unwrap().as_secs_f64() < 3.0);
    }
}
