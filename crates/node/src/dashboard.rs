//! The operator's dashboard: a web page the node serves on its own machine (loopback by
//! default) with its hardware and proven rating, the backend, the models it serves, live
//! tasks and latency, the earnings of its closed rounds as a chart, the idle workload, and
//! START / STOP ([`Node::start`], [`Node::stop`]).
//!
//! The page is three static files compiled into the crate (no CDN, no build step); it polls
//! a small JSON API:
//!
//! | route | what |
//! |---|---|
//! | `GET /api/status` | mode, hardware, backend, models, tasks and latency, idle workload |
//! | `GET /api/standing` | the dispatcher's view ([`Node::standing`], as [`crate::standing::to_json`]), fetched at most every [`DashboardConfig::standing_ttl`] |
//! | `GET /api/reach` | whether clients reach the node directly ([`Node::reach`]: its public address as the dispatcher sees it, and the dispatcher's dial to it), checked at most every [`REACH_TTL`] |
//! | `POST /api/start` | [`Node::start`] |
//! | `POST /api/stop` | [`Node::stop`], draining for at most [`DashboardConfig::stop_drain`] |
//!
//! **Who may use it.** Whoever can reach the page can stop the node, so:
//! - on a loopback address (the default, [`DEFAULT_ADDR`]) a request must name a loopback
//!   host (`localhost`, `127.0.0.1`, `[::1]`): a web page elsewhere cannot reach it by
//!   pointing a name of its own at 127.0.0.1 (DNS rebinding);
//! - a `POST` must carry the `X-Crat-Dashboard` header, which another site's page cannot
//!   send without a CORS preflight that is never granted, and an `Origin`, when present, must
//!   be the dashboard's own;
//! - on any other address a token is required ([`DashboardConfig::token`]); every API call
//!   must carry it (`Authorization: Bearer`), and the page reads it from its URL's fragment
//!   (`http://host:port/#token=…`), which browsers never send to the server.
//!
//! ```no_run
//! # async fn demo<T: crat_transport::Transport>(node: crat_node::runtime::Node<T>) -> Result<(), Box<dyn std::error::Error>> {
//! use crat_node::dashboard::{self, DashboardConfig, DashboardInfo};
//! let (addr, _task) = dashboard::serve(
//!     node,
//!     DashboardConfig::default(),
//!     DashboardInfo { backend_detail: "ort/cpu".into(), idle_command: None },
//! )
//! .await?;
//! println!("dashboard on http://{addr}/");
//! # Ok(())
//! # }
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use crat_transport::Transport;
use serde_json::{Value, json};

use crate::runtime::Node;

/// Where the dashboard listens unless told otherwise: loopback, port 7480.
pub const DEFAULT_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7480));

/// The header a `POST` must carry.
pub const CONTROL_HEADER: &str = "x-crat-dashboard";

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");

/// The page may load only its own script and style and talk only to its own server.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// How the dashboard is served.
#[derive(Clone, Debug)]
pub struct DashboardConfig {
    /// Where it listens. Default [`DEFAULT_ADDR`].
    pub addr: SocketAddr,
    /// The token every API call must carry; required when `addr` is not a loopback address
    /// (16 to 256 characters of `A–Z a–z 0–9 . _ ~ -`). Default none.
    pub token: Option<String>,
    /// Closed rounds shown in the earnings chart (at most
    /// [`STANDING_ROUNDS_MAX`](crat_core::wire::STANDING_ROUNDS_MAX)). Default 30.
    pub rounds: u32,
    /// How long the dispatcher's answer about the node's standing is reused. Default 10 s.
    pub standing_ttl: Duration,
    /// How long STOP waits for the tasks in flight. Default 30 s.
    pub stop_drain: Duration,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        Self {
            addr: DEFAULT_ADDR,
            token: None,
            rounds: 30,
            standing_ttl: Duration::from_secs(10),
            stop_drain: Duration::from_secs(30),
        }
    }
}

/// What the daemon knows that the node does not, shown as it is.
#[derive(Clone, Debug, Default)]
pub struct DashboardInfo {
    /// How the backend was chosen, e.g. "ONNX Runtime 1.31.1 (cpu) from ~/.cache/…".
    pub backend_detail: String,
    /// The idle workload's command, if one is configured.
    pub idle_command: Option<Vec<String>>,
}

/// Why the dashboard could not be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DashboardError {
    /// The address could not be bound (in use, not local, privileged).
    #[error("dashboard: cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A non-loopback address without a token would let anyone on the network stop the
    /// node.
    #[error(
        "dashboard: {addr} is not a loopback address, so a token is required (anyone who \
         reaches the page could stop the node): set one, or listen on 127.0.0.1"
    )]
    TokenRequired {
        /// The address.
        addr: SocketAddr,
    },
    /// The token is too short, too long, or has characters a URL fragment would mangle.
    #[error("dashboard: the token must be 16 to 256 characters of A-Z a-z 0-9 . _ ~ -")]
    BadToken,
}

