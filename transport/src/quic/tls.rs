//! TLS 1.3 material for the QUIC transport: self-signed identities for development, PEM files for
//! production, the trust anchors a sender verifies the receiver against, and (mutual TLS) the
//! identity a sender presents and the CA and role a receiver requires of it.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::client_auth::RoleVerifier;
use crate::error::{Result, TransportError};

/// ALPN protocol id of the feature transport.
pub const ALPN: &[u8] = b"dvd-feature/1";

pub(crate) fn tls_error(what: &str, e: impl std::fmt::Display) -> TransportError {
    TransportError::Tls(format!("{what}: {e}"))
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A receiver's certificate chain and private key, and what it requires of senders.
#[derive(Debug)]
pub struct ServerTls {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// Client certificates required (mutual TLS); `None`: any sender may connect.
    clients: Option<Arc<RoleVerifier>>,
}

impl Clone for ServerTls {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            clients: self.clients.clone(),
        }
    }
}

/// A freshly generated self-signed certificate and key, in PEM.
#[derive(Debug, Clone)]
pub struct SelfSigned {
    /// The certificate; senders trust it as their CA.
    pub cert_pem: String,
    /// The PKCS#8 private key.
    pub key_pem: String,
}

impl SelfSigned {
    /// Generates a certificate valid for `names` (DNS names or IP addresses).
    pub fn generate(names: &[String]) -> Result<Self> {
        let certified = rcgen::generate_simple_self_signed(names.to_vec())
            .map_err(|e| tls_error("cannot generate a self-signed certificate", e))?;
        Ok(Self {
            cert_pem: certified.cert.pem(),
            key_pem: certified.signing_key.serialize_pem(),
        })
    }

    /// Writes `cert.pem` and `key.pem` (mode 0600 on Unix) into `dir`.
    pub fn write_to(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)
            .map_err(|e| tls_error(&format!("cannot create {}", dir.display()), e))?;
        self.write_files(&dir.join("cert.pem"), &dir.join("key.pem"))
    }

    /// Writes the certificate to `cert` and the key to `key` (mode 0600 on Unix).
    pub fn write_files(&self, cert: &Path, key: &Path) -> Result<()> {
        std::fs::write(cert, &self.cert_pem)
            .map_err(|e| tls_error(&format!("cannot write {}", cert.display()), e))?;
        std::fs::write(key, &self.key_pem)
            .map_err(|e| tls_error(&format!("cannot write {}", key.display()), e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| tls_error(&format!("cannot restrict {}", key.display()), e))?;
        }
        Ok(())
    }
}

impl ServerTls {
    /// A self-signed identity for `names`, plus the trust anchors senders need for it.
    pub fn self_signed(names: &[String]) -> Result<(Self, ClientTls)> {
        let generated = SelfSigned::generate(names)?;
        Ok((
            Self::from_pem(&generated.cert_pem, &generated.key_pem)?,
            ClientTls::from_pem(&generated.cert_pem)?,
        ))
    }

    /// Loads a PEM certificate chain (leaf first) and a PEM private key.
    pub fn from_pem_files(cert_chain: &Path, key: &Path) -> Result<Self> {
        let chain = read_certs(cert_chain)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
            tls_error(
                &format!("cannot read a private key from {}", key.display()),
                e,
            )
        })?;
        Ok(Self {
            chain,
            key,
            clients: None,
        })
    }

    /// Requires senders to present a certificate that chains to the CA certificates in
    /// `ca_file` and, when `name` is given, names it (a vision server's `dvd-vision`).
    pub fn require_clients(mut self, ca_file: &Path, name: Option<&str>) -> Result<Self> {
        let roots = read_roots(ca_file)?;
        self.clients = Some(RoleVerifier::new(Arc::new(roots), name)?);
        Ok(self)
    }

    /// Whether senders must present a certificate.
    pub fn requires_clients(&self) -> bool {
        self.clients.is_some()
    }

    /// A quinn server configuration presenting this identity, with `tuning`'s transport settings.
    pub fn quinn_config(&self, tuning: &super::QuicTuning) -> Result<quinn::ServerConfig> {
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(self.rustls_config()?)
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(tuning.transport_config()?);
        Ok(server)
    }

    fn rustls_config(&self) -> Result<rustls::ServerConfig> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_error("TLS 1.3 unavailable", e))?;
        let builder = match &self.clients {
            Some(verifier) => builder.with_client_cert_verifier(verifier.clone()),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| tls_error("certificate and key do not form a usable identity", e))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }
}

