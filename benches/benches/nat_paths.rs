//! Issue 17, "Reach home GPUs behind NAT", closing benchmarks: what a node reached over iroh
//! costs against today's QUIC transport, directly and through the relay, and what the relay
//! itself costs. One run prints one table; nothing here is a pass/fail goal.
//!
//! 1. **Set-up and task latency**, on three in-process networks (`crat_testnet::LocalNetwork`:
//!    a real dispatcher, 2 tract nodes with batch size 1, the tiny CNN deployed per request):
//!    - `QUIC`: today's transport, every endpoint on IPv4 loopback;
//!    - `iroh direct`: `IrohPaths::Direct`, everyone on IPv4 loopback, an in-process relay
//!      configured as a fallback;
//!    - `iroh relayed`: `IrohPaths::Relayed`, nodes on IPv4 loopback and clients on IPv6
//!      loopback (`::1`), so node↔client traffic can only go through the in-process relay.
//!
//!    *Set-up*: for each of `CLIENTS` (12) fresh clients (a new identity each), the time from
//!    binding the client's endpoint (on iroh: until it reached its home relay) through
//!    `Client::connect_with` and the first tiny-CNN task answered (lease from the dispatcher,
//!    connection to the node, the task); median, the median of the bind alone and of what
//!    follows it, and the slowest. The path each fresh client's node connection had at its
//!    first answer is counted.
//!    *Latency*: one client, one task in flight, `WARMUP` (300) tasks, then `TASKS` (2,000)
//!    tasks timed one by one: p50 and p99.
//!    Each row asserts, with `Client::node_paths`, that every node connection of the measuring
//!    client is on the row's path (Direct, Direct, Relayed) before and after the timed tasks;
//!    a direct iroh connection may start on the relay, so it gets 10 s to move first.
//! 2. **Relay throughput and CPU**: the relay runs as its own process, `crat relay --listen
//!    127.0.0.1:0 --qad-port 0 --open --client-bytes-per-s 4000000000` of the binary `CRAT_BIN`
//!    (required): open, and with its per-client rate limit (16 MiB/s by default) lifted. An echo server on IPv6
//!    loopback and a client on IPv4 loopback, both iroh endpoints homed on that relay, can
//!    only reach each other through it (as `crates/transport/tests/iroh.rs` does); the
//!    client dials the server by its id and the relay URL alone. `RELAY_EXCHANGES` (128)
//!    exchanges of 1 MiB each way (a tensor echoed back), `RELAY_IN_FLIGHT` (8) at a time,
//!    after a warm-up of 16: MB/s of payload moved (both directions summed, 10^6 bytes), and the relay
//!    process's CPU (utime + stime from `/proc/<pid>/stat`, before and after) per GB of that
//!    payload (10^9 bytes; framing, QUIC and relay headers are extra bytes the relay carries
//!    but that are not counted). For scale, the bench process's own CPU (both endpoints, TLS
//!    and QUIC at each end) is printed too, and the same echo over a direct iroh path
//!    (both on IPv4 loopback, no relay) as a second row. Each connection's path is asserted
//!    (Relayed, Direct) before and after.
//!
//! Settings: `CRAT_BIN` (required), `CRAT_NAT_PATHS_CLIENTS`, `CRAT_NAT_PATHS_TASKS`,
//! `CRAT_NAT_PATHS_EXCHANGES` (the counts above; smaller ones for a quick check).
//!
//! Everything but the relay process is in this process, on a 2-worker tokio runtime: on a
//! small or shared machine, read the figures as ratios within one run. The 1-minute load
//! average is printed at start and end.
//!
//! `CRAT_BIN=$CARGO_TARGET_DIR/release/crat cargo bench -p crat-benches --bench nat_paths`;
//! see `benches/compare/README.md`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crat_backend::tract::TractBackend;
use crat_benches::procs::{self, load_1m};
use crat_benches::{data_dir, now_s, runtime, ticket};
use crat_core::id::{DeploymentId, NodeId, PeerAddr, TaskId};
use crat_core::money::Credits;
use crat_core::pricing::{DeployPlan, PerRequestPlan};
use crat_core::tensor::{DType, NamedTensor, Tensor};
use crat_core::wire::{ClientToNode, InferRequest, NodeToClient};
use crat_dispatcher::DispatcherConfig;
use crat_dispatcher::admin;
use crat_dispatcher::ledger::AccountName;
use crat_sdk::{Client, ClientConfig, Deployment};
use crat_testnet::{IrohPaths, LocalNetwork, LocalTransport, NodeSpec, loopback_iroh};
use crat_transport::iroh::{IrohConfig, IrohTransport, RelayUrl};
use crat_transport::quic::QuicTransport;
use crat_transport::{
    Connection, ConnectionExt, Conversation, FrameLimits, PathKind, Transport, serve,
};
use ed25519_dalek::SigningKey;
use futures_util::StreamExt;
use futures_util::stream;
use tempfile::TempDir;
use tokio::runtime::Runtime;

