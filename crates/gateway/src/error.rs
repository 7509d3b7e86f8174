//! The gateway's one error type, its HTTP form (the Open Inference Protocol's error body
//! `{"error": "<message>"}` with the status that says whose fault it is) and its gRPC form (a
//! status code derived from that HTTP status, and the same message).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Everything a gateway request can fail with. [`GatewayError::status`] is its HTTP status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// No `Authorization: Bearer sk_…` header (401).
    #[error("no SDK key: send the header Authorization: Bearer sk_<32 hex>_<64 hex>")]
    MissingKey,
    /// The `Authorization` header holds no SDK key (401).
    #[error("the Authorization header holds no SDK key (Bearer sk_<32 hex>_<64 hex>)")]
    MalformedKey,
    /// The model name is neither configured nor a deployment id (404).
    #[error("unknown model {0:?}: not a configured model name nor a deployment id (dep_…)")]
    UnknownModel(String),
    /// No route has this path (404).
    #[error(
        "{0}; the routes are /v2, /v2/health/{{live,ready}}, /v2/models/{{name}}[/versions/{{version}}][/ready|/config|/infer] and /metrics"
    )]
    NoRoute(String),
    /// The version asked for is not the deployment's model (404).
    #[error("model {model:?} has no version {version:?}; its version is {serves}")]
    UnknownVersion {
        /// The model name.
        model: String,
        /// The version asked for.
        version: String,
        /// The model id the deployment serves.
        serves: String,
    },
    /// The deployment is not ready to serve (400, the protocol's "false" for model ready).
    #[error("model {model:?} is not ready: {state}")]
    NotReady {
        /// The model name.
        model: String,
        /// Its deployment's state.
        state: String,
    },
    /// The request is malformed or does not fit the model (400).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The request body is over the gateway's limit (413).
    #[error("the request body is over the gateway's limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The request body could not be read (400).
    #[error("reading the request body: {0}")]
    Body(String),
    /// The gateway runs as many inferences as it may (503, with `Retry-After`).
    #[error("the gateway runs its most inferences at once ({limit}); retry shortly")]
    Overloaded {
        /// The limit.
        limit: usize,
    },
    /// The network refused or failed the call; the status follows the SDK error.
    #[error(transparent)]
    Sdk(#[from] crat_sdk::Error),
    /// The gateway failed internally (500).
    #[error("internal gateway error: {0}")]
    Internal(String),
    /// The gateway's configuration is invalid (at start, never in a response).
    #[error("gateway configuration: {0}")]
    Config(String),
}

impl GatewayError {
    /// The HTTP status of this error.
    ///
    /// SDK errors: invalid input, bad requests and shape or tensor errors 400; an unknown or
    /// wrong key 401; an expired or revoked key 403; insufficient credits or a spent ticket
    /// budget 402; too large 413; an unknown or stopped deployment 404; no capacity, busy,
    /// no replica left, a refused ticket 503; a plan's rate or a quota 429; timeouts 504;
    /// failures of the network's peers (transport, protocol, receipts, validation, internal)
    /// 502.
    pub fn status(&self) -> StatusCode {
        use crat_sdk::Error as E;
        match self {
            Self::MissingKey | Self::MalformedKey => StatusCode::UNAUTHORIZED,
            Self::UnknownModel(_) | Self::UnknownVersion { .. } | Self::NoRoute(_) => {
                StatusCode::NOT_FOUND
            }
            Self::NotReady { .. } | Self::InvalidRequest(_) | Self::Body(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) | Self::Config(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Sdk(e) => match e {
                E::BadRequest(_)
                | E::InvalidInput(_)
                | E::Shape(_)
                | E::Tensor(_)
                | E::NoSuchTensor(_) => StatusCode::BAD_REQUEST,
                E::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
                E::KeyExpired(_) | E::KeyRevoked(_) => StatusCode::FORBIDDEN,
                E::InsufficientCredits(_) | E::BudgetExhausted(_) => StatusCode::PAYMENT_REQUIRED,
                E::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                E::NotFound(_) | E::Stopped(_) => StatusCode::NOT_FOUND,
                E::NoCapacity(_) | E::Busy(_) | E::NoReplica { .. } | E::TicketRejected(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                E::RateLimited(_) | E::QuotaExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
                E::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::BAD_GATEWAY,
            },
        }
    }

    /// Whether the client should retry later (the response carries `Retry-After`).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.status(),
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        )
    }

