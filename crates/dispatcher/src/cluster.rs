//! Several dispatchers on one PostgreSQL ledger: one **active**, the others **standing by**.
//!
//! Dispatchers that share a ledger ([`crate::ledger::PgLedger`]), a model store (one directory
//! every one of them mounts, `DispatcherConfig::models_dir`), a payouts directory
//! (`DispatcherConfig::payouts_dir`) and one key (the cluster's identity: nodes and clients pin
//! it, and it signs every ticket) form one dispatcher to nodes and clients, which may connect
//! to any of them:
//!
//! - **The active dispatcher** is the one holding the ledger's round-closing lock
//!   ([`Ledger::lead_rounds`]). It runs everything: registrations, placement, leases, usage,
//!   rounds. It records where it is reached ([`Ledger::announce_active`]).
//! - **A standby** ([`Standby`]) accepts nodes' and clients' connections and forwards every
//!   exchange of each, both ways, to the active dispatcher over one link: a connection from an
//!   endpoint of the standby's own (any transport, iroh included, which will not dial its own
//!   identity), whose first request is the cluster key's signature of that endpoint's
//!   identity, so the active one knows it for a member. The active
//!   dispatcher serves a forwarded connection exactly as a direct one ([`Link`]): the node's
//!   address as the standby saw its packets, its proven identity, and pushes sent back through
//!   the standby. So a node registered through one dispatcher is placed by the other, and a
//!   client that leases through one is charged through the other.
//! - **Failover.** A standby asks for the lock every second. When the active dispatcher dies,
//!   its lock goes with its database session (at once for a process that exits; within the
//!   session's keepalive window for a machine that vanishes), a standby takes it, closes the
//!   connections it forwarded (their peers connect again) and becomes the active dispatcher
//!   through the restart path: state from the ledger, tickets of its predecessor charged
//!   within the restart grace (same key), nodes registering and proving their hardware again.
//!   A running active dispatcher that finds another holding the lock stops
//!   ([`crate::DispatcherError::Superseded`]).
//!
//! Nothing of this is needed with a ledger of one's own (SQLite): that dispatcher is always
//! active.
//!
//! # Example
//! One member of a cluster: it stands by while another is active, then runs as the active
//! dispatcher (every member runs the same code, with the same key and shared directories).
//!
//! ```no_run
//! use std::sync::Arc;
//! use crat_dispatcher::cluster::Standby;
//! use crat_dispatcher::ledger::Ledger;
//! use crat_dispatcher::{Dispatcher, DispatcherConfig};
//! use crat_transport::quic::{QuicConfig, QuicTransport};
//!
//! // `ledger`: a `PgLedger` (feature `postgres`) on the database every member shares.
//! # async fn run(key: ed25519_dalek::SigningKey, ledger: Arc<dyn Ledger>) -> anyhow::Result<()> {
//! let mut config = DispatcherConfig::new("/var/lib/crat");
//! config.models_dir = "/srv/crat-shared/models".into();
//! config.payouts_dir = "/srv/crat-shared/payouts".into();
//! config.cluster_addr = Some(crat_core::id::PeerAddr::new("10.0.0.5:7400")?);
//! let mut transport = QuicTransport::bind("0.0.0.0:7400".parse()?, &key, QuicConfig::default())?;
//! if !ledger.lead_rounds()? {
//!     // The link to the active dispatcher goes out from an identity of its own.
//!     let link_key = ed25519_dalek::SigningKey::from_bytes(&rand::random());
//!     let link = QuicTransport::bind("0.0.0.0:0".parse()?, &link_key, QuicConfig::default())?;
//!     let (limits, concurrency) = (config.frame_limits, config.concurrency_max);
//!     let standby = Standby::new(transport, link, key.clone(), ledger.clone(), limits, concurrency)?;
//!     transport = standby.run().await?; // until this one takes over
//! }
//! let dispatcher = Dispatcher::open_with_ledger(config, key, transport, None, ledger)?;
//! dispatcher.run().await?; // `DispatcherError::Superseded` if another took the lock since
//! # Ok(()) }
//! ```
//!
//! [`Ledger::lead_rounds`]: crate::ledger::Ledger::lead_rounds
//! [`Ledger::announce_active`]: crate::ledger::Ledger::announce_active

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use crat_core::id::{NodeId, PeerAddr};
use crat_core::sign::{Signable, Signed};
use crat_core::wire::{ErrorCode, Message, Reply, WireError};
use crat_transport::{
    Closed, Connection, Conversation, Frame, FrameError, FrameLimits, IncomingExchange, PathKind,
    Transport, TransportError, serve,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::DispatcherError;
use crate::ledger::Ledger;

/// How often a standby asks whether it may become the active dispatcher, and retries the link.
pub const STANDBY_POLL: Duration = Duration::from_secs(1);
/// Most connections one standby forwards at once (more are refused, and connect again).
pub const FORWARDED_CONNECTIONS_MAX: usize = 200_000;
/// Most exchanges in flight on a link, each way (below the transport's streams per
/// connection, so that forwarding waits rather than fails).
pub const LINK_EXCHANGES_MAX: usize = 192;
/// Most exchanges one forwarded connection has on the link at once (a sixth of the link:
/// a peer sending slow requests cannot take it all).
pub const PEER_LINK_EXCHANGES_MAX: usize = LINK_EXCHANGES_MAX / 6;
/// Exchanges of one forwarded connection waiting for the active dispatcher to take them.
const FORWARDED_QUEUE: usize = 64;
/// What a link's envelope adds to a forwarded frame, at most.
const ENVELOPE_BYTES: u32 = 1_024;

/// The first request on a link: the cluster key's claim of the link's identity.
#[derive(Debug, Serialize, Deserialize)]
struct LinkHello {
    /// [`LINK_MAGIC`]: no node or client request starts so.
    magic: [u8; 16],
    claim: Signed<LinkClaim>,
}

/// "The endpoint `link` is a member of the cluster", signed with the cluster's key.
#[derive(Debug, Serialize, Deserialize)]
struct LinkClaim {
    link: NodeId,
}

impl Signable for LinkClaim {
    const DOMAIN: &'static [u8] = b"crat/v1/cluster-link\0";
}

const LINK_MAGIC: [u8; 16] = *b"crat-cluster-lnk";

impl Message for LinkHello {}

/// Whether `first`, the first request of a connection from `remote`, opens a standby's link to
/// the dispatcher `cluster` (the cluster key's claim of `remote`).
pub(crate) fn is_link(first: &Frame, cluster: &NodeId, remote: &NodeId) -> bool {
    first.decode::<LinkHello>().is_ok_and(|h| {
        h.magic == LINK_MAGIC
            && h.claim
                .verify(Some(cluster))
                .is_ok_and(|c| c.link == *remote)
    })
}

/// The answer to a link's first request.
pub(crate) fn link_accepted() -> impl Message {
    LinkAnswer::Done
}

/// Standby → active, on the link.
#[derive(Debug, Serialize, Deserialize)]
enum FromStandby {
    /// A peer connected to the standby.
    Open {
        vconn: u64,
        remote_id: NodeId,
        remote_addr: PeerAddr,
        observed: Option<SocketAddr>,
        relayed: bool,
    },
    /// An exchange the peer started (the frame as it came): answered with the active
    /// dispatcher's response.
    Exchange {
        vconn: u64,
        #[serde(with = "serde_bytes")]
        frame: Vec<u8>,
    },
    /// The peer's connection ended.
    Closed { vconn: u64 },
}

/// Active → standby, on the link.
#[derive(Debug, Serialize, Deserialize)]
enum FromActive {
    /// An exchange for the peer (a push): answered with the peer's response.
    Exchange {
        vconn: u64,
        #[serde(with = "serde_bytes")]
        frame: Vec<u8>,
    },
    /// Close the peer's connection.
    Close { vconn: u64, reason: String },
}

/// The answer to either.
#[derive(Debug, Serialize, Deserialize)]
enum LinkAnswer {
    Frame(#[serde(with = "serde_bytes")] Vec<u8>),
    Done,
    Refused(WireError),
}

impl Message for FromStandby {}
impl Message for FromActive {}
impl Message for LinkAnswer {}
impl Reply for LinkAnswer {
    fn error(error: WireError) -> Self {
        Self::Refused(error)
    }
}

/// The cap on a link's frames: a dispatcher conversation's frame and the envelope.
fn link_max(limits: FrameLimits) -> u32 {
    limits
        .frame_bytes_max(Conversation::ClientDispatcher)
        .saturating_add(ENVELOPE_BYTES)
}

/// One exchange on a link: the answer's frame, or why there is none.
async fn link_call<C: Connection, M: Message>(
    link: &C,
    msg: &M,
    max: u32,
) -> Result<LinkAnswer, TransportError> {
    let frame = Frame::encode(msg, max)?;
    Ok(link.request(frame, max).await?.decode::<LinkAnswer>()?)
}

/// A frame out of a link's answer, checked against `max`.
fn answered_frame(answer: LinkAnswer, max: u32) -> Result<Frame, TransportError> {
    match answer {
        LinkAnswer::Frame(bytes) => Ok(Frame::parse(bytes, max)?),
        LinkAnswer::Done => Err(TransportError::Frame(FrameError::Truncated {
            expected: 4,
            got: 0,
        })),
        LinkAnswer::Refused(e) => Err(TransportError::Closed(Closed::ByApp(e.message))),
    }
}

// ------------------------------------------------------------------------------------------
// The active side: a connection as the dispatcher serves it

/// A connection the active dispatcher serves: one of its own, or one a standby forwards.
#[derive(Clone)]
pub enum Link<C> {
    /// Accepted by this dispatcher.
    Direct(C),
    /// Accepted by a standby, forwarded over its link.
    Forwarded(Forwarded<C>),
}

/// A peer's connection to a standby, as the active dispatcher sees it through the link.
pub struct Forwarded<C> {
    inner: Arc<ForwardedInner<C>>,
}

impl<C> Clone for Forwarded<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct ForwardedInner<C> {
    vconn: u64,
    link: C,
    link_max: u32,
    remote_id: NodeId,
    remote_addr: PeerAddr,
    observed: Option<SocketAddr>,
    relayed: bool,
    incoming: tokio::sync::Mutex<mpsc::Receiver<ForwardedExchange>>,
}

/// An exchange a forwarded peer started.
pub struct ForwardedExchange {
    frame: Option<Frame>,
    reply: oneshot::Sender<Frame>,
}

#[async_trait]
impl IncomingExchange for ForwardedExchange {
    async fn read_request(&mut self, request_bytes_max: u32) -> Result<Frame, TransportError> {
        let frame = self
            .frame
            .take()
            .ok_or(TransportError::Closed(Closed::ServeStopped))?;
        Ok(frame.within(request_bytes_max)?)
    }

    async fn respond(self, response: Frame) -> Result<(), TransportError> {
        self.reply
            .send(response)
            .map_err(|_| TransportError::Closed(Closed::PeerGone))
    }
}

#[async_trait]
impl<C: Connection> Connection for Forwarded<C> {
    type Incoming = ForwardedExchange;

    fn remote_id(&self) -> NodeId {
        self.inner.remote_id
    }

    fn remote_addr(&self) -> PeerAddr {
        self.inner.remote_addr.clone()
    }

    fn path_kind(&self) -> PathKind {
        if self.inner.relayed {
            PathKind::Relayed
        } else {
            PathKind::Direct
        }
    }

    fn observed_addr(&self) -> Option<SocketAddr> {
        self.inner.observed
    }

    async fn request(
        &self,
        request: Frame,
        response_bytes_max: u32,
    ) -> Result<Frame, TransportError> {
        let msg = FromActive::Exchange {
            vconn: self.inner.vconn,
            frame: request.into_vec(),
        };
        let answer = link_call(&self.inner.link, &msg, self.inner.link_max).await?;
        answered_frame(answer, response_bytes_max)
    }

    async fn accept_exchange(&self) -> Result<Self::Incoming, TransportError> {
        self.inner
            .incoming
            .lock()
            .await
            .recv()
            .await
            .ok_or(TransportError::Closed(Closed::PeerGone))
    }

    fn close(&self, reason: &str) {
        let msg = FromActive::Close {
            vconn: self.inner.vconn,
            reason: reason.to_owned(),
        };
        let (link, max) = (self.inner.link.clone(), self.inner.link_max);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = link_call(&link, &msg, max).await {
                    tracing::debug!(error = %e, "a forwarded connection's close not delivered");
                }
            });
        }
    }
}

