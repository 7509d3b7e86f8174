//! The network verbs: run a dispatcher or a node, administer keys and credits, and act as a
//! client (upload, deploy, infer). Settings come from an optional TOML file (`--config`),
//! overridden by flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use crat_backend::tract::TractBackend;
use crat_core::clock::Clock;
use crat_core::hardware::{CpuInfo, GpuInfo};
use crat_core::id::{DeploymentId, KeyId, ModelId, NodeId};
use crat_core::id::{PeerAddr, SdkKey};
use crat_core::money::Credits;
use crat_core::policy::hardware::ProofConfig;
use crat_core::pricing::{DeployPlan, PerInstancePlan, PerRequestPlan, UpdateFrequency};
use crat_core::tensor::{DType, NamedTensor, Tensor};
use crat_core::wire::DeploymentState;
use crat_dispatcher::cluster::Standby;
use crat_dispatcher::ledger::{AccountName, Ledger, PgLedger, PgOptions, SqliteLedger, redact_url};
use crat_dispatcher::{CanaryParts, Dispatcher, DispatcherConfig, admin};
use crat_node::cache::{ModelCache, ModelStore};
use crat_node::idle::{CommandWorkload, IdleController, IdlePolicy, IdleWorkload};
use crat_node::probe::{FakeProbe, HardwareProbe, SystemProbe};
use crat_node::runtime::{Node, NodeConfig, NodeParts};
use crat_transport::SteadyClock;
use crat_transport::Transport;
use crat_transport::any::{AnyTransport, TransportKind};
use ed25519_dalek::SigningKey;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;

use crate::keyfile::load_or_create_key;
use crate::transport::{TransportArgs, TransportChoice};

/// Settings file: every flag of the network verbs can be given here instead.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    dispatcher: DispatcherSection,
    #[serde(default)]
    node: NodeSection,
    #[serde(default)]
    pub(crate) client: ClientSection,
    /// `crat gateway`'s settings ([`crat_gateway::GatewayConfig`]).
    #[serde(default)]
    pub(crate) gateway: crat_gateway::GatewayConfig,
    /// The transport every network verb uses (`--transport`, `--relay`…).
    #[serde(default)]
    pub(crate) network: crate::transport::NetworkSection,
    /// `crat relay`'s settings.
    #[serde(default)]
    pub(crate) relay: crate::relay::RelaySection,
}

/// The `[dispatcher]` table. Each key sets the [`DispatcherConfig`] field of its name (the
/// defaults are documented there); `listen`, `data_dir` and `round_s` are also flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DispatcherSection {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    round_s: Option<u64>,
    round_epoch_s: Option<u64>,
    /// How long after a round ends it is closed.
    round_close_delay_s: Option<u64>,
    heartbeat_interval_s: Option<u64>,
    replicas: Option<u32>,
    ticket_lifetime_s: Option<u64>,
    /// How long after a ticket expires its usage is still accepted (and its clients'
    /// acknowledgements are settled then).
    usage_grace_s: Option<u64>,
    model_bytes_max: Option<u64>,
    /// The sizes of the proof-of-hardware challenges: `real` (the default) or `test`.
    proof_scale: Option<ProofScale>,
    /// Where to serve Prometheus metrics (`GET /metrics`); off when absent.
    metrics_addr: Option<SocketAddr>,
    /// The ledger: a PostgreSQL URL (`postgres://…`) that several dispatchers may share;
    /// absent (or `sqlite`): the SQLite file `ledger.sqlite` in the data directory.
    ledger: Option<String>,
    /// The PostgreSQL schema of the ledger (default `crat`); only with a PostgreSQL `ledger`.
    ledger_schema: Option<String>,
    /// The CA certificates (PEM) the PostgreSQL server's TLS certificate must chain to; TLS is
    /// then used (verified) unless the URL says `sslmode=disable`.
    ledger_ca: Option<PathBuf>,
    /// Where models are stored (default `<data_dir>/models`): with a shared ledger, a
    /// directory every dispatcher mounts.
    models_dir: Option<PathBuf>,
    /// Models in an object store instead: `file:///dir` or `s3://bucket/prefix` (S3 settings
    /// from the `AWS_*` environment variables).
    models_store: Option<String>,
    /// Settings of `models_store` over the environment's, by `object_store`'s option names
    /// (`aws_endpoint`, `aws_allow_http`, `aws_region`, …).
    models_store_options: Option<BTreeMap<String, String>>,
    /// Where payouts are written (default `<data_dir>/payouts`): with a shared ledger, a
    /// directory every dispatcher mounts.
    payouts_dir: Option<PathBuf>,
    /// Where the other dispatchers sharing the ledger reach this one while it is the active
    /// one (default: its listening address).
    cluster_addr: Option<String>,
}

/// Where a dispatcher's ledger is: `--ledger` / `[dispatcher] ledger`.
#[derive(Debug)]
enum LedgerLocation {
    /// `ledger.sqlite` in the data directory (the default).
    Sqlite,
    /// A PostgreSQL database.
    Postgres {
        /// Its URL (may hold a password: show it through [`redact_url`] only).
        url: String,
        /// The schema of the ledger's tables.
        schema: String,
        /// The CA certificates (PEM) the server's TLS certificate must chain to.
        ca: Option<PathBuf>,
    },
}

impl LedgerLocation {
    /// `ledger` and `schema` as given (flag, else file): a `postgres://` or `postgresql://` URL
    /// is PostgreSQL, nothing or `sqlite` the SQLite file; anything else is refused (a
    /// mistyped URL must not quietly start a ledger of its own).
    fn new(
        ledger: Option<String>,
        schema: Option<String>,
        ca: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        match ledger {
            None => {
                anyhow::ensure!(
                    schema.is_none() && ca.is_none(),
                    "a ledger schema or CA is given, but no PostgreSQL ledger (--ledger \
                     postgres://…)"
                );
                Ok(Self::Sqlite)
            }
            Some(l) if l == "sqlite" => Self::new(None, schema, ca),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Self::Postgres {
                    url,
                    schema: schema.unwrap_or_else(|| PgOptions::default().schema),
                    ca,
                })
            }
            Some(other) => anyhow::bail!(
                "ledger {:?} is neither `sqlite` nor a PostgreSQL URL (postgres://…)",
                redact_url(&other)
            ),
        }
    }

    /// Opens the ledger (the SQLite file is created if new, in `data_dir`).
    fn open(&self, data_dir: &Path) -> anyhow::Result<Arc<dyn Ledger>> {
        match self {
            Self::Sqlite => {
                std::fs::create_dir_all(data_dir)
                    .with_context(|| format!("creating {}", data_dir.display()))?;
                let path = data_dir.join("ledger.sqlite");
                Ok(Arc::new(
                    SqliteLedger::open(&path)
                        .with_context(|| format!("opening {}", path.display()))?,
                ))
            }
            Self::Postgres { url, schema, ca } => {
                let options = PgOptions {
                    schema: schema.clone(),
                    ca_file: ca.clone(),
                    ..PgOptions::default()
                };
                Ok(Arc::new(
                    PgLedger::connect_with(url, &options).with_context(|| {
                        format!(
                            "opening the ledger at {} (schema {schema})",
                            redact_url(url)
                        )
                    })?,
                ))
            }
        }
    }

    /// Where it is, for the operator (without a password).
    fn describe(&self, data_dir: &Path) -> String {
        match self {
            Self::Sqlite => data_dir.join("ledger.sqlite").display().to_string(),
            Self::Postgres { url, schema, .. } => {
                format!("PostgreSQL {} (schema {schema})", redact_url(url))
            }
        }
    }
}

