#![allow(clippy::unwrap_used)]
//! Tasks are bound to their inputs, and answers to their receipts (issue 13, items 3 and 6),
//! end to end: a real dispatcher, tract nodes, loopback QUIC and a real SQLite ledger.
//!
//! - A task is charged once per (deployment, task id, inputs digest): one task id sent with
//!   100 different inputs is 100 tasks; a node refuses a task id it served under the same
//!   ticket with other inputs, and inputs that do not hash to the request's digest.
//! - Receipts are mandatory: a node that answers without one has its answers discarded by the
//!   SDK (the task fails over and is charged once), and the dispatcher's canaries count its
//!   answers as failures, so it is excluded like a node returning junk.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use crat_core::id::{NodeId, PeerAddr, TaskId};
use crat_core::money::Credits;
use crat_core::tensor::NamedTensor;
use crat_core::wire::{ClientToNode, ErrorCode, InferRequest, NodeToClient};
use crat_dispatcher::DispatcherConfig;
use crat_testnet::{LocalNetwork, NodeSpec, loopback_quic};
use crat_transport::quic::QuicTransport;
use crat_transport::{Connection, ConnectionExt, Conversation, FrameLimits, Transport, serve};
use ed25519_dalek::SigningKey;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_task_id_with_other_inputs_is_another_task() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.canary.interval_ms = 0;
    let net = network(cfg, dir.path()).await;
    let (client, key) = client_with(&net, 1_000_000).await;
    let model = client.upload_model(TINY, |_| {}).await.unwrap();
    let d = client.deploy(model, per_request(100_000)).await.unwrap();
    d.wait_ready(Duration::from_secs(30)).await.unwrap();

    // A client that sends every request under one task id, each under a fresh lease, spread
    // over the replicas: once charged per task id, it would pay for one.
    let task = TaskId::from_bytes([42; 16]);
    let me = RawClient::new(&net, &key).await;
    let mut conns = HashMap::new();
    let mut last_lease = None;
    for i in 0..100u32 {
        let lease = me.lease(d.id()).await;
        let replica = lease.replicas[i as usize % lease.replicas.len()].clone();
        if let std::collections::hash_map::Entry::Vacant(e) = conns.entry(replica.node) {
            e.insert(
                me.transport
                    .connect(&replica.addrs[0], &replica.node)
                    .await
                    .unwrap(),
            );
        }
        let req = InferRequest::new(
            task,
            d.id(),
            lease.ticket.clone(),
            vec![NamedTensor::new("input", input(i))],
        );
        let digest = req.inputs_digest;
        let r: NodeToClient = conns[&replica.node]
            .call(
                &ClientToNode::Infer(Box::new(req)),
                Conversation::ClientNode,
                FrameLimits::default(),
            )
            .await
            .unwrap();
        assert!(
            matches!(r, NodeToClient::Receipted { .. }),
            "task {i}: {r:?}"
        );
        // It pays for what it received: acknowledged, as the SDK does.
        me.acknowledge(
            &lease.ticket,
            replica.node,
            &[(task, digest, Credits::new(task_cost()))],
        )
        .await;
        last_lease = Some((lease, replica));
    }
    let (lease, replica) = last_lease.unwrap();
    let conn = &conns[&replica.node];
    let call = |req: InferRequest| async move {
        conn.call::<_, NodeToClient>(
            &ClientToNode::Infer(Box::new(req)),
            Conversation::ClientNode,
            FrameLimits::default(),
        )
        .await
        .unwrap()
    };
    // Under the ticket it was just served with, the task id is refused with other inputs...
    let reused = InferRequest::new(
        task,
        d.id(),
        lease.ticket.clone(),
        vec![NamedTensor::new("input", input(1_000))],
    );
    let r = call(reused).await;
    assert!(
        matches!(r, NodeToClient::Error(ref e) if e.code == ErrorCode::BadRequest),
        "{r:?}"
    );
    // ...and served again with the same ones (a retry).
    let retry = InferRequest::new(
        task,
        d.id(),
        lease.ticket.clone(),
        vec![NamedTensor::new("input", input(99))],
    );
    assert!(matches!(call(retry).await, NodeToClient::Receipted { .. }));
    // Inputs that are not the ones the digest names are refused.
    let mut lying = InferRequest::new(
        TaskId::from_bytes(rand::random()),
        d.id(),
        lease.ticket.clone(),
        vec![NamedTensor::new("input", input(5))],
    );
    lying.inputs_digest = [7; 32];
    let r = call(lying).await;
    assert!(
        matches!(r, NodeToClient::Error(ref e) if e.code == ErrorCode::InvalidInput),
        "{r:?}"
    );
    // The ticket is this client's: presented by anyone else it is refused.
    let stranger = RawClient::new(&net, &key).await.transport;
    let r: NodeToClient = stranger
        .connect(&replica.addrs[0], &replica.node)
        .await
        .unwrap()
        .call(
            &ClientToNode::Infer(Box::new(InferRequest::new(
                TaskId::from_bytes(rand::random()),
                d.id(),
                lease.ticket.clone(),
                vec![NamedTensor::new("input", input(6))],
            ))),
            Conversation::ClientNode,
            FrameLimits::default(),
        )
        .await
        .unwrap();
    assert!(
        matches!(r, NodeToClient::Error(ref e) if e.code == ErrorCode::TicketRejected),
        "{r:?}"
    );

    // 100 tasks, 100 charges; the retry was charged with the first run of its inputs.
    let (count, charged) = settled_usage(&net, &d.id(), 100).await;
    assert_eq!(count, 100);
    assert_eq!(charged.get(), 100 * task_cost());
    let ledger = net.dispatcher().ledger().clone();
    assert_eq!(ledger.usage(&d.id(), &task).unwrap().len(), 100);
    net.shutdown();
}

