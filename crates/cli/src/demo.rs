//! `crat demo`: the whole network in one process on loopback QUIC. A dispatcher, three
//! nodes and a client; the client uploads the shipped PaddleOCR text-direction classifier,
//! deploys it, streams tasks straight to the nodes, and one node is killed halfway. Then a
//! round is closed and paid. Nothing is faked but the nodes' declared GPUs: inference runs on
//! this machine's CPU: ONNX Runtime as `crat node` finds or installs it (kept in
//! `~/.cache/cryptorat/onnxruntime/`), tract if there is none.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use crat_backend::InferenceBackend;
use crat_core::id::{ModelId, NodeId, TaskId};
use crat_core::money::Credits;
use crat_core::pricing::{DeployPlan, PerRequestPlan};
use crat_core::tensor::{NamedTensor, Tensor};
use crat_dispatcher::DispatcherConfig;
use crat_dispatcher::admin;
use crat_dispatcher::ledger::AccountName;
use crat_rewards::Interval;
use crat_testnet::{LocalNetwork, NodeSpec};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

const MODEL: &[u8] = include_bytes!("../../backend/models/ch_ppocr_mobile_v2.0_cls_infer.onnx");
/// Three rendered text lines, 48 × 192 grey pixels each.
const LINES: &[u8] = include_bytes!("../../backend/models/text_lines_48x192.gray");
const H: usize = 48;
const W: usize = 192;
const GPUS: [&str; 3] = [
    "NVIDIA GeForce RTX 3090",
    "NVIDIA GeForce RTX 3080",
    "NVIDIA GeForce GTX 1660 Ti",
];

/// Options of `crat demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Tasks to stream.
    #[arg(long, default_value_t = 600)]
    tasks: usize,
    /// Tasks in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Round length in seconds (the demo waits for the round to end, then closes it).
    #[arg(long, default_value_t = 15)]
    round_s: u64,
    /// Do not kill a node halfway.
    #[arg(long)]
    no_kill: bool,
}

