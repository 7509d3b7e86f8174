//! One transport type for programs that choose the transport at run time (the `crat` binary):
//! [`AnyTransport`] is [`QuicTransport`] or, with the `iroh` feature, [`IrohTransport`]; its
//! connections and exchanges forward to the chosen one.
//!
//! Every peer of one network must use the same kind: a QUIC endpoint and an iroh endpoint do
//! not understand each other's handshakes (their ALPNs differ), so a dial across kinds fails
//! with [`TransportError::Connect`].
//!
//! ```
//! use crat_transport::Transport;
//! use crat_transport::any::{AnyTransport, TransportKind};
//! use crat_transport::quic::QuicConfig;
//! use ed25519_dalek::SigningKey;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), crat_transport::TransportError> {
//! let key = SigningKey::from_bytes(&[7; 32]);
//! let t = AnyTransport::quic("127.0.0.1:0".parse().unwrap(), &key, QuicConfig::default())?;
//! assert_eq!(t.kind(), TransportKind::Quic);
//! assert!(t.local_addr().as_str().starts_with("127.0.0.1:"));
//! # Ok(())
//! # }
//! ```
//!
//! [`IrohTransport`]: crate::iroh::IrohTransport

use std::net::SocketAddr;

use async_trait::async_trait;
use crat_core::id::{NodeId, PeerAddr};
use ed25519_dalek::SigningKey;

use crate::quic::{QuicConfig, QuicConnection, QuicIncoming, QuicTransport};
use crate::{Connection, Frame, IncomingExchange, PathKind, Transport, TransportError};

/// Which transport a network runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum TransportKind {
    /// QUIC (quinn) between peers that can reach each other's UDP address.
    Quic,
    /// QUIC through NATs (iroh): hole punching, a self-hosted relay as the fallback path.
    Iroh,
}

impl TransportKind {
    /// `quic` or `iroh`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quic => "quic",
            Self::Iroh => "iroh",
        }
    }
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transport kind name that is neither `quic` nor `iroh`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown transport {0:?}: expected quic or iroh")]
pub struct UnknownTransport(pub String);

impl std::str::FromStr for TransportKind {
    type Err = UnknownTransport;
    fn from_str(s: &str) -> Result<Self, UnknownTransport> {
        match s {
            "quic" => Ok(Self::Quic),
            "iroh" => Ok(Self::Iroh),
            other => Err(UnknownTransport(other.to_string())),
        }
    }
}

/// [`QuicTransport`] or [`IrohTransport`](crate::iroh::IrohTransport).
#[non_exhaustive]
pub enum AnyTransport {
    /// QUIC (quinn).
    Quic(QuicTransport),
    /// iroh.
    #[cfg(feature = "iroh")]
    Iroh(crate::iroh::IrohTransport),
}

impl AnyTransport {
    /// Binds a [`QuicTransport`].
    pub fn quic(
        addr: SocketAddr,
        key: &SigningKey,
        config: QuicConfig,
    ) -> Result<Self, TransportError> {
        Ok(Self::Quic(QuicTransport::bind(addr, key, config)?))
    }

    /// Binds an [`IrohTransport`](crate::iroh::IrohTransport).
    #[cfg(feature = "iroh")]
    pub async fn iroh(
        addr: SocketAddr,
        key: &SigningKey,
        config: crate::iroh::IrohConfig,
    ) -> Result<Self, TransportError> {
        Ok(Self::Iroh(
            crate::iroh::IrohTransport::bind(addr, key, config).await?,
        ))
    }

    /// Closes the endpoint and, on iroh, waits (briefly) until its peers and relays were told:
    /// what a process does before it exits.
    pub async fn shutdown(&self) {
        match self {
            Self::Quic(t) => t.close(),
            #[cfg(feature = "iroh")]
            Self::Iroh(t) => t.shutdown().await,
        }
    }

    /// Which kind this is.
    pub fn kind(&self) -> TransportKind {
        match self {
            Self::Quic(_) => TransportKind::Quic,
            #[cfg(feature = "iroh")]
            Self::Iroh(_) => TransportKind::Iroh,
        }
    }
}