/// Who sent a task, under which ticket.
/// What a front end saw of each task: the client, the ticket's nonce, the first input's shape.
type Seen = Arc<Mutex<Vec<(NodeId, [u8; 16], Vec<u64>)>>>;

/// Adds a real node behind a front end: an endpoint with the node's own identity at the
/// address it advertises, which hands every task to the node, passes the answer through
/// `tamper`, and records who sent each task under which ticket in `seen`.
fn add_fronted_node(
    net: &mut LocalNetwork,
    seen: Option<Seen>,
    tamper: fn(NodeToClient) -> NodeToClient,
) -> NodeId {
    let key = SigningKey::from_bytes(&rand::random());
    let id = NodeId::from_key(&key.verifying_key());
    let front = QuicTransport::bind("127.0.0.1:0".parse().unwrap(), &key, loopback_quic()).unwrap();
    let front_addr = PeerAddr::from(front.socket_addr());
    let spec = NodeSpec {
        gpu: Some("NVIDIA GeForce RTX 3090".into()),
        backend: backend(),
        batch_size: 1,
    };
    net.add_node_keyed(spec, key, move |c| c.advertise_addrs = vec![front_addr])
        .unwrap();
    let node = net.nodes.last().unwrap().node.clone();
    tokio::spawn(async move {
        while let Ok(conn) = front.accept().await {
            let (node, seen) = (node.clone(), seen.clone());
            let client = conn.remote_id();
            tokio::spawn(serve(
                conn,
                Conversation::ClientNode,
                FrameLimits::default(),
                64,
                move |req: ClientToNode| {
                    let (node, seen) = (node.clone(), seen.clone());
                    async move {
                        let ClientToNode::Infer(req) = req else {
                            return NodeToClient::Pong;
                        };
                        if let Some(seen) = &seen {
                            let shape = req
                                .inputs
                                .first()
                                .map(|t| t.tensor.shape().to_vec())
                                .unwrap_or_default();
                            seen.lock()
                                .unwrap()
                                .push((client, req.ticket.body.nonce, shape));
                        }
                        tamper(node.infer(*req, &client).await)
                    }
                },
            ));
        }
    });
    id
}

/// A network sending canaries every 50 ms, a deployment of the tiny CNN on 4 replicas, one of
/// them a fronted node whose tasks are seen.
async fn watched_by_canaries(
    dir: &std::path::Path,
) -> (LocalNetwork, Seen, crat_sdk::Deployment<QuicTransport>) {
    let mut cfg = config(dir);
    cfg.dispatch.replicas = 4;
    cfg.canary.interval_ms = 50;
    let mut net = network(cfg, dir).await;
    let seen: Seen = Arc::default();
    let watched = add_fronted_node(&mut net, Some(seen.clone()), |answer| answer);
    net.wait_online(4, Duration::from_secs(30)).await.unwrap();
    let (client, _) = client_with(&net, 1_000_000).await;
    let model = client.upload_model(TINY, |_| {}).await.unwrap();
    let d = client.deploy(model, per_request(100_000)).await.unwrap();
    d.wait_ready(Duration::from_secs(30)).await.unwrap();
    assert!(net.dispatcher().ready_replicas(&d.id()).contains(&watched));
    (net, seen, d)
}

