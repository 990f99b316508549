//! Image URLs fetched for requests, under a policy an operator controls (`[images]`):
//!
//! - `https` only by default (`fetch_allow_http` adds `http`; an `https` URL never redirects to
//!   `http`), no credentials in URLs, optionally only some hosts (`fetch_allowed_hosts`);
//! - the host is resolved once and every address it resolves to must be public unicast (or in
//!   `fetch_allowed_networks`); the connection goes to an address that was checked, so DNS
//!   rebinding between check and connect cannot redirect it;
//! - each redirect is a new URL checked the same way, at most `fetch_max_redirects` of them;
//! - the body is bounded by `limits.max_image_mib` (`video.max_video_mib` for videos; a larger
//!   `Content-Length` is refused before reading) and the whole fetch by `fetch_timeout_s`.
//!
//! Certificates are verified against the bundled web roots (`webpki-roots`) plus
//! `fetch_ca_file`.

mod address;
mod target;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub use address::{Network, NetworkError, refusal};
pub use target::{Target, host_allowed};

use crate::config::{FieldError, ImagesSection, LimitsSection};

/// Why an image URL was not fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The policy forbids it; nothing was sent.
    #[error("refused: {0}")]
    Refused(String),
    /// The server could not be reached or did not answer with an image.
    #[error("could not fetch: {0}")]
    Failed(String),
    /// The image is larger than allowed.
    #[error("larger than the {0}-byte limit")]
    TooLarge(usize),
    /// The fetch took longer than allowed.
    #[error("not fetched within {0} s")]
    Timeout(u64),
}

/// Why a [`Fetcher`] cannot be built from `[images]`.
#[derive(Debug, thiserror::Error)]
pub enum FetchSetupError {
    /// A value of the policy cannot work.
    #[error(transparent)]
    Policy(#[from] FieldError),
    /// `images.fetch_ca_file` cannot be used.
    #[error("images.fetch_ca_file {}: {source}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: CaFileError,
    },
    /// rustls refused the client configuration.
    #[error("TLS client configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Why a CA file adds no trusted certificates.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    /// It cannot be read or is not PEM.
    #[error(transparent)]
    Pem(#[from] rustls::pki_types::pem::Error),
    /// It holds no certificate.
    #[error("no certificates in the file")]
    Empty,
    /// A certificate in it is not a usable trust anchor.
    #[error(transparent)]
    Rejected(#[from] rustls::Error),
}

/// `images.fetch_allowed_networks`, parsed.
pub fn allowed_networks(images: &ImagesSection) -> Result<Vec<Network>, FieldError> {
    images
        .fetch_allowed_networks
        .iter()
        .map(|n| {
            Network::parse(n)
                .map_err(|e| FieldError::new("images.fetch_allowed_networks", format!("{n:?}"), e))
        })
        .collect()
}

/// What `[images]` and `[limits]` allow a fetch to do.
#[derive(Debug, Clone)]
pub struct FetchPolicy {
    enabled: bool,
    allow_http: bool,
    allowed_hosts: Vec<String>,
    allowed_networks: Vec<Network>,
    timeout: Duration,
    max_redirects: u32,
    max_bytes: usize,
}

impl FetchPolicy {
    /// The policy the configuration describes.
    pub fn new(images: &ImagesSection, limits: &LimitsSection) -> Result<Self, FieldError> {
        Ok(Self {
            enabled: images.fetch,
            allow_http: images.fetch_allow_http,
            allowed_hosts: images.fetch_allowed_hosts.clone(),
            allowed_networks: allowed_networks(images)?,
            timeout: Duration::from_secs(images.fetch_timeout_s.max(1)),
            max_redirects: images.fetch_max_redirects,
            max_bytes: limits.max_image_mib << 20,
        })
    }

    /// Checks what can be checked of `url` without the network: fetching is on, the scheme,
    /// credentials, the host list and an address literal.
    pub fn check(&self, url: &str) -> Result<Target, FetchError> {
        if !self.enabled {
            return Err(FetchError::Refused(
                "remote image URLs are not fetched by this gateway (images.fetch = false); \
                 send the image inline as a data: URL"
                    .into(),
            ));
        }
        let target = Target::parse(url, self.allow_http)?;
        if !host_allowed(&target.host, &self.allowed_hosts) {
            return Err(FetchError::Refused(format!(
                "{:?} is not among images.fetch_allowed_hosts",
                target.host
            )));
        }
        if let Some(ip) = target.ip {
            self.check_address(&target.host, ip)?;
        }
        Ok(target)
    }

    fn check_address(&self, host: &str, ip: IpAddr) -> Result<(), FetchError> {
        if self.allowed_networks.iter().any(|n| n.contains(ip)) {
            return Ok(());
        }
        match refusal(ip) {
            None => Ok(()),
            Some(why) if host == ip.to_string() => Err(FetchError::Refused(format!(
                "{ip} is {why} (images.fetch_allowed_networks)"
            ))),
            Some(why) => Err(FetchError::Refused(format!(
                "{host} resolves to {ip}, {why} (images.fetch_allowed_networks)"
            ))),
        }
    }
}

/// What a fetched body may be: its size and the media types asked for.
#[derive(Debug, Clone, Copy)]
pub struct Body {
    /// Largest body, bytes.
    pub max_bytes: usize,
    /// The `Accept` header.
    pub accept: &'static str,
}

impl Body {
    /// An image under `policy`'s limit (`limits.max_image_mib`).
    pub fn image(policy: &FetchPolicy) -> Self {
        Self {
            max_bytes: policy.max_bytes,
            accept: "image/*",
        }
    }

    /// A video of at most `max_bytes`.
    pub fn video(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            accept: "video/*",
        }
    }
}

/// Fetches image URLs under a [`FetchPolicy`].
#[derive(Debug, Clone)]
pub struct Fetcher {
    policy: FetchPolicy,
    tls: Arc<rustls::ClientConfig>,
}

/// Trusts the certificates of the PEM file at `path` besides `roots`.
fn add_ca_file(roots: &mut rustls::RootCertStore, path: &Path) -> Result<(), CaFileError> {
    let certs =
        rustls::pki_types::CertificateDer::pem_file_iter(path)?.collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(CaFileError::Empty);
    }
    for cert in certs {
        roots.add(cert)?;
    }
    Ok(())
}

