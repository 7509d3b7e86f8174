//! One SDK client per key, at most `clients_max` of them (the least recently used goes), and
//! per client at most `deployments_per_client_max` deployment handles (each keeps its lease,
//! so tasks do not fetch a new one).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crat_core::id::{DeploymentId, NodeId, SdkKey};
use crat_sdk::{Client, ClientConfig, Deployment};
use crat_transport::any::AnyTransport;
use crat_transport::iroh::IrohConfig;
use crat_transport::quic::QuicConfig;
use parking_lot::Mutex;
use tokio::sync::OnceCell;

use crate::error::GatewayError;

/// Where the gateway's SDK clients connect: the dispatcher, and the SDK's settings.
#[derive(Clone)]
pub struct Upstream {
    /// The dispatcher's address.
    pub dispatcher_addr: SocketAddr,
    /// The dispatcher's identity (pinned).
    pub dispatcher_id: NodeId,
    /// The SDK settings of every client.
    pub client: ClientConfig,
    /// The QUIC settings of every client's endpoint (on a QUIC network).
    pub quic: QuicConfig,
    /// On a network that runs the iroh transport, the settings (relays) of every client's
    /// iroh endpoint; `None`: QUIC.
    pub iroh: Option<IrohConfig>,
}

impl Upstream {
    /// Default SDK and QUIC settings for the dispatcher at `dispatcher_addr`.
    pub fn new(dispatcher_addr: SocketAddr, dispatcher_id: NodeId) -> Self {
        Self {
            dispatcher_addr,
            dispatcher_id,
            client: ClientConfig::default(),
            quic: QuicConfig::default(),
            iroh: None,
        }
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("dispatcher_addr", &self.dispatcher_addr)
            .field("dispatcher_id", &self.dispatcher_id)
            .finish_non_exhaustive()
    }
}

type Handle = Deployment<AnyTransport>;

/// The client of one key, made on first use.
pub(crate) struct Slot {
    key: SdkKey,
    client: OnceCell<Client<AnyTransport>>,
    last_used: AtomicU64,
    deployments: Mutex<HashMap<DeploymentId, Handle>>,
}

impl Slot {
    /// The deployment handle for `id` (kept, so its lease is reused).
    pub(crate) fn deployment(
        &self,
        client: &Client<AnyTransport>,
        id: DeploymentId,
        most: usize,
    ) -> Handle {
        let mut map = self.deployments.lock();
        if let Some(d) = map.get(&id) {
            return d.clone();
        }
        if map.len() >= most {
            // Keep the bound: drop one handle (its acknowledgements are flushed first).
            if let Some(old) = map.keys().next().copied()
                && let Some(d) = map.remove(&old)
            {
                flush_in_background(vec![d]);
            }
        }
        let d = client.deployment(id);
        map.insert(id, d.clone());
        d
    }
}

/// Sends what the dropped handles' clients acknowledged to the dispatcher, so that nodes are
/// paid for work a dropped client received.
fn flush_in_background(handles: Vec<Handle>) {
    if handles.is_empty() {
        return;
    }
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            for d in handles {
                if let Err(e) = d.flush_acks().await {
                    tracing::debug!(deployment = %d.id(), "flushing acknowledgements: {e}");
                }
            }
        });
    }
}

/// The bounded pool of clients, by key.
pub(crate) struct ClientPool {
    upstream: Upstream,
    clients_max: usize,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    clock: AtomicU64,
}

impl ClientPool {
    pub(crate) fn new(upstream: Upstream, clients_max: usize) -> Self {
        Self {
            upstream,
            clients_max,
            slots: Mutex::new(HashMap::new()),
            clock: AtomicU64::new(0),
        }
    }

    /// Clients held now.
    pub(crate) fn len(&self) -> usize {
        self.slots.lock().len()
    }

    /// The client of `key` (connected on first use) and its slot.
    pub(crate) async fn get(
        &self,
        key: &SdkKey,
    ) -> Result<(Client<AnyTransport>, Arc<Slot>), GatewayError> {
        let slot = self.slot(key);
        let client = slot
            .client
            .get_or_try_init(|| self.connect(slot.key.clone()))
            .await?
            .clone();
        Ok((client, slot))
    }