/// An exchange of a [`Link`].
pub enum LinkExchange<I> {
    /// Of a direct connection.
    Direct(I),
    /// Of a forwarded one.
    Forwarded(ForwardedExchange),
}

#[async_trait]
impl<I: IncomingExchange> IncomingExchange for LinkExchange<I> {
    async fn read_request(&mut self, request_bytes_max: u32) -> Result<Frame, TransportError> {
        match self {
            Self::Direct(i) => i.read_request(request_bytes_max).await,
            Self::Forwarded(i) => i.read_request(request_bytes_max).await,
        }
    }

    async fn respond(self, response: Frame) -> Result<(), TransportError> {
        match self {
            Self::Direct(i) => i.respond(response).await,
            Self::Forwarded(i) => i.respond(response).await,
        }
    }
}

#[async_trait]
impl<C: Connection> Connection for Link<C> {
    type Incoming = LinkExchange<C::Incoming>;

    fn remote_id(&self) -> NodeId {
        match self {
            Self::Direct(c) => c.remote_id(),
            Self::Forwarded(c) => c.remote_id(),
        }
    }

    fn remote_addr(&self) -> PeerAddr {
        match self {
            Self::Direct(c) => c.remote_addr(),
            Self::Forwarded(c) => c.remote_addr(),
        }
    }

