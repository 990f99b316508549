//! Pools of vision and language servers: members come from static addresses and DNS names that
//! are re-resolved periodically; every member is health- and load-checked on an interval, and
//! requests only go to members whose last check passed.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use dvd_proto::common::v1::ServingStatus;
use dvd_proto::language::v1::{
    HealthRequest as LanguageHealthRequest, StatsRequest as LanguageStatsRequest,
};
use dvd_proto::limits::{language_client, tuned_endpoint, vision_client};
use dvd_proto::tls::GrpcTls;
use dvd_proto::vision::v1::{
    HealthRequest as VisionHealthRequest, StatsRequest as VisionStatsRequest,
};
use tonic::transport::Channel;

use crate::config::PoolSection;

/// Which servers a pool holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    /// Vision servers (`VisionService`).
    Vision,
    /// Language servers (`LanguageService`).
    Language,
}

impl PoolKind {
    /// `vision` or `language`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vision => "vision",
            Self::Language => "language",
        }
    }
}

/// What the last check of a member found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemberState {
    /// Whether the last check passed.
    pub healthy: bool,
    /// Checks failed in a row.
    pub failures: u32,
    /// Language servers: feature listener address and transport (`dvd.feature.v1.Transport`).
    pub feature_address: Option<(String, i32)>,
    /// Load: language servers' outstanding tokens, vision servers' queued tiles.
    pub load: u64,
    /// Language servers: KV blocks in use over total.
    pub kv_used: f64,
    /// Vision servers: embedding-cache hits and lookups.
    pub cache: (u64, u64),
    /// Hidden size of the features the server produces or takes.
    pub hidden_size: u32,
}

/// One server of a pool.
#[derive(Debug)]
pub struct Member {
    /// `ip:port`.
    pub addr: SocketAddr,
    /// The gRPC channel (connects lazily, reconnects by itself).
    pub channel: Channel,
    state: Mutex<MemberState>,
    /// Requests this gateway has sent it and not seen finish.
    pub inflight: AtomicU32,
    /// Until when routing passes it over (see [`Member::cool_down`]).
    cooling_until: Mutex<Option<Instant>>,
}

impl Member {
    fn new(addr: SocketAddr, tls: Option<&PoolTls>) -> Result<Self, String> {
        let endpoint = match tls {
            None => tuned_endpoint(&addr.to_string()),
            Some(tls) => tuned_endpoint(&format!("https://{addr}"))
                .and_then(|e| e.tls_config(tls.config.client_config(&tls.server_name))),
        };
        let channel = endpoint.map_err(|e| e.to_string())?.connect_lazy();
        Ok(Self {
            addr,
            channel,
            state: Mutex::new(MemberState::default()),
            inflight: AtomicU32::new(0),
            cooling_until: Mutex::new(None),
        })
    }

    /// The last check's findings.
    pub fn state(&self) -> MemberState {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Marks the member failed (a request to it failed); the next check may restore it.
    pub fn mark_failed(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.healthy = false;
        state.failures += 1;
    }

    /// Has routing pass the member over for `period` while other members are healthy: for a
    /// failure its health check cannot see, such as a vision server whose features stopped
    /// reaching the language servers while it still answers gRPC. Zero does nothing.
    pub fn cool_down(&self, period: Duration) {
        if period.is_zero() {
            return;
        }
        tracing::warn!(
            server = %self.addr,
            seconds = period.as_secs_f64(),
            "passing a server over after a failure its health check does not see"
        );
        *self
            .cooling_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + period);
    }

    /// Whether a [`cool_down`](Self::cool_down) is running.
    pub fn cooling_down(&self) -> bool {
        self.cooling_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|until| Instant::now() < until)
    }

    fn set(&self, found: Result<MemberState, String>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match found {
            Ok(fresh) => *state = fresh,
            Err(e) => {
                if state.healthy {
                    tracing::warn!(server = %self.addr, error = %e, "server failed its health check");
                }
                state.healthy = false;
                state.failures += 1;
            }
        }
    }
}

/// Counts a request against a member while it lives.
#[derive(Debug)]
pub struct InflightGuard(Arc<Member>);

