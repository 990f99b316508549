//! The gateway's configuration file (TOML). Every field has a default, so a file only names what
//! differs; `[vision]` and `[language]` list static `host:port` addresses and/or DNS names that
//! are re-resolved periodically (a Kubernetes headless Service resolves to all its pods).
//!
//! ```toml
//! [server]
//! http = "0.0.0.0:8000"
//! grpc = "0.0.0.0:8001"
//! model = "InternVL3_5-8B"
//!
//! [vision]
//! addresses = ["10.0.0.5:50051"]
//! dns = ["vision.dvd.svc.cluster.local:50051"]
//!
//! [language]
//! dns = ["language.dvd.svc.cluster.local:50061"]
//!
//! [limits]
//! max_inflight = 256
//! ```
//!
//! On SIGHUP, `dvd gateway serve` re-reads the file and takes the pools' new members (and their
//! restart counts) without a restart; other changes need a restart.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Listen addresses and the served model.
    pub server: ServerSection,
    /// The vision pool.
    pub vision: PoolSection,
    /// The language pool.
    pub language: PoolSection,
    /// Health checks and re-resolution.
    pub health: HealthSection,
    /// Request limits and admission.
    pub limits: LimitsSection,
    /// Where images may come from.
    pub images: ImagesSection,
    /// Video inputs.
    pub video: VideoSection,
    /// API keys on the public endpoints.
    pub auth: AuthSection,
    /// Mutual TLS to the servers.
    pub tls: TlsSection,
}

/// `[tls]`: mutual TLS on the gRPC calls to vision and language servers (off unless `ca_file`
/// is set). The gateway verifies servers against `ca_file` and presents `cert_file`, which must
/// name `dvd-gateway` (`dvd tls mutual` writes such files).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// The deployment's CA certificate (PEM).
    pub ca_file: Option<PathBuf>,
    /// The gateway's certificate chain (PEM).
    pub cert_file: Option<PathBuf>,
    /// The gateway's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// The name vision servers' certificates are verified against.
    pub vision_server_name: String,
    /// The name language servers' certificates are verified against (also the QUIC feature
    /// listeners' name when `[language] feature_tls_name` is empty).
    pub language_server_name: String,
}

impl Default for TlsSection {
    fn default() -> Self {
        Self {
            ca_file: None,
            cert_file: None,
            key_file: None,
            vision_server_name: dvd_proto::tls::VISION_ROLE.to_owned(),
            language_server_name: dvd_proto::tls::LANGUAGE_ROLE.to_owned(),
        }
    }
}

/// The three files of mutual TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TlsFiles<'a> {
    /// The deployment's CA certificate.
    ca: &'a Path,
    /// The gateway's certificate chain.
    cert: &'a Path,
    /// The gateway's private key.
    key: &'a Path,
}

/// Why `[tls]` gives no TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// Some of the three files are named, not all.
    #[error(transparent)]
    Incomplete(#[from] FieldError),
    /// A file cannot be read or used.
    #[error(transparent)]
    Load(#[from] dvd_proto::tls::TlsError),
}

impl TlsSection {
    /// The CA, certificate and key files when mutual TLS is on, `None` when off; an error
    /// naming the first one missing unless all three or none are set.
    fn files(&self) -> Result<Option<TlsFiles<'_>>, FieldError> {
        match (&self.ca_file, &self.cert_file, &self.key_file) {
            (None, None, None) => Ok(None),
            (Some(ca), Some(cert), Some(key)) => Ok(Some(TlsFiles { ca, cert, key })),
            (ca, cert, _) => {
                let missing = if ca.is_none() {
                    "tls.ca_file"
                } else if cert.is_none() {
                    "tls.cert_file"
                } else {
                    "tls.key_file"
                };
                Err(FieldError::new(
                    missing,
                    "none",
                    "[tls] needs ca_file, cert_file and key_file together",
                ))
            }
        }
    }

    /// The CA, certificate and key when mutual TLS is on (all three set), `None` when off.
    pub fn load(&self) -> Result<Option<dvd_proto::tls::GrpcTls>, TlsConfigError> {
        let Some(files) = self.files()? else {
            return Ok(None);
        };
        Ok(Some(dvd_proto::tls::GrpcTls::from_files(
            files.ca, files.cert, files.key,
        )?))
    }
}

