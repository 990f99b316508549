//! Recent throughput: tokens computed per second over a sliding window of steps.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Prompt and generated tokens per second over the last `window`.
#[derive(Debug)]
pub(crate) struct ThroughputMeter {
    window: Duration,
    /// `(when the step ended, prompt tokens, generated tokens)`.
    steps: VecDeque<(Instant, usize, usize)>,
}

impl ThroughputMeter {
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            steps: VecDeque::new(),
        }
    }

    /// Records a step that prefilled `prompt` positions and generated `generated` tokens.
    pub(crate) fn record(&mut self, now: Instant, prompt: usize, generated: usize) {
        self.steps.push_back((now, prompt, generated));
        self.expire(now);
    }

    /// `(prompt tokens/s, generated tokens/s)` over the window ending `now`.
    pub(crate) fn rates(&self, now: Instant) -> (f64, f64) {
        let recent = self
            .steps
            .iter()
            .filter(|(t, _, _)| now.saturating_duration_since(*t) <= self.window);
        let (prompt, generated) = recent.fold((0, 0), |(p, g), (_, dp, dg)| (p + dp, g + dg));
        let seconds = self.window.as_secs_f64();
        (prompt as f64 / seconds, generated as f64 / seconds)
    }

    fn expire(&mut self, now: Instant) {
        while let Some((t, _, _)) = self.steps.front() {
            if now.saturating_duration_since(*t) > self.window {
                self.steps.pop_front();
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_cover_only_the_window() {
        let mut meter = ThroughputMeter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        meter.record(t0, 100, 0);
        meter.record(t0 + Duration::from_secs(5), 0, 50);
        assert_eq!(meter.rates(t0 + Duration::from_secs(6)), (10.0, 5.0));
        // The first step has left the window.
        assert_eq!(meter.rates(t0 + Duration::from_secs(11)), (0.0, 5.0));
        assert_eq!(meter.rates(t0 + Duration::from_secs(30)), (0.0, 0.0));
    }
}
