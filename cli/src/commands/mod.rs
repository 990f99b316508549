//! One module per `dvd` subcommand.

pub mod bench;
pub mod encode;
pub mod generate;
pub mod language;
pub mod tls;
