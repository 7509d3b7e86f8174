//! The gateway in front of a network that runs the iroh transport: its SDK clients bind iroh
//! endpoints with the network's relay (`Upstream::iroh`), and inference through it equals the
//! SDK's own answer.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::sync::Arc;

use crat_backend::tract::TractBackend;
use crat_core::clock::Clock as _;
use crat_core::money::Credits;
use crat_dispatcher::DispatcherConfig;
use crat_dispatcher::admin;
use crat_dispatcher::ledger::AccountName;
use crat_gateway::{Gateway, GatewayConfig, Upstream};
use crat_sdk::{Client, ClientConfig};
use crat_testnet::transports::IrohPaths;
use crat_testnet::{LocalNetwork, NodeSpec};
use crat_transport::iroh::IrohTransport;
use ed25519_dalek::SigningKey;

use common::{deploy_tiny, http, image, listener};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_serves_a_network_on_iroh() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = DispatcherConfig::new(dir.path().join("dispatcher"));
    config.dispatch.heartbeat_interval_s = 1;
    config.tick_ms = 100;
    let spec = NodeSpec {
        gpu: Some("NVIDIA GeForce RTX 3090".into()),
        backend: Arc::new(TractBackend::new()),
        batch_size: 4,
    };
    let net = LocalNetwork::<IrohTransport>::start_iroh(
        IrohPaths::Direct,
        config,
        dir.path(),
        vec![spec],
    )
    .await
    .unwrap();
    let ledger = net.dispatcher().ledger().clone();
    let account = AccountName::new("acme").unwrap();
    let now = crat_transport::SystemClock.now_s();
    admin::grant(&*ledger, &account, Credits::new(1_000_000), now).unwrap();
    let key = admin::create_key(&*ledger, &account, now, None).unwrap();

    // The test's own SDK client, on iroh too: deploys the tiny CNN and computes the answer.
    let identity = SigningKey::from_bytes(&[42; 32]);
    let transport = net.bind_client(&identity).await.unwrap();
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
    let (_model, d, direct) = deploy_tiny(&client).await;

    let mut gconfig = GatewayConfig::default();
    gconfig.models.insert("tiny".into(), d.id());
    let upstream = Upstream {
        iroh: Some(net.setup().peer_config()),
        ..Upstream::new(net.dispatcher_addr, net.dispatcher().id())
    };
    let (listener, addr) = listener().await;
    tokio::spawn(
        Gateway::new(gconfig, upstream)
            .unwrap()
            .serve(listener, std::future::pending()),
    );

    let values = image(1).to_vec::<f32>().unwrap();
    let request = serde_json::json!({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": values}]});
    let bearer = format!("Bearer {key}");
    let r = http(
        addr,
        "POST",
        "/v2/models/tiny/infer",
        &[("Authorization", bearer.as_str())],
        &serde_json::to_vec(&request).unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let answer = r.json();
    let probs: Vec<f32> = answer["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(probs, direct[0].tensor.to_vec::<f32>().unwrap());
    net.shutdown();
}
