//! `dvd bench transport`: feature-frame throughput on loopback (see `dvd_bench::transport`).

use anyhow::Result;
use clap::Args;
use dvd_bench::transport::TransportBench;
use dvd_transport::quic::QuicTuning;

/// Options of `dvd bench transport`.
#[derive(Debug, Args)]
pub struct TransportArgs {
    /// Tile frames per TCP run.
    #[arg(long, default_value_t = TransportBench::default().tcp_frames)]
    tcp_frames: u32,
    /// Tile frames per QUIC run.
    #[arg(long, default_value_t = TransportBench::default().quic_frames)]
    quic_frames: u32,
    /// Feature rows per tile (256, or 64 after ViR).
    #[arg(long, default_value_t = TransportBench::default().tokens)]
    tokens: u32,
    /// Feature columns per tile (the LLM hidden size).
    #[arg(long, default_value_t = TransportBench::default().hidden)]
    hidden: u32,
    /// Rounds; every mode runs once per round and the median is reported.
    #[arg(long, default_value_t = TransportBench::default().rounds)]
    rounds: u32,
    /// QUIC: largest UDP payload MTU discovery may reach.
    #[arg(long)]
    quic_max_udp_payload: Option<u16>,
    /// QUIC: per-stream flow-control window in bytes.
    #[arg(long)]
    quic_stream_window: Option<u64>,
    /// QUIC: per-connection flow-control window in bytes.
    #[arg(long)]
    quic_connection_window: Option<u64>,
    /// QUIC: ask the peer to acknowledge every N packets (ACK frequency extension).
    #[arg(long)]
    quic_ack_every: Option<u32>,
    /// QUIC: UDP socket buffer size in bytes.
    #[arg(long)]
    quic_socket_buffer: Option<usize>,
    /// Modes to run, comma-separated (raw_tcp, tcp, raw_quic, quic); all by default.
    #[arg(long, value_delimiter = ',')]
    modes: Vec<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

impl TransportArgs {
    /// QUIC's default tuning with the `--quic-*` overrides applied.
    fn quic(&self) -> QuicTuning {
        let mut quic = QuicTuning::default();
        if let Some(v) = self.quic_max_udp_payload {
            quic.max_udp_payload = v;
        }
        if let Some(v) = self.quic_stream_window {
            quic.stream_window = v;
        }
        if let Some(v) = self.quic_connection_window {
            quic.connection_window = v;
        }
        if let Some(v) = self.quic_ack_every {
            quic.ack_every = Some(v);
        }
        if let Some(v) = self.quic_socket_buffer {
            quic.socket_buffer = v;
        }
        quic
    }
}

/// Runs the benchmark and prints its table (or JSON).
pub fn run(args: TransportArgs) -> Result<()> {
    let quic = args.quic();
    let bench = TransportBench {
        tcp_frames: args.tcp_frames,
        quic_frames: args.quic_frames,
        tokens: args.tokens,
        hidden: args.hidden,
        rounds: args.rounds,
        quic,
        modes: args.modes,
    };
    let json = args.json;
    let report = super::two_worker_runtime()?.block_on(bench.run(|line| {
        if !json {
            eprintln!("{line}");
        }
    }))?;
    super::print_report(json, &report, |r| r.table())
}
