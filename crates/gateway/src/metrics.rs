//! Prometheus metrics in the text exposition format (`GET /metrics`). Every label set is
//! bounded: routes are the router's own patterns, statuses are HTTP codes, gRPC methods are
//! the service's own (else `unknown`) and gRPC codes the 17 of the protocol.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

/// Upper bounds of the inference latency histogram, in seconds.
const LATENCY_BUCKETS_S: [f64; 14] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The gateway's counters.
#[derive(Default)]
pub(crate) struct Metrics {
    /// Requests answered, by (route pattern, status).
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// gRPC calls answered, by (method, status code name).
    grpc_calls: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Inference latency: counts per bucket (the last one is +Inf), the sum in µs.
    latency: [AtomicU64; LATENCY_BUCKETS_S.len() + 1],
    latency_sum_us: AtomicU64,
    /// Inferences shed because the gateway ran its most at once.
    shed: AtomicU64,
}

impl Metrics {
    /// Counts one answered request.
    pub(crate) fn request(&self, route: &'static str, status: u16) {
        *self.requests.lock().entry((route, status)).or_default() += 1;
    }

    /// Counts one answered gRPC call.
    pub(crate) fn grpc_call(&self, method: &'static str, code: &'static str) {
        *self.grpc_calls.lock().entry((method, code)).or_default() += 1;
    }

    /// Records one inference's latency (answered by the network, successfully or not).
    pub(crate) fn infer(&self, took: Duration) {
        let s = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS_S
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(LATENCY_BUCKETS_S.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Counts one shed inference.
    pub(crate) fn shed(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition, with the gauges passed in.
    pub(crate) fn render(&self, inflight: usize, clients: usize) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str(
            "# HELP crat_gateway_requests_total HTTP requests answered, by route and status.\n\
             # TYPE crat_gateway_requests_total counter\n",
        );
        for ((route, status), n) in self.requests.lock().iter() {
            let _ = writeln!(
                out,
                "crat_gateway_requests_total{{route=\"{route}\",code=\"{status}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP crat_gateway_grpc_calls_total gRPC calls answered, by method and status code.\n\
             # TYPE crat_gateway_grpc_calls_total counter\n",
        );
        for ((method, code), n) in self.grpc_calls.lock().iter() {
            let _ = writeln!(
                out,
                "crat_gateway_grpc_calls_total{{method=\"{method}\",code=\"{code}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP crat_gateway_infer_duration_seconds Inference latency through the network.\n\
             # TYPE crat_gateway_infer_duration_seconds histogram\n",
        );
        let mut cumulative = 0u64;
        for (i, count) in self.latency.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = LATENCY_BUCKETS_S
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(
                out,
                "crat_gateway_infer_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let sum_s = self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "crat_gateway_infer_duration_seconds_sum {sum_s}");
        let _ = writeln!(
            out,
            "crat_gateway_infer_duration_seconds_count {cumulative}"
        );
        let _ = write!(
            out,
            "# HELP crat_gateway_infer_shed_total Inferences refused (503, UNAVAILABLE) at the in-flight limit.\n\
             # TYPE crat_gateway_infer_shed_total counter\n\
             crat_gateway_infer_shed_total {}\n\
             # HELP crat_gateway_infer_inflight Inferences in flight now.\n\
             # TYPE crat_gateway_infer_inflight gauge\n\
             crat_gateway_infer_inflight {inflight}\n\
             # HELP crat_gateway_sdk_clients SDK clients held (one per key).\n\
             # TYPE crat_gateway_sdk_clients gauge\n\
             crat_gateway_sdk_clients {clients}\n",
            self.shed.load(Ordering::Relaxed)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_counts_requests_and_latencies() {
        let m = Metrics::default();
        m.request("/v2/models/{name}/infer", 200);
        m.request("/v2/models/{name}/infer", 200);
        m.request("/v2/health/live", 200);
        m.grpc_call("ModelInfer", "OK");
        m.infer(Duration::from_millis(3));
        m.infer(Duration::from_secs(60));
        m.shed();
        let text = m.render(2, 1);
        assert!(text.contains(
            "crat_gateway_requests_total{route=\"/v2/models/{name}/infer\",code=\"200\"} 2\n"
        ));
        assert!(
            text.contains("crat_gateway_grpc_calls_total{method=\"ModelInfer\",code=\"OK\"} 1\n")
        );
        assert!(text.contains("crat_gateway_infer_duration_seconds_bucket{le=\"0.0025\"} 0\n"));
        assert!(text.contains("crat_gateway_infer_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("crat_gateway_infer_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("crat_gateway_infer_duration_seconds_count 2\n"));
        assert!(text.contains("crat_gateway_infer_shed_total 1\n"));
        assert!(text.contains("crat_gateway_infer_inflight 2\n"));
        assert!(text.contains("crat_gateway_sdk_clients 1\n"));
    }
}
