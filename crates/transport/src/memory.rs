//! In-process transport: peers are named (`mem:…`) endpoints of a [`MemoryNetwork`].
//!
//! It behaves like the QUIC transport where it matters to the code above it: connections
//! are authenticated (dialling checks the listener's identity), exchanges are independent and
//! bounded in number, frame caps are enforced on read, and a peer that goes away surfaces as
//! an error rather than a hang. Frames are handed over without copying.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use crat_core::id::{NodeId, PeerAddr};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

use crate::{Aborted, Closed, Connection, Frame, IncomingExchange, Transport, TransportError};

/// Limits of the in-memory transport.
#[derive(Clone, Copy, Debug)]
pub struct MemoryConfig {
    /// Connections waiting to be accepted before dialling waits. Default 64.
    pub accept_queue_max: usize,
    /// Exchanges queued towards a peer before `request` waits. Default 256.
    pub exchanges_queued_max: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            accept_queue_max: 64,
            exchanges_queued_max: 256,
        }
    }
}

struct Listener {
    id: NodeId,
    config: MemoryConfig,
    accept: mpsc::Sender<MemoryConnection>,
    // Connections of this endpoint, closed with it.
    conns: Arc<Mutex<Vec<Weak<Shared>>>>,
}

/// A set of in-memory endpoints that can reach each other by name.
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    listeners: Arc<Mutex<HashMap<PeerAddr, Listener>>>,
}

impl MemoryNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates an endpoint named `addr` with identity `id` and default limits.
    pub fn bind(&self, addr: &str, id: NodeId) -> Result<MemoryTransport, TransportError> {
        self.bind_with(addr, id, MemoryConfig::default())
    }

    /// Creates an endpoint named `addr` with identity `id`.
    pub fn bind_with(
        &self,
        addr: &str,
        id: NodeId,
        config: MemoryConfig,
    ) -> Result<MemoryTransport, TransportError> {
        let bad = |reason: &str| TransportError::Addr {
            addr: addr.into(),
            reason: reason.into(),
        };
        if !addr.starts_with("mem:") {
            return Err(bad("in-memory addresses start with mem:"));
        }
        let peer_addr = PeerAddr::new(addr).map_err(|e| bad(&e.to_string()))?;
        let (tx, rx) = mpsc::channel(config.accept_queue_max.max(1));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let mut listeners = self.listeners.lock();
        if listeners.contains_key(&peer_addr) {
            return Err(bad("address in use"));
        }
        listeners.insert(
            peer_addr.clone(),
            Listener {
                id,
                config,
                accept: tx,
                conns: conns.clone(),
            },
        );
        Ok(MemoryTransport {
            network: self.clone(),
            addr: peer_addr,
            id,
            config,
            incoming: tokio::sync::Mutex::new(rx),
            conns,
        })
    }
}

/// One endpoint of a [`MemoryNetwork`].
pub struct MemoryTransport {
    network: MemoryNetwork,
    addr: PeerAddr,
    id: NodeId,
    config: MemoryConfig,
    incoming: tokio::sync::Mutex<mpsc::Receiver<MemoryConnection>>,
    conns: Arc<Mutex<Vec<Weak<Shared>>>>,
}

fn track(conns: &Mutex<Vec<Weak<Shared>>>, shared: &Arc<Shared>) {
    let mut conns = conns.lock();
    conns.retain(|w| w.strong_count() > 0);
    conns.push(Arc::downgrade(shared));
}

#[async_trait]
impl Transport for MemoryTransport {
    type Connection = MemoryConnection;

    fn local_id(&self) -> NodeId {
        self.id
    }

    fn local_addr(&self) -> PeerAddr {
        self.addr.clone()
    }

    async fn connect(
        &self,
        addr: &PeerAddr,
        expected: &NodeId,
    ) -> Result<MemoryConnection, TransportError> {
        let (remote_id, remote_config, accept, remote_conns) = {
            let listeners = self.network.listeners.lock();
            let l = listeners.get(addr).ok_or_else(|| TransportError::Connect {
                addr: addr.to_string(),
                reason: "no endpoint at this address".into(),
            })?;
            (l.id, l.config, l.accept.clone(), l.conns.clone())
        };
        if remote_id != *expected {
            return Err(TransportError::Identity {
                expected: *expected,
                actual: remote_id,
            });
        }
        let shared = Arc::new(Shared::default());
        // Each side's queue is bounded by the receiving side's limit.
        let (to_remote, remote_rx) = mpsc::channel(remote_config.exchanges_queued_max.max(1));
        let (to_local, local_rx) = mpsc::channel(self.config.exchanges_queued_max.max(1));
        let local = MemoryConnection {
            remote_id,
            remote_addr: addr.clone(),
            outgoing: to_remote,
            incoming: Arc::new(tokio::sync::Mutex::new(local_rx)),
            shared: shared.clone(),
        };
        let remote = MemoryConnection {
            remote_id: self.id,
            remote_addr: self.addr.clone(),
            outgoing: to_local,
            incoming: Arc::new(tokio::sync::Mutex::new(remote_rx)),
            shared: shared.clone(),
        };
        track(&self.conns, &shared);
        track(&remote_conns, &shared);
        accept
            .send(remote)
            .await
            .map_err(|_| TransportError::Connect {
                addr: addr.to_string(),
                reason: "endpoint closed".into(),
            })?;
        Ok(local)
    }

