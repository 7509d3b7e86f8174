//! QUIC over loopback: pinned handshakes, 1,000 concurrent exchanges on one connection, a
//! 64 MiB tensor message, peers that vanish or stall surfacing as bounded errors, and a server
//! restarted at its address resetting its previous life's connections.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use crat_core::tensor::{DType, NamedTensor, Tensor};
use crat_core::wire::{ClientToNode, InferRequest, NodeToClient};
use crat_transport::quic::QuicConfig;
use crat_transport::{
    Connection, ConnectionExt, Conversation, IncomingExchange, Transport, TransportError, serve,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_handshake_and_wrong_identity() {
    let (server, client) = (quic(1), quic(2));
    let addr = server.local_addr();
    let accept = tokio::spawn(async move {
        let conn = server.accept().await.unwrap();
        (conn.remote_id(), server)
    });
    let conn = client.connect(&addr, &id(1)).await.unwrap();
    assert_eq!(conn.remote_id(), id(1));
    let (seen_by_server, _server) = accept.await.unwrap();
    assert_eq!(seen_by_server, id(2));
    // Expecting anyone else fails the handshake, naming who answered.
    match client.connect(&addr, &id(3)).await {
        Err(TransportError::Identity { expected, actual }) => {
            assert_eq!((expected, actual), (id(3), id(1)));
        }
        other => panic!("expected an identity error, got {:?}", other.err()),
    }
    // Nobody listening: a bounded connect error, not a hang.
    let fast = QuicConfig {
        handshake_timeout_ms: 1_000,
        ..QuicConfig::default()
    };
    let lonely = quic_with(4, fast);
    let dead_addr = "127.0.0.1:9".parse().unwrap();
    let started = Instant::now();
    assert!(lonely.connect(&dead_addr, &id(1)).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// `connect_as`: several identities dial from one endpoint (one UDP socket); the server sees
/// each connection under its own key, from the same address, and the endpoint's own identity
/// still dials as itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_share_one_endpoint_with_connect_as() {
    let (server, client) = (quic(1), quic(2));
    let addr = server.local_addr();
    let accept = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..4 {
            let conn = server.accept().await.unwrap();
            seen.push((conn.remote_id(), conn.remote_addr()));
        }
        (seen, server)
    });
    let mut conns = Vec::new();
    for seed in [5, 6, 7] {
        let conn = client.connect_as(&addr, &id(1), &key(seed)).await.unwrap();
        assert_eq!(conn.remote_id(), id(1));
        conns.push(conn);
    }
    conns.push(client.connect(&addr, &id(1)).await.unwrap());
    let (seen, _server) = accept.await.unwrap();
    let mut ids: Vec<_> = seen.iter().map(|(id, _)| *id).collect();
    let mut want = vec![id(5), id(6), id(7), id(2)];
    ids.sort();
    want.sort();
    assert_eq!(ids, want);
    assert!(seen.iter().all(|(_, a)| *a == client.local_addr()));
    // Another identity, the wrong dispatcher: still refused by the pin.
    assert!(matches!(
        client.connect_as(&addr, &id(3), &key(8)).await,
        Err(TransportError::Identity { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_exchanges_on_one_connection() {
    let server = quic(1);
    let addr = server.local_addr();
    let _server = spawn_echo_server(server);
    let client = quic(2);
    let conn = client.connect(&addr, &id(1)).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..1_000u32 {
        let conn = conn.clone();
        tasks.push(tokio::spawn(async move {
            let t = Tensor::from_slice(&[1], &[i as f32]).unwrap();
            let req = ClientToNode::Infer(Box::new(InferRequest::new(
                crat_core::id::TaskId::from_bytes([0; 16]),
                crat_core::id::DeploymentId::from_bytes([0; 16]),
                ticket(),
                vec![NamedTensor::new("i", t.clone())],
            )));
            let reply: NodeToClient = conn.call(&req, Conversation::ClientNode, LIMITS).await?;
            match reply {
                NodeToClient::Outputs { outputs, .. } if outputs[0].tensor == t => Ok(()),
                other => panic!("exchange {i} got {other:?}"),
            }
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let r: Result<(), TransportError> = t.await.unwrap();
        r.unwrap();
        ok += 1;
    }
    assert_eq!(ok, 1_000);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_tensor_arrives_intact() {
    let server = quic(1);
    let addr = server.local_addr();
    let _server = spawn_echo_server(server);
    let client = quic(2);
    let conn = client.connect(&addr, &id(1)).await.unwrap();
    let len = 64usize << 20;
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
            assert_eq!(outputs.len(), 1);
            assert!(outputs[0].tensor == t, "64 MiB tensor changed in transit");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_closing_mid_exchange_is_an_error() {
    let server = quic(1);
    let addr = server.local_addr();
    let client = quic(2);
    let (read_tx, read_rx) = tokio::sync::oneshot::channel();
    let server_task = tokio::spawn(async move {
        let conn = server.accept().await.unwrap();
        let mut incoming = conn.accept_exchange().await.unwrap();
        incoming.read_request(1 << 20).await.unwrap();
        read_tx.send(()).unwrap();
        // Goes away without answering.
        server.close();
    });
    let conn = client.connect(&addr, &id(1)).await.unwrap();
    let call = tokio::spawn(async move {
        conn.call::<_, NodeToClient>(&ClientToNode::Ping, Conversation::ClientNode, LIMITS)
            .await
    });
    read_rx.await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("bounded")
        .unwrap();
    assert!(
        matches!(result, Err(TransportError::Closed(_))),
        "{result:?}"
    );
    server_task.await.unwrap();
}

#[test]
fn peer_vanishing_silently_is_an_error_within_the_idle_timeout() {
    // The server runs on its own runtime, which is torn down without closing anything: no
    // close frame is ever sent, as when a machine loses power.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let config = QuicConfig {
        idle_timeout_ms: 1_000,
        keep_alive_interval_ms: 300,
        ..QuicConfig::default()
    };
    let server = server_rt.block_on(async { quic_with(1, config.clone()) });
    let addr = server.local_addr();
    let (read_tx, read_rx) = std::sync::mpsc::channel();
    let server = Arc::new(server);
    let s = server.clone();
    server_rt.spawn(async move {
        let conn = s.accept().await.unwrap();
        let mut incoming = conn.accept_exchange().await.unwrap();
        incoming.read_request(1 << 20).await.unwrap();
        read_tx.send(()).unwrap();
        std::future::pending::<()>().await;
    });

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    client_rt.block_on(async move {
        let client = quic_with(2, config);
        let conn = client.connect(&addr, &id(1)).await.unwrap();
        let call = tokio::spawn(async move {
            conn.call::<_, NodeToClient>(&ClientToNode::Ping, Conversation::ClientNode, LIMITS)
                .await
        });
        tokio::task::spawn_blocking(move || read_rx.recv().unwrap())
            .await
            .unwrap();
        server_rt.shutdown_background();
        std::mem::forget(server);
        let started = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("bounded by the idle timeout")
            .unwrap();
        assert!(
            matches!(result, Err(TransportError::Closed(_))),
            "{result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_peer_hits_the_exchange_timeout() {
    let config = QuicConfig {
        exchange_timeout_ms: 300,
        ..QuicConfig::default()
    };
    let server = quic_with(1, config.clone());
    let addr = server.local_addr();
    let _server = tokio::spawn(async move {
        let conn = server.accept().await.unwrap();
        tokio::spawn(serve(
            conn,
            Conversation::ClientNode,
            LIMITS,
            4,
            |_: ClientToNode| async {
                std::future::pending::<()>().await;
                NodeToClient::Pong
            },
        ));
        std::future::pending::<()>().await;
    });
    let client = quic_with(2, config);
    let conn = client.connect(&addr, &id(1)).await.unwrap();
    let result = conn
        .call::<_, NodeToClient>(&ClientToNode::Ping, Conversation::ClientNode, LIMITS)
        .await;
    assert!(
        matches!(result, Err(TransportError::Timeout(300))),
        "{result:?}"
    );
}

/// A server whose handler counts the exchanges `hold` picks as they reach it and holds each
/// until `release` is notified (the others are answered at once); it hands every connection
/// it accepts to `accepted` too.
struct HeldServer {
    started: Arc<std::sync::atomic::AtomicUsize>,
    release: Arc<tokio::sync::Notify>,
    accepted: tokio::sync::mpsc::Receiver<crat_transport::quic::QuicConnection>,
    _task: tokio::task::JoinHandle<()>,
}

impl HeldServer {
    fn start(server: crat_transport::quic::QuicTransport, hold: fn(&ClientToNode) -> bool) -> Self {
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let release = Arc::new(tokio::sync::Notify::new());
        let (accepted_tx, accepted) = tokio::sync::mpsc::channel(4);
        let task = {
            let (started, release) = (started.clone(), release.clone());
            tokio::spawn(async move {
                while let Ok(conn) = server.accept().await {
                    let _ = accepted_tx.try_send(conn.clone());
                    let (started, release) = (started.clone(), release.clone());
                    tokio::spawn(serve(
                        conn,
                        Conversation::ClientNode,
                        LIMITS,
                        64,
                        move |req: ClientToNode| {
                            let (started, release) = (started.clone(), release.clone());
                            async move {
                                if hold(&req) {
                                    started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                    release.notified().await;
                                }
                                echo(req).await
                            }
                        },
                    ));
                }
            })
        };
        Self {
            started,
            release,
            accepted,
            _task: task,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_the_limit_are_held_and_the_connection_keeps_serving() {
    // The server lets a peer have 4 exchanges open at once and serves up to 64 at a time, so
    // the stream limit, not the handler limit, is what holds the peer back.
    let config = QuicConfig {
        streams_concurrent_max: 4,
        ..QuicConfig::default()
    };
    let server = quic_with(1, config);
    let addr = server.local_addr();
    // Inference exchanges are held; pings are answered at once.
    let held = HeldServer::start(server, |req| matches!(req, ClientToNode::Infer(_)));
    let (started, release) = (held.started.clone(), held.release.clone());
    let client = quic(2);
    let conn = client.connect(&addr, &id(1)).await.unwrap();
    let mut calls = Vec::new();
    for i in 0..12u8 {
        let conn = conn.clone();
        calls.push(tokio::spawn(async move {
            let req = ClientToNode::Infer(Box::new(InferRequest::new(
                crat_core::id::TaskId::from_bytes([i; 16]),
                crat_core::id::DeploymentId::from_bytes([0; 16]),
                ticket(),
                vec![],
            )));
            conn.call::<_, NodeToClient>(&req, Conversation::ClientNode, LIMITS)
                .await
        }));
    }
    let count = || started.load(std::sync::atomic::Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    while count() < 4 {
        assert!(Instant::now() < deadline, "4 exchanges reach the server");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The other 8 are held by the peer's stream credit: they never reach the server.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(), 4);
    // The connection itself is not stuck: releasing the held exchanges lets the rest through,
    // 4 at a time, and every call gets its answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !calls.iter().all(|c| c.is_finished()) {
        assert!(Instant::now() < deadline, "held exchanges complete");
        release.notify_waiters();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(count() <= 12);
    }
    for (i, c) in calls.into_iter().enumerate() {
        match c.await.unwrap().unwrap() {
            NodeToClient::Outputs { task, .. } => {
                assert_eq!(task, crat_core::id::TaskId::from_bytes([i as u8; 16]));
            }
            other => panic!("call {i}: {other:?}"),
        }
    }
    assert_eq!(count(), 12);
    let pong: NodeToClient = conn
        .call(&ClientToNode::Ping, Conversation::ClientNode, LIMITS)
        .await
        .unwrap();
    assert_eq!(pong, NodeToClient::Pong);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_connections_start_at_the_initial_limit_until_the_server_raises_it() {
    // A dispatcher's setting: peers start with 2 exchanges at once; the server raises one
    // connection's limit to 6 once it knows the peer needs more.
    let config = QuicConfig {
        streams_concurrent_max: 16,
        streams_accepted_initial: Some(2),
        ..QuicConfig::default()
    };
    let server = quic_with(1, config);
    let addr = server.local_addr();
    let mut held = HeldServer::start(server, |_| true);
    let (started, release) = (held.started.clone(), held.release.clone());
    let client = quic(2);
    let conn = client.connect(&addr, &id(1)).await.unwrap();
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let conn = conn.clone();
            tokio::spawn(async move {
                conn.call::<_, NodeToClient>(&ClientToNode::Ping, Conversation::ClientNode, LIMITS)
                    .await
            })
        })
        .collect();
    let served = held.accepted.recv().await.unwrap();
    let count = || started.load(std::sync::atomic::Ordering::SeqCst);
    let reach = |n: usize, what: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        while count() < n {
            assert!(Instant::now() < deadline, "{what}: {} of {n}", count());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    reach(2, "the initial limit's exchanges reach the server").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(), 2, "the others wait for stream credit");
    served.allow_exchanges(6);
    reach(6, "raised, 4 more reach the server").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(), 6, "no more than the raised limit");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !calls.iter().all(|c| c.is_finished()) {
        assert!(Instant::now() < deadline, "held exchanges complete");
        release.notify_waiters();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap(), NodeToClient::Pong);
    }
    assert_eq!(count(), 8);
}

/// A UDP relay at a fixed address in front of a server whose address can change: to a client,
/// a server process killed (its packets stop) and started again at the same address.
struct Relay {
    /// Where clients send.
    addr: std::net::SocketAddr,
    /// The server packets are relayed to; only its packets are relayed back.
    target: Arc<parking_lot::Mutex<std::net::SocketAddr>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Self {
        let front = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
        let back = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
        let addr = front.local_addr().unwrap();
        let target = Arc::new(parking_lot::Mutex::new(target));
        let to = target.clone();
        let task = tokio::spawn(async move {
            let (mut a, mut b) = (vec![0u8; 65_536], vec![0u8; 65_536]);
            let mut client = None;
            loop {
                tokio::select! {
                    Ok((n, from)) = front.recv_from(&mut a) => {
                        client = Some(from);
                        let server = *to.lock();
                        let _ = back.send_to(&a[..n], server).await;
                    }
                    Ok((n, from)) = back.recv_from(&mut b) => {
                        if let Some(c) = client.filter(|_| from == *to.lock()) {
                            let _ = front.send_to(&b[..n], c).await;
                        }
                    }
                }
            }
        });
        Self { addr, target, task }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A client's connection, through a [`Relay`], to a server that dies silently and is replaced
/// at the same address by one of `restarted_key`: how a ping on the old connection ends (an
/// error, or `None` if it hangs for 3 s), and after how long.
async fn ping_after_restart(restarted_key: u8) -> (Option<TransportError>, Duration) {
    let first = quic(1);
    let relay = Relay::start(first.socket_addr()).await;
    let _first = spawn_echo_server(first);
    let client = quic(2);
    let conn = client.connect(&relay.addr.into(), &id(1)).await.unwrap();
    let ping =
        || conn.call::<_, NodeToClient>(&ClientToNode::Ping, Conversation::ClientNode, LIMITS);
    assert!(matches!(ping().await, Ok(NodeToClient::Pong)));
    // The first server's packets are dropped from now on (it is not closed: no close frame).
    let restarted = quic(restarted_key);
    *relay.target.lock() = restarted.socket_addr();
    let _restarted = spawn_echo_server(restarted);
    let started = Instant::now();
    let error = match tokio::time::timeout(Duration::from_secs(3), ping()).await {
        Ok(Ok(answer)) => panic!("the dead server answered: {answer:?}"),
        Ok(Err(e)) => Some(e),
        Err(_) => None,
    };
    (error, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restarted_with_its_key_resets_its_old_connections_at_once() {
    // The idle timeout is 30 s; the restarted server's stateless reset (its reset key is
    // derived from its identity) ends the connection at its first packet.
    let (error, took) = ping_after_restart(1).await;
    let error = error.expect("the old connection is reset");
    assert!(took < Duration::from_secs(2), "reset after {took:?}");
    assert!(error.to_string().contains("reset"), "{error}");
    // Another identity at that address cannot reset it (its tokens are its own): the
    // connection would hang until the idle timeout.
    let (error, _) = ping_after_restart(3).await;
    assert!(error.is_none(), "reset by a stranger: {error:?}");
}
