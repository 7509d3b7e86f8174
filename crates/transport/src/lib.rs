//! `crat-transport`: how CryptoRAT peers talk.
//!
//! The sdk, the node and the dispatcher are written against two traits:
//! - [`Transport`]: an endpoint with an ed25519 identity that dials peers (pinning the identity
//!   it expects) and accepts incoming connections;
//! - [`Connection`]: a connection to one authenticated peer carrying independent
//!   request/response exchanges in both directions (on QUIC, one bidirectional stream each).
//!
//! Two implementations (three with the `iroh` feature: `iroh`, QUIC through NATs with relays;
//! [`any`] chooses one at run time, as the `crat` binary does):
//! [`memory`] (in-process, for tests, the single-process demo and
//! simulator-style runs) and [`quic`] (quinn + rustls; the peer's identity is the ed25519 key in
//! its self-signed certificate, checked against the expected [`NodeId`]; ALPN `crat/1`).
//!
//! [`SteadyClock`] is the [`Clock`](crat_core::clock::Clock) the peers run on: the system's wall
//! clock at the start plus its monotonic clock since, so wall-clock steps move neither uptime nor
//! rounds ([`SystemClock`] is the raw wall clock). Clocks live here, in the I/O crate the peers all
//! share; `crat-core` reads no clock.
//!
//! Bodies are [`Frame`]s: length-prefixed [`crat_core::wire`] messages whose size is capped per
//! conversation ([`FrameLimits`]) before anything is allocated. [`ConnectionExt::call`] and
//! [`serve`] are the typed layer most code uses.
//!
//! ```
//! use crat_core::id::NodeId;
//! use crat_core::wire::{ClientToNode, NodeToClient};
//! use crat_transport::memory::MemoryNetwork;
//! use crat_transport::{Connection, ConnectionExt, Conversation, FrameLimits, Transport, serve};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), crat_transport::TransportError> {
//! let net = MemoryNetwork::new();
//! let node_id = NodeId::from_bytes([1; 32]);
//! let node = net.bind("mem:node", node_id)?;
//! let client = net.bind("mem:client", NodeId::from_bytes([2; 32]))?;
//! let limits = FrameLimits::default();
//!
//! // The node answers every Ping with a Pong.
//! tokio::spawn(async move {
//!     while let Ok(conn) = node.accept().await {
//!         tokio::spawn(serve(conn, Conversation::ClientNode, limits, 64, |req: ClientToNode| async move {
//!             match req {
//!                 ClientToNode::Ping => NodeToClient::Pong,
//!                 ClientToNode::Infer(_) => unimplemented!("not in this example"),
//!             }
//!         }));
//!     }
//! });
//!
//! let conn = client.connect(&"mem:node".parse().unwrap(), &node_id).await?;
//! assert_eq!(conn.remote_id(), node_id);
//! let reply: NodeToClient = conn.call(&ClientToNode::Ping, Conversation::ClientNode, limits).await?;
//! assert_eq!(reply, NodeToClient::Pong);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use crat_core::id::NodeId;
use crat_core::id::PeerAddr;
use crat_core::wire::{ErrorCode, Message, Reply, WireError};

pub mod any;
mod clock;
mod error;
pub mod frame;
#[cfg(feature = "iroh")]
pub mod iroh;
pub mod memory;
pub mod quic;
mod stream;

pub use clock::{SteadyClock, SystemClock, SystemMonotonic};
pub use error::{Aborted, Closed, SetupError, TransportError};
pub use frame::{Conversation, Frame, FrameError, FrameLimits};

/// An endpoint with an identity: dials peers and accepts their connections.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// The connections this transport makes.
    type Connection: Connection;

    /// This endpoint's identity.
    fn local_id(&self) -> NodeId;

    /// Where peers reach this endpoint.
    fn local_addr(&self) -> PeerAddr;

    /// Connects to `addr` and checks that the peer proves identity `expected`.
    async fn connect(
        &self,
        addr: &PeerAddr,
        expected: &NodeId,
    ) -> Result<Self::Connection, TransportError>;

    /// The next incoming connection, already authenticated. Errors once the endpoint is closed.
    async fn accept(&self) -> Result<Self::Connection, TransportError>;

    /// Stops accepting and closes every connection.
    fn close(&self);

    /// The addresses to give out for a peer of this transport that claims `claimed` and whose
    /// packets were `observed` coming from this address (see [`Connection::observed_addr`]).
    /// By default the claim, as it is; a transport that punches holes adds the observed
    /// address (a NAT's public mapping) to the peer's candidates.
    fn advertised(
        &self,
        claimed: &[PeerAddr],
        observed: Option<std::net::SocketAddr>,
    ) -> Vec<PeerAddr> {
        let _ = observed;
        claimed.to_vec()
    }
}

/// Which network path a connection's packets take now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathKind {
    /// Straight to the peer's address (possibly after hole punching through NATs).
    Direct,
    /// Through a relay server, end-to-end encrypted.
    Relayed,
    /// No path is selected (the connection is closing, or not yet established).
    None,
}

