//! The dispatcher load test (issue 18, item 4): a real `crat dispatcher` process, many
//! simulated nodes speaking the real protocol over real QUIC ([`fleet`]), and SDK clients
//! leasing with the nodes reporting usage under the tickets ([`traffic`]). Measured from the
//! outside: the dispatcher's CPU per core and resident memory (`/proc`), the handling
//! latency the harness sees (p50/p99 of heartbeats, leases, usage reports), and the ledger's
//! call rate (its Prometheus metrics).
//!
//! Configured by environment variables ([`LoadConfig::from_env`]); run with
//! `cargo bench -p crat-benches --bench dispatcher_load`. A small run in a test:
//!
//! ```no_run
//! # async fn f() -> Result<(), crat_benches::load::LoadError> {
//! let mut config = crat_benches::load::LoadConfig::from_env()?;
//! config.nodes = 200;
//! let report = crat_benches::load::run(&config).await?;
//! assert_eq!(report.registered, 200);
//! println!("{report}");
//! # Ok(()) }
//! ```

pub mod dispatcher;
pub mod fleet;
pub mod stats;
pub mod traffic;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dispatcher::{DispatcherProcess, DispatcherSetup, LedgerChoice, Metrics, load_average};
use fleet::{Fleet, FleetConfig};
use traffic::{Traffic, TrafficConfig};

/// Why a load run could not be carried out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// A setting is missing or invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// A `crat` operator verb failed.
    #[error("crat {verb} failed: {stderr}")]
    Verb {
        /// The verb.
        verb: String,
        /// Its error output.
        stderr: String,
    },
    /// The dispatcher process did not start or misbehaved.
    #[error("dispatcher: {0}")]
    Dispatcher(String),
    /// `/proc` did not say what was asked.
    #[error("/proc: {0}")]
    Proc(String),
    /// The simulated nodes could not be set up.
    #[error("fleet: {0}")]
    Fleet(String),
    /// A simulated node has no connection yet.
    #[error("the node is not connected")]
    NotConnected,
    /// A lease named no replica the harness simulates.
    #[error("the lease names no simulated replica")]
    NoReplica,
    /// The dispatcher refused a request.
    #[error("refused: {0}")]
    Refused(String),
    /// A transport failure.
    #[error(transparent)]
    Transport(#[from] crat_transport::TransportError),
    /// An SDK failure.
    #[error(transparent)]
    Sdk(#[from] crat_sdk::Error),
}

impl LoadError {
    pub(crate) fn io(what: &'static str, source: std::io::Error) -> Self {
        Self::Io { what, source }
    }
}

/// Unix seconds now.
pub(crate) fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Everything a load run is configured with.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// The `crat` binary (`CRAT_BIN`; default `target/release/crat` under
    /// `CARGO_TARGET_DIR` or the workspace).
    pub bin: PathBuf,
    /// Simulated nodes (`CRAT_LOAD_NODES`, default 100,000).
    pub nodes: usize,
    /// The heartbeat interval the dispatcher is configured with (`CRAT_LOAD_HEARTBEAT_S`,
    /// default 10).
    pub heartbeat_interval_s: u64,
    /// Node registrations per second (`CRAT_LOAD_JOIN_RATE`, default 200: the dispatcher
    /// remembers at most 65,536 registrations for their 301 s freshness window).
    pub join_rate_per_s: u32,
    /// Handshakes and registrations in flight (`CRAT_LOAD_JOINS_CONCURRENT`, default 32).
    pub joins_concurrent_max: usize,
    /// Nodes per UDP endpoint and /24 block (`CRAT_LOAD_NODES_PER_ENDPOINT`, default 200:
    /// within the dispatcher's registration burst per block).
    pub nodes_per_endpoint: usize,
    /// The heartbeat measurement window (`CRAT_LOAD_MEASURE_S`, default 60).
    pub measure_s: u64,
    /// The ledger (`CRAT_LOAD_LEDGER`: `sqlite`, the default, or a PostgreSQL URL; the schema
    /// is `CRAT_LOAD_LEDGER_SCHEMA`, default a fresh `load_…`).
    pub ledger: LedgerChoice,
    /// The lease and usage window (`CRAT_LOAD_TRAFFIC_S`, default 60; 0: none).
    pub traffic_s: u64,
    /// SDK clients, one key each (`CRAT_LOAD_KEYS`, default 8).
    pub keys: usize,
    /// Deployments leased (`CRAT_LOAD_DEPLOYMENTS`, default 4).
    pub deployments: usize,
    /// Lease-and-report loops in flight (`CRAT_LOAD_CONCURRENCY`, default 32).
    pub concurrent: usize,
    /// Tasks reported per lease (`CRAT_LOAD_TASKS_PER_LEASE`, default 10).
    pub tasks_per_lease: usize,
    /// Input bytes per task (`CRAT_LOAD_INPUT_BYTES`, default 1,024).
    pub input_bytes: u64,
    /// Where the dispatcher's data goes (`CRAT_LOAD_DIR`; default a temporary directory).
    pub dir: Option<PathBuf>,
    /// The dispatcher's `RUST_LOG` (`CRAT_LOAD_DISPATCHER_LOG`, default `warn`).
    pub log_filter: String,
    /// Joining stops when the machine's available memory falls below this
    /// (`CRAT_LOAD_MEM_FLOOR_MIB`, default 4,096).
    pub memory_floor_mib: u64,
    /// A second dispatcher sharing the (PostgreSQL) ledger and key, standing by
    /// (`crat_dispatcher::cluster`), and the clients leasing through it while the nodes stay
    /// on the active one (`CRAT_LOAD_STANDBY=1`; default 0).
    pub standby: bool,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T, LoadError> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| LoadError::Config(format!("{name}={v} is not valid"))),
        _ => Ok(default),
    }
}

