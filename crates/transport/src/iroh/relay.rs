//! A self-hosted iroh relay, in-process (what `crat relay` runs), with an optional gate
//! deciding which endpoints may use it and a per-client rate limit.

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;

use crat_core::id::NodeId;
use iroh_relay::server::{
    Access, AccessControl, ClientRateLimit, ClientRequest, Limits, QuicConfig, RelayConfig, Server,
    ServerConfig,
};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use super::RelayUrl;
use crate::{SetupError, TransportError};

/// Decides which endpoints may use a [`Relay`] (see [`RelayOptions::gate`]).
pub trait RelayGate: Send + Sync + 'static {
    /// Whether `endpoint` may connect; `Err(reason)` refuses it (the reason goes back to it).
    fn admit(
        &self,
        endpoint: NodeId,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

/// How a [`Relay`] admits and limits its clients.
#[derive(Clone, Default)]
pub struct RelayOptions {
    /// Who may connect. `None`: every endpoint (an open relay; for tests and closed networks).
    pub gate: Option<Arc<dyn RelayGate>>,
    /// Bytes per second one client connection may send through the relay (with a burst of
    /// the same size). `None`: unlimited.
    pub client_bytes_per_s: Option<NonZeroU32>,
}

/// [`RelayGate`] as iroh's access control.
struct GateAccess(Arc<dyn RelayGate>);

impl std::fmt::Debug for GateAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GateAccess")
    }
}

impl AccessControl for GateAccess {
    async fn on_connect(&self, request: &ClientRequest) -> Access {
        let endpoint = NodeId::from_bytes(*request.endpoint_id().as_bytes());
        match self.0.admit(endpoint).await {
            Ok(()) => Access::Allow,
            Err(reason) => Access::Deny {
                reason: Some(reason),
            },
        }
    }
}

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
    qad_cert: Option<CertificateDer<'static>>,
}

impl Relay {
    /// Starts a plain-HTTP relay on `addr` (port 0 picks one). Must run inside a tokio runtime.
    pub async fn spawn_http(addr: SocketAddr) -> Result<Self, TransportError> {
        Self::spawn(addr, None, RelayOptions::default()).await
    }

    /// Starts a plain-HTTP relay on `addr`, plus QUIC address discovery (QAD) on UDP
    /// `qad_addr` under a fresh self-signed certificate for `names` (the relay URL's host: IP
    /// addresses or DNS names). Endpoints use it with [`super::IrohConfig::relay_qad_port`] and
    /// [`Relay::qad_cert`] in [`super::IrohConfig::relay_roots`].
    pub async fn spawn_http_with_qad(
        addr: SocketAddr,
        qad_addr: SocketAddr,
        names: Vec<String>,
    ) -> Result<Self, TransportError> {
        let (cert, key) = Self::self_signed(names)?;
        Self::spawn_http_with_qad_cert(addr, qad_addr, cert, key, RelayOptions::default()).await
    }

    /// A fresh self-signed certificate (and its PKCS #8 key) for `names`: what
    /// [`Relay::spawn_http_with_qad_cert`] serves QAD under.
    pub fn self_signed(
        names: Vec<String>,
    ) -> Result<(CertificateDer<'static>, PrivatePkcs8KeyDer<'static>), TransportError> {
        let certified =
            rcgen::generate_simple_self_signed(names).map_err(|e| SetupError::Iroh {
                what: "relay certificate",
                reason: e.to_string(),
            })?;
        Ok((
            certified.cert.der().clone(),
            PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()),
        ))
    }

    /// [`Relay::spawn_http_with_qad`] under a given certificate and key (a relay restarted
    /// keeps the certificate its endpoints trust), admitting and limiting clients as
    /// `options` say.
    pub async fn spawn_http_with_qad_cert(
        addr: SocketAddr,
        qad_addr: SocketAddr,
        cert: CertificateDer<'static>,
        key: PrivatePkcs8KeyDer<'static>,
        options: RelayOptions,
    ) -> Result<Self, TransportError> {
        let tls = |what: &'static str| {
            move |e: &dyn std::fmt::Display| SetupError::Iroh {
                what,
                reason: e.to_string(),
            }
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls("relay TLS")(&e))?
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key.into())
            .map_err(|e| tls("relay TLS")(&e))?;
        let mut quic = QuicConfig::new(qad_addr);
        quic.server_config = Some(server);
        let mut relay = Self::spawn(addr, Some(quic), options).await?;
        relay.qad_cert = Some(cert);
        Ok(relay)
    }

    async fn spawn(
        addr: SocketAddr,
        quic: Option<QuicConfig>,
        options: RelayOptions,
    ) -> Result<Self, TransportError> {
        let mut config = ServerConfig::default();
        let mut relay = RelayConfig::new(addr);
        if let Some(gate) = options.gate {
            relay.access = Arc::new(GateAccess(gate));
        }
        if let Some(rate) = options.client_bytes_per_s {
            let mut limit = ClientRateLimit::new(rate);
            limit.max_burst_bytes = Some(rate);
            let mut limits = Limits::default();
            limits.client_rx = Some(limit);
            relay.limits = limits;
        }
        config.relay = Some(relay);
        config.quic = quic;
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
        Ok(Self {
            server,
            url,
            qad_cert: None,
        })
    }

    /// The URL endpoints use for this relay ([`super::IrohConfig::relay_urls`], and in a
    /// [`PeerAddr`](crat_core::id::PeerAddr)).
    pub fn url(&self) -> &RelayUrl {
        &self.url
    }

    /// The self-signed certificate of its QAD port, if it serves QAD.
    pub fn qad_cert(&self) -> Option<&CertificateDer<'static>> {
        self.qad_cert.as_ref()
    }

    /// The UDP address of its QAD port, if it serves QAD.
    pub fn qad_addr(&self) -> Option<SocketAddr> {
        self.server.quic_addr()
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
