//! Chaos soak (issue 14, item 11): the network holds while its processes are killed.
//!
//! Real processes, so every kill is a real SIGKILL. A `crat dispatcher` is killed every 3–6 s
//! and restarted after a short pause on the same port and data directory (ledger, models,
//! payouts, key); of three `crat node`s, two are each killed and restarted at random (same
//! port, same data directory: key, model store, usage journal) and one lives through it all,
//! so it must come back to every restarted dispatcher by itself; rounds of 4 s close and
//! settle throughout. Two clients in this process (the SDK over loopback QUIC), one on a
//! per-request plan and one on a per-instance plan, stream tasks the whole time and upload
//! models now and then (the tiny model with a metadata entry of its own each time, so every
//! upload is new bytes); their errors while the dispatcher or a node is down are expected and
//! counted.
//!
//! Then the clients stop and hand the dispatcher their last acknowledgements, the dispatcher
//! is killed and restarted one last time, and the network runs quietly until every ticket's
//! usage window has ended, the rounds up to the end of the chaos are closed and settled and
//! the nodes' usage journals are empty; then every process is interrupted (ctrl-c) and must
//! exit cleanly. The ledger file and the payout files are audited after:
//!
//! - money is conserved: Σ balances + allowances + income = Σ grants, and the grants are
//!   exactly what the operator granted;
//! - every charge is present exactly once: at most one usage row per task, and the `usage`
//!   journal movements (one per deployment and time of each charge) come, per deployment
//!   and second, to what the usage rows charged;
//! - every task a client got an answer for is billed at most once, and every one is billed:
//!   per deployment, the clients' acknowledgements stored in the ledger cover exactly the
//!   answers the clients got, every acknowledgement's usage window is settled, usage rows
//!   plus the work settled from acknowledgements (a node that died before reporting) come
//!   to the answered tasks, and the per-request plan's credits to their price. A shortfall
//!   is reported as *loss*: answered work the dispatcher learnt of from neither the node nor
//!   the client within the ticket's usage window (the protocol's one window of loss; the
//!   clients here stay up and acknowledge everything, so the soak fails on any);
//! - every closed round is settled exactly once and its files verify: rounds are contiguous
//!   and keep closing through the chaos, none is unsettled, each round's JSON, CSV and
//!   digest are its stored outcome's payouts and the ledger keeps the receipt's digest, the
//!   outcome is recomputed from the stored inputs, and no round was newly paid twice across
//!   all the dispatcher's lives (their logs);
//! - every upload the SDK reported done is stored, with its size;
//! - no process died on its own, every restart came back, the node never killed registered
//!   with 90 % of the dispatcher's lives, and the clients were answered in most of them.
//!
//! It prints a report (kills survived, tasks answered and how each was billed, uploads,
//! rounds, loss). The kill schedule is seeded (`CRAT_CHAOS_SEED`, printed; the traffic and
//! timing are not reproducible); the chaos lasts `CRAT_CHAOS_S` seconds (default 75; the whole
//! test about 110 s). On failure, or with `CRAT_CHAOS_KEEP=1`, the directory with every
//! process's log is kept and named.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod audit;
mod clients;
mod processes;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use crat_core::id::{NodeId, SdkKey};
use crat_core::money::Credits;
use crat_core::pricing::{DeployPlan, PerInstancePlan, PerRequestPlan, UpdateFrequency};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use audit::{audit, pending_work, steady_registrations};
use clients::{Traffic, client_config, input, retry, stream_tasks, upload_now_and_then};
use processes::{DispatcherProc, NodeProc, free_port, operator};

/// The tiny CNN (`input` 1×1×28×28 → `probs` 10), the model the clients deploy and upload.
const TINY: &[u8] = include_bytes!("../../../backend/models/tiny_cnn.onnx");
/// Round length: about 20 rounds close during the chaos.
const ROUND_S: u64 = 4;
/// Ticket lifetime: short (with the grace), so that every usage window ends soon after the
/// chaos.
const TICKET_LIFETIME_S: u64 = 10;
/// Usage grace: how long after a ticket expires its usage is still accepted and its
/// acknowledgements are settled.
const USAGE_GRACE_S: u64 = 10;
/// Compute nodes.
const NODES: usize = 3;
/// The node that is never killed.
const STEADY: usize = 0;
/// Credits granted to each client's account.
const GRANT: u64 = 1_000_000_000_000;
/// Allowance of the per-request deployment.
const ALLOWANCE: u64 = 100_000_000_000;
/// Tasks in flight per client.
const CONCURRENCY: usize = 2;
/// The inputs digest of the usage rows a settlement of acknowledgements writes
/// (`SETTLEMENT_DIGEST` in `crates/dispatcher/src/service/acks.rs`).
const SETTLEMENT_DIGEST: [u8; 32] = [0xff; 32];
/// Longest wait for a process to print that it is up, or to exit after ctrl-c.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The soak (see the module docs); its data and logs live in a temporary directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let result = soak(&path).await;
    if result.is_err() || std::env::var_os("CRAT_CHAOS_KEEP").is_some() {
        println!("logs and data kept in {}", dir.keep().display());
    }
    if let Err(e) = result {
        panic!("chaos soak failed: {e:#}");
    }
}