/// Canaries come from several client identities, each holding a lease it reuses for several
/// tasks, as clients do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_come_from_several_identities_with_leases_of_several_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let (net, seen, _d) = watched_by_canaries(dir.path()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().len() < 12 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            net.dispatcher().stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = seen.lock().unwrap().clone();
    let identities: std::collections::BTreeSet<NodeId> = seen.iter().map(|(c, _, _)| *c).collect();
    assert!(identities.len() >= 2, "{identities:?}");
    assert!(!identities.contains(&net.dispatcher().id()));
    let mut per_ticket: HashMap<[u8; 16], usize> = HashMap::new();
    for (_, nonce, _) in &seen {
        *per_ticket.entry(*nonce).or_default() += 1;
    }
    assert!(per_ticket.values().any(|n| *n >= 2), "{per_ticket:?}");
    assert_eq!(net.dispatcher().stats().canaries_failed, 0);
    net.shutdown();
}

/// Canaries have the shapes the deployment's clients send: the SDK tells the dispatcher the
/// shapes (never the values) of its inputs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_are_shaped_like_the_clients_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let (net, seen, d) = watched_by_canaries(dir.path()).await;
    let generic = vec![1, 1, 28, 28];
    let wait_for = |n: usize| {
        let seen = seen.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while seen.lock().unwrap().len() < n {
                assert!(tokio::time::Instant::now() < deadline);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // Before any client told its shapes, canaries have the generic ones.
    wait_for(2).await;
    assert!(seen.lock().unwrap().iter().all(|(_, _, s)| *s == generic));

    // The client sends batches of 3; the dispatcher hears of their shape.
    let batch: Vec<f32> = (0..3)
        .flat_map(|i| input(i).to_vec::<f32>().unwrap())
        .collect();
    let batch = crat_core::tensor::Tensor::from_slice(&[3, 1, 28, 28], &batch).unwrap();
    for _ in 0..4 {
        d.infer(vec![NamedTensor::new("input", batch.clone())])
            .await
            .unwrap();
    }
    d.flush_acks().await.unwrap();
    // Canaries already under way may still be generic.
    tokio::time::sleep(Duration::from_millis(300)).await;
    seen.lock().unwrap().clear();
    wait_for(4).await;
    let shapes: Vec<Vec<u64>> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(_, _, s)| s.clone())
        .collect();
    assert!(
        shapes.iter().all(|s| *s == vec![3, 1, 28, 28]),
        "{shapes:?}"
    );
    assert_eq!(net.dispatcher().stats().canaries_failed, 0);
    net.shutdown();
}

/// A network with canaries every `canary_interval_ms`, nodes excluded after more than
/// `caught_max` failed validations, and a deployment of the tiny CNN on 4 replicas, one of
/// them a withholder: a real node behind a front end that strips the receipt from every
/// answer.
async fn with_a_withholder(
    dir: &std::path::Path,
    canary_interval_ms: u64,
    caught_max: u32,
) -> (LocalNetwork, NodeId, crat_sdk::Deployment<QuicTransport>) {
    let mut cfg = config(dir);
    cfg.dispatch.caught_max = caught_max;
    cfg.canary.interval_ms = canary_interval_ms;
    with_a_tamperer(dir, cfg, |answer| match answer {
        NodeToClient::Receipted {
            task,
            outputs,
            compute_us,
            ..
        } => NodeToClient::Outputs {
            task,
            outputs,
            compute_us,
        },
        other => other,
    })
    .await
}

