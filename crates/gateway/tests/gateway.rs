//! The gateway in front of a real network (a dispatcher and two tract nodes on loopback
//! QUIC), over real HTTP on loopback: metadata, JSON and binary inference equal to the SDK's
//! own answers, and the error statuses.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use crat_core::id::SdkKey;
use crat_gateway::{Gateway, Upstream};

mod common;
use common::{http, image, listener};

async fn serve(gateway: Gateway) -> SocketAddr {
    let (listener, addr) = listener().await;
    tokio::spawn(gateway.serve(listener, std::future::pending()));
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oip_v2_over_http_in_front_of_a_real_network() {
    let fixture = common::network().await;
    let (gconfig, upstream) = fixture.gateway();
    let common::Fixture {
        net,
        key,
        revoked,
        expired,
        model,
        deployment: d,
        direct,
        dir: _dir,
    } = fixture;
    let probs = direct[0].tensor.to_vec::<f32>().unwrap();
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

/// A model update (`Deployment::update_model`) is a new version of the same model name: the
/// metadata names it, requests for it are answered by the new model, and the old version
/// answers 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_update_is_a_new_version_of_the_same_name() {
    let fixture = common::network().await;
    let (gconfig, upstream) = fixture.gateway();
    let (old, d) = (fixture.model, &fixture.deployment);
    let addr = serve(Gateway::new(gconfig, upstream).unwrap()).await;
    let bearer = format!("Bearer {}", fixture.key);
    let auth = [("Authorization", bearer.as_str())];
    let values = image(1).to_vec::<f32>().unwrap();
    let request = serde_json::to_vec(&serde_json::json!({"inputs": [{"name": "input",
        "shape": [1, 1, 28, 28], "datatype": "FP32", "data": values}]}))
    .unwrap();
    let infer = |version: String| {
        let request = request.clone();
        async move {
            http(
                addr,
                "POST",
                &format!("/v2/models/tiny/versions/{version}/infer"),
                &auth,
                &request,
            )
            .await
        }
    };
    assert_eq!(infer(old.to_string()).await.status, 200);

    let new = d
        .client()
        .upload_model(common::TINY_V2, |_| {})
        .await
        .unwrap();
    d.update_model(new).await.unwrap();
    d.wait_updated(std::time::Duration::from_secs(60))
        .await
        .unwrap();
    let direct = d
        .infer(vec![crat_core::tensor::NamedTensor::new("input", image(1))])
        .await
        .unwrap();
    assert_ne!(direct, fixture.direct, "the new model answers otherwise");

    let r = http(addr, "GET", "/v2/models/tiny", &auth, b"").await;
    assert_eq!(r.json()["versions"], serde_json::json!([new.to_string()]));
    let r = infer(new.to_string()).await;
    assert_eq!(r.status, 200);
    let got: Vec<f32> = serde_json::from_value(r.json()["outputs"][0]["data"].clone()).unwrap();
    assert_eq!(got, direct[0].tensor.to_vec::<f32>().unwrap());
    let r = infer(old.to_string()).await;
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
    fixture.net.shutdown();
}
