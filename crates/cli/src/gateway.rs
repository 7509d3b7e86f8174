//! `crat gateway`: the KServe Open Inference Protocol v2 over HTTP, and over gRPC on a second
//! port with `--grpc-addr` (Triton-compatible), in front of a dispatcher ([`crat_gateway`]).
//!
//! `crat gateway --local` serves both in front of a whole network started in this process (a
//! dispatcher and two tract nodes on loopback QUIC), for tests, examples and trying it out:
//! it creates an account with credits and an SDK key, uploads and deploys the tiny CNN under
//! the model name `tiny`, prepares what the error statuses need (a deployment `tiny-spent`
//! whose allowance is spent, a revoked key, an expired key), and prints one JSON line to
//! stdout once it serves:
//!
//! ```text
//! {"url":"http://127.0.0.1:PORT","grpc":"127.0.0.1:PORT","key":"sk_…","model":"tiny",
//!  "deployment":"dep_…","version":"<model id>","spent_model":"tiny-spent","revoked_key":"sk_…",
//!  "expired_key":"sk_…","dispatcher":"127.0.0.1:PORT","dispatcher_id":"<hex>"}
//! ```
//! (one line; `grpc` is host:port, as gRPC clients take it). It stops on SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use crat_backend::tract::TractBackend;
use crat_core::id::{DeploymentId, NodeId};
use crat_core::money::Credits;
use crat_core::pricing::{DeployPlan, PerRequestPlan};
use crat_core::tensor::{NamedTensor, Tensor};
use crat_dispatcher::ledger::AccountName;
use crat_dispatcher::{DispatcherConfig, admin};
use crat_gateway::{Gateway, GatewayConfig, Upstream};
use crat_testnet::{LocalNetwork, NodeSpec};

use crate::net::{available_cores, load_config, now_s, runtime, runtime_of};

const TINY: &[u8] = include_bytes!("../../backend/models/tiny_cnn.onnx");
/// The tiny CNN's input: one 28 × 28 grey image, f32.
const TINY_INPUT_BYTES: u64 = 28 * 28 * 4;
/// Credits of the `--local` account.
const LOCAL_CREDITS: u64 = 10_000_000;

/// Options of `crat gateway`.
#[derive(Debug, Args)]
pub(crate) struct GatewayArgs {
    /// Settings file (TOML): `[gateway]` (listen, models, limits; see `crat_gateway::GatewayConfig`)
    /// and `[client]` (dispatcher, dispatcher_id).
    #[arg(long)]
    config: Option<PathBuf>,
    /// TCP address to serve HTTP on. Default: `[gateway] listen`, else 127.0.0.1:8000; with
    /// `--local`, a free port on 127.0.0.1 unless given here.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// TCP address to serve gRPC on (the protocol's `inference.GRPCInferenceService`).
    /// Default: `[gateway] grpc_addr`, else no gRPC; with `--local`, a free port on 127.0.0.1
    /// unless given here.
    #[arg(long)]
    grpc_addr: Option<SocketAddr>,
    /// The dispatcher's address.
    #[arg(long, conflicts_with = "local")]
    dispatcher: Option<SocketAddr>,
    /// Another address of the same dispatcher (dispatchers sharing one ledger and key),
    /// dialled in turn when one does not answer; repeatable. Default: `[client]
    /// dispatcher_alternates`.
    #[arg(long = "dispatcher-alternate", conflicts_with = "local")]
    dispatcher_alternate: Vec<SocketAddr>,
    /// The dispatcher's id.
    #[arg(long, conflicts_with = "local")]
    dispatcher_id: Option<String>,
    /// Start a whole network in this process (a dispatcher, two tract nodes; the tiny CNN
    /// deployed as `tiny`, a deployment `tiny-spent` whose allowance is spent, a revoked and
    /// an expired key) and serve HTTP and gRPC in front of it. Prints one JSON line: url, grpc,
    /// key, model, deployment, version, spent_model, revoked_key, expired_key, dispatcher,
    /// dispatcher_id.
    #[arg(long)]
    local: bool,
    #[command(flatten)]
    net: crate::transport::TransportArgs,
}

