//! Issue 19: CryptoRAT against what a data scientist would deploy instead, on every kind of
//! model. `benches/compare/run.sh` sets everything up and runs it; `benches/compare/README.md`
//! says what it measures and records the figures.
//!
//! For each model, in one run: FastAPI + onnxruntime servers (`benches/compare/
//! fastapi_server.py`, uvicorn with 2 workers, separate processes), one per
//! `intra_op_num_threads` setting (`FastAPI i0`: onnxruntime's default, a thread per core in
//! each worker; `FastAPI i1`: one thread per worker, faster on a small machine), and a
//! CryptoRAT network of separate processes of the release `crat` binary (`CRAT_BIN`) on
//! loopback: `crat dispatcher`, two `crat node`s serving with ONNX Runtime and `crat gateway`
//! in front of the dispatcher, in their default configuration but for the dispatcher's
//! test-scale hardware proofs and 1 s heartbeats (nodes join within seconds). The bench
//! process uploads and deploys the model with the SDK (per request, both replicas ready),
//! checks that each FastAPI's answer is the gateway's (the same JSON header byte for byte, the
//! outputs within the network's tolerance), warms every side up, then measures every side
//! with the same concurrency (`CRAT_COMPARE_IN_FLIGHT`, default 64, then one in flight), one
//! side after another, two rounds, each run once the machine is quiet (at most 0.1 cores busy
//! over 1.2 s, longer than the nodes' usage interval: the network has taken the previous
//! run's usage):
//!
//! - `crat SDK`: `Deployment::infer` from this process (QUIC to the nodes);
//! - `crat gateway`: KServe v2 binary requests over HTTP/1.1 keep-alive connections to `crat
//!   gateway`;
//! - `FastAPI iN`: the same request bytes (only `Host` differs) over as many connections,
//!   half of them served by each worker (`http::balanced_connections`: the kernel alone may
//!   give one worker all of them, as it did in a run here).
//!
//! It prints requests (tasks)/s, p50 and p99 of each run with the cores this bench's
//! processes and every other process used while it ran (and so the CPU time per request),
//! the ratios to each FastAPI of both rounds' means, and the goals, each against the
//! FastAPI that does best on what the goal measures.
//!
//! Settings: `CRAT_BIN` (required), `CRAT_COMPARE_PYTHON` (required: a python with
//! `benches/compare/requirements.txt`), `CRAT_COMPARE_DETECTOR` (the PP-OCRv4 detector's
//! `.onnx`, `run.sh` extracts it from its PyPI package; required when `det` is measured),
//! `CRAT_COMPARE_ORT_DYLIB` (the nodes' ONNX Runtime; default `$ORT_DYLIB_PATH`, else where
//! `scripts/install-onnxruntime.sh` puts it), `CRAT_COMPARE_MODELS` (default `tiny,cls,det`),
//! `CRAT_COMPARE_SCALE` (multiplies every task count; default 1),
//! `CRAT_COMPARE_INTRA_OP_THREADS` (the FastAPI servers; default `0,1`),
//! `CRAT_COMPARE_IN_FLIGHT` (default 64), `CRAT_COMPARE_ONLY` (one side's name, e.g.
//! `crat SDK`: only it is measured, for a profiler to attach to; no ratios),
//! `CRAT_COMPARE_LATENCIES` (a folder: each measured run's requests, when each was sent and
//! how long it took, go to `{model}-{side}-{in flight}-round{n}.txt` there, e.g.
//! `tiny-crat-sdk-1-round2.txt`), `CRAT_COMPARE_DEVICE` (`cpu`, the default, or `cuda`: the
//! nodes must select ONNX Runtime with the CUDA provider, `ort/cuda`, so the library of
//! `CRAT_COMPARE_ORT_DYLIB` must be onnxruntime-gpu's with its CUDA libraries loadable, and
//! each FastAPI runs onnxruntime-gpu's CUDA provider and refuses to start without it;
//! `CRAT_COMPARE_INTRA_OP_THREADS` then defaults to `0`; `benches/compare/gpu/` runs it on a
//! lent GPU machine), `CRAT_BENCHES_DIR` (the repository's `benches/` folder, where the models
//! and `fastapi_server.py` are read from; default: where the bench was built).

