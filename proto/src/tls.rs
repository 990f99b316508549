//! Mutual TLS for the gRPC calls between dvd's processes: the gateway calls vision and language
//! servers. With it on, a server presents its certificate and requires the caller's, both from
//! the deployment's CA, and [`RequirePeer`] admits only callers whose certificate names the
//! gateway role (`dvd-gateway`), so a vision server's certificate cannot drive a language
//! server. Certificates come from `dvd tls mutual` or the operator's own PKI.

use std::path::{Path, PathBuf};

use rustls_pki_types::{CertificateDer, ServerName};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, Server, ServerTlsConfig};
use tonic::{Request, Status};

/// The name a gateway's certificate carries: the only caller vision and language servers admit.
pub const GATEWAY_ROLE: &str = "dvd-gateway";
/// The name a vision server's certificate carries (the sender the feature path admits).
pub const VISION_ROLE: &str = "dvd-vision";
/// The name a language server's certificate carries.
pub const LANGUAGE_ROLE: &str = "dvd-language";

/// Why a certificate does not prove a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleError {
    /// The certificate cannot be parsed.
    Unreadable,
    /// It names another role.
    OtherRole,
}

/// Checks that an end-entity certificate (whose chain the caller has already verified) names
/// `role` among its DNS names: the one check both the gRPC interceptor and the QUIC feature
/// listener make.
pub fn certificate_names_role(
    cert: &CertificateDer<'_>,
    role: &ServerName<'_>,
) -> Result<(), RoleError> {
    webpki::EndEntityCert::try_from(cert)
        .map_err(|_| RoleError::Unreadable)?
        .verify_is_valid_for_subject_name(role)
        .map_err(|_| RoleError::OtherRole)
}

/// Why gRPC TLS settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file holds no PEM block of the kind it should.
    #[error("{} holds no PEM {what}", path.display())]
    NotPem {
        /// The file.
        path: PathBuf,
        /// The PEM label looked for (`CERTIFICATE`, `PRIVATE KEY`).
        what: &'static str,
    },
    /// tonic refused the certificates or key.
    #[error("gRPC TLS: {0}")]
    Config(#[from] tonic::transport::Error),
    /// A peer role is not a DNS name.
    #[error("peer role {role:?}: {source}")]
    Role {
        /// The role given.
        role: String,
        /// Why it is not a name.
        source: rustls_pki_types::InvalidDnsNameError,
    },
}

/// `server` with `tls`'s server side when given, and the interceptor its services need: only
/// the gateway's certificate with TLS, anyone without.
pub fn secure_server(
    server: Server,
    tls: Option<&GrpcTls>,
) -> Result<(Server, RequirePeer), TlsError> {
    match tls {
        None => Ok((server, RequirePeer::anyone())),
        Some(tls) => Ok((
            server.tls_config(tls.server_config())?,
            RequirePeer::role(GATEWAY_ROLE)?,
        )),
    }
}

/// The deployment's CA and this process's certificate and key (PEM).
#[derive(Debug, Clone)]
pub struct GrpcTls {
    ca: Certificate,
    identity: Identity,
}

impl GrpcTls {
    /// Reads the CA certificate(s), this process's certificate chain and its private key.
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        let (ca_pem, cert_pem, key_pem) = (read(ca)?, read(cert)?, read(key)?);
        for (path, pem, what) in [
            (ca, &ca_pem, "CERTIFICATE"),
            (cert, &cert_pem, "CERTIFICATE"),
            (key, &key_pem, "PRIVATE KEY"),
        ] {
            if !String::from_utf8_lossy(pem).contains(&format!("{what}-----")) {
                return Err(TlsError::NotPem {
                    path: path.to_path_buf(),
                    what,
                });
            }
        }
        Ok(Self::from_pem(ca_pem, cert_pem, key_pem))
    }

    /// From PEM text.
    pub fn from_pem(ca: impl AsRef<[u8]>, cert: impl AsRef<[u8]>, key: impl AsRef<[u8]>) -> Self {
        Self {
            ca: Certificate::from_pem(ca),
            identity: Identity::from_pem(cert, key),
        }
    }

    /// A server's side: present this identity, require a client certificate from the CA.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
    }

    /// A client's side: verify the server against the CA as `server_name`, present this
    /// identity.
    pub fn client_config(&self, server_name: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(server_name)
    }
}

/// A tonic interceptor admitting only callers whose (already chain-verified) certificate names
/// a role; without a role it admits every call (plaintext servers).
#[derive(Debug, Clone, Default)]
pub struct RequirePeer {
    role: Option<ServerName<'static>>,
}

impl RequirePeer {
    /// Requires the caller's certificate to name `role` (a DNS name such as `dvd-gateway`).
    pub fn role(role: &str) -> Result<Self, TlsError> {
        let name = ServerName::try_from(role.to_owned()).map_err(|source| TlsError::Role {
            role: role.to_owned(),
            source,
        })?;
        Ok(Self { role: Some(name) })
    }

    /// Admits every caller.
    pub fn anyone() -> Self {
        Self::default()
    }

    fn check(&self, certs: Option<&[CertificateDer<'static>]>) -> Result<(), Status> {
        let Some(role) = &self.role else {
            return Ok(());
        };
        let leaf = certs
            .and_then(|c| c.first())
            .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        certificate_names_role(leaf, role).map_err(|e| match e {
            RoleError::Unreadable => Status::unauthenticated("unreadable client certificate"),
            RoleError::OtherRole => Status::permission_denied(format!(
                "the client certificate does not name {}",
                role.to_str()
            )),
        })
    }
}

impl tonic::service::Interceptor for RequirePeer {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let certs = request.peer_certs();
        self.check(certs.as_deref().map(Vec::as_slice))?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_is_required_only_when_set() {
        assert!(RequirePeer::anyone().check(None).is_ok());
        let gateway = RequirePeer::role("dvd-gateway").unwrap_or_default();
        let err = gateway.check(None).err().map(|s| s.code());
        assert_eq!(err, Some(tonic::Code::Unauthenticated));
        let garbage = [CertificateDer::from(vec![1u8, 2, 3])];
        let err = gateway.check(Some(&garbage)).err().map(|s| s.code());
        assert_eq!(err, Some(tonic::Code::Unauthenticated));
        assert!(RequirePeer::role("not a name!").is_err());
    }
}
