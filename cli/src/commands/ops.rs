//! Options every server shares for running under an orchestrator: the ops endpoint and the
//! drain on SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use dvd_proto::tls::GrpcTls;
use dvd_serve::{Drain, ServerSettings};

/// `--ops-listen` and `--drain-timeout-s`.
#[derive(Debug, Clone, Args)]
pub struct OpsArgs {
    /// Ops endpoint (HTTP): `/metrics`, `/health/live`, `/health/ready` (default: none).
    #[arg(long)]
    pub ops_listen: Option<SocketAddr>,
    /// On SIGTERM: the longest wait for requests in flight before stopping anyway, seconds.
    #[arg(long, default_value_t = Drain::default().timeout.as_secs())]
    pub drain_timeout_s: u64,
}

impl OpsArgs {
    /// A server's gRPC listener on `listen` (mutual TLS with `grpc_tls`), with these options'
    /// ops endpoint and drain.
    pub fn server(&self, listen: SocketAddr, grpc_tls: Option<GrpcTls>) -> ServerSettings {
        ServerSettings {
            listen,
            grpc_tls,
            ops_listen: self.ops_listen,
            drain: Drain {
                timeout: Duration::from_secs(self.drain_timeout_s),
                ..Drain::default()
            },
        }
    }
}
