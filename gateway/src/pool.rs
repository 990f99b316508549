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

use crate::activity::{MinuteCounts, MinuteWindow};
use crate::config::PoolSection;
use crate::metrics::PoolGauge;

/// A kind of server a pool holds: its name, what a check of it reports, and the check.
pub trait ServerKind: std::fmt::Debug + Send + Sync + 'static {
    /// What a check reports of one server beyond its health.
    type Load: Clone + std::fmt::Debug + Default + PartialEq + Send + Sync + 'static;

    /// `vision` or `language`.
    const NAME: &'static str;

    /// One health and load check of the server behind `channel`.
    fn check(
        channel: Channel,
    ) -> impl Future<Output = Result<MemberState<Self::Load>, CheckError>> + Send;
}

/// Vision servers (`VisionService`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vision;

/// Language servers (`LanguageService`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Language;

/// Embedding-cache counters of a vision server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCounts {
    /// Lookups that found the image's features.
    pub hits: u64,
    /// Every lookup.
    pub lookups: u64,
}

/// What a check of a vision server reports beyond its health.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VisionLoad {
    /// Tiles queued or being encoded.
    pub tiles: u64,
    /// Requests waiting to be preprocessed or encoded.
    pub queued_requests: u64,
    /// Its embedding cache.
    pub cache: CacheCounts,
}

/// Where a language server takes a request's features.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeatureAddress {
    /// `host:port` of its feature listener, as it reports it (the host may be a wildcard).
    pub address: String,
    /// The listener's transport (`dvd.feature.v1.Transport`).
    pub transport: i32,
}

/// What a check of a language server reports beyond its health.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LanguageLoad {
    /// Tokens it has still to process.
    pub outstanding_tokens: u64,
    /// KV blocks in use over total.
    pub kv_used: f64,
    /// Sequences waiting to be scheduled or for their image features.
    pub waiting: u64,
    /// Fraction of prompt tokens its prefix cache served, 0 to 1.
    pub prefix_cache_hit_rate: f64,
    /// Its feature listener.
    pub features: FeatureAddress,
}

/// What the last check of a member found; `L` is its kind's [`ServerKind::Load`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemberState<L> {
    /// Whether the last check passed.
    pub healthy: bool,
    /// Checks failed in a row.
    pub failures: u32,
    /// Hidden size of the features the server produces or takes.
    pub hidden_size: u32,
    /// Its load, as the last check that answered reported it.
    pub load: L,
}

/// Why a health and load check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The server answered the call with an error.
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
    /// It did not answer in time.
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
}

/// One server of a pool.
#[derive(Debug)]
pub struct Member<K: ServerKind> {
    /// `ip:port`.
    pub addr: SocketAddr,
    /// The gRPC channel (connects lazily, reconnects by itself).
    pub channel: Channel,
    state: Mutex<MemberState<K::Load>>,
    /// Requests this gateway has sent it and not seen finish.
    pub inflight: AtomicU32,
    /// Until when routing passes it over (see [`Member::cool_down`]).
    cooling_until: Mutex<Option<Instant>>,
    /// Its answers and failures over the last minute.
    activity: Mutex<MinuteWindow>,
}

impl<K: ServerKind> Member<K> {
    fn new(addr: SocketAddr, tls: Option<&PoolTls>) -> Result<Self, tonic::transport::Error> {
        let endpoint = match tls {
            None => tuned_endpoint(&addr.to_string())?,
            Some(tls) => tuned_endpoint(&format!("https://{addr}"))?
                .tls_config(tls.config.client_config(&tls.server_name))?,
        };
        Ok(Self {
            addr,
            channel: endpoint.connect_lazy(),
            state: Mutex::new(MemberState::default()),
            inflight: AtomicU32::new(0),
            cooling_until: Mutex::new(None),
            activity: Mutex::new(MinuteWindow::new(Instant::now())),
        })
    }

    /// The last check's findings.
    pub fn state(&self) -> MemberState<K::Load> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Marks the member failed (a request to it failed); the next check may restore it.
    pub fn mark_failed(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .fail();
        self.record_failure();
    }

    /// Counts a request that failed on it (without changing its health).
    pub fn record_failure(&self) {
        self.activity().failed(Instant::now());
    }

    /// Counts a request it answered.
    pub fn record_answer(&self) {
        self.activity().answered(Instant::now());
    }

    /// Its answers and failures over the last minute.
    pub fn last_minute(&self) -> MinuteCounts {
        self.activity().counts(Instant::now())
    }

    fn activity(&self) -> std::sync::MutexGuard<'_, MinuteWindow> {
        self.activity.lock().unwrap_or_else(PoisonError::into_inner)
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

    fn set(&self, found: Result<MemberState<K::Load>, CheckError>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match found {
            Ok(fresh) => *state = fresh,
            Err(e) => {
                if state.healthy {
                    tracing::warn!(server = %self.addr, error = %e, "server failed its health check");
                }
                state.fail();
            }
        }
    }
}

impl<L> MemberState<L> {
    /// What a check that answered found: healthy when the server reports `status` `SERVING`.
    fn checked(status: i32, hidden_size: u32, load: L) -> Self {
        Self {
            healthy: status == ServingStatus::Serving as i32,
            failures: 0,
            hidden_size,
            load,
        }
    }

