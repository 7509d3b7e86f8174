//! Registration floods (issue 14, item 3), on loopback QUIC: 70,000 registrations of
//! throwaway identities from 21 address blocks, each on its own connection, while an honest
//! node re-registers. Registrations are limited per source block (the address the packets
//! come from, before any signature is checked), so most of the flood is refused `Busy` at
//! once; the registrations that pass fill the memory of fresh registrations, and from then on
//! new nodes wait, but a node the registry knows still registers again: the flood holds up
//! nobody who was already serving.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use crat_core::wire::{DispatcherReply, ErrorCode};
use crat_testnet::{LocalNetwork, loopback_quic};
use crat_transport::quic::QuicTransport;
use ed25519_dalek::SigningKey;

const FLOOD: u64 = 70_000;
const BLOCKS: u64 = 21;
/// Registrations remembered: small, so that the flood fills it.
const TRACKED: usize = 2_048;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seventy_thousand_throwaway_registrations_while_an_honest_node_re_registers() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.registrations_tracked_max = TRACKED;
    let net = LocalNetwork::start(cfg, dir.path(), vec![]).await.unwrap();

    // The honest node registers before the flood, from its own block.
    let honest = SigningKey::from_bytes(&rand::random());
    let honest_from = bind("127.0.200.1", &honest);
    let (_first, reply) = register_fresh(&net, &honest_from, &honest).await;
    assert!(
        matches!(reply, DispatcherReply::Registered { .. }),
        "{reply:?}"
    );

    // The flood: each block's endpoints dial one connection per registration. A registration
    // that passes the block's limit needs an identity of its own (the dispatcher remembers
    // each (node, nonce)), so every endpoint is fresh until its block is refused; refused
    // ones are retried from one endpoint per block (their identity is never looked at).
    let started = Instant::now();
    let (registered, busy, other) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut tasks = Vec::new();
    for block in 0..BLOCKS {
        let ip = format!("127.0.{}.1", 10 + block);
        let (net_addr, net_id) = (net.dispatcher_addr, net.dispatcher().id());
        let (registered, busy, other) = (registered.clone(), busy.clone(), other.clone());
        tasks.push(tokio::spawn(async move {
            let mut refused_from: Option<(SigningKey, QuicTransport)> = None;
            for _ in 0..FLOOD / BLOCKS {
                let (key, fresh) = match &refused_from {
                    Some((key, from)) => (key.clone(), Err(from)),
                    None => {
                        let key = SigningKey::from_bytes(&rand::random());
                        let from = bind(&ip, &key);
                        (key, Ok(from))
                    }
                };
                let from = match &fresh {
                    Ok(f) => f,
                    Err(f) => *f,
                };
                let reply = register_at(
                    from,
                    net_addr,
                    net_id,
                    &registration(&key, now_s(), rand::random()),
                )
                .await;
                match reply {
                    DispatcherReply::Registered { .. } => {
                        registered.fetch_add(1, Ordering::Relaxed);
                    }
                    DispatcherReply::Error(e) if e.code == ErrorCode::Busy => {
                        busy.fetch_add(1, Ordering::Relaxed);
                        if let Ok(from) = fresh {
                            refused_from.get_or_insert((key, from));
                        }
                    }
                    _ => {
                        other.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (registered, busy, other) = (
        registered.load(Ordering::Relaxed),
        busy.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
    );
    eprintln!(
        "{FLOOD} throwaway registrations from {BLOCKS} blocks in {:.1?}: {registered} \
         registered, {busy} busy, {other} other",
        started.elapsed()
    );
    assert_eq!(registered + busy + other, FLOOD - FLOOD % BLOCKS);
    assert_eq!(other, 0, "every refusal is Busy");
    // Each block got its burst (200) and what its rate (10/s) refilled, until the memory of
    // fresh registrations was full.
    assert!(
        registered >= TRACKED as u64 - 1 && registered < TRACKED as u64 + BLOCKS,
        "{registered}"
    );

    // The memory is full: a new node is told to wait, from any block...
    let newcomer = SigningKey::from_bytes(&rand::random());
    let (_, reply) = register_fresh(&net, &bind("127.0.201.1", &newcomer), &newcomer).await;
    let (code, message) = refusal(&reply);
    assert_eq!(code, ErrorCode::Busy);
    assert!(message.contains("registration"), "{message}");
    // ...and the honest node, known to the registry, registers again.
    let (_again, reply) = register_fresh(&net, &honest_from, &honest).await;
    assert!(
        matches!(reply, DispatcherReply::Registered { .. }),
        "{reply:?}"
    );
    net.shutdown();
}

/// An endpoint on `ip` (port chosen by the system) with identity `key`.
fn bind(ip: &str, key: &SigningKey) -> QuicTransport {
    QuicTransport::bind(format!("{ip}:0").parse().unwrap(), key, loopback_quic()).unwrap()
}

/// Registers `key`'s node afresh (new nonce) on a new connection from `from`.
async fn register_fresh(
    net: &LocalNetwork,
    from: &QuicTransport,
    key: &SigningKey,
) -> (crat_transport::quic::QuicConnection, DispatcherReply) {
    register(net, from, &registration(key, now_s(), rand::random())).await
}

/// Opens a connection from `from` to the dispatcher at `addr` and registers `reg` as its
/// first request.
async fn register_at(
    from: &QuicTransport,
    addr: std::net::SocketAddr,
    id: crat_core::id::NodeId,
    reg: &crat_core::sign::Signed<crat_core::sign::Registration>,
) -> DispatcherReply {
    use crat_transport::{ConnectionExt, Conversation, FrameLimits, Transport};
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        from.connect(&crat_core::id::PeerAddr::from(addr), &id),
    )
    .await
    .unwrap()
    .unwrap();
    conn.call(
        &crat_core::wire::NodeRequest::Register(Box::new(reg.clone())),
        Conversation::NodeDispatcher,
        FrameLimits::default(),
    )
    .await
    .unwrap()
}