/// The threads `crat gateway` serves on: `[gateway] threads`, else (0) a quarter of the
/// machine's `cores`, at least one.
///
/// A request's work in the gateway is short (HTTP, the tensors' JSON or binary framing, the
/// SDK's QUIC exchange with a node), and every extra worker of a tokio runtime is one more
/// thread that tasks are handed to and woken on. On the 2-core VM of `benches/compare`
/// (2026-12-07, the tiny CNN, one thread against tokio's default of one per core, alternated)
/// one thread answered one request at a time with a p50 of 0.250 against 0.293 ms and a p99
/// of 0.40 against 0.65 ms, and served as many requests at 64 in flight. A machine with many
/// cores keeps several, for many clients at once.
fn threads(configured: usize, cores: usize) -> usize {
    if configured > 0 {
        configured
    } else {
        (cores / 4).max(1)
    }
}

pub(crate) fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let mut file = load_config(args.config.as_deref())?;
    let choice =
        crate::transport::TransportChoice::resolve(args.net, std::mem::take(&mut file.network))?;
    let mut config = file.gateway;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(grpc) = args.grpc_addr {
        config.grpc_addr = Some(grpc);
    }
    // `--local` runs a whole network in this process: every core, as before.
    let rt = if args.local {
        runtime()?
    } else {
        // Checked before a runtime is built on `threads` (the gateway checks it again).
        config.validate()?;
        runtime_of(Some(threads(config.threads, available_cores())))?
    };
    rt.block_on(async move {
        if args.local {
            let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
            if args.listen.is_none() {
                config.listen = any_port;
            }
            if args.grpc_addr.is_none() {
                config.grpc_addr = Some(any_port);
            }
            return local(config).await;
        }
        let addr = args
            .dispatcher
            .or(file.client.dispatcher)
            .context("--dispatcher is required (or --local)")?;
        let id: NodeId = args
            .dispatcher_id
            .or(file.client.dispatcher_id)
            .context("--dispatcher-id is required (or --local)")?
            .parse()
            .context("--dispatcher-id")?;
        let mut upstream = Upstream {
            iroh: choice.iroh_config(),
            ..Upstream::new(addr, id)
        };
        upstream.client.dispatcher_alternates = crate::net::alternates(
            args.dispatcher_alternate,
            file.client.dispatcher_alternates.take(),
        );
        let gateway = Gateway::new(config, upstream)?;
        let (http, grpc) = bind_both(gateway.config()).await?;
        println!(
            "serving the KServe v2 protocol on http://{}",
            http.local_addr()?
        );
        if let Some(grpc) = &grpc {
            println!(
                "serving the KServe v2 protocol over gRPC on {}",
                grpc.local_addr()?
            );
        }
        gateway.serve_with_grpc(http, grpc, stopped()).await?;
        Ok(())
    })
}

async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))
}

