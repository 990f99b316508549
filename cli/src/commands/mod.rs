//! One module per `dvd` subcommand.

pub mod bench;
pub mod tls;
