//! QUIC through NATs on [iroh](https://docs.rs/iroh): peers dialled by [`NodeId`], hole punching,
//! and a self-hosted relay that carries the (end-to-end encrypted) QUIC packets when no direct
//! path exists. Behind the cargo feature `iroh`; the relay server (`Relay`) behind
//! `iroh-relay`.
//!
//! - The endpoint's iroh id *is* the node's ed25519 public key: [`IrohTransport::bind`] takes the
//!   node's [`SigningKey`], so `endpoint.id().as_bytes() == local_id().as_bytes()`. iroh's TLS
//!   (raw public keys, TLS 1.3) proves both sides' keys; the dialler pins the id it expects.
//! - ALPN [`ALPN`] (`crat/1`, as [`crate::quic`]); one bidirectional stream per exchange with the
//!   frame caps of [`crate::quic`] (the prefix is checked before anything is allocated, trailing
//!   bytes are refused).
//! - Nothing outside the deployment is contacted: no n0 relays, no n0 DNS/pkarr address lookup,
//!   no port mapping (iroh is built without default features). The only relays are the ones in
//!   [`IrohConfig::relay_urls`]; with none, relaying is off and only direct addresses work.
//!
//! # Addresses
//! A [`PeerAddr`] for this transport is a space-separated list of *direct addresses* (`ip:port`)
//! and *relay URLs* (`http://…` or `https://…`), in any order, at least one of either:
//! `127.0.0.1:7000`, `https://relay.example.org/`, `https://relay.example.org/ 192.0.2.7:7000`.
//! A plain `ip:port`, the form [`crate::quic`] uses, is thus also an iroh address. iroh tries all
//! of them: the connection starts on whichever answers first and moves to a direct path when
//! hole punching finds one ([`IrohConnection::path_kind`] says which is in use).
//!
//! # Hole punching
//! iroh 1.x punches holes inside the QUIC connection itself: once connected (through the relay
//! when that is all the dialler knows), both sides announce their candidate addresses in QUIC
//! frames (noq's NAT-traversal extension: ADD_ADDRESS, REACH_OUT), probe each other's
//! candidates at the same time, and open a second QUIC path (multipath) on the first probe that
//! gets through; packets then move to it and the relay path stays as a fallback. A node behind
//! NAT knows its public `ip:port` only through the relays' QUIC address discovery
//! ([`IrohConfig::relay_qad_port`]): without it, a node behind NAT gets a direct path to a
//! public peer but not to another node behind NAT (see `examples/iroh_nat.rs` and
//! `scripts/iroh-nat-experiment.sh`).
//!
//! # Example
//! ```
//! use crat_core::wire::{ClientToNode, NodeToClient};
//! use crat_transport::iroh::{IrohConfig, IrohTransport};
//! use crat_transport::{Connection, ConnectionExt, Conversation, FrameLimits, Transport, serve};
//! use ed25519_dalek::SigningKey;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), crat_transport::TransportError> {
//! let loopback = "127.0.0.1:0".parse().unwrap();
//! let node_key = SigningKey::from_bytes(&[1; 32]);
//! let node = IrohTransport::bind(loopback, &node_key, IrohConfig::default()).await?;
//! let (node_id, node_addr) = (node.local_id(), node.local_addr());
//! let limits = FrameLimits::default();
//! tokio::spawn(async move {
//!     while let Ok(conn) = node.accept().await {
//!         tokio::spawn(serve(conn, Conversation::ClientNode, limits, 64, |_: ClientToNode| async {
//!             NodeToClient::Pong
//!         }));
//!     }
//! });
//!
//! let client_key = SigningKey::from_bytes(&[2; 32]);
//! let client = IrohTransport::bind(loopback, &client_key, IrohConfig::default()).await?;
//! let conn = client.connect(&node_addr, &node_id).await?;
//! let reply: NodeToClient = conn.call(&ClientToNode::Ping, Conversation::ClientNode, limits).await?;
//! assert_eq!(reply, NodeToClient::Pong);
//! # Ok(())
//! # }
//! ```
//!
//! # Security
//! As with [`crate::quic`], the identity check proves who the peer is, nothing more. A relay sees
//! who talks to whom (ids and IP addresses) and how much, never the content.

#[cfg(feature = "iroh-relay")]
mod relay;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ::iroh::endpoint::{
    ConnectError, ConnectWithOptsError, ConnectingError, QuicTransportConfig, RecvStream,
    SendStream, VarInt,
};
use ::iroh::{Endpoint, EndpointAddr, EndpointId, RelayConfig, RelayMap, RelayMode, SecretKey};
use async_trait::async_trait;
use crat_core::id::{NodeId, PEER_ADDR_BYTES_MAX, PeerAddr};
use ed25519_dalek::SigningKey;
use tokio::sync::{Semaphore, mpsc};

