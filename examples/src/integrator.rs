//! An integrator's day with `crat-sdk`: connect, upload a model, get a price, deploy, call
//! it with `ndarray` inputs, stream a batch, and check the account.
//!
//! [`run`] takes a [`Target`]: a real dispatcher (address, id, SDK key, as an operator gives
//! them) or [`Target::Local`], which starts a whole network in this process first.
//! Everything after [`crat_sdk::connect`] is the same in both cases: that part is what an
//! application embeds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use crat_backend::tract::TractBackend;
use crat_core::id::SdkKey;
use crat_core::id::{DeploymentId, ModelId, NodeId};
use crat_core::money::Credits;
use crat_core::pricing::{DeployPlan, PerRequestPlan};
use crat_core::wire::KeyInfo;
use crat_dispatcher::DispatcherConfig;
use crat_dispatcher::admin;
use crat_dispatcher::ledger::AccountName;
use crat_sdk::convert::{named_array, tensor};
use crat_sdk::{Client, Stats};
use crat_testnet::{LocalNetwork, NodeSpec};
use crat_transport::quic::QuicTransport;
use futures_util::StreamExt;
use ndarray::{Array4, ArrayD};

use crate::{TINY_CNN, now_s};

/// The model's input and output names (those of the tiny CNN; change them for your model).
const INPUT: &str = "input";
const OUTPUT: &str = "probs";

/// Where the dispatcher is.
#[derive(Debug)]
pub enum Target {
    /// A running dispatcher.
    Remote {
        /// Its address (`crat dispatcher` prints it).
        addr: SocketAddr,
        /// Its id, 64 hex digits: the client pins it, so nobody can impersonate it.
        id: NodeId,
        /// The SDK key the operator issued (`sk_…`).
        key: SdkKey,
        /// The ONNX file to deploy; `None` deploys the built-in tiny CNN. The example feeds
        /// it `[1, 1, 28, 28]` f32 images named `input` and reads `probs`.
        model: Option<PathBuf>,
    },
    /// Start a dispatcher and two tract nodes in this process, with an account holding
    /// `credits` and a key for it, and deploy the built-in tiny CNN.
    Local {
        /// Credits granted to the demo account.
        credits: u64,
    },
}

/// How much work to send.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Tasks in the streamed batch.
    pub batch: usize,
    /// Tasks of the batch in flight at once.
    pub concurrency: usize,
    /// Credits set aside for the per-request deployment.
    pub allowance: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            batch: 64,
            concurrency: 8,
            allowance: 100_000,
        }
    }
}

/// What happened, for the caller (and the tests) to check.
#[derive(Debug)]
pub struct Report {
    /// The uploaded model's id (blake3 of its bytes).
    pub model: ModelId,
    /// The deployment.
    pub deployment: DeploymentId,
    /// The first task's output: `probs`, shape `[1, 10]`.
    pub first_probs: ArrayD<f32>,
    /// The predicted class of every task of the streamed batch, in input order.
    pub batch_classes: Vec<usize>,
    /// Balance before deploying, after deploying, and after undeploying.
    pub balances: [Credits; 3],
    /// The deployment's up-front price (for a per-request plan: the allowance).
    pub upfront: Credits,
    /// The key's status.
    pub key: KeyInfo,
    /// The deployment's task counters.
    pub stats: Stats,
}

/// Runs the whole walkthrough against `target`.
pub async fn run(target: Target, options: Options) -> anyhow::Result<Report> {
    match target {
        Target::Remote {
            addr,
            id,
            key,
            model,
        } => {
            // `connect` binds a QUIC endpoint with a fresh identity and dials the dispatcher.
            let client = crat_sdk::connect(addr, id, key).await?;
            let model = match model {
                Some(path) => {
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?
                }
                None => TINY_CNN.to_vec(),
            };
            integrate(&client, &model, options).await
        }
        Target::Local { credits } => {
            let dir = tempfile::tempdir()?;
            let (network, key) = local_network(dir.path(), credits).await?;
            println!(
                "started a local network: dispatcher {} at {}, {} nodes",
                network.dispatcher().id(),
                network.dispatcher_addr,
                network.nodes.len()
            );
            let client =
                crat_sdk::connect(network.dispatcher_addr, network.dispatcher().id(), key).await?;
            let report = integrate(&client, TINY_CNN, options).await;
            network.shutdown();
            report
        }
    }
}

