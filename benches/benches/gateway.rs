//! The gateway's cost over the SDK: the tiny CNN on a loopback network (a dispatcher and two
//! tract nodes, batches of 4), 64 tasks in flight, called (a) with the SDK directly and (b)
//! through `crat-gateway` over HTTP/1.1 keep-alive connections with the binary tensor
//! extension. Prints requests/s, p50 and p99 of each. A load test rather than a criterion
//! statistic: `cargo bench -p crat-benches --bench gateway` (`CRAT_GATEWAY_BENCH_TASKS`,
//! default 4,000 per side).
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crat_backend::tract::TractBackend;
use crat_core::money::Credits;
use crat_core::pricing::{DeployPlan, PerRequestPlan};
use crat_core::tensor::{NamedTensor, Tensor};
use crat_dispatcher::ledger::AccountName;
use crat_dispatcher::{DispatcherConfig, admin};
use crat_gateway::{Gateway, GatewayConfig, Upstream};
use crat_testnet::{LocalNetwork, NodeSpec};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const TINY: &[u8] = include_bytes!("../../crates/backend/models/tiny_cnn.onnx");
const IN_FLIGHT: usize = 64;

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

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

    async fn infer(mut self) -> Self {
        self.stream
            .get_mut()
            .write_all(&self.request)
            .await
            .unwrap();
        let mut line = String::new();
        let mut length = 0usize;
        let mut status = String::new();
        loop {
            line.clear();
            self.stream.read_line(&mut line).await.unwrap();
            if status.is_empty() {
                status = line.clone();
            }
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await.unwrap();
        assert!(
            status.contains(" 200 "),
            "{status} {}",
            String::from_utf8_lossy(&body)
        );
        self
    }
}

fn main() {
    let tasks: usize = std::env::var("CRAT_GATEWAY_BENCH_TASKS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4_000);
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
        let net = LocalNetwork::start(config, dir.path(), specs).await.unwrap();
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
        let request = Arc::new(request);

        // Warm up both paths (leases, connections, the gateway's client for the key).
        let warm = d.clone();
        load(1_000, vec![(); IN_FLIGHT], move |()| {
            let d = warm.clone();
            async move {
                d.infer(vec![NamedTensor::new("input", image())]).await.unwrap();
            }
        })
        .await;
        let mut conns = Vec::new();
        for _ in 0..IN_FLIGHT {
            conns.push(Conn::open(addr, request.clone()).await);
        }
        let (_, mut conns) = load(1_000, conns, Conn::infer).await;

        // Alternate the two, twice, so that neither gains from running later (warmer
        // nodes, settled leases).
        println!(
            "tiny CNN, {IN_FLIGHT} in flight, {tasks} tasks per run, 2 tract nodes (batches of 4) on loopback"
        );
        for round in 1..=2 {
            let d = d.clone();
            let (sdk, _) = load(tasks, vec![(); IN_FLIGHT], move |()| {
                let d = d.clone();
                async move {
                    d.infer(vec![NamedTensor::new("input", image())]).await.unwrap();
                }
            })
            .await;
            let (http, back) = load(tasks, conns, Conn::infer).await;
            conns = back;
            for (name, s) in [("SDK directly", sdk), ("gateway, HTTP binary", http)] {
                println!(
                    "round {round} {name:>22}: {:>8.0} requests/s  p50 {:>7.2} ms  p99 {:>7.2} ms",
                    s.rps,
                    s.p50.as_secs_f64() * 1e3,
                    s.p99.as_secs_f64() * 1e3
                );
            }
        }
        net.shutdown();
    });
}
