//! QUIC transport on quinn + rustls, with peers identified by ed25519 keys.
//!
//! - Each endpoint presents a self-signed certificate around its ed25519 key; the dialling
//!   side pins the [`NodeId`] it expects and the handshake fails on any other (no CA, no
//!   trust on first use). Both sides present certificates, so both learn the other's id.
//! - ALPN `crat/1`, TLS 1.3 only, ed25519 signatures only.
//! - One bidirectional stream per exchange; concurrent streams, idle time, handshakes and the
//!   accept queue are all bounded ([`QuicConfig`]); keep-alives keep quiet connections open.
//! - Stateless resets are keyed from the identity key ([`ResetKey`]), so an endpoint restarted
//!   with the same key at the same address resets its previous life's connections at their
//!   peers' next packet: a dispatcher or node that crashed and came back is noticed at once,
//!   not after the idle timeout.
//!
//! # Security
//! The identity check proves who the peer is, nothing more: whether that peer may register,
//! run a task or be paid is decided by the signed messages above this layer (registrations,
//! tickets). A server accepts connections from any identity.

mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use crat_core::id::NodeId;
use crat_core::id::PeerAddr;
use ed25519_dalek::SigningKey;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{RecvStream, SendStream, VarInt};
use tokio::sync::{Semaphore, mpsc};

use crate::frame::FrameError;
use crate::{
    Aborted, Closed, Connection, Frame, IncomingExchange, SetupError, Transport, TransportError,
};

/// The ALPN protocol id of this protocol version.
pub const ALPN: &[u8] = b"crat/1";
/// Largest datagram that still fits quinn's 10-segment GSO batches in one UDP send.
const GSO_MTU_BYTES_MAX: u16 = 6_550;
/// Server name used in the handshake (the identity check ignores names).
const SERVER_NAME: &str = "crat";

/// Limits and timers of the QUIC transport.
#[derive(Clone, Debug)]
pub struct QuicConfig {
    /// Bidirectional streams (exchanges) a peer may have open at once. Default 256.
    pub streams_concurrent_max: u32,
    /// Exchanges a peer that dialled this endpoint may have open at once until the
    /// application raises the limit with
    /// [`Connection::allow_exchanges`](crate::Connection::allow_exchanges); `None` (the
    /// default): [`streams_concurrent_max`](Self::streams_concurrent_max) from the start.
    /// quinn keeps state for every stream a peer may open (about 80 bytes each, 20 KB at
    /// 256), so an endpoint that accepts many peers needing few exchanges (a dispatcher's
    /// nodes) starts every peer low and raises the limit for those that need more.
    pub streams_accepted_initial: Option<u32>,
    /// A connection with no traffic for this long is closed. Default 30 s.
    pub idle_timeout_ms: u32,
    /// Keep-alive interval; must be below the idle timeout. Default 15 s: half the idle
    /// timeout (NAT mappings of home routers last 30 s or more), and above the 10 s at which
    /// nodes heartbeat, so that a node's connection to its dispatcher, busy with heartbeats,
    /// sends no keep-alives. (A 10 s keep-alive fired just before each heartbeat: 6 % more
    /// datagrams for the dispatcher in `cargo bench --bench dispatcher_load`.)
    pub keep_alive_interval_ms: u32,
    /// Limit on one exchange, request sent to response read. Default 120 s.
    pub exchange_timeout_ms: u64,
    /// Limit on a handshake. Default 10 s.
    pub handshake_timeout_ms: u64,
    /// Handshakes in progress at once; more incoming connections are refused. Default 64.
    pub handshakes_concurrent_max: usize,
    /// Established connections waiting for [`Transport::accept`]. Default 64.
    pub accept_queue_max: usize,
    /// Per-stream flow-control window. Default 16 MiB.
    pub stream_window_bytes: u32,
    /// Per-connection receive and send windows. Default 64 MiB.
    pub connection_window_bytes: u32,
    /// Upper bound for path-MTU discovery and for the UDP payloads this endpoint accepts
    /// (up to 65,527; up to 6,550 keeps segmentation offload (GSO), above it is turned off).
    /// Default 6,550: connections start at [`mtu_bytes_initial`](Self::mtu_bytes_initial)
    /// and discovery (DPLPMTUD, RFC 9000 §14.3: probes that are never fragmented) climbs only
    /// as far as the path carries, so an internet path stays at its 1,452 or less (a few lost
    /// probes are the whole cost) while loopback, LAN and jumbo-frame paths carry a task's
    /// tensors in 4.5× fewer datagrams. Measured: on loopback, 6,500 moved 64 MiB frames
    /// 1.4–1.6× as fast as 1452 in two runs of `cargo bench -p crat-benches --bench quic`;
    /// the PaddleOCR classifier's tasks (110 KB of input each) cost 1.46–1.57 ms of CPU each
    /// with 6,550 against 1.67–1.91 ms with 1,452 (`benches/compare`, a build with each
    /// default, alternated, 2026-12-06). Set 1,452 to never probe above the usual internet
    /// path.
    pub mtu_bytes_max: u16,
    /// UDP payload size a connection starts with, before discovery. Default 1200 (the QUIC
    /// minimum, works everywhere). A path that cannot carry it is detected as a black hole
    /// and falls back to 1200.
    pub mtu_bytes_initial: u16,
    /// UDP socket send and receive buffers; the kernel caps them (`net.core.rmem_max`,
    /// `wmem_max`). Default 4 MiB: bulk transfers drop packets with the usual 208 KiB.
    pub socket_buffer_bytes: usize,
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            streams_concurrent_max: 256,
            streams_accepted_initial: None,
            idle_timeout_ms: 30_000,
            keep_alive_interval_ms: 15_000,
            exchange_timeout_ms: 120_000,
            handshake_timeout_ms: 10_000,
            handshakes_concurrent_max: 64,
            accept_queue_max: 64,
            stream_window_bytes: 16 << 20,
            connection_window_bytes: 64 << 20,
            mtu_bytes_max: 6_550,
            mtu_bytes_initial: 1200,
            socket_buffer_bytes: 4 << 20,
        }
    }
}

