//! A private certificate authority for one deployment's internal TLS: one CA and a certificate
//! per role (gateway, vision server, language server), each naming its role (`dvd-gateway`,
//! `dvd-vision`, `dvd-language`) so a peer can check not only that a certificate comes from the
//! CA but which role it belongs to. For development and small deployments (`dvd tls mutual`);
//! larger ones issue the same names from their own PKI (cert-manager, Vault...).

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::SelfSigned;
use super::tls::tls_error;
use crate::error::Result;

use dvd_proto::tls::{GATEWAY_ROLE, LANGUAGE_ROLE, VISION_ROLE};

/// A CA certificate and one certificate and key per role, in PEM. The CA's key is not kept.
#[derive(Debug, Clone)]
pub struct InternalPki {
    /// The CA certificate every process trusts.
    pub ca_pem: String,
    /// Certificate (chain: leaf, then the CA) and key of the gateway.
    pub gateway: SelfSigned,
    /// Certificate chain and key of a vision server.
    pub vision: SelfSigned,
    /// Certificate chain and key of a language server.
    pub language: SelfSigned,
}

impl InternalPki {
    /// A new CA and role certificates; each role certificate also names `extra_names` (DNS
    /// names or IP addresses the processes are reached at, e.g. `localhost`, `127.0.0.1`).
    pub fn generate(extra_names: &[String]) -> Result<Self> {
        let ca_key = KeyPair::generate().map_err(|e| tls_error("cannot generate a key", e))?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| tls_error("bad CA parameters", e))?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "dvd internal CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .map_err(|e| tls_error("cannot sign the CA certificate", e))?;
        let ca_pem = ca_cert.pem();
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let issue = |role: &str| -> Result<SelfSigned> {
            let key = KeyPair::generate().map_err(|e| tls_error("cannot generate a key", e))?;
            let mut names = vec![role.to_owned()];
            names.extend(extra_names.iter().cloned());
            let mut params = CertificateParams::new(names)
                .map_err(|e| tls_error(&format!("bad names for {role}"), e))?;
            params.distinguished_name.push(DnType::CommonName, role);
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = params
                .signed_by(&key, &issuer)
                .map_err(|e| tls_error(&format!("cannot sign the {role} certificate"), e))?;
            Ok(SelfSigned {
                cert_pem: format!("{}{ca_pem}", cert.pem()),
                key_pem: key.serialize_pem(),
            })
        };
        Ok(Self {
            gateway: issue(GATEWAY_ROLE)?,
            vision: issue(VISION_ROLE)?,
            language: issue(LANGUAGE_ROLE)?,
            ca_pem: ca_pem.clone(),
        })
    }

    /// Writes `ca.pem` and, per role, `<role>.pem` and `<role>-key.pem` (mode 0600) into `dir`:
    /// `gateway`, `vision`, `language`.
    pub fn write_to(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)
            .map_err(|e| tls_error(&format!("cannot create {}", dir.display()), e))?;
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, &self.ca_pem)
            .map_err(|e| tls_error(&format!("cannot write {}", ca.display()), e))?;
        for (role, files) in [
            ("gateway", &self.gateway),
            ("vision", &self.vision),
            ("language", &self.language),
        ] {
            files.write_files(
                &dir.join(format!("{role}.pem")),
                &dir.join(format!("{role}-key.pem")),
            )?;
        }
        Ok(())
    }
}