/// The trust anchors a sender verifies receivers' certificates against, and the identity it
/// presents to receivers that require one.
#[derive(Debug, Clone)]
pub struct ClientTls {
    roots: Arc<RootCertStore>,
    identity: Option<Arc<ServerTls>>,
}

impl ClientTls {
    /// Trusts exactly these certificates as roots (e.g. a receiver's self-signed certificate).
    pub fn trusting(roots: &[CertificateDer<'static>]) -> Result<Self> {
        let mut store = RootCertStore::empty();
        for cert in roots {
            store
                .add(cert.clone())
                .map_err(|e| tls_error("unusable trust anchor", e))?;
        }
        Ok(Self {
            roots: Arc::new(store),
            identity: None,
        })
    }

    /// Trusts the PEM certificates in `ca_file`.
    pub fn from_ca_file(ca_file: &Path) -> Result<Self> {
        Self::trusting(&read_certs(ca_file)?)
    }

    /// Presents the certificate chain in `cert` with the key in `key` to receivers that
    /// require client certificates.
    pub fn with_identity_files(mut self, cert: &Path, key: &Path) -> Result<Self> {
        self.identity = Some(Arc::new(ServerTls::from_pem_files(cert, key)?));
        Ok(self)
    }

    /// Presents this PEM certificate chain and key to receivers that require one.
    pub fn with_identity_pem(mut self, cert: &str, key: &str) -> Result<Self> {
        self.identity = Some(Arc::new(ServerTls::from_pem(cert, key)?));
        Ok(self)
    }

    /// Trusts the PEM certificates in `pem`.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_error("bad certificate PEM", e))?;
        Self::trusting(&certs)
    }

    /// A quinn client configuration trusting these anchors, with `tuning`'s transport settings.
    pub fn quinn_config(&self, tuning: &super::QuicTuning) -> Result<quinn::ClientConfig> {
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(self.rustls_config()?)
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(tuning.transport_config()?);
        Ok(client)
    }

    fn rustls_config(&self) -> Result<rustls::ClientConfig> {
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_error("TLS 1.3 unavailable", e))?
            .with_root_certificates(self.roots.clone());
        let mut config = match &self.identity {
            Some(id) => config
                .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
                .map_err(|e| tls_error("client certificate and key do not match", e))?,
            None => config.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }
}

impl ServerTls {
    /// Builds an identity from PEM text (certificate chain, then key).
    pub fn from_pem(cert_chain: &str, key: &str) -> Result<Self> {
        let chain = CertificateDer::pem_slice_iter(cert_chain.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_error("bad certificate PEM", e))?;
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
            .map_err(|e| tls_error("bad private key PEM", e))?;
        Ok(Self {
            chain,
            key,
            clients: None,
        })
    }
}

/// The PEM certificates in `path` (at least one).
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_error(&format!("cannot read {}", path.display()), e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(&format!("bad certificate in {}", path.display()), e))?;
    if certs.is_empty() {
        return Err(TransportError::Tls(format!(
            "no certificate in {}",
            path.display()
        )));
    }
    Ok(certs)
}

/// The PEM certificates in `path` as trust anchors.
fn read_roots(path: &Path) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    for cert in read_certs(path)? {
        store
            .add(cert)
            .map_err(|e| tls_error("unusable trust anchor", e))?;
    }
    Ok(store)
}