/// Sizes of the compute challenges a dispatcher proves its nodes' hardware with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ProofScale {
    /// [`ProofConfig::default`]: the real sizes.
    #[default]
    Real,
    /// [`ProofConfig::test_scale`]: tiny challenges for test networks whose nodes compute on
    /// a CPU (a node proves its CPU and never a GPU it only declares). Never in production:
    /// nothing that earns income is proven with them.
    Test,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeSection {
    listen: Option<SocketAddr>,
    advertise: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    gpu: Option<String>,
    /// Where to serve Prometheus metrics (`GET /metrics`); off when absent.
    metrics_addr: Option<SocketAddr>,
    /// Serve the operator's dashboard (a local web page with START / STOP). Default true.
    dashboard: Option<bool>,
    /// Where the dashboard listens. Default 127.0.0.1:7480.
    dashboard_addr: Option<SocketAddr>,
    /// The token the dashboard requires (16 to 256 characters of A-Z a-z 0-9 . _ ~ -); needed
    /// when `dashboard_addr` is not a loopback address. Better given as CRAT_DASHBOARD_TOKEN.
    dashboard_token: Option<String>,
    /// Start stopped: join the network only when START is pressed on the dashboard. Default
    /// false.
    start_stopped: Option<bool>,
    /// The node's network threads yield to its model runs (`crat_node::priority`). Default:
    /// on for a node without a GPU, off with one.
    network_threads_yield: Option<bool>,
    /// The idle workload (`[node.idle]`): what runs while the node has no work.
    idle: Option<IdleSection>,
    /// Where ONNX Runtime comes from (`path`, `install`, `index_url`): see
    /// [`crate::onnxruntime::OnnxRuntimeSection`].
    #[serde(default)]
    onnxruntime: crate::onnxruntime::OnnxRuntimeSection,
}

/// The `[node.idle]` table: a command the node runs while it has had no work for `idle_s`
/// and the network's demand is at most `demand_bps_max` (a miner, typically), in a process
/// group of its own, stopped (SIGTERM to the group, SIGKILL after `stop_grace_ms`) the
/// moment work arrives.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdleSection {
    /// The program and its arguments, e.g. `["/opt/miner/run", "--pool", "…"]`.
    command: Vec<String>,
    /// Seconds without work before it starts. Default 300.
    idle_s: Option<u64>,
    /// Network demand (basis points, 0–10,000) at or below which the network counts as quiet.
    /// Default 2,000 (20 %).
    demand_bps_max: Option<u16>,
    /// How long the command has to exit after SIGTERM before its group gets SIGKILL, in
    /// milliseconds. Default 5,000.
    stop_grace_ms: Option<u64>,
}

impl IdleSection {
    /// When the workload may run.
    fn policy(&self) -> anyhow::Result<IdlePolicy> {
        let defaults = IdlePolicy::default();
        Ok(IdlePolicy {
            idle_s_min: self.idle_s.unwrap_or(defaults.idle_s_min),
            demand_bps_max: match self.demand_bps_max {
                Some(bps) if bps > 10_000 => {
                    bail!("[node.idle] demand_bps_max is {bps}; at most 10,000 (100 %)")
                }
                Some(bps) => bps,
                None => defaults.demand_bps_max,
            },
        })
    }