#![allow(missing_docs, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crat_benches::benches_dir;
use crat_benches::http::{
    Conn, FastApi, Provider, Summary, balanced_connections, check_same_answer, connections,
    infer_request, load_samples, write_samples,
};
use crat_benches::procs::{
    CpuSample, Dispatcher, Proc, children, cores, deploy_ready, free_port, load_1m, machine,
    node_command, settle, stripped,
};
use crat_core::id::SdkKey;
use crat_core::tensor::{NamedTensor, Tensor};
use crat_sdk::Deployment;
use crat_transport::quic::QuicTransport;

const NODES: usize = 2;
/// Before each measured run the machine settles: at most [`SETTLED_CORES_MAX`] cores busy
/// (every process: the previous run's network digesting its usage, FastAPI's workers) over
/// this window, longer than the nodes' usage interval, or [`SETTLE_WAIT_MAX`] waited.
const SETTLE_WINDOW: Duration = Duration::from_millis(1_200);
const SETTLED_CORES_MAX: f64 = 0.1;
const SETTLE_WAIT_MAX: Duration = Duration::from_secs(15);
/// How long a process may take to print what it prints when started.
const START_S_MAX: u64 = 60;
/// How long the deployment may take to have both replicas ready.
const READY_S_MAX: u64 = 180;
const CREDITS: u64 = 1 << 50;
const ALLOWANCE: u64 = 1 << 48;

/// One model of the comparison.
struct Model {
    /// Its name in URLs and in `CRAT_COMPARE_MODELS`.
    name: &'static str,
    what: &'static str,
    path: PathBuf,
    input: &'static str,
    shape: Vec<u64>,
    output: &'static str,
    /// Measured tasks per run with many in flight, and with one.
    tasks: usize,
    tasks_one: usize,
}

impl Model {
    fn all(detector: Option<PathBuf>) -> Vec<Model> {
        let models = benches_dir().join("../crates/backend/models");
        vec![
            Model {
                name: "tiny",
                what: "tiny CNN (overhead-bound), input 1x1x28x28",
                path: models.join("tiny_cnn.onnx"),
                input: "input",
                shape: vec![1, 1, 28, 28],
                output: "probs",
                tasks: 20_000,
                tasks_one: 4_000,
            },
            Model {
                name: "cls",
                what: "PaddleOCR text-direction classifier (compute-bound), input 1x3x48x192",
                path: models.join("ch_ppocr_mobile_v2.0_cls_infer.onnx"),
                input: "x",
                shape: vec![1, 3, 48, 192],
                output: "save_infer_model/scale_0.tmp_1",
                tasks: 8_000,
                tasks_one: 2_000,
            },
            Model {
                name: "det",
                what: "PaddleOCR PP-OCRv4 text detector (rapidocr-onnxruntime 1.4.4), input \
                       1x3x320x320",
                path: detector.unwrap_or_default(),
                input: "x",
                shape: vec![1, 3, 320, 320],
                output: "sigmoid_0.tmp_0",
                tasks: 600,
                tasks_one: 100,
            },
        ]
    }

    /// The input: the same values on every side.
    fn data(&self) -> Tensor {
        let n: u64 = self.shape.iter().product();
        let values: Vec<f32> = (0..n).map(|i| (i % 255) as f32 / 255.0).collect();
        Tensor::from_slice(&self.shape, &values).unwrap()
    }
}

struct Settings {
    crat: PathBuf,
    python: PathBuf,
    ort_dylib: PathBuf,
    models: Vec<Model>,
    scale: f64,
    /// Measure only the side of this name (`CRAT_COMPARE_ONLY`, e.g. `crat SDK`): to profile
    /// it; nothing is compared.
    only: Option<String>,
    /// Where both sides run the models (`CRAT_COMPARE_DEVICE`): the nodes must select ONNX
    /// Runtime on it (`ort/cpu`, `ort/cuda`) and FastAPI runs onnxruntime's provider for it.
    device: Provider,
    /// FastAPI's `intra_op_num_threads`: one server per value.
    intra_op_threads: Vec<u32>,
    in_flight: usize,
    /// Where each measured run's requests are written (`CRAT_COMPARE_LATENCIES`, a folder):
    /// `http::write_samples`, one file per run.
    latencies: Option<PathBuf>,
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn env_parse<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        _ => default,
    }
}

