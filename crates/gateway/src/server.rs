//! The HTTP routes (health, metadata, readiness, Triton's model configuration, inference and
//! metrics, with the in-flight limits and the per-route counters), and what they share with
//! the gRPC service ([`crate::grpc`]): the key, name and version rules, the client pool, the
//! limits, the inference path and its metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use crat_core::id::{DeploymentId, ModelId, SdkKey};
use crat_core::tensor::NamedTensor;
use crat_core::wire::{DeploymentInfo, DeploymentState, TensorSignature};
use crat_sdk::Deployment;
use crat_transport::any::AnyTransport;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::limit::GlobalConcurrencyLimitLayer;

use crate::clients::ClientPool;
use crate::codec::{self, kserve_name, triton_name};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::{GatewayConfig, INFERENCE_HEADER_CONTENT_LENGTH, Upstream};

/// Model ids of deployments remembered for version checks (a deployment's model never
/// changes); the memory is cleared when full.
const MODEL_IDS_MAX: usize = 4_096;
/// How long a deployment's model id, as last described, is trusted for checking a request's
/// version: a model update (a new version) is seen within this, and at once by a request
/// naming the new version.
const MODEL_ID_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// The route patterns, which are also the `route` label of the request counter.
const ROUTES: [&str; 12] = [
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
    "/v2/models/{name}",
    "/v2/models/{name}/versions/{version}",
    "/v2/models/{name}/ready",
    "/v2/models/{name}/versions/{version}/ready",
    "/v2/models/{name}/config",
    "/v2/models/{name}/versions/{version}/config",
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}/infer",
    "/metrics",
];

/// The server's name in its metadata.
pub(crate) const SERVER_NAME: &str = "crat-gateway";
/// The platform of every model in its metadata (the nodes run ONNX models).
pub(crate) const PLATFORM: &str = "onnxruntime_onnx";

/// What every request shares, over HTTP and gRPC.
pub(crate) struct Shared {
    pub(crate) config: GatewayConfig,
    pub(crate) clients: ClientPool,
    pub(crate) metrics: Metrics,
    /// Requests in progress, HTTP and gRPC together ([`GatewayConfig::http_inflight_max`]).
    pub(crate) request_permits: Arc<Semaphore>,
    infer_permits: Arc<Semaphore>,
    /// Each deployment's model id as last described, and when.
    model_ids: Mutex<HashMap<DeploymentId, (ModelId, Instant)>>,
}

impl Shared {
    pub(crate) fn new(config: GatewayConfig, upstream: Upstream) -> Self {
        Self {
            clients: ClientPool::new(upstream, config.clients_max),
            metrics: Metrics::default(),
            request_permits: Arc::new(Semaphore::new(config.http_inflight_max)),
            infer_permits: Arc::new(Semaphore::new(config.infer_inflight_max)),
            model_ids: Mutex::new(HashMap::new()),
            config,
        }
    }

    /// The deployment a model name stands for.
    pub(crate) fn resolve(&self, name: &str) -> Result<DeploymentId, GatewayError> {
        if let Some(id) = self.config.models.get(name) {
            return Ok(*id);
        }
        name.parse()
            .map_err(|_| GatewayError::UnknownModel(name.to_owned()))
    }

    /// The handle on model `name`'s deployment through the client of `key`.
    async fn deployment(
        &self,
        key: &SdkKey,
        name: &str,
    ) -> Result<Deployment<AnyTransport>, GatewayError> {
        let id = self.resolve(name)?;
        let (client, slot) = self
            .clients
            .get(key)
            .await
            .map_err(|e| self.refused(key, e))?;
        Ok(slot.deployment(&client, id, self.config.deployments_per_client_max))
    }

    /// The deployment's description; checks `version` against its model when given.
    pub(crate) async fn info(
        &self,
        key: &SdkKey,
        path: &ModelPath,
    ) -> Result<DeploymentInfo, GatewayError> {
        let d = self.deployment(key, &path.name).await?;
        let info = d.info().await.map_err(|e| self.refused(key, e.into()))?;
        self.remember_model(info.id, info.model);
        check_version(path, &info.model)?;
        Ok(info)
    }

    /// Whether the model serves: `Ok` when its deployment is ready (or degraded),
    /// [`GatewayError::NotReady`] when not, other errors as [`Shared::info`].
    pub(crate) async fn ready(&self, key: &SdkKey, path: &ModelPath) -> Result<(), GatewayError> {
        let info = self.info(key, path).await?;
        match info.state {
            DeploymentState::Ready | DeploymentState::Degraded => Ok(()),
            state => Err(GatewayError::NotReady {
                model: path.name.clone(),
                state: format!(
                    "{state:?}, {} of {} replicas ready",
                    info.replicas_ready, info.replicas_wanted
                ),
            }),
        }
    }

    /// A slot for one inference ([`GatewayConfig::infer_inflight_max`] of them), held until
    /// the answer is written; none free: [`GatewayError::Overloaded`] at once (counted as
    /// shed).
    pub(crate) fn infer_permit(&self) -> Result<OwnedSemaphorePermit, GatewayError> {
        self.infer_permits.clone().try_acquire_owned().map_err(|_| {
            self.metrics.shed();
            GatewayError::Overloaded {
                limit: self.config.infer_inflight_max,
            }
        })
    }

