//! `dvd tls ...`: TLS material for the QUIC feature transport.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use dvd_transport::quic::SelfSigned;

/// TLS helpers.
#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Writes a self-signed certificate (cert.pem) and key (key.pem) for development. Language
    /// servers present them; vision servers trust cert.pem as their CA.
    SelfSigned(SelfSignedArgs),
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
        }
    }
}