    fn path_kind(&self) -> PathKind {
        match self {
            Self::Direct(c) => c.path_kind(),
            Self::Forwarded(c) => c.path_kind(),
        }
    }

    fn observed_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Direct(c) => c.observed_addr(),
            Self::Forwarded(c) => c.observed_addr(),
        }
    }

    async fn request(
        &self,
        request: Frame,
        response_bytes_max: u32,
    ) -> Result<Frame, TransportError> {
        match self {
            Self::Direct(c) => c.request(request, response_bytes_max).await,
            Self::Forwarded(c) => c.request(request, response_bytes_max).await,
        }
    }

    async fn accept_exchange(&self) -> Result<Self::Incoming, TransportError> {
        match self {
            Self::Direct(c) => c.accept_exchange().await.map(LinkExchange::Direct),
            Self::Forwarded(c) => c.accept_exchange().await.map(LinkExchange::Forwarded),
        }
    }

    /// A forwarded connection's exchanges are limited by the standby, which forwards at
    /// most [`PEER_LINK_EXCHANGES_MAX`] of one peer's at once.
    fn allow_exchanges(&self, n: u32) {
        if let Self::Direct(c) = self {
            c.allow_exchanges(n);
        }
    }

    fn close(&self, reason: &str) {
        match self {
            Self::Direct(c) => c.close(reason),
            Self::Forwarded(c) => c.close(reason),
        }
    }
}

