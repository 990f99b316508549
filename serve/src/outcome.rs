//! How requests ended, counted for `*_requests_total{outcome=...}`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::Exposition;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Ran to its end.
    Finished,
    /// Failed after it was admitted.
    Failed,
    /// Its client went away first.
    Cancelled,
    /// Refused before any work (draining, invalid, full).
    Refused,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Finished,
        Outcome::Failed,
        Outcome::Cancelled,
        Outcome::Refused,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Finished => "finished",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Refused => "refused",
        }
    }
}

/// A counter per [`Outcome`].
#[derive(Debug, Default)]
pub struct Outcomes {
    counts: [AtomicU64; Outcome::ALL.len()],
}

impl Outcomes {
    /// Counts a request that ended.
    pub fn count(&self, outcome: Outcome) {
        self.counts[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests that ended so.
    pub fn get(&self, outcome: Outcome) -> u64 {
        self.counts[outcome as usize].load(Ordering::Relaxed)
    }

    /// Adds the counter `name{outcome=...}` to `e`.
    pub fn render(&self, e: &mut Exposition, name: &str, help: &str) {
        e.labelled_counter(
            name,
            help,
            "outcome",
            Outcome::ALL.iter().map(|o| (o.label(), self.get(*o))),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_outcome_under_its_label() {
        let o = Outcomes::default();
        o.count(Outcome::Finished);
        o.count(Outcome::Finished);
        o.count(Outcome::Refused);
        let mut e = Exposition::new();
        o.render(&mut e, "x_requests_total", "Xs.");
        let text = e.finish();
        assert!(text.contains("x_requests_total{outcome=\"finished\"} 2\n"));
        assert!(text.contains("x_requests_total{outcome=\"failed\"} 0\n"));
        assert!(text.contains("x_requests_total{outcome=\"refused\"} 1\n"));
    }
}
