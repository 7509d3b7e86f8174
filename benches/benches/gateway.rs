//! The gateway's cost over the SDK, and against what a data scientist would deploy instead:
//! the tiny CNN on a loopback network (a dispatcher and two tract nodes in this process,
//! batches of 4), 64 tasks in flight, called (a) with the SDK directly, (b) through
//! `crat-gateway` over HTTP/1.1 keep-alive connections with the binary tensor extension and
//! (c) the same HTTP requests (only `Host` differs) sent by the same driver to a FastAPI +
//! onnxruntime server of the same model (`benches/compare/fastapi_server.py`, uvicorn with 2 workers, a separate
//! process). Prints requests/s, p50 and p99 of each, and the ratios to FastAPI. A load test
//! rather than a criterion statistic: `cargo bench -p crat-benches --bench gateway`
//! (`CRAT_GATEWAY_BENCH_TASKS`, default 4,000 per side per round).
//!
//! (c) runs only when `CRAT_COMPARE_PYTHON` names a python that has
//! `benches/compare/requirements.txt` installed (see `benches/compare/README.md`); without it
//! the bench says that side is skipped, and why. `CRAT_COMPARE_INTRA_OP_THREADS` sets
//! onnxruntime's `intra_op_num_threads` in each FastAPI worker (default 0: onnxruntime's
//! default, one thread per core; 1 is much faster for this model on a small machine).
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crat_backend::tract::TractBackend;
use crat_benches::now_s;
use crat_core::money::Credits;
use crat_core::pricing::{DeployPlan, PerRequestPlan};
use crat_core::tensor::{DType, NamedTensor, Tensor};
use crat_core::verify::{Tolerance, tensors_agree};
use crat_dispatcher::ledger::AccountName;
use crat_dispatcher::{DispatcherConfig, admin};
use crat_gateway::{Gateway, GatewayConfig, Upstream};
use crat_testnet::{LocalNetwork, NodeSpec};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const TINY_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../crates/backend/models/tiny_cnn.onnx"
);
const TINY: &[u8] = include_bytes!("../../crates/backend/models/tiny_cnn.onnx");
const IN_FLIGHT: usize = 64;
/// How long the FastAPI server may take to answer its readiness check.
const FASTAPI_START_S_MAX: u64 = 60;
/// How long the FastAPI server may take to stop after SIGTERM before it is killed.
const FASTAPI_STOP_S_MAX: u64 = 10;

fn image() -> Tensor {
    let values: Vec<f32> = (0..28 * 28).map(|i| (i % 255) as f32 / 255.0).collect();
    Tensor::from_slice(&[1, 1, 28, 28], &values).unwrap()
}

struct Summary {
    rps: f64,
    p50: Duration,
    p99: Duration,
}

fn summarize(mut latencies: Vec<Duration>, took: Duration) -> Summary {
    latencies.sort();
    let at = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    Summary {
        rps: latencies.len() as f64 / took.as_secs_f64(),
        p50: at(0.5),
        p99: at(0.99),
    }
}

/// Runs `tasks` calls of `call` with one worker per state (each owns its `S`); gives the
/// states back.
async fn load<S, F, Fut>(tasks: usize, states: Vec<S>, call: F) -> (Summary, Vec<S>)
where
    S: Send + 'static,
    F: Fn(S) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = S> + Send,
{
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for mut state in states {
        let next = next.clone();
        let call = call.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < tasks {
                let t = Instant::now();
                state = call(state).await;
                latencies.push(t.elapsed());
            }
            (latencies, state)
        }));
    }
    let mut all = Vec::with_capacity(tasks);
    let mut states = Vec::with_capacity(workers.len());
    for w in workers {
        let (latencies, state) = w.await.unwrap();
        all.extend(latencies);
        states.push(state);
    }
    let took = started.elapsed();
    (summarize(all, took), states)
}

