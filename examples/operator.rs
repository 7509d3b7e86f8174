//! Operator example: run a dispatcher, grant credits, issue an SDK key, read round payouts.
//!
//! ```sh
//! # self-contained: temporary data, 6-second rounds, one local node; stops after round 0
//! cargo run -p crat-examples --example operator
//!
//! # a persistent dispatcher until Ctrl-C
//! cargo run -p crat-examples --example operator -- \
//!     --data-dir ./crat-data --listen 0.0.0.0:7400 --round-s 86400 \
//!     [--replicas 2] [--ticket-lifetime-s 300] [--account alice] [--credits 1000000] \
//!     [--local-node] [--rounds N] [--seconds N]
//! ```
//!
//! The walkthrough itself is `examples/src/operator.rs`.

use std::time::Duration;

use crat_examples::Args;
use crat_examples::operator::{Options, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    crat_examples::init_tracing();
    let args = Args::from_env()?;
    let mut options = Options::self_contained();
    if let Some(dir) = args.get("data-dir")? {
        // A persistent dispatcher: real rounds, nodes join from elsewhere, run until Ctrl-C.
        options.data_dir = Some(dir);
        options.listen = "0.0.0.0:7400".parse()?;
        options.round_s = 86_400;
        options.replicas = 2;
        options.ticket_lifetime_s = 300;
        options.local_node = false;
        options.rounds = None;
        options.run_for = None;
    }
    if let Some(listen) = args.get("listen")? {
        options.listen = listen;
    }
    options.round_s = args.get("round-s")?.unwrap_or(options.round_s);
    options.replicas = args.get("replicas")?.unwrap_or(options.replicas);
    options.ticket_lifetime_s = args
        .get("ticket-lifetime-s")?
        .unwrap_or(options.ticket_lifetime_s);
    options.account = args.get("account")?.unwrap_or(options.account);
    options.credits = args.get("credits")?.unwrap_or(options.credits);
    options.local_node |= args.flag("local-node");
    options.rounds = args.get("rounds")?.or(options.rounds);
    if let Some(s) = args.get("seconds")? {
        options.run_for = Some(Duration::from_secs(s));
    }

    let report = run(options).await?;
    let paid: u64 = report
        .rounds
        .iter()
        .map(|r| r.record.paid_usd_micro.get())
        .sum();
    println!(
        "done: dispatcher {} closed {} round(s), {paid} µUSD paid in all",
        report.dispatcher,
        report.rounds.len()
    );
    Ok(())
}