/// The `crat` binary a build of this workspace makes (release).
pub fn default_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("release").join("crat")
}

impl LoadConfig {
    /// The settings from the environment (see each field).
    pub fn from_env() -> Result<Self, LoadError> {
        let bin = std::env::var_os("CRAT_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(default_bin);
        let ledger = match std::env::var("CRAT_LOAD_LEDGER") {
            Ok(v) if v.starts_with("postgres://") || v.starts_with("postgresql://") => {
                LedgerChoice::Postgres {
                    url: v,
                    schema: env_or(
                        "CRAT_LOAD_LEDGER_SCHEMA",
                        format!("load_{:08x}", rand::random::<u32>()),
                    )?,
                }
            }
            Ok(v) if v.is_empty() || v == "sqlite" => LedgerChoice::Sqlite,
            Err(_) => LedgerChoice::Sqlite,
            Ok(v) => {
                return Err(LoadError::Config(format!(
                    "CRAT_LOAD_LEDGER={v}: expected sqlite or a postgres:// URL"
                )));
            }
        };
        Ok(Self {
            bin,
            nodes: env_or("CRAT_LOAD_NODES", 100_000)?,
            heartbeat_interval_s: env_or("CRAT_LOAD_HEARTBEAT_S", 10)?,
            join_rate_per_s: env_or("CRAT_LOAD_JOIN_RATE", 200)?,
            joins_concurrent_max: env_or("CRAT_LOAD_JOINS_CONCURRENT", 32)?,
            nodes_per_endpoint: env_or("CRAT_LOAD_NODES_PER_ENDPOINT", 200)?,
            measure_s: env_or("CRAT_LOAD_MEASURE_S", 60)?,
            ledger,
            traffic_s: env_or("CRAT_LOAD_TRAFFIC_S", 60)?,
            keys: env_or("CRAT_LOAD_KEYS", 8)?,
            deployments: env_or("CRAT_LOAD_DEPLOYMENTS", 4)?,
            concurrent: env_or("CRAT_LOAD_CONCURRENCY", 32)?,
            tasks_per_lease: env_or("CRAT_LOAD_TASKS_PER_LEASE", 10)?,
            input_bytes: env_or("CRAT_LOAD_INPUT_BYTES", 1_024)?,
            dir: std::env::var_os("CRAT_LOAD_DIR").map(PathBuf::from),
            log_filter: env_or("CRAT_LOAD_DISPATCHER_LOG", "warn".to_owned())?,
            memory_floor_mib: env_or("CRAT_LOAD_MEM_FLOOR_MIB", 4_096)?,
            standby: env_or("CRAT_LOAD_STANDBY", 0u8)? != 0,
        })
    }
}

/// Rates over one measurement window.
#[derive(Clone, Debug, Default)]
pub struct Window {
    /// Its length, seconds.
    pub seconds: f64,
    /// The dispatcher's CPU seconds per second (1.0 = one core).
    pub cpu_cores: f64,
    /// Ledger calls per second (`crat_dispatcher_ledger_call_duration_seconds_count`).
    pub ledger_calls_per_s: f64,
    /// Heartbeats answered per second (harness side).
    pub heartbeats_per_s: f64,
    /// Leases granted per second (harness side).
    pub leases_per_s: f64,
    /// Usage records charged per second (harness side, the dispatcher's `accepted`).
    pub charges_per_s: f64,
    /// Leases per second by the dispatcher's metric `crat_dispatcher_leases_total`.
    pub leases_per_s_metric: f64,
    /// Charges per second by `crat_dispatcher_usage_records_total{state="charged"}`.
    pub charges_per_s_metric: f64,
    /// Latency summaries (p50/p99) of what was timed in the window.
    pub latencies: Vec<(String, String)>,
}

/// What a load run measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// `sqlite` or `postgres`.
    pub ledger: String,
    /// Nodes asked for.
    pub nodes: usize,
    /// Nodes registered.
    pub registered: u64,
    /// Registrations refused, connections failed.
    pub register_refused: u64,
    /// Connections or registrations failed on the transport.
    pub connect_failed: u64,
    /// Seconds the joins took.
    pub join_s: f64,
    /// Dispatcher CPU per core while nodes joined.
    pub join_cpu_cores: f64,
    /// Registration round trips (p50/p99).
    pub register_latency: String,
    /// UDP endpoints the nodes shared.
    pub endpoints: usize,
    /// Why joining stopped early, if it did.
    pub join_stopped: Option<String>,
    /// The harness's own RSS with the nodes joined, bytes.
    pub harness_rss_bytes: u64,
    /// The dispatcher's RSS before any node joined, bytes.
    pub rss_baseline_bytes: u64,
    /// Its RSS with every node joined (after the heartbeat window), bytes.
    pub rss_joined_bytes: u64,
    /// The heartbeat-only window.
    pub heartbeats: Window,
    /// The lease-and-usage window (with heartbeats going on).
    pub traffic: Option<Window>,
    /// With a standby the clients lease through: its CPU per core in the lease-and-usage
    /// window.
    pub standby_cpu_cores: Option<f64>,
    /// Why the lease-and-usage window did not run, if it did not.
    pub traffic_error: Option<String>,
    /// Heartbeats refused and lost over the whole run, connections lost.
    pub heartbeats_refused: u64,
    /// Heartbeats failed on the transport.
    pub heartbeats_failed: u64,
    /// Connections that ended after registering.
    pub connections_lost: u64,
    /// Challenges committed and opened by the simulated nodes.
    pub challenges: (u64, u64),
    /// `crat_dispatcher_nodes_online` at the end.
    pub nodes_online: f64,
    /// Usage records held or answered as duplicates (should be 0).
    pub not_charged: (u64, u64),
    /// Load averages before and after.
    pub load_before: String,
    /// Load averages after.
    pub load_after: String,
    /// First distinct errors seen.
    pub errors: Vec<String>,
}

