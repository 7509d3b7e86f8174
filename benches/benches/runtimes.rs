//! Issue 16, "Node operators": what `crat node` serves with when the operator sets nothing,
//! against ONNX Runtime set by hand and against tract, on the PaddleOCR text-direction
//! classifier (`crates/backend/models/ch_ppocr_mobile_v2.0_cls_infer.onnx`, input `x`
//! 1×3×48×192 f32) with 64 tasks in flight. Goal: the default is ONNX Runtime, within 5 % of
//! the hand-set figure.
//!
//! Each run is a real network of separate processes of the release `crat` binary (`CRAT_BIN`)
//! on loopback: `crat dispatcher` (test-scale hardware proofs) and two `crat node`s, in one of
//! three configurations that differ only in the nodes' environment and flags:
//!
//! - `default`: `ORT_DYLIB_PATH` and every `CRAT_ONNXRUNTIME*` removed from the environment,
//!   no ONNX Runtime flag: what an operator gets. Each node keeps a persistent data directory
//!   (`$CRAT_RUNTIMES_DATA_DIR`, default `$CARGO_TARGET_DIR/crat-runtimes-bench`), so the first
//!   run installs ONNX Runtime from PyPI into it and later runs find that copy. The rest of
//!   the node's state (key, usage journal, model store) is deleted before each run: every run
//!   has a new dispatcher.
//! - `by hand`: the same, plus `ORT_DYLIB_PATH` naming a library (`$CRAT_RUNTIMES_ORT_DYLIB`,
//!   else `$ORT_DYLIB_PATH`, else `$HOME/.cache/cryptorat/onnxruntime-1.31.1/
//!   libonnxruntime.so.1.31.1`, where `scripts/install-onnxruntime.sh` puts it).
//! - `tract`: no ONNX Runtime to be found: the environment stripped as for `default`,
//!   `--onnxruntime-install false`, a fresh data directory, `PATH` an empty directory (no
//!   `python3` to ask for an `onnxruntime` package), `VIRTUAL_ENV` removed and `HOME` an empty
//!   directory (no virtual environment's or user's site-packages to look in). A system-wide
//!   package in `/usr/lib` or `/usr/local/lib` would still be found: the bench then fails.
//!
//! Each node's `backend:` line (and the `onnxruntime:` lines before it) is printed, and
//! checked: `ort/cpu` for `default` and `by hand` (the latter found through
//! `ORT_DYLIB_PATH`), `tract/cpu` for `tract`; anything else fails the bench. For `default`,
//! the bench says whether the library the node found is byte for byte the hand-set one
//! (blake3).
//!
//! The bench process uploads and deploys the model with the SDK (a per-request deployment,
//! both replicas ready), checks one answer against an in-process tract run (the network's
//! tolerance), runs a warm-up (`CRAT_RUNTIMES_WARMUP`, default 2,000 tasks), then
//! `CRAT_RUNTIMES_TASKS` tasks (default 15,000: 10 to 25 s per run on a 2-core machine) with
//! 64 in flight, and records tasks/s, p50 and p99. The configurations run interleaved, two rounds
//! (default, by hand, tract, default, by hand, tract); every run is printed, then the ratios
//! default / by hand and tract / by hand of each round and of both rounds together. The
//! 1-minute load average is printed before and at the end of every run, and the cores used
//! while measuring by this network (the bench and its `crat` processes) and by every other
//! process (from `/proc/stat` and `/proc/<pid>/stat`): on a shared machine, read the figures
//! with them. (The load average counts this network's own runnable threads too: ONNX
//! Runtime's spinning intra-op threads raise it well above the cores the machine has.)
//!
//! `CRAT_BIN=$CARGO_TARGET_DIR/release/crat cargo bench -p crat-benches --bench runtimes`;
//! see `benches/compare/README.md`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crat_backend::InferenceBackend;
use crat_backend::tract::TractBackend;
use crat_benches::procs::{
    CpuSample, Dispatcher, Proc, cores, deploy_ready, free_port, load_1m, machine, node_command,
};
use crat_core::tensor::{NamedTensor, Tensor};
use crat_core::verify::{Tolerance, tensors_agree};
use crat_sdk::Deployment;
use crat_transport::quic::QuicTransport;