impl QuicConfig {
    /// The transport configuration of connections whose peer may open `streams` exchanges
    /// at once.
    fn transport(&self, streams: u32) -> Result<Arc<quinn::TransportConfig>, TransportError> {
        let mut t = quinn::TransportConfig::default();
        t.max_concurrent_bidi_streams(VarInt::from_u32(streams))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(Duration::from_millis(self.idle_timeout_ms.into()))
                    .map_err(SetupError::IdleTimeout)?,
            ))
            .keep_alive_interval(Some(Duration::from_millis(
                self.keep_alive_interval_ms.into(),
            )))
            .stream_receive_window(VarInt::from_u32(self.stream_window_bytes))
            .receive_window(VarInt::from_u32(self.connection_window_bytes))
            .send_window(self.connection_window_bytes.into());
        let mtu_max = self.mtu_bytes_max.clamp(1200, 65_527);
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(mtu_max);
        t.mtu_discovery_config(Some(mtu))
            .initial_mtu(self.mtu_bytes_initial.clamp(1200, mtu_max));
        // quinn sends up to 10 datagrams per GSO batch, and one UDP send carries at most
        // 65,507 bytes; larger datagrams would make every batch fail (and look like an MTU
        // black hole), so they go without segmentation offload.
        if mtu_max > GSO_MTU_BYTES_MAX {
            t.enable_segmentation_offload(false);
        }
        Ok(Arc::new(t))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    // AES-128-GCM first: the fastest suite with AES-NI, and the one QUIC's initial packets use.
    p.cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(p)
}

fn setup(what: &'static str) -> impl FnOnce(rustls::Error) -> SetupError {
    move |source| SetupError::Tls { what, source }
}

/// The key an endpoint's stateless reset tokens are made with (RFC 9000 §10.3): a keyed
/// blake3 of the connection id, under a key derived from the endpoint's identity key; and the
/// key of the check its connection ids carry ([`ResetKey::cid_key`]).
///
/// quinn's default is a random key per endpoint, so an endpoint that restarts cannot reset
/// the connections of its previous life: their peers keep sending into the void until the
/// idle timeout (30 s by default), and a node whose dispatcher was killed and restarted at
/// once stays away that long. With the key derived from the identity, the restarted endpoint
/// answers such a packet with the reset token the peer holds, and the peer drops the
/// connection and dials again (quinn sends a reset only for a connection id that passes its
/// generator's check, so that key is derived the same way). The derivations are one-way
/// (`blake3::derive_key` with their own contexts), so tokens and ids tell nothing of the
/// identity key; like any reset key it must stay secret, and it does as long as the identity
/// key does.
struct ResetKey([u8; 32]);