impl Report {
    /// Dispatcher memory per registered node, bytes.
    pub fn bytes_per_node(&self) -> f64 {
        if self.registered == 0 {
            return 0.0;
        }
        self.rss_joined_bytes
            .saturating_sub(self.rss_baseline_bytes) as f64
            / self.registered as f64
    }
}

fn write_window(f: &mut std::fmt::Formatter<'_>, name: &str, w: &Window) -> std::fmt::Result {
    writeln!(
        f,
        "{name} window {:.0} s: dispatcher CPU {:.1} % of one core; ledger calls {:.0}/s; \
         heartbeats {:.0}/s",
        w.seconds,
        w.cpu_cores * 100.0,
        w.ledger_calls_per_s,
        w.heartbeats_per_s
    )?;
    if w.leases_per_s > 0.0 || w.charges_per_s > 0.0 {
        writeln!(
            f,
            "  leases {:.0}/s (metric {:.0}/s); usage charges {:.0}/s (metric {:.0}/s)",
            w.leases_per_s, w.leases_per_s_metric, w.charges_per_s, w.charges_per_s_metric
        )?;
    }
    for (what, summary) in &w.latencies {
        writeln!(f, "  {what}: {summary}")?;
    }
    Ok(())
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "dispatcher load, ledger {}", self.ledger)?;
        writeln!(
            f,
            "nodes {} asked, {} registered ({} refused, {} failed) in {:.0} s over {} \
             endpoints; dispatcher CPU while joining {:.1} % of one core",
            self.nodes,
            self.registered,
            self.register_refused,
            self.connect_failed,
            self.join_s,
            self.endpoints,
            self.join_cpu_cores * 100.0
        )?;
        writeln!(f, "  registration: {}", self.register_latency)?;
        if let Some(why) = &self.join_stopped {
            writeln!(f, "  {why}")?;
        }
        writeln!(
            f,
            "memory: RSS {:.1} MiB before nodes, {:.1} MiB with them: {:.0} bytes per node",
            self.rss_baseline_bytes as f64 / 1048576.0,
            self.rss_joined_bytes as f64 / 1048576.0,
            self.bytes_per_node()
        )?;
        writeln!(
            f,
            "harness (simulated nodes) RSS {:.1} MiB",
            self.harness_rss_bytes as f64 / 1048576.0
        )?;
        write_window(f, "heartbeat", &self.heartbeats)?;
        if let Some(t) = &self.traffic {
            write_window(f, "lease+usage", t)?;
        }
        if let Some(c) = self.standby_cpu_cores {
            writeln!(
                f,
                "  clients leased through a standby dispatcher: its CPU {:.1} % of one core",
                c * 100.0
            )?;
        }
        if let Some(e) = &self.traffic_error {
            writeln!(f, "lease+usage window not run: {e}")?;
        }
        writeln!(
            f,
            "over the run: heartbeats refused {}, lost {}; connections lost {}; challenges \
             committed {}, opened {}; usage held {}, duplicate {}; nodes online at the end {}",
            self.heartbeats_refused,
            self.heartbeats_failed,
            self.connections_lost,
            self.challenges.0,
            self.challenges.1,
            self.not_charged.0,
            self.not_charged.1,
            self.nodes_online
        )?;
        writeln!(
            f,
            "load average before {}, after {}",
            self.load_before, self.load_after
        )?;
        for e in &self.errors {
            writeln!(f, "  error seen: {e}")?;
        }
        Ok(())
    }
}

