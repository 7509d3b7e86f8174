//! Client settings.

use std::sync::Arc;
use std::time::Duration;

use crat_core::clock::Clock;
use crat_transport::{FrameLimits, SteadyClock};

/// Limits, timeouts and retry policy of a [`Client`](crate::Client).
#[derive(Clone)]
pub struct ClientConfig {
    /// Limit on one dispatcher exchange (request sent to answer read). Default 30 s.
    pub dispatcher_timeout_ms: u64,
    /// Limit on one task on one node (request sent to outputs read). Past it the task is
    /// retried on another replica. Default 60 s.
    pub infer_timeout_ms: u64,
    /// Limit on dialling one address. Default 10 s.
    pub connect_timeout_ms: u64,
    /// Other addresses of the same dispatcher (dispatchers sharing one ledger and key): when
    /// its address does not answer, or its connection dies, the client dials the next of them
    /// in turn. Default: none.
    pub dispatcher_alternates: Vec<crat_core::id::PeerAddr>,
    /// Most attempts (node calls) for one task, over all replicas and lease renewals.
    /// `None` (the default): 2 × the lease's replicas + 2.
    pub attempts_max: Option<u32>,
    /// A lease is renewed once less than this share of its ticket's lifetime is left,
    /// in percent. Default 20.
    pub lease_renew_margin_pct: u8,
    /// ... or once less than this many seconds are left, whichever comes first. Default 5.
    /// The margin is capped at half the ticket's lifetime, so a short-lived ticket is still
    /// used for half its life rather than renewed before every task.
    pub lease_renew_margin_s_min: u64,
    /// Upload chunks in flight at once. Default 8.
    pub upload_window: usize,
    /// Node connections kept open in the pool (one per node). Default 256.
    pub node_connections_max: usize,
    /// First pause between deployment polls in
    /// [`Deployment::wait_ready`](crate::Deployment::wait_ready). Default 100 ms.
    pub ready_poll_ms_initial: u64,
    /// Longest pause between deployment polls (the pause doubles up to it). Default 2 s.
    pub ready_poll_ms_max: u64,
    /// Frame caps; must match what the dispatcher and nodes accept. Default
    /// [`FrameLimits::default`].
    pub frame_limits: FrameLimits,
    /// A node gets a fresh signed acknowledgement of the answers received from it (under one
    /// ticket) after at most this many new answers, with the next task sent to it. Default 16
    /// (nodes stop serving a ticket with 1,024 unacknowledged tasks by default).
    pub ack_every_tasks: u64,
    /// How often acknowledgements are also sent to the dispatcher (so that work a node never
    /// reports is charged); they are sent at each lease renewal too, and by
    /// [`Deployment::flush_acks`](crate::Deployment::flush_acks). Default 1,000 ms.
    pub ack_flush_ms: u64,
    /// The shapes (never the values) of the inputs sent to a deployment are told to the
    /// dispatcher, so that its canary tasks look like this traffic to a node: a shape not
    /// told before with the next acknowledgement flush, counts every this many seconds. 0
    /// never tells (canaries then have generic shapes a node may tell apart). Default 60 s.
    pub input_shapes_report_s: u64,
    /// The clock for lease renewal (when a lease is due); tests drive it by hand. Default
    /// [`SteadyClock`]: the system clock with its steps left out.
    pub clock: Arc<dyn Clock>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            dispatcher_timeout_ms: 30_000,
            infer_timeout_ms: 60_000,
            connect_timeout_ms: 10_000,
            dispatcher_alternates: Vec::new(),
            attempts_max: None,
            lease_renew_margin_pct: 20,
            lease_renew_margin_s_min: 5,
            upload_window: 8,
            node_connections_max: 256,
            ready_poll_ms_initial: 100,
            ready_poll_ms_max: 2_000,
            frame_limits: FrameLimits::default(),
            ack_every_tasks: 16,
            ack_flush_ms: 1_000,
            input_shapes_report_s: 60,
            clock: Arc::new(SteadyClock::system()),
        }
    }
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("dispatcher_timeout_ms", &self.dispatcher_timeout_ms)
            .field("infer_timeout_ms", &self.infer_timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("dispatcher_alternates", &self.dispatcher_alternates)
            .field("attempts_max", &self.attempts_max)
            .field("ack_every_tasks", &self.ack_every_tasks)
            .field("ack_flush_ms", &self.ack_flush_ms)
            .field("input_shapes_report_s", &self.input_shapes_report_s)
            .field("lease_renew_margin_pct", &self.lease_renew_margin_pct)
            .field("lease_renew_margin_s_min", &self.lease_renew_margin_s_min)
            .field("upload_window", &self.upload_window)
            .field("node_connections_max", &self.node_connections_max)
            .field("ready_poll_ms_initial", &self.ready_poll_ms_initial)
            .field("ready_poll_ms_max", &self.ready_poll_ms_max)
            .field("frame_limits", &self.frame_limits)
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    pub(crate) fn dispatcher_timeout(&self) -> Duration {
        Duration::from_millis(self.dispatcher_timeout_ms)
    }

    pub(crate) fn infer_timeout(&self) -> Duration {
        Duration::from_millis(self.infer_timeout_ms)
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// Seconds before a ticket's end at which it is renewed, for a ticket living `lifetime_s`.
    pub(crate) fn renew_margin_s(&self, lifetime_s: u64) -> u64 {
        let pct = lifetime_s.saturating_mul(u64::from(self.lease_renew_margin_pct)) / 100;
        pct.max(self.lease_renew_margin_s_min).min(lifetime_s / 2)
    }
}