struct Shared<T: Transport> {
    node: Node<T>,
    config: DashboardConfig,
    info: DashboardInfo,
    standing: tokio::sync::Mutex<StandingCache>,
    reach: tokio::sync::Mutex<StandingCache>,
}

/// How long the dashboard reuses a reachability check (each one has the dispatcher dial the
/// node).
pub const REACH_TTL: Duration = Duration::from_secs(300);

/// A value fetched from the dispatcher, reused for a while.
#[derive(Default)]
struct StandingCache {
    fetched: Option<Instant>,
    last: Option<Value>,
    error: Option<String>,
}

fn check_config(config: &DashboardConfig) -> Result<(), DashboardError> {
    match &config.token {
        Some(t) => {
            let ok = (16..=256).contains(&t.len())
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b));
            if !ok {
                return Err(DashboardError::BadToken);
            }
        }
        None if !config.addr.ip().is_loopback() => {
            return Err(DashboardError::TokenRequired { addr: config.addr });
        }
        None => {}
    }
    Ok(())
}

/// Binds `config.addr` and serves the dashboard of `node` on it until the task is aborted
/// or the process ends. Returns the address bound (port 0 picks one) and the serving task.
pub async fn serve<T: Transport>(
    node: Node<T>,
    config: DashboardConfig,
    info: DashboardInfo,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), DashboardError> {
    check_config(&config)?;
    let addr = config.addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| DashboardError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| DashboardError::Bind { addr, source })?;
    let app = router(node, config, info)?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "dashboard stopped");
        }
    });
    Ok((bound, task))
}

/// The dashboard as an axum router, for a daemon that serves it with routes of its own.
/// Fails as [`serve`] does for a token that is missing or malformed.
pub fn router<T: Transport>(
    node: Node<T>,
    config: DashboardConfig,
    info: DashboardInfo,
) -> Result<Router, DashboardError> {
    check_config(&config)?;
    let shared = Arc::new(Shared {
        node,
        config,
        info,
        standing: tokio::sync::Mutex::new(StandingCache::default()),
        reach: tokio::sync::Mutex::new(StandingCache::default()),
    });
    Ok(Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route(
            "/app.js",
            get(|| async { asset("text/javascript", APP_JS) }),
        )
        .route("/app.css", get(|| async { asset("text/css", APP_CSS) }))
        .route("/api/status", get(status::<T>))
        .route("/api/standing", get(standing::<T>))
        .route("/api/reach", get(reach::<T>))
        .route("/api/start", post(start::<T>))
        .route("/api/stop", post(stop::<T>))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            guard::<T>,
        ))
        .with_state(shared))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(match content_type {
                "text/css" => "text/css; charset=utf-8",
                _ => "text/javascript; charset=utf-8",
            }),
        )],
        body,
    )
        .into_response()
}