#[global_allocator]
static GLOBAL: crat_benches::MiMalloc = crat_benches::MiMalloc;

const TINY: &[u8] = include_bytes!("../../crates/backend/models/tiny_cnn.onnx");
const GPU: &str = "NVIDIA GeForce RTX 3090";
/// Nodes in every network.
const NODES: usize = 2;
/// Fresh clients whose set-up is timed, per row, unless `CRAT_NAT_PATHS_CLIENTS` says.
const CLIENTS: usize = 12;
/// Untimed tasks before the latency run.
const WARMUP: usize = 300;
/// Tasks timed one by one, one in flight, unless `CRAT_NAT_PATHS_TASKS` says.
const TASKS: usize = 2_000;
/// How long a direct iroh connection may take to leave the relay.
const DIRECT_WAIT: Duration = Duration::from_secs(10);
/// Relay throughput: bytes each way per exchange, exchanges, exchanges in flight.
const EXCHANGE_BYTES: usize = 1 << 20;
/// Unless `CRAT_NAT_PATHS_EXCHANGES` says.
const RELAY_EXCHANGES: usize = 128;
const RELAY_IN_FLIGHT: usize = 8;
const RELAY_WARMUP: usize = 16;
/// How long the relay process may take to print its URL, and to exit after ctrl-c.
const RELAY_START_MAX: Duration = Duration::from_secs(30);
const RELAY_STOP_MAX: Duration = Duration::from_secs(10);

const LIMITS: FrameLimits = FrameLimits {
    control_bytes_max: 1 << 20,
    tensor_bytes_max: 64 << 20,
};

fn tiny_input() -> Vec<NamedTensor> {
    let values: Vec<f32> = (0..28 * 28).map(|i| (i % 255) as f32 / 255.0).collect();
    vec![NamedTensor::new(
        "input",
        Tensor::from_slice(&[1, 1, 28, 28], &values).unwrap(),
    )]
}

/// `name` from the environment as a count, else `default`.
fn env_count(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a count")),
        _ => default,
    }
}

/// How many of each this run does.
#[derive(Clone, Copy)]
struct Counts {
    clients: usize,
    tasks: usize,
    exchanges: usize,
}

