//! What one pool member did for this gateway over the last minute: requests it answered and
//! requests that failed on it, counted in one-second buckets.

use std::time::Instant;

/// Seconds the window covers.
const SECONDS: usize = 60;

/// Answers and failures of the last [`SECONDS`] seconds.
#[derive(Debug, Clone)]
pub struct MinuteWindow {
    start: Instant,
    /// `(second since start, answered, failed)` per slot, slot = second % SECONDS.
    buckets: [(u64, u64, u64); SECONDS],
}

/// What a [`MinuteWindow`] counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MinuteCounts {
    /// Requests answered in the last minute.
    pub answered: u64,
    /// Requests that failed on the member in the last minute.
    pub failed: u64,
}

impl MinuteCounts {
    /// Answers per second over the minute.
    pub fn per_second(&self) -> f64 {
        self.answered as f64 / SECONDS as f64
    }
}

impl MinuteWindow {
    /// An empty window starting at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            start: now,
            buckets: [(u64::MAX, 0, 0); SECONDS],
        }
    }

    /// Counts one answer at `now`.
    pub fn answered(&mut self, now: Instant) {
        self.bucket(now).1 += 1;
    }

    /// Counts one failure at `now`.
    pub fn failed(&mut self, now: Instant) {
        self.bucket(now).2 += 1;
    }

    /// What the minute before `now` holds.
    pub fn counts(&self, now: Instant) -> MinuteCounts {
        let second = self.second(now);
        self.buckets
            .iter()
            .filter(|(s, _, _)| *s != u64::MAX && second.saturating_sub(*s) < SECONDS as u64)
            .fold(MinuteCounts::default(), |sum, (_, a, f)| MinuteCounts {
                answered: sum.answered + a,
                failed: sum.failed + f,
            })
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs()
    }

    /// The bucket of `now`, emptied first when it last held an older second.
    fn bucket(&mut self, now: Instant) -> &mut (u64, u64, u64) {
        let second = self.second(now);
        let bucket = &mut self.buckets[(second % SECONDS as u64) as usize];
        if bucket.0 != second {
            *bucket = (second, 0, 0);
        }
        bucket
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn counts_cover_exactly_the_last_minute() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut window = MinuteWindow::new(t0);
        window.answered(at(0));
        window.answered(at(0));
        window.failed(at(30));
        window.answered(at(59));
        assert_eq!(
            window.counts(at(59)),
            MinuteCounts {
                answered: 3,
                failed: 1
            }
        );
        // Second 0 has left the window; 30 and 59 have not.
        assert_eq!(
            window.counts(at(60)),
            MinuteCounts {
                answered: 1,
                failed: 1
            }
        );
        // A bucket reused a minute later starts from zero.
        window.answered(at(60));
        assert_eq!(window.counts(at(89)).answered, 2);
        assert_eq!(
            window.counts(at(90)),
            MinuteCounts {
                answered: 2,
                failed: 0
            }
        );
        assert_eq!(window.counts(at(200)), MinuteCounts::default());
        assert!((window.counts(at(60)).per_second() - 2.0 / 60.0).abs() < 1e-12);
    }
}