pub use ::iroh::RelayUrl;
#[cfg(feature = "iroh-relay")]
pub use relay::{Relay, RelayGate, RelayOptions};

use crate::frame::FrameError;
use crate::{
    Aborted, Closed, Connection, Frame, IncomingExchange, SetupError, Transport, TransportError,
};

/// The ALPN protocol id of this protocol version (the same as [`crate::quic::ALPN`]).
pub const ALPN: &[u8] = crate::quic::ALPN;

/// Limits, timers and relays of the iroh transport.
#[derive(Clone, Debug)]
pub struct IrohConfig {
    /// Relays this endpoint uses: it keeps a connection to the first as its *home relay* (where
    /// peers reach it when it has no direct address for them) and can send through any.
    /// Empty: relaying off, direct addresses only. Default empty.
    pub relay_urls: Vec<RelayUrl>,
    /// The UDP port of the relays' QUIC address discovery (QAD), on the relays' hosts: how an
    /// endpoint behind NAT learns its public `ip:port`, which hole punching between two NATed
    /// endpoints needs. `None`: no QAD (then only endpoints with a public address, or on the
    /// same network, get direct paths). Default `None`.
    pub relay_qad_port: Option<u16>,
    /// Certificates trusted for the relays' TLS (HTTPS and QAD), instead of the web PKI (the
    /// Mozilla roots compiled into iroh). For a deployment's self-signed relay, e.g.
    /// `Relay::qad_cert`. Default empty: the web PKI.
    pub relay_roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// Public addresses this endpoint is reachable at that it cannot discover itself (a port
    /// forwarded to it on its router), announced to peers as direct candidates. Default empty.
    pub external_addrs: Vec<SocketAddr>,
    /// Bidirectional streams (exchanges) a peer may have open at once. Default 256.
    pub streams_concurrent_max: u32,
    /// Exchanges a peer may have open at once until the application raises the limit with
    /// [`Connection::allow_exchanges`](crate::Connection::allow_exchanges); `None` (the
    /// default): [`streams_concurrent_max`](Self::streams_concurrent_max) from the start. As
    /// `QuicConfig::streams_accepted_initial`, except that iroh has one transport
    /// configuration for both directions: it applies to the connections this endpoint dials
    /// too (meant for an endpoint that only accepts, such as a dispatcher's).
    pub streams_initial: Option<u32>,
    /// A connection with no traffic for this long is closed. Default 30 s.
    pub idle_timeout_ms: u32,
    /// Keep-alive interval, below the idle timeout. Default 5 s (iroh's default: NAT bindings
    /// of home routers can expire after ~30 s of silence).
    pub keep_alive_interval_ms: u32,
    /// Limit on one exchange, request sent to response read. Default 120 s.
    pub exchange_timeout_ms: u64,
    /// Limit on a handshake (on whichever path answers first). Default 10 s.
    pub handshake_timeout_ms: u64,
    /// Handshakes in progress at once; more incoming connections are refused. Default 64.
    pub handshakes_concurrent_max: usize,
    /// Established connections waiting for [`Transport::accept`]. Default 64.
    pub accept_queue_max: usize,
    /// Per-stream flow-control window. Default 1 MiB, not [`crate::quic`]'s 16 MiB: noq (like
    /// quinn) closes a connection whose stream buffer holds more than 1,024 separate spans
    /// ("too many gaps in stream buffer"), and with 16 MiB (and 4 MiB) windows bulk transfers
    /// over iroh hit that on loopback under load (3 failed 16 MiB echoes in 14 debug runs at
    /// 16 MiB, 1 in 8 at 4 MiB; 0 in 8 at 1 MiB). A 1 MiB window holds at most ~900 full-size
    /// packets, so it can never exceed the limit; it caps one exchange at 1 MiB per round trip
    /// (20 MB/s at 50 ms), while the connection window still lets exchanges run side by side.
    pub stream_window_bytes: u32,
    /// Per-connection receive and send windows. Default 64 MiB.
    pub connection_window_bytes: u32,
}

impl Default for IrohConfig {
    fn default() -> Self {
        Self {
            relay_urls: Vec::new(),
            relay_qad_port: None,
            relay_roots: Vec::new(),
            external_addrs: Vec::new(),
            streams_concurrent_max: 256,
            streams_initial: None,
            idle_timeout_ms: 30_000,
            keep_alive_interval_ms: 5_000,
            exchange_timeout_ms: 120_000,
            handshake_timeout_ms: 10_000,
            handshakes_concurrent_max: 64,
            accept_queue_max: 64,
            stream_window_bytes: 1 << 20,
            connection_window_bytes: 64 << 20,
        }
    }
}