/// Serves a standby's link on the active dispatcher: each connection the standby opens becomes
/// a [`Forwarded`] connection handed to `serve_conn` (the dispatcher's own connection
/// handler), its exchanges delivered to it, until the link ends; then every one of them ends.
pub(crate) async fn serve_link<C, F, Fut>(link: C, limits: FrameLimits, serve_conn: F)
where
    C: Connection,
    F: Fn(Link<C>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let max = link_max(limits);
    let conns: Arc<Mutex<HashMap<u64, mpsc::Sender<ForwardedExchange>>>> = Arc::default();
    let handler_conns = conns.clone();
    let handler_link = link.clone();
    let serve_conn = Arc::new(serve_conn);
    let ended = serve(
        link.clone(),
        Conversation::ClientDispatcher,
        FrameLimits {
            control_bytes_max: max,
            ..limits
        },
        LINK_EXCHANGES_MAX + 64,
        move |msg: FromStandby| {
            let conns = handler_conns.clone();
            let link = handler_link.clone();
            let serve_conn = serve_conn.clone();
            async move {
                match msg {
                    FromStandby::Open {
                        vconn,
                        remote_id,
                        remote_addr,
                        observed,
                        relayed,
                    } => {
                        let (tx, rx) = mpsc::channel(FORWARDED_QUEUE);
                        {
                            let mut conns = conns.lock();
                            if conns.len() >= FORWARDED_CONNECTIONS_MAX {
                                return LinkAnswer::Refused(WireError::new(
                                    ErrorCode::Busy,
                                    "too many forwarded connections",
                                ));
                            }
                            conns.insert(vconn, tx);
                        }
                        let forwarded = Forwarded {
                            inner: Arc::new(ForwardedInner {
                                vconn,
                                link,
                                link_max: max,
                                remote_id,
                                remote_addr,
                                observed,
                                relayed,
                                incoming: tokio::sync::Mutex::new(rx),
                            }),
                        };
                        tokio::spawn(serve_conn(Link::Forwarded(forwarded)));
                        LinkAnswer::Done
                    }
                    FromStandby::Exchange { vconn, frame } => {
                        let frame = match Frame::parse(frame, max) {
                            Ok(f) => f,
                            Err(e) => {
                                return LinkAnswer::Refused(WireError::new(
                                    ErrorCode::BadRequest,
                                    e.to_string(),
                                ));
                            }
                        };
                        let tx = conns.lock().get(&vconn).cloned();
                        let Some(tx) = tx else {
                            return LinkAnswer::Refused(WireError::new(
                                ErrorCode::NotFound,
                                "no such forwarded connection",
                            ));
                        };
                        let (reply, answer) = oneshot::channel();
                        let exchange = ForwardedExchange {
                            frame: Some(frame),
                            reply,
                        };
                        if tx.send(exchange).await.is_err() {
                            return LinkAnswer::Refused(WireError::new(
                                ErrorCode::NotFound,
                                "the forwarded connection ended",
                            ));
                        }
                        match answer.await {
                            Ok(frame) => LinkAnswer::Frame(frame.into_vec()),
                            Err(_) => LinkAnswer::Refused(WireError::new(
                                ErrorCode::Internal,
                                "the exchange was not answered",
                            )),
                        }
                    }
                    FromStandby::Closed { vconn } => {
                        // Dropping the sender ends the connection's `accept_exchange`.
                        conns.lock().remove(&vconn);
                        LinkAnswer::Done
                    }
                }
            }
        },
    )
    .await;
    let n = {
        let mut conns = conns.lock();
        let n = conns.len();
        conns.clear();
        n
    };
    tracing::info!(error = %ended, connections = n, "a standby's link ended");
}

