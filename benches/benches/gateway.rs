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
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crat_backend::tract::TractBackend;
use crat_benches::http::{
    Conn, FastApi, Provider, Summary, check_same_answer, infer_request, load,
};
use crat_benches::now_s;
use crat_core::money::Credits;
use crat_core::pricing::{DeployPlan, PerRequestPlan};
use crat_core::tensor::{NamedTensor, Tensor};
use crat_dispatcher::ledger::AccountName;
use crat_dispatcher::{DispatcherConfig, admin};
use crat_gateway::{Gateway, GatewayConfig, Upstream};
use crat_testnet::{LocalNetwork, NodeSpec};

const TINY: &[u8] = include_bytes!("../../crates/backend/models/tiny_cnn.onnx");
const IN_FLIGHT: usize = 64;

fn image() -> Tensor {
    let values: Vec<f32> = (0..28 * 28).map(|i| (i % 255) as f32 / 255.0).collect();
    Tensor::from_slice(&[1, 1, 28, 28], &values).unwrap()
}

/// The binary HTTP request of one image to the server at `addr`: the same bytes for the
/// gateway and for FastAPI but for `Host` (FastAPI ignores the key).
fn tiny_request(addr: SocketAddr, key: &str) -> Arc<Vec<u8>> {
    infer_request(
        addr,
        key,
        "tiny",
        "input",
        &[1, 1, 28, 28],
        image().bytes(),
        "probs",
    )
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
            Some(FastApi::start(
                &PathBuf::from(python),
                &crat_benches::benches_dir().join("../crates/backend/models/tiny_cnn.onnx"),
                "tiny",
                threads,
                Provider::Cpu,
            ))
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
        let request = tiny_request(addr, &key);
        let mut conns = Vec::new();
        for _ in 0..IN_FLIGHT {
            conns.push(Conn::open(addr, request.clone()).await);
        }
        let (_, mut conns) = load(1_000, conns, Conn::infer).await;
        let mut fastapi_conns = None;
        if let Some(server) = &mut fastapi {
            server.wait_ready().await;
            let request = tiny_request(server.addr, &key);
            let mut fconns = Vec::new();
            for _ in 0..IN_FLIGHT {
                fconns.push(Conn::open(server.addr, request.clone()).await);
            }
            let from_gateway = conns[0].exchange().await;
            let from_fastapi = fconns[0].exchange().await;
            println!("{}", check_same_answer(&from_fastapi, &from_gateway));
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
