//! The transports a [`LocalNetwork`](crate::LocalNetwork) runs on, and where each role's
//! endpoint listens: QUIC ([`QuicTransport`], every endpoint on IPv4 loopback), or iroh
//! ([`IrohTransport`]) with an in-process relay ([`IrohNet`]) and either paths between nodes and
//! clients that are direct ([`IrohPaths::Direct`]) or that can only go through the relay
//! ([`IrohPaths::Relayed`]).
//!
//! | role | QUIC | iroh, direct | iroh, relayed only |
//! |---|---|---|---|
//! | dispatcher | `127.0.0.1` | `127.0.0.1`, no relay | `127.0.0.1` and `[::1]`, no relay |
//! | node | its IPv4 loopback address | the same, with the relay | the same, with the relay |
//! | client, canary | `127.0.0.1` | `127.0.0.1`, with the relay | `[::1]` only, with the relay |
//!
//! The dispatcher uses no relay, as `crat dispatcher` on iroh: every peer reaches it directly
//! (it refuses registrations that arrive through a relay, and keys operator limits by the
//! addresses it sees). In a relayed-only network nodes and clients are on different IP
//! versions of loopback: neither can send a packet to the other, so hole punching finds no
//! path and everything between them goes through the relay, while both reach the dispatcher,
//! which listens on both. Nodes stay on IPv4 so that nodes on `127.0.N.1` are of different
//! operators (address blocks), as spot checks need.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crat_core::id::PeerAddr;
use crat_dispatcher::DispatcherError;
use crat_transport::Transport;
use crat_transport::iroh::{IrohConfig, IrohTransport, Relay};
use crat_transport::quic::QuicTransport;
use ed25519_dalek::SigningKey;

use crate::network::loopback_quic;

/// A transport a [`LocalNetwork`](crate::LocalNetwork) can run on: how the endpoint of each
/// role (dispatcher, node, client) is bound. See the [module docs](self) for where each listens.
pub trait LocalTransport: Transport + Sized + 'static {
    /// What the endpoints of one network share: nothing on QUIC, the relay on iroh.
    type Setup: Send + Sync + 'static;

    /// Where the dispatcher binds at start (ports 0); a restarted dispatcher binds the sockets
    /// the first one got.
    fn dispatcher_binds(setup: &Self::Setup) -> Vec<SocketAddr>;

    /// Binds the dispatcher's endpoint on `addrs` with identity `key`.
    fn bind_dispatcher(
        setup: &Self::Setup,
        addrs: &[SocketAddr],
        key: &SigningKey,
    ) -> impl Future<Output = Result<Self, DispatcherError>> + Send;

    /// Binds a node's endpoint on `ip` (port chosen by the system) with identity `key`, and
    /// returns it with the address the node claims when it registers.
    fn bind_node(
        setup: &Self::Setup,
        ip: IpAddr,
        key: &SigningKey,
    ) -> impl Future<Output = Result<(Self, PeerAddr), DispatcherError>> + Send;

    /// Binds an endpoint where this network's clients are (an SDK client, a canary identity of
    /// the dispatcher) with identity `key`.
    fn bind_client(
        setup: &Self::Setup,
        key: &SigningKey,
    ) -> impl Future<Output = Result<Self, DispatcherError>> + Send;

    /// The UDP sockets the endpoint is bound to.
    fn sockets(&self) -> Vec<SocketAddr>;

    /// The address peers dial to reach this endpoint directly (all of its sockets, where the
    /// transport takes more than one address).
    fn dial_addr(&self) -> PeerAddr;
}

fn v4_loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

fn v6_loopback() -> SocketAddr {
    SocketAddr::from((Ipv6Addr::LOCALHOST, 0))
}

/// A QUIC endpoint with [`loopback_quic`] settings on `addr`.
pub(crate) fn bind_quic(
    addr: SocketAddr,
    key: &SigningKey,
) -> Result<QuicTransport, DispatcherError> {
    Ok(QuicTransport::bind(addr, key, loopback_quic())?)
}

impl LocalTransport for QuicTransport {
    type Setup = ();

    fn dispatcher_binds(_: &()) -> Vec<SocketAddr> {
        vec![v4_loopback()]
    }

    fn bind_dispatcher(
        _: &(),
        addrs: &[SocketAddr],
        key: &SigningKey,
    ) -> impl Future<Output = Result<Self, DispatcherError>> + Send {
        let bound = match addrs {
            [addr] => bind_quic(*addr, key),
            _ => Err(DispatcherError::Config(format!(
                "a QUIC endpoint binds one address, not {addrs:?}"
            ))),
        };
        std::future::ready(bound)
    }

    fn bind_node(
        _: &(),
        ip: IpAddr,
        key: &SigningKey,
    ) -> impl Future<Output = Result<(Self, PeerAddr), DispatcherError>> + Send {
        std::future::ready(bind_quic(SocketAddr::new(ip, 0), key).map(|t| {
            let addr = PeerAddr::from(t.socket_addr());
            (t, addr)
        }))
    }

