//! `crat rewards …`: compute a round from its interchange JSON, or explain one node's payout.
//! All the economics are in `crat-rewards`; this module only reads and writes.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use crat_core::id::NodeId;
use crat_rewards::{INTERCHANGE_BYTES_MAX, RoundInputs, compute, explain};

/// `crat rewards` verbs.
#[derive(Debug, Subcommand)]
pub(crate) enum RewardsCommand {
    /// Compute a round's payouts and CRAT from its interchange JSON.
    ///
    /// Reads `{"params", "round", "nodes"}` (docs/economics.md, "Interchange") and writes
    /// `{"nodes", "aggregates"}`, nodes in rank order then id order. Invalid input is refused
    /// with the offending field named, e.g. `nodes[3].online[1]`.
    Compute {
        /// Round file to read; standard input when absent or `-`.
        #[arg(long, short)]
        input: Option<PathBuf>,
        /// Result file to write; standard output when absent or `-`.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Explain one node's payout in plain words.
    ///
    /// Shows how the node's guaranteed reward, rank, bonus and CRAT follow from the round's
    /// inputs, rule by rule, every number traced to an input.
    Explain {
        /// The node's id (64 hex digits).
        #[arg(long)]
        node: NodeId,
        /// Round file to read; standard input when absent or `-`.
        #[arg(long, short)]
        input: Option<PathBuf>,
    },
}

/// Runs one `crat rewards` verb.
pub(crate) fn run(cmd: RewardsCommand) -> anyhow::Result<()> {
    match cmd {
        RewardsCommand::Compute { input, output } => {
            let inputs = read_inputs(input.as_deref())?;
            let outcome = compute(&inputs).context("invalid round")?;
            write_output(output.as_deref(), outcome.to_json().as_bytes())
        }
        RewardsCommand::Explain { node, input } => {
            let inputs = read_inputs(input.as_deref())?;
            let explanation = explain(&inputs, &node).context("cannot explain")?;
            write_output(None, explanation.to_string().as_bytes())
        }
    }
}

fn is_stdio(path: Option<&Path>) -> bool {
    path.is_none_or(|p| p == Path::new("-"))
}

/// Reads the round, at most [`INTERCHANGE_BYTES_MAX`] bytes, and parses it.
fn read_inputs(path: Option<&Path>) -> anyhow::Result<RoundInputs> {
    let cap = INTERCHANGE_BYTES_MAX as u64 + 1;
    let mut text = String::new();
    let name = match path {
        Some(p) if !is_stdio(path) => {
            fs::File::open(p)
                .with_context(|| format!("cannot open {}", p.display()))?
                .take(cap)
                .read_to_string(&mut text)
                .with_context(|| format!("cannot read {}", p.display()))?;
            p.display().to_string()
        }
        _ => {
            io::stdin()
                .lock()
                .take(cap)
                .read_to_string(&mut text)
                .context("cannot read standard input")?;
            "standard input".to_owned()
        }
    };
    if text.len() > INTERCHANGE_BYTES_MAX {
        bail!("{name}: more than {INTERCHANGE_BYTES_MAX} bytes");
    }
    RoundInputs::from_json(&text).with_context(|| format!("{name}: invalid round"))
}

fn write_output(path: Option<&Path>, bytes: &[u8]) -> anyhow::Result<()> {
    match path {
        Some(p) if !is_stdio(path) => {
            fs::write(p, bytes).with_context(|| format!("cannot write {}", p.display()))
        }
        _ => {
            let mut out = io::stdout().lock();
            out.write_all(bytes)
                .and_then(|()| out.flush())
                .context("cannot write standard output")
        }
    }
}
