//! `dvd tls ...`: TLS material for the QUIC feature transport and the internal mutual TLS.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use dvd_transport::quic::{InternalPki, SelfSigned};

/// TLS helpers.
#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Writes a self-signed certificate (cert.pem) and key (key.pem) for development. Language
    /// servers present them; vision servers trust cert.pem as their CA.
    SelfSigned(SelfSignedArgs),
    /// Writes a private CA (ca.pem; its key is not kept) and a certificate and key per role,
    /// issued by it: gateway.pem (names `dvd-gateway`), vision.pem (`dvd-vision`) and
    /// language.pem (`dvd-language`), each with a `-key.pem`. For mutual TLS between the
    /// gateway, vision and language servers (`--tls-client-ca`, `[tls]`).
    Mutual(MutualArgs),
}

/// Options of `dvd tls mutual`.
#[derive(Debug, Args)]
pub struct MutualArgs {
    /// Directory to write the files into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// More names every certificate is valid for, besides its role: the DNS names or IP
    /// addresses the processes are reached at (repeatable).
    #[arg(long = "name", default_values_t = [String::from("localhost"), String::from("127.0.0.1")])]
    names: Vec<String>,
}

/// Options of `dvd tls self-signed`.
#[derive(Debug, Args)]
pub struct SelfSignedArgs {
    /// Directory to write cert.pem and key.pem into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Names the certificate is valid for: DNS names or IP addresses (repeatable).
    #[arg(long = "name", default_values_t = [String::from("localhost"), String::from("127.0.0.1")])]
    names: Vec<String>,
}

impl TlsCommand {
    /// Runs the subcommand.
    pub fn run(self) -> Result<()> {
        match self {
            Self::SelfSigned(args) => {
                SelfSigned::generate(&args.names)?.write_to(&args.out)?;
                println!(
                    "wrote {} and {} for {}",
                    args.out.join("cert.pem").display(),
                    args.out.join("key.pem").display(),
                    args.names.join(", ")
                );
                Ok(())
            }
            Self::Mutual(args) => {
                InternalPki::generate(&args.names)?.write_to(&args.out)?;
                println!(
                    "wrote ca.pem and gateway, vision and language certificates and keys to {} \
                     (also valid for {})",
                    args.out.display(),
                    args.names.join(", ")
                );
                Ok(())
            }
        }
    }
}