    fn bind_client(
        _: &(),
        key: &SigningKey,
    ) -> impl Future<Output = Result<Self, DispatcherError>> + Send {
        std::future::ready(bind_quic(v4_loopback(), key))
    }

    fn sockets(&self) -> Vec<SocketAddr> {
        vec![self.socket_addr()]
    }

    fn dial_addr(&self) -> PeerAddr {
        PeerAddr::from(self.socket_addr())
    }
}

/// Which paths nodes and clients of an iroh [`LocalNetwork`](crate::LocalNetwork) have
/// between them (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrohPaths {
    /// Everyone on IPv4 loopback: node↔client connections take the direct path (the relay is
    /// configured, as a fallback nobody needs).
    Direct,
    /// Nodes on IPv4 loopback, clients and canaries on IPv6 loopback, the dispatcher on both:
    /// node↔client connections can only go through the relay. Needs IPv6 loopback (`::1`).
    Relayed,
}

/// How long an iroh node or client waits for its home relay before the network gives up.
const RELAY_WAIT: Duration = Duration::from_secs(10);

/// What the endpoints of an iroh network share: a plain-HTTP relay on IPv4 loopback, in this
/// process (stopped when dropped), and which paths nodes and clients get.
pub struct IrohNet {
    relay: Relay,
    paths: IrohPaths,
}

impl IrohNet {
    /// Starts the relay. [`IrohPaths::Relayed`] fails here, saying why, where this machine has
    /// no IPv6 loopback.
    pub async fn start(paths: IrohPaths) -> Result<Self, DispatcherError> {
        if paths == IrohPaths::Relayed {
            std::net::UdpSocket::bind(v6_loopback()).map_err(|e| {
                DispatcherError::Config(format!(
                    "a relayed-only network needs IPv6 loopback (::1) for its clients, so that \
                     they cannot reach the nodes on IPv4 loopback directly: {e}"
                ))
            })?;
        }
        let relay = Relay::spawn_http(v4_loopback()).await?;
        Ok(Self { relay, paths })
    }

    /// The relay.
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// Which paths nodes and clients get.
    pub fn paths(&self) -> IrohPaths {
        self.paths
    }

    /// The settings of an endpoint that uses the relay: [`loopback_iroh`] with it.
    pub fn peer_config(&self) -> IrohConfig {
        IrohConfig {
            relay_urls: vec![self.relay.url().clone()],
            ..loopback_iroh()
        }
    }
}

/// iroh settings for loopback, as [`loopback_quic`] for QUIC: a short idle timeout so a killed
/// peer is noticed quickly, keep-alives within it; no relay.
pub fn loopback_iroh() -> IrohConfig {
    IrohConfig {
        idle_timeout_ms: 3_000,
        keep_alive_interval_ms: 1_000,
        ..IrohConfig::default()
    }
}

/// `transport` once it reached its home relay (an error after [`RELAY_WAIT`]).
async fn on_relay(transport: IrohTransport, who: &str) -> Result<IrohTransport, DispatcherError> {
    if transport.online(RELAY_WAIT).await {
        Ok(transport)
    } else {
        Err(DispatcherError::Config(format!(
            "{who} endpoint did not reach the relay within {RELAY_WAIT:?}"
        )))
    }
}

impl LocalTransport for IrohTransport {
    type Setup = IrohNet;

    fn dispatcher_binds(net: &IrohNet) -> Vec<SocketAddr> {
        match net.paths {
            IrohPaths::Direct => vec![v4_loopback()],
            IrohPaths::Relayed => vec![v4_loopback(), v6_loopback()],
        }
    }

    async fn bind_dispatcher(
        _: &IrohNet,
        addrs: &[SocketAddr],
        key: &SigningKey,
    ) -> Result<Self, DispatcherError> {
        Ok(IrohTransport::bind_all(addrs, key, loopback_iroh()).await?)
    }

    async fn bind_node(
        net: &IrohNet,
        ip: IpAddr,
        key: &SigningKey,
    ) -> Result<(Self, PeerAddr), DispatcherError> {
        if !ip.is_ipv4() {
            return Err(DispatcherError::Config(format!(
                "nodes of an iroh network listen on IPv4 loopback (IPv6 is the clients' in a \
                 relayed-only one), not {ip}"
            )));
        }
        let transport = IrohTransport::bind(SocketAddr::new(ip, 0), key, net.peer_config()).await?;
        let transport = on_relay(transport, "a node's").await?;
        // Its relay and its socket, as `crat node` on iroh claims.
        let addr = transport.local_addr();
        Ok((transport, addr))
    }

    async fn bind_client(net: &IrohNet, key: &SigningKey) -> Result<Self, DispatcherError> {
        let at = match net.paths {
            IrohPaths::Direct => v4_loopback(),
            IrohPaths::Relayed => v6_loopback(),
        };
        let transport = IrohTransport::bind(at, key, net.peer_config()).await?;
        on_relay(transport, "a client's").await
    }

    fn sockets(&self) -> Vec<SocketAddr> {
        self.socket_addrs()
    }

    fn dial_addr(&self) -> PeerAddr {
        let text = self
            .socket_addrs()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        PeerAddr::new(text).unwrap_or_else(|_| self.local_addr())
    }
}
