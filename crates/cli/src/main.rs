//! The `crat` command: one binary, one subcommand per area. Each area's verbs live in their
//! own module; this file only parses the command line and dispatches.

mod rewards;
mod sim;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc reuses freed memory for the next large frame (64 MiB tensors) where glibc maps
/// and faults in fresh pages every time; `benches/benches/quic.rs` measures the difference.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Round economics: compute a round's payouts, or explain one node's.
    #[command(subcommand)]
    Rewards(rewards::RewardsCommand),
    /// Simulator: run scenario files (seeds, sweeps) and plot their results.
    #[command(subcommand)]
    Sim(sim::SimCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
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