    /// Inferences in progress now.
    pub(crate) fn infer_inflight(&self) -> usize {
        self.config
            .infer_inflight_max
            .saturating_sub(self.infer_permits.available_permits())
    }

    /// Runs `inputs` through the model at `path` as `key`, after checking the version (when
    /// given) against the deployment's model; records the latency. The caller holds an
    /// [`infer_permit`](Self::infer_permit).
    pub(crate) async fn infer(
        &self,
        key: &SdkKey,
        path: &ModelPath,
        inputs: Vec<NamedTensor>,
    ) -> Result<Vec<NamedTensor>, GatewayError> {
        let d = self.deployment(key, &path.name).await?;
        if path.version.is_some() {
            // Described within the last second and naming this version: trusted; otherwise
            // described again (the deployment may have been updated to another model).
            let known = self
                .model_ids
                .lock()
                .get(&d.id())
                .filter(|(m, at)| {
                    at.elapsed() < MODEL_ID_FRESH
                        && path.version.as_deref() == Some(m.to_string().as_str())
                })
                .map(|(m, _)| *m);
            let model = match known {
                Some(m) => m,
                None => {
                    let info = d.info().await.map_err(|e| self.refused(key, e.into()))?;
                    self.remember_model(info.id, info.model);
                    info.model
                }
            };
            check_version(path, &model)?;
        }
        let started = Instant::now();
        let result = d.infer(inputs).await;
        self.metrics.infer(started.elapsed());
        result.map_err(|e| self.refused(key, e.into()))
    }

    fn remember_model(&self, deployment: DeploymentId, model: ModelId) {
        let mut ids = self.model_ids.lock();
        if ids.len() >= MODEL_IDS_MAX {
            ids.clear();
        }
        ids.insert(deployment, (model, Instant::now()));
    }

    /// Drops the client of a key the network refused; passes the error on.
    fn refused(&self, key: &SdkKey, e: GatewayError) -> GatewayError {
        if e.is_key_refused() {
            self.clients.remove(key);
        }
        e
    }
}

/// The model a request names: the path parameters of the model routes, or the name and
/// version fields of a gRPC request.
#[derive(Debug, Deserialize)]
pub(crate) struct ModelPath {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) version: Option<String>,
}

fn check_version(path: &ModelPath, model: &ModelId) -> Result<(), GatewayError> {
    match &path.version {
        Some(v) if *v != model.to_string() => Err(GatewayError::UnknownVersion {
            model: path.name.clone(),
            version: v.clone(),
            serves: model.to_string(),
        }),
        _ => Ok(()),
    }
}

/// The SDK key of an `Authorization: Bearer sk_…` value (an HTTP header or gRPC metadata).
pub(crate) fn bearer_key(authorization: Option<&[u8]>) -> Result<SdkKey, GatewayError> {
    let value = std::str::from_utf8(authorization.ok_or(GatewayError::MissingKey)?)
        .map_err(|_| GatewayError::MalformedKey)?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or(GatewayError::MalformedKey)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(GatewayError::MalformedKey);
    }
    token.trim().parse().map_err(|_| GatewayError::MalformedKey)
}

/// The `Authorization` header's value.
fn authorization(headers: &HeaderMap) -> Option<&[u8]> {
    headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let request_permits = shared.request_permits.clone();
    let model = |suffix: &str| {
        (
            format!("/v2/models/{{name}}{suffix}"),
            format!("/v2/models/{{name}}/versions/{{version}}{suffix}"),
        )
    };
    let (meta, meta_v) = model("");
    let (ready, ready_v) = model("/ready");
    let (config, config_v) = model("/config");
    let (infer, infer_v) = model("/infer");
    Router::new()
        .route("/v2", get(server_metadata))
        .route(
            "/v2/health/live",
            get(|| async { Json(json!({"live": true})) }),
        )
        .route(
            "/v2/health/ready",
            get(|| async { Json(json!({"ready": true})) }),
        )
        .route(&meta, get(model_metadata))
        .route(&meta_v, get(model_metadata))
        .route(&ready, get(model_ready))
        .route(&ready_v, get(model_ready))
        .route(&config, get(model_config))
        .route(&config_v, get(model_config))
        .route(&infer, post(infer_route))
        .route(&infer_v, post(infer_route))
        .route("/metrics", get(metrics))
        .fallback(|| async { GatewayError::NoRoute("no such route".into()) })
        .method_not_allowed_fallback(|| async {
            GatewayError::NoRoute("this route takes another method".into())
                .with_status(StatusCode::METHOD_NOT_ALLOWED)
        })
        .layer(middleware::from_fn_with_state(shared.clone(), count))
        // One limit over every route (a plain `ConcurrencyLimitLayer` would give each route
        // its own), shared with the gRPC service.
        .layer(GlobalConcurrencyLimitLayer::with_semaphore(request_permits))
        .with_state(shared)
}