impl IrohConfig {
    fn transport(&self) -> Result<QuicTransportConfig, TransportError> {
        let idle = ::iroh::endpoint::IdleTimeout::try_from(Duration::from_millis(
            self.idle_timeout_ms.into(),
        ))
        .map_err(|e| SetupError::Iroh {
            what: "idle timeout",
            reason: e.to_string(),
        })?;
        Ok(QuicTransportConfig::builder()
            .max_concurrent_bidi_streams(VarInt::from_u32(
                self.streams_initial
                    .map_or(self.streams_concurrent_max, |n| {
                        n.min(self.streams_concurrent_max)
                    }),
            ))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .max_idle_timeout(Some(idle))
            .keep_alive_interval(Duration::from_millis(self.keep_alive_interval_ms.into()))
            .stream_receive_window(VarInt::from_u32(self.stream_window_bytes))
            .receive_window(VarInt::from_u32(self.connection_window_bytes))
            .send_window(self.connection_window_bytes.into())
            .build())
    }

    fn relay_mode(&self) -> RelayMode {
        if self.relay_urls.is_empty() {
            return RelayMode::Disabled;
        }
        let qad = self.relay_qad_port.map(iroh_relay::RelayQuicConfig::new);
        RelayMode::Custom(RelayMap::from_iter(
            self.relay_urls
                .iter()
                .map(|url| RelayConfig::new(url.clone(), qad.clone())),
        ))
    }
}

/// Parses a [`PeerAddr`] of this transport (see the [module docs](self)) for peer `id`.
pub fn endpoint_addr(addr: &PeerAddr, id: &NodeId) -> Result<EndpointAddr, TransportError> {
    let bad = |reason: String| TransportError::Addr {
        addr: addr.to_string(),
        reason,
    };
    let key = endpoint_id(id).map_err(|e| bad(e.to_string()))?;
    let mut out = EndpointAddr::new(key);
    for token in addr.as_str().split_ascii_whitespace() {
        if token.starts_with("http://") || token.starts_with("https://") {
            let url: RelayUrl = token
                .parse()
                .map_err(|e| bad(format!("relay URL {token}: {e}")))?;
            out = out.with_relay_url(url);
        } else {
            let ip: SocketAddr = token
                .parse()
                .map_err(|e| bad(format!("{token} is neither ip:port nor a relay URL ({e})")))?;
            out = out.with_ip_addr(ip);
        }
    }
    if out.is_empty() {
        return Err(bad("no direct address and no relay URL".into()));
    }
    Ok(out)
}

/// The tokens of `claimed` (iroh addresses) with `observed` put first among the direct
/// addresses, as one [`PeerAddr`]; `None` when nothing parses.
fn merge_observed(claimed: &[PeerAddr], observed: Option<SocketAddr>) -> Option<PeerAddr> {
    let mut relays: Vec<&str> = Vec::new();
    let mut direct: Vec<String> = observed.iter().map(ToString::to_string).collect();
    for token in claimed
        .iter()
        .flat_map(|a| a.as_str().split_ascii_whitespace())
    {
        if token.starts_with("http://") || token.starts_with("https://") {
            if token.parse::<RelayUrl>().is_ok() && !relays.contains(&token) {
                relays.push(token);
            }
        } else if let Ok(ip) = token.parse::<SocketAddr>() {
            let ip = ip.to_string();
            if !direct.contains(&ip) {
                direct.push(ip);
            }
        }
    }
    let mut text = String::new();
    for token in relays
        .iter()
        .copied()
        .chain(direct.iter().map(String::as_str))
    {
        let extra = token.len() + usize::from(!text.is_empty());
        if text.len() + extra > PEER_ADDR_BYTES_MAX {
            continue;
        }
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(token);
    }
    PeerAddr::new(text).ok()
}

/// Writes an [`EndpointAddr`] as a [`PeerAddr`]: relay URLs first, then direct addresses, as
/// many as fit in [`PEER_ADDR_BYTES_MAX`]. `None` if it has no address at all.
pub fn peer_addr(addr: &EndpointAddr) -> Option<PeerAddr> {
    let tokens = addr
        .relay_urls()
        .map(|u| u.to_string())
        .chain(addr.ip_addrs().map(|a| a.to_string()));
    let mut text = String::new();
    for token in tokens {
        let extra = token.len() + usize::from(!text.is_empty());
        if text.len() + extra > PEER_ADDR_BYTES_MAX {
            continue;
        }
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(&token);
    }
    PeerAddr::new(text).ok()
}

