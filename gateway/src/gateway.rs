//! The gateway: the two pools, the routing policies, admission, metrics, and the chat pipeline
//! ([`crate::chat`]) behind both front doors.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use dvd_proto::api::v1::{ChatRequest, HealthResponse, Model};
use dvd_proto::common::v1::ServingStatus;
use dvd_serve::{Lifecycle, Service, StopTaking};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::auth::{ApiKeyError, ApiKeys};
use crate::backend::{ChatBackend, ChatStream, GatewayError};
use crate::cluster::ClusterView;
use crate::config::{GatewayConfig, TlsConfigError};
use crate::fetch::{FetchSetupError, Fetcher};
use crate::metrics::{Metrics, PoolGauge};
use crate::pool::{Language, LanguageLoad, Pool, PoolTls, Vision, VisionLoad};
use crate::routing::{LeastLoadedLanguage, Policy, ShortestQueueVision};

/// Why a gateway cannot be built from its configuration: a file it names cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `[auth]`'s keys.
    #[error(transparent)]
    ApiKeys(#[from] ApiKeyError),
    /// `[images]`' fetch policy or CA file.
    #[error(transparent)]
    Fetch(#[from] FetchSetupError),
    /// `[tls]`'s files.
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
}

/// The gateway over its pools. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Gateway {
    pub(crate) config: GatewayConfig,
    pub(crate) vision: Pool<Vision>,
    pub(crate) language: Pool<Language>,
    pub(crate) vision_policy: Box<dyn Policy<VisionLoad>>,
    pub(crate) language_policy: Box<dyn Policy<LanguageLoad>>,
    pub(crate) admission: Arc<Semaphore>,
    pub(crate) metrics: Arc<Metrics>,
    /// Draining from SIGTERM on (`/health/ready` turns 503 so load balancers stop sending new
    /// clients), and the Encode calls running beside their requests.
    pub(crate) lifecycle: Lifecycle,
    /// Fetches `https` image URLs under `[images]`' policy.
    pub(crate) fetcher: Fetcher,
    /// The API keys of `[auth]`; `None`: open endpoints.
    auth: Option<Arc<ApiKeys>>,
    created: u64,
}

impl Gateway {
    /// A gateway for `config` with the default policies; call [`refresh`](Self::refresh) (or
    /// [`run_checks`](Self::run_checks)) before serving. Fails when `[auth]`'s keys,
    /// `images.fetch_ca_file` or `[tls]`'s files cannot be loaded.
    pub fn new(config: GatewayConfig) -> Result<Self, SetupError> {
        Self::with_policies(
            config,
            Box::new(ShortestQueueVision::default()),
            Box::new(LeastLoadedLanguage::default()),
        )
    }

    /// A gateway with other routing policies.
    pub fn with_policies(
        config: GatewayConfig,
        vision_policy: Box<dyn Policy<VisionLoad>>,
        language_policy: Box<dyn Policy<LanguageLoad>>,
    ) -> Result<Self, SetupError> {
        let auth = ApiKeys::load(&config.auth)?.map(Arc::new);
        let fetcher = Fetcher::new(&config.images, &config.limits)?;
        let grpc_tls = config.tls.load()?;
        let pool_tls = |server_name: &String| {
            grpc_tls.clone().map(|config| PoolTls {
                config,
                server_name: server_name.clone(),
            })
        };
        Ok(Self {
            fetcher,
            vision: Pool::new(
                config.vision.clone(),
                pool_tls(&config.tls.vision_server_name),
            ),
            language: Pool::new(
                config.language.clone(),
                pool_tls(&config.tls.language_server_name),
            ),
            admission: Arc::new(Semaphore::new(config.limits.max_inflight)),
            vision_policy,
            language_policy,
            metrics: Arc::new(Metrics::default()),
            lifecycle: Lifecycle::new(),
            auth,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            config,
        })
    }

