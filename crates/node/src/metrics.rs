//! The node's Prometheus metrics: names, label values, and the GPU sampler.
//!
//! The runtime, the batcher and the challenge code record through the [`metrics`] facade;
//! without a recorder installed (tests, `LocalNetwork`, a node builder who wants none) every
//! call is a no-op. `crat node --metrics-addr` installs a Prometheus recorder and serves
//! `GET /metrics`. Every label takes values from a fixed set (outcomes, error codes, kinds,
//! GPU indices): never a node, key, ticket or deployment id, which peers choose. The series
//! carry no node label: the recorder is per process, one node per process (several nodes in one
//! process, as `LocalNetwork` runs them, would share the counters and overwrite the gauges).
//!
//! | series | type | labels |
//! |---|---|---|
//! | `crat_node_tasks_total` | counter | `outcome`: `ok` or the error code (`busy`, `ticket_rejected`, …) |
//! | `crat_node_task_duration_seconds` | histogram | — (tasks served, from request to answer) |
//! | `crat_node_batch_size` | histogram | — (requests per model run) |
//! | `crat_node_queue_depth` | gauge | — (requests waiting in the model queues) |
//! | `crat_node_tasks_inflight` | gauge | — |
//! | `crat_node_deployments_served` | gauge | — |
//! | `crat_node_failures_total` | counter | `kind` (see [`Failure`]) |
//! | `crat_node_challenges_total` | counter | `phase` (`commit`, `open`), `result` (`ok`, `failed`) |
//! | `crat_node_receipt_signatures_total` | counter | `nonce`: `ahead` (made while idle, see `crate::receipts`) or `none` (signed from nothing) |
//! | `crat_node_usage_records_reported_total` | counter | — (records in usage reports the dispatcher answered) |
//! | `crat_node_usage_records_acknowledged_total` | counter | `state` (`accepted`, `held`) |
//! | `crat_node_usage_records_pending` | gauge | — (not yet acknowledged) |
//! | `crat_node_tickets_total` | counter | — (distinct tickets seen, i.e. client leases) |
//! | `crat_node_heartbeats_total` | counter | `result` (`ok`, `refused`, `failed`) |
//! | `crat_node_registrations_total` | counter | `result` (`ok`, `refused`, `failed`) |
//! | `crat_node_dispatcher_connected` | gauge | — (1 while registered) |
//! | `crat_node_gpu_utilisation_ratio` | gauge | `gpu` (NVML index) |
//! | `crat_node_gpu_memory_used_bytes`, `crat_node_gpu_memory_total_bytes` | gauge | `gpu` |
//! | `crat_node_gpu_temperature_celsius`, `crat_node_gpu_power_watts` | gauge | `gpu` |
//!
//! ```
//! // With no recorder installed, recording is free and does nothing.
//! crat_node::metrics::record_gpu(0, &crat_node::probe::GpuStats::default(), Some(1 << 30));
//! ```

use std::time::Duration;

use crat_core::wire::NodeToClient;
use metrics::{counter, gauge, histogram};

use crate::probe::GpuStats;

/// Receipt roots signed, by whether a nonce made ahead of time was at hand.
pub const RECEIPT_SIGNATURES_TOTAL: &str = "crat_node_receipt_signatures_total";