/// The part an application embeds: everything goes through `client`.
async fn integrate(
    client: &Client<QuicTransport>,
    model_bytes: &[u8],
    options: Options,
) -> anyhow::Result<Report> {
    // 1. Upload. Uploads are chunked, resumable and content-addressed: the model id is the
    //    blake3 hash of the bytes, and uploading a model the dispatcher has is instant.
    let mut last_percent = None;
    let model = client
        .upload_model(model_bytes, |p| {
            let percent = p.acked_bytes * 100 / p.total_bytes.max(1);
            if last_percent != Some(percent) {
                last_percent = Some(percent);
                println!(
                    "upload: {}/{} bytes ({percent}%){}",
                    p.acked_bytes,
                    p.total_bytes,
                    if p.already_stored {
                        ", already stored"
                    } else {
                        ""
                    }
                );
            }
        })
        .await?;
    println!("model {model}");

    // 2. Price. A per-request plan sets credits aside (the allowance) and pays each task
    //    from it; what is left comes back after undeploy, once the usage window of the last
    //    leases has ended. (A per-instance plan reserves a
    //    request rate for a period instead: `DeployPlan::PerInstance`.)
    let plan = DeployPlan::PerRequest(PerRequestPlan {
        max_input_bytes: 1 << 16,
        credit_allowance: Credits::new(options.allowance),
    });
    let quote = client.quote(model, plan).await?;
    println!(
        "quote: {} up front, at most {} per request",
        quote.upfront, quote.per_request_max
    );

    // 3. Deploy, and wait until the dispatcher has warm replicas on nodes.
    let balance_before = client.balance().await?;
    let deployment = client.deploy(model, plan).await?;
    let info = deployment.wait_ready(Duration::from_secs(60)).await?;
    let balance_deployed = client.balance().await?;
    println!(
        "deployment {} ready on {}/{} replicas; balance {balance_before} -> {balance_deployed}",
        deployment.id(),
        info.replicas_ready,
        info.replicas_wanted
    );

    // 4. One task. Inputs are ndarray arrays converted with `crat_sdk::convert`; the task
    //    goes straight to a node (the SDK holds a lease: replicas + a signed ticket).
    let image = Array4::<f32>::from_shape_fn((1, 1, 28, 28), |(_, _, y, x)| {
        if (10..18).contains(&x) && (4..24).contains(&y) {
            1.0
        } else {
            0.0
        }
    });
    let started = Instant::now();
    let outputs = deployment.infer(vec![tensor(INPUT, image.view())?]).await?;
    let first_probs = named_array::<f32>(&outputs, OUTPUT)?;
    println!(
        "one task in {:.1} ms: probs {:?} -> class {}",
        started.elapsed().as_secs_f64() * 1e3,
        first_probs
            .iter()
            .map(|p| (p * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>(),
        argmax(&first_probs)
    );

    // 5. A stream of tasks: `infer_many` keeps `concurrency` in flight and yields results in
    //    input order; a failed node is failed over to another replica with the same task id
    //    (charged once).
    let images = (0..options.batch).map(|i| {
        let shift = i % 20;
        let image = Array4::<f32>::from_shape_fn((1, 1, 28, 28), move |(_, _, y, x)| {
            if (shift..shift + 8).contains(&x) && (4..24).contains(&y) {
                1.0
            } else {
                0.0
            }
        });
        // Converting cannot fail for a plain f32 array; the error is kept for the stream.
        tensor(INPUT, image.view()).map(|t| vec![t])
    });
    let inputs: Vec<_> = images.collect::<Result<_, _>>()?;
    let started = Instant::now();
    let mut results =
        deployment.infer_many(futures_util::stream::iter(inputs), options.concurrency);
    let mut batch_classes = Vec::with_capacity(options.batch);
    while let Some(result) = results.next().await {
        batch_classes.push(argmax(&named_array::<f32>(&result?, OUTPUT)?));
    }
    let took = started.elapsed().as_secs_f64();
    println!(
        "{} tasks in {:.2} s ({:.0}/s), classes {:?}",
        batch_classes.len(),
        took,
        batch_classes.len() as f64 / took.max(1e-9),
        &batch_classes[..batch_classes.len().min(16)]
    );

    // 6. The account: key status, the deployment's counters, and the balance once the
    //    deployment is stopped. The allowance left returns to the balance only when the usage
    //    window of the last leases has ended (their lifetime plus the dispatcher's usage
    //    grace), so that work already served, reported late or settled from this client's
    //    acknowledgements, is paid from it first.
    let key = client.key_status().await?;
    println!("key {} is {:?}", key.id, key.status);
    let stats = deployment.stats();
    println!("{stats:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    deployment.undeploy().await?;
    let balance_after = client.balance().await?;
    println!(
        "undeployed; balance {balance_after} (the unspent allowance comes back when the usage window of the last leases ends)"
    );

    Ok(Report {
        model,
        deployment: deployment.id(),
        first_probs,
        batch_classes,
        balances: [balance_before, balance_deployed, balance_after],
        upfront: quote.upfront,
        key,
        stats,
    })
}

/// The index of the largest value.
fn argmax(values: &ArrayD<f32>) -> usize {
    values
        .iter()
        .enumerate()
        .fold(
            (0, f32::MIN),
            |best, (i, &v)| if v > best.1 { (i, v) } else { best },
        )
        .0
}

/// A dispatcher and two tract nodes on loopback, and an SDK key for an account holding
/// `credits` (what an operator does with `crat credits grant` and `crat keys create`).
async fn local_network(
    dir: &std::path::Path,
    credits: u64,
) -> anyhow::Result<(LocalNetwork, SdkKey)> {
    let mut config = DispatcherConfig::new(dir.join("dispatcher"));
    config.dispatch.heartbeat_interval_s = 1;
    config.tick_ms = 100;
    let nodes = ["NVIDIA GeForce RTX 3090", "NVIDIA GeForce RTX 3080"]
        .into_iter()
        .map(|gpu| NodeSpec {
            gpu: Some(gpu.to_owned()),
            backend: std::sync::Arc::new(TractBackend::new()),
            batch_size: 4,
        })
        .collect();
    let network = LocalNetwork::start(config, dir, nodes).await?;
    let ledger = network.dispatcher().ledger().clone();
    let account = AccountName::new("demo")?;
    admin::grant(&*ledger, &account, Credits::new(credits), now_s())?;
    let key = admin::create_key(&*ledger, &account, now_s(), None)?;
    Ok((network, key))
}