impl Settings {
    fn from_env() -> Self {
        let how = "run benches/compare/run.sh, which sets it up";
        let crat = env_path("CRAT_BIN")
            .unwrap_or_else(|| panic!("CRAT_BIN must name the release crat binary: {how}"));
        assert!(crat.is_file(), "CRAT_BIN={} is not a file", crat.display());
        let python = env_path("CRAT_COMPARE_PYTHON").unwrap_or_else(|| {
            panic!(
                "CRAT_COMPARE_PYTHON must name a python with benches/compare/requirements.txt: \
                 {how}"
            )
        });
        let ort_dylib = env_path("CRAT_COMPARE_ORT_DYLIB")
            .or_else(|| env_path("ORT_DYLIB_PATH"))
            .or_else(|| {
                env_path("HOME")
                    .map(|h| h.join(".cache/cryptorat/onnxruntime-1.31.1/libonnxruntime.so.1.31.1"))
            })
            .unwrap();
        assert!(
            ort_dylib.is_file(),
            "the nodes' ONNX Runtime, {}, is not a file: set CRAT_COMPARE_ORT_DYLIB (or \
             ORT_DYLIB_PATH); scripts/install-onnxruntime.sh prints one",
            ort_dylib.display()
        );
        let wanted = std::env::var("CRAT_COMPARE_MODELS")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "tiny,cls,det".into());
        let wanted: Vec<&str> = wanted.split(',').map(str::trim).collect();
        let all = Model::all(env_path("CRAT_COMPARE_DETECTOR"));
        for w in &wanted {
            assert!(
                all.iter().any(|m| m.name == *w),
                "CRAT_COMPARE_MODELS names {w:?}: the models are tiny, cls and det"
            );
        }
        let models: Vec<Model> = all
            .into_iter()
            .filter(|m| wanted.contains(&m.name))
            .collect();
        for m in &models {
            assert!(
                m.path.is_file(),
                "{}: {} is not a file{}",
                m.name,
                m.path.display(),
                if m.name == "det" {
                    " (set CRAT_COMPARE_DETECTOR: benches/compare/run.sh extracts it from the \
                     rapidocr-onnxruntime wheel)"
                } else {
                    ""
                }
            );
        }
        let device = match std::env::var("CRAT_COMPARE_DEVICE").as_deref() {
            Err(_) | Ok("" | "cpu") => Provider::Cpu,
            Ok("cuda") => Provider::Cuda,
            Ok(other) => panic!("CRAT_COMPARE_DEVICE={other:?}: cpu (the default) or cuda"),
        };
        Self {
            crat,
            python,
            ort_dylib,
            models,
            device,
            scale: env_parse("CRAT_COMPARE_SCALE", 1.0),
            only: std::env::var("CRAT_COMPARE_ONLY")
                .ok()
                .filter(|v| !v.is_empty()),
            intra_op_threads: std::env::var("CRAT_COMPARE_INTRA_OP_THREADS")
                .ok()
                .filter(|v| !v.is_empty())
                // On a GPU the threads only run what the CUDA provider leaves to the CPU: one
                // server, with onnxruntime's default.
                .unwrap_or_else(|| match device {
                    Provider::Cpu => "0,1".into(),
                    Provider::Cuda => "0".into(),
                })
                .split(',')
                .map(|t| {
                    t.trim().parse().unwrap_or_else(|_| {
                        panic!("CRAT_COMPARE_INTRA_OP_THREADS: {t:?} is not a thread count")
                    })
                })
                .collect(),
            in_flight: env_parse("CRAT_COMPARE_IN_FLIGHT", 64),
            latencies: env_path("CRAT_COMPARE_LATENCIES").inspect(|dir| {
                std::fs::create_dir_all(dir).unwrap_or_else(|e| {
                    panic!("CRAT_COMPARE_LATENCIES: cannot make {}: {e}", dir.display())
                })
            }),
        }
    }

    fn tasks(&self, n: usize) -> usize {
        ((n as f64 * self.scale).round() as usize).max(10)
    }
}

/// A network of `crat` processes serving one deployment of the model, with `crat gateway` in
/// front: everything stops when dropped.
struct Network {
    dispatcher: Proc,
    nodes: Vec<Proc>,
    gateway: Proc,
    gateway_addr: SocketAddr,
    deployment: Deployment<QuicTransport>,
    key: SdkKey,
    _dir: tempfile::TempDir,
}

