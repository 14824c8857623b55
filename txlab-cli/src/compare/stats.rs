//! Whether two sets of repetitions differ by more than chance: a
//! Mann-Whitney rank test (exact permutations when few, seeded random
//! ones when many) and a bootstrap interval for the change in medians.
//! No normal approximation: a handful of repetitions per side is the
//! common case, and there it would be wrong.

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Permutations enumerated exactly up to this many; sampled beyond.
const EXACT_LIMIT: u64 = 200_000;
const SAMPLED_PERMUTATIONS: usize = 20_000;
const BOOTSTRAP_RESAMPLES: usize = 4_000;

pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Mid-ranks (1-based) of `values`, ties sharing the mean of their ranks.
fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut out = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            out[k] = mid;
        }
        i = j + 1;
    }
    out
}

fn binomial(n: u64, k: u64) -> u64 {
    (0..k.min(n - k)).fold(1u64, |acc, i| acc.saturating_mul(n - i) / (i + 1))
}

/// Two-sided p-value of Mann-Whitney's test that `a` and `b` come from the
/// same distribution: the share of relabellings of the pooled values whose
/// rank sum for `a` is at least as far from its mean as the observed one.
pub fn mann_whitney_p(a: &[f64], b: &[f64], seed: u64) -> f64 {
    let (n, m) = (a.len(), b.len());
    if n == 0 || m == 0 {
        return 1.0;
    }
    let pooled: Vec<f64> = a.iter().chain(b).copied().collect();
    let r = ranks(&pooled);
    let mean = n as f64 * (n + m + 1) as f64 / 2.0;
    let observed = (r[..n].iter().sum::<f64>() - mean).abs();
    // A hair of slack so equal sums computed in another order still count.
    let extreme = |sum: f64| (sum - mean).abs() >= observed - 1e-9;
    let total = binomial((n + m) as u64, n as u64);
    if total <= EXACT_LIMIT {
        let (mut hits, mut all) = (0u64, 0u64);
        for_each_subset(n + m, n, &mut |subset| {
            all += 1;
            if extreme(subset.iter().map(|&i| r[i]).sum()) {
                hits += 1;
            }
        });
        return hits as f64 / all as f64;
    }
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut idx: Vec<usize> = (0..n + m).collect();
    let hits = (0..SAMPLED_PERMUTATIONS)
        .filter(|_| {
            idx.shuffle(&mut rng);
            extreme(idx[..n].iter().map(|&i| r[i]).sum())
        })
        .count();
    // The observed labelling counts as one of the permutations.
    (hits + 1) as f64 / (SAMPLED_PERMUTATIONS + 1) as f64
}

/// Calls `f` with every `k`-subset of `0..n`.
fn for_each_subset(n: usize, k: usize, f: &mut impl FnMut(&[usize])) {
    fn go(start: usize, n: usize, k: usize, chosen: &mut Vec<usize>, f: &mut impl FnMut(&[usize])) {
        if chosen.len() == k {
            f(chosen);
            return;
        }
        for i in start..=n - (k - chosen.len()) {
            chosen.push(i);
            go(i + 1, n, k, chosen, f);
            chosen.pop();
        }
    }
    go(0, n, k, &mut Vec::with_capacity(k), f);
}

/// A 95% bootstrap interval (percentile method) for median(b) - median(a).
pub fn median_shift_interval(a: &[f64], b: &[f64], seed: u64) -> (f64, f64) {
    if a.is_empty() || b.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut resample = |xs: &[f64]| -> f64 {
        let v: Vec<f64> = (0..xs.len()).map(|_| xs[rng.gen_range(0..xs.len())]).collect();
        median(&v)
    };
    let mut shifts: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| resample(b) - resample(a))
        .collect();
    shifts.sort_by(f64::total_cmp);
    let at = |q: f64| shifts[((shifts.len() - 1) as f64 * q).round() as usize];
    (at(0.025), at(0.975))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Normal draws without another crate: Box-Muller on a seeded generator.
    fn normal(rng: &mut SmallRng, mean: f64, sd: f64, n: usize) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let (u1, u2): (f64, f64) = (rng.gen_range(f64::EPSILON..1.0), rng.gen());
                mean + sd * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
            })
            .collect()
    }

    #[test]
    fn exact_p_values_match_the_textbook() {
        // 3 vs 3, completely separated: 2 of the 20 labellings are as extreme.
        assert!((mann_whitney_p(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0], 1) - 0.1).abs() < 1e-12);
        // 4 vs 4 separated: 2 of 70.
        let p = mann_whitney_p(&[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0, 7.0, 8.0], 1);
        assert!((p - 2.0 / 70.0).abs() < 1e-12, "{p}");
        // Identical samples are as unremarkable as can be.
        assert_eq!(mann_whitney_p(&[5.0; 4], &[5.0; 4], 1), 1.0);
        assert_eq!(ranks(&[10.0, 20.0, 10.0, 30.0]), vec![1.5, 3.0, 1.5, 4.0]);
    }

    #[test]
    fn a_known_shift_is_found_and_the_same_distribution_is_not() {
        let mut rng = SmallRng::seed_from_u64(42);
        let base = normal(&mut rng, 100.0, 5.0, 8);
        let shifted = normal(&mut rng, 120.0, 5.0, 8);
        let same = normal(&mut rng, 100.0, 5.0, 8);
        assert!(mann_whitney_p(&base, &shifted, 7) < 0.01);
        assert!(mann_whitney_p(&base, &same, 7) > 0.05);
        let (lo, hi) = median_shift_interval(&base, &shifted, 7);
        assert!(
            lo > 5.0 && hi < 35.0 && lo < 20.0 && 20.0 < hi,
            "[{lo}, {hi}] around +20"
        );
        let (lo, hi) = median_shift_interval(&base, &same, 7);
        assert!(lo < 0.0 && 0.0 < hi, "[{lo}, {hi}] holds 0");
    }

    #[test]
    fn large_samples_use_seeded_permutations() {
        let mut rng = SmallRng::seed_from_u64(3);
        let a = normal(&mut rng, 10.0, 1.0, 30);
        let b = normal(&mut rng, 10.8, 1.0, 30);
        let p = mann_whitney_p(&a, &b, 9);
        assert_eq!(p, mann_whitney_p(&a, &b, 9), "same seed, same answer");
        assert!(p < 0.05, "{p}");
        assert!(mann_whitney_p(&a, &normal(&mut rng, 10.0, 1.0, 30), 9) > 0.05);
    }
}