impl ResetKey {
    /// Context string of the reset key's derivation (blake3's key derivation mode).
    const CONTEXT: &'static str = "crat/v1 2025 quic stateless reset key";
    /// Context string of the connection id check key's derivation.
    const CID_CONTEXT: &'static str = "crat/v1 2025 quic connection id key";

    fn of(identity: &SigningKey) -> Self {
        Self(blake3::derive_key(Self::CONTEXT, identity.as_bytes()))
    }

    /// The key of quinn's [`quinn_proto::HashedConnectionIdGenerator`] for this identity.
    fn cid_key(&self) -> u64 {
        let k = blake3::derive_key(Self::CID_CONTEXT, &self.0);
        u64::from_le_bytes([k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]])
    }
}

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let mac = blake3::keyed_hash(&self.0, data);
        let n = signature_out.len().min(blake3::OUT_LEN);
        signature_out[..n].copy_from_slice(&mac.as_bytes()[..n]);
    }

    fn signature_len(&self) -> usize {
        blake3::OUT_LEN
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        // blake3's `Hash` compares in constant time.
        let expected = blake3::keyed_hash(&self.0, data);
        let given: [u8; blake3::OUT_LEN] = signature
            .try_into()
            .map_err(|_| quinn::crypto::CryptoError)?;
        if expected == blake3::Hash::from_bytes(given) {
            Ok(())
        } else {
            Err(quinn::crypto::CryptoError)
        }
    }
}

