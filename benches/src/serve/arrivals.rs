//! When requests are sent: Poisson (burstiness 1) or gamma-distributed gaps at a request rate,
//! all at once (`inf`), or a rate ramped linearly from a start to an end value over the run;
//! seeded, so a run can be repeated exactly.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};

/// The arrival process of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrivals {
    /// Requests per second; `None` sends every request at time zero.
    pub rate: Option<f64>,
    /// Gamma shape of the gaps: 1 is Poisson, below 1 burstier, above 1 more regular.
    pub burstiness: f64,
    /// Linear ramp of the rate from `.0` to `.1` requests/s over the run (overrides `rate`).
    pub ramp: Option<(f64, f64)>,
    /// Seed of the gaps.
    pub seed: u64,
}

/// Everything at once (no rate), Poisson gaps when a rate is set, seed 0.
impl Default for Arrivals {
    fn default() -> Self {
        Self {
            rate: None,
            burstiness: 1.0,
            ramp: None,
            seed: 0,
        }
    }
}

/// Why a schedule cannot be drawn.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ArrivalsError {
    /// The gamma shape is not a positive finite number.
    #[error("burstiness must be positive, got {0}")]
    Burstiness(f64),
    /// A request rate (or a point of the ramp) is not a positive finite number.
    #[error("request rates must be positive and finite, got {0}")]
    Rate(f64),
    /// The gap distribution rejected its parameters.
    #[error("{0}")]
    Gamma(#[from] rand_distr::GammaError),
}

impl Arrivals {
    /// Send times (seconds from the start) of `n` requests, non-decreasing.
    pub fn schedule(&self, n: usize) -> Result<Vec<f64>, ArrivalsError> {
        self.check_burstiness()?;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let mut at = 0.0;
        let mut times = Vec::with_capacity(n);
        for i in 0..n {
            let rate = match (self.ramp, self.rate) {
                (Some((start, end)), _) => {
                    let f = if n > 1 {
                        i as f64 / (n - 1) as f64
                    } else {
                        0.0
                    };
                    start + (end - start) * f
                }
                (None, Some(rate)) => rate,
                (None, None) => {
                    times.push(0.0);
                    continue;
                }
            };
            if !(rate > 0.0 && rate.is_finite()) {
                return Err(ArrivalsError::Rate(rate));
            }
            // Gaps of mean 1 / rate: Gamma(shape k, scale 1 / (k * rate)).
            let gamma = Gamma::new(self.burstiness, 1.0 / (self.burstiness * rate))?;
            if i > 0 {
                at += gamma.sample(&mut rng);
            }
            times.push(at);
        }
        Ok(times)
    }

    /// Send times of a run that lasts `seconds`: every time before it at the rate (a ramp goes
    /// from its start to its end value over the `seconds`), or, with no rate, time zero
    /// without end (the caller's concurrency limit and deadline bound the run).
    pub fn until(
        &self,
        seconds: f64,
    ) -> Result<Box<dyn Iterator<Item = f64> + Send>, ArrivalsError> {
        self.check_burstiness()?;
        let rate_at = |t: f64| match (self.ramp, self.rate) {
            (Some((start, end)), _) => Some(start + (end - start) * (t / seconds).min(1.0)),
            (None, rate) => rate,
        };
        if rate_at(0.0).is_none() {
            return Ok(Box::new(std::iter::repeat(0.0)));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let mut times = Vec::new();
        let mut at = 0.0;
        while at < seconds {
            times.push(at);
            let rate = rate_at(at).unwrap_or(0.0);
            if !(rate > 0.0 && rate.is_finite()) {
                return Err(ArrivalsError::Rate(rate));
            }
            at += Gamma::new(self.burstiness, 1.0 / (self.burstiness * rate))?.sample(&mut rng);
        }
        Ok(Box::new(times.into_iter()))
    }

    fn check_burstiness(&self) -> Result<(), ArrivalsError> {
        match self.burstiness > 0.0 && self.burstiness.is_finite() {
            true => Ok(()),
            false => Err(ArrivalsError::Burstiness(self.burstiness)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn arrivals(rate: Option<f64>, burstiness: f64) -> Arrivals {
        Arrivals {
            rate,
            burstiness,
            ramp: None,
            seed: 7,
        }
    }

    #[test]
    fn poisson_gaps_have_the_requested_mean_and_repeat_with_the_seed() {
        let times = arrivals(Some(10.0), 1.0).schedule(20_000).unwrap();
        let mean_gap = times.last().unwrap() / (times.len() - 1) as f64;
        assert!((mean_gap - 0.1).abs() < 0.005, "{mean_gap}");
        assert_eq!(times, arrivals(Some(10.0), 1.0).schedule(20_000).unwrap());
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn burstier_gaps_vary_more() {
        let cv = |k: f64| {
            let t = arrivals(Some(5.0), k).schedule(20_000).unwrap();
            let gaps: Vec<f64> = t.windows(2).map(|w| w[1] - w[0]).collect();
            let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
            let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
            var.sqrt() / mean
        };
        assert!((cv(1.0) - 1.0).abs() < 0.05);
        assert!(cv(0.25) > 1.8 && cv(4.0) < 0.6);
    }

    #[test]
    fn infinite_rate_sends_everything_at_once_and_ramps_speed_up() {
        assert_eq!(arrivals(None, 1.0).schedule(3).unwrap(), vec![0.0; 3]);
        let ramp = Arrivals {
            ramp: Some((1.0, 100.0)),
            ..arrivals(None, 1.0)
        }
        .schedule(2000)
        .unwrap();
        let early = ramp[100] - ramp[0];
        let late = ramp[1999] - ramp[1899];
        assert!(early > 5.0 * late, "{early} {late}");
        assert!(arrivals(Some(0.0), 1.0).schedule(2).is_err());
        assert!(arrivals(Some(0.0), 1.0).until(1.0).is_err());
    }

    #[test]
    fn timed_runs_send_until_their_end_at_the_rate() {
        let times: Vec<f64> = arrivals(Some(50.0), 1.0).until(100.0).unwrap().collect();
        assert!(times.iter().all(|&t| (0.0..100.0).contains(&t)));
        assert!(
            (times.len() as f64 - 5000.0).abs() < 250.0,
            "{}",
            times.len()
        );
        // With no rate the run is bounded by its concurrency, not its times.
        assert!(
            arrivals(None, 1.0)
                .until(1.0)
                .unwrap()
                .take(1000)
                .all(|t| t == 0.0)
        );
        let ramp: Vec<f64> = Arrivals {
            ramp: Some((1.0, 100.0)),
            ..arrivals(None, 1.0)
        }
        .until(20.0)
        .unwrap()
        .collect();
        let first_half = ramp.iter().filter(|&&t| t < 10.0).count();
        assert!(ramp.len() > 2 * first_half, "{} {first_half}", ramp.len());
        assert!(arrivals(Some(1.0), 0.0).schedule(2).is_err());
    }
}