/// Refuses what [the module docs](self) say is refused, and adds the security headers.
async fn guard<T: Transport>(
    State(s): State<Arc<Shared<T>>>,
    req: Request,
    next: Next,
) -> Response {
    if let Err((status, why)) = allow(
        s.config.token.as_deref(),
        req.method(),
        req.uri().path(),
        req.headers(),
    ) {
        return (status, why).into_response();
    }
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Whether a request may go on: see [the module docs](self).
fn allow(
    token: Option<&str>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<(), (StatusCode, &'static str)> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .ok_or((StatusCode::BAD_REQUEST, "the request names no host"))?;
    match token {
        None if !is_loopback_host(host) => {
            return Err((
                StatusCode::MISDIRECTED_REQUEST,
                "this dashboard answers only to localhost, 127.0.0.1 or [::1]",
            ));
        }
        None => {}
        Some(token) if path.starts_with("/api/") => {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if !given.is_some_and(|g| same_secret(g, token)) {
                return Err((
                    StatusCode::UNAUTHORIZED,
                    "a valid token is required: open the address the node printed, with its #token=…",
                ));
            }
        }
        Some(_) => {}
    }
    if method != Method::GET && method != Method::HEAD {
        if !headers.contains_key(CONTROL_HEADER) {
            return Err((
                StatusCode::FORBIDDEN,
                "control requests come from the dashboard page only",
            ));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let own = format!("http://{host}");
            if origin.as_bytes() != own.as_bytes() {
                return Err((
                    StatusCode::FORBIDDEN,
                    "control requests from another origin are refused",
                ));
            }
        }
    }
    Ok(())
}

/// A `Host` header naming a loopback address or `localhost`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, port)) if port.is_empty() || port.starts_with(':') => ip,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            Some(_) => return false,
            None => host,
        }
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Compares secrets in time independent of where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

async fn status<T: Transport>(State(s): State<Arc<Shared<T>>>) -> Json<Value> {
    Json(status_json(&s.node, &s.info))
}

/// What `GET /api/status` answers.
pub fn status_json<T: Transport>(node: &Node<T>, info: &DashboardInfo) -> Value {
    let hw = node.hardware();
    let (inflight, queued) = node.tasks_inflight();
    let backend = node.backend();
    let models: Vec<Value> = node
        .ready_replicas()
        .into_iter()
        .map(|r| {
            json!({
                "deployment": r.deployment.to_string(),
                "model": r.model.to_string(),
                "state": "serving",
            })
        })
        .chain(node.loading().into_iter().map(|(deployment, model)| {
            json!({
                "deployment": deployment.to_string(),
                "model": model.to_string(),
                "state": "loading",
            })
        }))
        .chain(node.failed().into_iter().map(|deployment| {
            json!({
                "deployment": deployment.to_string(),
                "model": null,
                "state": "failed",
            })
        }))
        .collect();
    json!({
        "node": node.id().to_string(),
        "version": env!("CARGO_PKG_VERSION"),
        "mode": node.mode(),
        "dispatcher": node.config().dispatcher_addr.to_string(),
        "backend": {
            "name": backend.name,
            "execution_provider": backend.execution_provider,
            "detail": info.backend_detail,
        },
        "hardware": {
            "cpu": {
                "model": hw.hardware.cpu.model,
                "cores": hw.hardware.cpu.cores,
                "memory_bytes": hw.hardware.cpu.memory_bytes,
            },
            "gpus": hw.hardware.gpus.iter().map(|g| json!({
                "name": g.name,
                "memory_bytes": g.memory_bytes,
                "driver": g.driver,
            })).collect::<Vec<_>>(),
            "rating": hw.rating.get(),
            "mining_income_usd_micro_per_day": hw.mining_income_usd_micro_per_day.get(),
            "rating_reason": hw.rating_reason,
            "notes": hw.notes,
        },
        "models": models,
        "tasks": {
            "inflight": inflight,
            "queued": queued,
            "activity": node.activity(),
        },
        "usage_pending": node.usage_pending(),
        "idle": node.idle_status().map(|st| json!({
            "command": info.idle_command,
            "status": st,
        })),
    })
}

async fn standing<T: Transport>(State(s): State<Arc<Shared<T>>>) -> Json<Value> {
    let mut cache = s.standing.lock().await;
    let fresh = cache
        .fetched
        .is_some_and(|at| at.elapsed() < s.config.standing_ttl);
    if !fresh {
        let asked =
            tokio::time::timeout(Duration::from_secs(5), s.node.standing(s.config.rounds)).await;
        match asked {
            Ok(Ok(standing)) => {
                cache.last = Some(crate::standing::to_json(&standing));
                cache.error = None;
            }
            Ok(Err(e)) => cache.error = Some(e.to_string()),
            Err(_) => cache.error = Some("the dispatcher did not answer within 5 s".into()),
        }
        cache.fetched = Some(Instant::now());
    }
    Json(json!({
        "standing": cache.last,
        "error": cache.error,
        "age_ms": cache.fetched.map(|at| at.elapsed().as_millis() as u64),
    }))
}

async fn reach<T: Transport>(State(s): State<Arc<Shared<T>>>) -> Json<Value> {
    let mut cache = s.reach.lock().await;
    let fresh = cache.fetched.is_some_and(|at| at.elapsed() < REACH_TTL);
    if !fresh {
        match tokio::time::timeout(Duration::from_secs(10), s.node.reach()).await {
            Ok(Ok(r)) => {
                cache.last = Some(json!({
                    "observed": r.observed.as_ref().map(|a| a.as_str().to_owned()),
                    "inbound": r.inbound,
                    "probe_ms": r.probe_ms,
                }));
                cache.error = None;
            }
            Ok(Err(e)) => cache.error = Some(e.to_string()),
            Err(_) => cache.error = Some("the dispatcher did not answer within 10 s".into()),
        }
        cache.fetched = Some(Instant::now());
    }
    Json(json!({
        "reach": cache.last,
        "error": cache.error,
        "age_ms": cache.fetched.map(|at| at.elapsed().as_millis() as u64),
    }))
}

async fn start<T: Transport>(State(s): State<Arc<Shared<T>>>) -> Json<Value> {
    s.node.start().await;
    // The next standing is fetched afresh: "online" changed.
    s.standing.lock().await.fetched = None;
    Json(json!({ "mode": s.node.mode() }))
}

async fn stop<T: Transport>(State(s): State<Arc<Shared<T>>>) -> Json<Value> {
    let report = s.node.stop(s.config.stop_drain).await;
    s.standing.lock().await.fetched = None;
    Json(json!({ "mode": s.node.mode(), "report": report }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn loopback_hosts_only_without_a_token() {
        for ok in [
            "localhost",
            "localhost:7480",
            "LOCALHOST:1",
            "127.0.0.1:7480",
            "127.3.2.1",
            "[::1]:7480",
            "[::1]",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
            let h = headers(&[("host", ok)]);
            assert_eq!(allow(None, &Method::GET, "/api/status", &h), Ok(()), "{ok}");
        }
        for bad in [
            "evil.example:7480",
            "localhost.evil.example",
            "10.0.0.5:7480",
            "[::1]x",
            "[fe80::1]:80",
            "localhost:80a",
            "",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
            let h = headers(&[("host", bad)]);
            assert_eq!(
                allow(None, &Method::GET, "/", &h).map_err(|e| e.0),
                Err(StatusCode::MISDIRECTED_REQUEST),
                "{bad}"
            );
        }
        assert_eq!(
            allow(None, &Method::GET, "/", &HeaderMap::new()).map_err(|e| e.0),
            Err(StatusCode::BAD_REQUEST)
        );
    }

    #[test]
    fn control_needs_the_header_and_the_own_origin() {
        let host = ("host", "127.0.0.1:7480");
        let refused = |h: &HeaderMap| allow(None, &Method::POST, "/api/stop", h).map_err(|e| e.0);
        assert_eq!(refused(&headers(&[host])), Err(StatusCode::FORBIDDEN));
        assert_eq!(
            refused(&headers(&[
                host,
                (CONTROL_HEADER, "1"),
                ("origin", "http://evil.example")
            ])),
            Err(StatusCode::FORBIDDEN)
        );
        assert_eq!(refused(&headers(&[host, (CONTROL_HEADER, "1")])), Ok(()));
        assert_eq!(
            refused(&headers(&[
                host,
                (CONTROL_HEADER, "1"),
                ("origin", "http://127.0.0.1:7480")
            ])),
            Ok(())
        );
    }

    #[test]
    fn a_token_guards_every_api_call_on_other_addresses() {
        let token = "0123456789abcdef-token";
        let host = ("host", "192.168.1.20:7480");
        // The page itself has nothing secret; the API needs the token.
        assert_eq!(
            allow(Some(token), &Method::GET, "/", &headers(&[host])),
            Ok(())
        );
        assert_eq!(
            allow(Some(token), &Method::GET, "/api/status", &headers(&[host])).map_err(|e| e.0),
            Err(StatusCode::UNAUTHORIZED)
        );
        let wrong = format!("Bearer {}", "x".repeat(token.len()));
        assert_eq!(
            allow(
                Some(token),
                &Method::GET,
                "/api/status",
                &headers(&[host, ("authorization", &wrong)])
            )
            .map_err(|e| e.0),
            Err(StatusCode::UNAUTHORIZED)
        );
        let right = format!("Bearer {token}");
        assert_eq!(
            allow(
                Some(token),
                &Method::GET,
                "/api/status",
                &headers(&[host, ("authorization", &right)])
            ),
            Ok(())
        );
        assert_eq!(
            allow(
                Some(token),
                &Method::POST,
                "/api/stop",
                &headers(&[host, ("authorization", &right)])
            )
            .map_err(|e| e.0),
            Err(StatusCode::FORBIDDEN),
            "the control header is still required"
        );
    }

    #[test]
    fn a_non_loopback_address_needs_a_well_formed_token() {
        let lan = DashboardConfig {
            addr: "0.0.0.0:7480".parse().unwrap(),
            ..DashboardConfig::default()
        };
        assert!(matches!(
            check_config(&lan),
            Err(DashboardError::TokenRequired { .. })
        ));
        for bad in ["short", "has space in it, long enough", &"x".repeat(257)] {
            let c = DashboardConfig {
                token: Some(bad.to_owned()),
                ..lan.clone()
            };
            assert!(
                matches!(check_config(&c), Err(DashboardError::BadToken)),
                "{bad}"
            );
        }
        let good = DashboardConfig {
            token: Some("abcdefghijklmnop".into()),
            ..lan
        };
        assert!(check_config(&good).is_ok());
        assert!(check_config(&DashboardConfig::default()).is_ok());
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }
}