/// The seeded settings of one run.
struct Settings {
    seed: u64,
    chaos: Duration,
}

fn settings() -> anyhow::Result<Settings> {
    let seed = match std::env::var("CRAT_CHAOS_SEED") {
        Ok(s) => s.parse().context("CRAT_CHAOS_SEED")?,
        Err(_) => 1_411,
    };
    let chaos_s: u64 = match std::env::var("CRAT_CHAOS_S") {
        Ok(s) => s.parse().context("CRAT_CHAOS_S")?,
        Err(_) => 75,
    };
    ensure!(chaos_s >= 30, "CRAT_CHAOS_S below 30 s proves little");
    Ok(Settings {
        seed,
        chaos: Duration::from_secs(chaos_s),
    })
}

/// What the chaos phase did.
#[derive(Default)]
struct Chaos {
    dispatcher_kills: u32,
    node_kills: u32,
    /// Dispatcher lives of the chaos phase (each ended by a kill, or by the chaos's end).
    dispatcher_lives: u32,
    /// Of those, the lives in which the clients got at least one answer.
    lives_answered: u32,
}

async fn soak(dir: &Path) -> anyhow::Result<()> {
    let s = settings()?;
    println!(
        "chaos soak: seed {} (CRAT_CHAOS_SEED), {} s of chaos (CRAT_CHAOS_S), in {}",
        s.seed,
        s.chaos.as_secs(),
        dir.display()
    );
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(s.seed);
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let data = dir.join("dispatcher");
    let config = dir.join("dispatcher.toml");
    std::fs::write(
        &config,
        format!(
            "[dispatcher]\n\
             round_s = {ROUND_S}\n\
             round_epoch_s = 0\n\
             round_close_delay_s = 1\n\
             heartbeat_interval_s = 1\n\
             replicas = 2\n\
             ticket_lifetime_s = {TICKET_LIFETIME_S}\n\
             usage_grace_s = {USAGE_GRACE_S}\n\
             proof_scale = \"test\"\n"
        ),
    )?;

    // The operator: two accounts with credits and a key each, with the operator verbs.
    let d = data.to_str().context("path")?;
    let mut keys = Vec::new();
    for account in ["per-request", "per-instance"] {
        operator(&[
            "credits",
            "grant",
            "--data-dir",
            d,
            "--account",
            account,
            &GRANT.to_string(),
        ])?;
        let key: SdkKey = operator(&["keys", "create", "--data-dir", d, "--account", account])?
            .trim()
            .parse()?;
        keys.push(key);
    }

    let mut taken = Vec::new();
    let port = free_port(&taken)?;
    taken.push(port);
    let mut dispatcher = DispatcherProc {
        port,
        data: data.clone(),
        config,
        logs: logs.clone(),
        proc: None,
        lives: 0,
        id: None,
        args: Vec::new(),
    };
    dispatcher.start().await?;
    let mut nodes = Vec::new();
    for index in 0..NODES {
        let port = free_port(&taken)?;
        taken.push(port);
        let mut n = NodeProc {
            index,
            port,
            data: dir.join(format!("node{index}")),
            logs: logs.clone(),
            proc: None,
            lives: 0,
        };
        n.start(&dispatcher)?;
        nodes.push(n);
    }
    let dispatcher_id: NodeId = dispatcher.id.as_deref().context("id")?.parse()?;
    let dispatcher_addr = dispatcher.addr().parse()?;

    // The clients: connect, upload, deploy one plan each, wait for the replicas.
    let mut clients = Vec::new();
    for key in keys {
        clients.push(
            crat_sdk::connect_quic_with(
                dispatcher_addr,
                dispatcher_id,
                key,
                client_config(),
                crat_testnet::loopback_quic(),
            )
            .await?,
        );
    }
    let model = clients[0].upload_model(TINY, |_| {}).await?;
    clients[1].upload_model(TINY, |_| {}).await?;
    let plans = [
        DeployPlan::PerRequest(PerRequestPlan {
            max_input_bytes: 1 << 20,
            credit_allowance: Credits::new(ALLOWANCE),
        }),
        DeployPlan::PerInstance(PerInstancePlan {
            guaranteed_rps: 50,
            max_input_bytes: 1 << 20,
            update_frequency: UpdateFrequency::Never,
            key_lifetime_s: 86_400,
        }),
    ];
    let mut deployments = Vec::new();
    for (client, plan) in clients.iter().zip(plans) {
        // `NoCapacity` (nothing created) until the nodes have registered and proven their
        // hardware.
        let deadline = Instant::now() + START_TIMEOUT;
        let d = loop {
            match client.deploy(model, plan).await {
                Err(crat_sdk::Error::NoCapacity(e)) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "nodes not ready yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => break other?,
            }
        };
        d.wait_ready(Duration::from_secs(60)).await?;
        deployments.push(d);
    }
    // What one task costs on each plan (all inputs have the same size).
    let input_bytes = crat_core::tensor::tensors_bytes(&input(0));
    let mut task_cost = Vec::new();
    for d in &deployments {
        task_cost.push(
            d.lease()
                .await?
                .ticket
                .body
                .price
                .cost(input_bytes)
                .context("a task's price")?,
        );
    }
    println!(
        "network up in {:.1} s: dispatcher {}, {NODES} nodes; per-request task {} credits, per-instance {}",
        started.elapsed().as_secs_f64(),
        dispatcher.addr(),
        task_cost[0].get(),
        task_cost[1].get()
    );

    // Traffic: both clients stream tasks and upload now and then.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic: Vec<Arc<Traffic>> = (0..2).map(|_| Arc::new(Traffic::default())).collect();
    let mut workers = Vec::new();
    for (i, d) in deployments.iter().enumerate() {
        for _ in 0..CONCURRENCY {
            workers.push(tokio::spawn(stream_tasks(
                d.clone(),
                stop.clone(),
                traffic[i].clone(),
            )));
        }
        workers.push(tokio::spawn(upload_now_and_then(
            clients[i].clone(),
            ["per-request", "per-instance"][i],
            stop.clone(),
            traffic[i].clone(),
        )));
    }

    // Chaos: a seeded schedule of kills and restarts.
    let answered = || traffic.iter().map(|t| t.answered()).sum::<usize>();
    let mut chaos = run_chaos(&mut rng, s.chaos, &mut dispatcher, &mut nodes, &answered).await?;
    let chaos_ended_unix_s = unix_s();

    // Quiet: the clients stop; everything is up again.
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .context("a client did not stop within 60 s")??;
    }
    if dispatcher.proc.is_none() {
        dispatcher.start().await?;
    }
    for n in &mut nodes {
        match &mut n.proc {
            Some(p) => p.check_alive()?,
            None => n.start(&dispatcher)?,
        }
    }
    dispatcher
        .proc
        .as_mut()
        .context("dispatcher")?
        .check_alive()?;
    // The clients hand over their last acknowledgements (the dispatcher answers only once
    // they are stored).
    for d in &deployments {
        retry("flushing acknowledgements", Duration::from_secs(30), || {
            d.flush_acks()
        })
        .await?;
    }
    // One last SIGKILL and restart, then quiet until every usage window has ended (the last
    // ticket's lifetime and grace after the last task; as long after the restart for records
    // of tickets the restarted dispatcher never issued), with a few seconds for the last
    // settlements, usage reports and journal writes.
    dispatcher.kill()?;
    chaos.dispatcher_kills += 1;
    dispatcher.start().await?;
    let restarted = Instant::now();
    let last_answer = traffic
        .iter()
        .filter_map(|t| *t.last_answer.lock())
        .max()
        .unwrap_or(restarted);
    let window = Duration::from_secs(TICKET_LIFETIME_S + USAGE_GRACE_S + 4);
    tokio::time::sleep_until((restarted.max(last_answer) + window).into()).await;
    // Then until the rounds up to the chaos's end are closed and settled, every
    // acknowledgement is settled and the node journals are empty (bounded).
    let ledger_path = data.join("ledger.sqlite");
    let last_due_round = chaos_ended_unix_s / ROUND_S;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pending = pending_work(&ledger_path, last_due_round, &nodes)?;
        if pending.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "still pending 30 s into the quiet time: {}",
            pending.join("; ")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for n in &mut nodes {
        n.proc.as_mut().context("node")?.stop().await?;
    }
    dispatcher
        .proc
        .as_mut()
        .context("dispatcher")?
        .stop()
        .await?;
    drop(clients);

    // The audit.
    let audit = audit(
        &data,
        &logs,
        &deployments.iter().map(|d| d.id()).collect::<Vec<_>>(),
        &traffic,
        &task_cost,
    )?;
    let total: usize = traffic.iter().map(|t| t.answered()).sum();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for t in &traffic {
        for (k, v) in t.errors.lock().iter() {
            *errors.entry(k.clone()).or_default() += v;
        }
    }
    println!(
        "kills survived: dispatcher {} (lives {}), nodes {} (lives {})",
        chaos.dispatcher_kills,
        dispatcher.lives,
        chaos.node_kills,
        nodes.iter().map(|n| n.lives).sum::<u32>()
    );
    println!(
        "tasks answered: {total} (per-request {}, per-instance {}); answered in {} of {} dispatcher lives of the chaos",
        traffic[0].answered(),
        traffic[1].answered(),
        chaos.lives_answered,
        chaos.dispatcher_lives
    );
    let steady = steady_registrations(&logs, &nodes[STEADY])?;
    println!(
        "node {STEADY} (never killed) registered with {steady} of {} dispatcher lives",
        dispatcher.lives
    );
    println!("errors while processes were down: {errors:?}");
    print!("{audit}");
    println!("wall time {:.1} s", started.elapsed().as_secs_f64());

    // The soak must have exercised something.
    for (i, t) in traffic.iter().enumerate() {
        ensure!(
            t.answered() >= 50,
            "client {i} got only {} answers",
            t.answered()
        );
        ensure!(!t.uploads.lock().is_empty(), "client {i} uploaded nothing");
    }
    ensure!(
        chaos.dispatcher_kills >= 5 && chaos.node_kills >= 3,
        "too few kills: {} dispatcher, {} node",
        chaos.dispatcher_kills,
        chaos.node_kills
    );
    // Each life lasts 3 s or more, and the node notices a restart at its next packet (the
    // restarted dispatcher resets the old connection) and dials again after 250 ms.
    ensure!(
        10 * steady >= 9 * dispatcher.lives,
        "node {STEADY}, never killed, registered with only {steady} of {} dispatcher lives",
        dispatcher.lives
    );
    ensure!(
        2 * chaos.lives_answered >= chaos.dispatcher_lives,
        "clients were answered in only {} of {} dispatcher lives",
        chaos.lives_answered,
        chaos.dispatcher_lives
    );
    Ok(())
}