    /// The controller `crat node` runs, started at `now_s`.
    fn controller(&self, now_s: u64) -> anyhow::Result<IdleController<Box<dyn IdleWorkload>>> {
        let Some((program, args)) = self.command.split_first() else {
            bail!("[node.idle] command is empty: name the program to run while idle");
        };
        let policy = self.policy()?;
        let workload: Box<dyn IdleWorkload> = Box::new(CommandWorkload::new(
            program.clone(),
            args.to_vec(),
            Duration::from_millis(self.stop_grace_ms.unwrap_or(5_000)),
        ));
        Ok(IdleController::new(workload, policy, now_s))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientSection {
    pub(crate) dispatcher: Option<SocketAddr>,
    /// Other addresses of the same dispatcher (dispatchers sharing one ledger and key), dialled
    /// in turn when one does not answer.
    pub(crate) dispatcher_alternates: Option<Vec<SocketAddr>>,
    pub(crate) dispatcher_id: Option<String>,
    pub(crate) key: Option<String>,
}

/// The dispatcher's other addresses: the flags given, else the settings file's.
pub(crate) fn alternates(flags: Vec<SocketAddr>, file: Option<Vec<SocketAddr>>) -> Vec<PeerAddr> {
    let addrs = if flags.is_empty() {
        file.unwrap_or_default()
    } else {
        flags
    };
    addrs.into_iter().map(PeerAddr::from).collect()
}

/// Client identities the dispatcher's canaries go out from (each its own endpoint).
const CANARY_IDENTITIES: usize = 8;

impl ConfigFile {
    /// `[node] listen`.
    pub(crate) fn node_listen(&self) -> Option<SocketAddr> {
        self.node.listen
    }

    /// `[node] advertise`.
    pub(crate) fn node_advertise(&self) -> Option<SocketAddr> {
        self.node.advertise
    }
}

pub(crate) fn load_config(path: Option<&Path>) -> anyhow::Result<ConfigFile> {
    let Some(path) = path else {
        return Ok(ConfigFile::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

pub(crate) fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    runtime_of(None)
}

/// Whether a node's network threads yield to its model runs ([`crat_node::priority`]): as
/// configured, else on a node that serves on the CPU (no GPU), whose own runs keep its cores
/// busy. A GPU node's runs leave the CPU to its network threads, and there they keep
/// preempting the machine's other programs. A CPU node on a machine busy with other programs
/// answers one task at a time faster without it (`network_threads_yield = false`; figures in
/// `crat_node::priority`'s docs).
fn network_threads_yield(configured: Option<bool>, has_gpu: bool) -> bool {
    configured.unwrap_or(!has_gpu)
}

/// The cores this process may run on (at least one).
pub(crate) fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// A runtime of `threads` workers (at least one), else of tokio's default (one per core).
pub(crate) fn runtime_of(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = threads {
        builder.worker_threads(threads.max(1));
    }
    builder
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// A node's runtime, its network threads yielding to model runs when `yield_to_runs`.
fn node_runtime(yield_to_runs: bool) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if yield_to_runs {
        builder.on_thread_start(crat_node::priority::network_thread);
    }
    builder.build().context("starting the tokio runtime")
}

// ------------------------------------------------------------------------------------------
// crat dispatcher

/// Options of `crat dispatcher`.
#[derive(Debug, Args)]
pub(crate) struct DispatcherArgs {
    /// Settings file (TOML, `[dispatcher]` table).
    #[arg(long)]
    config: Option<PathBuf>,
    /// UDP address to listen on. Default 0.0.0.0:7400.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory (ledger, models, uploads, payouts, key). Default ./crat-data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Round length in seconds. Default 86400.
    #[arg(long)]
    round_s: Option<u64>,
    /// Serve Prometheus metrics (`GET /metrics`, HTTP) on this TCP address, e.g.
    /// 127.0.0.1:9400. Default: `[dispatcher] metrics_addr`, else off.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    #[command(flatten)]
    net: TransportArgs,
    /// The ledger: a PostgreSQL URL (postgres://user[:password]@host[:port]/database) that
    /// several dispatchers may share, or `sqlite`. Default: `[dispatcher] ledger`, else the
    /// SQLite file ledger.sqlite in the data directory.
    #[arg(long)]
    ledger: Option<String>,
    /// The PostgreSQL schema of the ledger (created if missing). Default: `[dispatcher]
    /// ledger_schema`, else `crat`.
    #[arg(long)]
    ledger_schema: Option<String>,
    /// The CA certificates (PEM) the PostgreSQL server's TLS certificate must chain to: TLS,
    /// verified, unless the URL says sslmode=disable (`sslmode=require` alone verifies against
    /// the Mozilla roots). Default: `[dispatcher] ledger_ca`.
    #[arg(long)]
    ledger_ca: Option<PathBuf>,
    /// Where models are stored. Default: `[dispatcher] models_dir`, else `<data-dir>/models`.
    /// Dispatchers sharing a ledger share this directory.
    #[arg(long, conflicts_with = "models_store")]
    models_dir: Option<PathBuf>,
    /// Models in an object store instead of a directory: `file:///srv/crat/models` (the
    /// object store on a directory, shared over a network file system) or
    /// `s3://bucket/prefix` (AWS S3 or a compatible service, configured by the `AWS_*`
    /// environment variables: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_DEFAULT_REGION`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`). Default: `[dispatcher]
    /// models_store`. Dispatchers sharing a ledger share it.
    #[arg(long)]
    models_store: Option<String>,
    /// Where payouts are written. Default: `[dispatcher] payouts_dir`, else
    /// `<data-dir>/payouts`. Dispatchers sharing a ledger share this directory.
    #[arg(long)]
    payouts_dir: Option<PathBuf>,
    /// The address (host:port) at which the other dispatchers sharing the ledger reach this
    /// one while it is the active one. Default: `[dispatcher] cluster_addr`, else the
    /// listening address.
    #[arg(long)]
    cluster_addr: Option<String>,
}

pub(crate) fn dispatcher(args: DispatcherArgs) -> anyhow::Result<()> {
    let all = load_config(args.config.as_deref())?;
    let choice = TransportChoice::resolve(args.net, all.network)?;
    let file = all.dispatcher;
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("crat-data"));
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 7400)));
    let mut config = DispatcherConfig::new(&data_dir);
    if let Some(r) = args.round_s.or(file.round_s) {
        config.rewards.round_s = r;
    }
    if let Some(e) = file.round_epoch_s {
        config.round_epoch_s = e;
    }
    if let Some(d) = file.round_close_delay_s {
        config.round_close_delay_s = d;
    }
    if let Some(h) = file.heartbeat_interval_s {
        config.dispatch.heartbeat_interval_s = h;
    }
    if let Some(r) = file.replicas {
        config.dispatch.replicas = r;
    }
    if let Some(t) = file.ticket_lifetime_s {
        config.ticket_lifetime_s = t;
    }
    if let Some(g) = file.usage_grace_s {
        config.usage_grace_s = g;
    }
    if file.proof_scale == Some(ProofScale::Test) {
        config.hardware = ProofConfig::test_scale();
    }
    if let Some(m) = file.model_bytes_max {
        config.model_bytes_max = m;
    }
    let models_dir = args.models_dir.or(file.models_dir);
    let models_store = args.models_store.or(file.models_store);
    if models_dir.is_some() && models_store.is_some() {
        anyhow::bail!("models_dir and models_store name two model stores: give one");
    }
    if let Some(dir) = models_dir {
        config.models_dir = dir;
    }
    if let Some(options) = file.models_store_options {
        if models_store.is_none() {
            anyhow::bail!("models_store_options set without models_store");
        }
        config.models_store_options = crat_dispatcher::StoreOptions(options.into_iter().collect());
    }
    config.models_store = models_store;
    if let Some(dir) = args.payouts_dir.or(file.payouts_dir) {
        config.payouts_dir = dir;
    }
    if let Some(addr) = args.cluster_addr.or(file.cluster_addr) {
        config.cluster_addr = Some(
            crat_core::id::PeerAddr::new(addr).map_err(|e| anyhow::anyhow!("cluster_addr: {e}"))?,
        );
    }
    let metrics_addr = args.metrics_addr.or(file.metrics_addr);
    let ledger = LedgerLocation::new(
        args.ledger.or(file.ledger),
        args.ledger_schema.or(file.ledger_schema),
        args.ledger_ca.or(file.ledger_ca),
    )?;
    let key = load_or_create_key(&data_dir.join("dispatcher.key"))?;
    runtime()?.block_on(async move {
        if let Some(addr) = metrics_addr {
            let bound = crate::metrics::serve(addr).await?;
            println!("metrics on http://{bound}/metrics");
        }
        let transport = choice.bind_dispatcher(listen, &key).await?;
        // Canary tasks go out from endpoints of their own, with throwaway identities (nodes
        // must not tell them from client tasks); tract computes the expected answers. The
        // determinism gate runs each model on tract and, where it loads, ONNX Runtime (CPU).
        let canary_addr = SocketAddr::new(listen.ip(), 0);
        let mut references: Vec<Arc<dyn crat_backend::InferenceBackend>> =
            vec![Arc::new(TractBackend::new())];
        match crat_backend::ort::OrtBackend::new(&crat_backend::ort::OrtConfig::default()) {
            Ok(ort) => references.push(Arc::new(ort)),
            Err(e) => println!("determinism gate on tract only: {e}"),
        }
        let mut transports = Vec::with_capacity(CANARY_IDENTITIES);
        for _ in 0..CANARY_IDENTITIES {
            // Like clients: through the relays to nodes behind NATs.
            let identity = SigningKey::from_bytes(&rand::random());
            transports.push(choice.bind(canary_addr, &identity, &[], false).await?);
        }
        let canary = CanaryParts {
            transports,
            references,
        };
        if matches!(ledger, LedgerLocation::Postgres { .. })
            && config.cluster_addr.is_none()
            && listen.ip().is_unspecified()
        {
            println!(
                "warning: listening on {listen} without --cluster-addr: another dispatcher sharing \
                 the ledger reaches this one, while it is active, only from this machine"
            );
        }
        let opened = ledger.open(&data_dir)?;
        // With a ledger other dispatchers share, one of them is active; this one stands by,
        // forwarding its nodes and clients to it, until it takes over (crat_dispatcher::cluster).
        let lead = opened.clone();
        let transport = if tokio::task::spawn_blocking(move || lead.lead_rounds()).await?? {
            transport
        } else {
            println!(
                "dispatcher {} listening on {listen} ({}), standing by",
                crat_core::id::NodeId::from_key(&key.verifying_key()),
                choice.kind()
            );
            println!(
                "standing by: another dispatcher sharing the ledger ({}) is active; this one \
                 forwards its nodes and clients to it until it takes over",
                ledger.describe(&data_dir)
            );
            // The link to the active dispatcher goes out from an endpoint of its own (iroh does
            // not dial its own identity), proven a member by the cluster key's signature.
            let link_key = SigningKey::from_bytes(&rand::random());
            let link = choice
                .bind(SocketAddr::new(listen.ip(), 0), &link_key, &[], false)
                .await?;
            let standby = Standby::new(
                transport,
                link,
                key.clone(),
                opened.clone(),
                config.frame_limits,
                config.concurrency_max,
            )?;
            let transport = standby.run().await?;
            println!("taking over as the active dispatcher");
            transport
        };
        let dispatcher =
            Dispatcher::open_with_ledger(config, key, transport, Some(canary), opened)?;
        // Whether nodes are reachable directly: dialled from another port, without relays.
        let probe_key = SigningKey::from_bytes(&rand::random());
        dispatcher.set_reach_probe(
            choice
                .bind_public(SocketAddr::new(listen.ip(), 0), &probe_key)
                .await?,
        );
        println!(
            "dispatcher {} listening on {listen} ({})",
            dispatcher.id(),
            choice.kind()
        );
        println!("data in {}", data_dir.display());
        println!("ledger {}", ledger.describe(&data_dir));
        tokio::select! {
            r = dispatcher.run() => r?,
            _ = tokio::signal::ctrl_c() => {
                println!("stopping");
                // A graceful stop settles the rounds closed and not settled yet (after a
                // kill, the next start does, or the dispatcher that takes over), then hands
                // the round closing over.
                dispatcher.flush().await;
                if dispatcher.leads_rounds() {
                    match dispatcher.settle_pending().await {
                        Ok(settled) if !settled.is_empty() => {
                            println!("settled {} closed round(s) before stopping", settled.len());
                        }
                        Ok(_) => {}
                        Err(e) => eprintln!("settling closed rounds before stopping failed: {e}"),
                    }
                }
                dispatcher.close();
            }
        }
        Ok(())
    })
}

