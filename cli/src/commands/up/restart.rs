//! When `dvd up` restarts a server that exited: after a delay that doubles with each exit in
//! the last minute, and not at all once it has exited too often in that minute.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The restart rule of one server.
#[derive(Debug, Clone)]
pub struct RestartPolicy {
    /// Exits within [`Self::window`] that stop the whole deployment.
    pub limit: usize,
    /// How far back exits count.
    pub window: Duration,
    /// The delay before the first restart; each further exit in the window doubles it.
    pub first_delay: Duration,
    /// The longest delay.
    pub longest_delay: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            limit: 5,
            window: Duration::from_secs(60),
            first_delay: Duration::from_millis(500),
            longest_delay: Duration::from_secs(8),
        }
    }
}

/// What to do about an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Start it again after this delay.
    RestartIn(Duration),
    /// It exited this many times within the window: stop everything.
    GiveUp(usize),
}

/// The exits of one server, judged by a [`RestartPolicy`].
#[derive(Debug, Clone, Default)]
pub struct ExitLog {
    exits: VecDeque<Instant>,
}

impl ExitLog {
    /// Records an exit at `now` and judges it.
    pub fn exited(&mut self, now: Instant, policy: &RestartPolicy) -> Verdict {
        while self
            .exits
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= policy.window)
        {
            self.exits.pop_front();
        }
        self.exits.push_back(now);
        let recent = self.exits.len();
        if recent >= policy.limit {
            return Verdict::GiveUp(recent);
        }
        let doublings = u32::try_from(recent - 1).unwrap_or(u32::MAX).min(16);
        Verdict::RestartIn(
            policy
                .first_delay
                .saturating_mul(1 << doublings)
                .min(policy.longest_delay),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_and_the_fifth_exit_in_a_minute_gives_up() {
        let policy = RestartPolicy::default();
        let t0 = Instant::now();
        let mut log = ExitLog::default();
        let ms = Duration::from_millis;
        let verdicts: Vec<Verdict> = (0..5)
            .map(|i| log.exited(t0 + Duration::from_secs(i * 10), &policy))
            .collect();
        assert_eq!(
            verdicts,
            [
                Verdict::RestartIn(ms(500)),
                Verdict::RestartIn(ms(1000)),
                Verdict::RestartIn(ms(2000)),
                Verdict::RestartIn(ms(4000)),
                Verdict::GiveUp(5),
            ]
        );
    }

    #[test]
    fn exits_older_than_the_window_are_forgiven_and_the_delay_is_capped() {
        let policy = RestartPolicy {
            limit: 100,
            ..RestartPolicy::default()
        };
        let t0 = Instant::now();
        let mut log = ExitLog::default();
        for i in 0..10 {
            log.exited(t0 + Duration::from_millis(i), &policy);
        }
        assert_eq!(
            log.exited(t0 + Duration::from_millis(10), &policy),
            Verdict::RestartIn(policy.longest_delay)
        );
        // A minute later the earlier exits no longer count: back to the first delay.
        assert_eq!(
            log.exited(t0 + Duration::from_secs(61), &policy),
            Verdict::RestartIn(policy.first_delay)
        );
        // Exits more than a minute apart never add up to the limit.
        let mut spaced = ExitLog::default();
        let default = RestartPolicy::default();
        for i in 0..20 {
            let verdict = spaced.exited(t0 + Duration::from_secs(61 * i), &default);
            assert_eq!(verdict, Verdict::RestartIn(default.first_delay));
        }
    }
}