// ------------------------------------------------------------------------------------------
// The standby

/// A dispatcher standing by: forwards the connections it accepts to the active dispatcher
/// until it becomes the active one itself (see the [module documentation](self)).
pub struct Standby<T: Transport> {
    transport: T,
    /// The endpoint the link is dialled from (an identity of its own).
    link: T,
    /// The cluster's key: it signs the link's claim.
    key: ed25519_dalek::SigningKey,
    ledger: Arc<dyn Ledger>,
    limits: FrameLimits,
    concurrency_max: usize,
}

/// The connections a standby forwards, by their number on the link.
type Peers<C> = Arc<Mutex<HashMap<u64, C>>>;

impl<T: Transport> Standby<T> {
    /// A standby on `transport` (bound with the cluster's `key`) for the active dispatcher of
    /// `ledger`, dialling it from `link` (an endpoint of the same transport kind with an
    /// identity of its own); `limits` and `concurrency_max` as the dispatcher's
    /// (`DispatcherConfig::frame_limits`, `concurrency_max`). An error: `transport` is not
    /// `key`'s, or `link` is.
    pub fn new(
        transport: T,
        link: T,
        key: ed25519_dalek::SigningKey,
        ledger: Arc<dyn Ledger>,
        limits: FrameLimits,
        concurrency_max: usize,
    ) -> Result<Self, DispatcherError> {
        let id = NodeId::from_key(&key.verifying_key());
        if transport.local_id() != id || link.local_id() == id {
            return Err(DispatcherError::Config(
                "a standby listens with the cluster's key and links from another identity".into(),
            ));
        }
        Ok(Self {
            transport,
            link,
            key,
            ledger,
            limits,
            concurrency_max,
        })
    }