/// A QUIC endpoint with an ed25519 identity: dials and accepts.
pub struct QuicTransport {
    endpoint: quinn::Endpoint,
    id: NodeId,
    local_addr: SocketAddr,
    config: QuicConfig,
    transport: Arc<quinn::TransportConfig>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    cert: rustls_pki_types::CertificateDer<'static>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
    incoming: tokio::sync::Mutex<mpsc::Receiver<QuicConnection>>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl QuicTransport {
    /// Binds a UDP socket at `addr` (port 0 picks one) with identity `key`. Must run inside
    /// a tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        key: &SigningKey,
        config: QuicConfig,
    ) -> Result<Self, TransportError> {
        let provider = provider();
        let (cert, private) = tls::self_signed(key)?;
        let transport = config.transport(config.streams_concurrent_max)?;
        let accepted = match config.streams_accepted_initial {
            Some(n) => config.transport(n.min(config.streams_concurrent_max))?,
            None => transport.clone(),
        };

        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(setup("server TLS"))?
            .with_client_cert_verifier(tls::AnyPeer::new(&provider))
            .with_single_cert(vec![cert.clone()], private.clone_key())
            .map_err(setup("server certificate"))?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        let server = QuicServerConfig::try_from(server).map_err(|source| SetupError::Quic {
            what: "server QUIC",
            source,
        })?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
        server.transport_config(accepted);

        let io = |what: &'static str| {
            move |source: std::io::Error| SetupError::Socket { what, addr, source }
        };
        let socket = std::net::UdpSocket::bind(addr).map_err(io("bind"))?;
        let state = quinn::udp::UdpSocketState::new((&socket).into()).map_err(io("socket"))?;
        // Best effort: the kernel may cap the sizes, which only costs throughput.
        let _ = state.set_recv_buffer_size((&socket).into(), config.socket_buffer_bytes);
        let _ = state.set_send_buffer_size((&socket).into(), config.socket_buffer_bytes);
        let reset_key = ResetKey::of(key);
        let cid_key = reset_key.cid_key();
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
        // Connection ids carry a check under a key of the identity too: a restarted endpoint
        // recognises its previous life's ids as its own (and resets them) while it still
        // ignores packets with made-up ids.
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        endpoint_config
            .max_udp_payload_size(config.mtu_bytes_max.clamp(1200, 65_527))
            .map_err(SetupError::UdpPayload)?;
        let endpoint = quinn::Endpoint::new(
            endpoint_config,
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(io("endpoint"))?;
        let local_addr = endpoint.local_addr().map_err(SetupError::LocalAddr)?;
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
            id: NodeId::from_key(&key.verifying_key()),
            local_addr,
            config,
            transport,
            provider,
            cert,
            key: private,
            incoming: tokio::sync::Mutex::new(rx),
            acceptor,
        })
    }

    /// The bound socket address.
    pub fn socket_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Dials `expected` at `addr` from this endpoint's socket under another identity, `key`:
    /// the connection's client certificate is `key`'s, so the peer sees `key`'s id (as
    /// [`Connection::remote_id`](crate::Connection::remote_id)) and the socket's address.
    /// Many identities then share one UDP socket and endpoint driver: how a load test
    /// simulates many nodes cheaply. Incoming connections are still accepted under the
    /// endpoint's own identity.
    pub async fn connect_as(
        &self,
        addr: &PeerAddr,
        expected: &NodeId,
        key: &SigningKey,
    ) -> Result<QuicConnection, TransportError> {
        let (cert, private) = tls::self_signed(key)?;
        self.dial(addr, expected, &cert, &private).await
    }

    async fn dial(
        &self,
        addr: &PeerAddr,
        expected: &NodeId,
        cert: &rustls_pki_types::CertificateDer<'static>,
        private: &rustls_pki_types::PrivateKeyDer<'static>,
    ) -> Result<QuicConnection, TransportError> {
        let socket: SocketAddr = addr.as_str().parse().map_err(|e| TransportError::Addr {
            addr: addr.to_string(),
            reason: format!("not ip:port ({e})"),
        })?;
        let (config, verifier) = self.client_config(*expected, cert, private)?;
        let connect_err = |reason: String| TransportError::Connect {
            addr: addr.to_string(),
            reason,
        };
        let connecting = self
            .endpoint
            .connect_with(config, socket, SERVER_NAME)
            .map_err(|e| connect_err(e.to_string()))?;
        let handshake = Duration::from_millis(self.config.handshake_timeout_ms);
        let conn = match tokio::time::timeout(handshake, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                let seen = *verifier.seen.lock();
                return Err(match seen {
                    Some(actual) if actual != *expected => TransportError::Identity {
                        expected: *expected,
                        actual,
                    },
                    _ => connect_err(e.to_string()),
                });
            }
            Err(_) => return Err(TransportError::Timeout(self.config.handshake_timeout_ms)),
        };
        QuicConnection::new(conn, Duration::from_millis(self.config.exchange_timeout_ms))
    }

    fn client_config(
        &self,
        expected: NodeId,
        cert: &rustls_pki_types::CertificateDer<'static>,
        private: &rustls_pki_types::PrivateKeyDer<'static>,
    ) -> Result<(quinn::ClientConfig, Arc<tls::PinnedServer>), TransportError> {
        let verifier = Arc::new(tls::PinnedServer::new(expected, &self.provider));
        let mut client = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(setup("client TLS"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_auth_cert(vec![cert.clone()], private.clone_key())
            .map_err(setup("client certificate"))?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        // Every dial gets a config of its own (its verifier pins one peer), so a session
        // cache could never be used by a later connection: without one, a connection does
        // not carry rustls' default 256-entry cache (tens of KiB each, measured as most of
        // the harness's memory with many connections in the dispatcher load test).
        client.resumption = rustls::client::Resumption::disabled();
        let client = QuicClientConfig::try_from(client).map_err(|source| SetupError::Quic {
            what: "client QUIC",
            source,
        })?;
        let mut client = quinn::ClientConfig::new(Arc::new(client));
        client.transport_config(self.transport.clone());
        Ok((client, verifier))
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    tx: mpsc::Sender<QuicConnection>,
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
        tokio::spawn(async move {
            let _permit = permit;
            let conn = match tokio::time::timeout(handshake_timeout, incoming).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => return tracing::debug!(error = %e, "handshake failed"),
                Err(_) => return tracing::debug!("handshake timed out"),
            };
            match QuicConnection::new(conn, exchange_timeout) {
                Ok(conn) => {
                    // Waits while the accept queue is full; the permit stays held meanwhile,
                    // so a backlog throttles new handshakes.
                    let _ = tx.send(conn).await;
                }
                Err(e) => tracing::debug!(error = %e, "peer without a usable identity"),
            }
        });
    }
}

#[async_trait]
impl Transport for QuicTransport {
    type Connection = QuicConnection;

    fn local_id(&self) -> NodeId {
        self.id
    }

    fn local_addr(&self) -> PeerAddr {
        self.local_addr.into()
    }