fn endpoint_id(id: &NodeId) -> Result<EndpointId, ::iroh::KeyParsingError> {
    EndpointId::from_bytes(id.as_bytes())
}

fn node_id(id: EndpointId) -> NodeId {
    NodeId::from_bytes(*id.as_bytes())
}

pub use crate::PathKind;

/// What an endpoint found out about its network ([`IrohTransport::nat_report`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatReport {
    /// Its public IPv4 address and port, as the relays' address discovery saw its packets.
    pub public_v4: Option<SocketAddr>,
    /// Its public IPv6 address and port, likewise.
    pub public_v6: Option<SocketAddr>,
    /// Whether different relays saw different public ports (an endpoint-dependent,
    /// "symmetric", NAT); `None` when fewer than two relays answered.
    pub mapping_varies_by_destination: Option<bool>,
    /// Whether UDP to a relay worked (address discovery answered).
    pub udp: bool,
    /// The round trip to each relay that answered, fastest probe each.
    pub relay_rtt: Vec<(RelayUrl, Duration)>,
}

/// An iroh endpoint with an ed25519 identity: dials by [`NodeId`] and accepts.
pub struct IrohTransport {
    endpoint: Endpoint,
    id: NodeId,
    config: IrohConfig,
    incoming: tokio::sync::Mutex<mpsc::Receiver<IrohConnection>>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl IrohTransport {
    /// Binds a UDP socket at `addr` (port 0 picks one) with identity `key`, using the relays of
    /// `config`. Must run inside a tokio runtime.
    pub async fn bind(
        addr: SocketAddr,
        key: &SigningKey,
        config: IrohConfig,
    ) -> Result<Self, TransportError> {
        Self::bind_all(std::slice::from_ref(&addr), key, config).await
    }

    /// [`IrohTransport::bind`] on several sockets, one per address of `addrs` (port 0 picks
    /// one each): at most one IPv4 and one IPv6 address, as iroh routes each address family
    /// through one socket. E.g. `127.0.0.1:0` and `[::1]:0`: an endpoint reachable directly
    /// from peers bound on either loopback only, as a dispatcher must be when its nodes and
    /// clients cannot reach each other (crat-testnet's relayed-only networks). The endpoint
    /// answers on the socket a packet came in on. Empty `addrs`, or two of one family, is a
    /// [`SetupError`].
    pub async fn bind_all(
        addrs: &[SocketAddr],
        key: &SigningKey,
        config: IrohConfig,
    ) -> Result<Self, TransportError> {
        let setup = |what: &'static str, e: &dyn std::fmt::Display| SetupError::Iroh {
            what,
            reason: e.to_string(),
        };
        let secret = SecretKey::from_bytes(&key.to_bytes());
        let mut builder = Endpoint::builder(::iroh::endpoint::presets::Minimal);
        if !config.relay_roots.is_empty() {
            builder = builder.ca_tls_config(::iroh::tls::CaTlsConfig::custom_roots(
                config.relay_roots.iter().cloned(),
            ));
        }
        for external in &config.external_addrs {
            builder = builder.external_addr(*external);
        }
        if addrs.is_empty() {
            return Err(setup("bind address", &"no address to bind").into());
        }
        builder = builder
            .secret_key(secret)
            .alpns(vec![ALPN.to_vec()])
            .relay_mode(config.relay_mode())
            .transport_config(config.transport()?)
            .clear_ip_transports();
        for addr in addrs {
            builder = builder
                .bind_addr(*addr)
                .map_err(|e| setup("bind address", &e))?;
        }
        let endpoint = builder.bind().await.map_err(|e| setup("bind", &e))?;
        let id = NodeId::from_key(&key.verifying_key());
        // The identity model holds: iroh's endpoint id is the node's ed25519 public key.
        debug_assert_eq!(endpoint.id().as_bytes(), id.as_bytes());
        let (tx, rx) = mpsc::channel(config.accept_queue_max.max(1));
        let acceptor = tokio::spawn(accept_loop(
            endpoint.clone(),
            tx,
            Arc::new(Semaphore::new(config.handshakes_concurrent_max.max(1))),
            Duration::from_millis(config.handshake_timeout_ms),
            Duration::from_millis(config.exchange_timeout_ms),
        ));
        Ok(Self {
            endpoint,
            id,
            config,
            incoming: tokio::sync::Mutex::new(rx),
            acceptor,
        })
    }