    /// Forwards until this dispatcher leads the ledger ([`Ledger::lead_rounds`]), then closes
    /// what it forwarded and gives its transport back, for the active dispatcher to run on.
    /// An error: the transport was closed.
    ///
    /// [`Ledger::lead_rounds`]: crate::ledger::Ledger::lead_rounds
    pub async fn run(self) -> Result<T, DispatcherError> {
        let id = self.transport.local_id();
        let peers: Peers<T::Connection> = Arc::default();
        let link: Arc<Mutex<Option<T::Connection>>> = Arc::default();
        let next = AtomicU64::new(0);
        let link_max = link_max(self.limits);
        let exchanges = Arc::new(Semaphore::new(LINK_EXCHANGES_MAX));
        let mut poll = tokio::time::interval(STANDBY_POLL);
        loop {
            tokio::select! {
                _ = poll.tick() => {
                    let ledger = self.ledger.clone();
                    let leads = tokio::task::spawn_blocking(move || ledger.lead_rounds())
                        .await
                        .map_err(|e| DispatcherError::Storage(format!("ledger task failed: {e}")))?;
                    match leads {
                        Ok(true) => break,
                        Ok(false) => {}
                        Err(e) => tracing::warn!(error = %e, "cannot ask the ledger for its leader"),
                    }
                    let up = link.lock().clone();
                    if up.is_none() {
                        self.connect_link(id, &link, &peers, link_max).await;
                    }
                }
                accepted = self.transport.accept() => {
                    let conn = accepted?;
                    let up = link.lock().clone();
                    let Some(up) = up else {
                        conn.close("no active dispatcher reachable yet; connect again shortly");
                        continue;
                    };
                    if peers.lock().len() >= FORWARDED_CONNECTIONS_MAX {
                        conn.close("this dispatcher forwards too many connections");
                        continue;
                    }
                    let vconn = next.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(forward(
                        conn,
                        vconn,
                        up,
                        peers.clone(),
                        self.limits,
                        self.concurrency_max,
                        exchanges.clone(),
                    ));
                }
            }
        }
        let up = link.lock().take();
        if let Some(up) = up {
            up.close("this dispatcher becomes the active one");
        }
        self.link.close();
        let forwarded: Vec<_> = peers.lock().drain().map(|(_, c)| c).collect();
        tracing::info!(
            connections = forwarded.len(),
            "this dispatcher becomes the active one; closing the connections it forwarded"
        );
        for c in forwarded {
            c.close("this dispatcher becomes the active one; connect again");
        }
        Ok(self.transport)
    }

    /// Connects the link to the active dispatcher the ledger names, and serves the active
    /// dispatcher's exchanges on it until it ends (then every forwarded connection is closed).
    async fn connect_link(
        &self,
        id: NodeId,
        link: &Arc<Mutex<Option<T::Connection>>>,
        peers: &Peers<T::Connection>,
        link_max: u32,
    ) {
        let ledger = self.ledger.clone();
        let addr = match tokio::task::spawn_blocking(move || ledger.active_dispatcher()).await {
            Ok(Ok(Some(addr))) => addr,
            Ok(Ok(None)) => {
                tracing::info!("no active dispatcher has announced itself yet");
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the active dispatcher's address");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "ledger task failed");
                return;
            }
        };
        let conn = match self.link.connect(&addr, &id).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "cannot reach the active dispatcher");
                return;
            }
        };
        let hello = LinkHello {
            magic: LINK_MAGIC,
            claim: Signed::sign(
                LinkClaim {
                    link: self.link.local_id(),
                },
                &self.key,
            ),
        };
        match link_call(&conn, &hello, link_max).await {
            Ok(LinkAnswer::Done) => {}
            other => {
                tracing::warn!(%addr, answer = ?other, "the active dispatcher refused the link");
                conn.close("refused");
                return;
            }
        }
        tracing::info!(%addr, "forwarding to the active dispatcher");
        *link.lock() = Some(conn.clone());
        let (link, peers) = (link.clone(), peers.clone());
        let limits = FrameLimits {
            control_bytes_max: link_max,
            ..self.limits
        };
        let max = self.limits.frame_bytes_max(Conversation::NodeDispatcher);
        tokio::spawn(async move {
            let handler_peers = peers.clone();
            let ended = serve(
                conn,
                Conversation::ClientDispatcher,
                limits,
                LINK_EXCHANGES_MAX,
                move |msg: FromActive| {
                    let peers = handler_peers.clone();
                    async move {
                        match msg {
                            FromActive::Exchange { vconn, frame } => {
                                let peer = peers.lock().get(&vconn).cloned();
                                let Some(peer) = peer else {
                                    return LinkAnswer::Refused(WireError::new(
                                        ErrorCode::NotFound,
                                        "no such forwarded connection",
                                    ));
                                };
                                let frame = match Frame::parse(frame, max) {
                                    Ok(f) => f,
                                    Err(e) => {
                                        return LinkAnswer::Refused(WireError::new(
                                            ErrorCode::BadRequest,
                                            e.to_string(),
                                        ));
                                    }
                                };
                                match peer.request(frame, max).await {
                                    Ok(answer) => LinkAnswer::Frame(answer.into_vec()),
                                    Err(e) => LinkAnswer::Refused(WireError::new(
                                        ErrorCode::Busy,
                                        e.to_string(),
                                    )),
                                }
                            }
                            FromActive::Close { vconn, reason } => {
                                if let Some(peer) = peers.lock().remove(&vconn) {
                                    peer.close(&reason);
                                }
                                LinkAnswer::Done
                            }
                        }
                    }
                },
            )
            .await;
            *link.lock() = None;
            let forwarded: Vec<_> = peers.lock().drain().map(|(_, c)| c).collect();
            tracing::warn!(
                error = %ended,
                connections = forwarded.len(),
                "the link to the active dispatcher ended; closing the connections it carried"
            );
            for c in forwarded {
                c.close("the active dispatcher went away; connect again");
            }
        });
    }
}