    /// The gRPC status code of this error, read from its HTTP [`status`](Self::status), so that
    /// both protocols classify errors by the one rule:
    ///
    /// | HTTP | gRPC |
    /// |---|---|
    /// | 400 | `INVALID_ARGUMENT` |
    /// | 401 | `UNAUTHENTICATED` |
    /// | 403 | `PERMISSION_DENIED` |
    /// | 402 | `FAILED_PRECONDITION` |
    /// | 404 | `NOT_FOUND` |
    /// | 413, 429 | `RESOURCE_EXHAUSTED` |
    /// | 502, 503 | `UNAVAILABLE` |
    /// | 504 | `DEADLINE_EXCEEDED` |
    /// | others | `INTERNAL` |
    ///
    /// Insufficient credits (402) are `FAILED_PRECONDITION`, not `RESOURCE_EXHAUSTED`: gRPC
    /// keeps `RESOURCE_EXHAUSTED` for what passes with time or a smaller request (a plan's
    /// rate, a message over the limit) and clients and retry policies treat it as worth
    /// retrying, while credits come back only when someone adds them, which is what
    /// `FAILED_PRECONDITION` says ("do not retry until the system state has been explicitly
    /// fixed"). 502 (a failure of the network's peers) is `UNAVAILABLE`, as in gRPC's own
    /// table of HTTP statuses.
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self.status().as_u16() {
            400 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            402 => Code::FailedPrecondition,
            403 => Code::PermissionDenied,
            404 => Code::NotFound,
            413 | 429 => Code::ResourceExhausted,
            502 | 503 => Code::Unavailable,
            504 => Code::DeadlineExceeded,
            _ => Code::Internal,
        }
    }

    /// This error as a gRPC status: [`grpc_code`](Self::grpc_code), the message, and
    /// `retry-after` metadata (seconds) when the client should retry later.
    pub(crate) fn to_status(&self) -> tonic::Status {
        let mut status = tonic::Status::new(self.grpc_code(), self.to_string());
        if self.is_retryable() {
            status.metadata_mut().insert(
                "retry-after",
                tonic::metadata::MetadataValue::from(RETRY_AFTER_S),
            );
        }
        status
    }

    /// Whether the key itself was refused (unknown, expired, revoked): the gateway drops its
    /// client for the key.
    pub(crate) fn is_key_refused(&self) -> bool {
        matches!(
            self,
            Self::Sdk(
                crat_sdk::Error::Unauthenticated(_)
                    | crat_sdk::Error::KeyExpired(_)
                    | crat_sdk::Error::KeyRevoked(_)
            )
        )
    }
}

/// Seconds a client is told to wait before retrying (`Retry-After`).
pub(crate) const RETRY_AFTER_S: u32 = 1;

/// The Open Inference Protocol's error body.
pub(crate) fn error_body(message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "error": message }))
        .unwrap_or_else(|_| br#"{"error":"unprintable error"}"#.to_vec())
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status(),
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            error_body(&self.to_string()),
        )
            .into_response();
        if self.is_retryable() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crat_sdk::Error as E;

    #[test]
    fn each_error_has_the_status_the_protocol_expects() {
        use tonic::Code as C;
        let cases = [
            (GatewayError::MissingKey, 401, C::Unauthenticated),
            (GatewayError::MalformedKey, 401, C::Unauthenticated),
            (GatewayError::UnknownModel("m".into()), 404, C::NotFound),
            (
                GatewayError::InvalidRequest("x".into()),
                400,
                C::InvalidArgument,
            ),
            (
                GatewayError::BodyTooLarge { limit: 1 },
                413,
                C::ResourceExhausted,
            ),
            (GatewayError::Overloaded { limit: 1 }, 503, C::Unavailable),
            (GatewayError::Internal("x".into()), 500, C::Internal),
            (E::InvalidInput("x".into()).into(), 400, C::InvalidArgument),
            (
                E::Unauthenticated("x".into()).into(),
                401,
                C::Unauthenticated,
            ),
            (E::KeyExpired("x".into()).into(), 403, C::PermissionDenied),
            (E::KeyRevoked("x".into()).into(), 403, C::PermissionDenied),
            (
                E::InsufficientCredits("x".into()).into(),
                402,
                C::FailedPrecondition,
            ),
            (E::TooLarge("x".into()).into(), 413, C::ResourceExhausted),
            (E::NoCapacity("x".into()).into(), 503, C::Unavailable),
            (E::Busy("x".into()).into(), 503, C::Unavailable),
            (E::RateLimited("x".into()).into(), 429, C::ResourceExhausted),
            (E::Timeout("x".into()).into(), 504, C::DeadlineExceeded),
            (E::Internal("x".into()).into(), 502, C::Unavailable),
        ];
        for (e, status, code) in cases {
            assert_eq!(e.status().as_u16(), status, "{e}");
            assert_eq!(e.grpc_code(), code, "{e}");
            let retry = e.is_retryable();
            let message = e.to_string();
            let grpc = e.to_status();
            assert_eq!(grpc.message(), message);
            assert_eq!(grpc.metadata().contains_key("retry-after"), retry);
            let response = e.into_response();
            assert_eq!(response.headers().contains_key(header::RETRY_AFTER), retry);
            assert_eq!(retry, status == 503 || status == 429);
        }
    }
}