const PADDLE: &[u8] =
    include_bytes!("../../crates/backend/models/ch_ppocr_mobile_v2.0_cls_infer.onnx");
const IN_FLIGHT: usize = 64;
const NODES: usize = 2;
/// Tasks per measured run unless `CRAT_RUNTIMES_TASKS` says otherwise.
const TASKS_DEFAULT: usize = 15_000;
/// Warm-up tasks before each measured run unless `CRAT_RUNTIMES_WARMUP` says otherwise.
const WARMUP_DEFAULT: usize = 2_000;
/// How long a process may take to print what it prints when started (a dispatcher's
/// "listening on", a node's "serving on").
const START_S_MAX: u64 = 60;
/// How long a node may take to print its `backend:` line: the first `default` run downloads
/// ONNX Runtime from PyPI (a ~24 MB wheel).
const BACKEND_S_MAX: u64 = 900;
/// How long the deployment may take to have both replicas ready (nodes register and pass
/// their test-scale challenges first).
const READY_S_MAX: u64 = 180;
/// Credits granted to the bench's account, and the deployment's allowance.
const CREDITS: u64 = 1 << 50;
const ALLOWANCE: u64 = 1 << 48;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Config {
    Default,
    ByHand,
    Tract,
}

impl Config {
    const ALL: [Config; 3] = [Config::Default, Config::ByHand, Config::Tract];

    fn name(self) -> &'static str {
        match self {
            Config::Default => "default",
            Config::ByHand => "by hand",
            Config::Tract => "tract",
        }
    }

    /// The `backend:` line its nodes must print.
    fn backend(self) -> &'static str {
        match self {
            Config::Default | Config::ByHand => "ort/cpu",
            Config::Tract => "tract/cpu",
        }
    }
}

/// What the environment says.
struct Settings {
    crat: PathBuf,
    ort_dylib: PathBuf,
    /// The `default` nodes' persistent data directories live under it.
    data_root: PathBuf,
    tasks: usize,
    warmup: usize,
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn env_count(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a count")),
        _ => default,
    }
}

impl Settings {
    fn from_env() -> Self {
        let crat = env_path("CRAT_BIN").unwrap_or_else(|| {
            panic!(
                "CRAT_BIN must name the release crat binary: build it with `cargo build --release \
                 -p crat-cli --bin crat` and set CRAT_BIN=$CARGO_TARGET_DIR/release/crat \
                 (target/release/crat without CARGO_TARGET_DIR)"
            )
        });
        assert!(
            crat.is_file(),
            "CRAT_BIN={} is not a file: build it with `cargo build --release -p crat-cli --bin \
             crat`",
            crat.display()
        );
        let ort_dylib = env_path("CRAT_RUNTIMES_ORT_DYLIB")
            .or_else(|| env_path("ORT_DYLIB_PATH"))
            .or_else(|| {
                env_path("HOME")
                    .map(|h| h.join(".cache/cryptorat/onnxruntime-1.31.1/libonnxruntime.so.1.31.1"))
            })
            .expect("set CRAT_RUNTIMES_ORT_DYLIB to the ONNX Runtime library for `by hand`");
        assert!(
            ort_dylib.is_file(),
            "the ONNX Runtime library for `by hand`, {}, is not a file: set \
             CRAT_RUNTIMES_ORT_DYLIB (or ORT_DYLIB_PATH) to libonnxruntime.so.1.31.1, e.g. \
             `scripts/install-onnxruntime.sh` prints one",
            ort_dylib.display()
        );
        let data_root = env_path("CRAT_RUNTIMES_DATA_DIR").unwrap_or_else(|| {
            env_path("CARGO_TARGET_DIR")
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
                .join("crat-runtimes-bench")
        });
        Self {
            crat,
            ort_dylib,
            data_root,
            tasks: env_count("CRAT_RUNTIMES_TASKS", TASKS_DEFAULT),
            warmup: env_count("CRAT_RUNTIMES_WARMUP", WARMUP_DEFAULT),
        }
    }
}

/// The blake3 of a file.
fn hash(path: &Path) -> blake3::Hash {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    blake3::hash(&bytes)
}

/// Deletes everything in a `default` node's persistent data directory but its ONNX Runtime
/// (`onnxruntime/`): the key, usage journal and model store belong to an earlier network.
fn reset_persistent(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() == *"onnxruntime" {
            continue;
        }
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }
}