    /// The iroh endpoint (its addresses, relay status, remote info).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Closes the endpoint and waits until its peers and relays were told (at most a few
    /// seconds): what a process does before it exits. [`Transport::close`] starts the same
    /// without waiting.
    pub async fn shutdown(&self) {
        self.acceptor.abort();
        let wait = Duration::from_millis(self.config.handshake_timeout_ms.min(3_000));
        let _ = tokio::time::timeout(wait, self.endpoint.close()).await;
    }

    /// What the endpoint found out about its network, waiting up to `timeout` for its first
    /// report (made once it reached its relays): its public address as the relays' address
    /// discovery saw it, whether that differs between relays (an endpoint-dependent NAT; known
    /// only with two relays or more), and the round trip to each relay. `None` when no report
    /// came (no relays, or none reachable).
    pub async fn nat_report(&self, timeout: Duration) -> Option<NatReport> {
        use ::iroh::Watcher as _;
        let mut watcher = self.endpoint.net_report();
        let report = tokio::time::timeout(timeout, watcher.initialized())
            .await
            .ok()?;
        let mut relays: Vec<(RelayUrl, Duration)> = Vec::new();
        for (_, url, latency) in report.relay_latency.iter() {
            match relays.iter_mut().find(|(u, _)| u == url) {
                Some((_, best)) => *best = (*best).min(latency),
                None => relays.push((url.clone(), latency)),
            }
        }
        Some(NatReport {
            public_v4: report.global_v4.map(SocketAddr::V4),
            public_v6: report.global_v6.map(SocketAddr::V6),
            mapping_varies_by_destination: report.mapping_varies_by_dest(),
            udp: report.has_udp(),
            relay_rtt: relays,
        })
    }

    /// The locally bound UDP sockets.
    pub fn socket_addrs(&self) -> Vec<SocketAddr> {
        self.endpoint.bound_sockets()
    }

    /// Waits until the endpoint is connected to its home relay (returns at once without relays,
    /// after `timeout` at the latest). `false` if it is not.
    pub async fn online(&self, timeout: Duration) -> bool {
        if self.config.relay_urls.is_empty() {
            return true;
        }
        tokio::time::timeout(timeout, self.endpoint.online())
            .await
            .is_ok()
    }
}

async fn accept_loop(
    endpoint: Endpoint,
    tx: mpsc::Sender<IrohConnection>,
    handshakes: Arc<Semaphore>,
    handshake_timeout: Duration,
    exchange_timeout: Duration,
) {
    while let Some(incoming) = endpoint.accept().await {
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::debug!("too many handshakes in progress; refusing a connection");
            incoming.refuse();
            continue;
        };
        let tx = tx.clone();
        // Where the first packet came from: what the connection shows as the peer's address
        // until iroh has registered its paths.
        let first_ip = match incoming.remote_addr() {
            ::iroh::endpoint::IncomingAddr::Ip(ip) => Some(ip),
            _ => None,
        };
        tokio::spawn(async move {
            let _permit = permit;
            let accepting = match incoming.accept() {
                Ok(a) => a,
                Err(e) => return tracing::debug!(error = %e, "incoming connection failed"),
            };
            let conn = match tokio::time::timeout(handshake_timeout, accepting).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => return tracing::debug!(error = %e, "handshake failed"),
                Err(_) => return tracing::debug!("handshake timed out"),
            };
            // Waits while the accept queue is full; the permit stays held meanwhile, so a
            // backlog throttles new handshakes.
            let _ = tx
                .send(IrohConnection::new(conn, exchange_timeout, first_ip))
                .await;
        });
    }
}

/// Whether a failed handshake failed on the peer's certificate: the peer at the address
/// proved another identity than the one pinned.
fn is_identity_failure(e: &ConnectError) -> bool {
    use ::iroh::endpoint::ConnectionError as C;
    let conn_err = match e {
        ConnectError::Connection { source, .. } => Some(source),
        ConnectError::Connecting {
            source: ConnectingError::ConnectionError { source, .. },
            ..
        } => Some(source),
        _ => None,
    };
    // rustls reports a certificate that is not the pinned key as `UnknownIssuer`, i.e. TLS
    // alert 48 (unknown_ca), QUIC crypto error 0x0130.
    matches!(conn_err, Some(C::TransportError(t)) if u64::from(t.code) == 0x0130)
}

#[async_trait]
impl Transport for IrohTransport {
    type Connection = IrohConnection;

    fn local_id(&self) -> NodeId {
        self.id
    }