/// Tasks answered, by outcome.
pub const TASKS_TOTAL: &str = "crat_node_tasks_total";
/// Time from a task's request to its answer, for tasks served.
pub const TASK_DURATION_SECONDS: &str = "crat_node_task_duration_seconds";
/// Requests per model run (1 when nothing was merged).
pub const BATCH_SIZE: &str = "crat_node_batch_size";
/// Requests waiting in the model queues.
pub const QUEUE_DEPTH: &str = "crat_node_queue_depth";
/// Tasks running now.
pub const TASKS_INFLIGHT: &str = "crat_node_tasks_inflight";
/// Deployments ready to serve.
pub const DEPLOYMENTS_SERVED: &str = "crat_node_deployments_served";
/// Failures, by [`Failure`] kind.
pub const FAILURES_TOTAL: &str = "crat_node_failures_total";
/// Proof-of-hardware challenges answered, by phase and result.
pub const CHALLENGES_TOTAL: &str = "crat_node_challenges_total";
/// Usage records in reports the dispatcher answered (a record held and sent again counts
/// again).
pub const USAGE_REPORTED_TOTAL: &str = "crat_node_usage_records_reported_total";
/// Usage records the dispatcher answered, by state: accepted (forgotten here) or held.
pub const USAGE_ACKNOWLEDGED_TOTAL: &str = "crat_node_usage_records_acknowledged_total";
/// Usage records not yet acknowledged.
pub const USAGE_PENDING: &str = "crat_node_usage_records_pending";
/// Distinct tickets (client leases naming this node) that tasks arrived under.
pub const TICKETS_TOTAL: &str = "crat_node_tickets_total";
/// Heartbeats, by result.
pub const HEARTBEATS_TOTAL: &str = "crat_node_heartbeats_total";
/// Registrations with the dispatcher, by result.
pub const REGISTRATIONS_TOTAL: &str = "crat_node_registrations_total";
/// 1 while registered with the dispatcher, else 0.
pub const DISPATCHER_CONNECTED: &str = "crat_node_dispatcher_connected";
/// GPU utilisation, 0 to 1.
pub const GPU_UTILISATION_RATIO: &str = "crat_node_gpu_utilisation_ratio";
/// GPU memory in use.
pub const GPU_MEMORY_USED_BYTES: &str = "crat_node_gpu_memory_used_bytes";
/// GPU memory in all.
pub const GPU_MEMORY_TOTAL_BYTES: &str = "crat_node_gpu_memory_total_bytes";
/// GPU temperature.
pub const GPU_TEMPERATURE_CELSIUS: &str = "crat_node_gpu_temperature_celsius";
/// GPU power draw.
pub const GPU_POWER_WATTS: &str = "crat_node_gpu_power_watts";

/// GPUs sampled at most (a bound on the `gpu` label's values).
pub const GPUS_SAMPLED_MAX: u32 = 64;

/// What failed, the `kind` label of [`FAILURES_TOTAL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// A model queue was full (`Busy`).
    QueueFull,
    /// A model run exceeded its time limit.
    RunTimeout,
    /// The backend failed a run (or panicked).
    RunError,
    /// A model could not be fetched from the dispatcher (retried at the next heartbeat).
    ModelFetch,
    /// A model could not be loaded for a deployment (not retried).
    ModelLoad,
    /// The connection to the dispatcher was lost or could not be made.
    DispatcherConnection,
    /// A usage report was not delivered or was refused.
    UsageReport,
    /// The usage journal could not be written.
    UsageJournal,
}

impl Failure {
    /// The label value.
    pub const fn label(self) -> &'static str {
        match self {
            Failure::QueueFull => "queue_full",
            Failure::RunTimeout => "run_timeout",
            Failure::RunError => "run_error",
            Failure::ModelFetch => "model_fetch",
            Failure::ModelLoad => "model_load",
            Failure::DispatcherConnection => "dispatcher_connection",
            Failure::UsageReport => "usage_report",
            Failure::UsageJournal => "usage_journal",
        }
    }
}

