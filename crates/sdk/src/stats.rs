//! Counters of tasks, failovers and validations, kept per [`Client`](crate::Client) and per
//! [`Deployment`](crate::Deployment).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of a [`Client`](crate::Client) or one [`Deployment`](crate::Deployment), for
/// dashboards and demos.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Tasks started.
    pub tasks: u64,
    /// Tasks that returned outputs.
    pub completed: u64,
    /// Tasks that returned an error.
    pub failed: u64,
    /// Times a task moved on to another replica (or another try) after a retryable failure.
    pub failovers: u64,
    /// Leases fetched to replace an earlier one (near expiry, after a rejected ticket, or
    /// after every replica failed).
    pub lease_renewals: u64,
    /// Tickets a node refused (invalid, or without budget left for the task).
    pub ticket_rejections: u64,
    /// Tasks spot-checked on a second replica.
    pub validations: u64,
    /// Spot checks whose first two answers disagreed (a third replica decided).
    pub disagreements: u64,
    /// Spot checks left without a verdict because the replicas answered with different models
    /// (a model update rolling out).
    pub validations_inconclusive: u64,
    /// Validation reports not sent because too many were pending.
    pub reports_dropped: u64,
    /// Answers discarded because they came without a valid receipt (each one a failover, and
    /// reported to the dispatcher, which checks the node with a canary).
    pub receipts_invalid: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) tasks: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) failovers: AtomicU64,
    pub(crate) lease_renewals: AtomicU64,
    pub(crate) ticket_rejections: AtomicU64,
    pub(crate) validations: AtomicU64,
    pub(crate) disagreements: AtomicU64,
    pub(crate) validations_inconclusive: AtomicU64,
    pub(crate) reports_dropped: AtomicU64,
    pub(crate) receipts_invalid: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            tasks: get(&self.tasks),
            completed: get(&self.completed),
            failed: get(&self.failed),
            failovers: get(&self.failovers),
            lease_renewals: get(&self.lease_renewals),
            ticket_rejections: get(&self.ticket_rejections),
            validations: get(&self.validations),
            disagreements: get(&self.disagreements),
            validations_inconclusive: get(&self.validations_inconclusive),
            reports_dropped: get(&self.reports_dropped),
            receipts_invalid: get(&self.receipts_invalid),
        }
    }
}

pub(crate) fn bump(counters: &[&Counters], field: fn(&Counters) -> &AtomicU64) {
    for c in counters {
        field(c).fetch_add(1, Ordering::Relaxed);
    }
}