// ------------------------------------------------------------------------------------------
// crat node

/// Options of `crat node` (and its verbs).
#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    #[command(subcommand)]
    command: Option<NodeCommand>,
    #[command(flatten)]
    run: NodeRunArgs,
}

/// `crat node`'s verbs (without one, it runs the node).
#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// How this node stands with the dispatcher: proven rating and hardware, this round's
    /// uptime, commitment, estimated rank and bonus, tasks served, and earnings per closed
    /// round (USD and CRAT). Asks with the node's key (from its data directory), without
    /// registering: the running node is not disturbed.
    Status(NodeStatusArgs),
    /// Can clients reach this node? The address the dispatcher sees, whether it reaches the
    /// node directly, the NAT's behaviour and the relay's round trip, and what to do about
    /// it (forward a port, `--advertise`). Works with the node running or not.
    Doctor(crate::doctor::DoctorArgs),
}

/// Options of `crat node status`.
#[derive(Debug, Args)]
struct NodeStatusArgs {
    /// Settings file (TOML, `[node]` and `[client]` tables).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The dispatcher's address.
    #[arg(long)]
    dispatcher: Option<SocketAddr>,
    /// The dispatcher's id (64 hex digits).
    #[arg(long)]
    dispatcher_id: Option<String>,
    /// The node's data directory (its key `node.key`). Default ./crat-node.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Closed rounds to show, newest first (at most 64).
    #[arg(long, default_value_t = 10)]
    rounds: u32,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    net: TransportArgs,
}

/// Options of running `crat node`.
#[derive(Debug, Args)]
struct NodeRunArgs {
    /// Settings file (TOML, `[node]` and `[client]` tables).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The dispatcher's address.
    #[arg(long)]
    dispatcher: Option<SocketAddr>,
    /// Another address of the same dispatcher (dispatchers sharing one ledger and key),
    /// dialled in turn when one does not answer; repeatable. Default: `[client]
    /// dispatcher_alternates`.
    #[arg(long = "dispatcher-alternate")]
    dispatcher_alternate: Vec<SocketAddr>,
    /// The dispatcher's id (64 hex digits; `crat dispatcher` prints it).
    #[arg(long)]
    dispatcher_id: Option<String>,
    /// UDP address to listen on for clients. Default 0.0.0.0:7401.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address clients reach this node at. Default: the listen address. On iroh, a public
    /// address the node cannot discover itself (a port forwarded to it), announced besides
    /// the discovered ones.
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// Data directory (model cache, node key). Default ./crat-node.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Declare this GPU instead of probing (for nodes without NVML, and demos). A declared
    /// GPU earns nothing until the node proves it with the dispatcher's compute challenges.
    #[arg(long)]
    gpu: Option<String>,
    /// The ONNX Runtime library (`libonnxruntime.so.1.*`). Default: `[node.onnxruntime] path`,
    /// else ORT_DYLIB_PATH, an installed `onnxruntime` Python package, a copy in the data
    /// directory, else one installed there from PyPI.
    #[arg(long, env = "CRAT_ONNXRUNTIME")]
    onnxruntime: Option<PathBuf>,
    /// Install ONNX Runtime into the data directory when none is found (`true` or `false`).
    /// Default: `[node.onnxruntime] install`, else true.
    #[arg(long, env = "CRAT_ONNXRUNTIME_INSTALL")]
    onnxruntime_install: Option<bool>,
    /// Serve Prometheus metrics (`GET /metrics`, HTTP) on this TCP address, e.g.
    /// 127.0.0.1:9401. Default: `[node] metrics_addr`, else off.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Where the operator's dashboard listens (HTTP). Default: `[node] dashboard_addr`, else
    /// 127.0.0.1:7480.
    #[arg(long)]
    dashboard_addr: Option<SocketAddr>,
    /// Serve no dashboard.
    #[arg(long)]
    no_dashboard: bool,
    /// The token the dashboard requires; needed off loopback. Default: `[node]
    /// dashboard_token`.
    #[arg(long, env = "CRAT_DASHBOARD_TOKEN", hide_env_values = true)]
    dashboard_token: Option<String>,
    /// Start stopped: join the network when START is pressed on the dashboard.
    #[arg(long)]
    stopped: bool,
    #[command(flatten)]
    net: TransportArgs,
}

pub(crate) fn node(args: NodeArgs) -> anyhow::Result<()> {
    match args.command {
        Some(NodeCommand::Status(status)) => node_status(status),
        Some(NodeCommand::Doctor(doctor)) => crate::doctor::run(doctor),
        None => node_run(args.run),
    }
}