/// The binary HTTP request of one image to the server at `addr`: the same bytes for the
/// gateway and for FastAPI but for `Host` (FastAPI ignores the key).
fn infer_request(addr: SocketAddr, key: &str) -> Arc<Vec<u8>> {
    let header = br#"{"inputs":[{"name":"input","shape":[1,1,28,28],"datatype":"FP32","parameters":{"binary_data_size":3136}}],"outputs":[{"name":"probs","parameters":{"binary_data":true}}]}"#;
    let mut body = header.to_vec();
    body.extend_from_slice(image().bytes());
    let mut request = format!(
        "POST /v2/models/tiny/infer HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         Inference-Header-Content-Length: {}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\n\r\n",
        header.len(),
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    Arc::new(request)
}

/// An HTTP answer: the status line, the `Inference-Header-Content-Length` header and the body.
#[derive(Debug)]
struct Answer {
    status: String,
    inference_header: Option<String>,
    body: Vec<u8>,
}

/// One keep-alive HTTP/1.1 connection; `infer` sends one binary request, checks the answer.
struct Conn {
    stream: BufReader<tokio::net::TcpStream>,
    request: Arc<Vec<u8>>,
}

impl Conn {
    async fn open(addr: SocketAddr, request: Arc<Vec<u8>>) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream: BufReader::new(stream),
            request,
        }
    }

    /// Sends the request once and reads the answer.
    async fn exchange(&mut self) -> Answer {
        self.stream
            .get_mut()
            .write_all(&self.request)
            .await
            .unwrap();
        let mut line = String::new();
        let mut length = 0usize;
        let mut status = String::new();
        let mut inference_header = None;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await.unwrap();
            if status.is_empty() {
                status = line.trim_end().to_owned();
            }
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap();
                } else if k.eq_ignore_ascii_case("inference-header-content-length") {
                    inference_header = Some(v.trim().to_owned());
                }
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await.unwrap();
        Answer {
            status,
            inference_header,
            body,
        }
    }

    async fn infer(mut self) -> Self {
        let answer = self.exchange().await;
        assert!(
            answer.status.contains(" 200 "),
            "{} {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
        self
    }
}

/// The FastAPI + onnxruntime server of `benches/compare/`, a separate process on a free
/// loopback port. Dropping it (panics included) stops it: SIGTERM to uvicorn's supervisor,
/// which stops its workers; SIGKILL if it has not exited within `FASTAPI_STOP_S_MAX`.
struct FastApi {
    child: Child,
    addr: SocketAddr,
    /// onnxruntime's `intra_op_num_threads` in each worker (0: its default, one per core).
    intra_op_threads: u32,
}

