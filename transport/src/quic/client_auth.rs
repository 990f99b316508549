//! Client certificates on the feature path: a QUIC listener that requires them accepts only
//! senders whose certificate chains to its CA and, when a name is set, names that role (a vision
//! server's `dvd-vision`). Checked during the handshake, so a refused sender never opens a
//! stream.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore};
use rustls::{Error, SignatureScheme};

use dvd_proto::tls::{RoleError, certificate_names_role};

use super::tls::provider;
use crate::error::{Result, TransportError};

/// Verifies client certificates against a CA, then checks they name `name`.
#[derive(Debug)]
pub struct RoleVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    name: Option<ServerName<'static>>,
}

impl RoleVerifier {
    /// Requires certificates from `roots`, naming `name` when given (a DNS name).
    pub fn new(roots: Arc<RootCertStore>, name: Option<&str>) -> Result<Arc<Self>> {
        let chain = WebPkiClientVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| TransportError::Tls(format!("client certificate verifier: {e}")))?;
        let name = name
            .map(|n| {
                ServerName::try_from(n.to_owned())
                    .map_err(|e| TransportError::Tls(format!("client name {n:?}: {e}")))
            })
            .transpose()?;
        Ok(Arc::new(Self { chain, name }))
    }
}

impl ClientCertVerifier for RoleVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, Error> {
        let verified = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        if let Some(name) = &self.name {
            certificate_names_role(end_entity, name).map_err(|e| {
                Error::InvalidCertificate(match e {
                    RoleError::Unreadable => CertificateError::BadEncoding,
                    RoleError::OtherRole => CertificateError::NotValidForName,
                })
            })?;
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}