const LEDGER_CALLS: &str = "crat_dispatcher_ledger_call_duration_seconds_count";
const LEASES: &str = "crat_dispatcher_leases_total";
const USAGE: &str = "crat_dispatcher_usage_records_total";
const NODES_ONLINE: &str = "crat_dispatcher_nodes_online";

struct Mark {
    cpu: dispatcher::CpuSample,
    metrics: Metrics,
    heartbeats: u64,
    leases: u64,
    charged: u64,
}

fn mark(
    d: &DispatcherProcess,
    fleet: &Fleet,
    traffic: Option<&traffic::TrafficStats>,
) -> Result<Mark, LoadError> {
    Ok(Mark {
        cpu: d.cpu()?,
        metrics: d.metrics()?,
        heartbeats: fleet.stats.heartbeats_ok.get(),
        leases: traffic.map_or(0, |t| t.leases.get()),
        charged: traffic.map_or(0, |t| t.charged.get()),
    })
}

fn window(a: &Mark, b: &Mark) -> Window {
    let seconds = b.cpu.at.duration_since(a.cpu.at).as_secs_f64().max(1e-9);
    let delta = |name: &str, label: Option<&str>| {
        (b.metrics.sum(name, label) - a.metrics.sum(name, label)) / seconds
    };
    Window {
        seconds,
        cpu_cores: b.cpu.cores_since(&a.cpu),
        ledger_calls_per_s: delta(LEDGER_CALLS, None),
        heartbeats_per_s: (b.heartbeats - a.heartbeats) as f64 / seconds,
        leases_per_s: (b.leases - a.leases) as f64 / seconds,
        charges_per_s: (b.charged - a.charged) as f64 / seconds,
        leases_per_s_metric: delta(LEASES, None),
        charges_per_s_metric: delta(USAGE, Some("state=\"charged\"")),
        latencies: Vec::new(),
    }
}

