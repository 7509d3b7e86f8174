//! `crat-gateway`: the KServe Open Inference Protocol v2 over HTTP and gRPC (Triton-compatible)
//! in front of the CryptoRAT SDK, so that `tritonclient` (HTTP and gRPC), KServe clients and
//! `curl` can call models deployed on the network.
//!
//! | HTTP route / gRPC method | what |
//! |---|---|
//! | `GET /v2/health/live`, `GET /v2/health/ready` | the gateway is up (no key needed) |
//! | `GET /v2` | server metadata (extensions: `binary_tensor_data`, `model_configuration`) |
//! | `GET /v2/models/{name}[/versions/{v}]` | model metadata from the deployment's signature |
//! | `GET /v2/models/{name}[/versions/{v}]/ready` | 200 when the deployment serves, 400 otherwise |
//! | `GET /v2/models/{name}[/versions/{v}]/config` | Triton's model configuration (what its clients read) |
//! | `POST /v2/models/{name}[/versions/{v}]/infer` | inference: JSON tensors and Triton's binary tensor extension |
//! | `GET /metrics` | Prometheus metrics |
//! | gRPC `inference.GRPCInferenceService` on [`GatewayConfig::grpc_addr`] | the protocol's gRPC service ([`grpc`]): `ServerLive`, `ServerReady`, `ServerMetadata`, `ModelMetadata`, `ModelReady`, `ModelInfer` (typed or raw tensors) |
//!
//! **Names and versions.** A model name is one of the configured names
//! ([`GatewayConfig::models`], name → deployment id) or a deployment id itself (`dep_…`). Its
//! one version is the id of the deployment's model (the blake3 hash of its ONNX bytes); a
//! route with another version answers 404. A model update (`Deployment::update_model`, `crat
//! deploy --update`) makes the new model's id the version, seen by the gateway within a
//! second (at once by a request naming it); while the update rolls out, replicas still on
//! the model before answer until they switch.
//!
//! **Keys.** Every model route needs `Authorization: Bearer sk_…` (over gRPC, the metadata
//! `authorization`), an SDK key: the gateway calls the network as that key (its credits, its
//! deployments), through one SDK client per key ([`GatewayConfig::clients_max`] of them at
//! most; the least recently used goes, after sending the acknowledgements it holds to the
//! dispatcher). A key the network refuses drops its client.
//!
//! **Errors** are the protocol's body `{"error": "…"}` with the status of
//! [`GatewayError::status`]: 400 invalid input, 401 a missing, malformed or unknown key, 403
//! an expired or revoked key, 402 insufficient credits, 404 an unknown model, 413 a body over
//! [`GatewayConfig::body_bytes_max`], 429 a plan's rate, 503 no capacity or busy (with
//! `Retry-After`), 504 a timeout, 502 a failure of the network's peers. Over gRPC the same
//! errors carry the code of [`GatewayError::grpc_code`].
//!
//! **Bounds.** Requests in progress, HTTP and gRPC together
//! ([`GatewayConfig::http_inflight_max`], more wait for a slot), inferences in progress
//! ([`GatewayConfig::infer_inflight_max`], more are answered 503 at once), body and gRPC
//! message bytes, clients, and deployment handles per client. Request bodies in memory are at
//! most `infer_inflight_max × body_bytes_max`; JSON tensor data is parsed straight into tensor
//! bytes.
//!
//! ```
//! use axum::body::Body;
//! use axum::http::Request;
//! use crat_gateway::{Gateway, GatewayConfig, Upstream};
//! use tower::ServiceExt;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dispatcher_id = "0101010101010101010101010101010101010101010101010101010101010101".parse()?;
//! let mut config = GatewayConfig::default();
//! config.models.insert("tiny".into(), "dep_00112233445566778899aabbccddeeff".parse()?);
//! let gateway = Gateway::new(config, Upstream::new("127.0.0.1:7400".parse()?, dispatcher_id))?;
//!
//! // Serve with `gateway.serve(listener, shutdown)`; here one request straight to the router.
//! let response = gateway
//!     .router()
//!     .oneshot(Request::get("/v2/health/live").body(Body::empty())?)
//!     .await?;
//! assert_eq!(response.status(), 200);
//! // Model routes need a key.
//! let response = gateway
//!     .router()
//!     .oneshot(Request::get("/v2/models/tiny").body(Body::empty())?)
//!     .await?;
//! assert_eq!(response.status(), 401);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use crat_core::id::DeploymentId;
use serde::Deserialize;

