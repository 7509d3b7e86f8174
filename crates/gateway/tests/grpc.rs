//! The gateway's gRPC service in front of a real network (a dispatcher and two tract nodes on
//! loopback QUIC), called over real gRPC on loopback by the tonic client generated from the
//! same .proto: metadata, readiness, inference with typed and with raw tensors equal to the
//! SDK's own answers, and the status codes of the errors.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use crat_core::id::SdkKey;
use crat_gateway::grpc::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use crat_gateway::grpc::inference::model_infer_request::{
    InferInputTensor, InferRequestedOutputTensor,
};
use crat_gateway::grpc::inference::model_metadata_response::TensorMetadata;
use crat_gateway::grpc::inference::*;
use crat_gateway::{Gateway, Upstream};
use tonic::transport::Channel;
use tonic::{Code, Request};

mod common;
use common::{http, image, listener};

type Client = GrpcInferenceServiceClient<Channel>;

/// Serves `gateway` over HTTP and gRPC; the addresses.
async fn serve(gateway: Gateway) -> (SocketAddr, SocketAddr) {
    let (http, http_addr) = listener().await;
    let (grpc, grpc_addr) = listener().await;
    tokio::spawn(gateway.serve_with_grpc(http, Some(grpc), std::future::pending()));
    (http_addr, grpc_addr)
}

async fn connect(addr: SocketAddr) -> Client {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    GrpcInferenceServiceClient::new(channel)
}

/// `message` with `authorization: <value>` when given.
fn call<T>(message: T, authorization: Option<&str>) -> Request<T> {
    let mut r = Request::new(message);
    if let Some(v) = authorization {
        r.metadata_mut().insert("authorization", v.parse().unwrap());
    }
    r
}

/// A request for the tiny CNN on `values` (1 × 1 × 28 × 28 unless `shape` says otherwise),
/// raw or typed.
fn infer_request(model: &str, shape: &[i64], values: &[f32], raw: bool) -> ModelInferRequest {
    let mut input = InferInputTensor {
        name: "input".into(),
        datatype: "FP32".into(),
        shape: shape.to_vec(),
        ..Default::default()
    };
    let mut request = ModelInferRequest {
        model_name: model.into(),
        ..Default::default()
    };
    if raw {
        request
            .raw_input_contents
            .push(values.iter().flat_map(|v| v.to_le_bytes()).collect());
    } else {
        input.contents = Some(InferTensorContents {
            fp32_contents: values.to_vec(),
            ..Default::default()
        });
    }
    request.inputs.push(input);
    request
}

