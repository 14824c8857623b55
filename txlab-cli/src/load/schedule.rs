//! When each order is due, as offsets from the start of the load.

use std::time::Duration;

use rand::Rng;

use crate::spec::{Arrival, LoadSpec};

/// Arrival offsets over `spec.duration_s` at `spec.rate` per second.
pub fn arrivals(spec: &LoadSpec, rng: &mut impl Rng) -> Vec<Duration> {
    let mut out = Vec::new();
    match spec.arrival {
        Arrival::Constant => {
            let n = (spec.rate * spec.duration_s).floor() as u64;
            out.extend((0..n).map(|i| Duration::from_secs_f64(i as f64 / spec.rate)));
        }
        Arrival::Poisson => {
            // Exponential gaps with mean 1/rate (inverse transform sampling).
            let mut t = 0.0;
            loop {
                let u: f64 = rng.gen();
                t += -(1.0 - u).ln() / spec.rate;
                if t >= spec.duration_s {
                    break;
                }
                out.push(Duration::from_secs_f64(t));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, SeedableRng};

    fn spec(arrival: Arrival, rate: f64, duration_s: f64) -> LoadSpec {
        LoadSpec {
            arrival,
            rate,
            duration_s,
            warmup_s: 0.0,
            max_in_flight: 10,
        }
    }

    #[test]
    fn constant_arrivals_are_evenly_spaced() {
        let a = arrivals(
            &spec(Arrival::Constant, 4.0, 2.0),
            &mut SmallRng::seed_from_u64(1),
        );
        assert_eq!(a.len(), 8);
        assert_eq!(a[0], Duration::ZERO);
        assert_eq!(a[1], Duration::from_millis(250));
        assert_eq!(a[7], Duration::from_millis(1750));
    }

    #[test]
    fn poisson_arrivals_are_seeded_sorted_and_near_the_rate() {
        let s = spec(Arrival::Poisson, 200.0, 50.0);
        let a = arrivals(&s, &mut SmallRng::seed_from_u64(9));
        let b = arrivals(&s, &mut SmallRng::seed_from_u64(9));
        assert_eq!(a, b, "same seed, same schedule");
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
        assert!(a.last().unwrap().as_secs_f64() < 50.0);
        // 10 000 expected; a Poisson count's standard deviation is 100.
        assert!((9_500..=10_500).contains(&a.len()), "{}", a.len());
        let c = arrivals(&s, &mut SmallRng::seed_from_u64(10));
        assert_ne!(a, c, "another seed, another schedule");
    }
}
