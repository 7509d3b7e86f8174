//! The KServe Open Inference Protocol v2 over gRPC: the service
//! `inference.GRPCInferenceService` of `proto/grpc_predict_v2.proto` (the package and service
//! Triton's clients call), on a port of its own ([`GatewayConfig::grpc_addr`]), with the HTTP
//! side's code for names, versions, keys, clients, limits, inference and metrics.
//!
//! | method | what |
//! |---|---|
//! | `ServerLive`, `ServerReady` | true (no key needed) |
//! | `ServerMetadata` | the gateway's name and version (no key needed) |
//! | `ModelMetadata` | the deployment's versions and signature, as over HTTP |
//! | `ModelReady` | true when the deployment serves; false, as Triton answers, for a model or version that is unknown or not ready |
//! | `ModelInfer` | inference: typed `contents` or `raw_input_contents` in; outputs in the request's form (raw bytes for raw requests, what `tritonclient` uses; typed for typed ones, raw if an output is FP16) |
//!
//! The model calls need the metadata `authorization: Bearer sk_…`. Errors are statuses with
//! the code of [`GatewayError::grpc_code`] and the HTTP side's message; retryable ones carry
//! `retry-after` metadata. Triton's `ModelConfig` and the other methods of its
//! `grpc_service.proto` are not served (`UNIMPLEMENTED`).
//!
//! **Bounds.** Calls in progress share HTTP's limit ([`GatewayConfig::http_inflight_max`],
//! more wait for a slot; also each connection's concurrent streams). A `ModelInfer` call
//! takes an inference slot ([`GatewayConfig::infer_inflight_max`], else `UNAVAILABLE` at
//! once) after its key's form is checked and before its message is read, so messages in
//! memory are at most `infer_inflight_max × body_bytes_max`; a message over
//! [`GatewayConfig::body_bytes_max`] is refused from its length prefix with
//! `RESOURCE_EXHAUSTED`.
//!
//! **Generated code, checked in.** [`inference`] (prost messages, the tonic server and client)
//! is generated from the .proto by `crates/gateway/codegen`, a crate of its own workspace that
//! compiles the .proto with protox (pure Rust) and generates with tonic-prost-build, and the
//! output is checked in. A build script would make every build of the gateway compile protox,
//! prost-build, tonic-build and their dependencies (petgraph, regex, syn with full features,
//! miette, logos, …), about a minute of CPU on a cold build, to produce the same ~1,000 lines
//! each time; checked in, the gateway's build needs no protobuf compiler and no generator. A
//! unit test fails when the .proto no longer hashes to the blake3 recorded in the generated
//! file's header, and `cargo run --manifest-path crates/gateway/codegen/Cargo.toml -- --check`
//! regenerates and compares the whole file.
//!
//! [`GatewayConfig::grpc_addr`]: crate::GatewayConfig::grpc_addr
//! [`GatewayConfig::http_inflight_max`]: crate::GatewayConfig::http_inflight_max
//! [`GatewayConfig::infer_inflight_max`]: crate::GatewayConfig::infer_inflight_max
//! [`GatewayConfig::body_bytes_max`]: crate::GatewayConfig::body_bytes_max

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::{self, HeaderValue, header};
use crat_core::id::SdkKey;
use tonic::body::Body;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};
use tower::limit::GlobalConcurrencyLimitLayer;

use crate::codec::kserve_name;
use crate::error::GatewayError;
use crate::server::{ModelPath, PLATFORM, SERVER_NAME, Shared, bearer_key, describe, kserve_shape};
use inference::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use inference::model_metadata_response::TensorMetadata;
use inference::*;

/// The messages and service of `proto/grpc_predict_v2.proto` (package `inference`), generated
/// by `crates/gateway/codegen`: [`grpc_inference_service_client::GrpcInferenceServiceClient`]
/// calls a gateway (bring a tonic channel).
#[rustfmt::skip]
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod inference;
mod tensors;

/// The service's path prefix.
const SERVICE_PATH: &str = "/inference.GRPCInferenceService/";
/// The methods served, which are also the `method` label of the call counter.
const METHODS: [&str; 6] = [
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
];
/// The method whose calls take an inference slot.
const MODEL_INFER: &str = "ModelInfer";

impl From<GatewayError> for Status {
    fn from(e: GatewayError) -> Self {
        e.to_status()
    }
}

/// The SDK key of a call's `authorization` metadata.
fn key_of<T>(request: &Request<T>) -> Result<SdkKey, GatewayError> {
    bearer_key(
        request
            .metadata()
            .get(header::AUTHORIZATION.as_str())
            .map(|v| v.as_encoded_bytes()),
    )
}

/// The model a call names; an empty version is none (proto3 strings have no "unset").
fn model_path(name: String, version: String) -> ModelPath {
    ModelPath {
        name,
        version: (!version.is_empty()).then_some(version),
    }
}