/// Registers every series' help text (and unit) with the installed recorder, so that a scrape
/// explains them; call once after installing it.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        TASKS_TOTAL,
        "Tasks answered, by outcome (ok or the error code)."
    );
    describe_histogram!(
        TASK_DURATION_SECONDS,
        Unit::Seconds,
        "Time from a task's request to its answer, for tasks served."
    );
    describe_histogram!(BATCH_SIZE, Unit::Count, "Requests per model run.");
    describe_gauge!(
        QUEUE_DEPTH,
        Unit::Count,
        "Requests waiting in the model queues."
    );
    describe_gauge!(TASKS_INFLIGHT, Unit::Count, "Tasks running now.");
    describe_gauge!(
        DEPLOYMENTS_SERVED,
        Unit::Count,
        "Deployments ready to serve."
    );
    describe_counter!(FAILURES_TOTAL, "Failures, by kind.");
    describe_counter!(
        CHALLENGES_TOTAL,
        "Proof-of-hardware challenges answered, by phase (commit, open) and result."
    );
    describe_counter!(
        USAGE_REPORTED_TOTAL,
        "Usage records in reports the dispatcher answered."
    );
    describe_counter!(
        USAGE_ACKNOWLEDGED_TOTAL,
        "Usage records the dispatcher answered, by state (accepted, held)."
    );
    describe_gauge!(
        USAGE_PENDING,
        Unit::Count,
        "Usage records not yet acknowledged."
    );
    describe_counter!(
        TICKETS_TOTAL,
        "Distinct tickets (client leases) tasks arrived under."
    );
    describe_counter!(
        HEARTBEATS_TOTAL,
        "Heartbeats sent, by result (ok, refused, failed)."
    );
    describe_counter!(
        REGISTRATIONS_TOTAL,
        "Registrations with the dispatcher, by result (ok, refused, failed)."
    );
    describe_gauge!(
        DISPATCHER_CONNECTED,
        "1 while registered with the dispatcher."
    );
    describe_gauge!(
        GPU_UTILISATION_RATIO,
        Unit::Percent,
        "GPU utilisation, 0 to 1, per GPU."
    );
    describe_gauge!(
        GPU_MEMORY_USED_BYTES,
        Unit::Bytes,
        "GPU memory in use, per GPU."
    );
    describe_gauge!(
        GPU_MEMORY_TOTAL_BYTES,
        Unit::Bytes,
        "GPU memory in all, per GPU."
    );
    describe_gauge!(
        GPU_TEMPERATURE_CELSIUS,
        "GPU core temperature in degrees Celsius."
    );
    describe_gauge!(GPU_POWER_WATTS, "GPU power draw in watts.");
}

/// How often `crat node --metrics-addr` samples the GPUs ([`spawn_gpu_sampler`]).
pub const GPU_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// Counts a failure.
pub(crate) fn failure(kind: Failure) {
    counter!(FAILURES_TOTAL, "kind" => kind.label()).increment(1);
}

/// The `outcome` of an answer to a task: `ok` for outputs, else the error code's label.
pub fn task_outcome(answer: &NodeToClient) -> &'static str {
    match answer {
        NodeToClient::Receipted { .. } | NodeToClient::Outputs { .. } => "ok",
        NodeToClient::Error(e) => e.code.label(),
        _ => "other",
    }
}

/// Counts a task's answer, and the time it took when it was served.
pub(crate) fn task(answer: &NodeToClient, took: Duration) {
    let outcome = task_outcome(answer);
    counter!(TASKS_TOTAL, "outcome" => outcome).increment(1);
    if outcome == "ok" {
        histogram!(TASK_DURATION_SECONDS).record(took.as_secs_f64());
    }
}

/// Counts receipt roots signed: `ahead` with a nonce made ahead of time, `none` without.
pub(crate) fn receipt_signatures(ahead: u64, none: u64) {
    if ahead > 0 {
        counter!(RECEIPT_SIGNATURES_TOTAL, "nonce" => "ahead").increment(ahead);
    }
    if none > 0 {
        counter!(RECEIPT_SIGNATURES_TOTAL, "nonce" => "none").increment(none);
    }
}

/// `ok` or `failed`.
pub(crate) const fn result(ok: bool) -> &'static str {
    if ok { "ok" } else { "failed" }
}

/// Records one GPU's sample as the `gpu="index"` gauges (absent readings are left as they
/// were).
pub fn record_gpu(index: u32, stats: &GpuStats, memory_total_bytes: Option<u64>) {
    let gpu = index.to_string();
    gauge!(GPU_UTILISATION_RATIO, "gpu" => gpu.clone())
        .set(f64::from(stats.utilisation_bps) / 10_000.0);
    if let Some(used) = stats.memory_used_bytes {
        gauge!(GPU_MEMORY_USED_BYTES, "gpu" => gpu.clone()).set(used as f64);
    }
    if let Some(total) = memory_total_bytes {
        gauge!(GPU_MEMORY_TOTAL_BYTES, "gpu" => gpu.clone()).set(total as f64);
    }
    if let Some(c) = stats.temperature_c {
        gauge!(GPU_TEMPERATURE_CELSIUS, "gpu" => gpu.clone()).set(f64::from(c));
    }
    if let Some(mw) = stats.power_mw {
        gauge!(GPU_POWER_WATTS, "gpu" => gpu).set(f64::from(mw) / 1_000.0);
    }
}

