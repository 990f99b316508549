//! Benchmarks of dvd, fronted by `dvd bench`.
//!
//! - [`transport`]: feature-frame throughput of our TCP and QUIC transports against raw tokio TCP
//!   and raw quinn measured in the same run (`dvd bench transport`).
//! - [`language`]: prefill and decode tokens/s of a checkpoint (`dvd bench language`), beside
//!   `tools/bench_language_torch.py` for PyTorch.
//! - [`vision`]: image preprocessing time and encoder tiles/s of a checkpoint
//!   (`dvd bench vision`), beside `tools/bench_vision_torch.py` for PyTorch.
//! - [`engine`]: the language server's continuous-batching engine: decode tokens/s against batch
//!   size, prefill, continuous batching against one request at a time (`dvd bench engine`).
//! - [`pipeline`]: the vision serving path: tiles/s with and without cross-request batching, and
//!   encode/transfer overlap within a multi-tile request (`dvd bench pipeline`).
//! - [`serve`]: a load generator for a deployment's OpenAI API (`dvd bench serve`): Poisson or
//!   gamma arrivals, concurrency bounds, synthetic image or JSONL requests, text-only probes,
//!   TTFT/TPOT/ITL/E2EL and goodput under `vllm bench serve`'s field names.
//! - [`moe`]: one mixture-of-experts block against the memory-read bound of the weights it
//!   touches (`dvd bench moe`), beside `tools/bench_moe_torch.py` for PyTorch.
//! - [`gpu`]: vision tiles/s, prefill and decode at InternVL3.5 shapes on one GPU
//!   (`dvd bench gpu`), beside `tools/gpu/torch_baseline.py` for PyTorch.
//! - [`gpu_check`]: a checkpoint on a device against the CPU in f32 (`dvd bench gpu-check`).
//! - [`compare`]: coupled serving against DvD on this machine (`dvd bench compare`), and
//!   [`plan`]: the capacity model fed by its reports (`dvd bench plan`).
//! - [`process`]: serving child processes stopped with SIGTERM, then SIGKILL.
//!
//! Each `dvd bench` subcommand's options are in `cli/src/commands/bench/` under the same file
//! name, with their defaults taken from the configurations here.

pub mod compare;
pub mod engine;
pub mod gpu;
pub mod gpu_check;
#[cfg(feature = "cuda")]
pub mod gpu_kernels;
pub mod language;
pub mod model;
pub mod moe;
pub mod pipeline;
pub mod plan;
pub mod process;
pub mod serve;
pub mod stats;
pub mod transport;
pub mod vision;