/// The chaos phase: for `length`, the dispatcher is killed after 3–6 s of life and restarted
/// after 0.2–1 s, and every node but [`STEADY`] is killed after 4–12 s of life and restarted
/// after 0.5–3 s, on a schedule drawn from `rng`. Every kill checks first that the process
/// had not died on its own; every dispatcher restart waits until it listens again.
async fn run_chaos(
    rng: &mut StdRng,
    length: Duration,
    dispatcher: &mut DispatcherProc,
    nodes: &mut [NodeProc],
    answered: &dyn Fn() -> usize,
) -> anyhow::Result<Chaos> {
    let started = Instant::now();
    let end = started + length;
    let mut chaos = Chaos::default();
    let mut answered_at_life_start = answered();
    let mut dispatcher_next = started + Duration::from_secs_f64(rng.gen_range(3.0..6.0));
    let never = end + Duration::from_secs(3_600);
    let mut node_next: Vec<Instant> = (0..nodes.len())
        .map(|i| match i {
            STEADY => never,
            _ => started + Duration::from_secs_f64(rng.gen_range(4.0..12.0)),
        })
        .collect();
    loop {
        let (i, at) = node_next
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|&(_, t)| t)
            .context("nodes")?;
        let next = at.min(dispatcher_next);
        if next >= end {
            break;
        }
        tokio::time::sleep_until(next.into()).await;
        if dispatcher_next <= at {
            if dispatcher.proc.is_some() {
                chaos.dispatcher_lives += 1;
                if answered() > answered_at_life_start {
                    chaos.lives_answered += 1;
                }
                dispatcher.kill()?;
                chaos.dispatcher_kills += 1;
                dispatcher_next = Instant::now() + Duration::from_secs_f64(rng.gen_range(0.2..1.0));
            } else {
                dispatcher.start().await?;
                answered_at_life_start = answered();
                dispatcher_next = Instant::now() + Duration::from_secs_f64(rng.gen_range(3.0..6.0));
            }
        } else if nodes[i].proc.is_some() {
            nodes[i].kill()?;
            chaos.node_kills += 1;
            node_next[i] = Instant::now() + Duration::from_secs_f64(rng.gen_range(0.5..3.0));
        } else {
            nodes[i].start(dispatcher)?;
            node_next[i] = Instant::now() + Duration::from_secs_f64(rng.gen_range(4.0..12.0));
        }
    }
    if dispatcher.proc.is_some() {
        chaos.dispatcher_lives += 1;
        if answered() > answered_at_life_start {
            chaos.lives_answered += 1;
        }
    }
    Ok(chaos)
}

fn unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
