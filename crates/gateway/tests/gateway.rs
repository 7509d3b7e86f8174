//! The gateway in front of a real network (a dispatcher and two tract nodes on loopback
//! QUIC), over real HTTP on loopback: metadata, JSON and binary inference equal to the SDK's
//! own answers, and the error statuses.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crat_backend::tract::TractBackend;
use crat_core::id::SdkKey;
use crat_core::money::Credits;
use crat_core::pricing::{DeployPlan, PerRequestPlan};
use crat_core::tensor::{NamedTensor, Tensor};
use crat_dispatcher::ledger::AccountName;
use crat_dispatcher::{DispatcherConfig, admin};
use crat_gateway::{Gateway, GatewayConfig, Upstream};
use crat_testnet::{LocalNetwork, NodeSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TINY: &[u8] = include_bytes!("../../backend/models/tiny_cnn.onnx");

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        let end = self
            .headers
            .get("inference-header-content-length")
            .map_or(self.body.len(), |n| n.parse().unwrap());
        serde_json::from_slice(&self.body[..end]).unwrap()
    }
}

/// One HTTP/1.1 exchange on a fresh connection.
async fn http(
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

async fn serve(gateway: Gateway) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(gateway.serve(listener, std::future::pending()));
    addr
}

fn image(seed: u32) -> Tensor {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oip_v2_over_http_in_front_of_a_real_network() {
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
    let model = client.upload_model(TINY, |_| {}).await.unwrap();
    let d = client
        .deploy(
            model,
            DeployPlan::PerRequest(PerRequestPlan {
                max_input_bytes: 1 << 16,
                credit_allowance: Credits::new(100_000),
            }),
        )
        .await
        .unwrap();
    d.wait_ready(Duration::from_secs(60)).await.unwrap();
    let direct = d
        .infer(vec![NamedTensor::new("input", image(1))])
        .await
        .unwrap();
    let probs = direct[0].tensor.to_vec::<f32>().unwrap();

    let upstream = Upstream::new(net.dispatcher_addr, net.dispatcher().id());
    let mut gconfig = GatewayConfig::default();
    gconfig.models.insert("tiny".into(), d.id());
    gconfig.body_bytes_max = 1 << 20;
    let addr = serve(Gateway::new(gconfig.clone(), upstream.clone()).unwrap()).await;
    let bearer = format!("Bearer {key}");
    let auth = [("Authorization", bearer.as_str())];

    // Health and server metadata need no key.
    for path in ["/v2/health/live", "/v2/health/ready", "/v2"] {
        assert_eq!(
            http(addr, "GET", path, &[], b"").await.status,
            200,
            "{path}"
        );
    }
    // Model metadata, by name and by deployment id; versions are the model id.
    for name in ["tiny".to_owned(), d.id().to_string()] {
        let r = http(addr, "GET", &format!("/v2/models/{name}"), &auth, b"").await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.json(),
            serde_json::json!({"name": name, "versions": [model.to_string()], "platform": "onnxruntime_onnx",
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}],
                "outputs": [{"name": "probs", "datatype": "FP32", "shape": [-1, 10]}]})
        );
    }
    let r = http(
        addr,
        "GET",
        &format!("/v2/models/tiny/versions/{model}/ready"),
        &auth,
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    let r = http(addr, "GET", "/v2/models/tiny/config", &auth, b"").await;
    assert_eq!(r.json()["input"][0]["data_type"], "TYPE_FP32");

    // JSON inference equals the SDK's own answer.
    let values = image(1).to_vec::<f32>().unwrap();
    let request = serde_json::json!({"id": "r1", "inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": values}]});
    let r = http(
        addr,
        "POST",
        "/v2/models/tiny/infer",
        &auth,
        &serde_json::to_vec(&request).unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let json = r.json();
    assert_eq!(json["id"], "r1");
    assert_eq!(json["outputs"][0]["shape"], serde_json::json!([1, 10]));
    let got: Vec<f32> = serde_json::from_value(json["outputs"][0]["data"].clone()).unwrap();
    assert_eq!(got, probs);

    // Binary inference (with the version in the path): the same bytes back.
    let header = serde_json::to_vec(&serde_json::json!({
        "inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "parameters": {"binary_data_size": 3136}}],
        "outputs": [{"name": "probs", "parameters": {"binary_data": true}}]})).unwrap();
    let mut body = header.clone();
    body.extend_from_slice(image(1).bytes());
    let n = header.len().to_string();
    let binary_headers = [auth[0], ("Inference-Header-Content-Length", n.as_str())];
    let path = format!("/v2/models/tiny/versions/{model}/infer");
    let r = http(addr, "POST", &path, &binary_headers, &body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let json_len: usize = r.headers["inference-header-content-length"]
        .parse()
        .unwrap();
    assert_eq!(r.json()["outputs"][0]["parameters"]["binary_data_size"], 40);
    assert_eq!(&r.body[json_len..], direct[0].tensor.bytes());

    // Errors: the protocol's body, the right status.
    let infer_json = serde_json::to_vec(&request).unwrap();
    let wrong_version = format!("/v2/models/tiny/versions/{}/infer", "ab".repeat(32));
    let bad_shape =
        br#"{"inputs":[{"name":"input","shape":[1,1,27,28],"datatype":"FP32","data":[0]}]}"#;
    let wrong_shape_for_model = serde_json::to_vec(&serde_json::json!({"inputs": [{"name": "input", "shape": [1, 1, 27, 28], "datatype": "FP32", "data": vec![0.0f32; 27 * 28]}]})).unwrap();
    let revoked_auth = format!("Bearer {revoked}");
    let expired_auth = format!("Bearer {expired}");
    let unknown: SdkKey = format!("sk_{}_{}", "00".repeat(16), "00".repeat(32))
        .parse()
        .unwrap();
    let unknown_auth = format!("Bearer {unknown}");
    let big = vec![b' '; (1 << 20) + 1];
    // (path, headers, body, status)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a [u8], u16);
    let cases: Vec<Case<'_>> = vec![
        ("/v2/models/tiny/infer", vec![], &infer_json, 401),
        (
            "/v2/models/tiny/infer",
            vec![("Authorization", "Bearer sk_nope")],
            &infer_json,
            401,
        ),
        (
            "/v2/models/tiny/infer",
            vec![("Authorization", unknown_auth.as_str())],
            &infer_json,
            401,
        ),
        (
            "/v2/models/tiny/infer",
            vec![("Authorization", revoked_auth.as_str())],
            &infer_json,
            403,
        ),
        (
            "/v2/models/tiny/infer",
            vec![("Authorization", expired_auth.as_str())],
            &infer_json,
            403,
        ),
        ("/v2/models/nope/infer", auth.to_vec(), &infer_json, 404),
        (&wrong_version, auth.to_vec(), &infer_json, 404),
        ("/v2/models/tiny/infer", auth.to_vec(), bad_shape, 400),
        (
            "/v2/models/tiny/infer",
            auth.to_vec(),
            &wrong_shape_for_model,
            400,
        ),
        ("/v2/models/tiny/infer", auth.to_vec(), b"{not json", 400),
        ("/v2/models/tiny/infer", auth.to_vec(), &big, 413),
    ];
    for (path, headers, body, status) in cases {
        let r = http(addr, "POST", path, &headers, body).await;
        assert_eq!(
            r.status,
            status,
            "{path} {headers:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.headers["content-type"], "application/json");
        assert!(r.json()["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let r = http(
        addr,
        "GET",
        "/v2/models/tiny",
        &[("Authorization", revoked_auth.as_str())],
        b"",
    )
    .await;
    assert_eq!(r.status, 403);
    let r = http(addr, "GET", "/nowhere", &[], b"").await;
    assert_eq!(r.status, 404);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("/v2/models/{name}")
    );
    let r = http(addr, "GET", "/v2/models/tiny/infer", &auth, b"").await;
    assert_eq!(r.status, 405);
    assert!(r.json()["error"].is_string());

    // A gateway that may run no inference sheds every one: 503 with Retry-After.
    let mut drained = gconfig.clone();
    drained.infer_inflight_max = 0;
    let drained = serve(Gateway::new(drained, upstream).unwrap()).await;
    let r = http(drained, "POST", "/v2/models/tiny/infer", &auth, &infer_json).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "1");

    // The network without capacity (both nodes killed): 503 with Retry-After. The SDK gives
    // up on dead replicas quickly here.
    let mut quick = Upstream::new(net.dispatcher_addr, net.dispatcher().id());
    quick.client.connect_timeout_ms = 300;
    quick.client.infer_timeout_ms = 1_000;
    quick.client.attempts_max = Some(3);
    let quick = serve(Gateway::new(gconfig.clone(), quick).unwrap()).await;
    for node in &net.nodes {
        node.kill();
    }
    let r = http(quick, "POST", "/v2/models/tiny/infer", &auth, &infer_json).await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.headers["retry-after"], "1");
    assert!(r.json()["error"].is_string());

    // The metrics counted it all.
    let r = http(addr, "GET", "/metrics", &[], b"").await;
    let text = String::from_utf8(r.body).unwrap();
    assert!(
        text.contains(
            "crat_gateway_requests_total{route=\"/v2/models/{name}/infer\",code=\"200\"} 1\n"
        ),
        "{text}"
    );
    assert!(text.contains("crat_gateway_requests_total{route=\"/v2/models/{name}/versions/{version}/infer\",code=\"200\"} 1\n"), "{text}");
    assert!(text.contains("code=\"413\"} 1\n"), "{text}");
    assert!(
        text.contains("crat_gateway_requests_total{route=\"unmatched\",code=\"404\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("crat_gateway_sdk_clients "), "{text}");
    net.shutdown();
}