fn node_run(args: NodeRunArgs) -> anyhow::Result<()> {
    let mut file = load_config(args.config.as_deref())?;
    let choice = TransportChoice::resolve(args.net, std::mem::take(&mut file.network))?;
    let dispatcher = args
        .dispatcher
        .or(file.client.dispatcher)
        .context("--dispatcher is required")?;
    let dispatcher_alternates = alternates(
        args.dispatcher_alternate,
        file.client.dispatcher_alternates.take(),
    );
    let dispatcher_id: NodeId = args
        .dispatcher_id
        .or(file.client.dispatcher_id)
        .context("--dispatcher-id is required")?
        .parse()
        .context("--dispatcher-id")?;
    let listen = args
        .listen
        .or(file.node.listen)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 7401)));
    let advertise_asked = args.advertise.or(file.node.advertise);
    let advertise = advertise_asked.unwrap_or(listen);
    let data_dir = args
        .data_dir
        .or(file.node.data_dir)
        .unwrap_or_else(|| PathBuf::from("crat-node"));
    let gpu = args.gpu.or(file.node.gpu);
    let metrics_addr = args.metrics_addr.or(file.node.metrics_addr);
    // The dashboard: on unless turned off. At the default address a port in use (another
    // node on this machine) only costs the dashboard; an address asked for must work.
    let dashboard_asked = args.dashboard_addr.or(file.node.dashboard_addr);
    let dashboard = (!args.no_dashboard && file.node.dashboard.unwrap_or(true)).then(|| {
        crat_node::dashboard::DashboardConfig {
            addr: dashboard_asked.unwrap_or(crat_node::dashboard::DEFAULT_ADDR),
            token: args.dashboard_token.or(file.node.dashboard_token),
            ..crat_node::dashboard::DashboardConfig::default()
        }
    });
    let serve_at_start = !(args.stopped || file.node.start_stopped.unwrap_or(false));
    let idle_command = file.node.idle.as_ref().map(|i| i.command.clone());
    let clock = Arc::new(SteadyClock::system());
    let idle = match &file.node.idle {
        Some(section) => {
            let policy = section.policy()?;
            println!(
                "idle workload: {:?} after {} s without work, at network demand ≤ {} bps",
                section.command, policy.idle_s_min, policy.demand_bps_max
            );
            Some(section.controller(clock.now_s())?)
        }
        None => None,
    };
    let key = load_or_create_key(&data_dir.join("node.key"))?;
    let hardware = match gpu {
        Some(name) => FakeProbe::new(
            vec![GpuInfo {
                name,
                memory_bytes: 0,
                driver: "declared".into(),
                compute_capability: None,
            }],
            CpuInfo {
                model: "declared".into(),
                cores: u32::try_from(available_cores()).unwrap_or(u32::MAX),
                memory_bytes: 0,
            },
        )
        .probe(),
        None => SystemProbe.probe(),
    };
    let rt = node_runtime(network_threads_yield(
        file.node.network_threads_yield,
        !hardware.hardware.gpus.is_empty(),
    ))?;
    // ONNX Runtime from the configured path, ORT_DYLIB_PATH, a Python package or the data
    // directory, else installed there from PyPI; tract (with the reason printed) otherwise.
    let mut onnxruntime = file.node.onnxruntime;
    onnxruntime.path = args.onnxruntime.or(onnxruntime.path);
    onnxruntime.install = args.onnxruntime_install.or(onnxruntime.install);
    let selected = rt.block_on(crate::onnxruntime::select(
        &data_dir,
        &onnxruntime,
        true,
        Some(!hardware.hardware.gpus.is_empty()),
    ))?;
    let backend_detail = selected.describe();
    println!("backend: {backend_detail}");
    let result = rt.block_on(async move {
        if let Some(addr) = metrics_addr {
            let bound = crate::metrics::serve(addr).await?;
            println!("metrics on http://{bound}/metrics");
            if crat_node::metrics::spawn_gpu_sampler(crat_node::metrics::GPU_SAMPLE_INTERVAL)
                .is_some()
            {
                println!("GPU metrics from NVML");
            }
        }
        let external: Vec<SocketAddr> = advertise_asked.into_iter().collect();
        // The relays admit the node once the dispatcher knows it (after it registers).
        let transport = choice.bind(listen, &key, &external, false).await?;
        // On iroh the node's address is what its endpoint found: its relay, its local and
        // public addresses (the dispatcher adds the one it sees).
        let advertise = match choice.kind() {
            TransportKind::Quic => PeerAddr::from(advertise),
            _ => transport.local_addr(),
        };
        if choice.kind() == TransportKind::Iroh {
            println!("reachable at {advertise}");
            if !choice.has_relays() {
                println!(
                    "warning: no relay (--relay): clients behind NATs may not reach this node"
                );
            }
        }
        let node = Node::new(
            NodeParts {
                key,
                transport,
                cache: ModelCache::new(selected.backend.clone(), 8 << 30),
                store: ModelStore::open(data_dir.join("models"), 32 << 30)?,
                hardware,
                idle,
                clock,
            },
            NodeConfig {
                // Usage not yet acknowledged by the dispatcher survives a restart.
                usage_journal: Some(data_dir.join("usage.journal")),
                serve_at_start,
                dispatcher_alternates,
                ..NodeConfig::new(PeerAddr::from(dispatcher), dispatcher_id, advertise)
            },
        );
        if let Some(config) = dashboard {
            let token = config.token.clone();
            let info = crat_node::dashboard::DashboardInfo {
                backend_detail,
                idle_command,
            };
            match crat_node::dashboard::serve(node.clone(), config, info).await {
                Ok((bound, _task)) => match token {
                    // The fragment stays in the browser: it is never sent to the server.
                    Some(token) => println!("dashboard on http://{bound}/#token={token}"),
                    None => println!("dashboard on http://{bound}/"),
                },
                Err(crat_node::dashboard::DashboardError::Bind { addr, source })
                    if dashboard_asked.is_none() =>
                {
                    println!("no dashboard: {addr}: {source} (set --dashboard-addr)");
                }
                Err(e) => return Err(e.into()),
            }
        }
        if serve_at_start {
            println!("node {} serving on {listen} ({})", node.id(), choice.kind());
        } else {
            println!(
                "node {} stopped: press START on the dashboard to join the network",
                node.id()
            );
        }
        let runner = node.clone();
        let mut run = tokio::spawn(async move { runner.run().await });
        tokio::select! {
            r = &mut run => r.context("the node's task")??,
            _ = tokio::signal::ctrl_c() => {
                // A graceful leave: tasks in flight finish, their usage is reported, the
                // dispatcher moves the replicas at once. A second ctrl-c quits at once.
                println!("stopping: finishing the tasks in flight (ctrl-c again to quit now)");
                tokio::select! {
                    report = node.stop(NODE_STOP_DRAIN) => println!(
                        "stopped: {} tasks unfinished, {} usage records kept for the next start",
                        report.tasks_unfinished, report.usage_unacknowledged
                    ),
                    _ = tokio::signal::ctrl_c() => {}
                }
                node.transport().shutdown().await;
            }
        }
        anyhow::Ok(())
    });
    // A compute challenge still running on the blocking pool is not waited for.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// How long ctrl-c lets the tasks in flight finish before `crat node` exits.
const NODE_STOP_DRAIN: Duration = Duration::from_secs(20);

fn node_status(args: NodeStatusArgs) -> anyhow::Result<()> {
    let mut file = load_config(args.config.as_deref())?;
    let choice = TransportChoice::resolve(args.net, std::mem::take(&mut file.network))?;
    let dispatcher = args
        .dispatcher
        .or(file.client.dispatcher)
        .context("--dispatcher is required")?;
    let dispatcher_id: NodeId = args
        .dispatcher_id
        .or(file.client.dispatcher_id)
        .context("--dispatcher-id is required")?
        .parse()
        .context("--dispatcher-id")?;
    let data_dir = args
        .data_dir
        .or(file.node.data_dir)
        .unwrap_or_else(|| PathBuf::from("crat-node"));
    let key_path = data_dir.join("node.key");
    if !key_path.exists() {
        bail!(
            "{} does not exist: run `crat node` with this --data-dir first",
            key_path.display()
        );
    }
    let key = load_or_create_key(&key_path)?;
    let standing = runtime()?.block_on(async move {
        // An endpoint of its own (the node may be running with its key), asking with a query
        // signed by the node's key.
        let identity = SigningKey::from_bytes(&rand::random());
        // It needs no relay: the dispatcher is reached directly.
        let transport = choice
            .bind_public(crat_sdk::client_bind_addr(dispatcher), &identity)
            .await?;
        let standing = crat_node::standing::ask_standing_signed(
            &transport,
            &key,
            &PeerAddr::from(dispatcher),
            &dispatcher_id,
            args.rounds,
            now_s(),
            crat_transport::FrameLimits::default(),
        )
        .await;
        transport.shutdown().await;
        anyhow::Ok(standing?)
    })?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&crat_node::standing::to_json(&standing))?
        );
    } else {
        print!("{}", standing_text(&standing));
    }
    Ok(())
}

/// `µ` units (µUSD, µCRAT) as decimal units, exactly.
fn micro(v: u64) -> String {
    format!("{}.{:06}", v / 1_000_000, v % 1_000_000)
}

fn rank_text(rank: Option<u64>) -> String {
    rank.map_or_else(|| "-".to_owned(), |r| r.to_string())
}

