//! `--metrics-addr`: this process's Prometheus recorder and its `GET /metrics` endpoint.
//!
//! The library crates record through the `metrics` facade (see `crat_node::metrics` and
//! `crat_dispatcher::metrics` for the series); `crat node` and `crat dispatcher` install one
//! recorder per process here and serve its text exposition over HTTP/1.1 with axum (the
//! exporter's own listener is not built). Latency histograms (`*_seconds`) and the batch-size
//! histogram get buckets; anything else histogram-typed renders as a summary.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// How often histograms are drained into their buckets (the exporter's upkeep).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Buckets of the latency histograms, in seconds: 100 µs to 10 s.
const SECONDS_BUCKETS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Buckets of the batch-size histogram, in requests per run.
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// The exporter, with the buckets above.
fn builder() -> anyhow::Result<PrometheusBuilder> {
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(crat_node::metrics::BATCH_SIZE.into()),
            &BATCH_BUCKETS,
        )?)
}

/// Binds `addr` (failing with the address in the message when it cannot: in use, not a local
/// address, privileged port), installs the process's recorder, and serves `GET /metrics` on
/// it until the process ends. Returns the address bound (port 0 picks one). Must run inside a
/// tokio runtime; at most once per process.
pub(crate) async fn serve(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics endpoint: cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    let recorder = builder()?.build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|e| anyhow::anyhow!("metrics recorder already installed: {e}"))?;
    crat_node::metrics::describe();
    crat_dispatcher::metrics::describe();
    tokio::spawn(serve_on(listener, handle));
    Ok(bound)
}

/// Serves `handle`'s exposition on `listener`, running the exporter's upkeep meanwhile.
async fn serve_on(listener: tokio::net::TcpListener, handle: PrometheusHandle) {
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(UPKEEP_INTERVAL).await;
            upkeep.run_upkeep();
        }
    });
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                    handle.render(),
                )
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics endpoint stopped");
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_the_exposition_with_histogram_buckets() {
        let recorder = builder().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!("crat_test_total", "outcome" => "ok").increment(3);
            metrics::histogram!("crat_test_duration_seconds").record(0.003);
            metrics::histogram!(crat_node::metrics::BATCH_SIZE).record(4.0);
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_on(listener, handle));
        let page = get(addr, "/metrics").await;
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        assert!(page.contains("text/plain; version=0.0.4"), "{page}");
        assert!(
            page.contains(r#"crat_test_total{outcome="ok"} 3"#),
            "{page}"
        );
        assert!(
            page.contains(r#"crat_test_duration_seconds_bucket{le="0.005"} 1"#),
            "{page}"
        );
        assert!(
            page.contains("crat_test_duration_seconds_count 1"),
            "{page}"
        );
        assert!(
            page.contains(r#"crat_node_batch_size_bucket{le="4"} 1"#),
            "{page}"
        );
        assert!(get(addr, "/other").await.starts_with("HTTP/1.1 404"));
    }

    #[tokio::test]
    async fn an_address_in_use_is_a_clear_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = serve(addr).await.unwrap_err();
        assert!(
            format!("{e:#}").contains(&format!("metrics endpoint: cannot listen on {addr}")),
            "{e:#}"
        );
    }
}