/// `[auth]`: API keys on `/v1/*` and the public gRPC API (none listed: open). Health, readiness
/// and metrics stay open for probes and scrapers.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    /// Keys, each `KEY` or `NAME KEY` (prefer `api_keys_file`: keep keys out of config files).
    pub api_keys: Vec<String>,
    /// A file of keys, one `KEY` or `NAME KEY` per line; `#` starts a comment line.
    pub api_keys_file: Option<std::path::PathBuf>,
    /// Requests per minute per key; 0: no limit.
    pub requests_per_minute: u32,
    /// Requests a key may send at once before the rate applies.
    pub burst: u32,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            api_keys: Vec::new(),
            api_keys_file: None,
            requests_per_minute: 0,
            burst: 10,
        }
    }
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    /// OpenAI-compatible HTTP listen address.
    pub http: SocketAddr,
    /// Public gRPC listen address.
    pub grpc: SocketAddr,
    /// Model id clients name (and `GET /v1/models` lists). Requests may also leave it empty.
    pub model: String,
    /// Context length reported by `/v1/models`.
    pub max_model_len: u32,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            http: SocketAddr::from(([127, 0, 0, 1], 8000)),
            grpc: SocketAddr::from(([127, 0, 0, 1], 8001)),
            model: "dvd".into(),
            max_model_len: 32_768,
        }
    }
}

/// `[vision]` or `[language]`: where the pool's servers are.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PoolSection {
    /// Static `host:port` addresses (IP or host name, resolved once per refresh too).
    pub addresses: Vec<String>,
    /// DNS names (`name:port`) whose every address is a pool member, re-resolved periodically.
    pub dns: Vec<String>,
    /// Language pool only: the TLS name vision servers verify on these servers' QUIC feature
    /// listeners (one certificate for the whole pool); empty: the host of the feature address.
    pub feature_tls_name: String,
    /// How often the server at each address has been restarted, as its supervisor counts
    /// (`dvd up` writes it); shown by `GET /v1/cluster`. Absent: 0.
    pub restarts: BTreeMap<String, u32>,
}

impl PoolSection {
    /// Every configured name, static first.
    pub fn targets(&self) -> impl Iterator<Item = &String> {
        self.addresses.iter().chain(&self.dns)
    }
}

/// `[health]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HealthSection {
    /// Between health and load checks of every server, milliseconds.
    pub interval_ms: u64,
    /// Limit on one check, milliseconds.
    pub timeout_ms: u64,
    /// Between re-resolutions of the pools' names, milliseconds.
    pub resolve_interval_ms: u64,
    /// How long a vision server whose features did not reach the language server in time is
    /// passed over while other vision servers are healthy, milliseconds (0: never). Its health
    /// check cannot see that failure (a partition between the two servers), so without this
    /// the next requests routed to it would wait out the feature timeout too.
    pub cooldown_ms: u64,
}

impl Default for HealthSection {
    fn default() -> Self {
        Self {
            interval_ms: 1000,
            timeout_ms: 1000,
            resolve_interval_ms: 5000,
            cooldown_ms: 30_000,
        }
    }
}