    async fn connect(
        &self,
        addr: &PeerAddr,
        expected: &NodeId,
    ) -> Result<QuicConnection, TransportError> {
        self.dial(addr, expected, &self.cert, &self.key).await
    }

    async fn accept(&self) -> Result<QuicConnection, TransportError> {
        self.incoming
            .lock()
            .await
            .recv()
            .await
            .ok_or(TransportError::Closed(Closed::Endpoint))
    }

    fn close(&self) {
        self.endpoint.close(VarInt::from_u32(0), b"endpoint closed");
        self.acceptor.abort();
    }
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        self.close();
    }
}

/// A QUIC connection to an authenticated peer.
#[derive(Clone)]
pub struct QuicConnection {
    conn: quinn::Connection,
    remote_id: NodeId,
    exchange_timeout: Duration,
}

impl QuicConnection {
    fn new(conn: quinn::Connection, exchange_timeout: Duration) -> Result<Self, TransportError> {
        let certs = conn
            .peer_identity()
            .and_then(|any| {
                any.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .ok_or_else(|| TransportError::Connect {
                addr: conn.remote_address().to_string(),
                reason: "peer presented no certificate".into(),
            })?;
        let remote_id = certs
            .first()
            .ok_or_else(|| TransportError::Connect {
                addr: conn.remote_address().to_string(),
                reason: "peer presented no certificate".into(),
            })
            .and_then(|c| {
                tls::peer_id(c).map_err(|e| TransportError::Connect {
                    addr: conn.remote_address().to_string(),
                    reason: e.to_string(),
                })
            })?;
        Ok(Self {
            conn,
            remote_id,
            exchange_timeout,
        })
    }

    /// The underlying quinn connection (statistics, RTT).
    pub fn quinn(&self) -> &quinn::Connection {
        &self.conn
    }
}

fn conn_err(e: quinn::ConnectionError) -> TransportError {
    match e {
        quinn::ConnectionError::TimedOut => TransportError::Closed(Closed::IdleTimeout),
        other => TransportError::Closed(Closed::Quic(other)),
    }
}

fn write_err(e: quinn::WriteError) -> TransportError {
    match e {
        quinn::WriteError::ConnectionLost(c) => conn_err(c),
        other => TransportError::Aborted(Aborted::Write(other)),
    }
}

fn read_err(e: quinn::ReadError) -> TransportError {
    match e {
        quinn::ReadError::ConnectionLost(c) => conn_err(c),
        other => TransportError::Aborted(Aborted::Read(other)),
    }
}

fn read_exact_err(e: quinn::ReadExactError, expected: usize) -> TransportError {
    match e {
        quinn::ReadExactError::FinishedEarly(got) => FrameError::Truncated {
            expected: expected as u64,
            got: got as u64,
        }
        .into(),
        quinn::ReadExactError::ReadError(e) => read_err(e),
    }
}

impl crate::stream::RecvHalf for RecvStream {
    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), TransportError> {
        let expected = buf.len();
        RecvStream::read_exact(self, buf)
            .await
            .map_err(|e| read_exact_err(e, expected))
    }

    async fn read_chunk(&mut self, max: usize) -> Result<Option<bytes::Bytes>, TransportError> {
        Ok(RecvStream::read_chunk(self, max, true)
            .await
            .map_err(read_err)?
            .map(|chunk| chunk.bytes))
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
            .map_err(|e| TransportError::Aborted(Aborted::Finish(e)))
    }
}

#[async_trait]
impl Connection for QuicConnection {
    type Incoming = QuicIncoming;

    fn remote_id(&self) -> NodeId {
        self.remote_id
    }

    fn remote_addr(&self) -> PeerAddr {
        self.conn.remote_address().into()
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

    async fn accept_exchange(&self) -> Result<QuicIncoming, TransportError> {
        let (send, recv) = self.conn.accept_bi().await.map_err(conn_err)?;
        Ok(QuicIncoming {
            send,
            recv,
            timeout: self.exchange_timeout,
        })
    }

    fn close(&self, reason: &str) {
        self.conn.close(VarInt::from_u32(0), reason.as_bytes());
    }
}

/// An exchange the peer started on a [`QuicConnection`].
pub struct QuicIncoming {
    send: SendStream,
    recv: RecvStream,
    timeout: Duration,
}

#[async_trait]
impl IncomingExchange for QuicIncoming {
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