/// A network of `cfg` and a deployment of the tiny CNN on 4 replicas, one of them a real node
/// behind a front end that passes its answers through `tamper`.
async fn with_a_tamperer(
    dir: &std::path::Path,
    mut cfg: DispatcherConfig,
    tamper: fn(NodeToClient) -> NodeToClient,
) -> (LocalNetwork, NodeId, crat_sdk::Deployment<QuicTransport>) {
    cfg.dispatch.replicas = 4;
    let mut net = network(cfg, dir).await;
    let tamperer = add_fronted_node(&mut net, None, tamper);
    net.wait_online(4, Duration::from_secs(30)).await.unwrap();
    let (client, _) = client_with(&net, 1_000_000).await;
    let model = client.upload_model(TINY, |_| {}).await.unwrap();
    let d = client.deploy(model, per_request(100_000)).await.unwrap();
    d.wait_ready(Duration::from_secs(30)).await.unwrap();
    assert!(net.dispatcher().ready_replicas(&d.id()).contains(&tamperer));
    (net, tamperer, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_withholding_receipts_is_failed_over_charged_once_and_excluded() {
    let dir = tempfile::tempdir().unwrap();
    let start = now_s();
    let (net, withholder, d) = with_a_withholder(dir.path(), 100, 1).await;

    // Every task gets an answer (from an honest replica when the withholder was asked
    // first), and is charged once although two nodes ran it.
    let tasks: Vec<TaskId> = (0..40)
        .map(|_| TaskId::from_bytes(rand::random()))
        .collect();
    for (i, t) in tasks.iter().enumerate() {
        d.infer_task(*t, vec![NamedTensor::new("input", input(i as u32))])
            .await
            .unwrap();
    }
    let stats = d.stats();
    assert!(stats.receipts_invalid > 0, "{stats:?}");
    assert!(stats.failovers >= stats.receipts_invalid, "{stats:?}");
    let ledger = net.dispatcher().ledger().clone();
    let (count, charged) = settled_usage(&net, &d.id(), tasks.len() as u64).await;
    assert_eq!(count, tasks.len() as u64);
    assert_eq!(charged.get(), count * task_cost());

    // The canaries see answers without receipts as failures: excluded like a cheater.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while net.dispatcher().excluded_until(&withholder).is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "withholder not excluded: {:?}",
            net.dispatcher().stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, failed) = ledger.validations(&withholder, start, u64::MAX).unwrap();
    assert!(failed >= 1, "{failed}");
    for n in net.nodes.iter().filter(|n| n.id() != withholder) {
        assert_eq!(ledger.validations(&n.id(), start, u64::MAX).unwrap().1, 0);
    }
    assert!(
        !net.dispatcher()
            .ready_replicas(&d.id())
            .contains(&withholder)
    );
    net.shutdown();
}

/// A client that gets an answer without a valid receipt tells the dispatcher, which sends the
/// node a canary at once: a withholder is caught long before the next canary sweep (here an
/// hour away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reported_withholder_gets_a_canary_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (net, withholder, d) = with_a_withholder(dir.path(), 3_600_000, 3).await;
    for i in 0..8 {
        d.infer(vec![NamedTensor::new("input", input(i))])
            .await
            .unwrap();
    }
    assert!(d.stats().receipts_invalid > 0, "{:?}", d.stats());
    // The canary's failure is recorded against the node (slashed at the round's close).
    let ledger = net.dispatcher().ledger().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while ledger.validations(&withholder, 0, u64::MAX).unwrap().1 == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed validation: {:?}",
            net.dispatcher().stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = net.dispatcher().stats();
    assert!(stats.receipt_reports >= 1, "{stats:?}");
    assert_eq!(
        stats.canaries_passed, 0,
        "only the reported node was canaried"
    );
    for n in net.nodes.iter().filter(|n| n.id() != withholder) {
        assert_eq!(ledger.validations(&n.id(), 0, u64::MAX).unwrap().1, 0);
    }
    net.shutdown();
}

/// Answers passed through the forger so far.
static FORGER_ANSWERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A node that signs its first 20 answers' receipts honestly and then forges the signature
/// (the receipt still names the answer exactly: only the signature is wrong). Its first
/// answers are all verified before use, so the forgery is met only by the sampled checks,
/// which run beside the caller once the answer is returned: it must still be caught, the node
/// failed over from then on and reported to the dispatcher, whose canary fails it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_forging_signatures_after_its_first_answers_is_caught_by_the_sampled_checks() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.dispatch.caught_max = 3;
    cfg.canary.interval_ms = 3_600_000;
    // No spot checks (whose answers are verified before use): only the sampled checks.
    cfg.validation_bps = crat_core::bps::Bps(0);
    cfg.validation_bps_suspect = crat_core::bps::Bps(0);
    let (net, forger, d) = with_a_tamperer(dir.path(), cfg, |answer| match answer {
        NodeToClient::Receipted {
            task,
            outputs,
            compute_us,
            mut receipt,
        } => {
            let n = FORGER_ANSWERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n >= 20 {
                let mut bytes = receipt.root.signature.to_bytes();
                bytes[40] ^= 1;
                receipt.root.signature = ed25519_dalek::Signature::from_bytes(&bytes);
            }
            NodeToClient::Receipted {
                task,
                outputs,
                compute_us,
                receipt,
            }
        }
        other => other,
    })
    .await;

    // A quarter of the tasks go to the forger: about 280 forged answers, one in 16 of them
    // checked (missing them all: (15/16)^280 < 1e-7). Every task is answered.
    for i in 0..1_200 {
        d.infer(vec![NamedTensor::new("input", input(i))])
            .await
            .unwrap();
    }
    let stats = d.stats();
    assert!(stats.receipts_invalid > 0, "forgery not caught: {stats:?}");
    // Once caught, every answer of the forger is checked before use, and fails over.
    assert!(
        stats.failovers + 1 >= stats.receipts_invalid,
        "answers of a caught forger were used: {stats:?}"
    );
    assert!(
        FORGER_ANSWERS.load(std::sync::atomic::Ordering::Relaxed) > 200,
        "the forger got too few tasks"
    );
    // The client reported it: the dispatcher's canary fails it (the next sweep is an hour
    // away).
    let ledger = net.dispatcher().ledger().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while ledger.validations(&forger, 0, u64::MAX).unwrap().1 == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed validation: {:?}",
            net.dispatcher().stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    net.shutdown();
}