    /// The endpoint's relay URL (once connected to it) and its direct addresses.
    /// The relays it is configured with (where peers find it, connected yet or not), then its
    /// direct addresses.
    fn local_addr(&self) -> PeerAddr {
        let mut addr = self.endpoint.addr();
        for url in &self.config.relay_urls {
            addr = addr.with_relay_url(url.clone());
        }
        if addr.ip_addrs().next().is_none() {
            addr = addr.with_addrs(
                self.endpoint
                    .bound_sockets()
                    .into_iter()
                    .map(::iroh::TransportAddr::Ip),
            );
        }
        peer_addr(&addr).unwrap_or_else(|| {
            // An endpoint without any address cannot be reached; say so in the address.
            PeerAddr::new("unreachable").expect("a short literal is a valid PeerAddr")
        })
    }

    /// One address: the claimed relay URLs, then the observed address, then the claimed
    /// direct addresses (as many as fit).
    fn advertised(&self, claimed: &[PeerAddr], observed: Option<SocketAddr>) -> Vec<PeerAddr> {
        merge_observed(claimed, observed).map_or_else(|| claimed.to_vec(), |a| vec![a])
    }

    async fn connect(
        &self,
        addr: &PeerAddr,
        expected: &NodeId,
    ) -> Result<IrohConnection, TransportError> {
        let target = endpoint_addr(addr, expected)?;
        if self.config.relay_urls.is_empty() && target.ip_addrs().next().is_none() {
            // iroh would wait out the handshake timeout: with relaying off it cannot use a
            // relay at all.
            return Err(TransportError::Addr {
                addr: addr.to_string(),
                reason: "only relay URLs, and this endpoint has relaying off".into(),
            });
        }
        let connect_err = |reason: String| TransportError::Connect {
            addr: addr.to_string(),
            reason,
        };
        let handshake = Duration::from_millis(self.config.handshake_timeout_ms);
        let conn = match tokio::time::timeout(handshake, self.endpoint.connect(target, ALPN)).await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) if is_identity_failure(&e) => {
                return Err(TransportError::IdentityUnproven {
                    expected: *expected,
                    reason: format!("{e:#}"),
                });
            }
            Ok(Err(ConnectError::Connect {
                source: ConnectWithOptsError::EndpointClosed { .. },
                ..
            })) => return Err(TransportError::Closed(Closed::Endpoint)),
            Ok(Err(e)) => return Err(connect_err(format!("{e:#}"))),
            Err(_) => return Err(TransportError::Timeout(self.config.handshake_timeout_ms)),
        };
        let remote = node_id(conn.remote_id());
        if remote != *expected {
            // iroh's verifier already pins the id; this only guards the mapping.
            conn.close(VarInt::from_u32(0), b"unexpected identity");
            return Err(TransportError::Identity {
                expected: *expected,
                actual: remote,
            });
        }
        Ok(IrohConnection::new(
            conn,
            Duration::from_millis(self.config.exchange_timeout_ms),
            None,
        ))
    }

    async fn accept(&self) -> Result<IrohConnection, TransportError> {
        self.incoming
            .lock()
            .await
            .recv()
            .await
            .ok_or(TransportError::Closed(Closed::Endpoint))
    }

    fn close(&self) {
        self.acceptor.abort();
        if self.endpoint.is_closed() {
            return;
        }
        // iroh closes asynchronously (it tells peers and relays); without a runtime the
        // endpoint still closes when its last handle drops.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let endpoint = self.endpoint.clone();
            rt.spawn(async move { endpoint.close().await });
        }
    }
}

impl Drop for IrohTransport {
    fn drop(&mut self) {
        self.close();
    }
}

/// An iroh connection to an authenticated peer.
#[derive(Clone)]
pub struct IrohConnection {
    conn: ::iroh::endpoint::Connection,
    remote_id: NodeId,
    exchange_timeout: Duration,
    /// An accepted connection's first packet's source, when it came over IP.
    first_ip: Option<SocketAddr>,
}

impl std::fmt::Debug for IrohConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IrohConnection")
            .field("remote_id", &self.remote_id)
            .field("path", &self.path_kind())
            .finish_non_exhaustive()
    }
}

impl IrohConnection {
    fn new(
        conn: ::iroh::endpoint::Connection,
        exchange_timeout: Duration,
        first_ip: Option<SocketAddr>,
    ) -> Self {
        Self {
            remote_id: node_id(conn.remote_id()),
            conn,
            exchange_timeout,
            first_ip,
        }
    }

    /// The underlying iroh connection (paths, statistics, RTT).
    pub fn iroh(&self) -> &::iroh::endpoint::Connection {
        &self.conn
    }