/// `crat node status` as text.
fn standing_text(s: &crat_core::wire::NodeStanding) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let p = &s.proven;
    let _ = writeln!(
        out,
        "node {} — {}",
        s.node,
        if s.online { "online" } else { "offline" }
    );
    let gpus = if p.gpus.is_empty() {
        "none".to_owned()
    } else {
        p.gpus
            .iter()
            .map(|g| format!("#{} {} (rating {})", g.device, g.name, g.rating.get()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        out,
        "proven:     rating {}, mining income {} USD/day, CPU {}, GPUs: {gpus}{}",
        p.rating.get(),
        micro(p.mining_income_usd_micro_per_day.get()),
        if p.cpu { "passed" } else { "not proven" },
        if p.challenged {
            ""
        } else {
            " (no challenge finished on this connection yet)"
        }
    );
    let _ = writeln!(
        out,
        "challenges: {} passed, {} failed",
        s.challenges_passed, s.challenges_failed
    );
    let _ = writeln!(
        out,
        "reachable:  {}",
        match s.direct {
            Some(true) => "directly (the dispatcher reached this node from outside)",
            Some(false) => "not directly: clients start through a relay (see `crat node doctor`)",
            None => "not checked yet",
        }
    );
    let _ = writeln!(
        out,
        "held:       {} CRAT, streak {} rounds, {} s online in closed rounds",
        micro(s.crat_micro.get()),
        s.streak,
        s.uptime_total_s
    );
    let r = &s.round;
    let _ = writeln!(
        out,
        "round {}:   {} s of {} s gone; online {} s, {}, {}",
        r.index,
        r.elapsed_s,
        r.length_s,
        r.uptime_s,
        if r.committed {
            "committed so far"
        } else {
            "not committed"
        },
        match r.rank {
            Some(rank) => format!(
                "rank {rank} of {} ({} paid a bonus)",
                r.ranked, r.paid_ranks
            ),
            None => format!("not eligible for a bonus yet ({} ranked)", r.ranked),
        }
    );
    let _ = writeln!(
        out,
        "            so far: {} USD guaranteed + {} USD bonus (estimate); {} tasks served",
        micro(r.guaranteed_usd_micro.get()),
        micro(r.bonus_usd_micro.get()),
        r.tasks_served
    );
    if s.closed.is_empty() {
        let _ = writeln!(out, "closed rounds: none yet");
    } else {
        let _ = writeln!(
            out,
            "closed rounds:\n{:>8} {:>10} {:>9} {:>5} {:>16} {:>16} {:>16} {:>16}",
            "round",
            "uptime_s",
            "committed",
            "rank",
            "guaranteed_usd",
            "bonus_usd",
            "crat_issued",
            "crat_end"
        );
        for e in &s.closed {
            let _ = writeln!(
                out,
                "{:>8} {:>10} {:>9} {:>5} {:>16} {:>16} {:>16} {:>16}",
                e.index,
                e.uptime_s,
                if e.committed { "yes" } else { "no" },
                rank_text(e.rank),
                micro(e.guaranteed_usd_micro.get()),
                micro(e.bonus_usd_micro.get()),
                micro(e.crat_issued_micro.get()),
                micro(e.crat_end_micro.get()),
            );
        }
    }
    out
}

// ------------------------------------------------------------------------------------------
// crat keys / crat credits / crat rounds (operator verbs on the ledger file)

/// Where the dispatcher's data is.
#[derive(Debug, Args)]
pub(crate) struct DataDir {
    /// The dispatcher's data directory. Default ./crat-data.
    #[arg(long, default_value = "crat-data")]
    data_dir: PathBuf,
    /// The dispatcher's ledger, as `crat dispatcher --ledger` names it: a PostgreSQL URL
    /// (postgres://…), or `sqlite`. Default: the SQLite file ledger.sqlite in the data directory.
    #[arg(long)]
    ledger: Option<String>,
    /// The PostgreSQL schema of the ledger. Default `crat`.
    #[arg(long)]
    ledger_schema: Option<String>,
    /// The CA certificates (PEM) the PostgreSQL server's TLS certificate must chain to, as
    /// `crat dispatcher --ledger-ca`.
    #[arg(long)]
    ledger_ca: Option<PathBuf>,
}

impl DataDir {
    fn ledger(&self) -> anyhow::Result<Arc<dyn Ledger>> {
        // The same ledger `crat dispatcher` uses; the SQLite file is created if new, so an
        // operator can set up accounts before the first start.
        LedgerLocation::new(
            self.ledger.clone(),
            self.ledger_schema.clone(),
            self.ledger_ca.clone(),
        )?
        .open(&self.data_dir)
    }
}

/// `crat keys …`
#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Create an SDK key for an account (created if new); prints the key once.
    Create {
        #[command(flatten)]
        data: DataDir,
        /// The account.
        #[arg(long)]
        account: String,
        /// Lifetime in seconds (default: until revoked).
        #[arg(long)]
        lifetime_s: Option<u64>,
    },
    /// Revoke a key (its id, `key_…`, or the whole key).
    Revoke {
        #[command(flatten)]
        data: DataDir,
        /// The key id or key.
        key: String,
    },
    /// Show a key's status.
    Status {
        #[command(flatten)]
        data: DataDir,
        /// The key id or key.
        key: String,
    },
}

fn key_id(text: &str) -> anyhow::Result<KeyId> {
    if let Ok(k) = text.parse::<SdkKey>() {
        return Ok(k.id);
    }
    text.parse()
        .context("expected a key id (key_…) or an SDK key (sk_…)")
}

pub(crate) fn keys(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Create {
            data,
            account,
            lifetime_s,
        } => {
            let ledger = data.ledger()?;
            let key =
                admin::create_key(&*ledger, &AccountName::new(account)?, now_s(), lifetime_s)?;
            println!("{key}");
        }
        KeysCommand::Revoke { data, key } => {
            let record = data.ledger()?.revoke_key(&key_id(&key)?, now_s())?;
            println!("{} revoked", record.id);
        }
        KeysCommand::Status { data, key } => {
            let id = key_id(&key)?;
            let record = data
                .ledger()?
                .key(&id)?
                .with_context(|| format!("{id} not found"))?;
            let info = admin::key_info(&record, now_s());
            println!(
                "{} account {} status {:?} created {} expires {}",
                info.id,
                record.account,
                info.status,
                info.created_at_s,
                info.expires_at_s
                    .map_or("never".to_owned(), |t| t.to_string())
            );
        }
    }
    Ok(())
}

/// `crat credits …`
#[derive(Debug, Subcommand)]
pub(crate) enum CreditsCommand {
    /// Add credits to an account (created if new).
    Grant {
        #[command(flatten)]
        data: DataDir,
        /// The account.
        #[arg(long)]
        account: String,
        /// Credits to add.
        credits: u64,
    },
    /// Show an account's balance.
    Balance {
        #[command(flatten)]
        data: DataDir,
        /// The account.
        #[arg(long)]
        account: String,
    },
}

pub(crate) fn credits(cmd: CreditsCommand) -> anyhow::Result<()> {
    match cmd {
        CreditsCommand::Grant {
            data,
            account,
            credits,
        } => {
            let b = admin::grant(
                &*data.ledger()?,
                &AccountName::new(account)?,
                Credits::new(credits),
                now_s(),
            )?;
            println!("balance {} credits", b.get());
        }
        CreditsCommand::Balance { data, account } => {
            let b = data.ledger()?.balance(&AccountName::new(account)?)?;
            println!("balance {} credits", b.get());
        }
    }
    Ok(())
}

