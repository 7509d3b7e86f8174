//! iroh over loopback (feature `iroh`; the relay tests also `iroh-relay`): `serve`/`call` and a
//! large frame over a direct path, identity pinning, and through an in-process relay: a dialler
//! that knows only the relay URL, a path that stays relayed when no direct one can exist, and
//! one that moves to a direct path once hole punching finds it.
#![cfg(feature = "iroh")]
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use crat_core::id::PeerAddr;
use crat_core::tensor::{DType, NamedTensor, Tensor};
use crat_core::wire::{ClientToNode, InferRequest, NodeToClient};
use crat_transport::iroh::{IrohConfig, IrohTransport, PathKind};
use crat_transport::{
    Connection, ConnectionExt, Conversation, FrameLimits, Transport, TransportError, serve,
};

async fn iroh_at(seed: u8, addr: SocketAddr, config: IrohConfig) -> IrohTransport {
    IrohTransport::bind(addr, &key(seed), config).await.unwrap()
}

async fn ping(conn: &impl Connection) {
    let reply: NodeToClient = conn
        .call(&ClientToNode::Ping, Conversation::ClientNode, LIMITS)
        .await
        .unwrap();
    assert_eq!(reply, NodeToClient::Pong);
}

/// The direct address of a loopback-bound transport (what a peer on the same host dials).
fn direct_addr(t: &IrohTransport) -> PeerAddr {
    let sockets = t.socket_addrs();
    assert_eq!(sockets.len(), 1, "bound to exactly one socket: {sockets:?}");
    sockets[0].into()
}

fn ticket() -> crat_core::sign::Signed<crat_core::sign::Ticket> {
    crat_core::sign::Signed::sign(
        crat_core::sign::Ticket {
            deployment: crat_core::id::DeploymentId::from_bytes([0; 16]),
            key: crat_core::id::KeyId::from_bytes([0; 16]),
            credit_budget: crat_core::money::Credits::new(1),
            issued_at_s: 0,
            expires_at_s: 1,
            nonce: [0; 16],
            audience: vec![],
            client: crat_core::id::NodeId::from_bytes([0; 32]),
            price: crat_core::pricing::TaskPrice::FREE,
        },
        &key(50),
    )
}