impl HealthSection {
    /// The check interval.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms.max(10))
    }

    /// The cool-down of a vision server whose features did not arrive.
    pub fn cooldown(&self) -> Duration {
        Duration::from_millis(self.cooldown_ms)
    }

    /// The check timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.max(10))
    }

    /// The re-resolution interval.
    pub fn resolve_interval(&self) -> Duration {
        Duration::from_millis(self.resolve_interval_ms.max(10))
    }
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    /// Requests in flight before new ones get 429 / `RESOURCE_EXHAUSTED`.
    pub max_inflight: usize,
    /// Largest HTTP body, MiB.
    pub max_body_mib: usize,
    /// Images per request.
    pub max_images: usize,
    /// Largest image, MiB (decoded from base64).
    pub max_image_mib: usize,
    /// The most tiles (thumbnail excluded) a request may ask for per image; an image that asks
    /// for none is tiled by the checkpoint's own setting (`max_dynamic_patch`/`max_patches`).
    pub max_tiles_per_image: u32,
    /// `max_tokens` when a request gives none.
    pub default_max_tokens: u32,
    /// How long a language server waits for a request's features, milliseconds.
    pub feature_timeout_ms: u32,
    /// Limit on a whole request, seconds.
    pub request_timeout_s: u64,
    /// Tries of a request whose vision stage fails (each on another vision server when there is
    /// one), before any token has been sent.
    pub attempts: u32,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_inflight: 256,
            max_body_mib: 32,
            max_images: 16,
            max_image_mib: 20,
            max_tiles_per_image: 12,
            default_max_tokens: 1024,
            feature_timeout_ms: 30_000,
            request_timeout_s: 600,
            attempts: 3,
        }
    }
}

/// `[images]`: where a request's images may come from. Inline bytes and `data:` URLs always;
/// `https` URLs are fetched by the gateway under the `fetch_*` policy (public addresses only,
/// every redirect checked again, bounded in bytes, time and redirects).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ImagesSection {
    /// Accept `file://` URLs and plain paths (only for trusted local use).
    pub allow_local_files: bool,
    /// Fetch `https` image URLs (off: only inline images and `data:` URLs).
    pub fetch: bool,
    /// Fetch plain `http` URLs too (an `https` URL that redirects to `http` is still refused).
    pub fetch_allow_http: bool,
    /// Hosts images may be fetched from, `cdn.example.com` or `*.example.com` (empty: any).
    pub fetch_allowed_hosts: Vec<String>,
    /// Networks exempt from the public-address rule, in CIDR form (`10.20.0.0/16`), for image
    /// stores inside the cluster. Loopback, private, link-local and other special addresses are
    /// refused unless listed here.
    pub fetch_allowed_networks: Vec<String>,
    /// Time for a whole fetch, redirects and body included.
    pub fetch_timeout_s: u64,
    /// Redirects followed (each one checked like the first URL).
    pub fetch_max_redirects: u32,
    /// Extra trusted CA certificates (PEM) beside the bundled web roots.
    pub fetch_ca_file: Option<PathBuf>,
}

impl Default for ImagesSection {
    fn default() -> Self {
        Self {
            allow_local_files: false,
            fetch: true,
            fetch_allow_http: false,
            fetch_allowed_hosts: Vec::new(),
            fetch_allowed_networks: Vec::new(),
            fetch_timeout_s: 10,
            fetch_max_redirects: 3,
            fetch_ca_file: None,
        }
    }
}

/// `[video]`: video inputs (`video_url` parts). They come from where images may (`[images]`,
/// its fetch policy included) under a byte limit of their own; the vision servers sample and
/// decode them.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct VideoSection {
    /// Videos per request.
    pub max_videos: usize,
    /// The most frames a request may ask for per video (`num_frames`); more is a 400.
    pub max_frames: u32,
    /// Frames sampled when a request does not say (the model card's 8).
    pub default_frames: u32,
    /// Largest video, MiB (decoded from base64, or fetched).
    pub max_video_mib: usize,
}

impl Default for VideoSection {
    fn default() -> Self {
        Self {
            max_videos: 2,
            max_frames: 32,
            default_frames: 8,
            max_video_mib: 64,
        }
    }
}

/// A configuration value that parses but cannot work: which field, the value found, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} = {value}: {reason}")]
pub struct FieldError {
    /// The field, `section.key`.
    pub field: &'static str,
    /// The value found, as written.
    pub value: String,
    /// Why it cannot work.
    pub reason: String,
}