/// `crat rounds …`
#[derive(Debug, Subcommand)]
pub(crate) enum RoundsCommand {
    /// Closed rounds, newest first.
    List {
        #[command(flatten)]
        data: DataDir,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One round's outcome (interchange JSON), or its inputs with --inputs.
    Show {
        #[command(flatten)]
        data: DataDir,
        /// Round index.
        index: u64,
        /// Print the rewards inputs instead (recompute with `crat rewards compute`).
        #[arg(long)]
        inputs: bool,
    },
}

pub(crate) fn rounds(cmd: RoundsCommand) -> anyhow::Result<()> {
    match cmd {
        RoundsCommand::List { data, limit } => {
            println!("round,start_s,length_s,income_usd_micro,paid_usd_micro,carry_out_usd_micro");
            for r in data.ledger()?.rounds(limit)? {
                println!(
                    "{},{},{},{},{},{}",
                    r.index,
                    r.start_s,
                    r.length_s,
                    r.income_usd_micro.get(),
                    r.paid_usd_micro.get(),
                    r.carry_out_usd_micro.get()
                );
            }
        }
        RoundsCommand::Show {
            data,
            index,
            inputs,
        } => {
            let r = data
                .ledger()?
                .round(index)?
                .with_context(|| format!("round {index} is not closed"))?;
            println!(
                "{}",
                if inputs {
                    r.inputs_json
                } else {
                    r.outcome_json
                }
            );
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// client verbs

/// How a client reaches the dispatcher.
#[derive(Debug, Args)]
pub(crate) struct ClientArgs {
    /// Settings file (TOML, `[client]` table).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The dispatcher's address.
    #[arg(long)]
    dispatcher: Option<SocketAddr>,
    /// Another address of the same dispatcher (dispatchers sharing one ledger and key),
    /// dialled in turn when one does not answer; repeatable. Default: `[client]
    /// dispatcher_alternates`.
    #[arg(long = "dispatcher-alternate")]
    dispatcher_alternate: Vec<SocketAddr>,
    /// The dispatcher's id.
    #[arg(long)]
    dispatcher_id: Option<String>,
    /// The SDK key (or set CRAT_KEY).
    #[arg(long, env = "CRAT_KEY", hide_env_values = true)]
    key: Option<String>,
    #[command(flatten)]
    net: TransportArgs,
}

impl ClientArgs {
    /// Connects, runs `verb` with the client, then closes the client's endpoint (on iroh,
    /// telling its peers and relay) whatever `verb` returned.
    async fn session<R, F, Fut>(self, verb: F) -> anyhow::Result<R>
    where
        F: FnOnce(crat_sdk::Client<AnyTransport>) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<R>>,
    {
        let client = self.connect().await?;
        let held = client.clone();
        let result = verb(client).await;
        held.transport().shutdown().await;
        result
    }

    async fn connect(self) -> anyhow::Result<crat_sdk::Client<AnyTransport>> {
        let all = load_config(self.config.as_deref())?;
        let choice = TransportChoice::resolve(self.net, all.network)?;
        let file = all.client;
        let addr = self
            .dispatcher
            .or(file.dispatcher)
            .context("--dispatcher is required")?;
        let id: NodeId = self
            .dispatcher_id
            .or(file.dispatcher_id)
            .context("--dispatcher-id is required")?
            .parse()
            .context("--dispatcher-id")?;
        let key: SdkKey = self
            .key
            .or(file.key)
            .context("--key (or CRAT_KEY) is required")?
            .parse()
            .context("--key")?;
        let config = crat_sdk::ClientConfig {
            dispatcher_alternates: alternates(
                self.dispatcher_alternate,
                file.dispatcher_alternates,
            ),
            ..crat_sdk::ClientConfig::default()
        };
        let identity = SigningKey::from_bytes(&rand::random());
        let transport = choice
            .bind(crat_sdk::client_bind_addr(addr), &identity, &[], false)
            .await?;
        let client =
            crat_sdk::Client::connect_with(transport, identity, addr.into(), id, key, config)
                .await?;
        if let AnyTransport::Iroh(t) = client.transport()
            && choice.has_relays()
        {
            // A call with a valid key makes this endpoint a member the relays admit; then
            // wait (10 s at most) until it is on its relay, where nodes behind NATs reach it.
            client.key_status().await?;
            if !t.online(Duration::from_secs(10)).await {
                eprintln!(
                    "warning: no relay reached within 10 s; nodes behind NATs may be unreachable"
                );
            }
        }
        Ok(client)
    }
}

/// Options of `crat upload`.
#[derive(Debug, Args)]
pub(crate) struct UploadArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The ONNX model file.
    model: PathBuf,
}

pub(crate) fn upload(args: UploadArgs) -> anyhow::Result<()> {
    let model = args.model;
    runtime()?.block_on(args.client.session(|client| async move {
        let bytes =
            std::fs::read(&model).with_context(|| format!("reading {}", model.display()))?;
        let bar = ProgressBar::new(bytes.len() as u64);
        bar.set_style(ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )?);
        let id = client
            .upload_model(&bytes, |p| bar.set_position(p.acked_bytes))
            .await?;
        bar.finish_and_clear();
        println!("{id}");
        Ok(())
    }))
}

/// Options of `crat deploy`.
#[derive(Debug, Args)]
pub(crate) struct DeployArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The model id (`crat upload` prints it).
    #[arg(long)]
    model: String,
    /// Replace the model of this deployment (its id) by `--model` instead of deploying: the
    /// same deployment and endpoint, each replica switching once the new model is warm. The
    /// plan (and so how often it may be updated) is the deployment's.
    #[arg(long, value_name = "DEPLOYMENT", conflicts_with_all = ["allowance", "guaranteed_rps", "quote"])]
    update: Option<String>,
    /// Pay per request from this credit allowance.
    #[arg(long, conflicts_with = "guaranteed_rps")]
    allowance: Option<u64>,
    /// Pay per instance: reserve this many requests per second.
    #[arg(long)]
    guaranteed_rps: Option<u32>,
    /// Per instance: how long the reservation lasts, in seconds.
    #[arg(long, default_value_t = 86_400)]
    key_lifetime_s: u64,
    /// Per instance: model updates (never, monthly, weekly, daily, hourly).
    #[arg(long, default_value = "never")]
    updates: String,
    /// Largest input of one request, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_input_bytes: u64,
    /// Only print the price.
    #[arg(long)]
    quote: bool,
    /// Do not wait for the replicas to be ready.
    #[arg(long)]
    no_wait: bool,
}

pub(crate) fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let model: ModelId = args.model.parse().context("--model")?;
    if let Some(id) = &args.update {
        let id: DeploymentId = id.parse().context("--update")?;
        let no_wait = args.no_wait;
        return runtime()?.block_on(args.client.session(|client| async move {
            let d = client.deployment(id);
            let info = d.update_model(model).await?;
            eprintln!(
                "updated to model {} (update {} of this deployment); next update allowed {}",
                info.model,
                info.updates,
                info.next_update_at_s
                    .map_or_else(|| "never".to_owned(), |t| format!("at {t} (Unix seconds)"))
            );
            println!("{}", d.id());
            if !no_wait {
                wait_with_progress(&d, true).await?;
            }
            Ok(())
        }));
    }
    let plan = match (args.allowance, args.guaranteed_rps) {
        (Some(a), None) => DeployPlan::PerRequest(PerRequestPlan {
            max_input_bytes: args.max_input_bytes,
            credit_allowance: Credits::new(a),
        }),
        (None, Some(rps)) => DeployPlan::PerInstance(PerInstancePlan {
            guaranteed_rps: rps,
            max_input_bytes: args.max_input_bytes,
            update_frequency: match UpdateFrequency::from_name(&args.updates) {
                Some(f) => f,
                None => bail!(
                    "--updates {:?}: expected one of {}",
                    args.updates,
                    UpdateFrequency::NAMES.join(", ")
                ),
            },
            key_lifetime_s: args.key_lifetime_s,
        }),
        _ => bail!(
            "choose a plan: --allowance CREDITS (per request) or --guaranteed-rps N (per instance)"
        ),
    };
    let (quote_only, no_wait) = (args.quote, args.no_wait);
    runtime()?.block_on(args.client.session(|client| async move {
        let quote = client.quote(model, plan).await?;
        // The price goes to stderr; stdout carries only what scripts capture (the id).
        eprintln!(
            "price: {} credits up front, {} credits per request at most",
            quote.upfront.get(),
            quote.per_request_max.get()
        );
        if quote_only {
            println!("{}", quote.upfront.get());
            return Ok(());
        }
        let d = client.deploy(model, plan).await?;
        println!("{}", d.id());
        if !no_wait {
            wait_with_progress(&d, false).await?;
        }
        Ok(())
    }))
}

