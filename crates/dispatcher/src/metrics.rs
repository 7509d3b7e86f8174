//! The dispatcher's Prometheus metrics: the series' names and label values.
//!
//! The service records through the [`metrics`] facade; without a recorder installed (tests,
//! `LocalNetwork`, an embedder who wants none) every call is a no-op. `crat dispatcher
//! --metrics-addr` installs a Prometheus recorder and serves `GET /metrics`. Labels take
//! values from fixed sets (results, error codes, states): never a node, key or deployment id,
//! which peers choose. The same events are counted in [`DispatcherStats`](crate::DispatcherStats).
//!
//! | series | type | labels |
//! |---|---|---|
//! | `crat_dispatcher_leases_total` | counter | — (tickets issued to clients) |
//! | `crat_dispatcher_registrations_total` | counter | `result`: `ok` or the error code |
//! | `crat_dispatcher_heartbeats_total` | counter | `result`: `ok` or the error code |
//! | `crat_dispatcher_usage_records_total` | counter | `state`: `charged`, `duplicate`, `held`, `settled` (charged later from the client's acknowledgement) |
//! | `crat_dispatcher_validations_total` | counter | `result`: `ok`, `failed` (spot checks) |
//! | `crat_dispatcher_canaries_total` | counter | `outcome`: `passed`, `failed`, `inconclusive` |
//! | `crat_dispatcher_rounds_closed_total` | counter | — |
//! | `crat_dispatcher_settlement_failures_total` | counter | — |
//! | `crat_dispatcher_ledger_call_duration_seconds` | histogram | — (every ledger call, on the blocking pool, wait included) |
//! | `crat_dispatcher_ledger_errors_total` | counter | — |
//! | `crat_dispatcher_nodes_online` | gauge | — |
//! | `crat_dispatcher_round_leader` | gauge | — (1 while this dispatcher closes rounds, 0 while another one of its ledger does) |
//! | `crat_dispatcher_reach_probes_total` | counter | `result` |
//!
//! ```
//! // With no recorder installed, recording does nothing.
//! metrics::counter!(crat_dispatcher::metrics::LEASES_TOTAL).increment(1);
//! ```

/// Tickets issued to clients.
pub const LEASES_TOTAL: &str = "crat_dispatcher_leases_total";
/// Node registrations, by result.
pub const REGISTRATIONS_TOTAL: &str = "crat_dispatcher_registrations_total";
/// Node heartbeats, by result.
pub const HEARTBEATS_TOTAL: &str = "crat_dispatcher_heartbeats_total";
/// Usage records reported by nodes, by what became of them.
pub const USAGE_RECORDS_TOTAL: &str = "crat_dispatcher_usage_records_total";
/// Spot-check validations, by result.
pub const VALIDATIONS_TOTAL: &str = "crat_dispatcher_validations_total";
/// Canary tasks, by outcome.
pub const CANARIES_TOTAL: &str = "crat_dispatcher_canaries_total";
/// Rounds closed.
pub const ROUNDS_CLOSED_TOTAL: &str = "crat_dispatcher_rounds_closed_total";
/// Round settlements that failed (retried with backoff).
pub const SETTLEMENT_FAILURES_TOTAL: &str = "crat_dispatcher_settlement_failures_total";
/// Time of each ledger call, from submission to the blocking pool to its result.
pub const LEDGER_CALL_DURATION_SECONDS: &str = "crat_dispatcher_ledger_call_duration_seconds";
/// Ledger calls that failed.
pub const LEDGER_ERRORS_TOTAL: &str = "crat_dispatcher_ledger_errors_total";
/// Nodes online now.
pub const NODES_ONLINE: &str = "crat_dispatcher_nodes_online";
/// 1 while this dispatcher closes and settles rounds, 0 while another sharing its ledger does.
pub const ROUND_LEADER: &str = "crat_dispatcher_round_leader";
/// Reachability probes of nodes, by result (`direct`, `unreachable`).
pub const REACH_PROBES_TOTAL: &str = "crat_dispatcher_reach_probes_total";

/// Registers every series' help text (and unit) with the installed recorder, so that a scrape
/// explains them; call once after installing it.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(LEASES_TOTAL, "Tickets issued to clients.");
    describe_counter!(
        REACH_PROBES_TOTAL,
        "Reachability probes of nodes, by result (direct or unreachable)."
    );
    describe_counter!(
        REGISTRATIONS_TOTAL,
        "Node registrations, by result (ok or the error code)."
    );
    describe_counter!(
        HEARTBEATS_TOTAL,
        "Node heartbeats, by result (ok or the error code)."
    );
    describe_counter!(
        USAGE_RECORDS_TOTAL,
        "Usage records reported by nodes, by state (charged, duplicate, held, settled)."
    );
    describe_counter!(VALIDATIONS_TOTAL, "Spot-check validations, by result.");
    describe_counter!(CANARIES_TOTAL, "Canary tasks, by outcome.");
    describe_counter!(ROUNDS_CLOSED_TOTAL, "Rounds closed.");
    describe_counter!(SETTLEMENT_FAILURES_TOTAL, "Round settlements that failed.");
    describe_histogram!(
        LEDGER_CALL_DURATION_SECONDS,
        Unit::Seconds,
        "Ledger calls, from submission to the blocking pool to their result."
    );
    describe_counter!(LEDGER_ERRORS_TOTAL, "Ledger calls that failed.");
    describe_gauge!(NODES_ONLINE, Unit::Count, "Nodes online now.");
    describe_gauge!(
        ROUND_LEADER,
        "1 while this dispatcher closes and settles rounds, 0 while another sharing its ledger does."
    );
}

/// `ok`, or the code of the error the answer carries.
pub(crate) fn reply_result(reply: &crat_core::wire::DispatcherReply) -> &'static str {
    match reply {
        crat_core::wire::DispatcherReply::Error(e) => e.code.label(),
        _ => "ok",
    }
}

/// Counts `n` usage records in `state`.
pub(crate) fn usage_records(state: &'static str, n: u64) {
    if n > 0 {
        metrics::counter!(USAGE_RECORDS_TOTAL, "state" => state).increment(n);
    }
}

#[cfg(test)]
mod tests {
    use crat_core::wire::{DispatcherReply, ErrorCode, WireError};
    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;

    #[test]
    fn results_and_states_render() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let busy = DispatcherReply::Error(WireError::new(ErrorCode::Busy, "later"));
            metrics::counter!(HEARTBEATS_TOTAL, "result" => reply_result(&busy)).increment(1);
            usage_records("held", 2);
            usage_records("duplicate", 0);
        });
        let text = handle.render();
        assert!(
            text.contains(r#"crat_dispatcher_heartbeats_total{result="busy"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"crat_dispatcher_usage_records_total{state="held"} 2"#));
        // Nothing counted, nothing registered: no empty series for a state never seen.
        assert!(!text.contains(r#"state="duplicate""#), "{text}");
    }
}
