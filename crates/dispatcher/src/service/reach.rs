//! Whether nodes can be reached directly from outside: after a node registers, the dispatcher
//! dials the address its packets came from, from a probe endpoint of its own on another
//! port, pinning the node's identity. A NAT or firewall lets that dial in only when it
//! forwards the port (or the node has a public address), so a node it reaches is one clients
//! reach directly ([`Replica::direct`](crat_core::wire::Replica::direct)); placement prefers
//! such nodes ([`Dispatch::set_direct`](crat_core::dispatch::Dispatch::set_direct)). The same
//! probe answers a node's [`NodeRequest::Reach`](crat_core::wire::NodeRequest::Reach) (`crat
//! node doctor`).
//!
//! The probe endpoint never uses a relay (on iroh: relaying off), so only a direct path can
//! answer. It dials only the address a connection's packets came from: a peer cannot point it
//! at anyone else. At most [`REACH_PROBES_MAX`] probes run at once; more are not run
//! (registrations go on, the node's reachability stays unknown).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crat_core::id::{NodeId, PeerAddr};
use crat_core::wire::Reach;
use crat_transport::{Connection, Transport};

use super::Dispatcher;

/// Client endpoints remembered as relay members, at most (the soonest to expire make room).
pub(super) const RELAY_MEMBERS_MAX: usize = 100_000;

/// How long a client endpoint stays a relay member after its last call with a valid key.
const RELAY_MEMBER_MS: u64 = 3_600_000;

/// Probes running at once, at most.
pub(super) const REACH_PROBES_MAX: usize = 16;

/// How long a probe waits for the node's handshake.
pub(super) const REACH_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The probe endpoint and its permits.
pub(super) struct ReachState<T> {
    probe: std::sync::OnceLock<Arc<T>>,
    permits: Arc<tokio::sync::Semaphore>,
}

impl<T> ReachState<T> {
    pub(super) fn new() -> Self {
        Self {
            probe: std::sync::OnceLock::new(),
            permits: Arc::new(tokio::sync::Semaphore::new(REACH_PROBES_MAX)),
        }
    }
}

impl<T: Transport> Dispatcher<T> {
    /// Gives the dispatcher its probe endpoint: a transport of the same kind as its own, bound
    /// on another port of the same host and without relays. Without one, nodes' reachability
    /// stays unknown (`None`). `false` if one was set already (it is kept).
    pub fn set_reach_probe(&self, probe: T) -> bool {
        self.inner.reach.probe.set(Arc::new(probe)).is_ok()
    }

    /// Dials `node` at `addr` from the probe endpoint: whether its handshake completed within
    /// [`REACH_PROBE_TIMEOUT`], and how long the attempt took. `None` when there is no probe
    /// endpoint or every permit is taken.
    async fn probe(&self, node: NodeId, addr: SocketAddr) -> Option<(bool, u32)> {
        let probe = self.inner.reach.probe.get()?.clone();
        let _permit = self.inner.reach.permits.clone().try_acquire_owned().ok()?;
        let started = Instant::now();
        let reached = match tokio::time::timeout(
            REACH_PROBE_TIMEOUT,
            probe.connect(&PeerAddr::from(addr), &node),
        )
        .await
        {
            Ok(Ok(conn)) => {
                conn.close("reachability probe");
                true
            }
            Ok(Err(e)) => {
                tracing::debug!(%node, %addr, error = %e, "reachability probe failed");
                false
            }
            Err(_) => false,
        };
        let ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
        metrics::counter!(
            crate::metrics::REACH_PROBES_TOTAL,
            "result" => if reached { "direct" } else { "unreachable" }
        )
        .increment(1);
        Some((reached, ms))
    }

    /// After `node` registered from `seen`: probes it in the background and records the
    /// result for placement and leases.
    pub(super) fn probe_registered(&self, node: NodeId, seen: Option<SocketAddr>) {
        let Some(addr) = seen else {
            tracing::debug!(%node, "no direct address seen: reachability not checked");
            return;
        };
        if self.inner.reach.probe.get().is_none() {
            tracing::debug!(%node, "no probe endpoint: reachability not checked");
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Some((direct, ms)) = me.probe(node, addr).await {
                tracing::info!(%node, %addr, direct, ms, "reachability checked");
                me.inner.dispatch.lock().set_direct(&node, direct);
            }
        });
    }

    /// Remembers that client endpoint `id` used a valid key now: a relay member for
    /// [`RELAY_MEMBER_MS`] (an entry held keeps its expiry; once it passed, the next call adds
    /// it again).
    pub(super) fn remember_relay_member(&self, id: NodeId) {
        let now_ms = self.monotonic_ms();
        let _ = self.inner.relay_members.lock().insert(
            id,
            (),
            now_ms.saturating_add(RELAY_MEMBER_MS),
            now_ms,
            crat_core::expiring::WhenFull::ForgetSoonest,
        );
    }

    /// Whether `endpoint` may use the network's relays: a node the dispatcher knows (online
    /// or not), a client endpoint that used a valid key within the last hour, or one of the
    /// dispatcher's canary endpoints (which must look like clients to nodes).
    pub(super) fn relay_member(&self, endpoint: &NodeId) -> bool {
        if self.inner.dispatch.lock().operator(endpoint).is_some() {
            return true;
        }
        if self
            .inner
            .canary
            .as_ref()
            .is_some_and(|c| c.is_identity(endpoint))
        {
            return true;
        }
        let now_ms = self.monotonic_ms();
        let mut members = self.inner.relay_members.lock();
        members.forget_expired(now_ms);
        members.contains(endpoint)
    }

    /// Answers [`NodeRequest::Reach`](crat_core::wire::NodeRequest::Reach) on `conn`.
    pub(super) async fn reach(&self, conn: &crate::cluster::Link<T::Connection>) -> Reach {
        let seen = conn.observed_addr();
        let probed = match seen {
            Some(addr) => self.probe(conn.remote_id(), addr).await,
            None => None,
        };
        Reach {
            observed: seen.map(PeerAddr::from),
            inbound: probed.map(|(reached, _)| reached),
            probe_ms: probed.map_or(0, |(_, ms)| ms),
        }
    }
}