    /// A client of `key` on an endpoint of its own, of the network's transport.
    async fn connect(&self, key: SdkKey) -> Result<Client<AnyTransport>, crat_sdk::Error> {
        let up = &self.upstream;
        let identity = ed25519_dalek::SigningKey::from_bytes(&rand::random());
        let bind = crat_sdk::client_bind_addr(up.dispatcher_addr);
        let transport = match &up.iroh {
            Some(iroh) => AnyTransport::iroh(bind, &identity, iroh.clone()).await?,
            None => AnyTransport::quic(bind, &identity, up.quic.clone())?,
        };
        let relays = up.iroh.as_ref().is_some_and(|c| !c.relay_urls.is_empty());
        let client = Client::connect_with(
            transport,
            identity,
            up.dispatcher_addr.into(),
            up.dispatcher_id,
            key,
            up.client.clone(),
        )
        .await?;
        if relays {
            // A call with a valid key makes the endpoint a member the relays admit.
            client.key_status().await?;
        }
        Ok(client)
    }

    fn slot(&self, key: &SdkKey) -> Arc<Slot> {
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        // The whole key (id and secret) names the slot: a wrong secret never reaches the
        // client of the right one.
        let name = key.to_string();
        let mut slots = self.slots.lock();
        if let Some(slot) = slots.get(&name) {
            slot.last_used.store(now, Ordering::Relaxed);
            return slot.clone();
        }
        if slots.len() >= self.clients_max {
            let oldest = slots
                .iter()
                .min_by_key(|(_, s)| s.last_used.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest
                && let Some(slot) = slots.remove(&oldest)
            {
                let handles = slot.deployments.lock().drain().map(|(_, d)| d).collect();
                flush_in_background(handles);
            }
        }
        let slot = Arc::new(Slot {
            key: key.clone(),
            client: OnceCell::new(),
            last_used: AtomicU64::new(now),
            deployments: Mutex::new(HashMap::new()),
        });
        slots.insert(name, slot.clone());
        slot
    }

    /// Drops the client of `key` (the network refused the key).
    pub(crate) fn remove(&self, key: &SdkKey) {
        self.slots.lock().remove(&key.to_string());
    }

    /// Flushes every client's acknowledgements (at shutdown).
    pub(crate) async fn flush_all(&self) {
        let handles: Vec<Handle> = self
            .slots
            .lock()
            .values()
            .flat_map(|s| s.deployments.lock().values().cloned().collect::<Vec<_>>())
            .collect();
        for d in handles {
            if let Err(e) = d.flush_acks().await {
                tracing::debug!(deployment = %d.id(), "flushing acknowledgements: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(n: u8) -> SdkKey {
        format!("sk_{}_{}", hex(n, 16), hex(n, 32)).parse().unwrap()
    }

    fn hex(n: u8, bytes: usize) -> String {
        format!("{n:02x}").repeat(bytes)
    }

    #[test]
    fn the_least_recently_used_key_goes_first() {
        let upstream = Upstream::new("127.0.0.1:9".parse().unwrap(), NodeId::from_bytes([1; 32]));
        let pool = ClientPool::new(upstream, 2);
        let a = pool.slot(&key(1));
        pool.slot(&key(2));
        // Using key 1 again makes key 2 the oldest.
        assert!(Arc::ptr_eq(&a, &pool.slot(&key(1))));
        pool.slot(&key(3));
        assert_eq!(pool.len(), 2);
        let names: Vec<String> = pool.slots.lock().keys().cloned().collect();
        assert!(names.contains(&key(1).to_string()) && names.contains(&key(3).to_string()));
        // The same key id with another secret is another slot, never the first one's client.
        let mut other = key(1);
        other.secret = [9; 32];
        assert!(!Arc::ptr_eq(&a, &pool.slot(&other)));
        pool.remove(&other);
        assert_eq!(pool.len(), 1);
    }
}