    /// A failed check or request: unhealthy, one more failure in a row, the load kept.
    fn fail(&mut self) {
        self.healthy = false;
        self.failures += 1;
    }
}

/// Counts a request against a member while it lives.
#[derive(Debug)]
pub struct InflightGuard<K: ServerKind>(Arc<Member<K>>);

impl<K: ServerKind> InflightGuard<K> {
    /// Counts one more request on `member`.
    pub fn new(member: Arc<Member<K>>) -> Self {
        member.inflight.fetch_add(1, Ordering::AcqRel);
        Self(member)
    }

    /// The member it counts on.
    pub fn member(&self) -> &Member<K> {
        &self.0
    }
}

impl<K: ServerKind> Drop for InflightGuard<K> {
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
pub struct Pool<K: ServerKind> {
    targets: RwLock<PoolSection>,
    tls: Option<PoolTls>,
    members: RwLock<Vec<Arc<Member<K>>>>,
    last_resolve: Mutex<Option<Instant>>,
}

impl<K: ServerKind> Pool<K> {
    /// An empty pool over `targets`, reached over mutual TLS when `tls` is given;
    /// [`refresh`](Self::refresh) fills it.
    pub fn new(targets: PoolSection, tls: Option<PoolTls>) -> Self {
        Self {
            targets: RwLock::new(targets),
            tls,
            members: RwLock::new(Vec::new()),
            last_resolve: Mutex::new(None),
        }
    }

    /// Where its servers are, as last configured.
    pub fn targets(&self) -> PoolSection {
        self.targets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Takes new targets (a reloaded configuration): the next [`refresh`](Self::refresh)
    /// resolves them at once, members no longer named leave, new ones join.
    pub fn retarget(&self, targets: PoolSection) {
        *self.targets.write().unwrap_or_else(PoisonError::into_inner) = targets;
        *self
            .last_resolve
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Every member.
    pub fn members(&self) -> Vec<Arc<Member<K>>> {
        self.members
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Members whose last check passed.
    pub fn healthy(&self) -> Vec<Arc<Member<K>>> {
        self.members()
            .into_iter()
            .filter(|m| m.state().healthy)
            .collect()
    }

    /// Its size and health, for the metrics.
    pub fn gauge(&self) -> PoolGauge {
        PoolGauge {
            pool: K::NAME,
            members: self.members().len(),
            healthy: self.healthy().len(),
        }
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
            let found = tokio::time::timeout(timeout, K::check(m.channel.clone()))
                .await
                .unwrap_or(Err(CheckError::Timeout(timeout)));
            m.set(found);
        });
        futures::future::join_all(checks).await;
    }

    /// Resolves every target; members that vanished from DNS leave the pool, new ones join.
    async fn resolve(&self) {
        let mut found = Vec::new();
        for target in self.targets().targets() {
            match tokio::net::lookup_host(target.as_str()).await {
                Ok(addrs) => found.extend(addrs),
                Err(e) => {
                    tracing::warn!(pool = K::NAME, %target, error = %e, "cannot resolve")
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
                    tracing::info!(pool = K::NAME, %addr, "server joined the pool");
                    members.push(Arc::new(member));
                }
                Err(e) => tracing::warn!(pool = K::NAME, %addr, error = %e, "bad address"),
            }
        }
        members.sort_by_key(|m| m.addr);
    }
}

impl ServerKind for Vision {
    type Load = VisionLoad;
    const NAME: &'static str = "vision";

    async fn check(channel: Channel) -> Result<MemberState<VisionLoad>, CheckError> {
        let mut client = vision_client(channel);
        let health = client.health(VisionHealthRequest {}).await?.into_inner();
        let stats = client.stats(VisionStatsRequest {}).await?.into_inner();
        let load = VisionLoad {
            tiles: u64::from(stats.queued_tiles) + u64::from(stats.running_tiles),
            queued_requests: u64::from(stats.queued_requests),
            cache: CacheCounts {
                hits: stats.cache_hits,
                lookups: stats.cache_hits + stats.cache_misses,
            },
        };
        Ok(MemberState::checked(
            health.status,
            health.hidden_size,
            load,
        ))
    }
}

impl ServerKind for Language {
    type Load = LanguageLoad;
    const NAME: &'static str = "language";

    async fn check(channel: Channel) -> Result<MemberState<LanguageLoad>, CheckError> {
        let mut client = language_client(channel);
        let health = client.health(LanguageHealthRequest {}).await?.into_inner();
        let stats = client.stats(LanguageStatsRequest {}).await?.into_inner();
        let load = LanguageLoad {
            outstanding_tokens: stats.outstanding_tokens,
            kv_used: if stats.kv_blocks_total == 0 {
                0.0
            } else {
                f64::from(stats.kv_blocks_used) / f64::from(stats.kv_blocks_total)
            },
            waiting: u64::from(stats.waiting_sequences) + u64::from(stats.waiting_for_features),
            prefix_cache_hit_rate: stats.prefix_cache_hit_rate,
            features: FeatureAddress {
                address: health.feature_address,
                transport: health.feature_transport,
            },
        };
        Ok(MemberState::checked(
            health.status,
            health.hidden_size,
            load,
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_cool_down_lasts_its_period_and_zero_means_none() {
        let member =
            |port| Member::<Vision>::new(SocketAddr::from(([127, 0, 0, 1], port)), None).unwrap();
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