impl FieldError {
    /// `field` cannot be `value`, for `reason`.
    pub fn new(field: &'static str, value: impl ToString, reason: impl ToString) -> Self {
        Self {
            field,
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a gateway configuration (TOML syntax, unknown key, wrong type).
    #[error("{}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where and why.
        source: toml::de::Error,
    },
    /// A value in it cannot work.
    #[error("{}: {source}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field and why.
        source: FieldError,
    },
}

impl GatewayConfig {
    /// Reads and checks a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config.check().map_err(|source| ConfigError::Invalid {
            path: path.to_owned(),
            source,
        })?;
        Ok(config)
    }

    /// Checks values that parse but cannot work.
    pub fn check(&self) -> Result<(), FieldError> {
        if self.language.targets().next().is_none() {
            return Err(FieldError::new(
                "language.addresses and language.dns",
                "[]",
                "the language pool needs at least one address or dns name",
            ));
        }
        at_least_one("limits.max_inflight", self.limits.max_inflight as u64)?;
        at_least_one("limits.attempts", u64::from(self.limits.attempts))?;
        if !(1..=64).contains(&self.limits.max_tiles_per_image) {
            return Err(FieldError::new(
                "limits.max_tiles_per_image",
                self.limits.max_tiles_per_image,
                "must be 1 to 64",
            ));
        }
        at_least_one("video.max_frames", u64::from(self.video.max_frames))?;
        if !(1..=self.video.max_frames).contains(&self.video.default_frames) {
            return Err(FieldError::new(
                "video.default_frames",
                self.video.default_frames,
                format!("must be 1 to video.max_frames ({})", self.video.max_frames),
            ));
        }
        self.tls.files()?;
        at_least_one("images.fetch_timeout_s", self.images.fetch_timeout_s)?;
        crate::fetch::allowed_networks(&self.images)?;
        Ok(())
    }
}

/// An error unless `value` is at least 1.
fn at_least_one(field: &'static str, value: u64) -> Result<(), FieldError> {
    if value == 0 {
        Err(FieldError::new(field, value, "must be at least 1"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_what_a_file_leaves_out_and_typos_are_refused() {
        let config: GatewayConfig = toml::from_str(
            "[language]\naddresses = [\"127.0.0.1:50061\"]\n[limits]\nmax_inflight = 4\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.limits.max_inflight, 4);
        assert_eq!(config.limits.attempts, 3);
        assert_eq!(config.server.http.port(), 8000);
        assert!(config.check().is_ok());
        assert!(toml::from_str::<GatewayConfig>("[limits]\nmax_inflite = 4\n").is_err());
        assert_eq!(config.video, VideoSection::default());
        let mut video = config.clone();
        video.video.default_frames = 40;
        assert!(
            video
                .check()
                .is_err_and(|e| e.field == "video.default_frames")
        );
        assert!(
            GatewayConfig::default().check().is_err(),
            "no language pool"
        );
    }

    #[test]
    fn tls_needs_all_three_files_and_defaults_to_the_role_names() {
        let parse = |tls: &str| {
            toml::from_str::<GatewayConfig>(&format!(
                "[language]\naddresses = [\"127.0.0.1:50061\"]\n[tls]\n{tls}"
            ))
            .unwrap_or_else(|e| panic!("{e}"))
        };
        let off = parse("");
        assert!(off.check().is_ok());
        assert!(matches!(off.tls.load(), Ok(None)));
        assert_eq!(off.tls.vision_server_name, "dvd-vision");
        assert_eq!(off.tls.language_server_name, "dvd-language");
        let partial = parse("ca_file = \"ca.pem\"\ncert_file = \"gateway.pem\"\n");
        assert!(partial.check().is_err());
        let missing = parse(
            "ca_file = \"/nonexistent/ca.pem\"\ncert_file = \"g.pem\"\nkey_file = \"k.pem\"\n",
        );
        assert!(
            missing.check().is_ok(),
            "files are read at start, not parse"
        );
        assert!(missing.tls.load().is_err());
    }
}