impl PathKind {
    /// `direct`, `relayed` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Relayed => "relayed",
            Self::None => "none",
        }
    }
}

impl std::fmt::Display for PathKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A connection to one authenticated peer. Cheap to clone; clones share the connection.
#[async_trait]
pub trait Connection: Clone + Send + Sync + 'static {
    /// An exchange the peer started, waiting to be read and answered.
    type Incoming: IncomingExchange;

    /// The peer's proven identity.
    fn remote_id(&self) -> NodeId;

    /// The peer's address.
    fn remote_addr(&self) -> PeerAddr;

    /// The path the connection's packets take now. Transports without relays are always
    /// [`PathKind::Direct`].
    fn path_kind(&self) -> PathKind {
        PathKind::Direct
    }

    /// The peer's address as seen on the network (the source of its packets: after NAT,
    /// its public address), when a direct path shows it. `None` while only relayed.
    fn observed_addr(&self) -> Option<std::net::SocketAddr> {
        self.remote_addr().as_str().parse().ok()
    }

    /// One exchange: sends `request`, returns the peer's response frame (body ≤
    /// `response_bytes_max`).
    async fn request(
        &self,
        request: Frame,
        response_bytes_max: u32,
    ) -> Result<Frame, TransportError>;

    /// Waits for the peer to start an exchange.
    async fn accept_exchange(&self) -> Result<Self::Incoming, TransportError>;

    /// Lets the peer have up to `n` exchanges it started open at once on this connection:
    /// raises the limit the connection was accepted with (`QuicConfig::streams_accepted_initial`
    /// and its iroh twin). A lower `n` only stops granting new exchanges until the open ones
    /// end. Transports without such a limit ignore it (the default).
    fn allow_exchanges(&self, n: u32) {
        let _ = n;
    }

    /// Closes the connection; pending and future exchanges fail with [`TransportError::Closed`].
    fn close(&self, reason: &str);
}

/// An exchange started by the peer: read its request, then answer it once.
#[async_trait]
pub trait IncomingExchange: Send + 'static {
    /// Reads the request frame (body ≤ `request_bytes_max`).
    async fn read_request(&mut self, request_bytes_max: u32) -> Result<Frame, TransportError>;

    /// Sends the response and ends the exchange.
    async fn respond(self, response: Frame) -> Result<(), TransportError>;
}

/// Typed request/response over any [`Connection`].
#[async_trait]
pub trait ConnectionExt: Connection {
    /// Encodes `request`, sends it and decodes the response, with the frame caps of
    /// `conversation`.
    async fn call<Req, Resp>(
        &self,
        request: &Req,
        conversation: Conversation,
        limits: FrameLimits,
    ) -> Result<Resp, TransportError>
    where
        Req: Message + Sync,
        Resp: Message,
    {
        let max = limits.frame_bytes_max(conversation);
        let frame = Frame::encode(request, max)?;
        let response = self.request(frame, max).await?;
        Ok(response.decode()?)
    }
}

impl<C: Connection> ConnectionExt for C {}

/// Answers every exchange the peer starts on `conn` with `handler`, running at most
/// `concurrency_max` handlers at once, until the connection closes.
///
/// A request that is oversized or does not decode is answered with a typed error
/// ([`ErrorCode::TooLarge`] or [`ErrorCode::BadRequest`]) and the connection keeps serving; the
/// handler only ever sees valid messages.
pub async fn serve<C, Req, Resp, H, F>(
    conn: C,
    conversation: Conversation,
    limits: FrameLimits,
    concurrency_max: usize,
    handler: H,
) -> TransportError
where
    C: Connection,
    Req: Message + Send + 'static,
    Resp: Reply + Send + 'static,
    H: Fn(Req) -> F + Send + Sync + 'static,
    F: Future<Output = Resp> + Send + 'static,
{
    let max = limits.frame_bytes_max(conversation);
    let handler = Arc::new(handler);
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency_max.max(1)));
    loop {
        let mut incoming = match conn.accept_exchange().await {
            Ok(i) => i,
            Err(e) => return e,
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return Closed::ServeStopped.into();
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let request = incoming
                .read_request(max)
                .await
                .and_then(|frame| Ok(frame.decode::<Req>()?));
            let response = match request {
                Ok(request) => handler(request).await,
                Err(TransportError::Frame(e)) => {
                    tracing::debug!(error = %e, "refusing bad request frame");
                    let code = match e {
                        FrameError::TooLarge { .. } => ErrorCode::TooLarge,
                        _ => ErrorCode::BadRequest,
                    };
                    Resp::error(WireError::new(code, e.to_string()))
                }
                Err(e) => {
                    tracing::debug!(error = %e, "request not received");
                    return;
                }
            };
            match Frame::encode(&response, max) {
                Ok(frame) => {
                    if let Err(e) = incoming.respond(frame).await {
                        tracing::debug!(error = %e, "response not delivered");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "response cannot be framed"),
            }
        });
    }
}