impl Network {
    async fn start(settings: &Settings, model: &Model, bytes: &[u8]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let crat = settings.crat.as_path();
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

        let mut taken = vec![port];
        let mut nodes = Vec::new();
        for i in 0..NODES {
            let node_port = free_port(&taken);
            taken.push(node_port);
            let data_dir = dir.path().join(format!("node{i}"));
            let mut command = node_command(crat, &addr, &id, node_port, &data_dir);
            command.env("ORT_DYLIB_PATH", &settings.ort_dylib);
            nodes.push(Proc::spawn(format!("node{i}"), command, &logs));
        }
        for node in &mut nodes {
            let backend = node
                .wait_for("backend: ", false, Duration::from_secs(START_S_MAX))
                .await;
            let wanted = format!("ort/{}", settings.device.name());
            assert_eq!(
                backend.trim_start_matches("backend: ").trim(),
                wanted,
                "{} must serve with ONNX Runtime on {} (CRAT_COMPARE_DEVICE):\n{}",
                node.name,
                settings.device.name(),
                node.tail()
            );
            node.wait_for(" serving on ", true, Duration::from_secs(START_S_MAX))
                .await;
        }

        let client = crat_sdk::connect(addr.parse().unwrap(), id, key.clone())
            .await
            .unwrap();
        let mut procs: Vec<&mut Proc> = nodes.iter_mut().chain([&mut dispatcher]).collect();
        let deployment = deploy_ready(
            &client,
            bytes,
            1 << 24,
            ALLOWANCE,
            NODES,
            &mut procs,
            Duration::from_secs(READY_S_MAX),
        )
        .await;

        let gateway_port = free_port(&taken);
        let gateway_config = dir.path().join("gateway.toml");
        std::fs::write(
            &gateway_config,
            format!(
                "[gateway]\nlisten = \"127.0.0.1:{gateway_port}\"\nmodels = {{ {} = \"{}\" }}\n\
                 [client]\ndispatcher = \"{addr}\"\ndispatcher_id = \"{id}\"\n",
                model.name,
                deployment.id()
            ),
        )
        .unwrap();
        let mut command = stripped(crat);
        command.arg("gateway").arg("--config").arg(&gateway_config);
        let mut gateway = Proc::spawn("gateway".into(), command, &logs);
        let line = gateway
            .wait_for(
                "serving the KServe v2 protocol on http://",
                false,
                Duration::from_secs(START_S_MAX),
            )
            .await;
        let gateway_addr: SocketAddr = line
            .trim_start_matches("serving the KServe v2 protocol on http://")
            .trim()
            .parse()
            .unwrap();
        Self {
            dispatcher,
            nodes,
            gateway,
            gateway_addr,
            deployment,
            key,
            _dir: dir,
        }
    }

    fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .chain([&self.dispatcher, &self.gateway])
            .map(|p| p.child.id())
            .collect()
    }

    async fn stop(mut self) {
        self.gateway.stop().await;
        for node in &mut self.nodes {
            node.stop().await;
        }
        self.dispatcher.stop().await;
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Sdk,
    Gateway,
    /// FastAPI with this `intra_op_num_threads` in each worker.
    FastApi(u32),
}

impl Side {
    fn name(self) -> String {
        match self {
            Side::Sdk => "crat SDK".into(),
            Side::Gateway => "crat gateway".into(),
            Side::FastApi(threads) => format!("FastAPI i{threads}"),
        }
    }
}

struct Run {
    model: &'static str,
    in_flight: usize,
    round: usize,
    side: Side,
    summary: Summary,
    /// Cores used while measured: the bench's processes (this one, the network, FastAPI),
    /// and everything else.
    cpu: (f64, f64),
}

