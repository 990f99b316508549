//! Routing policies: small, interchangeable pieces that pick a server from the healthy members
//! of a pool given what the last checks and this gateway's own in-flight counts say.
//!
//! - [`LeastLoadedLanguage`]: the language server with the fewest outstanding tokens (its
//!   reported load plus an estimate for requests this gateway sent since); among servers within
//!   a slack of the least loaded, the request's affinity key picks one by rendezvous hashing, so
//!   conversations that share a prefix keep landing where their prefix is cached.
//! - [`ShortestQueueVision`]: the vision server with the fewest queued tiles; the image hash
//!   picks among near-equal ones, so a repeated image finds its features in that server's
//!   embedding cache.

use std::hash::{Hash, Hasher};

use crate::pool::{LanguageLoad, VisionLoad};

/// What a policy knows of one candidate; `L` is what the pool's checks report of its load.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate<L> {
    /// Position in the caller's list.
    pub index: usize,
    /// What its last check reported.
    pub load: L,
    /// Requests this gateway has in flight there.
    pub inflight: u32,
    /// A stable identity (its address), for affinity hashing.
    pub identity: u64,
}

/// Picks a server of one kind (`L` is its [`ServerKind::Load`](crate::pool::ServerKind::Load))
/// for a request.
pub trait Policy<L>: Send + Sync + std::fmt::Debug {
    /// The chosen candidate's `index`, or `None` when there is none.
    fn choose(&self, candidates: &[Candidate<L>], affinity: Option<u64>) -> Option<usize>;
}

/// Least outstanding tokens, with prefix affinity among near-equals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeastLoadedLanguage {
    /// Tokens each in-flight request of this gateway is assumed to add until the next check.
    pub tokens_per_request: u64,
    /// Servers whose load is within this many tokens of the least loaded count as equal.
    pub slack: u64,
}

impl Default for LeastLoadedLanguage {
    fn default() -> Self {
        Self {
            tokens_per_request: 512,
            slack: 2048,
        }
    }
}

impl Policy<LanguageLoad> for LeastLoadedLanguage {
    fn choose(
        &self,
        candidates: &[Candidate<LanguageLoad>],
        affinity: Option<u64>,
    ) -> Option<usize> {
        choose_with_slack(candidates, affinity, self.slack, |c| {
            c.load.outstanding_tokens + u64::from(c.inflight) * self.tokens_per_request
        })
    }
}

/// Shortest encoder queue, with image affinity among near-equals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShortestQueueVision {
    /// Tiles each in-flight request of this gateway is assumed to add until the next check.
    pub tiles_per_request: u64,
    /// Servers whose queue is within this many tiles of the shortest count as equal.
    pub slack: u64,
}

impl Default for ShortestQueueVision {
    fn default() -> Self {
        Self {
            tiles_per_request: 7,
            slack: 16,
        }
    }
}

impl Policy<VisionLoad> for ShortestQueueVision {
    fn choose(&self, candidates: &[Candidate<VisionLoad>], affinity: Option<u64>) -> Option<usize> {
        choose_with_slack(candidates, affinity, self.slack, |c| {
            c.load.tiles + u64::from(c.inflight) * self.tiles_per_request
        })
    }
}

/// The least `load`ed candidate, or with an affinity key the one it hashes to among those
/// within `slack` of the least.
fn choose_with_slack<L>(
    candidates: &[Candidate<L>],
    affinity: Option<u64>,
    slack: u64,
    load: impl Fn(&Candidate<L>) -> u64,
) -> Option<usize> {
    let least = candidates.iter().map(&load).min()?;
    let near = candidates
        .iter()
        .filter(|c| load(c) <= least.saturating_add(slack));
    match affinity {
        // Rendezvous hashing: the same key picks the same server while it stays near-equal.
        Some(key) => near.max_by_key(|c| mix(key, c.identity)).map(|c| c.index),
        None => near.min_by_key(|c| (load(c), c.index)).map(|c| c.index),
    }
}

/// A well-mixed combination of two keys.
pub fn mix(a: u64, b: u64) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (a, b).hash(&mut h);
    h.finish()
}

/// A stable 64-bit key of bytes (the first eight bytes of their SHA-256).
pub fn key_of(bytes: &[u8]) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c<L>(index: usize, load: L, inflight: u32) -> Candidate<L> {
        Candidate {
            index,
            load,
            inflight,
            identity: 1000 + index as u64,
        }
    }

    fn tokens(outstanding_tokens: u64) -> LanguageLoad {
        LanguageLoad {
            outstanding_tokens,
            ..LanguageLoad::default()
        }
    }

    fn tiles(tiles: u64) -> VisionLoad {
        VisionLoad {
            tiles,
            ..VisionLoad::default()
        }
    }

    #[test]
    fn least_loaded_counts_this_gateways_inflight_requests() {
        let p = LeastLoadedLanguage {
            tokens_per_request: 100,
            slack: 0,
        };
        assert_eq!(
            p.choose(&[c(0, tokens(500), 0), c(1, tokens(100), 0)], None),
            Some(1)
        );
        // Five requests sent since the last check make server 1 the busier one.
        assert_eq!(
            p.choose(&[c(0, tokens(500), 0), c(1, tokens(100), 5)], None),
            Some(0)
        );
        assert_eq!(p.choose(&[], None), None);
    }

    #[test]
    fn affinity_is_stable_among_near_equals_and_yields_to_load() {
        let p = ShortestQueueVision {
            tiles_per_request: 0,
            slack: 10,
        };
        let pool = [c(0, tiles(3), 0), c(1, tiles(5), 0), c(2, tiles(4), 0)];
        let picks: Vec<Option<usize>> = (0..64).map(|k| p.choose(&pool, Some(k))).collect();
        // The same key always picks the same server...
        for k in 0..64 {
            assert_eq!(p.choose(&pool, Some(k)), picks[k as usize]);
        }
        // ...and different keys spread over all of them.
        for i in 0..3 {
            assert!(picks.contains(&Some(i)), "{picks:?}");
        }
        // A server far busier than the rest is not chosen whatever the key.
        let busy = [c(0, tiles(3), 0), c(1, tiles(500), 0)];
        assert!((0..64).all(|k| p.choose(&busy, Some(k)) == Some(0)));
    }
}