mod clients;
pub mod codec;
mod error;
pub mod grpc;
mod metrics;
mod server;

pub use clients::Upstream;
pub use error::GatewayError;

/// The header that gives the length of a body's JSON part when binary tensor data follows.
pub const INFERENCE_HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

/// Most configured model names.
pub const MODELS_MAX: usize = 4_096;

/// Most threads [`GatewayConfig::threads`] may name.
pub const THREADS_MAX: usize = 1_024;

/// The gateway's settings: the `[gateway]` table of `crat gateway --config`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// TCP address to serve HTTP on. Default 127.0.0.1:8000.
    pub listen: SocketAddr,
    /// TCP address to serve gRPC on (the protocol's `inference.GRPCInferenceService`, see
    /// [`grpc`]); none, the default: no gRPC.
    pub grpc_addr: Option<SocketAddr>,
    /// Model names → deployments (at most [`MODELS_MAX`]). A deployment id is a model name
    /// too, without being listed.
    pub models: BTreeMap<String, DeploymentId>,
    /// Largest request body, bytes. Default 64 MiB (the network's tensor frame limit).
    pub body_bytes_max: usize,
    /// HTTP requests and gRPC calls handled at once, together; more wait for a slot. Default
    /// 1,024.
    pub http_inflight_max: usize,
    /// Inferences run at once; more are answered 503 with `Retry-After` at once (0: every
    /// inference is, for draining a gateway). Default 256.
    pub infer_inflight_max: usize,
    /// SDK clients (one per key) held at once. Default 64.
    pub clients_max: usize,
    /// Deployment handles (each with its lease) held per client. Default 64.
    pub deployments_per_client_max: usize,
    /// Threads `crat gateway` serves on (its tokio runtime's workers; a program embedding
    /// the gateway serves it on its own runtime). 0, the default: a quarter of the machine's
    /// cores, at least one: fewer threads to hand a request's tasks between answer it sooner
    /// (measured in `benches/compare/README.md`, 2026-12-07 05:30). At most
    /// [`THREADS_MAX`].
    pub threads: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            grpc_addr: None,
            models: BTreeMap::new(),
            body_bytes_max: 64 << 20,
            http_inflight_max: 1_024,
            infer_inflight_max: 256,
            clients_max: 64,
            deployments_per_client_max: 64,
            threads: 0,
        }
    }
}

impl GatewayConfig {
    /// Checks the limits and names.
    pub fn validate(&self) -> Result<(), GatewayError> {
        let positive = [
            ("body_bytes_max", self.body_bytes_max),
            ("http_inflight_max", self.http_inflight_max),
            ("clients_max", self.clients_max),
            (
                "deployments_per_client_max",
                self.deployments_per_client_max,
            ),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(GatewayError::Config(format!("{name} must be at least 1")));
        }
        if self.grpc_addr == Some(self.listen) && self.listen.port() != 0 {
            return Err(GatewayError::Config(format!(
                "grpc_addr and listen are both {}: gRPC needs a port of its own",
                self.listen
            )));
        }
        if self.threads > THREADS_MAX {
            return Err(GatewayError::Config(format!(
                "threads is {}, at most {THREADS_MAX}",
                self.threads
            )));
        }
        if self.models.len() > MODELS_MAX {
            return Err(GatewayError::Config(format!(
                "{} model names, at most {MODELS_MAX}",
                self.models.len()
            )));
        }
        if let Some(bad) = self
            .models
            .keys()
            .find(|n| n.is_empty() || n.contains('/') || n.len() > 256)
        {
            return Err(GatewayError::Config(format!(
                "model name {bad:?}: 1 to 256 bytes, no '/'"
            )));
        }
        Ok(())
    }
}