/// The sides' means over both rounds.
fn mean(runs: &[&Run]) -> Summary {
    let n = runs.len() as u32;
    Summary {
        rps: runs.iter().map(|r| r.summary.rps).sum::<f64>() / f64::from(n),
        p50: runs.iter().map(|r| r.summary.p50).sum::<Duration>() / n,
        p99: runs.iter().map(|r| r.summary.p99).sum::<Duration>() / n,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn print_run(r: &Run) {
    println!(
        "{:>4} {:>2} in flight, round {}, {:>12}: {:>9.1} /s  p50 {:>8.3} ms  p99 {:>8.3} ms   \
         cores: ours {:.2} ({:.3} ms per request), others {:.2}",
        r.model,
        r.in_flight,
        r.round,
        r.side.name(),
        r.summary.rps,
        ms(r.summary.p50),
        ms(r.summary.p99),
        r.cpu.0,
        r.cpu.0 / r.summary.rps * 1e3,
        r.cpu.1
    );
}

fn ratio_line(label: &str, a: &Summary, b: &Summary) -> String {
    format!(
        "{label}: {:.2}x /s, p50 {:.2}x, p99 {:.2}x",
        a.rps / b.rps,
        a.p50.as_secs_f64() / b.p50.as_secs_f64(),
        a.p99.as_secs_f64() / b.p99.as_secs_f64()
    )
}

/// Everything of one model: the servers up, checked, warmed, measured.
async fn compare(settings: &Settings, model: &Model) -> Vec<Run> {
    println!(
        "\n== {}: {} ({}) ==",
        model.name,
        model.what,
        model.path.display()
    );
    let bytes = std::fs::read(&model.path).unwrap();
    let mut servers: Vec<FastApi> = settings
        .intra_op_threads
        .iter()
        .map(|&threads| {
            FastApi::start(
                &settings.python,
                &model.path,
                model.name,
                threads,
                settings.device,
            )
        })
        .collect();
    let net = Network::start(settings, model, &bytes).await;
    let mut pids = net.pids();
    for server in &mut servers {
        server.wait_ready().await;
        pids.push(server.pid());
        pids.extend(children(server.pid()));
    }

    let x = model.data();
    let key = net.key.to_string();
    let request = |addr| {
        infer_request(
            addr,
            &key,
            model.name,
            model.input,
            &model.shape,
            x.bytes(),
            model.output,
        )
    };
    let mut sides = vec![Side::Sdk, Side::Gateway];
    // Where each HTTP side is served, and its request bytes.
    let mut http = vec![(Side::Gateway, net.gateway_addr, request(net.gateway_addr))];
    for server in &servers {
        sides.push(Side::FastApi(server.intra_op_threads));
        http.push((
            Side::FastApi(server.intra_op_threads),
            server.addr,
            request(server.addr),
        ));
    }
    // For profiling one side: only it runs (no ratios then).
    if let Some(only) = &settings.only {
        sides.retain(|side| side.name() == *only);
        assert!(
            !sides.is_empty(),
            "CRAT_COMPARE_ONLY={only:?} names no side"
        );
    }
    let (_, gw_addr, gw_request) = &http[0];
    let from_gateway = Conn::open(*gw_addr, gw_request.clone())
        .await
        .exchange()
        .await;
    for (_, addr, request) in &http[1..] {
        let from_fastapi = Conn::open(*addr, request.clone()).await.exchange().await;
        println!("{}", check_same_answer(&from_fastapi, &from_gateway));
    }

    let sdk = |tasks: usize, in_flight: usize| {
        let d = net.deployment.clone();
        let x = NamedTensor::new(model.input, x.clone());
        async move {
            let (summary, _, samples) = load_samples(tasks, vec![(); in_flight], move |()| {
                let (d, x) = (d.clone(), x.clone());
                async move {
                    d.infer(vec![x])
                        .await
                        .unwrap_or_else(|e| panic!("a task failed: {e}"));
                }
            })
            .await;
            (summary, samples)
        }
    };
    // Each HTTP run opens its connections first (untimed): a server may close idle
    // keep-alive connections between runs (uvicorn after 5 s).
    // FastAPI's connections are spread evenly over its two workers.
    let over_http = |side: Side, tasks: usize, in_flight: usize| {
        let (_, addr, request) = http.iter().find(|(s, _, _)| *s == side).unwrap().clone();
        async move {
            let conns = match side {
                Side::FastApi(_) => balanced_connections(addr, &request, in_flight, 2).await,
                _ => connections(addr, &request, in_flight).await,
            };
            let (summary, _, samples) = load_samples(tasks, conns, Conn::infer).await;
            (summary, samples)
        }
    };
    // Warm-up: leases, connections, every FastAPI worker, the batchers' measured sizes.
    let most = settings.in_flight;
    let warm = settings.tasks(model.tasks / 4);
    for &side in &sides {
        match side {
            Side::Sdk => sdk(warm, most).await,
            _ => over_http(side, warm, most).await,
        };
    }

    let mut runs = Vec::new();
    for round in 1..=2 {
        for in_flight in [most, 1] {
            let tasks = settings.tasks(if in_flight == 1 {
                model.tasks_one
            } else {
                model.tasks
            });
            for &side in &sides {
                settle(SETTLE_WINDOW, SETTLED_CORES_MAX, SETTLE_WAIT_MAX).await;
                let before = CpuSample::take(&pids);
                let (summary, samples) = match side {
                    Side::Sdk => sdk(tasks, in_flight).await,
                    _ => over_http(side, tasks, in_flight).await,
                };
                let cpu = before.cores(CpuSample::take(&pids), cores());
                if let Some(dir) = &settings.latencies {
                    let side_name = side.name().to_lowercase().replace(' ', "-");
                    let path = dir.join(format!(
                        "{}-{side_name}-{in_flight}-round{round}.txt",
                        model.name
                    ));
                    write_samples(&path, &samples)
                        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
                }
                let run = Run {
                    model: model.name,
                    in_flight,
                    round,
                    side,
                    summary,
                    cpu,
                };
                print_run(&run);
                runs.push(run);
            }
        }
    }
    net.stop().await;
    drop(servers);
    runs
}

fn main() {
    let settings = Settings::from_env();
    println!(
        "CryptoRAT (crat dispatcher, {NODES} crat nodes on ONNX Runtime {} (ort/{}), crat \
         gateway; separate processes) against FastAPI + uvicorn (2 workers) + onnxruntime \
         ({} provider) with intra_op_num_threads {:?} (FastAPI iN; 0: onnxruntime's \
         default), on loopback; {} cores ({}); load average {}",
        settings.ort_dylib.display(),
        settings.device.name(),
        settings.device.name(),
        settings.intra_op_threads,
        cores(),
        machine(),
        load_1m()
    );
    println!("crat: {}", settings.crat.display());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut runs = Vec::new();
    for model in &settings.models {
        runs.extend(rt.block_on(compare(&settings, model)));
    }

    if settings.only.is_some() {
        return;
    }
    println!("\n== results (rounds 1 and 2; ratios of their means) ==");
    for r in &runs {
        print_run(r);
    }
    let of = |model: &str, in_flight: usize, side: Side| -> Summary {
        let these: Vec<&Run> = runs
            .iter()
            .filter(|r| r.model == model && r.in_flight == in_flight && r.side == side)
            .collect();
        mean(&these)
    };
    let anchors: Vec<Side> = settings
        .intra_op_threads
        .iter()
        .map(|&t| Side::FastApi(t))
        .collect();
    let most = settings.in_flight;
    for model in &settings.models {
        for in_flight in [most, 1] {
            for side in [Side::Sdk, Side::Gateway] {
                for &anchor in &anchors {
                    println!(
                        "{}",
                        ratio_line(
                            &format!(
                                "{:>4} {in_flight:>2} in flight, {:>12} / {}",
                                model.name,
                                side.name(),
                                anchor.name()
                            ),
                            &of(model.name, in_flight, side),
                            &of(model.name, in_flight, anchor)
                        )
                    );
                }
            }
        }
    }

    // The anchor of a goal is the FastAPI configuration that does best on what it measures.
    println!("\n== goals (issue 19; means of both rounds, against the better FastAPI) ==");
    let best = |model: &str, in_flight: usize, key: fn(&Summary) -> f64| -> (Side, Summary) {
        anchors
            .iter()
            .map(|&a| (a, of(model, in_flight, a)))
            .min_by(|a, b| key(&a.1).total_cmp(&key(&b.1)))
            .unwrap()
    };
    let has = |name: &str| settings.models.iter().any(|m| m.name == name);
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    for side in [Side::Sdk, Side::Gateway] {
        if has("tiny") {
            let a = of("tiny", most, side);
            let (anchor, b) = best("tiny", most, |s| -s.rps);
            println!(
                "{}: overhead-bound (tiny, {most} in flight) >= 3x {}: {:.2}x -> {}",
                side.name(),
                anchor.name(),
                a.rps / b.rps,
                verdict(a.rps >= 3.0 * b.rps)
            );
            let a = of("tiny", 1, side);
            let (anchor, b) = best("tiny", 1, |s| s.p50.as_secs_f64());
            println!(
                "{}: one in flight (tiny) p50 <= 0.8x {}'s: {:.3} / {:.3} ms = {:.2}x -> {}; \
                 p99 <= 0.3 ms: {:.3} ms -> {}",
                side.name(),
                anchor.name(),
                ms(a.p50),
                ms(b.p50),
                a.p50.as_secs_f64() / b.p50.as_secs_f64(),
                verdict(a.p50.as_secs_f64() <= 0.8 * b.p50.as_secs_f64()),
                ms(a.p99),
                verdict(a.p99 <= Duration::from_micros(300))
            );
        }
        for name in ["cls", "det"] {
            if has(name) {
                let a = of(name, most, side);
                let (anchor, b) = best(name, most, |s| -s.rps);
                println!(
                    "{}: compute-bound ({name}, {most} in flight) >= 1.0x {}: {:.2}x -> {}",
                    side.name(),
                    anchor.name(),
                    a.rps / b.rps,
                    verdict(a.rps >= b.rps)
                );
            }
        }
    }
    println!("load average at the end {}", load_1m());
}