impl FastApi {
    fn start(python: &Path, intra_op_threads: u32) -> Self {
        // A port the system had free; released again for the server to bind (another process
        // could take it in between: the readiness check would then fail loudly).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("compare/fastapi_server.py");
        let child = Command::new(python)
            .arg(script)
            .arg(TINY_PATH)
            .args(["--name", "tiny", "--port", &port.to_string()])
            .args(["--intra-op-threads", &intra_op_threads.to_string()])
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
        Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            intra_op_threads,
        }
    }

    /// Waits until `GET /v2/health/ready` answers 200.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(FASTAPI_START_S_MAX);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the FastAPI server exited before it was ready: {status}");
            }
            if let Ok(mut stream) = tokio::net::TcpStream::connect(self.addr).await {
                let request = format!(
                    "GET /v2/health/ready HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                    self.addr
                );
                let mut answer = Vec::new();
                if stream.write_all(request.as_bytes()).await.is_ok()
                    && stream.read_to_end(&mut answer).await.is_ok()
                    && answer.starts_with(b"HTTP/1.1 200 ")
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the FastAPI server was not ready within {FASTAPI_START_S_MAX} s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for FastApi {
    fn drop(&mut self) {
        // Best effort: nothing can be reported from a drop.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(FASTAPI_STOP_S_MAX);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// FastAPI's answer to an image is the gateway's: the same status line, the same
/// `Inference-Header-Content-Length`, the same JSON header byte for byte, and the same output
/// floats within the tolerance the network allows two honest backends
/// (`crat_core::verify::Tolerance::default()`): the nodes run tract, FastAPI onnxruntime, and
/// their kernels round differently in the last bits. Prints how far apart the floats are.
fn check_same_answer(fastapi: &Answer, gateway: &Answer) {
    assert!(gateway.status.contains(" 200 "), "{gateway:?}");
    assert_eq!(fastapi.status, gateway.status);
    assert_eq!(fastapi.inference_header, gateway.inference_header);
    let json_len: usize = gateway
        .inference_header
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    let (fastapi_json, fastapi_probs) = fastapi.body.split_at(json_len);
    let (gateway_json, gateway_probs) = gateway.body.split_at(json_len);
    assert_eq!(
        String::from_utf8_lossy(fastapi_json),
        String::from_utf8_lossy(gateway_json)
    );
    let probs = |bytes: &[u8]| Tensor::new(DType::F32, vec![1, 10], bytes.to_vec()).unwrap();
    let (fastapi_probs, gateway_probs) = (probs(fastapi_probs), probs(gateway_probs));
    tensors_agree(
        "probs",
        &fastapi_probs,
        &gateway_probs,
        &Tolerance::default(),
    )
    .unwrap();
    let (f, g) = (
        fastapi_probs.to_vec::<f32>().unwrap(),
        gateway_probs.to_vec::<f32>().unwrap(),
    );
    let differ = f.iter().zip(&g).filter(|(a, b)| a != b).count();
    let apart = f
        .iter()
        .zip(&g)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    println!(
        "answers checked: FastAPI's status, headers and JSON ({json_len} bytes) are the \
         gateway's; {differ} of {} output floats differ (tract vs onnxruntime), by at most \
         {apart:e}, within the network's tolerance",
        g.len()
    );
}

fn print_summary(round: usize, name: &str, s: &Summary) {
    println!(
        "round {round} {name:>22}: {:>8.0} requests/s  p50 {:>7.2} ms  p99 {:>7.2} ms",
        s.rps,
        s.p50.as_secs_f64() * 1e3,
        s.p99.as_secs_f64() * 1e3
    );
}

fn print_ratio(round: usize, name: &str, a: &Summary, b: &Summary) {
    println!(
        "round {round} {name:>22}: {:>8.2}x requests/s p50 {:>6.2}x     p99 {:>6.2}x",
        a.rps / b.rps,
        a.p50.as_secs_f64() / b.p50.as_secs_f64(),
        a.p99.as_secs_f64() / b.p99.as_secs_f64()
    );
}

fn main() {
    let tasks: usize = std::env::var("CRAT_GATEWAY_BENCH_TASKS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4_000);
    // Started first: it loads while the network starts.
    let mut fastapi = match std::env::var_os("CRAT_COMPARE_PYTHON") {
        Some(python) => {
            // Unset or empty: 0, onnxruntime's default.
            let threads = std::env::var("CRAT_COMPARE_INTRA_OP_THREADS")
                .ok()
                .filter(|s| !s.is_empty())
                .map_or(0, |s| {
                    s.parse()
                        .expect("CRAT_COMPARE_INTRA_OP_THREADS is a thread count")
                });
            Some(FastApi::start(&PathBuf::from(python), threads))
        }
        None => {
            println!(
                "FastAPI + onnxruntime side skipped: CRAT_COMPARE_PYTHON is not set (a python \
                 with benches/compare/requirements.txt installed; see benches/compare/README.md)"
            );
            None
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let mut config = DispatcherConfig::new(dir.path().join("dispatcher"));
        config.dispatch.heartbeat_interval_s = 1;
        let specs = (0..2)
            .map(|_| NodeSpec {
                gpu: Some("NVIDIA GeForce RTX 3090".into()),
                backend: Arc::new(TractBackend::new()),
                batch_size: 4,
            })
            .collect();
        let net = LocalNetwork::start(config, dir.path(), specs)
            .await
            .unwrap();
        let ledger = net.dispatcher().ledger().clone();
        let account = AccountName::new("bench").unwrap();
        admin::grant(&*ledger, &account, Credits::new(1 << 40), now_s()).unwrap();
        let key = admin::create_key(&*ledger, &account, now_s(), None).unwrap();
        let client = crat_sdk::connect(net.dispatcher_addr, net.dispatcher().id(), key.clone())
            .await
            .unwrap();
        let model = client.upload_model(TINY, |_| {}).await.unwrap();
        let plan = DeployPlan::PerRequest(PerRequestPlan {
            max_input_bytes: 1 << 16,
            credit_allowance: Credits::new(1 << 39),
        });
        let d = client.deploy(model, plan).await.unwrap();
        d.wait_ready(Duration::from_secs(60)).await.unwrap();

        let mut config = GatewayConfig::default();
        config.models.insert("tiny".into(), d.id());
        let gateway = Gateway::new(
            config,
            Upstream::new(net.dispatcher_addr, net.dispatcher().id()),
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(gateway.serve(listener, std::future::pending()));
        let key = key.to_string();

        // Warm up every path (leases, connections, the gateway's client for the key, the
        // FastAPI workers).
        let warm = d.clone();
        load(1_000, vec![(); IN_FLIGHT], move |()| {
            let d = warm.clone();
            async move {
                d.infer(vec![NamedTensor::new("input", image())])
                    .await
                    .unwrap();
            }
        })
        .await;
        let request = infer_request(addr, &key);
        let mut conns = Vec::new();
        for _ in 0..IN_FLIGHT {
            conns.push(Conn::open(addr, request.clone()).await);
        }
        let (_, mut conns) = load(1_000, conns, Conn::infer).await;
        let mut fastapi_conns = None;
        if let Some(server) = &mut fastapi {
            server.wait_ready().await;
            let request = infer_request(server.addr, &key);
            let mut fconns = Vec::new();
            for _ in 0..IN_FLIGHT {
                fconns.push(Conn::open(server.addr, request.clone()).await);
            }
            let from_gateway = conns[0].exchange().await;
            let from_fastapi = fconns[0].exchange().await;
            check_same_answer(&from_fastapi, &from_gateway);
            let (_, back) = load(1_000, fconns, Conn::infer).await;
            fastapi_conns = Some(back);
        }

        // Alternate the sides, twice, so that none gains from running later (warmer nodes,
        // settled leases).
        println!(
            "tiny CNN, {IN_FLIGHT} in flight, {tasks} tasks per run, 2 tract nodes (batches of 4) \
             on loopback in this process"
        );
        if let Some(server) = &fastapi {
            println!(
                "FastAPI: uvicorn, 2 workers, onnxruntime CPU, intra_op_num_threads {}",
                match server.intra_op_threads {
                    0 => "0 (its default: one per core)".to_owned(),
                    n => n.to_string(),
                }
            );
        }
        for round in 1..=2 {
            let d = d.clone();
            let (sdk, _) = load(tasks, vec![(); IN_FLIGHT], move |()| {
                let d = d.clone();
                async move {
                    d.infer(vec![NamedTensor::new("input", image())])
                        .await
                        .unwrap();
                }
            })
            .await;
            let (http, back) = load(tasks, conns, Conn::infer).await;
            conns = back;
            print_summary(round, "SDK directly", &sdk);
            print_summary(round, "gateway, HTTP binary", &http);
            if let Some(fconns) = fastapi_conns.take() {
                let (fast, back) = load(tasks, fconns, Conn::infer).await;
                fastapi_conns = Some(back);
                print_summary(round, "FastAPI, HTTP binary", &fast);
                print_ratio(round, "gateway / FastAPI", &http, &fast);
                print_ratio(round, "SDK / FastAPI", &sdk, &fast);
            }
        }
        net.shutdown();
        // `fastapi` is dropped here (or while unwinding): its server stops.
    });
}