/// An Open Inference Protocol v2 gateway over the network reached through [`Upstream`].
///
/// Cheap to clone; clones share clients, limits and metrics.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<server::Shared>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway with `config` in front of `upstream`. Nothing connects until a request with
    /// a key comes.
    pub fn new(config: GatewayConfig, upstream: Upstream) -> Result<Self, GatewayError> {
        config.validate()?;
        Ok(Self {
            shared: Arc::new(server::Shared::new(config, upstream)),
        })
    }

    /// The settings in use.
    pub fn config(&self) -> &GatewayConfig {
        &self.shared.config
    }

    /// The HTTP routes, with their limits and metrics.
    pub fn router(&self) -> axum::Router {
        server::router(self.shared.clone())
    }

    /// Serves HTTP on `listener` until `shutdown` completes, then lets requests in progress
    /// finish and sends every client's acknowledgements to the dispatcher.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.serve_with_grpc(listener, None, shutdown).await
    }

    /// Serves HTTP on `http` and, when given, gRPC on `grpc` (see [`grpc`]), with the same
    /// clients, limits and metrics, until `shutdown` completes or either server fails; then
    /// lets requests in progress finish and sends every client's acknowledgements to the
    /// dispatcher.
    pub async fn serve_with_grpc(
        self,
        http: tokio::net::TcpListener,
        grpc: Option<tokio::net::TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            // `stop` outlives both servers, so this returns once it says stop.
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let trigger = async {
            tokio::select! {
                () = shutdown => {}
                () = stopped(stopping.clone()) => {}
            }
            let _ = stop.send(true);
        };
        let http = async {
            // Each answer is written as soon as it is ready: without TCP_NODELAY the kernel
            // holds a write back while an earlier one is unacknowledged (Nagle), and a client
            // delaying its ACK holds up the answer's end.
            let http = axum::serve::ListenerExt::tap_io(http, |tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "TCP_NODELAY not set on a connection");
                }
            });
            let served = axum::serve(http, self.router())
                .with_graceful_shutdown(stopped(stopping.clone()))
                .await;
            // One server ending (by failing) ends the other.
            let _ = stop.send(true);
            served
        };
        let grpc = async {
            let Some(listener) = grpc else {
                return Ok(());
            };
            let served =
                grpc::serve(self.shared.clone(), listener, stopped(stopping.clone())).await;
            let _ = stop.send(true);
            served
        };
        let ((), http, grpc) = tokio::join!(trigger, http, grpc);
        self.shared.clients.flush_all().await;
        http.and(grpc)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn configs_parse_from_toml_and_are_checked() {
        let c: GatewayConfig = toml::from_str(
            "listen = \"0.0.0.0:8080\"\nbody_bytes_max = 1024\n[models]\ntiny = \"dep_00112233445566778899aabbccddeeff\"\n",
        )
        .unwrap();
        assert_eq!(c.listen.port(), 8080);
        assert_eq!(c.grpc_addr, None);
        let g: GatewayConfig = toml::from_str("grpc_addr = \"127.0.0.1:8001\"").unwrap();
        assert_eq!(g.grpc_addr.map(|a| a.port()), Some(8001));
        let mut same = g.clone();
        same.grpc_addr = Some(same.listen);
        assert!(
            same.validate()
                .unwrap_err()
                .to_string()
                .contains("port of its own")
        );
        assert_eq!(c.body_bytes_max, 1024);
        assert_eq!(c.clients_max, GatewayConfig::default().clients_max);
        assert!(c.validate().is_ok());
        assert!(toml::from_str::<GatewayConfig>("bogus = 1").is_err());
        let mut bad = c.clone();
        bad.clients_max = 0;
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("clients_max")
        );
        let mut bad = c.clone();
        bad.threads = THREADS_MAX + 1;
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            GatewayError::Config(format!(
                "threads is {}, at most {THREADS_MAX}",
                THREADS_MAX + 1
            ))
            .to_string()
        );
        bad.threads = THREADS_MAX;
        assert!(bad.validate().is_ok());
        let mut bad = c;
        bad.models
            .insert("a/b".into(), DeploymentId::from_bytes([0; 16]));
        assert!(bad.validate().is_err());
    }
}
