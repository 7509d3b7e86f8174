//! Running a dispatcher: configure it, open it on a data directory, serve, manage an
//! account (credits and an SDK key), and read each closed round's payouts from the ledger.
//!
//! The self-contained mode ([`Options::self_contained`]) uses a temporary data directory,
//! 6-second rounds and one in-process node, so a round closes (and pays the node) within
//! about ten seconds.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use crat_backend::tract::TractBackend;
use crat_core::id::NodeId;
use crat_core::id::SdkKey;
use crat_core::money::{Credits, MicroUsd};
use crat_core::policy::hardware::ProofConfig;
use crat_dispatcher::ledger::{AccountName, RoundRecord};
use crat_dispatcher::{Dispatcher, DispatcherConfig, admin};
use crat_rewards::{Interval, Payout, PayoutBatch, RoundInputs, RoundOutcome, compute};
use crat_testnet::{NodeSpec, NodeTarget};
use crat_transport::quic::{QuicConfig, QuicTransport};
use ed25519_dalek::SigningKey;

use crate::now_s;

/// How to run the dispatcher.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where the ledger, models, uploads and payout files live; `None`: a temporary
    /// directory (and rounds that start now).
    pub data_dir: Option<PathBuf>,
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Round length in seconds (a real network uses a day: 86,400).
    pub round_s: u64,
    /// Replicas per deployment (a per-request deployment needs this many nodes online).
    pub replicas: u32,
    /// Lifetime of the tickets handed to clients with a lease, in seconds.
    pub ticket_lifetime_s: u64,
    /// The account to create, credit and issue a key for.
    pub account: String,
    /// Credits to grant it.
    pub credits: u64,
    /// Start one compute node in this process (tract, declaring an RTX 3090).
    pub local_node: bool,
    /// Stop once this many rounds have closed; `None`: do not stop for rounds.
    pub rounds: Option<usize>,
    /// Stop after this long; `None`: run until Ctrl-C (or `rounds`).
    pub run_for: Option<Duration>,
}

impl Options {
    /// Self-contained defaults: temporary data, 6-second rounds, one replica, one local
    /// node; stop after the first round closes, or after 30 s.
    pub fn self_contained() -> Self {
        Self {
            data_dir: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            round_s: 6,
            replicas: 1,
            ticket_lifetime_s: 120,
            account: "demo".into(),
            credits: 1_000_000,
            local_node: true,
            rounds: Some(1),
            run_for: Some(Duration::from_secs(30)),
        }
    }
}

/// One closed round, as read back from the ledger.
#[derive(Debug)]
pub struct RoundSummary {
    /// The stored record (inputs and outcome JSON included).
    pub record: RoundRecord,
    /// Who is paid what (nodes owed nothing are left out).
    pub payouts: Vec<Payout>,
}

/// What the operator set up and saw.
#[derive(Debug)]
pub struct Report {
    /// The dispatcher's id.
    pub dispatcher: NodeId,
    /// Where it listened.
    pub addr: SocketAddr,
    /// The key issued to the account.
    pub key: SdkKey,
    /// The account's balance after the grant.
    pub balance: Credits,
    /// Rounds closed while it ran, oldest first.
    pub rounds: Vec<RoundSummary>,
}