impl GatewayError {
    /// This error's body with another status.
    fn with_status(self, status: StatusCode) -> Response {
        let mut r = self.into_response();
        *r.status_mut() = status;
        r
    }
}

/// Counts every answered request by route pattern and status.
async fn count(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let pattern = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let route = ROUTES
        .iter()
        .find(|r| Some(**r) == pattern.as_deref())
        .copied()
        .unwrap_or("unmatched");
    let response = next.run(request).await;
    shared.metrics.request(route, response.status().as_u16());
    response
}

async fn server_metadata() -> Json<serde_json::Value> {
    Json(json!({
        "name": SERVER_NAME,
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "model_configuration"],
    }))
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let inflight = shared.infer_inflight();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        shared.metrics.render(inflight, shared.clients.len()),
    )
        .into_response()
}

/// A signature's dimensions in KServe form: open ones are -1; a shape the model does not
/// declare at all is `[-1]`.
pub(crate) fn kserve_shape(t: &TensorSignature) -> Vec<i64> {
    match &t.shape {
        None => vec![-1],
        Some(dims) => dims
            .iter()
            .map(|d| d.and_then(|d| i64::try_from(d).ok()).unwrap_or(-1))
            .collect(),
    }
}

/// The deployment's inputs and outputs, each described by `one`; none when the wire could
/// not carry the model's signature.
pub(crate) fn describe<T>(
    info: &DeploymentInfo,
    one: impl Fn(&TensorSignature) -> T,
) -> (Vec<T>, Vec<T>) {
    info.signature
        .as_ref()
        .map(|s| {
            (
                s.inputs.iter().map(&one).collect(),
                s.outputs.iter().map(&one).collect(),
            )
        })
        .unwrap_or_default()
}

async fn model_metadata(
    State(shared): State<Arc<Shared>>,
    Path(path): Path<ModelPath>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, GatewayError> {
    let key = bearer_key(authorization(&headers))?;
    let info = shared.info(&key, &path).await?;
    let (inputs, outputs) = describe(
        &info,
        |t| json!({"name": t.name, "datatype": kserve_name(t.dtype), "shape": kserve_shape(t)}),
    );
    Ok(Json(json!({
        "name": path.name,
        "versions": [info.model.to_string()],
        "platform": PLATFORM,
        "inputs": inputs,
        "outputs": outputs,
    })))
}

async fn model_ready(
    State(shared): State<Arc<Shared>>,
    Path(path): Path<ModelPath>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, GatewayError> {
    let key = bearer_key(authorization(&headers))?;
    shared.ready(&key, &path).await?;
    Ok(Json(json!({"name": path.name, "ready": true})))
}

async fn model_config(
    State(shared): State<Arc<Shared>>,
    Path(path): Path<ModelPath>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, GatewayError> {
    let key = bearer_key(authorization(&headers))?;
    let info = shared.info(&key, &path).await?;
    let (input, output) = describe(
        &info,
        |t| json!({"name": t.name, "data_type": triton_name(t.dtype), "dims": kserve_shape(t)}),
    );
    // Batching happens on the nodes, not in front of them: the model's own shapes, no
    // Triton batch dimension.
    Ok(Json(json!({
        "name": path.name,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "max_batch_size": 0,
        "input": input,
        "output": output,
    })))
}

/// The length of the JSON part of a body with binary tensor data, if the header is there.
fn inference_header_len(headers: &HeaderMap) -> Result<Option<usize>, GatewayError> {
    headers
        .get(INFERENCE_HEADER_CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    GatewayError::InvalidRequest(
                        "Inference-Header-Content-Length is not a byte count".into(),
                    )
                })
        })
        .transpose()
}

/// Reads the whole body, refusing more than `limit` bytes (by `Content-Length` before
/// reading anything, else as the bytes come).
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<axum::body::Bytes, GatewayError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let inner = e.into_inner();
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&*inner);
        while let Some(s) = source {
            if s.is::<http_body_util::LengthLimitError>() {
                return GatewayError::BodyTooLarge { limit };
            }
            source = s.source();
        }
        GatewayError::Body(inner.to_string())
    })
}

async fn infer_route(
    State(shared): State<Arc<Shared>>,
    Path(path): Path<ModelPath>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, GatewayError> {
    // Cheap refusals first: the key's form, the model name, the in-flight limit; only then
    // is the body read (so bodies in memory are bounded by the limit).
    let key = bearer_key(authorization(&headers))?;
    shared.resolve(&path.name)?;
    let _permit = shared.infer_permit()?;
    let header_len = inference_header_len(&headers)?;
    let body = read_body(&headers, body, shared.config.body_bytes_max).await?;
    let mut request = codec::decode_request(&body, header_len)?;
    drop(body);
    let outputs = shared
        .infer(&key, &path, std::mem::take(&mut request.inputs))
        .await?;
    let encoded = codec::encode_response(&path.name, path.version.as_deref(), &request, &outputs)?;
    let mut response = encoded.body.into_response();
    let headers = response.headers_mut();
    match encoded.header_len {
        Some(n) => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            headers.insert(INFERENCE_HEADER_CONTENT_LENGTH, HeaderValue::from(n));
        }
        None => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    Ok(response)
}