    /// Waits until the connection uses a direct path; `false` after `timeout` or when it
    /// closes first.
    pub async fn wait_direct(&self, timeout: Duration) -> bool {
        use futures_util::StreamExt as _;
        let wait = async {
            let mut lists = self.conn.paths_stream();
            while let Some(list) = lists.next().await {
                if list.iter().any(|p| p.is_selected() && p.is_ip()) {
                    return true;
                }
            }
            false
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
    }
}

fn conn_err(e: ::iroh::endpoint::ConnectionError) -> TransportError {
    match e {
        ::iroh::endpoint::ConnectionError::TimedOut => TransportError::Closed(Closed::IdleTimeout),
        other => TransportError::Closed(Closed::Iroh(other)),
    }
}

fn write_err(e: ::iroh::endpoint::WriteError) -> TransportError {
    match e {
        ::iroh::endpoint::WriteError::ConnectionLost(c) => conn_err(c),
        other => TransportError::Aborted(Aborted::IrohWrite(other)),
    }
}

fn read_err(e: ::iroh::endpoint::ReadError) -> TransportError {
    match e {
        ::iroh::endpoint::ReadError::ConnectionLost(c) => conn_err(c),
        other => TransportError::Aborted(Aborted::IrohRead(other)),
    }
}

fn read_exact_err(e: ::iroh::endpoint::ReadExactError, expected: usize) -> TransportError {
    match e {
        ::iroh::endpoint::ReadExactError::FinishedEarly(got) => FrameError::Truncated {
            expected: expected as u64,
            got: got as u64,
        }
        .into(),
        ::iroh::endpoint::ReadExactError::ReadError(e) => read_err(e),
    }
}

/// Reads one frame from `recv`, as [`crate::quic`] does: the prefix, checked against `max`
/// before allocating, the body, then the end of the stream (anything after the frame is an
/// error). (iroh's streams are noq's, a quinn fork: same calls, other types.)
impl crate::stream::RecvHalf for RecvStream {
    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), TransportError> {
        let expected = buf.len();
        RecvStream::read_exact(self, buf)
            .await
            .map_err(|e| read_exact_err(e, expected))
    }

    async fn read_chunk(&mut self, max: usize) -> Result<Option<bytes::Bytes>, TransportError> {
        RecvStream::read_chunk(self, max).await.map_err(read_err)
    }

    async fn read_some(&mut self, buf: &mut [u8]) -> Result<Option<usize>, TransportError> {
        RecvStream::read(self, buf).await.map_err(read_err)
    }

    fn stop(&mut self) {
        let _ = RecvStream::stop(self, VarInt::from_u32(1));
    }
}

impl crate::stream::SendHalf for SendStream {
    async fn send_all_and_finish(&mut self, bytes: bytes::Bytes) -> Result<(), TransportError> {
        self.write_chunk(bytes).await.map_err(write_err)?;
        self.finish()
            .map_err(|e| TransportError::Aborted(Aborted::IrohFinish(e)))
    }
}

#[async_trait]
impl Connection for IrohConnection {
    type Incoming = IrohIncoming;

    fn remote_id(&self) -> NodeId {
        self.remote_id
    }

    /// The remote end of the path in use: the peer's `ip:port` on a direct path, the relay's
    /// URL on a relayed one (the peer's own address is not observable then).
    fn remote_addr(&self) -> PeerAddr {
        let paths = self.conn.paths();
        let selected = paths
            .iter()
            .find(|p| p.is_selected())
            .map(|p| p.remote_addr().clone());
        let text = match selected {
            Some(::iroh::TransportAddr::Ip(ip)) => ip.to_string(),
            Some(::iroh::TransportAddr::Relay(url)) => url.to_string(),
            Some(other) => other.to_string(),
            None => self
                .first_ip
                .map_or_else(|| "unknown".to_string(), |ip| ip.to_string()),
        };
        PeerAddr::new(text).unwrap_or_else(|_| {
            PeerAddr::new("unknown").expect("a short literal is a valid PeerAddr")
        })
    }

    /// Direct or through a relay: the path selected now.
    fn path_kind(&self) -> PathKind {
        let paths = self.conn.paths();
        let selected = paths.iter().find(|p| p.is_selected());
        match selected {
            Some(p) if p.is_ip() => PathKind::Direct,
            Some(p) if p.is_relay() => PathKind::Relayed,
            _ => PathKind::None,
        }
    }

    /// The remote end of a direct path: the selected one, else any open (the peer's public
    /// address behind its NAT), else, for an accepted connection whose paths iroh has not
    /// registered yet, where its first packet came from. `None` when relayed only.
    fn observed_addr(&self) -> Option<SocketAddr> {
        let paths = self.conn.paths();
        let ip_of = |addr: &::iroh::TransportAddr| match addr {
            ::iroh::TransportAddr::Ip(ip) => Some(*ip),
            _ => None,
        };
        paths
            .iter()
            .filter(|p| p.is_selected())
            .find_map(|p| ip_of(p.remote_addr()))
            .or_else(|| paths.iter().find_map(|p| ip_of(p.remote_addr())))
            .or(self.first_ip)
    }

