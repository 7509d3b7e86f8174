//! Integrator example: upload, deploy and call an ONNX model with `crat-sdk`.
//!
//! ```sh
//! # self-contained: a dispatcher and two nodes start in this process
//! cargo run -p crat-examples --example integrator
//!
//! # against a running dispatcher (the operator example prints this line)
//! CRAT_DISPATCHER=203.0.113.7:7400 CRAT_DISPATCHER_ID=<64 hex> CRAT_KEY=sk_… \
//!     cargo run -p crat-examples --example integrator -- \
//!     [model.onnx] [--batch 64] [--concurrency 8]
//! ```
//!
//! The walkthrough itself is `examples/src/integrator.rs`.

use crat_examples::Args;
use crat_examples::integrator::{Options, Target, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    crat_examples::init_tracing();
    let args = Args::from_env()?;
    let defaults = Options::default();
    let options = Options {
        batch: args.get("batch")?.unwrap_or(defaults.batch),
        concurrency: args.get("concurrency")?.unwrap_or(defaults.concurrency),
        allowance: args.get("allowance")?.unwrap_or(defaults.allowance),
    };

    // Where the network is: all three variables set means a real dispatcher.
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let target = match (
        env("CRAT_DISPATCHER"),
        env("CRAT_DISPATCHER_ID"),
        env("CRAT_KEY"),
    ) {
        (Some(addr), Some(id), Some(key)) => Target::Remote {
            addr: addr.parse()?,
            id: id.parse()?,
            key: key.parse()?,
            model: args.positional().first().map(Into::into),
        },
        (None, None, None) => Target::Local { credits: 1_000_000 },
        _ => anyhow::bail!("set all of CRAT_DISPATCHER, CRAT_DISPATCHER_ID and CRAT_KEY, or none"),
    };

    let report = run(target, options).await?;
    println!(
        "done: {} tasks on deployment {}, balance now {}",
        report.stats.completed, report.deployment, report.balances[2]
    );
    Ok(())
}
