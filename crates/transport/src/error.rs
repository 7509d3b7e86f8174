//! What can go wrong moving frames between peers, with the underlying quinn, rustls or I/O
//! error kept as the [`source`](std::error::Error::source).

use std::net::SocketAddr;

use crat_core::id::NodeId;

use crate::frame::FrameError;

/// What can go wrong moving frames between peers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// A frame was oversized, truncated, trailed by bytes or not a valid message.
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    /// The address cannot be used by this transport.
    #[error("invalid address {addr}: {reason}")]
    Addr {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// Nobody answered at the address, or the handshake failed.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The peer proved a different identity than the one pinned.
    #[error("peer is {actual}, expected {expected}")]
    Identity {
        /// The identity pinned when dialling.
        expected: NodeId,
        /// The identity the peer proved.
        actual: NodeId,
    },
    /// The peer at the address refused to prove identity `expected`: its certificate holds
    /// another key (iroh does not say which, so this is not [`TransportError::Identity`]).
    #[error("peer did not prove identity {expected}: {reason}")]
    IdentityUnproven {
        /// The identity pinned when dialling.
        expected: NodeId,
        /// The handshake's failure.
        reason: String,
    },
    /// The connection or endpoint is closed (by either side, or it timed out idle).
    #[error("connection closed: {0}")]
    Closed(#[source] Closed),
    /// The peer abandoned this exchange (reset the stream, or dropped it unanswered).
    #[error("exchange aborted by peer: {0}")]
    Aborted(#[source] Aborted),
    /// The exchange did not complete within its time limit.
    #[error("timed out after {0} ms")]
    Timeout(u64),
    /// Too many exchanges are in flight on this connection.
    #[error("too many exchanges in flight")]
    Busy,
    /// A local I/O or TLS setup failure.
    #[error("transport setup: {0}")]
    Setup(#[source] SetupError),
}

/// Why a connection or endpoint is closed ([`TransportError::Closed`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Closed {
    /// This endpoint was closed: it accepts no more connections.
    #[error("endpoint closed")]
    Endpoint,
    /// The peer's end of the connection is gone.
    #[error("peer gone")]
    PeerGone,
    /// A side closed the connection with [`Connection::close`](crate::Connection::close),
    /// giving this reason.
    #[error("{0}")]
    ByApp(String),
    /// Every handle on the connection's shared state was dropped without a close.
    #[error("connection dropped")]
    Dropped,
    /// The connection was idle for longer than its idle timeout.
    #[error("idle timeout")]
    IdleTimeout,
    /// The QUIC connection was lost (closed by either side, reset, or a protocol error).
    #[error("{0}")]
    Quic(#[source] quinn::ConnectionError),
    /// The iroh connection was lost (closed by either side, reset, or a protocol error).
    #[cfg(feature = "iroh")]
    #[error("{0}")]
    Iroh(#[source] ::iroh::endpoint::ConnectionError),
    /// There is no connection to use (a caller that connects on demand is not connected).
    #[error("not connected")]
    NotConnected,
    /// [`serve`](crate::serve) stopped taking exchanges.
    #[error("serve stopped")]
    ServeStopped,
}

/// Why the peer abandoned an exchange ([`TransportError::Aborted`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Aborted {
    /// Writing to the QUIC stream failed (the peer stopped reading it).
    #[error("{0}")]
    Write(#[source] quinn::WriteError),
    /// Reading from the QUIC stream failed (the peer reset it).
    #[error("{0}")]
    Read(#[source] quinn::ReadError),
    /// The QUIC stream was already finished or reset when it was to be finished.
    #[error("{0}")]
    Finish(#[source] quinn::ClosedStream),
    /// Writing to the iroh stream failed (the peer stopped reading it).
    #[cfg(feature = "iroh")]
    #[error("{0}")]
    IrohWrite(#[source] ::iroh::endpoint::WriteError),
    /// Reading from the iroh stream failed (the peer reset it).
    #[cfg(feature = "iroh")]
    #[error("{0}")]
    IrohRead(#[source] ::iroh::endpoint::ReadError),
    /// The iroh stream was already finished or reset when it was to be finished.
    #[cfg(feature = "iroh")]
    #[error("{0}")]
    IrohFinish(#[source] ::iroh::endpoint::ClosedStream),
    /// The peer dropped the exchange without answering it.
    #[error("peer dropped the exchange")]
    Dropped,
    /// The request of this exchange was already read.
    #[error("request already read")]
    AlreadyRead,
    /// The requester stopped waiting for the answer.
    #[error("requester gone")]
    RequesterGone,
}

/// Why an endpoint could not be set up ([`TransportError::Setup`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The identity key could not be encoded as PKCS#8 for its certificate.
    #[error("certificate: {0}")]
    KeyEncoding(#[source] ed25519_dalek::pkcs8::Error),
    /// The self-signed certificate around the identity key could not be made.
    #[error("certificate: {0}")]
    Certificate(#[source] rcgen::Error),
    /// rustls refused a TLS configuration.
    #[error("{what}: {source}")]
    Tls {
        /// Which configuration (`server TLS`, `client certificate`, ...).
        what: &'static str,
        /// rustls's reason.
        #[source]
        source: rustls::Error,
    },
    /// quinn cannot run QUIC over the TLS configuration (no TLS 1.3 initial cipher suite).
    #[error("{what}: {source}")]
    Quic {
        /// Which side (`server QUIC`, `client QUIC`).
        what: &'static str,
        /// quinn's reason.
        #[source]
        source: quinn::crypto::rustls::NoInitialCipherSuite,
    },
    /// The idle timeout is out of QUIC's range.
    #[error("idle timeout: {0}")]
    IdleTimeout(#[source] quinn::VarIntBoundsExceeded),
    /// The largest UDP payload is out of range.
    #[error("max UDP payload: {0}")]
    UdpPayload(#[source] quinn::ConfigError),
    /// The UDP socket or the endpoint on it could not be made.
    #[error("{what} {addr}: {source}")]
    Socket {
        /// Which step (`bind`, `socket`, `endpoint`).
        what: &'static str,
        /// The address bound.
        addr: SocketAddr,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// iroh refused a setting, or could not bind its endpoint or start its relay.
    #[error("{what}: {reason}")]
    Iroh {
        /// Which step (`bind`, `idle timeout`, `relay`, ...).
        what: &'static str,
        /// iroh's reason.
        reason: String,
    },
    /// The bound socket's local address could not be read.
    #[error("local address: {0}")]
    LocalAddr(#[source] std::io::Error),
}

impl From<Closed> for TransportError {
    fn from(reason: Closed) -> Self {
        Self::Closed(reason)
    }
}

impl From<Aborted> for TransportError {
    fn from(reason: Aborted) -> Self {
        Self::Aborted(reason)
    }
}

impl From<SetupError> for TransportError {
    fn from(e: SetupError) -> Self {
        Self::Setup(e)
    }
}
