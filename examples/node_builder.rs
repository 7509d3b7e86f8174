//! Node builder example: a compute node composed by hand from `crat-node` + `crat-transport`.
//!
//! ```sh
//! # self-contained: starts its own dispatcher in this process, runs 5 s
//! cargo run -p crat-examples --example node_builder
//!
//! # join a running dispatcher until Ctrl-C
//! cargo run -p crat-examples --example node_builder -- \
//!     --dispatcher 203.0.113.7:7400 --dispatcher-id <64 hex> \
//!     --listen 0.0.0.0:7401 --advertise 198.51.100.4:7401 \
//!     [--gpu "NVIDIA GeForce RTX 3090"] [--idle-cmd "sleep 3600"] [--idle-after-s 300] \
//!     [--data-dir ./crat-node] [--seconds N]
//! ```
//!
//! The walkthrough itself is `examples/src/node_builder.rs`.

use std::time::Duration;

use crat_examples::Args;
use crat_examples::node_builder::{Options, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    crat_examples::init_tracing();
    let args = Args::from_env()?;
    let mut options = Options::self_contained();
    if let Some(addr) = args.get("dispatcher")? {
        let id = args
            .get("dispatcher-id")?
            .ok_or_else(|| anyhow::anyhow!("--dispatcher needs --dispatcher-id"))?;
        // A real node: serves on the network until Ctrl-C, no idle workload unless asked.
        options.dispatcher = Some((addr, id));
        options.listen = "0.0.0.0:7401".parse()?;
        options.declared_gpu = None;
        options.idle_command = None;
        options.idle_after_s = 300;
        options.run_for = None;
    }
    if let Some(listen) = args.get("listen")? {
        options.listen = listen;
    }
    options.advertise = args.get("advertise")?.or(options.advertise);
    options.data_dir = args.get("data-dir")?.or(options.data_dir);
    options.declared_gpu = args.get("gpu")?.or(options.declared_gpu);
    if let Some(cmd) = args.get::<String>("idle-cmd")? {
        options.idle_command = Some(cmd.split_whitespace().map(str::to_owned).collect());
    }
    options.idle_after_s = args.get("idle-after-s")?.unwrap_or(options.idle_after_s);
    if let Some(s) = args.get("seconds")? {
        options.run_for = Some(Duration::from_secs(s));
    }

    let report = run(options).await?;
    println!(
        "done: node {} ({}, rating {}), registered {:?}, idle workload started {} time(s)",
        report.node, report.backend, report.rating, report.registered, report.idle_starts
    );
    Ok(())
}
