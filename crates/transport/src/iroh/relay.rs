//! A self-hosted iroh relay, in-process (the future `crat relay`, or a task of the dispatcher).

use std::net::SocketAddr;

use iroh_relay::server::{RelayConfig, Server, ServerConfig};

use super::RelayUrl;
use crate::{SetupError, TransportError};

/// An iroh relay server running in this process: it forwards the encrypted QUIC packets of
/// endpoints that have no direct path to each other, addressed by endpoint id (it cannot read
/// them). Stops when dropped.
///
/// This one speaks plain HTTP (`http://ip:port/`), which is enough for loopback, tests and a
/// private network: the packets it carries are end-to-end encrypted QUIC either way. On the
/// internet it needs TLS: the relay protocol's own framing (client handshake, endpoint ids of
/// who talks to whom) travels in the clear otherwise, and iroh's QUIC address discovery (QAD:
/// how a node behind NAT learns its public `ip:port`, which hole punching needs) is only served
/// over the relay's QUIC port with a certificate — so production wants `RelayConfig::tls`
/// (ACME or a certificate the operator supplies) plus `ServerConfig::quic`, and nodes that trust
/// that certificate (the web PKI, or a CA the deployment ships via iroh's `ca_tls_config`).
pub struct Relay {
    server: Server,
    url: RelayUrl,
}

impl Relay {
    /// Starts a plain-HTTP relay on `addr` (port 0 picks one). Must run inside a tokio runtime.
    pub async fn spawn_http(addr: SocketAddr) -> Result<Self, TransportError> {
        let mut config = ServerConfig::default();
        config.relay = Some(RelayConfig::new(addr));
        let server = Server::spawn(config).await.map_err(|e| SetupError::Iroh {
            what: "relay",
            reason: format!("{e:#}"),
        })?;
        let bound = server.http_addr().ok_or_else(|| SetupError::Iroh {
            what: "relay",
            reason: "no HTTP address after start".into(),
        })?;
        let url = format!("http://{bound}/")
            .parse()
            .map_err(|e: ::iroh::RelayUrlParseError| SetupError::Iroh {
                what: "relay URL",
                reason: e.to_string(),
            })?;
        Ok(Self { server, url })
    }

    /// The URL endpoints use for this relay ([`super::IrohConfig::relay_urls`], and in a
    /// [`PeerAddr`](crat_core::id::PeerAddr)).
    pub fn url(&self) -> &RelayUrl {
        &self.url
    }

    /// The socket address it listens on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.server.http_addr()
    }

    /// Stops the relay and waits for its tasks.
    pub async fn shutdown(self) -> Result<(), TransportError> {
        self.server.shutdown().await.map_err(|e| {
            SetupError::Iroh {
                what: "relay shutdown",
                reason: format!("{e:#}"),
            }
            .into()
        })
    }
}