/// The HTTP listener and, when configured, the gRPC one.
async fn bind_both(
    config: &GatewayConfig,
) -> anyhow::Result<(tokio::net::TcpListener, Option<tokio::net::TcpListener>)> {
    let http = bind(config.listen).await?;
    let grpc = match config.grpc_addr {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    Ok((http, grpc))
}

/// Completes on SIGINT or SIGTERM.
async fn stopped() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

fn plan(max_input_bytes: u64, allowance: Credits) -> DeployPlan {
    DeployPlan::PerRequest(PerRequestPlan {
        max_input_bytes,
        credit_allowance: allowance,
    })
}

async fn local(mut config: GatewayConfig) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let mut dispatcher = DispatcherConfig::new(dir.path().join("dispatcher"));
    dispatcher.dispatch.heartbeat_interval_s = 1;
    // Revocations count at once; a spent deployment stays (answering 402) for an hour.
    dispatcher.key_cache_ms = 0;
    dispatcher.spent_deployment_idle_s = 3_600;
    dispatcher.tick_ms = 100;
    let specs = ["NVIDIA GeForce RTX 3090", "NVIDIA GeForce RTX 3080"]
        .iter()
        .map(|g| NodeSpec {
            gpu: Some((*g).to_owned()),
            backend: Arc::new(TractBackend::new()),
            batch_size: 4,
        })
        .collect();
    let net = LocalNetwork::start(dispatcher, dir.path(), specs).await?;
    let ledger = net.dispatcher().ledger().clone();
    let account = AccountName::new("gateway")?;
    admin::grant(&*ledger, &account, Credits::new(LOCAL_CREDITS), now_s())?;
    let key = admin::create_key(&*ledger, &account, now_s(), None)?;
    let revoked = admin::create_key(&*ledger, &account, now_s(), None)?;
    ledger.revoke_key(&revoked.id, now_s())?;
    let expired = admin::create_key(&*ledger, &account, now_s(), Some(0))?;

    let client = crat_sdk::connect(net.dispatcher_addr, net.dispatcher().id(), key.clone()).await?;
    let model = client.upload_model(TINY, |_| {}).await?;
    let tiny = client
        .deploy(model, plan(1 << 16, Credits::new(LOCAL_CREDITS / 2)))
        .await?;
    tiny.wait_ready(Duration::from_secs(60)).await?;
    let spent = spend(&client, model).await?;

    config.models.insert("tiny".into(), tiny.id());
    config.models.insert("tiny-spent".into(), spent);
    let gateway = Gateway::new(
        config,
        Upstream::new(net.dispatcher_addr, net.dispatcher().id()),
    )?;
    let (http, grpc) = bind_both(gateway.config()).await?;
    let line = serde_json::json!({
        "url": format!("http://{}", http.local_addr()?),
        "grpc": grpc.as_ref().map(|g| g.local_addr()).transpose()?.map(|a| a.to_string()),
        "key": key.to_string(),
        "model": "tiny",
        "deployment": tiny.id().to_string(),
        "version": model.to_string(),
        "spent_model": "tiny-spent",
        "revoked_key": revoked.to_string(),
        "expired_key": expired.to_string(),
        "dispatcher": net.dispatcher_addr.to_string(),
        "dispatcher_id": net.dispatcher().id().to_string(),
    });
    println!("{line}");
    gateway.serve_with_grpc(http, grpc, stopped()).await?;
    drop(client);
    net.shutdown();
    Ok(())
}

/// Deploys the tiny CNN with an allowance of exactly one task and spends it (one task, its
/// usage charged): leases of the deployment are then refused for insufficient credits.
async fn spend(
    client: &crat_sdk::Client<crat_transport::quic::QuicTransport>,
    model: crat_core::id::ModelId,
) -> anyhow::Result<DeploymentId> {
    let one_task = client
        .quote(model, plan(TINY_INPUT_BYTES, Credits::new(u64::MAX)))
        .await?
        .per_request_max;
    let d = client
        .deploy(model, plan(TINY_INPUT_BYTES, one_task))
        .await?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let input = Tensor::zeros(crat_core::tensor::DType::F32, &[1, 1, 28, 28])?;
    d.infer(vec![NamedTensor::new("input", input)]).await?;
    d.flush_acks().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let info = d.info().await?;
        if info.allowance_left == Credits::ZERO {
            return Ok(d.id());
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "the one-task allowance of {} was not charged within 30 s ({} left)",
                d.id(),
                info.allowance_left.get()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::threads;

    #[test]
    fn the_gateway_serves_on_a_quarter_of_the_cores_at_least_one_unless_configured() {
        assert_eq!(threads(0, 1), 1);
        assert_eq!(threads(0, 2), 1);
        assert_eq!(threads(0, 7), 1);
        assert_eq!(threads(0, 8), 2);
        assert_eq!(threads(0, 64), 16);
        assert_eq!(threads(3, 2), 3);
        assert_eq!(threads(1, 64), 1);
    }
}
