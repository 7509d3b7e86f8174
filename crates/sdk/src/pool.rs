//! Connections the SDK keeps open and reuses: the node pool (one connection per node, dialled
//! with the node's pinned id), and the rule for when a transport error means a pooled
//! connection is dead. The [`Client`](crate::Client) owns the pool; its
//! [`Deployment`](crate::Deployment)s run their tasks over it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crat_core::id::NodeId;
use crat_core::wire::Replica;
use crat_transport::{Transport, TransportError};
use parking_lot::Mutex;

use crate::config::ClientConfig;
use crate::error::Error;

/// True when a transport error means the connection itself is unusable.
pub(crate) fn breaks_connection(e: &TransportError) -> bool {
    !matches!(e, TransportError::Frame(_) | TransportError::Busy)
}

/// A connection slot of the node pool.
enum Slot<C> {
    Empty,
    Open {
        generation: u64,
        conn: C,
    },
    /// The last dial failed at this time; callers fail over at once instead of queueing up
    /// to dial a dead node one after the other.
    Failed {
        at: tokio::time::Instant,
        reason: String,
    },
}

/// How long a failed dial is remembered before the node is dialled again.
const DIAL_FAILURE_MEMORY_MS: u64 = 1_000;

/// Node connections, one per node, dialled with the node's pinned id and reused.
pub(crate) struct NodePool<C> {
    slots: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<Slot<C>>>>>,
    next_generation: AtomicU64,
    max: usize,
}

impl<C: crat_transport::Connection> NodePool<C> {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(1),
            max: max.max(1),
        }
    }

    /// Each node with an open connection now, and the path its packets take (a slot being
    /// dialled or used for a dial this instant is left out).
    pub(crate) fn paths(&self) -> Vec<(NodeId, crat_transport::PathKind)> {
        let slots: Vec<_> = self
            .slots
            .lock()
            .iter()
            .map(|(node, slot)| (*node, slot.clone()))
            .collect();
        let mut paths: Vec<_> = slots
            .into_iter()
            .filter_map(|(node, slot)| match &*slot.try_lock().ok()? {
                Slot::Open { conn, .. } => Some((node, conn.path_kind())),
                _ => None,
            })
            .collect();
        paths.sort_by_key(|(node, _)| *node);
        paths
    }

    /// A connection to `replica`, dialling its addresses in order if none is open.
    pub(crate) async fn get<T: Transport<Connection = C>>(
        &self,
        transport: &T,
        replica: &Replica,
        config: &ClientConfig,
    ) -> Result<(u64, C), Error> {
        let slot = {
            let mut slots = self.slots.lock();
            if !slots.contains_key(&replica.node)
                && slots.len() >= self.max
                && let Some(victim) = slots.keys().next().copied()
            {
                slots.remove(&victim);
            }
            slots
                .entry(replica.node)
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(Slot::Empty)))
                .clone()
        };
        let mut slot = slot.lock().await;
        match &*slot {
            Slot::Open { generation, conn } => return Ok((*generation, conn.clone())),
            Slot::Failed { at, reason }
                if at.elapsed().as_millis() < u128::from(DIAL_FAILURE_MEMORY_MS) =>
            {
                return Err(Error::Transport(TransportError::Connect {
                    addr: replica
                        .addrs
                        .first()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    reason: format!("recently failed: {reason}"),
                }));
            }
            _ => {}
        }
        let mut last = None;
        for addr in &replica.addrs {
            match tokio::time::timeout(
                config.connect_timeout(),
                transport.connect(addr, &replica.node),
            )
            .await
            {
                Ok(Ok(conn)) => {
                    let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
                    *slot = Slot::Open {
                        generation,
                        conn: conn.clone(),
                    };
                    return Ok((generation, conn));
                }
                Ok(Err(e)) => last = Some(Error::Transport(e)),
                Err(_) => {
                    last = Some(Error::Timeout(format!(
                        "connecting to {} at {addr} took over {} ms",
                        replica.node, config.connect_timeout_ms
                    )));
                }
            }
        }
        let err = last
            .unwrap_or_else(|| Error::Protocol(format!("replica {} has no address", replica.node)));
        *slot = Slot::Failed {
            at: tokio::time::Instant::now(),
            reason: err.to_string(),
        };
        Err(err)
    }

    /// Forgets connection `generation` to `node` (if it is still the pooled one).
    pub(crate) async fn drop_conn(&self, node: &NodeId, generation: u64) {
        let slot = self.slots.lock().get(node).cloned();
        if let Some(slot) = slot {
            let mut slot = slot.lock().await;
            if matches!(&*slot, Slot::Open { generation: g, .. } if *g == generation) {
                *slot = Slot::Empty;
            }
        }
    }
}