/// What one request of a fetch ended with.
enum Hop {
    Redirect(String),
    Body(Bytes),
}

impl Fetcher {
    /// A fetcher for the configuration (reads `fetch_ca_file`).
    pub fn new(images: &ImagesSection, limits: &LimitsSection) -> Result<Self, FetchSetupError> {
        let policy = FetchPolicy::new(images, limits)?;
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &images.fetch_ca_file {
            add_ca_file(&mut roots, path).map_err(|source| FetchSetupError::CaFile {
                path: path.clone(),
                source,
            })?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            policy,
            tls: Arc::new(config),
        })
    }

    /// The policy this fetcher applies.
    pub fn policy(&self) -> &FetchPolicy {
        &self.policy
    }

    /// The body of image `url`, following redirects the policy allows.
    pub async fn fetch(&self, url: &str) -> Result<Bytes, FetchError> {
        self.fetch_body(url, Body::image(&self.policy)).await
    }

    /// The body of `url` within `body`'s limit, following redirects the policy allows.
    pub async fn fetch_body(&self, url: &str, body: Body) -> Result<Bytes, FetchError> {
        let timeout = self.policy.timeout;
        tokio::time::timeout(timeout, self.follow(url, body))
            .await
            .map_err(|_| FetchError::Timeout(timeout.as_secs()))?
    }

    async fn follow(&self, url: &str, body: Body) -> Result<Bytes, FetchError> {
        let mut url = url.to_owned();
        let mut was_https = false;
        for hop in 0..=self.policy.max_redirects {
            let target = self.policy.check(&url)?;
            if was_https && !target.https {
                return Err(FetchError::Refused(
                    "a redirect from https to plain http".into(),
                ));
            }
            was_https = target.https;
            let addresses = self.resolve(&target).await?;
            match self.get(&target, &addresses, body).await? {
                Hop::Body(body) => return Ok(body),
                Hop::Redirect(location) => {
                    tracing::debug!(hop, "image URL redirects");
                    url = target.join(&location);
                }
            }
        }
        Err(FetchError::Refused(format!(
            "more than {} redirects (images.fetch_max_redirects)",
            self.policy.max_redirects
        )))
    }

    /// Every address `target`'s host has, each one allowed by the policy.
    async fn resolve(&self, target: &Target) -> Result<Vec<SocketAddr>, FetchError> {
        let addresses: Vec<SocketAddr> = match target.ip {
            Some(ip) => vec![SocketAddr::new(ip, target.port)],
            None => tokio::net::lookup_host((target.host.as_str(), target.port))
                .await
                .map_err(|e| FetchError::Failed(format!("cannot resolve {}: {e}", target.host)))?
                .collect(),
        };
        if addresses.is_empty() {
            return Err(FetchError::Failed(format!(
                "{} has no addresses",
                target.host
            )));
        }
        for address in &addresses {
            self.policy.check_address(&target.host, address.ip())?;
        }
        Ok(addresses)
    }

    /// One GET of `target` on the first of `addresses` that accepts a connection.
    async fn get(
        &self,
        target: &Target,
        addresses: &[SocketAddr],
        body: Body,
    ) -> Result<Hop, FetchError> {
        let mut last_error = None;
        let mut stream = None;
        for address in addresses {
            match TcpStream::connect(address).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last_error = Some(format!("cannot connect to {address}: {e}")),
            }
        }
        let stream = stream.ok_or_else(|| {
            FetchError::Failed(last_error.unwrap_or_else(|| "no address".to_owned()))
        })?;
        if !target.https {
            return self.exchange(stream, target, body).await;
        }
        let name = ServerName::try_from(target.host.clone())
            .map_err(|e| FetchError::Refused(format!("{:?}: {e}", target.host)))?;
        let stream = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, stream)
            .await
            .map_err(|e| FetchError::Failed(format!("TLS with {}: {e}", target.host)))?;
        self.exchange(stream, target, body).await
    }

    /// Sends the request over `io` and reads the answer.
    async fn exchange<S>(&self, io: S, target: &Target, body: Body) -> Result<Hop, FetchError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let failed = |e: hyper::Error| FetchError::Failed(format!("{}: {e}", target.host));
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(failed)?;
        let request = http::Request::get(target.path.as_str())
            .header(http::header::HOST, target.authority())
            .header(http::header::ACCEPT, body.accept)
            .header(
                http::header::USER_AGENT,
                concat!("dvd-gateway/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Refused(format!("cannot build the request: {e}")))?;
        let max_bytes = body.max_bytes;
        let exchange = async move {
            let response = sender.send_request(request).await.map_err(failed)?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(http::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| {
                        FetchError::Failed(format!("HTTP {status} without a usable Location"))
                    })?;
                return Ok(Hop::Redirect(location.to_owned()));
            }
            if status != http::StatusCode::OK {
                return Err(FetchError::Failed(format!(
                    "{} answered HTTP {status}",
                    target.host
                )));
            }
            let declared = response
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| l.parse::<u64>().ok());
            if declared.is_some_and(|n| n > max_bytes as u64) {
                return Err(FetchError::TooLarge(max_bytes));
            }
            let mut body = response.into_body();
            let mut data = BytesMut::new();
            while let Some(frame) = body.frame().await {
                if let Ok(chunk) = frame.map_err(failed)?.into_data() {
                    if data.len() + chunk.len() > max_bytes {
                        return Err(FetchError::TooLarge(max_bytes));
                    }
                    data.extend_from_slice(&chunk);
                }
            }
            Ok(Hop::Body(data.freeze()))
        };
        // The connection is driven beside the exchange, in this task; once it ends cleanly the
        // rest of the body is already buffered.
        tokio::pin!(exchange);
        tokio::select! {
            hop = &mut exchange => hop,
            ended = connection => match ended {
                Ok(()) => exchange.await,
                Err(e) => Err(failed(e)),
            },
        }
    }
}