/// Forwards one accepted connection over `link` until either ends.
async fn forward<C: Connection>(
    conn: C,
    vconn: u64,
    link: C,
    peers: Peers<C>,
    limits: FrameLimits,
    concurrency_max: usize,
    exchanges: Arc<Semaphore>,
) {
    let max = limits.frame_bytes_max(Conversation::ClientDispatcher);
    let lmax = link_max(limits);
    let open = FromStandby::Open {
        vconn,
        remote_id: conn.remote_id(),
        remote_addr: conn.remote_addr(),
        observed: conn.observed_addr(),
        relayed: conn.path_kind() == PathKind::Relayed,
    };
    match link_call(&link, &open, lmax).await {
        Ok(LinkAnswer::Done) => {}
        Ok(other) => {
            tracing::debug!(
                ?other,
                "the active dispatcher refused a forwarded connection"
            );
            conn.close("the active dispatcher refused the connection; connect again");
            return;
        }
        Err(e) => {
            tracing::debug!(error = %e, "cannot open a forwarded connection");
            conn.close("the active dispatcher is unreachable; connect again");
            return;
        }
    }
    peers.lock().insert(vconn, conn.clone());
    // One peer holds at most this share of the link's exchanges, whatever it sends.
    let permits = Arc::new(Semaphore::new(
        concurrency_max.clamp(1, PEER_LINK_EXCHANGES_MAX),
    ));
    loop {
        let Ok(mut incoming) = conn.accept_exchange().await else {
            break;
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (link, exchanges) = (link.clone(), exchanges.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let Ok(frame) = incoming.read_request(max).await else {
                return;
            };
            let Ok(_slot) = exchanges.acquire().await else {
                return;
            };
            let msg = FromStandby::Exchange {
                vconn,
                frame: frame.into_vec(),
            };
            let answer = link_call(&link, &msg, lmax)
                .await
                .and_then(|a| answered_frame(a, max));
            match answer {
                Ok(frame) => {
                    if let Err(e) = incoming.respond(frame).await {
                        tracing::debug!(error = %e, "a forwarded answer was not delivered");
                    }
                }
                // Dropped unanswered: the peer sees the exchange aborted and may retry.
                Err(e) => tracing::debug!(error = %e, "an exchange was not forwarded"),
            }
        });
    }
    peers.lock().remove(&vconn);
    if let Err(e) = link_call(&link, &FromStandby::Closed { vconn }, lmax).await {
        tracing::debug!(error = %e, "a forwarded connection's end not delivered");
    }
}