impl Counts {
    fn from_env() -> Self {
        Self {
            clients: env_count("CRAT_NAT_PATHS_CLIENTS", CLIENTS).max(1),
            tasks: env_count("CRAT_NAT_PATHS_TASKS", TASKS).max(1),
            exchanges: env_count("CRAT_NAT_PATHS_EXCHANGES", RELAY_EXCHANGES).max(1),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `q` quantile of sorted `samples` (nearest rank below).
fn quantile(samples: &[Duration], q: f64) -> Duration {
    samples[((samples.len() as f64 - 1.0) * q) as usize]
}

// ---------------------------------------------------------------------------------------------
// 1. Set-up and task latency
// ---------------------------------------------------------------------------------------------

/// One row of the first table.
struct PathRow {
    name: &'static str,
    want: PathKind,
    bind_p50: Duration,
    /// After the bind: `Client::connect_with` and the first task answered.
    after_bind_p50: Duration,
    setup_p50: Duration,
    setup_max: Duration,
    /// Fresh clients whose node connection was on `want` at their first answer.
    first_on_want: usize,
    p50: Duration,
    p99: Duration,
}

fn dispatcher_config(dir: &Path) -> DispatcherConfig {
    let mut config = DispatcherConfig::new(dir.join("dispatcher"));
    config.tick_ms = 100;
    config.client_key_rate = None;
    config
}

fn specs() -> Vec<NodeSpec> {
    (0..NODES)
        .map(|_| NodeSpec {
            gpu: Some(GPU.into()),
            backend: Arc::new(TractBackend::new()),
            batch_size: 1,
        })
        .collect()
}

/// A client of `net` on a fresh endpoint where the network's clients are, and how long the
/// bind took (on iroh: until the endpoint reached its home relay).
async fn fresh_client<T: LocalTransport>(
    net: &LocalNetwork<T>,
    key: &crat_core::id::SdkKey,
) -> (Client<T>, Duration) {
    let identity = SigningKey::from_bytes(&rand::random());
    let started = Instant::now();
    let transport = net.bind_client(&identity).await.unwrap();
    let bind = started.elapsed();
    let client = Client::connect_with(
        transport,
        identity,
        net.dispatcher_peer_addr(),
        net.dispatcher().id(),
        key.clone(),
        ClientConfig::default(),
    )
    .await
    .unwrap();
    (client, bind)
}

/// Every node connection `client` has open is on `want`, and there is one; a connection that
/// should be direct gets [`DIRECT_WAIT`] to leave the relay.
async fn assert_paths<T: Transport>(client: &Client<T>, row: &str, want: PathKind) {
    let deadline = Instant::now() + DIRECT_WAIT;
    loop {
        let open: Vec<(NodeId, PathKind)> = client.node_paths();
        assert!(!open.is_empty(), "{row}: no connection to a node is open");
        if open.iter().all(|(_, kind)| *kind == want) {
            return;
        }
        assert!(
            want == PathKind::Direct && Instant::now() < deadline,
            "{row}: every node connection should be {want:?}: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Set-up and latency on `net` (started, nodes registered).
async fn measure_paths<T: LocalTransport>(
    net: LocalNetwork<T>,
    name: &'static str,
    want: PathKind,
    counts: Counts,
) -> PathRow {
    let ledger = net.dispatcher().ledger().clone();
    let account = AccountName::new("bench").unwrap();
    admin::grant(&*ledger, &account, Credits::new(1 << 40), now_s()).unwrap();
    let key = admin::create_key(&*ledger, &account, now_s(), None).unwrap();

    // The client that deploys and measures latency.
    let (client, _) = fresh_client(&net, &key).await;
    let model = client.upload_model(TINY, |_| {}).await.unwrap();
    let plan = DeployPlan::PerRequest(PerRequestPlan {
        max_input_bytes: 1 << 16,
        credit_allowance: Credits::new(1 << 36),
    });
    let deployment: Deployment<T> = client.deploy(model, plan).await.unwrap();
    deployment
        .wait_ready(Duration::from_secs(60))
        .await
        .unwrap();
    let id = deployment.id();

    // Fresh clients, one at a time, each dropped (endpoint closed) after its first answer.
    let mut binds = Vec::with_capacity(counts.clients);
    let mut setups = Vec::with_capacity(counts.clients);
    let mut after_binds = Vec::with_capacity(counts.clients);
    let mut first_on_want = 0;
    for _ in 0..counts.clients {
        let started = Instant::now();
        let (fresh, bind) = fresh_client(&net, &key).await;
        fresh.deployment(id).infer(tiny_input()).await.unwrap();
        let setup = started.elapsed();
        setups.push(setup);
        binds.push(bind);
        after_binds.push(setup.saturating_sub(bind));
        let paths = fresh.node_paths();
        if !paths.is_empty() && paths.iter().all(|(_, k)| *k == want) {
            first_on_want += 1;
        }
        fresh.transport().close();
        drop(fresh);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    binds.sort();
    setups.sort();
    after_binds.sort();

    for _ in 0..WARMUP {
        deployment.infer(tiny_input()).await.unwrap();
    }
    assert_paths(&client, name, want).await;
    let mut samples = Vec::with_capacity(counts.tasks);
    for _ in 0..counts.tasks {
        let t = Instant::now();
        deployment.infer(tiny_input()).await.unwrap();
        samples.push(t.elapsed());
    }
    assert_paths(&client, name, want).await;
    samples.sort();
    let stats = deployment.stats();
    assert_eq!(stats.failed, 0, "{name}: failed tasks");
    eprintln!(
        "{name}: node paths {:?}; {} tasks, {} failovers",
        client.node_paths(),
        stats.tasks,
        stats.failovers
    );

    drop(deployment);
    client.transport().close();
    drop(client);
    net.shutdown();
    drop(net);
    tokio::time::sleep(Duration::from_millis(100)).await;
    PathRow {
        name,
        want,
        bind_p50: quantile(&binds, 0.5),
        after_bind_p50: quantile(&after_binds, 0.5),
        setup_p50: quantile(&setups, 0.5),
        setup_max: *setups.last().unwrap(),
        first_on_want,
        p50: quantile(&samples, 0.5),
        p99: quantile(&samples, 0.99),
    }
}

fn path_rows(rt: &Runtime, counts: Counts) -> Vec<PathRow> {
    let mut rows = Vec::new();
    {
        let dir = data_dir();
        rows.push(rt.block_on(async {
            let net: LocalNetwork<QuicTransport> =
                LocalNetwork::start(dispatcher_config(dir.path()), dir.path(), specs())
                    .await
                    .unwrap();
            measure_paths(net, "QUIC (today)", PathKind::Direct, counts).await
        }));
    }
    for (paths, name, want) in [
        (IrohPaths::Direct, "iroh direct", PathKind::Direct),
        (IrohPaths::Relayed, "iroh relayed only", PathKind::Relayed),
    ] {
        let dir = data_dir();
        rows.push(rt.block_on(async {
            let net =
                LocalNetwork::start_iroh(paths, dispatcher_config(dir.path()), dir.path(), specs())
                    .await
                    .unwrap();
            measure_paths(net, name, want, counts).await
        }));
    }
    rows
}

// ---------------------------------------------------------------------------------------------
// 2. Relay throughput and CPU
// ---------------------------------------------------------------------------------------------

/// The `crat relay` process; interrupted (then killed) when dropped.
struct RelayProc {
    child: Child,
    url: RelayUrl,
    _dir: TempDir,
}

impl RelayProc {
    fn start(crat: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("relay.out");
        let err = dir.path().join("relay.err");
        let child = Command::new(crat)
            // An open relay without the per-client rate limit: the bench measures the relay
            // itself, not its admission (asked once per connection) or its limit.
            .args([
                "relay",
                "--listen",
                "127.0.0.1:0",
                "--qad-port",
                "0",
                "--open",
                "--client-bytes-per-s",
                "4000000000",
            ])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} relay: {e}", crat.display()));
        let mut relay = Self {
            child,
            url: "http://127.0.0.1:1/".parse().unwrap(),
            _dir: dir,
        };
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if let Some(url) = text
                .lines()
                .find_map(|l| l.strip_prefix("relay on "))
                .and_then(|l| l.split_whitespace().next())
            {
                relay.url = url.parse().unwrap();
                return relay;
            }
            if let Ok(Some(status)) = relay.child.try_wait() {
                panic!(
                    "crat relay exited ({status}) before printing its URL: {}",
                    std::fs::read_to_string(&err).unwrap_or_default()
                );
            }
            assert!(
                started.elapsed() < RELAY_START_MAX,
                "crat relay printed no URL within {RELAY_START_MAX:?}: {text}{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let started = Instant::now();
        while started.elapsed() < RELAY_STOP_MAX {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// utime + stime of `/proc/<pid>/stat` (`self` for this process), in clock ticks.
fn cpu_ticks(pid: &str) -> u64 {
    procs::cpu_ticks(pid).unwrap_or_else(|| panic!("/proc/{pid}/stat cannot be read"))
}

/// Clock ticks per second (`getconf CLK_TCK`; 100, Linux's USER_HZ, if that fails).
fn clock_ticks_per_s() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The echo server: every task's inputs come back as its outputs.
async fn echo(req: ClientToNode) -> NodeToClient {
    match req {
        ClientToNode::Ping => NodeToClient::Pong,
        ClientToNode::Infer(r) => NodeToClient::Outputs {
            task: r.task,
            outputs: r.inputs,
            compute_us: 0,
        },
    }
}

/// One row of the second table.
struct BulkRow {
    name: &'static str,
    path: PathKind,
    bytes: u64,
    elapsed: Duration,
    /// CPU seconds of the relay process (none for the direct row) and of this process.
    relay_cpu_s: Option<f64>,
    bench_cpu_s: f64,
}

/// `RELAY_EXCHANGES` echoes of `EXCHANGE_BYTES` over `conn`, `RELAY_IN_FLIGHT` at a time,
/// after `RELAY_WARMUP`; the path asserted before and after. CPU of `relay_pid` if any.
async fn bulk<C: Connection>(
    conn: &C,
    name: &'static str,
    want: PathKind,
    relay_pid: Option<u32>,
    exchanges: usize,
) -> BulkRow {
    let data: Vec<u8> = (0..EXCHANGE_BYTES)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    let tensor = Tensor::new(DType::U8, vec![EXCHANGE_BYTES as u64], data).unwrap();
    let request = ClientToNode::Infer(Box::new(InferRequest::new(
        TaskId::from_bytes([1; 16]),
        DeploymentId::from_bytes([0; 16]),
        ticket(),
        vec![NamedTensor::new("bulk", tensor)],
    )));
    let run = |n: usize| {
        let request = &request;
        async move {
            stream::iter(0..n)
                .map(|_| async move {
                    let reply: NodeToClient = conn
                        .call(request, Conversation::ClientNode, LIMITS)
                        .await
                        .unwrap();
                    match reply {
                        NodeToClient::Outputs { outputs, .. } => {
                            assert_eq!(outputs[0].tensor.bytes().len(), EXCHANGE_BYTES);
                        }
                        other => panic!("{name}: got {other:?}"),
                    }
                })
                .buffer_unordered(RELAY_IN_FLIGHT)
                .count()
                .await
        }
    };
    run(RELAY_WARMUP).await;
    assert_eq!(conn.path_kind(), want, "{name}: path before the run");
    let ticks = clock_ticks_per_s();
    let relay_before = relay_pid.map(|p| cpu_ticks(&p.to_string()));
    let bench_before = cpu_ticks("self");
    let started = Instant::now();
    run(exchanges).await;
    let elapsed = started.elapsed();
    let bench_cpu_s = (cpu_ticks("self") - bench_before) as f64 / ticks;
    let relay_cpu_s = relay_pid
        .zip(relay_before)
        .map(|(p, before)| (cpu_ticks(&p.to_string()) - before) as f64 / ticks);
    assert_eq!(conn.path_kind(), want, "{name}: path after the run");
    BulkRow {
        name,
        path: want,
        bytes: (2 * EXCHANGE_BYTES * exchanges) as u64,
        elapsed,
        relay_cpu_s,
        bench_cpu_s,
    }
}

fn with_relay(url: &RelayUrl) -> IrohConfig {
    IrohConfig {
        relay_urls: vec![url.clone()],
        ..loopback_iroh()
    }
}

/// An iroh endpoint on `at` with a random identity; with a relay in `config`, once it reached
/// it.
async fn bind_iroh(at: &str, config: IrohConfig) -> IrohTransport {
    let has_relay = !config.relay_urls.is_empty();
    let t = IrohTransport::bind(
        at.parse().unwrap(),
        &SigningKey::from_bytes(&rand::random()),
        config,
    )
    .await
    .unwrap();
    if has_relay {
        assert!(
            t.online(Duration::from_secs(10)).await,
            "an endpoint on {at} did not reach the relay"
        );
    }
    t
}

fn bulk_rows(rt: &Runtime, crat: &Path, exchanges: usize) -> Vec<BulkRow> {
    rt.block_on(async {
        std::net::UdpSocket::bind("[::1]:0").unwrap_or_else(|e| {
            panic!(
                "the relay bench needs IPv6 loopback (::1), so that its two endpoints cannot \
                 reach each other directly: {e}"
            )
        });
        let relay = RelayProc::start(crat);
        eprintln!("crat relay (pid {}) on {}", relay.pid(), relay.url);
        let server = bind_iroh("[::1]:0", with_relay(&relay.url)).await;
        let server_id = server.local_id();
        let server_task = tokio::spawn(async move {
            while let Ok(conn) = server.accept().await {
                tokio::spawn(serve(conn, Conversation::ClientNode, LIMITS, 256, echo));
            }
        });
        let client = bind_iroh("127.0.0.1:0", with_relay(&relay.url)).await;
        // The server's id and relay, nothing else: the relay is the only way.
        let addr: PeerAddr = relay.url.to_string().parse().unwrap();
        let conn = client.connect(&addr, &server_id).await.unwrap();
        let relayed = bulk(
            &conn,
            "iroh through `crat relay`",
            PathKind::Relayed,
            Some(relay.pid()),
            exchanges,
        )
        .await;
        conn.close("done");
        client.close();
        server_task.abort();
        drop(relay);

        // The same echo over a direct path, no relay, for scale.
        let server = bind_iroh("127.0.0.1:0", loopback_iroh()).await;
        let (server_id, server_addr) = (server.local_id(), server.dial_addr());
        let server_task = tokio::spawn(async move {
            while let Ok(conn) = server.accept().await {
                tokio::spawn(serve(conn, Conversation::ClientNode, LIMITS, 256, echo));
            }
        });
        let client = bind_iroh("127.0.0.1:0", loopback_iroh()).await;
        let conn = client.connect(&server_addr, &server_id).await.unwrap();
        let direct = bulk(
            &conn,
            "iroh direct (no relay)",
            PathKind::Direct,
            None,
            exchanges,
        )
        .await;
        conn.close("done");
        client.close();
        server_task.abort();
        vec![relayed, direct]
    })
}

// ---------------------------------------------------------------------------------------------

fn crat_bin() -> PathBuf {
    let crat = std::env::var_os("CRAT_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "CRAT_BIN must name the crat binary whose `crat relay` the relay bench runs: \
                 build it with `cargo build --release -p crat-cli --bin crat` and set \
                 CRAT_BIN=$CARGO_TARGET_DIR/release/crat (target/release/crat without \
                 CARGO_TARGET_DIR)"
            )
        });
    assert!(
        crat.is_file(),
        "CRAT_BIN={} is not a file: build it with `cargo build --release -p crat-cli --bin crat`",
        crat.display()
    );
    crat
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: then nothing runs.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let crat = crat_bin();
    let load_start = load_1m();
    let counts = Counts::from_env();
    let rt = runtime();
    let paths = path_rows(&rt, counts);
    let bulk = bulk_rows(&rt, &crat, counts.exchanges);
    let load_end = load_1m();

    println!();
    println!(
        "NAT paths (issue 17): tiny CNN, {NODES} tract nodes (batch 1), in-process dispatcher; \
         load average (1 min) {load_start} at start, {load_end} at end"
    );
    println!(
        "| transport | path (asserted) | bind p50 | connect + 1st answer p50 | set-up p50 | set-up max | first answer on path | task p50 | task p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &paths {
        println!(
            "| {} | {:?} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {}/{} | {:.0} µs | {:.0} µs |",
            r.name,
            r.want,
            ms(r.bind_p50),
            ms(r.after_bind_p50),
            ms(r.setup_p50),
            ms(r.setup_max),
            r.first_on_want,
            counts.clients,
            r.p50.as_secs_f64() * 1e6,
            r.p99.as_secs_f64() * 1e6,
        );
    }
    println!(
        "(set-up: {} fresh clients, bind + connect + first task answered; latency: {} tasks, \
         1 in flight, after {WARMUP})",
        counts.clients, counts.tasks
    );
    println!();
    println!(
        "Bulk echo: {} exchanges of {} MiB each way, {RELAY_IN_FLIGHT} in flight (CRAT_BIN={})",
        counts.exchanges,
        EXCHANGE_BYTES >> 20,
        crat.display()
    );
    println!("| between | path (asserted) | MB moved | MB/s | relay CPU s/GB | bench CPU s/GB |");
    println!("|---|---|---|---|---|---|");
    for r in &bulk {
        let gb = r.bytes as f64 / 1e9;
        println!(
            "| {} | {:?} | {:.0} | {:.0} | {} | {:.2} |",
            r.name,
            r.path,
            r.bytes as f64 / 1e6,
            r.bytes as f64 / 1e6 / r.elapsed.as_secs_f64(),
            r.relay_cpu_s
                .map_or_else(|| "-".into(), |s| format!("{:.2}", s / gb)),
            r.bench_cpu_s / gb,
        );
    }
    println!(
        "(MB = 10^6 bytes of payload, both directions summed; CPU = utime + stime per GB of \
         that payload; bench CPU = this process: both endpoints)"
    );
}