/// Waits (120 s at most) until `d` is ready — and, `updating`, until every ready replica
/// serves its current model — printing progress on stderr as replicas warm up and switch:
/// one line per change.
async fn wait_with_progress(
    d: &crat_sdk::Deployment<AnyTransport>,
    updating: bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut last = None;
    let mut told = None;
    loop {
        let info = d.info().await?;
        if info.shortfall.is_some() && told != info.shortfall {
            eprintln!(
                "degraded: {}",
                info.shortfall.as_deref().unwrap_or_default()
            );
            told.clone_from(&info.shortfall);
        }
        let now = (
            info.state,
            info.replicas_ready,
            info.replicas_wanted,
            info.replicas_on_model,
        );
        if last != Some(now) {
            if updating {
                eprintln!(
                    "{:?}: {}/{} replicas ready, {} on the new model",
                    info.state, info.replicas_ready, info.replicas_wanted, info.replicas_on_model
                );
            } else {
                eprintln!(
                    "{:?}: {}/{} replicas ready",
                    info.state, info.replicas_ready, info.replicas_wanted
                );
            }
            last = Some(now);
        }
        if info.is_serving() && (!updating || info.is_switched()) {
            return Ok(());
        }
        match info.state {
            DeploymentState::Failed | DeploymentState::Stopped => bail!(
                "deployment {}: {}",
                d.id(),
                info.failure.unwrap_or_else(|| format!("{:?}", info.state))
            ),
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("not ready after 120 s ({:?})", info.state);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Options of `crat infer`.
#[derive(Debug, Args)]
pub(crate) struct InferArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The deployment id.
    #[arg(long)]
    deployment: String,
    /// An input: `NAME=FILE.npy` (a NumPy array), `NAME:DTYPE:DIMS=FILE` with raw
    /// little-endian values in FILE, or `NAME:DTYPE:DIMS=zeros` (DTYPE f32, f64, i64, …;
    /// DIMS like 1x3x48x192).
    #[arg(long = "input", required_unless_present = "inputs_npz")]
    inputs: Vec<String>,
    /// Inputs from a NumPy `.npz` file (`numpy.savez`): one input per array, named by it.
    #[arg(long = "inputs")]
    inputs_npz: Option<PathBuf>,
    /// Write the outputs to this file: `.npz` (every output, by name) or `.npy` (the one
    /// output). Without it, a preview is printed.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run the same task this many times (prints latency).
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Wait this long between repeats, in milliseconds.
    #[arg(long, default_value_t = 0)]
    interval_ms: u64,
}

fn parse_input(spec: &str) -> anyhow::Result<NamedTensor> {
    let (head, source) = spec
        .split_once('=')
        .context("an input looks like NAME=FILE.npy or NAME:DTYPE:DIMS=FILE")?;
    if !head.contains(':') && source.ends_with(".npy") {
        let bytes = std::fs::read(source).with_context(|| format!("reading {source}"))?;
        let tensor = crate::npy::read_npy(&bytes).with_context(|| format!("reading {source}"))?;
        return Ok(NamedTensor::new(head, tensor));
    }
    let mut parts = head.split(':');
    let (Some(name), Some(dtype), Some(dims), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        bail!("an input looks like NAME:DTYPE:DIMS=FILE, not {spec:?}");
    };
    let dtype = match dtype {
        "f32" => DType::F32,
        "f64" => DType::F64,
        "f16" => DType::F16,
        "i64" => DType::I64,
        "i32" => DType::I32,
        "u8" => DType::U8,
        "i8" => DType::I8,
        "bool" => DType::Bool,
        other => bail!("unknown dtype {other:?}"),
    };
    let shape = dims
        .split('x')
        .map(|d| d.parse::<u64>().with_context(|| format!("dimension {d:?}")))
        .collect::<anyhow::Result<Vec<u64>>>()?;
    let tensor = if source == "zeros" {
        Tensor::zeros(dtype, &shape)?
    } else {
        let data = std::fs::read(source).with_context(|| format!("reading {source}"))?;
        Tensor::new(dtype, shape, data)?
    };
    Ok(NamedTensor::new(name, tensor))
}

pub(crate) fn infer(args: InferArgs) -> anyhow::Result<()> {
    let id: DeploymentId = args.deployment.parse().context("--deployment")?;
    let mut inputs = args
        .inputs
        .iter()
        .map(|s| parse_input(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(path) = &args.inputs_npz {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        inputs.extend(
            crate::npy::read_npz(&bytes).with_context(|| format!("reading {}", path.display()))?,
        );
    }
    let out = args.out.clone();
    if let Some(path) = &out {
        let ext = path.extension().and_then(|e| e.to_str());
        if !matches!(ext, Some("npy" | "npz")) {
            bail!("--out {}: name a .npy or .npz file", path.display());
        }
    }
    let (repeat, interval_ms) = (args.repeat, args.interval_ms);
    runtime()?.block_on(args.client.session(|client| async move {
        let d = client.deployment(id);
        let mut outputs = Vec::new();
        let mut took = Vec::new();
        // The path to each node (direct or relayed), printed whenever it changes.
        let mut paths = Vec::new();
        for i in 0..repeat.max(1) {
            if i > 0 && interval_ms > 0 {
                tokio::time::sleep(Duration::from_millis(interval_ms)).await;
            }
            let t0 = std::time::Instant::now();
            outputs = d.infer(inputs.clone()).await?;
            took.push(t0.elapsed());
            let now = client.node_paths();
            if now != paths {
                for (node, path) in &now {
                    eprintln!("task {}: node {node} over a {path} path", i + 1);
                }
                paths = now;
            }
        }
        // Acknowledge the answers before the process exits (as `crat demo` and the gateway
        // do): the dispatcher charges a node's usage only within what its client acknowledged,
        // and the SDK's own flush runs a moment after the last answer, too late for a one-shot.
        if let Err(e) = d.flush_acks().await {
            eprintln!("acknowledgements not delivered to the dispatcher: {e}");
        }
        if let Some(path) = &out {
            let bytes = if path.extension().is_some_and(|e| e == "npz") {
                crate::npy::write_npz(&outputs)?
            } else {
                match outputs.as_slice() {
                    [one] => crate::npy::write_npy(&one.tensor)?,
                    many => bail!(
                        "the model returned {} outputs: write them to a .npz file",
                        many.len()
                    ),
                }
            };
            std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
        for o in &outputs {
            let preview = match o.tensor.dtype() {
                DType::F32 => format!(
                    "{:?}",
                    o.tensor.to_vec::<f32>()?.iter().take(8).collect::<Vec<_>>()
                ),
                _ => format!("{} bytes", o.tensor.bytes().len()),
            };
            println!(
                "{} {:?} {:?} {preview}",
                o.name,
                o.tensor.dtype(),
                o.tensor.shape()
            );
        }
        took.sort();
        eprintln!(
            "{} task(s); median {:.2} ms; failovers {}",
            took.len(),
            took[took.len() / 2].as_secs_f64() * 1e3,
            d.stats().failovers
        );
        Ok(())
    }))
}

#[cfg(test)]
mod config_example;