async fn big_echo(conn: &impl Connection, len: usize) {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
    let t = Tensor::new(DType::U8, vec![len as u64], data).unwrap();
    let req = ClientToNode::Infer(Box::new(InferRequest::new(
        crat_core::id::TaskId::from_bytes([1; 16]),
        crat_core::id::DeploymentId::from_bytes([0; 16]),
        ticket(),
        vec![NamedTensor::new("big", t.clone())],
    )));
    let reply: NodeToClient = conn
        .call(&req, Conversation::ClientNode, LIMITS)
        .await
        .unwrap();
    match reply {
        NodeToClient::Outputs { outputs, .. } => {
            assert!(outputs[0].tensor == t, "tensor changed in transit")
        }
        other => panic!("got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_address_serve_call_and_large_frame() {
    let server = iroh_at(1, loopback(), IrohConfig::default()).await;
    // The identity model holds: iroh's endpoint id is our NodeId's bytes.
    assert_eq!(server.endpoint().id().as_bytes(), id(1).as_bytes());
    assert_eq!(server.local_id(), id(1));
    let addr = direct_addr(&server);
    let _server = spawn_echo_server(server);
    let client = iroh_at(2, loopback(), IrohConfig::default()).await;

    let started = Instant::now();
    let conn = client.connect(&addr, &id(1)).await.unwrap();
    let setup = started.elapsed();
    ping(&conn).await;
    eprintln!(
        "iroh direct: connect {setup:?}, connect + first ping {:?}",
        started.elapsed()
    );
    assert_eq!(conn.remote_id(), id(1));
    assert_eq!(conn.path_kind(), PathKind::Direct);
    assert_eq!(
        conn.remote_addr(),
        addr,
        "the peer's socket on a direct path"
    );

    let started = Instant::now();
    big_echo(&conn, 16 << 20).await;
    eprintln!("iroh direct: 16 MiB echo {:?}", started.elapsed());

    // An oversized request is refused with a typed error; the connection keeps serving.
    let small = FrameLimits {
        control_bytes_max: 1 << 20,
        tensor_bytes_max: 1 << 20,
    };
    let data = vec![0u8; 2 << 20];
    let t = Tensor::new(DType::U8, vec![data.len() as u64], data).unwrap();
    let req = ClientToNode::Infer(Box::new(InferRequest::new(
        crat_core::id::TaskId::from_bytes([2; 16]),
        crat_core::id::DeploymentId::from_bytes([0; 16]),
        ticket(),
        vec![NamedTensor::new("too-big", t)],
    )));
    let err = conn
        .call::<_, NodeToClient>(&req, Conversation::ClientNode, small)
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::Frame(_)),
        "oversized locally: {err}"
    );
    ping(&conn).await;

    conn.close("done");
    let after = conn
        .call::<_, NodeToClient>(&ClientToNode::Ping, Conversation::ClientNode, LIMITS)
        .await;
    assert!(matches!(after, Err(TransportError::Closed(_))), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepting_side_sees_the_dialler() {
    let server = iroh_at(1, loopback(), IrohConfig::default()).await;
    let addr = direct_addr(&server);
    let client = iroh_at(2, loopback(), IrohConfig::default()).await;
    let client_socket = client.socket_addrs()[0];
    let expected = id(1);
    let (dialled, accepted) = tokio::join!(client.connect(&addr, &expected), server.accept());
    let (dialled, accepted) = (dialled.unwrap(), accepted.unwrap());
    assert_eq!(accepted.remote_id(), id(2));
    assert_eq!(accepted.remote_addr(), PeerAddr::from(client_socket));
    assert_eq!(accepted.path_kind(), PathKind::Direct);
    // Exchanges run both ways on one connection.
    tokio::spawn(serve(
        dialled.clone(),
        Conversation::ClientNode,
        LIMITS,
        4,
        echo,
    ));
    ping(&accepted).await;
    // Closing the endpoint ends accept().
    server.close();
    assert!(matches!(
        server.accept().await,
        Err(TransportError::Closed(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_identity_is_refused() {
    let server = iroh_at(1, loopback(), IrohConfig::default()).await;
    let addr = direct_addr(&server);
    let _server = spawn_echo_server(server);
    let client = iroh_at(2, loopback(), IrohConfig::default()).await;
    match client.connect(&addr, &id(3)).await {
        Err(TransportError::IdentityUnproven { expected, .. }) => assert_eq!(expected, id(3)),
        other => panic!("expected an identity error, got {:?}", other.err()),
    }
    // The right identity still connects afterwards.
    let conn = client.connect(&addr, &id(1)).await.unwrap();
    ping(&conn).await;
    // Nobody listening: a bounded error, not a hang.
    let fast = IrohConfig {
        handshake_timeout_ms: 1_000,
        ..IrohConfig::default()
    };
    let lonely = iroh_at(4, loopback(), fast).await;
    let started = Instant::now();
    assert!(
        lonely
            .connect(&"127.0.0.1:9".parse().unwrap(), &id(1))
            .await
            .is_err()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// An endpoint bound on both loopbacks (`bind_all`) is reached directly by a peer bound on IPv4
/// loopback only and by one on IPv6 loopback only; the same family twice, or no address, is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_on_both_loopbacks_serves_either_family() {
    // Fails rather than skips where there is no IPv6 loopback: the test needs it.
    let v6 = std::net::UdpSocket::bind("[::1]:0").unwrap_or_else(|e| {
        panic!("this test needs IPv6 loopback (::1), to bind a socket of each family: {e}")
    });
    drop(v6);
    let both: [SocketAddr; 2] = [loopback(), "[::1]:0".parse().unwrap()];
    let server = IrohTransport::bind_all(&both, &key(1), IrohConfig::default())
        .await
        .unwrap();
    let sockets = server.socket_addrs();
    assert_eq!(sockets.len(), 2, "one socket per family: {sockets:?}");
    assert!(sockets.iter().any(SocketAddr::is_ipv4) && sockets.iter().any(SocketAddr::is_ipv6));
    // Every socket in one address: each dialler uses the one of its family.
    let addr: PeerAddr = sockets
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
        .parse()
        .unwrap();
    let _server = spawn_echo_server(server);
    for (seed, at) in [(2, loopback()), (3, "[::1]:0".parse().unwrap())] {
        let client = iroh_at(seed, at, IrohConfig::default()).await;
        let conn = client.connect(&addr, &id(1)).await.unwrap();
        ping(&conn).await;
        assert_eq!(conn.path_kind(), PathKind::Direct, "from {at}");
        let remote: SocketAddr = conn.remote_addr().as_str().parse().unwrap();
        assert_eq!(remote.is_ipv4(), at.is_ipv4(), "from {at}: {remote}");
    }

    let two_v4: [SocketAddr; 2] = [loopback(), "127.0.0.2:0".parse().unwrap()];
    for bad in [&two_v4[..], &[]] {
        let err = IrohTransport::bind_all(bad, &key(4), IrohConfig::default())
            .await
            .err()
            .unwrap_or_else(|| panic!("{bad:?} bound"));
        assert!(matches!(err, TransportError::Setup(_)), "{bad:?}: {err}");
    }
}

#[cfg(feature = "iroh-relay")]
mod relay {
    use crat_transport::iroh::Relay;

    use super::*;

    fn with_relay(relay: &Relay) -> IrohConfig {
        IrohConfig {
            relay_urls: vec![relay.url().clone()],
            ..IrohConfig::default()
        }
    }

    /// The server listens on IPv6 loopback only, the client on IPv4 loopback only: no direct
    /// path can exist, so everything goes through the relay, for good.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn relay_only_when_no_direct_path_exists() {
        let relay = Relay::spawn_http(loopback()).await.unwrap();
        // Fails rather than skips where there is no IPv6 loopback: the test needs it.
        let v6 = std::net::UdpSocket::bind("[::1]:0").unwrap_or_else(|e| {
            panic!("this test needs IPv6 loopback (::1), so that the peers cannot reach each other directly: {e}")
        });
        drop(v6);
        let server = iroh_at(1, "[::1]:0".parse().unwrap(), with_relay(&relay)).await;
        assert!(
            server.online(Duration::from_secs(10)).await,
            "server on its relay"
        );
        let _server = spawn_echo_server(server);
        let client = iroh_at(2, loopback(), with_relay(&relay)).await;
        assert!(
            client.online(Duration::from_secs(10)).await,
            "client on its relay"
        );

        // The dialler knows the node's id and its relay, nothing else.
        let addr: PeerAddr = relay.url().to_string().parse().unwrap();
        let started = Instant::now();
        let conn = client.connect(&addr, &id(1)).await.unwrap();
        let setup = started.elapsed();
        assert_eq!(conn.path_kind(), PathKind::Relayed);
        ping(&conn).await;
        eprintln!(
            "iroh relay-only: connect {setup:?}, connect + first ping {:?}",
            started.elapsed()
        );
        assert_eq!(conn.remote_id(), id(1));
        assert_eq!(
            conn.remote_addr().as_str(),
            relay.url().to_string(),
            "on a relayed path the observable remote is the relay"
        );
        let started = Instant::now();
        big_echo(&conn, 4 << 20).await;
        eprintln!("iroh relay-only: 4 MiB echo {:?}", started.elapsed());
        assert!(!conn.wait_direct(Duration::from_secs(3)).await);
        assert_eq!(conn.path_kind(), PathKind::Relayed);
        ping(&conn).await;
    }

    /// Both on IPv4 loopback, the dialler given only the relay URL: the connection starts on the
    /// relay and moves to the direct path hole punching finds (over loopback, at once).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn relayed_connection_moves_to_direct_path() {
        let relay = Relay::spawn_http(loopback()).await.unwrap();
        let server = iroh_at(1, loopback(), with_relay(&relay)).await;
        assert!(server.online(Duration::from_secs(10)).await);
        let server_socket = server.socket_addrs()[0];
        let _server = spawn_echo_server(server);
        let client = iroh_at(2, loopback(), with_relay(&relay)).await;
        assert!(client.online(Duration::from_secs(10)).await);

        let addr: PeerAddr = relay.url().to_string().parse().unwrap();
        let started = Instant::now();
        let conn = client.connect(&addr, &id(1)).await.unwrap();
        let first = conn.path_kind();
        eprintln!(
            "iroh relay → direct: connect {:?}, first path {first:?}",
            started.elapsed()
        );
        ping(&conn).await;
        assert!(
            conn.wait_direct(Duration::from_secs(10)).await,
            "hole punching over loopback finds the direct path"
        );
        eprintln!("iroh relay → direct: direct after {:?}", started.elapsed());
        assert_eq!(conn.path_kind(), PathKind::Direct);
        assert_eq!(conn.remote_addr(), PeerAddr::from(server_socket));
        ping(&conn).await;
        big_echo(&conn, 4 << 20).await;
    }

    /// Over a relay the id *is* the address: a wrong id reaches nobody, and the dial ends
    /// within the handshake limit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wrong_identity_over_the_relay_reaches_nobody() {
        let relay = Relay::spawn_http(loopback()).await.unwrap();
        let server = iroh_at(1, loopback(), with_relay(&relay)).await;
        assert!(server.online(Duration::from_secs(10)).await);
        let _server = spawn_echo_server(server);
        let config = IrohConfig {
            handshake_timeout_ms: 2_000,
            ..with_relay(&relay)
        };
        let client = iroh_at(2, loopback(), config).await;
        assert!(client.online(Duration::from_secs(10)).await);
        let addr: PeerAddr = relay.url().to_string().parse().unwrap();
        let started = Instant::now();
        let err = client.connect(&addr, &id(3)).await.unwrap_err();
        eprintln!("wrong id over relay: {err} after {:?}", started.elapsed());
        assert!(
            matches!(
                err,
                TransportError::Timeout(_) | TransportError::Connect { .. }
            ),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// A node's relay need not be the dialler's: iroh connects to the relay named in the
    /// address on demand. Without any relay configured, a relay-only address is refused at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dials_through_the_peers_relay() {
        let relay = Relay::spawn_http(loopback()).await.unwrap();
        // Fails rather than skips where there is no IPv6 loopback: the test needs it.
        let v6 = std::net::UdpSocket::bind("[::1]:0").unwrap_or_else(|e| {
            panic!("this test needs IPv6 loopback (::1), so that the peers cannot reach each other directly: {e}")
        });
        drop(v6);
        let server = iroh_at(1, "[::1]:0".parse().unwrap(), with_relay(&relay)).await;
        assert!(server.online(Duration::from_secs(10)).await);
        let _server = spawn_echo_server(server);
        let addr: PeerAddr = relay.url().to_string().parse().unwrap();

        let other = Relay::spawn_http(loopback()).await.unwrap();
        let client = iroh_at(2, loopback(), with_relay(&other)).await;
        let conn = client.connect(&addr, &id(1)).await.unwrap();
        assert_eq!(conn.path_kind(), PathKind::Relayed);
        ping(&conn).await;

        let no_relay = iroh_at(3, loopback(), IrohConfig::default()).await;
        let started = Instant::now();
        let err = no_relay.connect(&addr, &id(1)).await.unwrap_err();
        assert!(matches!(err, TransportError::Addr { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_addr_names_relay_and_socket() {
        let relay = Relay::spawn_http(loopback()).await.unwrap();
        let t = iroh_at(1, loopback(), with_relay(&relay)).await;
        assert!(t.online(Duration::from_secs(10)).await);
        let text = t.local_addr().to_string();
        eprintln!("local_addr: {text}");
        assert!(text.starts_with(&relay.url().to_string()), "{text}");
        assert!(text.contains(&t.socket_addrs()[0].to_string()), "{text}");
        relay.shutdown().await.unwrap();
    }

    /// Admits only the endpoints it was given.
    struct Only(Vec<crat_core::id::NodeId>);

    impl crat_transport::iroh::RelayGate for Only {
        fn admit(
            &self,
            endpoint: crat_core::id::NodeId,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>>
        {
            let admitted = self.0.contains(&endpoint);
            Box::pin(async move {
                if admitted {
                    Ok(())
                } else {
                    Err("not a member".to_owned())
                }
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_gated_relay_serves_only_whom_its_gate_admits() {
        let (cert, key) = Relay::self_signed(vec!["127.0.0.1".into()]).unwrap();
        let relay = Relay::spawn_http_with_qad_cert(
            loopback(),
            loopback(),
            cert,
            key,
            crat_transport::iroh::RelayOptions {
                gate: Some(std::sync::Arc::new(Only(vec![id(1)]))),
                client_bytes_per_s: std::num::NonZeroU32::new(1 << 20),
            },
        )
        .await
        .unwrap();
        let member = iroh_at(1, loopback(), with_relay(&relay)).await;
        let stranger = iroh_at(2, loopback(), with_relay(&relay)).await;
        assert!(
            member.online(Duration::from_secs(10)).await,
            "a member is on the relay"
        );
        assert!(
            !stranger.online(Duration::from_secs(3)).await,
            "a stranger is refused"
        );
        relay.shutdown().await.unwrap();
    }
}
