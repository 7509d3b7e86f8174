//! The `crat` command: one binary, one subcommand per area. Each area's verbs live in their
//! own module; this file only parses the command line and dispatches.

mod demo;
mod net;
mod rewards;
mod sim;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc reuses freed memory for the next large frame (64 MiB tensors) where glibc maps
/// and faults in fresh pages every time; `benches/benches/quic.rs` measures the difference.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's option index for the purge delay (`mi_option_purge_delay` in the v2 and v3
/// headers bundled by `libmimalloc-sys` 0.1).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory stays with the process for this long before mimalloc returns it to the OS
/// (its default is 10 ms). A simulator round of a million nodes frees and allocates
/// hundreds of megabytes; returned at once, every round faulted in fresh zeroed pages
/// (a third of its time). The dispatcher's 64 MiB frames gain the same way.
const RETAIN_FREED_MEMORY_MS: std::ffi::c_long = 1_000;

#[allow(unsafe_code)]
fn retain_freed_memory() {
    // SAFETY: a plain FFI call setting a process-wide allocator option; no pointers.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, RETAIN_FREED_MEMORY_MS) };
}

/// CryptoRAT: decentralized ONNX model serving, paid by rounds.
#[derive(Debug, Parser)]
#[command(name = "crat", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The areas of the command. Each has its own verbs.
#[derive(Debug, Subcommand)]
enum Command {
    /// The whole network in one process: a dispatcher, 3 nodes and a client on loopback
    /// QUIC; upload, deploy, a stream of tasks with a node killed halfway, a paid round.
    Demo(demo::DemoArgs),
    /// Run a dispatcher.
    Dispatcher(net::DispatcherArgs),
    /// Run a compute node.
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

fn main() -> ExitCode {
    retain_freed_memory();
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Dispatcher(args) => net::dispatcher(args),
        Command::Node(args) => net::node(args),
        Command::Keys(cmd) => net::keys(cmd),
        Command::Credits(cmd) => net::credits(cmd),
        Command::Rounds(cmd) => net::rounds(cmd),
        Command::Upload(args) => net::upload(args),
        Command::Deploy(args) => net::deploy(args),
        Command::Infer(args) => net::infer(args),
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