    async fn request(
        &self,
        request: Frame,
        response_bytes_max: u32,
    ) -> Result<Frame, TransportError> {
        crate::stream::within(self.exchange_timeout, async {
            let (mut send, mut recv) = self.conn.open_bi().await.map_err(conn_err)?;
            crate::stream::exchange(&mut send, &mut recv, request, response_bytes_max).await
        })
        .await
    }

    fn allow_exchanges(&self, n: u32) {
        self.conn.set_max_concurrent_bi_streams(VarInt::from_u32(n));
    }

    async fn accept_exchange(&self) -> Result<IrohIncoming, TransportError> {
        let (send, recv) = self.conn.accept_bi().await.map_err(conn_err)?;
        Ok(IrohIncoming {
            send,
            recv,
            timeout: self.exchange_timeout,
        })
    }

    fn close(&self, reason: &str) {
        self.conn.close(VarInt::from_u32(0), reason.as_bytes());
    }
}

/// An exchange the peer started on an [`IrohConnection`].
pub struct IrohIncoming {
    send: SendStream,
    recv: RecvStream,
    timeout: Duration,
}

#[async_trait]
impl IncomingExchange for IrohIncoming {
    async fn read_request(&mut self, request_bytes_max: u32) -> Result<Frame, TransportError> {
        crate::stream::within(
            self.timeout,
            crate::stream::read_frame(&mut self.recv, request_bytes_max),
        )
        .await
    }

    async fn respond(mut self, response: Frame) -> Result<(), TransportError> {
        crate::stream::within(
            self.timeout,
            crate::stream::write_frame(&mut self.send, response),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId::from_key(&SigningKey::from_bytes(&[n; 32]).verifying_key())
    }

    #[test]
    fn addresses_round_trip() {
        let text = "http://127.0.0.1:3340/ 127.0.0.1:7000 [::1]:7001";
        let addr = endpoint_addr(&text.parse().unwrap(), &id(1)).unwrap();
        assert_eq!(addr.ip_addrs().count(), 2);
        assert_eq!(addr.relay_urls().count(), 1);
        let back = peer_addr(&addr).unwrap();
        assert_eq!(
            endpoint_addr(&back, &id(1)).unwrap(),
            addr,
            "{back} reads back"
        );
    }

    #[test]
    fn plain_socket_address_is_an_iroh_address() {
        let addr = endpoint_addr(&"127.0.0.1:7000".parse().unwrap(), &id(1)).unwrap();
        assert_eq!(addr.ip_addrs().count(), 1);
        assert_eq!(addr.id.as_bytes(), id(1).as_bytes());
    }

    #[test]
    fn refuses_garbage() {
        for bad in ["mem:node", "ftp://x/ 1.2.3.4:5", "  "] {
            let Ok(addr) = PeerAddr::new(bad) else {
                continue;
            };
            assert!(
                matches!(
                    endpoint_addr(&addr, &id(1)),
                    Err(TransportError::Addr { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_observed_address_joins_the_claim() {
        let claimed = ["http://198.51.100.11:3340/ 10.1.0.2:7401".parse().unwrap()];
        let seen = SocketAddr::from(([198, 51, 100, 101], 40_001));
        let merged = merge_observed(&claimed, Some(seen)).unwrap();
        assert_eq!(
            merged.as_str(),
            "http://198.51.100.11:3340/ 198.51.100.101:40001 10.1.0.2:7401"
        );
        // Seen again, or claimed already: not repeated; garbage tokens dropped.
        let again = merge_observed(
            &[merged.clone(), "ftp://x 10.1.0.2:7401".parse().unwrap()],
            Some(seen),
        );
        assert_eq!(again.unwrap(), merged);
        assert_eq!(merge_observed(&[], None), None);
        assert_eq!(
            merge_observed(&[], Some(seen)).unwrap().as_str(),
            "198.51.100.101:40001"
        );
    }

    #[test]
    fn long_address_lists_are_cut_to_fit() {
        let addr = EndpointAddr::new(endpoint_id(&id(1)).unwrap()).with_addrs(
            (0..40u16).map(|p| ::iroh::TransportAddr::Ip(SocketAddr::from(([10, 0, 0, 1], p)))),
        );
        let text = peer_addr(&addr).unwrap();
        assert!(text.as_str().len() <= PEER_ADDR_BYTES_MAX);
    }
}
