//! The `crat` command: one binary, one subcommand per area. Each area's verbs live in their
//! own module; this file only parses the command line and dispatches.

mod demo;
mod doctor;
mod gateway;
mod gpucheck;
mod keyfile;
mod metrics;
mod net;
mod npy;
mod onnxruntime;
mod relay;
mod rewards;
mod sim;
mod transport;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc, with freed memory retained ([`crat_alloc`] says why).
#[global_allocator]
static GLOBAL: crat_alloc::MiMalloc = crat_alloc::MiMalloc;

/// CryptoRAT: decentralized ONNX model serving, paid by rounds.
#[derive(Debug, Parser)]
#[command(name = "crat", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The areas of the command. Each has its own verbs.
// Parsed once per process: the size of the largest variant's options does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// The whole network in one process: a dispatcher, 3 nodes and a client on loopback
    /// QUIC; upload, deploy, a stream of tasks with a node killed halfway, a paid round.
    Demo(demo::DemoArgs),
    /// Run a dispatcher.
    Dispatcher(net::DispatcherArgs),
    /// Run a relay for an iroh network: the fallback path and hole-punching signal of peers
    /// behind NATs (`--transport iroh --relay URL`).
    Relay(relay::RelayArgs),
    /// Run a compute node (`crat node status`: how it stands and what it earned).
    #[command(args_conflicts_with_subcommands = true)]
    Node(net::NodeArgs),
    /// SDK keys (operator; on the dispatcher's ledger).
    #[command(subcommand)]
    Keys(net::KeysCommand),
    /// Credits (operator; on the dispatcher's ledger).
    #[command(subcommand)]
    Credits(net::CreditsCommand),
    /// Closed rounds (operator; on the dispatcher's ledger).
    #[command(subcommand)]
    Rounds(net::RoundsCommand),
    /// Upload an ONNX model (client).
    Upload(net::UploadArgs),
    /// Deploy an uploaded model (client).
    Deploy(net::DeployArgs),
    /// Run a task on a deployment (client).
    Infer(net::InferArgs),
    /// Serve the KServe v2 / Triton HTTP protocol in front of the network (`--local`: in
    /// front of a whole network started in this process).
    Gateway(gateway::GatewayArgs),
    /// Check what a node on this machine would serve with: the GPU probe, the backend
    /// selected (CUDA when available), a proof-of-hardware challenge and models against the
    /// CPU reference (`scripts/gpu-check.sh` sets up CUDA and runs it).
    GpuCheck(gpucheck::GpuCheckArgs),
    /// Round economics: compute a round's payouts, or explain one node's.
    #[command(subcommand)]
    Rewards(rewards::RewardsCommand),
    /// Simulator: run scenario files (seeds, sweeps) and plot their results.
    #[command(subcommand)]
    Sim(sim::SimCommand),
}

/// Logs to stderr, filtered by `RUST_LOG` (default: warnings only).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Keeps ONNX Runtime's telemetry uploader from starting in every command that loads it (a
/// node, a dispatcher's reference backend, `gpu-check`, `demo`, `gateway --local`): see
/// `crat_backend::ort`'s docs. A value the operator exported is left as it is.
#[allow(unsafe_code)]
fn onnx_runtime_telemetry_off() {
    for name in crat_backend::ort::TELEMETRY_OFF_ENVS {
        if std::env::var_os(name).is_none() {
            // SAFETY: called first thing in `main`, before this process starts any thread, so
            // no other thread can be reading or writing the environment.
            unsafe { std::env::set_var(name, "1") };
        }
    }
}

fn main() -> ExitCode {
    onnx_runtime_telemetry_off();
    crat_alloc::retain_freed_memory_ms(crat_alloc::RETAIN_FREED_MEMORY_MS);
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Dispatcher(args) => net::dispatcher(args),
        Command::Relay(args) => relay::run(args),
        Command::Node(args) => net::node(args),
        Command::Keys(cmd) => net::keys(cmd),
        Command::Credits(cmd) => net::credits(cmd),
        Command::Rounds(cmd) => net::rounds(cmd),
        Command::Upload(args) => net::upload(args),
        Command::Deploy(args) => net::deploy(args),
        Command::Infer(args) => net::infer(args),
        Command::Gateway(args) => gateway::run(args),
        Command::GpuCheck(args) => gpucheck::run(args),
        Command::Rewards(cmd) => rewards::run(cmd),
        Command::Sim(cmd) => sim::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crat: {e:#}");
            ExitCode::FAILURE
        }
    }
}