impl InflightGuard {
    /// Counts one more request on `member`.
    pub fn new(member: Arc<Member>) -> Self {
        member.inflight.fetch_add(1, Ordering::AcqRel);
        Self(member)
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Mutual TLS to a pool's members: the gateway's identity and CA, and the name the members'
/// certificates are verified against.
#[derive(Debug, Clone)]
pub struct PoolTls {
    /// CA and the gateway's certificate.
    pub config: GrpcTls,
    /// The name in the members' certificates.
    pub server_name: String,
}

/// A pool of one kind of server.
#[derive(Debug)]
pub struct Pool {
    kind: PoolKind,
    targets: PoolSection,
    tls: Option<PoolTls>,
    members: RwLock<Vec<Arc<Member>>>,
    last_resolve: Mutex<Option<Instant>>,
}

impl Pool {
    /// An empty pool over `targets`, reached over mutual TLS when `tls` is given;
    /// [`refresh`](Self::refresh) fills it.
    pub fn new(kind: PoolKind, targets: PoolSection, tls: Option<PoolTls>) -> Self {
        Self {
            kind,
            targets,
            tls,
            members: RwLock::new(Vec::new()),
            last_resolve: Mutex::new(None),
        }
    }

    /// Which servers it holds.
    pub fn kind(&self) -> PoolKind {
        self.kind
    }

    /// Every member.
    pub fn members(&self) -> Vec<Arc<Member>> {
        self.members
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Members whose last check passed.
    pub fn healthy(&self) -> Vec<Arc<Member>> {
        self.members()
            .into_iter()
            .filter(|m| m.state().healthy)
            .collect()
    }

    /// Re-resolves the pool's names when `resolve_every` has passed, then checks every member.
    pub async fn refresh(&self, resolve_every: Duration, timeout: Duration) {
        let due = {
            let mut last = self
                .last_resolve
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let due = last.is_none_or(|t| t.elapsed() >= resolve_every);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            self.resolve().await;
        }
        let members = self.members();
        let checks = members.iter().map(|m| async move {
            let found = tokio::time::timeout(timeout, check(self.kind, &m.channel))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {} ms", timeout.as_millis())));
            m.set(found);
        });
        futures::future::join_all(checks).await;
    }

    /// Resolves every target; members that vanished from DNS leave the pool, new ones join.
    async fn resolve(&self) {
        let mut found = Vec::new();
        for target in self.targets.targets() {
            match tokio::net::lookup_host(target.as_str()).await {
                Ok(addrs) => found.extend(addrs),
                Err(e) => {
                    tracing::warn!(pool = self.kind.name(), %target, error = %e, "cannot resolve")
                }
            }
        }
        let wanted: HashSet<SocketAddr> = found.into_iter().collect();
        let mut members = self.members.write().unwrap_or_else(PoisonError::into_inner);
        members.retain(|m| wanted.contains(&m.addr));
        for addr in wanted {
            if members.iter().any(|m| m.addr == addr) {
                continue;
            }
            match Member::new(addr, self.tls.as_ref()) {
                Ok(member) => {
                    tracing::info!(pool = self.kind.name(), %addr, "server joined the pool");
                    members.push(Arc::new(member));
                }
                Err(e) => tracing::warn!(pool = self.kind.name(), %addr, error = %e, "bad address"),
            }
        }
        members.sort_by_key(|m| m.addr);
    }
}

/// One health and load check.
async fn check(kind: PoolKind, channel: &Channel) -> Result<MemberState, String> {
    match kind {
        PoolKind::Vision => {
            let mut client = vision_client(channel.clone());
            let health = client
                .health(VisionHealthRequest {})
                .await
                .map_err(|s| s.message().to_owned())?
                .into_inner();
            let stats = client
                .stats(VisionStatsRequest {})
                .await
                .map_err(|s| s.message().to_owned())?
                .into_inner();
            Ok(MemberState {
                healthy: health.status == ServingStatus::Serving as i32,
                failures: 0,
                feature_address: None,
                load: u64::from(stats.queued_tiles) + u64::from(stats.running_tiles),
                kv_used: 0.0,
                cache: (stats.cache_hits, stats.cache_hits + stats.cache_misses),
                hidden_size: health.hidden_size,
            })
        }
        PoolKind::Language => {
            let mut client = language_client(channel.clone());
            let health = client
                .health(LanguageHealthRequest {})
                .await
                .map_err(|s| s.message().to_owned())?
                .into_inner();
            let stats = client
                .stats(LanguageStatsRequest {})
                .await
                .map_err(|s| s.message().to_owned())?
                .into_inner();
            Ok(MemberState {
                healthy: health.status == ServingStatus::Serving as i32,
                failures: 0,
                feature_address: Some((health.feature_address, health.feature_transport)),
                load: stats.outstanding_tokens,
                kv_used: if stats.kv_blocks_total == 0 {
                    0.0
                } else {
                    f64::from(stats.kv_blocks_used) / f64::from(stats.kv_blocks_total)
                },
                cache: (0, 0),
                hidden_size: health.hidden_size,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_cool_down_lasts_its_period_and_zero_means_none() {
        let member = |port| Member::new(SocketAddr::from(([127, 0, 0, 1], port)), None).unwrap();
        let m = member(1);
        assert!(!m.cooling_down());
        m.cool_down(Duration::ZERO);
        assert!(!m.cooling_down());
        m.cool_down(Duration::from_secs(600));
        assert!(m.cooling_down());
        let brief = member(2);
        brief.cool_down(Duration::from_millis(1));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!brief.cooling_down());
    }
}