    async fn accept(&self) -> Result<MemoryConnection, TransportError> {
        self.incoming
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| TransportError::Closed(Closed::Endpoint))
    }

    fn close(&self) {
        self.network.listeners.lock().remove(&self.addr);
        for conn in self.conns.lock().drain(..) {
            if let Some(shared) = conn.upgrade() {
                shared.close("endpoint closed");
            }
        }
    }
}

impl Drop for MemoryTransport {
    fn drop(&mut self) {
        self.close();
    }
}

/// State both ends of one connection share.
struct Shared {
    closed: watch::Sender<Option<String>>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            closed: watch::channel(None).0,
        }
    }
}

impl Shared {
    fn close(&self, reason: &str) {
        self.closed.send_if_modified(|state| {
            if state.is_none() {
                *state = Some(reason.to_owned());
                true
            } else {
                false
            }
        });
    }

    /// Resolves with the close reason once the connection is closed.
    async fn closed(&self) -> TransportError {
        let mut rx = self.closed.subscribe();
        let reason = rx
            .wait_for(Option::is_some)
            .await
            .map(|r| Closed::ByApp(r.clone().unwrap_or_default()))
            .unwrap_or(Closed::Dropped);
        TransportError::Closed(reason)
    }
}

struct Exchange {
    request: Frame,
    reply: oneshot::Sender<Frame>,
}

/// A connection between two [`MemoryTransport`]s.
#[derive(Clone)]
pub struct MemoryConnection {
    remote_id: NodeId,
    remote_addr: PeerAddr,
    outgoing: mpsc::Sender<Exchange>,
    incoming: Arc<tokio::sync::Mutex<mpsc::Receiver<Exchange>>>,
    shared: Arc<Shared>,
}

/// An exchange started by the peer of a [`MemoryConnection`].
pub struct MemoryIncoming {
    request: Option<Frame>,
    reply: oneshot::Sender<Frame>,
}

#[async_trait]
impl Connection for MemoryConnection {
    type Incoming = MemoryIncoming;

    fn remote_id(&self) -> NodeId {
        self.remote_id
    }

    fn remote_addr(&self) -> PeerAddr {
        self.remote_addr.clone()
    }

    async fn request(
        &self,
        request: Frame,
        response_bytes_max: u32,
    ) -> Result<Frame, TransportError> {
        let (reply, response) = oneshot::channel();
        let exchange = async {
            self.outgoing
                .send(Exchange { request, reply })
                .await
                .map_err(|_| TransportError::Closed(Closed::PeerGone))?;
            response
                .await
                .map_err(|_| TransportError::Aborted(Aborted::Dropped))
        };
        let frame = tokio::select! {
            r = exchange => r?,
            e = self.shared.closed() => return Err(e),
        };
        Ok(frame.within(response_bytes_max)?)
    }

    async fn accept_exchange(&self) -> Result<MemoryIncoming, TransportError> {
        let next = async {
            self.incoming
                .lock()
                .await
                .recv()
                .await
                .ok_or_else(|| TransportError::Closed(Closed::PeerGone))
        };
        let exchange = tokio::select! {
            r = next => r?,
            e = self.shared.closed() => return Err(e),
        };
        Ok(MemoryIncoming {
            request: Some(exchange.request),
            reply: exchange.reply,
        })
    }

    fn close(&self, reason: &str) {
        self.shared.close(reason);
    }
}

#[async_trait]
impl IncomingExchange for MemoryIncoming {
    async fn read_request(&mut self, request_bytes_max: u32) -> Result<Frame, TransportError> {
        let frame = self
            .request
            .take()
            .ok_or_else(|| TransportError::Aborted(Aborted::AlreadyRead))?;
        Ok(frame.within(request_bytes_max)?)
    }

    async fn respond(self, response: Frame) -> Result<(), TransportError> {
        self.reply
            .send(response)
            .map_err(|_| TransportError::Aborted(Aborted::RequesterGone))
    }
}