/// Runs one load test: starts the dispatcher, joins the nodes, measures a heartbeat window,
/// then (with `traffic_s > 0`) a lease-and-usage window, and stops everything.
pub async fn run(config: &LoadConfig) -> Result<Report, LoadError> {
    if !config.bin.is_file() {
        return Err(LoadError::Config(format!(
            "no crat binary at {} (build it: cargo build --release -p crat-cli, or set CRAT_BIN)",
            config.bin.display()
        )));
    }
    let load_before = load_average();
    let temp;
    let root = match &config.dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::tempdir().map_err(|e| LoadError::io("a temporary directory", e))?;
            temp.path().to_path_buf()
        }
    };
    let setup = DispatcherSetup {
        bin: config.bin.clone(),
        data_dir: dispatcher::run_dir(&root, &config.ledger),
        ledger: config.ledger.clone(),
        heartbeat_interval_s: config.heartbeat_interval_s,
        log_filter: config.log_filter.clone(),
    };
    let allowance = 1_000_000_000_000u64;
    let mut keys = Vec::new();
    if config.traffic_s > 0 {
        let credits = allowance.saturating_mul(config.deployments as u64 + 1);
        dispatcher::grant(&setup, "load", credits)?;
        for _ in 0..config.keys.max(1) {
            keys.push(dispatcher::create_key(&setup, "load")?);
        }
    }
    let mut d = DispatcherProcess::start(&setup)?;
    // The standby: the same ledger and key, a data directory of its own.
    let mut standby = if config.standby {
        if config.ledger == LedgerChoice::Sqlite {
            return Err(LoadError::Config(
                "CRAT_LOAD_STANDBY needs a PostgreSQL ledger (CRAT_LOAD_LEDGER)".into(),
            ));
        }
        let standby_setup = DispatcherSetup {
            data_dir: setup.data_dir.join("standby"),
            ..setup.clone()
        };
        std::fs::create_dir_all(&standby_setup.data_dir)
            .map_err(|e| LoadError::io("creating the standby's data directory", e))?;
        std::fs::copy(
            setup.data_dir.join("dispatcher.key"),
            standby_setup.data_dir.join("dispatcher.key"),
        )
        .map_err(|e| LoadError::io("copying the dispatcher key", e))?;
        Some(DispatcherProcess::start(&standby_setup)?)
    } else {
        None
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_baseline_bytes = d.rss_bytes()?;
    let join_start = d.cpu()?;
    let fleet_config = FleetConfig {
        nodes: config.nodes,
        nodes_per_endpoint: config.nodes_per_endpoint,
        join_rate_per_s: config.join_rate_per_s,
        joins_concurrent_max: config.joins_concurrent_max,
        memory_available_min_bytes: config.memory_floor_mib.saturating_mul(1 << 20),
    };
    let mut fleet = Fleet::start(&fleet_config, d.addr, d.id)?;
    let join_timeout = Duration::from_secs_f64(
        config.nodes as f64 / f64::from(config.join_rate_per_s.max(1)) * 1.5 + 120.0,
    );
    let started = Instant::now();
    fleet.joined(join_timeout, config.join_rate_per_s).await;
    let join_s = started.elapsed().as_secs_f64();
    let join_cpu_cores = d.cpu()?.cores_since(&join_start);
    if !d.alive() {
        return Err(LoadError::Dispatcher(
            "the dispatcher exited while nodes joined (see dispatcher.log)".into(),
        ));
    }
    // One interval for the last joiners' first heartbeats, so every node heartbeats in the
    // window.
    tokio::time::sleep(Duration::from_secs(config.heartbeat_interval_s + 2)).await;
    fleet.stats.heartbeat.reset();
    let a = mark(&d, &fleet, None)?;
    tokio::time::sleep(Duration::from_secs(config.measure_s)).await;
    let b = mark(&d, &fleet, None)?;
    let rss_joined_bytes = d.rss_bytes()?;
    let harness_rss_bytes = dispatcher::self_rss_bytes();
    let mut heartbeats = window(&a, &b);
    heartbeats
        .latencies
        .push(("heartbeat".into(), fleet.stats.heartbeat.summary()));
    let mut traffic_window = None;
    let mut traffic_stats = None;
    let mut traffic_error = None;
    let mut standby_cpu_cores = None;
    let traffic = if config.traffic_s > 0 {
        let setup = Traffic::setup(
            TrafficConfig {
                keys,
                deployments: config.deployments,
                concurrent: config.concurrent,
                tasks_per_lease: config.tasks_per_lease,
                input_bytes: config.input_bytes,
                allowance_per_deployment: allowance,
            },
            standby.as_ref().map_or(d.addr, |s| s.addr),
            d.id,
            &fleet.nodes,
        )
        .await;
        match setup {
            Ok(t) => Some(t),
            Err(e) => {
                traffic_error = Some(format!("setting up clients and deployments: {e}"));
                None
            }
        }
    } else {
        None
    };
    if let Some(traffic) = traffic {
        fleet.stats.heartbeat.reset();
        fleet.stats.usage.reset();
        let a = mark(&d, &fleet, Some(&traffic.stats))?;
        let standby_a = standby.as_ref().map(|s| s.cpu()).transpose()?;
        traffic
            .run(
                Duration::from_secs(config.traffic_s),
                Arc::clone(&fleet.stats),
            )
            .await;
        let b = mark(&d, &fleet, Some(&traffic.stats))?;
        if let (Some(s), Some(before)) = (&standby, standby_a) {
            standby_cpu_cores = Some(s.cpu()?.cores_since(&before));
        }
        let mut w = window(&a, &b);
        w.latencies = vec![
            ("lease".into(), traffic.stats.lease.summary()),
            ("usage report".into(), fleet.stats.usage.summary()),
            ("heartbeat".into(), fleet.stats.heartbeat.summary()),
        ];
        traffic_window = Some(w);
        traffic_stats = Some(traffic.stats.clone());
    }
    let end = d.metrics()?;
    let s = &fleet.stats;
    let mut errors = s.errors();
    if let Some(t) = &traffic_stats {
        errors.extend(t.errors());
    }
    let report = Report {
        ledger: config.ledger.name().into(),
        nodes: config.nodes,
        registered: s.registered.get(),
        register_refused: s.register_refused.get(),
        connect_failed: s.connect_failed.get(),
        join_s,
        join_cpu_cores,
        register_latency: s.register.summary(),
        endpoints: fleet.endpoints(),
        join_stopped: s.join_stopped.lock().clone(),
        harness_rss_bytes,
        rss_baseline_bytes,
        rss_joined_bytes,
        heartbeats,
        traffic: traffic_window,
        standby_cpu_cores,
        traffic_error,
        heartbeats_refused: s.heartbeats_refused.get(),
        heartbeats_failed: s.heartbeats_failed.get(),
        connections_lost: s.connections_lost.get(),
        challenges: (s.challenges_committed.get(), s.challenges_opened.get()),
        nodes_online: end.sum(NODES_ONLINE, None),
        not_charged: traffic_stats
            .as_ref()
            .map_or((0, 0), |t| (t.held.get(), t.duplicates.get())),
        load_before,
        load_after: String::new(),
        errors,
    };
    fleet.stop();
    if let Some(s) = &mut standby {
        s.stop();
    }
    d.stop();
    Ok(Report {
        load_after: load_average(),
        ..report
    })
}
