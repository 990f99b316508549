//! `dvd`: the single entry point for every dvd role and tool.

mod commands;

use clap::{Parser, Subcommand};

/// dvd: decoupled vision-language serving for InternVL3.5.
#[derive(Debug, Parser)]
#[command(name = "dvd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Benchmarks.
    #[command(subcommand)]
    Bench(commands::bench::BenchCommand),
    /// Sends one question (and images) to a gateway and streams the answer.
    Chat(commands::chat::ChatArgs),
    /// The demo model's world: fresh test pictures with their questions, and accuracy checks.
    #[command(subcommand)]
    Demo(commands::demo::DemoCommand),
    /// Runs the vision half of a checkpoint on images and writes the features.
    Encode(commands::encode::EncodeArgs),
    /// Vision and language in one process (the coupled baseline): images and a prompt in,
    /// streamed text out.
    Generate(commands::generate::GenerateArgs),
    /// The gateway: OpenAI-compatible HTTP and gRPC over the vision and language pools.
    #[command(subcommand)]
    Gateway(commands::gateway::GatewayCommand),
    /// The language server of a decoupled deployment.
    #[command(subcommand)]
    Language(commands::language::LanguageCommand),
    /// A running deployment's servers as its gateway sees them (`GET /v1/cluster`).
    Status(commands::status::StatusArgs),
    /// A whole deployment on this machine: vision servers, language servers and the gateway.
    Up(commands::up::UpArgs),
    /// The vision server of a decoupled deployment.
    #[command(subcommand)]
    Vision(commands::vision::VisionCommand),
    /// TLS material for the QUIC feature transport.
    #[command(subcommand)]
    Tls(commands::tls::TlsCommand),
}

impl Command {
    /// The traces this command's process exports: a server's, as its flags and the environment
    /// say; none for the tools.
    fn traces(&self) -> anyhow::Result<Option<dvd_serve::telemetry::TelemetryConfig>> {
        match self {
            Self::Gateway(cmd) => cmd.traces(),
            Self::Language(cmd) => cmd.traces(),
            Self::Vision(cmd) => cmd.traces(),
            Self::Up(cmd) => cmd.traces(),
            _ => Ok(None),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = dvd_serve::telemetry::install(cli.command.traces()?.as_ref())?;
    commands::affinity::size_compute_pool();
    match cli.command {
        Command::Bench(cmd) => cmd.run(),
        Command::Chat(cmd) => cmd.run(),
        Command::Demo(cmd) => cmd.run(),
        Command::Encode(cmd) => cmd.run(),
        Command::Gateway(cmd) => cmd.run(),
        Command::Generate(cmd) => cmd.run(),
        Command::Language(cmd) => cmd.run(),
        Command::Status(cmd) => cmd.run(),
        Command::Tls(cmd) => cmd.run(),
        Command::Up(cmd) => cmd.run(),
        Command::Vision(cmd) => cmd.run(),
    }
}