/// Starts a thread that reads every GPU's utilisation, memory, temperature and power from
/// NVML every `interval` into the GPU gauges (at most [`GPUS_SAMPLED_MAX`] GPUs), for the
/// process's lifetime. `None` when NVML is not available (no NVIDIA driver): there is nothing
/// to sample.
pub fn spawn_gpu_sampler(interval: Duration) -> Option<std::thread::JoinHandle<()>> {
    let nvml = match nvml_wrapper::Nvml::init() {
        Ok(n) => n,
        Err(e) => {
            tracing::debug!(error = %e, "no NVML: GPU metrics off");
            return None;
        }
    };
    let interval = interval.max(Duration::from_millis(100));
    std::thread::Builder::new()
        .name("gpu-metrics".into())
        .spawn(move || {
            loop {
                let count = nvml.device_count().unwrap_or(0).min(GPUS_SAMPLED_MAX);
                for i in 0..count {
                    if let Ok(d) = nvml.device_by_index(i) {
                        let (stats, total) = crate::probe::read_gpu(&d);
                        record_gpu(i, &stats, total);
                    }
                }
                std::thread::sleep(interval);
            }
        })
        .map_err(|e| tracing::warn!(error = %e, "GPU metrics thread not started"))
        .ok()
}

#[cfg(test)]
mod tests {
    use crat_core::wire::{ErrorCode, WireError};
    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;

    #[test]
    fn outcomes_and_gpu_gauges_render_with_bounded_labels() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            task(
                &NodeToClient::Error(WireError::new(ErrorCode::Busy, "full")),
                Duration::from_millis(3),
            );
            failure(Failure::QueueFull);
            receipt_signatures(3, 0);
            receipt_signatures(0, 2);
            record_gpu(
                1,
                &GpuStats {
                    utilisation_bps: 2_500,
                    temperature_c: Some(61),
                    power_mw: Some(150_500),
                    memory_used_bytes: Some(1 << 30),
                },
                Some(80 << 30),
            );
        });
        let text = handle.render();
        assert!(
            text.contains(r#"crat_node_tasks_total{outcome="busy"} 1"#),
            "{text}"
        );
        // Only served tasks are timed.
        assert!(!text.contains(TASK_DURATION_SECONDS), "{text}");
        assert!(text.contains(r#"crat_node_failures_total{kind="queue_full"} 1"#));
        assert!(text.contains(r#"crat_node_receipt_signatures_total{nonce="ahead"} 3"#));
        assert!(text.contains(r#"crat_node_receipt_signatures_total{nonce="none"} 2"#));
        assert!(text.contains(r#"crat_node_gpu_utilisation_ratio{gpu="1"} 0.25"#));
        assert!(text.contains(r#"crat_node_gpu_memory_used_bytes{gpu="1"} 1073741824"#));
        assert!(text.contains(r#"crat_node_gpu_memory_total_bytes{gpu="1"} 85899345920"#));
        assert!(text.contains(r#"crat_node_gpu_temperature_celsius{gpu="1"} 61"#));
        assert!(text.contains(r#"crat_node_gpu_power_watts{gpu="1"} 150.5"#));
    }

    #[test]
    fn labels_are_distinct() {
        let all = [
            Failure::QueueFull,
            Failure::RunTimeout,
            Failure::RunError,
            Failure::ModelFetch,
            Failure::ModelLoad,
            Failure::DispatcherConnection,
            Failure::UsageReport,
            Failure::UsageJournal,
        ];
        let labels: std::collections::HashSet<_> = all.iter().map(|f| f.label()).collect();
        assert_eq!(labels.len(), all.len());
        assert_eq!(result(true), "ok");
        assert_eq!(result(false), "failed");
    }
}
