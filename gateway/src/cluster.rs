//! The cluster view (`GET /v1/cluster`, `dvd status`): every member of both pools with its
//! health, load, cache and what it did for this gateway over the last minute.

use serde::{Deserialize, Serialize};

use crate::pool::{Language, Member, Pool, ServerKind, Vision};

/// Both pools, members sorted by address.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    /// The vision servers.
    pub vision: Vec<MemberView>,
    /// The language servers.
    pub language: Vec<MemberView>,
}

/// One server as the gateway sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberView {
    /// `ip:port` of its gRPC API.
    pub address: String,
    /// Whether its last health check passed.
    pub healthy: bool,
    /// What routing balances: tiles queued or being encoded (vision), prompt and completion
    /// tokens still to process (language).
    pub load: u64,
    /// Requests waiting: for preprocessing or the encoder (vision); to be scheduled or for
    /// their features (language).
    pub queue: u64,
    /// Hit rate of its cache, 0 to 1: the image feature cache (vision), the prefix cache
    /// (language).
    pub cache_hit_rate: f64,
    /// Requests it answered for this gateway per second, over the last minute.
    pub throughput: f64,
    /// Requests that failed on it in the last minute.
    pub errors_last_minute: u64,
    /// Times its supervisor restarted it (as `[vision|language].restarts` says).
    pub restarts: u32,
}

/// What a member's kind adds to the view: its load, queue and cache hit rate.
trait Viewed: ServerKind {
    fn figures(load: &Self::Load) -> (u64, u64, f64);
}

impl Viewed for Vision {
    fn figures(load: &Self::Load) -> (u64, u64, f64) {
        let cache = match load.cache.lookups {
            0 => 0.0,
            n => load.cache.hits as f64 / n as f64,
        };
        (load.tiles, load.queued_requests, cache)
    }
}

impl Viewed for Language {
    fn figures(load: &Self::Load) -> (u64, u64, f64) {
        (
            load.outstanding_tokens,
            load.waiting,
            load.prefix_cache_hit_rate,
        )
    }
}

impl ClusterView {
    /// The view of `vision` and `language` now.
    pub fn of(vision: &Pool<Vision>, language: &Pool<Language>) -> Self {
        Self {
            vision: members(vision),
            language: members(language),
        }
    }
}

fn members<K: Viewed>(pool: &Pool<K>) -> Vec<MemberView> {
    let restarts = pool.targets().restarts;
    pool.members()
        .iter()
        .map(|member| view(member, restarts.get(&member.addr.to_string()).copied()))
        .collect()
}

fn view<K: Viewed>(member: &Member<K>, restarts: Option<u32>) -> MemberView {
    let state = member.state();
    let (load, queue, cache_hit_rate) = K::figures(&state.load);
    let minute = member.last_minute();
    MemberView {
        address: member.addr.to_string(),
        healthy: state.healthy,
        load,
        queue,
        cache_hit_rate,
        throughput: minute.per_second(),
        errors_last_minute: minute.failed,
        restarts: restarts.unwrap_or(0),
    }
}
