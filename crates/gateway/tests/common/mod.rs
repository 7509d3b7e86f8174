//! What the gateway's integration tests share: a real network (a dispatcher and two tract
//! nodes on loopback QUIC) with the tiny CNN deployed and the keys the error cases need, an
//! HTTP/1.1 exchange, and the test images.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crat_backend::tract::TractBackend;
use crat_core::id::{ModelId, SdkKey};
use crat_core::money::Credits;
use crat_core::pricing::{DeployPlan, PerRequestPlan};
use crat_core::tensor::{NamedTensor, Tensor};
use crat_dispatcher::ledger::AccountName;
use crat_dispatcher::{DispatcherConfig, admin};
use crat_gateway::{GatewayConfig, Upstream};
use crat_sdk::Deployment;
use crat_testnet::{LocalNetwork, NodeSpec};
use crat_transport::quic::QuicTransport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TINY: &[u8] = include_bytes!("../../../backend/models/tiny_cnn.onnx");
/// The same network with other weights: what a model update swaps in.
pub(crate) const TINY_V2: &[u8] = include_bytes!("../../../backend/models/tiny_cnn_v2.onnx");

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A network with the tiny CNN deployed, and what the tests compare against.
pub(crate) struct Fixture {
    pub(crate) net: LocalNetwork,
    /// A key with credits.
    pub(crate) key: SdkKey,
    /// A revoked key of the same account.
    pub(crate) revoked: SdkKey,
    /// An expired key of the same account.
    pub(crate) expired: SdkKey,
    /// The tiny CNN's model id (its one version).
    pub(crate) model: ModelId,
    /// Its deployment, ready.
    pub(crate) deployment: Deployment<QuicTransport>,
    /// The SDK's own answer for `image(1)`.
    pub(crate) direct: Vec<NamedTensor>,
    /// The network's files: keep it while the network runs.
    pub(crate) dir: tempfile::TempDir,
}

/// Starts the network, deploys the tiny CNN and asks the SDK for `image(1)`'s answer.
pub(crate) async fn network() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut config = DispatcherConfig::new(dir.path().join("dispatcher"));
    config.dispatch.heartbeat_interval_s = 1;
    config.key_cache_ms = 0;
    config.tick_ms = 100;
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
    let account = AccountName::new("acme").unwrap();
    admin::grant(&*ledger, &account, Credits::new(1_000_000), now_s()).unwrap();
    let key = admin::create_key(&*ledger, &account, now_s(), None).unwrap();
    let revoked = admin::create_key(&*ledger, &account, now_s(), None).unwrap();
    ledger.revoke_key(&revoked.id, now_s()).unwrap();
    let expired = admin::create_key(&*ledger, &account, now_s(), Some(0)).unwrap();
    let client = crat_sdk::connect(net.dispatcher_addr, net.dispatcher().id(), key.clone())
        .await
        .unwrap();
    let (model, deployment, direct) = deploy_tiny(&client).await;
    Fixture {
        net,
        key,
        revoked,
        expired,
        model,
        deployment,
        direct,
        dir,
    }
}

/// Uploads and deploys the tiny CNN (per request, 100,000 credits) with `client`, waits until
/// it is ready, and asks it for `image(1)`'s answer: the model, the deployment, the answer.
pub(crate) async fn deploy_tiny<T: crat_transport::Transport>(
    client: &crat_sdk::Client<T>,
) -> (ModelId, Deployment<T>, Vec<NamedTensor>) {
    let model = client.upload_model(TINY, |_| {}).await.unwrap();
    let deployment = client
        .deploy(
            model,
            DeployPlan::PerRequest(PerRequestPlan {
                max_input_bytes: 1 << 16,
                credit_allowance: Credits::new(100_000),
            }),
        )
        .await
        .unwrap();
    deployment
        .wait_ready(Duration::from_secs(60))
        .await
        .unwrap();
    let direct = deployment
        .infer(vec![NamedTensor::new("input", image(1))])
        .await
        .unwrap();
    (model, deployment, direct)
}

impl Fixture {
    /// A gateway's settings in front of this network: the deployment as `tiny`, bodies up
    /// to 1 MiB; and the upstream.
    pub(crate) fn gateway(&self) -> (GatewayConfig, Upstream) {
        let mut config = GatewayConfig::default();
        config.models.insert("tiny".into(), self.deployment.id());
        config.body_bytes_max = 1 << 20;
        let upstream = Upstream::new(self.net.dispatcher_addr, self.net.dispatcher().id());
        (config, upstream)
    }
}

/// A deterministic 1 × 1 × 28 × 28 image.
pub(crate) fn image(seed: u32) -> Tensor {
    let values: Vec<f32> = (0..28 * 28)
        .map(|i| {
            ((i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed * 97)
                % 1000) as f32
                / 1000.0
        })
        .collect();
    Tensor::from_slice(&[1, 1, 28, 28], &values).unwrap()
}

/// A loopback listener on a free port.
pub(crate) async fn listener() -> (tokio::net::TcpListener, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: HashMap<String, String>,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    pub(crate) fn json(&self) -> serde_json::Value {
        let end = self
            .headers
            .get("inference-header-content-length")
            .map_or(self.body.len(), |n| n.parse().unwrap());
        serde_json::from_slice(&self.body[..end]).unwrap()
    }
}

/// One HTTP/1.1 exchange on a fresh connection.
pub(crate) async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    // The gateway may answer (413) before reading a body it refuses.
    let _ = s.write_all(body).await;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    assert!(!headers.contains_key("transfer-encoding"), "{headers:?}");
    Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}