const IMAGE: [i64; 4] = [1, 1, 28, 28];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oip_v2_over_grpc_in_front_of_a_real_network() {
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
    let (http_addr, grpc_addr) =
        serve(Gateway::new(gconfig.clone(), upstream.clone()).unwrap()).await;
    let mut c = connect(grpc_addr).await;
    let bearer = format!("Bearer {key}");
    let auth = Some(bearer.as_str());

    // Health and server metadata need no key.
    assert!(
        c.server_live(call(ServerLiveRequest {}, None))
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(call(ServerReadyRequest {}, None))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let meta = c
        .server_metadata(call(ServerMetadataRequest {}, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.name, "crat-gateway");

    // Model metadata, by name and by deployment id; the version is the model id.
    for name in ["tiny".to_owned(), d.id().to_string()] {
        let meta = c
            .model_metadata(call(
                ModelMetadataRequest {
                    name: name.clone(),
                    version: String::new(),
                },
                auth,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            meta,
            ModelMetadataResponse {
                name,
                versions: vec![model.to_string()],
                platform: "onnxruntime_onnx".into(),
                inputs: vec![TensorMetadata {
                    name: "input".into(),
                    datatype: "FP32".into(),
                    shape: vec![-1, 1, 28, 28],
                }],
                outputs: vec![TensorMetadata {
                    name: "probs".into(),
                    datatype: "FP32".into(),
                    shape: vec![-1, 10],
                }],
            }
        );
    }

    // Readiness: true by name and version; false (not an error) for another version or an
    // unknown model, as Triton answers; the key is still needed.
    let ready = |name: &str, version: String| ModelReadyRequest {
        name: name.into(),
        version,
    };
    let cases = [
        (ready("tiny", String::new()), true),
        (ready("tiny", model.to_string()), true),
        (ready("tiny", "ab".repeat(32)), false),
        (ready("nope", String::new()), false),
    ];
    for (request, expected) in cases {
        let got = c.model_ready(call(request.clone(), auth)).await.unwrap();
        assert_eq!(got.into_inner().ready, expected, "{request:?}");
    }
    let e = c
        .model_ready(call(ready("tiny", String::new()), None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // Typed contents in, typed contents out, equal to the SDK's answer; the id comes back.
    let values = image(1).to_vec::<f32>().unwrap();
    let mut typed = infer_request("tiny", &IMAGE, &values, false);
    typed.id = "r1".into();
    let r = c.model_infer(call(typed, auth)).await.unwrap().into_inner();
    assert_eq!(r.id, "r1");
    assert_eq!(r.model_name, "tiny");
    assert!(r.raw_output_contents.is_empty());
    assert_eq!(r.outputs.len(), 1);
    assert_eq!(r.outputs[0].name, "probs");
    assert_eq!(r.outputs[0].datatype, "FP32");
    assert_eq!(r.outputs[0].shape, [1, 10]);
    assert_eq!(r.outputs[0].contents.as_ref().unwrap().fp32_contents, probs);

    // Raw bytes in (with the version and the output named), the same bytes out.
    let mut raw = infer_request("tiny", &IMAGE, &values, true);
    raw.model_version = model.to_string();
    raw.outputs.push(InferRequestedOutputTensor {
        name: "probs".into(),
        ..Default::default()
    });
    let r = c.model_infer(call(raw, auth)).await.unwrap().into_inner();
    assert_eq!(r.model_version, model.to_string());
    assert!(r.outputs[0].contents.is_none());
    assert_eq!(r.raw_output_contents, [direct[0].tensor.bytes().to_vec()]);

    // Errors: the code of each, with the gateway's message.
    let revoked_auth = format!("Bearer {revoked}");
    let expired_auth = format!("Bearer {expired}");
    let unknown: SdkKey = format!("sk_{}_{}", "00".repeat(16), "00".repeat(32))
        .parse()
        .unwrap();
    let unknown_auth = format!("Bearer {unknown}");
    let good = || infer_request("tiny", &IMAGE, &values, true);
    let mut wrong_version = good();
    wrong_version.model_version = "ab".repeat(32);
    let mut wrong_output = good();
    wrong_output.outputs.push(InferRequestedOutputTensor {
        name: "logits".into(),
        ..Default::default()
    });
    let big = vec![0.0f32; 512 * 1024];
    let cases: Vec<(ModelInferRequest, Option<&str>, Code)> = vec![
        (good(), None, Code::Unauthenticated),
        (good(), Some("Bearer sk_nope"), Code::Unauthenticated),
        (good(), Some(&unknown_auth), Code::Unauthenticated),
        (good(), Some(&revoked_auth), Code::PermissionDenied),
        (good(), Some(&expired_auth), Code::PermissionDenied),
        (
            infer_request("nope", &IMAGE, &values, true),
            auth,
            Code::NotFound,
        ),
        (wrong_version, auth, Code::NotFound),
        (
            infer_request("tiny", &[1, 1, 27, 28], &[0.0], false),
            auth,
            Code::InvalidArgument,
        ),
        (
            infer_request("tiny", &[1, 1, 27, 28], &vec![0.0; 27 * 28], true),
            auth,
            Code::InvalidArgument,
        ),
        (wrong_output, auth, Code::InvalidArgument),
        (
            infer_request("tiny", &[512, 1024], &big, true),
            auth,
            Code::ResourceExhausted,
        ),
    ];
    for (request, authorization, code) in cases {
        let e = c
            .model_infer(call(request, authorization))
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "{authorization:?}: {e:?}");
        assert!(!e.message().is_empty());
    }
    let e = c
        .model_metadata(call(
            ModelMetadataRequest {
                name: "tiny".into(),
                version: String::new(),
            },
            Some(&revoked_auth),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // A gateway that may run no inference sheds every one: UNAVAILABLE with retry-after.
    let mut drained = gconfig.clone();
    drained.infer_inflight_max = 0;
    let (_, drained) = serve(Gateway::new(drained, upstream).unwrap()).await;
    let e = connect(drained)
        .await
        .model_infer(call(good(), auth))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(e.metadata().get("retry-after").unwrap(), "1");

    // The network without capacity (both nodes killed): UNAVAILABLE.
    let mut quick = Upstream::new(net.dispatcher_addr, net.dispatcher().id());
    quick.client.connect_timeout_ms = 300;
    quick.client.infer_timeout_ms = 1_000;
    quick.client.attempts_max = Some(3);
    let (_, quick) = serve(Gateway::new(gconfig, quick).unwrap()).await;
    for node in &net.nodes {
        node.kill();
    }
    let e = connect(quick)
        .await
        .model_infer(call(good(), auth))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");

    // The metrics (over HTTP) counted the calls by method and code.
    let r = http(http_addr, "GET", "/metrics", &[], b"").await;
    let text = String::from_utf8(r.body).unwrap();
    for line in [
        "crat_gateway_grpc_calls_total{method=\"ModelInfer\",code=\"OK\"} 2\n",
        "crat_gateway_grpc_calls_total{method=\"ModelInfer\",code=\"RESOURCE_EXHAUSTED\"} 1\n",
        "crat_gateway_grpc_calls_total{method=\"ModelInfer\",code=\"UNAUTHENTICATED\"} 3\n",
        "crat_gateway_grpc_calls_total{method=\"ModelReady\",code=\"OK\"} 4\n",
        "crat_gateway_infer_duration_seconds_count ",
    ] {
        assert!(text.contains(line), "{line} not in {text}");
    }
    net.shutdown();
}