    /// The API keys requests must present (`None`: the endpoints are open).
    pub fn auth(&self) -> Option<Arc<ApiKeys>> {
        self.auth.clone()
    }

    /// The configuration in force.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Takes the pools of a re-read configuration (new members join, members no longer named
    /// leave, restart counts change) and checks them at once. Other sections keep their values
    /// until a restart; it says so when `fresh` changes them.
    pub async fn reload_pools(&self, fresh: GatewayConfig) {
        let rest_changed = GatewayConfig {
            vision: self.config.vision.clone(),
            language: self.config.language.clone(),
            ..fresh.clone()
        } != self.config;
        if rest_changed {
            tracing::warn!(
                "the reloaded configuration changes more than [vision] and [language]; \
                 those changes need a restart"
            );
        }
        self.vision.retarget(fresh.vision);
        self.language.retarget(fresh.language);
        self.refresh().await;
        tracing::info!(
            vision = self.vision.members().len(),
            language = self.language.members().len(),
            "pools reloaded"
        );
    }

    /// One round of re-resolution (when due) and health checks of both pools.
    pub async fn refresh(&self) {
        let health = &self.config.health;
        tokio::join!(
            self.vision
                .refresh(health.resolve_interval(), health.timeout()),
            self.language
                .refresh(health.resolve_interval(), health.timeout()),
        );
    }

    /// Refreshes on the configured interval until `stop` is cancelled.
    pub async fn run_checks(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.health.interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate; the caller has just refreshed
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => self.refresh().await,
            }
        }
    }

    fn gauges(&self) -> [PoolGauge; 2] {
        [self.vision.gauge(), self.language.gauge()]
    }
}

impl Service for Gateway {
    const STOP_TAKING: StopTaking = StopTaking::ByClosingListeners;

    /// Reports `DRAINING` from now on (requests are still served: the gateway is stateless and
    /// finishes whatever reaches it until its listeners close).
    fn drain(&self) {
        self.lifecycle.drain();
    }

    /// Admitted requests whose answer has not ended.
    fn in_flight(&self) -> usize {
        self.config.limits.max_inflight - self.admission.available_permits()
    }

    /// Waits for every Encode call still running beside a request.
    async fn close(&self) {
        self.lifecycle.close().await;
    }
}

#[async_trait]
impl ChatBackend for Gateway {
    async fn chat(&self, request: ChatRequest) -> Result<ChatStream, GatewayError> {
        let result = crate::chat::start(self, request).await;
        let outcome = match &result {
            Ok(_) => 200,
            Err(e) => e.http_status(),
        };
        self.metrics.request("chat", outcome.to_string());
        result
    }

    fn models(&self) -> Vec<Model> {
        vec![Model {
            id: self.config.server.model.clone(),
            owned_by: "dvd".into(),
            created: self.created,
            max_model_len: self.config.server.max_model_len,
        }]
    }

    async fn health(&self) -> HealthResponse {
        let vision = self.vision.healthy().len() as u32;
        let language = self.language.healthy().len() as u32;
        // Text-only traffic needs only the language pool; with none configured for vision, the
        // gateway still serves.
        let vision_ok = vision > 0 || self.vision.targets().targets().next().is_none();
        HealthResponse {
            status: if self.lifecycle.is_draining() {
                ServingStatus::Draining
            } else if language > 0 && vision_ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            } as i32,
            vision_servers_ready: vision,
            language_servers_ready: language,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    fn cluster(&self) -> ClusterView {
        ClusterView::of(&self.vision, &self.language)
    }

    fn metrics_text(&self) -> String {
        let mut text = self.metrics.render(&self.gauges());
        if let Some(auth) = &self.auth {
            auth.render(&mut text);
        }
        let mut tracing = dvd_serve::Exposition::new();
        dvd_serve::telemetry::expose(&mut tracing);
        text.push_str(&tracing.finish());
        text
    }
}