struct Summary {
    tps: f64,
    p50: Duration,
    p99: Duration,
    /// Cores this network (the bench and its `crat` processes) used while measured.
    cores: f64,
}

impl Summary {
    /// Tasks per second per core this network used: less sensitive than tasks/s to what
    /// other processes take of a shared machine.
    fn per_core(&self) -> f64 {
        self.tps / self.cores.max(f64::MIN_POSITIVE)
    }
}

fn summarize(latencies: Vec<Duration>, took: Duration) -> Summary {
    let s = crat_benches::http::Summary::of(latencies, took);
    Summary {
        tps: s.rps,
        p50: s.p50,
        p99: s.p99,
        cores: 0.0,
    }
}

fn input() -> NamedTensor {
    let shape = [1u64, 3, 48, 192];
    let n: u64 = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|i| (i % 255) as f32 / 255.0).collect();
    NamedTensor::new("x", Tensor::from_slice(&shape, &values).unwrap())
}

/// `tasks` inferences, `IN_FLIGHT` at a time.
async fn load(d: &Deployment<QuicTransport>, tasks: usize) -> Summary {
    let next = Arc::new(AtomicUsize::new(0));
    let x = input();
    let started = Instant::now();
    let mut workers = Vec::with_capacity(IN_FLIGHT);
    for _ in 0..IN_FLIGHT {
        let (next, d, x) = (next.clone(), d.clone(), x.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < tasks {
                let t = Instant::now();
                d.infer(vec![x.clone()])
                    .await
                    .unwrap_or_else(|e| panic!("a task failed: {e}"));
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::with_capacity(tasks);
    for w in workers {
        all.extend(w.await.unwrap());
    }
    summarize(all, started.elapsed())
}

/// One measured run.
struct Run {
    round: usize,
    config: Config,
    summary: Summary,
    load_before: String,
    load_after: String,
    /// Cores used while measured: this network's processes, and everything else.
    cpu: (f64, f64),
    took: Duration,
}

/// Starts a network in `config`, measures, stops it.
async fn run(settings: &Settings, config: Config, round: usize) -> Run {
    let started = Instant::now();
    let load_before = load_1m();
    println!(
        "\n== round {round}, {} (load average {load_before}) ==",
        config.name()
    );
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let crat = settings.crat.as_path();

    // The dispatcher, the same in every configuration.
    let Dispatcher {
        proc: mut dispatcher,
        port,
        addr,
        id,
        key,
    } = Dispatcher::start(
        crat,
        dir.path(),
        &logs,
        &settings.ort_dylib,
        CREDITS,
        Duration::from_secs(START_S_MAX),
    )
    .await;

    // The nodes.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let mut taken = vec![port];
    let mut nodes = Vec::new();
    for i in 0..NODES {
        let node_port = free_port(&taken);
        taken.push(node_port);
        let data_dir = match config {
            Config::Default => {
                let dir = settings.data_root.join(format!("default-node{i}"));
                reset_persistent(&dir);
                dir
            }
            Config::ByHand | Config::Tract => dir.path().join(format!("node{i}")),
        };
        let mut command = node_command(crat, &addr, &id, node_port, &data_dir);
        match config {
            Config::Default => {}
            Config::ByHand => {
                command.env("ORT_DYLIB_PATH", &settings.ort_dylib);
            }
            Config::Tract => {
                command
                    .args(["--onnxruntime-install", "false"])
                    .env("PATH", &empty)
                    .env("HOME", &empty)
                    .env_remove("VIRTUAL_ENV");
            }
        }
        nodes.push(Proc::spawn(format!("node{i}"), command, &logs));
    }
    for node in &mut nodes {
        let backend = node
            .wait_for("backend: ", false, Duration::from_secs(BACKEND_S_MAX))
            .await;
        let output = node.output();
        for l in output.lines().filter(|l| {
            (l.starts_with("onnxruntime: ") && !l.contains(": downloading "))
                || l.starts_with("no ONNX Runtime")
                || l.starts_with("passed over")
        }) {
            println!("  {}: {l}", node.name);
        }
        println!("  {}: {backend}", node.name);
        let got = backend.trim_start_matches("backend: ").trim();
        assert_eq!(
            got,
            config.backend(),
            "{}'s nodes must serve with {}, {} printed {backend:?}:\n{}",
            config.name(),
            config.backend(),
            node.name,
            node.tail()
        );
        let found = output
            .lines()
            .find(|l| l.starts_with("onnxruntime: /"))
            .unwrap_or("");
        match config {
            Config::Default => {
                assert!(
                    !found.contains("(ORT_DYLIB_PATH,") && !found.contains("(configured path,"),
                    "default found ONNX Runtime where it was not to look: {found:?}"
                );
                let path = found
                    .trim_start_matches("onnxruntime: ")
                    .rsplit_once(" (")
                    .map(|(p, _)| PathBuf::from(p))
                    .unwrap_or_else(|| panic!("no library path in {found:?}"));
                println!(
                    "  {}: {}",
                    node.name,
                    if hash(&path) == hash(&settings.ort_dylib) {
                        "the same bytes as the hand-set library (blake3)"
                    } else {
                        "NOT the same bytes as the hand-set library (blake3)"
                    }
                );
            }
            Config::ByHand => assert!(
                found.contains("(ORT_DYLIB_PATH,"),
                "by hand did not take ORT_DYLIB_PATH: {found:?}"
            ),
            Config::Tract => assert!(
                output.lines().any(|l| l.starts_with("no ONNX Runtime: ")),
                "tract printed no reason:\n{output}"
            ),
        }
        node.wait_for(" serving on ", true, Duration::from_secs(START_S_MAX))
            .await;
    }

    // The deployment, both replicas ready.
    let client = crat_sdk::connect(format!("127.0.0.1:{port}").parse().unwrap(), id, key)
        .await
        .unwrap();
    let mut procs: Vec<&mut Proc> = nodes.iter_mut().chain([&mut dispatcher]).collect();
    let deployment = deploy_ready(
        &client,
        PADDLE,
        1 << 20,
        ALLOWANCE,
        NODES,
        &mut procs,
        Duration::from_secs(READY_S_MAX),
    )
    .await;

    // One answer against tract in this process.
    let x = input();
    let got = deployment.infer(vec![x.clone()]).await.unwrap();
    let want = TractBackend::new()
        .load(PADDLE)
        .unwrap()
        .run(&[x.tensor])
        .unwrap();
    assert_eq!(got.len(), want.len());
    let mut apart = 0f32;
    for (g, w) in got.iter().zip(&want) {
        tensors_agree(&g.name, &g.tensor, w, &Tolerance::default()).unwrap();
        for (a, b) in g
            .tensor
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .zip(w.to_vec::<f32>().unwrap())
        {
            apart = apart.max((a - b).abs());
        }
    }
    println!("  answer checked against tract in-process: at most {apart:e} apart");

    load(&deployment, settings.warmup).await;
    let pids: Vec<u32> = nodes
        .iter()
        .chain([&dispatcher])
        .map(|p| p.child.id())
        .collect();
    let cpu_start = CpuSample::take(&pids);
    let mut summary = load(&deployment, settings.tasks).await;
    let cpu = cpu_start.cores(CpuSample::take(&pids), cores());
    summary.cores = cpu.0;
    let load_after = load_1m();
    print_run(round, config, &summary);
    println!(
        "  load average {load_before} before, {load_after} at the end; CPU while measured: \
         {:.2} cores this network (bench, dispatcher, nodes), {:.2} cores other processes, of {}",
        cpu.0,
        cpu.1,
        cores()
    );

    for node in &mut nodes {
        node.stop().await;
    }
    dispatcher.stop().await;
    Run {
        round,
        config,
        summary,
        load_before,
        load_after,
        cpu,
        took: started.elapsed(),
    }
}

fn print_run(round: usize, config: Config, s: &Summary) {
    println!(
        "round {round} {:>8} ({:>9}): {:>8.1} tasks/s  p50 {:>7.2} ms  p99 {:>7.2} ms  \
         {:>6.1} tasks/s per core",
        config.name(),
        config.backend(),
        s.tps,
        s.p50.as_secs_f64() * 1e3,
        s.p99.as_secs_f64() * 1e3,
        s.per_core()
    );
}

fn print_ratio(round: usize, name: &str, a: &Summary, b: &Summary) {
    println!(
        "round {round} {name:>20}: {:>6.3}x tasks/s  p50 {:>6.3}x  p99 {:>6.3}x  {:>6.3}x \
         tasks/s per core",
        a.tps / b.tps,
        a.p50.as_secs_f64() / b.p50.as_secs_f64(),
        a.p99.as_secs_f64() / b.p99.as_secs_f64(),
        a.per_core() / b.per_core()
    );
}

fn main() {
    let settings = Settings::from_env();
    let cores = cores();
    println!(
        "PaddleOCR classifier (x 1x3x48x192 f32), {IN_FLIGHT} in flight, {} tasks per run after \
         {} warm-up, {NODES} `crat node` processes and a `crat dispatcher` on loopback",
        settings.tasks, settings.warmup
    );
    println!("crat: {}", settings.crat.display());
    println!("by hand: ORT_DYLIB_PATH={}", settings.ort_dylib.display());
    println!(
        "default: persistent node data directories under {}",
        settings.data_root.display()
    );
    println!("{cores} cores ({}); load average {}", machine(), load_1m());
    // Ignored by the bench's own stripping: shown so that a reader sees what the shell had.
    for name in [
        "ORT_DYLIB_PATH",
        "CRAT_ONNXRUNTIME",
        "CRAT_ONNXRUNTIME_INSTALL",
    ] {
        if let Some(v) = std::env::var_os(name) {
            println!(
                "(the shell's {name}={} is removed from the nodes' environment)",
                v.to_string_lossy()
            );
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let runs: Vec<Run> = rt.block_on(async {
        let mut runs = Vec::new();
        for round in 1..=2 {
            for config in Config::ALL {
                runs.push(run(&settings, config, round).await);
            }
        }
        runs
    });

    println!(
        "\n== results: PaddleOCR classifier, {IN_FLIGHT} in flight, {} tasks per run ==",
        settings.tasks
    );
    for r in &runs {
        print_run(r.round, r.config, &r.summary);
        println!(
            "        load average {} before, {} at the end; cores this network / others {:.2} / \
             {:.2}; {:.0} s with setup and warm-up",
            r.load_before,
            r.load_after,
            r.cpu.0,
            r.cpu.1,
            r.took.as_secs_f64()
        );
    }
    let of = |round: usize, config: Config| {
        &runs
            .iter()
            .find(|r| r.round == round && r.config == config)
            .unwrap()
            .summary
    };
    let mut worst = f64::INFINITY;
    for round in 1..=2 {
        let hand = of(round, Config::ByHand);
        let default = of(round, Config::Default);
        print_ratio(round, "default / by hand", default, hand);
        print_ratio(round, "tract / by hand", of(round, Config::Tract), hand);
        worst = worst.min(default.tps / hand.tps);
    }
    let mean = |config: Config| {
        let of: Vec<&Summary> = (1..=2).map(|round| of(round, config)).collect();
        let tps = of.iter().map(|s| s.tps).sum::<f64>() / 2.0;
        let p50 = of.iter().map(|s| s.p50).sum::<Duration>() / 2;
        let p99 = of.iter().map(|s| s.p99).sum::<Duration>() / 2;
        let cores = of.iter().map(|s| s.cores).sum::<f64>() / 2.0;
        Summary {
            tps,
            p50,
            p99,
            cores,
        }
    };
    let (hand, default) = (mean(Config::ByHand), mean(Config::Default));
    print_ratio(0, "default / by hand", &default, &hand);
    print_ratio(0, "tract / by hand", &mean(Config::Tract), &hand);
    println!(
        "(round 0: the means of both rounds' tasks/s, p50, p99 and cores; tasks/s per core: \
         per core this network used while measured, the bench and its crat processes)"
    );
    println!(
        "goal (default is ONNX Runtime, within 5 % of by hand in tasks/s): default served with \
         ort/cpu in every run; default / by hand {:.3} over both rounds, {worst:.3} in the \
         lower round -> {}",
        default.tps / hand.tps,
        match (default.tps / hand.tps >= 0.95, worst >= 0.95) {
            (true, true) => "met in each round",
            (true, false) => "met over both rounds, not in one of them",
            (false, _) => "NOT met",
        }
    );
}
