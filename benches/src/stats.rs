//! Small statistics helpers shared by the benchmarks.

/// The median of `values` (mean of the middle two for an even count); `NaN` when empty.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Smallest and largest of `values`.
pub fn range(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// The `p`th percentile of `values` by linear interpolation between closest ranks (numpy's
/// default); `NaN` when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile_of_sorted(&sorted, p)
}

/// [`percentile`] of values already sorted ascending.
pub fn percentile_of_sorted(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n => {
            let rank = p / 100.0 * (n - 1) as f64;
            let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
        }
    }
}

/// A 95% percentile-bootstrap confidence interval of `statistic(a, b)`: `a` and `b` are
/// resampled with replacement, each on its own, `resamples` times (seeded, so a report can be
/// reproduced); `None` when either sample is empty.
pub fn bootstrap_ci95(
    a: &[f64],
    b: &[f64],
    statistic: impl Fn(&[f64], &[f64]) -> f64,
    resamples: usize,
    seed: u64,
) -> Option<(f64, f64)> {
    use rand::{Rng, SeedableRng};
    if a.is_empty() || b.is_empty() || resamples == 0 {
        return None;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut draw = |from: &[f64]| -> Vec<f64> {
        (0..from.len())
            .map(|_| from[rng.random_range(0..from.len())])
            .collect()
    };
    let mut estimates: Vec<f64> = (0..resamples)
        .map(|_| {
            let (ra, rb) = (draw(a), draw(b));
            statistic(&ra, &rb)
        })
        .filter(|e| e.is_finite())
        .collect();
    estimates.sort_by(f64::total_cmp);
    (!estimates.is_empty()).then(|| {
        (
            percentile_of_sorted(&estimates, 2.5),
            percentile_of_sorted(&estimates, 97.5),
        )
    })
}

/// The arithmetic mean; `NaN` when empty.
pub fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v: Vec<f64> = (1..=5).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 3.0);
        assert_eq!(percentile(&v, 25.0), 2.0);
        assert!((percentile(&v, 99.0) - 4.96).abs() < 1e-12);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn bootstrap_intervals_cover_the_ratio_and_narrow_with_more_data() {
        // Two samples whose means differ by a factor of 2, with noise.
        let noisy = |n: usize, level: f64| -> Vec<f64> {
            (0..n)
                .map(|i| level * (1.0 + 0.2 * ((i * 7919 % 13) as f64 / 12.0 - 0.5)))
                .collect()
        };
        let ratio = |a: &[f64], b: &[f64]| mean(a) / mean(b);
        let (lo, hi) = bootstrap_ci95(&noisy(20, 2.0), &noisy(20, 1.0), ratio, 2000, 1).unwrap();
        assert!(lo < 2.0 && 2.0 < hi, "{lo} {hi}");
        assert!(lo > 1.8 && hi < 2.2, "{lo} {hi}");
        let (lo_more, hi_more) =
            bootstrap_ci95(&noisy(500, 2.0), &noisy(500, 1.0), ratio, 2000, 1).unwrap();
        assert!(hi_more - lo_more < (hi - lo) / 2.0, "{lo_more} {hi_more}");
        // Seeded: the same interval again.
        assert_eq!(
            bootstrap_ci95(&noisy(20, 2.0), &noisy(20, 1.0), ratio, 500, 3),
            bootstrap_ci95(&noisy(20, 2.0), &noisy(20, 1.0), ratio, 500, 3)
        );
        assert_eq!(bootstrap_ci95(&[], &[1.0], ratio, 10, 0), None);
    }

    #[test]
    fn median_and_range() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(range(&[3.0, 1.0, 2.0]), (1.0, 3.0));
    }
}