/// Runs the dispatcher until Ctrl-C, `options.run_for`, or `options.rounds` closed rounds.
pub async fn run(options: Options) -> anyhow::Result<Report> {
    let scratch = tempfile::tempdir()?;
    let self_contained = options.data_dir.is_none();
    let data_dir = options
        .data_dir
        .clone()
        .unwrap_or_else(|| scratch.path().join("dispatcher"));

    // 1. Configuration. Everything has a default; these are the knobs an operator turns
    //    first. The ledger (SQLite), models, staged uploads and payout files all live under
    //    the data directory.
    let mut config = DispatcherConfig::new(&data_dir);
    config.rewards.round_s = options.round_s;
    config.dispatch.replicas = options.replicas;
    config.ticket_lifetime_s = options.ticket_lifetime_s;
    if self_contained {
        // Demo rounds: round 0 starts a second from now, is closed one second after it ends,
        // counts its whole length as peak hours, and pays nodes that missed up to half of it.
        // (Rounds of a persistent data directory stay aligned to multiples of `round_s`.)
        config.round_epoch_s = now_s() + 1;
        config.round_close_delay_s = 1;
        config.rewards.peak_windows = vec![Interval::new(0, options.round_s)];
        config.rewards.commit_downtime_s_max = options.round_s / 2;
        config.dispatch.heartbeat_interval_s = 1;
        config.tick_ms = 200;
        // Demo proofs of hardware: the local node computes on this CPU, so its challenges are
        // tiny and their deadlines generous, and the RTX 3090 it declares is proven. An
        // operator keeps the default (real sizes and deadlines: docs/hardware-proof.md), under
        // which a CPU proves a CPU and is paid no guaranteed USD.
        config.hardware = ProofConfig {
            allowance_ms: 30_000,
            ..ProofConfig::test_scale()
        };
    }

    // 2. Open and run. The dispatcher key is its identity: nodes and clients pin it, and it
    //    signs the tickets nodes check offline, so it is kept in the data directory and
    //    the dispatcher keeps its id across restarts.
    let key = load_or_create_key(&data_dir.join("dispatcher.key"))?;
    let transport = QuicTransport::bind(options.listen, &key, QuicConfig::default())?;
    let addr = transport.socket_addr();
    let dispatcher = Dispatcher::open(config, key, transport)?;
    tokio::spawn({
        let dispatcher = dispatcher.clone();
        async move { dispatcher.run().await }
    });
    println!(
        "dispatcher {} listening on {addr}, data in {}",
        dispatcher.id(),
        data_dir.display()
    );

    // 3. An account, its credits and an SDK key (`crat credits grant` and `crat keys create`
    //    do the same on the ledger file). The key's secret is shown once: the ledger keeps
    //    only its hash.
    let ledger = dispatcher.ledger().clone();
    let account = AccountName::new(options.account.clone())?;
    let balance = admin::grant(&*ledger, &account, Credits::new(options.credits), now_s())?;
    let sdk_key = admin::create_key(&*ledger, &account, now_s(), None)?;
    println!("account {account}: {balance}; key {}", sdk_key.id);
    // (From another machine, use this host's public address instead of a wildcard.)
    let reachable = match addr.ip() {
        ip if ip.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], addr.port())),
        _ => addr,
    };
    println!("an integrator connects with:");
    println!(
        "  CRAT_DISPATCHER={reachable} CRAT_DISPATCHER_ID={} CRAT_KEY={sdk_key} \
         cargo run -p crat-examples --example integrator",
        dispatcher.id()
    );

    // 4. Nodes join on their own (`crat node --dispatcher … --dispatcher-id …`, or the
    //    node_builder example). The self-contained mode starts one here, declaring a GPU and
    //    running the tiny CNN with tract, as `crat_testnet::LocalNetwork` starts its nodes.
    let local_node = if options.local_node {
        let node = crat_testnet::spawn_node(
            NodeTarget {
                dispatcher_addr: addr,
                dispatcher_id: dispatcher.id(),
                store_dir: scratch.path().join("node"),
                clock: Arc::new(crat_transport::SteadyClock::system()),
            },
            NodeSpec {
                gpu: Some("NVIDIA GeForce RTX 3090".into()),
                backend: Arc::new(TractBackend::new()),
                batch_size: 4,
            },
            SigningKey::from_bytes(&rand::random()),
            IpAddr::from([127, 0, 0, 1]),
            |config| config.usage_flush_ms = 200,
        )
        .context("starting the local node")?;
        println!("started a local node {}", node.id());
        Some(node)
    } else {
        None
    };

    // 5. Watch the ledger. The dispatcher closes each round by itself shortly after it ends:
    //    uptime from heartbeats + the round's client income -> `crat-rewards` -> stored
    //    outcome -> payout files under `<data dir>/payouts`.
    let deadline = options.run_for.map(|d| tokio::time::Instant::now() + d);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut rounds = Vec::new();
    let mut next_index = 0;
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        // Newest first; a quick read of the local SQLite file.
        let mut closed = ledger.rounds(16)?;
        closed.reverse();
        for record in closed {
            if record.index < next_index {
                continue;
            }
            next_index = record.index + 1;
            let summary = summarize(record)?;
            print_round(&summary);
            rounds.push(summary);
        }
        if options.rounds.is_some_and(|n| rounds.len() >= n)
            || deadline.is_some_and(|d| tokio::time::Instant::now() >= d)
        {
            break;
        }
    }
    println!("stopping");
    if let Some(node) = &local_node {
        node.kill();
    }
    dispatcher.close();
    Ok(Report {
        dispatcher: dispatcher.id(),
        addr,
        key: sdk_key,
        balance,
        rounds,
    })
}

/// Reads the dispatcher's ed25519 key at `path` (64 hex digits), creating it if absent.
fn load_or_create_key(path: &Path) -> anyhow::Result<SigningKey> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let text = text.trim();
            anyhow::ensure!(
                text.len() == 64 && text.is_ascii(),
                "{} is not a 64-hex-digit key",
                path.display()
            );
            let mut bytes = [0u8; 32];
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
                    .with_context(|| format!("{} is not a 64-hex-digit key", path.display()))?;
            }
            Ok(SigningKey::from_bytes(&bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::from_bytes(&rand::random());
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let hex: String = key.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
            std::fs::write(path, hex).with_context(|| format!("writing {}", path.display()))?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Payouts of a stored round, after checking that its stored inputs recompute to its stored
/// outcome: anyone holding `inputs_json` can do the same with `crat rewards compute`.
fn summarize(record: RoundRecord) -> anyhow::Result<RoundSummary> {
    let outcome = RoundOutcome::from_json(&record.outcome_json)?;
    let inputs = RoundInputs::from_json(&record.inputs_json)?;
    anyhow::ensure!(
        compute(&inputs)? == outcome,
        "round {} does not recompute to its stored outcome",
        record.index
    );
    let batch = PayoutBatch::from_outcome(record.index, &outcome)
        .with_context(|| format!("payouts of round {}", record.index))?;
    Ok(RoundSummary {
        record,
        payouts: batch.payouts,
    })
}

fn print_round(round: &RoundSummary) {
    let r = &round.record;
    println!(
        "round {} closed ({} s from {}): income {}, paid {}, carried over {}",
        r.index, r.length_s, r.start_s, r.income_usd_micro, r.paid_usd_micro, r.carry_out_usd_micro
    );
    for p in &round.payouts {
        println!(
            "  node {}: {} guaranteed + {} bonus = {}",
            p.node, p.guaranteed_usd_micro, p.bonus_usd_micro, p.total_usd_micro
        );
    }
    if round.payouts.is_empty() {
        println!("  no payouts ({} paid)", MicroUsd::ZERO);
    }
}