/// The service's handlers.
struct Inference {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse { ready: true }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let key = key_of(&request)?;
        let m = request.into_inner();
        let ready = match self
            .shared
            .ready(&key, &model_path(m.name, m.version))
            .await
        {
            Ok(()) => true,
            // As Triton answers: a model or version that is unknown or not ready is "not
            // ready", not an error. Errors of the key or the network stay errors.
            Err(e)
                if matches!(e, GatewayError::NotReady { .. })
                    || e.grpc_code() == Code::NotFound =>
            {
                false
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: SERVER_NAME.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            // HTTP's binary_tensor_data and model_configuration are HTTP extensions.
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let key = key_of(&request)?;
        let m = request.into_inner();
        let path = model_path(m.name, m.version);
        let info = self.shared.info(&key, &path).await?;
        let (inputs, outputs) = describe(&info, |t| TensorMetadata {
            name: t.name.clone(),
            datatype: kserve_name(t.dtype).to_owned(),
            shape: kserve_shape(t),
        });
        Ok(Response::new(ModelMetadataResponse {
            name: path.name,
            versions: vec![info.model.to_string()],
            platform: PLATFORM.to_owned(),
            inputs,
            outputs,
        }))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        // [`Admission`] checked the key's form and holds this call's inference slot.
        let key = key_of(&request)?;
        let mut message = request.into_inner();
        let path = model_path(
            std::mem::take(&mut message.model_name),
            std::mem::take(&mut message.model_version),
        );
        self.shared.resolve(&path.name)?;
        let mut decoded = tensors::decode(&mut message)?;
        let id = std::mem::take(&mut message.id);
        drop(message);
        let outputs = self
            .shared
            .infer(&key, &path, std::mem::take(&mut decoded.inputs))
            .await?;
        let response = tensors::encode(
            path.name,
            path.version.unwrap_or_default(),
            id,
            &decoded,
            &outputs,
        )?;
        Ok(Response::new(response))
    }
}

/// Serves the service on `listener` until `signal` completes.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    signal: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let service = GrpcInferenceServiceServer::new(Inference {
        shared: shared.clone(),
    })
    .max_decoding_message_size(shared.config.body_bytes_max);
    let streams_max = u32::try_from(shared.config.http_inflight_max).unwrap_or(u32::MAX);
    let admission = shared.clone();
    tonic::transport::Server::builder()
        .max_concurrent_streams(streams_max)
        // The request limit HTTP has, the same slots.
        .layer(GlobalConcurrencyLimitLayer::with_semaphore(
            shared.request_permits.clone(),
        ))
        .layer(tower::layer::layer_fn(move |inner| Admission {
            inner,
            shared: admission.clone(),
        }))
        .add_service(service)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), signal)
        .await
        .map_err(std::io::Error::other)
}

/// In front of the service: a `ModelInfer` call's cheap refusals (no key, no inference slot)
/// before its message is read, holding the slot until the answer; every call counted by
/// method and code; tonic's `OUT_OF_RANGE` for a message over the size limit answered as
/// [`GatewayError::BodyTooLarge`] (`RESOURCE_EXHAUSTED`, as gRPC's own implementations do).
#[derive(Clone)]
struct Admission<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> tower::Service<http::Request<Body>> for Admission<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let shared = self.shared.clone();
        let method = method_of(request.uri().path());
        let permit = if method == MODEL_INFER {
            let authorization = request
                .headers()
                .get(header::AUTHORIZATION)
                .map(HeaderValue::as_bytes);
            match bearer_key(authorization).and_then(|_| shared.infer_permit()) {
                Ok(permit) => Some(permit),
                Err(e) => {
                    let response = answered(&shared, method, e.to_status().into_http());
                    return Box::pin(std::future::ready(Ok(response)));
                }
            }
        } else {
            None
        };
        // The clone that was made ready is the one to call.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        Box::pin(async move {
            let response = inner.call(request).await?;
            drop(permit);
            Ok(answered(&shared, method, response))
        })
    }
}

/// Counts an answered call and gives the size limit's refusal its code (tonic uses
/// `OUT_OF_RANGE` only for a message over `max_decoding_message_size`; the handlers never do).
fn answered(
    shared: &Shared,
    method: &'static str,
    response: http::Response<Body>,
) -> http::Response<Body> {
    // No status in the headers: a message was answered, and OK follows in the trailers.
    let code = Status::from_header_map(response.headers()).map_or(Code::Ok, |s| s.code());
    let (code, response) = if code == Code::OutOfRange {
        let e = GatewayError::BodyTooLarge {
            limit: shared.config.body_bytes_max,
        };
        (e.grpc_code(), e.to_status().into_http())
    } else {
        (code, response)
    };
    shared.metrics.grpc_call(method, code_name(code));
    response
}

/// The method a request path calls, from [`METHODS`], else `unknown`.
fn method_of(path: &str) -> &'static str {
    path.strip_prefix(SERVICE_PATH)
        .and_then(|m| METHODS.iter().find(|known| **known == m))
        .copied()
        .unwrap_or("unknown")
}

/// A status code's name as the gRPC specification writes it.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_code_comes_from_the_proto_as_it_is() {
        let proto = include_bytes!("../../proto/grpc_predict_v2.proto");
        let generated = include_str!("inference.rs");
        let hash = blake3::hash(proto).to_hex();
        assert!(
            generated.lines().take(3).any(|l| l.contains(hash.as_str())),
            "proto/grpc_predict_v2.proto changed: regenerate src/grpc/inference.rs with \
             `cargo run --manifest-path crates/gateway/codegen/Cargo.toml`"
        );
    }

    #[test]
    fn methods_and_codes_have_bounded_names() {
        assert_eq!(
            method_of("/inference.GRPCInferenceService/ModelInfer"),
            MODEL_INFER
        );
        assert_eq!(
            method_of("/inference.GRPCInferenceService/ModelConfig"),
            "unknown"
        );
        assert_eq!(method_of("/other.Service/ModelInfer"), "unknown");
        assert_eq!(code_name(Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
    }
}