/// A connection of an [`AnyTransport`].
#[derive(Clone)]
#[non_exhaustive]
pub enum AnyConnection {
    /// QUIC (quinn).
    Quic(QuicConnection),
    /// iroh.
    #[cfg(feature = "iroh")]
    Iroh(crate::iroh::IrohConnection),
}

/// An exchange started by the peer on an [`AnyConnection`].
#[non_exhaustive]
pub enum AnyIncoming {
    /// QUIC (quinn).
    Quic(QuicIncoming),
    /// iroh.
    #[cfg(feature = "iroh")]
    Iroh(crate::iroh::IrohIncoming),
}

/// Forwards `$call` to whichever variant `$self` is, binding it as `$t`.
macro_rules! each {
    ($self:expr, $t:ident => $call:expr) => {
        match $self {
            Self::Quic($t) => $call,
            #[cfg(feature = "iroh")]
            Self::Iroh($t) => $call,
        }
    };
}

#[async_trait]
impl Transport for AnyTransport {
    type Connection = AnyConnection;

    fn local_id(&self) -> NodeId {
        each!(self, t => t.local_id())
    }

    fn local_addr(&self) -> PeerAddr {
        each!(self, t => t.local_addr())
    }

    async fn connect(
        &self,
        addr: &PeerAddr,
        expected: &NodeId,
    ) -> Result<AnyConnection, TransportError> {
        match self {
            Self::Quic(t) => t.connect(addr, expected).await.map(AnyConnection::Quic),
            #[cfg(feature = "iroh")]
            Self::Iroh(t) => t.connect(addr, expected).await.map(AnyConnection::Iroh),
        }
    }

    async fn accept(&self) -> Result<AnyConnection, TransportError> {
        match self {
            Self::Quic(t) => t.accept().await.map(AnyConnection::Quic),
            #[cfg(feature = "iroh")]
            Self::Iroh(t) => t.accept().await.map(AnyConnection::Iroh),
        }
    }

    fn close(&self) {
        each!(self, t => t.close())
    }

    fn advertised(&self, claimed: &[PeerAddr], observed: Option<SocketAddr>) -> Vec<PeerAddr> {
        each!(self, t => t.advertised(claimed, observed))
    }
}

#[async_trait]
impl Connection for AnyConnection {
    type Incoming = AnyIncoming;

    fn remote_id(&self) -> NodeId {
        each!(self, c => c.remote_id())
    }

    fn remote_addr(&self) -> PeerAddr {
        each!(self, c => c.remote_addr())
    }

    fn path_kind(&self) -> PathKind {
        each!(self, c => c.path_kind())
    }

    fn observed_addr(&self) -> Option<SocketAddr> {
        each!(self, c => c.observed_addr())
    }

    async fn request(
        &self,
        request: Frame,
        response_bytes_max: u32,
    ) -> Result<Frame, TransportError> {
        each!(self, c => c.request(request, response_bytes_max).await)
    }

    async fn accept_exchange(&self) -> Result<AnyIncoming, TransportError> {
        match self {
            Self::Quic(c) => c.accept_exchange().await.map(AnyIncoming::Quic),
            #[cfg(feature = "iroh")]
            Self::Iroh(c) => c.accept_exchange().await.map(AnyIncoming::Iroh),
        }
    }

    fn allow_exchanges(&self, n: u32) {
        each!(self, c => c.allow_exchanges(n))
    }

    fn close(&self, reason: &str) {
        each!(self, c => c.close(reason))
    }
}

#[async_trait]
impl IncomingExchange for AnyIncoming {
    async fn read_request(&mut self, request_bytes_max: u32) -> Result<Frame, TransportError> {
        each!(self, i => i.read_request(request_bytes_max).await)
    }

    async fn respond(self, response: Frame) -> Result<(), TransportError> {
        each!(self, i => i.respond(response).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_print() {
        for kind in [TransportKind::Quic, TransportKind::Iroh] {
            assert_eq!(kind.as_str().parse::<TransportKind>(), Ok(kind));
        }
        assert_eq!(
            "tcp".parse::<TransportKind>(),
            Err(UnknownTransport("tcp".into()))
        );
    }
}