/// One line as the classifier's input: 3 × 48 × 192, normalised to [-1, 1]; `flip` rotates
/// it by 180°.
fn line_input(index: usize, flip: bool) -> anyhow::Result<Tensor> {
    let pixels = &LINES[index * H * W..(index + 1) * H * W];
    let mut data = Vec::with_capacity(3 * H * W);
    for _ in 0..3 {
        for i in 0..H * W {
            let p = if flip {
                pixels[H * W - 1 - i]
            } else {
                pixels[i]
            };
            data.push(f32::from(p) / 127.5 - 1.0);
        }
    }
    Ok(Tensor::from_slice(&[1, 3, H as u64, W as u64], &data)?)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn usd(micro: u64) -> String {
    format!("${}.{:06}", micro / 1_000_000, micro % 1_000_000)
}

pub(crate) fn run(args: DemoArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(demo(args))
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    if args.tasks == 0 || args.round_s < 5 {
        bail!("--tasks must be at least 1 and --round-s at least 5");
    }
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    // ONNX Runtime as `crat node` finds or installs it, kept across runs in the cache
    // directory (the demo's own data is temporary); tract with the reason otherwise.
    let ort_home = crate::onnxruntime::cache_dir().unwrap_or_else(|| dir.path().to_path_buf());
    let selected = crate::onnxruntime::select(
        &ort_home,
        &crate::onnxruntime::OnnxRuntimeSection::default(),
        false,
        None,
    )
    .await?;
    println!("backend: {}", selected.describe());
    let backend: Arc<dyn InferenceBackend> = selected.backend.clone();

    // Rounds start now and last `round_s`; peak hours are the round's second half, and a
    // node may be down 2 s and still count as committed for the whole round.
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut config = DispatcherConfig::new(dir.path().join("dispatcher"));
    config.round_epoch_s = now_s;
    config.round_close_delay_s = 1;
    config.rewards.round_s = args.round_s;
    config.rewards.peak_windows = vec![Interval::new(args.round_s / 2, args.round_s)];
    config.rewards.commit_downtime_s_max = 2;
    config.dispatch.heartbeat_interval_s = 1;
    // Short tickets and a short usage window, so that the work the killed node served but
    // never reported is charged from the client's acknowledgements before the demo ends.
    config.ticket_lifetime_s = 10;
    config.usage_grace_s = 3;
    let specs = GPUS
        .iter()
        .map(|g| NodeSpec {
            gpu: Some((*g).to_owned()),
            backend: backend.clone(),
            // On the CPU, tract runs this model no faster per item in batches (measured: 8 in
            // flight gave 259 tasks/s with batches of 4 and 540 tasks/s with 1).
            batch_size: 1,
        })
        .collect();
    let pricing = config.pricing.clone();
    let config_window_s = config.ticket_lifetime_s + config.usage_grace_s;
    let started = Instant::now();
    let net = LocalNetwork::start(config, dir.path(), specs).await?;
    let gpu_of: BTreeMap<NodeId, &str> = net.nodes.iter().map(|n| n.id()).zip(GPUS).collect();
    println!(
        "dispatcher {} at {}; {} nodes online ({:.1} s)",
        short(&net.dispatcher().id()),
        net.dispatcher_addr,
        net.dispatcher().online_nodes(),
        started.elapsed().as_secs_f64()
    );

    // The operator opens an account with credits and gives the data scientist a key.
    let ledger = net.dispatcher().ledger().clone();
    let account = AccountName::new("demo")?;
    let now = now_s;
    admin::grant(&*ledger, &account, Credits::new(100_000), now)?;
    let key = admin::create_key(&*ledger, &account, now, Some(86_400))?;

    // The data scientist: connect, upload, deploy.
    let client = crat_sdk::connect_quic_with(
        net.dispatcher_addr,
        net.dispatcher().id(),
        key,
        crat_sdk::ClientConfig::default(),
        crat_testnet::loopback_quic(),
    )
    .await?;
    let bar = ProgressBar::new(MODEL.len() as u64);
    bar.set_style(ProgressStyle::with_template(
        "upload {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
    )?);
    let upload_started = Instant::now();
    let model = client
        .upload_model(MODEL, |p| bar.set_position(p.acked_bytes))
        .await?;
    bar.finish_and_clear();
    println!(
        "uploaded PaddleOCR direction classifier: {} bytes in {:.1} ms, model {}",
        MODEL.len(),
        upload_started.elapsed().as_secs_f64() * 1e3,
        short_model(&model)
    );
    let plan = DeployPlan::PerRequest(PerRequestPlan {
        max_input_bytes: 1 << 20,
        credit_allowance: Credits::new(20_000),
    });
    let quote = client.quote(model, plan).await?;
    let deployment = client.deploy(model, plan).await?;
    let info = deployment.wait_ready(Duration::from_secs(60)).await?;
    println!(
        "deployed {} per request: allowance {} credits, at most {} per request; {}/{} replicas ready",
        deployment.id(),
        quote.upfront.get(),
        quote.per_request_max.get(),
        info.replicas_ready,
        info.replicas_wanted
    );
    if let Some(why) = &info.shortfall {
        println!("degraded: {why}");
    }

    // Reference answers from a local run of the same model.
    let local = backend.load(MODEL)?;
    let mut inputs = Vec::new();
    let mut expected = Vec::new();
    for line in 0..LINES.len() / (H * W) {
        for flip in [false, true] {
            let t = line_input(line, flip)?;
            let out = local.run(std::slice::from_ref(&t))?;
            expected.push(out[0].to_vec::<f32>()?);
            inputs.push(t);
        }
    }

    // Stream the tasks; kill a replica's node halfway.
    let lease = deployment.lease().await?;
    let victim = lease.replicas.first().map(|r| r.node);
    let tasks: Vec<(TaskId, usize)> = (0..args.tasks)
        .map(|i| (crat_sdk::new_task_id(), i % inputs.len()))
        .collect();
    let bar = ProgressBar::new(args.tasks as u64);
    bar.set_style(ProgressStyle::with_template(
        "tasks  {bar:30} {pos}/{len} {per_sec}",
    )?);
    let run_started = Instant::now();
    let mut results = futures_util::stream::iter(tasks.iter().cloned())
        .map(|(task, which)| {
            let deployment = deployment.clone();
            let input = NamedTensor::new("x", inputs[which].clone());
            async move {
                let t0 = Instant::now();
                let out = deployment.infer_task(task, vec![input]).await;
                (task, which, out, t0.elapsed())
            }
        })
        .buffer_unordered(args.concurrency.max(1));
    let (mut ok, mut agree, mut upright, mut failed) = (0usize, 0usize, 0usize, 0usize);
    let mut latencies = Vec::with_capacity(args.tasks);
    let mut killed = None;
    let mut done = 0usize;
    while let Some((_task, which, out, took)) = results.next().await {
        done += 1;
        bar.inc(1);
        match out {
            Ok(outputs) => {
                ok += 1;
                latencies.push(took);
                let probs = outputs
                    .first()
                    .map(|t| t.tensor.to_vec::<f32>())
                    .transpose()?
                    .unwrap_or_default();
                let close = probs.len() == expected[which].len()
                    && probs
                        .iter()
                        .zip(&expected[which])
                        .all(|(a, b)| (a - b).abs() <= 1e-4);
                agree += usize::from(close);
                upright += usize::from(probs.first() > probs.get(1));
            }
            Err(e) => {
                failed += 1;
                bar.println(format!("task failed: {e}"));
            }
        }
        let due = !args.no_kill && killed.is_none() && done >= args.tasks / 2;
        if let Some(node) = net.nodes.iter().find(|n| due && Some(n.id()) == victim) {
            node.kill();
            killed = Some(node.id());
            bar.println(format!(
                "killed node {} ({}) after {done} tasks",
                short(&node.id()),
                gpu_of.get(&node.id()).copied().unwrap_or("?")
            ));
        }
    }
    drop(results);
    bar.finish_and_clear();
    let wall = run_started.elapsed();
    latencies.sort();

    // The client's acknowledgements reach the dispatcher now; usage within a flush interval
    // of each node.
    deployment.flush_acks().await?;
    let run_ended = Instant::now();
    let dep_id = deployment.id();
    let deadline = Instant::now() + Duration::from_secs(5);
    let (charged_tasks, charged) = loop {
        let (n, credits) = ledger.usage_totals(&dep_id)?;
        if n as usize >= ok || Instant::now() >= deadline {
            break (n, credits);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut per_node: BTreeMap<NodeId, usize> = BTreeMap::new();
    for (task, _) in &tasks {
        for row in ledger.usage(&dep_id, task)? {
            *per_node.entry(row.node).or_default() += 1;
        }
    }
    let stats = deployment.stats();
    let per_request = pricing
        .request_cost(MODEL.len() as u64, inputs[0].bytes().len() as u64)?
        .get();
    println!();
    println!(
        "results: {ok}/{} tasks returned outputs, {failed} failed; {agree} equal to a local run of the same model (±1e-4); {upright} upright, {} rotated 180°",
        args.tasks,
        ok - upright
    );
    println!(
        "latency: p50 {:.2} ms, p99 {:.2} ms; {:.0} tasks/s with {} in flight",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        ok as f64 / wall.as_secs_f64(),
        args.concurrency
    );
    for n in &net.nodes {
        let mark = if Some(n.id()) == killed {
            " (killed)"
        } else {
            ""
        };
        println!(
            "  node {} {:<28} {:>5} tasks{mark}",
            short(&n.id()),
            gpu_of.get(&n.id()).copied().unwrap_or("?"),
            per_node.get(&n.id()).copied().unwrap_or(0)
        );
    }
    println!(
        "failovers: {} (lease renewals {}, tickets rejected {})",
        stats.failovers, stats.lease_renewals, stats.ticket_rejections
    );
    println!(
        "charged: {charged_tasks} tasks, {} credits (= {charged_tasks} × {per_request} credits per request{}); no task charged twice",
        charged.get(),
        if charged.get() == charged_tasks * per_request {
            ", exactly"
        } else {
            ""
        }
    );
    let unreported = ok.saturating_sub(charged_tasks as usize);
    if unreported > 0 {
        println!(
            "  {unreported} tasks served by the killed node after its last usage report: the client acknowledged them, so they are charged from its acknowledgements when their tickets' usage window ends"
        );
    }
    println!(
        "balance: {} credits (granted 100000, allowance {} held by the deployment, {} left in it)",
        client.balance().await?.get(),
        quote.upfront.get(),
        deployment.info().await?.allowance_left.get()
    );

    // Wait for the round to end, then close it.
    let round_end = now_s + args.round_s + 1;
    let wait = round_end.saturating_sub(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
    );
    if wait > 0 {
        println!("waiting {wait} s for round 0 to end…");
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
    let closed = loop {
        let closed = net.dispatcher().close_due_rounds().await?;
        if let Some(c) = closed.into_iter().find(|c| c.record.index == 0) {
            break c;
        }
        match net.dispatcher().ledger().round(0)? {
            Some(_) => break net.dispatcher().close_round(0).await?,
            None => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let a = &closed.outcome.aggregates;
    println!(
        "round 0 closed: income {} → bonus pool {}, {} ranks paid; guaranteed {}; carried {}",
        usd(closed.record.income_usd_micro.get()),
        usd(a.pool_usd_micro.get()),
        a.paid_ranks,
        usd(a.guaranteed_paid_usd_micro.get()),
        usd(a.carry_out_usd_micro.get())
    );
    for o in &closed.outcome.nodes {
        println!(
            "  node {} {:<28} up {:>2} s committed {:<5} rank {:<4} guaranteed {} bonus {} CRAT +{}",
            short(&o.id),
            gpu_of.get(&o.id).copied().unwrap_or("?"),
            o.uptime_s,
            o.committed,
            o.rank.map_or("-".to_owned(), |r| r.to_string()),
            usd(o.guaranteed_usd_micro.get()),
            usd(o.bonus_usd_micro.get()),
            o.crat_issued_micro.get() as f64 / 1e6
        );
    }
    println!(
        "payouts: {} to {} nodes, settled to {} (digest {})",
        usd(closed.payouts.total_usd_micro.get()),
        closed.payouts.payouts.len(),
        dir.path().join("dispatcher/payouts").display(),
        closed
            .receipt
            .as_ref()
            .map_or("not settled yet, retried", |r| &r.digest_hex[..16])
    );
    if unreported > 0 {
        // The last ticket's window: its lifetime and the grace after the run, and a tick.
        let window = Duration::from_secs(config_window_s + 2);
        let deadline = run_ended + window;
        let want = ok as u64 * per_request;
        let mut after = ledger.usage_totals(&dep_id)?.1;
        while after.get() < want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            after = ledger.usage_totals(&dep_id)?.1;
        }
        let settled = after.get().saturating_sub(charged.get());
        println!(
            "acknowledged, never reported: {} credits charged from the client's acknowledgements ({} tasks; (ticket, node) pairs settled: {}); charged in all: {} credits for {ok} tasks{}",
            settled,
            settled / per_request.max(1),
            net.dispatcher().stats().usage_settled,
            after.get(),
            if after.get() == want { ", exactly" } else { "" }
        );
    }
    net.shutdown();
    if failed > 0 || agree != ok {
        bail!(
            "{failed} tasks failed and {} disagreed with the local run",
            ok - agree
        );
    }
    Ok(())
}

fn short(id: &NodeId) -> String {
    id.to_string()[..8].to_owned()
}

fn short_model(id: &ModelId) -> String {
    id.to_string()[..16].to_owned()
}
