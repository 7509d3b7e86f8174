//! Replay, end to end on loopback QUIC: tickets reused after expiry, for another deployment or
//! towards a node outside their audience; registrations presented twice; usage reported
//! twice. Raw requests, as a hostile client or node would send them.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use crat_core::id::{DeploymentId, ModelId, NodeId, PeerAddr, SdkKey, TaskId};
use crat_core::money::Credits;
use crat_core::sign::{REGISTRATION_AGE_S_MAX, Signed, Ticket, tensors_digest};
use crat_core::tensor::NamedTensor;
use crat_core::wire::{
    ClientCall, ClientToNode, DispatcherReply, DispatcherResponse, ErrorCode, Heartbeat,
    InferRequest, Lease, NodeLoad, NodeRequest, NodeToClient, ReplicaState, UsageRecord,
    UsageReport,
};
use crat_dispatcher::DispatcherConfig;
use crat_testnet::{LocalNetwork, loopback_quic};
use crat_transport::quic::{QuicConnection, QuicTransport};
use crat_transport::{ConnectionExt, Conversation, FrameLimits, Transport};
use ed25519_dalek::SigningKey;

/// A node's usage report for `tasks` (id, inputs digest) of `deployment` under ticket
/// `nonce`.
fn usage_report(
    tasks: &[(TaskId, [u8; 32])],
    deployment: DeploymentId,
    key: &SdkKey,
    nonce: [u8; 16],
) -> UsageReport {
    UsageReport {
        records: tasks
            .iter()
            .map(|(t, inputs_digest)| UsageRecord {
                task: *t,
                deployment,
                inputs_digest: *inputs_digest,
                key: key.id,
                ticket_nonce: nonce,
                input_bytes: 60_000,
                output_bytes: 40,
                compute_us: 10,
            })
            .collect(),
        acks: vec![],
    }
}

/// Sends a usage report on a node's connection and returns the dispatcher's answer.
async fn report_usage(conn: &QuicConnection, report: UsageReport) -> DispatcherReply {
    conn.call(
        &NodeRequest::Usage(report),
        Conversation::NodeDispatcher,
        FrameLimits::default(),
    )
    .await
    .unwrap()
}

async fn lease(net: &LocalNetwork, key: &SdkKey, deployment: DeploymentId) -> Lease {
    match raw_call(net, key, ClientCall::Lease { deployment }).await {
        DispatcherResponse::Lease(l) => l,
        other => panic!("no lease: {other:?}"),
    }
}

/// Sends one task from `client` with `ticket` for `deployment` to `node` and returns the
/// answer.
async fn task_at(
    net: &LocalNetwork,
    client: &RawClient,
    node: NodeId,
    ticket: &Signed<Ticket>,
    deployment: DeploymentId,
) -> NodeToClient {
    let addr = net.nodes.iter().find(|n| n.id() == node).unwrap().addr;
    let conn = client
        .transport
        .connect(&PeerAddr::from(addr), &node)
        .await
        .unwrap();
    let req = ClientToNode::Infer(Box::new(InferRequest::new(
        TaskId::from_bytes(rand::random()),
        deployment,
        ticket.clone(),
        vec![NamedTensor::new("input", input(1))],
    )));
    conn.call(&req, Conversation::ClientNode, FrameLimits::default())
        .await
        .unwrap()
}

fn ticket_rejected(r: &NodeToClient) -> bool {
    matches!(r, NodeToClient::Error(e) if e.code == ErrorCode::TicketRejected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_are_refused_after_expiry_for_another_deployment_and_at_another_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.ticket_lifetime_s = 5;
    let net = network(cfg, dir.path()).await;
    let (client, key) = client_with(&net, 1_000_000).await;
    let model = client.upload_model(TINY, |_| {}).await.unwrap();
    let a = client.deploy(model, per_request(100_000)).await.unwrap();
    let b = client.deploy(model, per_request(100_000)).await.unwrap();
    a.wait_ready(Duration::from_secs(30)).await.unwrap();
    b.wait_ready(Duration::from_secs(30)).await.unwrap();
    // The leases are this client's: their tickets name it.
    let me = RawClient::new(&net, &key).await;
    let (la, lb) = (me.lease(a.id()).await, me.lease(b.id()).await);
    let audience = |l: &Lease| -> Vec<NodeId> { l.replicas.iter().map(|r| r.node).collect() };
    let (aa, ab) = (audience(&la), audience(&lb));
    assert_eq!(
        (aa.len(), ab.len()),
        (2, 2),
        "two replicas each on three nodes"
    );

    // The control: A's ticket at one of A's replicas runs the task (and the client
    // acknowledges it, so it is charged).
    let control = task_at(&net, &me, aa[0], &la.ticket, a.id()).await;
    let NodeToClient::Receipted { task, receipt, .. } = control else {
        panic!("a valid ticket is accepted: {control:?}")
    };
    let cost = DispatcherConfig::new("x")
        .pricing
        .request_cost(TINY.len() as u64, 28 * 28 * 4)
        .unwrap();
    me.acknowledge(
        &la.ticket,
        aa[0],
        &[(task, receipt.body.inputs_digest, cost)],
    )
    .await;
    // For another deployment: a node serving both A and B refuses A's ticket for B and B's
    // for A, although both are genuine and name it.
    let both = *aa.iter().find(|n| ab.contains(n)).unwrap();
    assert!(ticket_rejected(
        &task_at(&net, &me, both, &la.ticket, b.id()).await
    ));
    assert!(ticket_rejected(
        &task_at(&net, &me, both, &lb.ticket, a.id()).await
    ));
    // Towards another node: the node outside A's audience refuses A's genuine ticket.
    let outsider = net
        .nodes
        .iter()
        .map(|n| n.id())
        .find(|n| !aa.contains(n))
        .unwrap();
    assert!(ticket_rejected(
        &task_at(&net, &me, outsider, &la.ticket, a.id()).await
    ));
    // After expiry: the same genuine ticket at the same replica is refused.
    let expires = la.ticket.body.expires_at_s;
    while now_s() < expires {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ticket_rejected(
        &task_at(&net, &me, aa[0], &la.ticket, a.id()).await
    ));

    // None of the refused tasks is charged; the SDK, renewing its lease, still serves.
    a.infer(vec![NamedTensor::new("input", input(2))])
        .await
        .unwrap();
    let ledger = net.dispatcher().ledger().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ledger.usage_totals(&a.id()).unwrap().0 < 2 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ledger.usage_totals(&a.id()).unwrap().0, 2);
    assert_eq!(ledger.usage_totals(&b.id()).unwrap().0, 0);
    net.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_is_accepted_once() {
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::start(config(dir.path()), dir.path(), vec![])
        .await
        .unwrap();
    let key = SigningKey::from_bytes(&[42; 32]);
    let first = endpoint(&key);
    let reg = registration(&key, now_s(), [1; 16]);
    let (_held, reply) = register(&net, &first, &reg).await;
    assert!(
        matches!(reply, DispatcherReply::Registered { .. }),
        "{reply:?}"
    );
    assert_eq!(net.dispatcher().online_nodes(), 1);

    // The same signed registration again within its freshness window: on a new connection of
    // the same endpoint, and from a new endpoint with the same key (another process holding
    // it). The TLS identity matches the signer each time; the nonce gives it away.
    let restarted = endpoint(&key);
    for from in [&first, &restarted] {
        let (_, reply) = register(&net, from, &reg).await;
        let (code, message) = refusal(&reply);
        assert_eq!(code, ErrorCode::Unauthenticated);
        assert!(message.contains("already used"), "{message}");
    }
    // A fresh registration by the same key is a reconnect, and welcome.
    let (_held2, reply) = register(&net, &restarted, &registration(&key, now_s(), [2; 16])).await;
    assert!(
        matches!(reply, DispatcherReply::Registered { .. }),
        "{reply:?}"
    );
    // Stale or early ones are refused whatever their nonce.
    for issued in [
        now_s() - REGISTRATION_AGE_S_MAX - 5,
        now_s() + REGISTRATION_AGE_S_MAX + 5,
    ] {
        let (_, reply) = register(&net, &first, &registration(&key, issued, [3; 16])).await;
        assert_eq!(refusal(&reply).0, ErrorCode::Unauthenticated, "{issued}");
    }
    // Another node's registration, presented by someone else: the connection's identity is
    // not the signer, so it is no registration at all (and the nonce stays unused).
    let thief = endpoint(&SigningKey::from_bytes(&[43; 32]));
    let stolen = registration(&key, now_s(), [4; 16]);
    let conn = thief
        .connect(&PeerAddr::from(net.dispatcher_addr), &net.dispatcher().id())
        .await
        .unwrap();
    let reply: DispatcherResponse = conn
        .call(
            &NodeRequest::Register(Box::new(stolen.clone())),
            Conversation::NodeDispatcher,
            FrameLimits::default(),
        )
        .await
        .unwrap();
    assert!(
        matches!(reply, DispatcherResponse::Error(ref e) if e.code == ErrorCode::BadRequest),
        "{reply:?}"
    );
    let (_held3, reply) = register(&net, &first, &stolen).await;
    assert!(
        matches!(reply, DispatcherReply::Registered { .. }),
        "{reply:?}"
    );
    net.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_registration_memory_answers_busy_and_nodes_wait() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.registrations_tracked_max = 1;
    let specs = vec![crat_testnet::NodeSpec {
        gpu: None,
        backend: backend(),
        batch_size: 1,
    }];
    let mut net = LocalNetwork::start(cfg, dir.path(), specs.clone())
        .await
        .unwrap();
    // The first node's registration fills the memory for its freshness window.
    let key = SigningKey::from_bytes(&[44; 32]);
    let (_, reply) = register(&net, &endpoint(&key), &registration(&key, now_s(), [1; 16])).await;
    assert_eq!(refusal(&reply).0, ErrorCode::Busy);
    // A real node told `Busy` keeps trying (with backoff) instead of giving up.
    net.add_node(specs[0].clone()).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(net.dispatcher().online_nodes(), 1);
    assert!(!net.nodes[1].is_stopped(), "the refused node still runs");
    net.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reported_again_is_never_charged_again() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(config(dir.path()), dir.path()).await;
    let (client, key) = client_with(&net, 1_000_000).await;
    let model = client.upload_model(TINY, |_| {}).await.unwrap();
    let d = client.deploy(model, per_request(100_000)).await.unwrap();
    d.wait_ready(Duration::from_secs(30)).await.unwrap();
    let tasks: Vec<TaskId> = (0..5).map(|_| TaskId::from_bytes(rand::random())).collect();
    for (i, t) in tasks.iter().enumerate() {
        d.infer_task(*t, vec![NamedTensor::new("input", input(i as u32))])
            .await
            .unwrap();
    }
    let ledger = net.dispatcher().ledger().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ledger.usage_totals(&d.id()).unwrap().0 < 5 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let totals = ledger.usage_totals(&d.id()).unwrap();
    let rows: Vec<_> = tasks
        .iter()
        .map(|t| ledger.usage(&d.id(), t).unwrap())
        .collect();
    assert!(rows.iter().all(|r| r.len() == 1), "{rows:?}");
    let allowance = d.info().await.unwrap().allowance_left;

    // A registered node (not the one that ran them) reports the same tasks, twice over, with
    // bigger inputs: every record is a duplicate, nothing is charged, nothing is reattributed.
    let replayer = SigningKey::from_bytes(&[45; 32]);
    let replayer_endpoint = endpoint(&replayer);
    let (conn, reply) = register(
        &net,
        &replayer_endpoint,
        &registration(&replayer, now_s(), [1; 16]),
    )
    .await;
    assert!(
        matches!(reply, DispatcherReply::Registered { .. }),
        "{reply:?}"
    );
    // The same tasks with the same inputs.
    let ran: Vec<(TaskId, [u8; 32])> = rows
        .iter()
        .map(|r| (r[0].task, r[0].inputs_digest))
        .collect();
    let report = usage_report(&ran, d.id(), &key, [0; 16]);
    for _ in 0..2 {
        assert_eq!(
            report_usage(&conn, report.clone()).await,
            DispatcherReply::UsageAck {
                accepted: 0,
                duplicates: 5,
                held: vec![],
            }
        );
    }
    assert_eq!(ledger.usage_totals(&d.id()).unwrap(), totals);
    for (t, row) in tasks.iter().zip(&rows) {
        assert_eq!(&ledger.usage(&d.id(), t).unwrap(), row);
    }
    assert_eq!(d.info().await.unwrap().allowance_left, allowance);

    // New tasks, charged to the deployment by a node that was never leased for it: under a
    // real ticket that does not name it, or under a made-up one, nothing is charged.
    let real = lease(&net, &key, d.id()).await;
    assert!(
        !real
            .ticket
            .body
            .audience
            .contains(&NodeId::from_key(&replayer.verifying_key()))
    );
    for nonce in [real.ticket.body.nonce, [9; 16]] {
        let fresh: Vec<(TaskId, [u8; 32])> = (0..4)
            .map(|_| (TaskId::from_bytes(rand::random()), [0; 32]))
            .collect();
        let fresh = usage_report(&fresh, d.id(), &key, nonce);
        assert_eq!(
            report_usage(&conn, fresh).await,
            DispatcherReply::UsageAck {
                accepted: 0,
                duplicates: 4,
                held: vec![],
            }
        );
    }
    assert_eq!(ledger.usage_totals(&d.id()).unwrap(), totals);
    assert_eq!(d.info().await.unwrap().allowance_left, allowance);
    net.shutdown();
}

/// A node speaking the protocol by hand holds the only replica; the client acknowledges three
/// answers from it. Whatever the node reports (tasks it invented, the real ones, inflated
/// sizes), the client pays what it acknowledged and no more; and work it acknowledged that
/// the node never reports (a node that died) is charged when the ticket's window ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_paid_no_more_than_its_client_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.canary.interval_ms = 0;
    cfg.dispatch.replicas = 1;
    cfg.ticket_lifetime_s = 3;
    cfg.usage_grace_s = 2;
    let net = LocalNetwork::start(cfg, dir.path(), vec![]).await.unwrap();
    let inventor = SigningKey::from_bytes(&[46; 32]);
    let inventor_id = NodeId::from_key(&inventor.verifying_key());
    let mut body = registration(&inventor, now_s(), [2; 16]).body;
    body.model_bytes_max = 1 << 30;
    let inventor_endpoint = endpoint(&inventor);
    let (conn, reply) = register(&net, &inventor_endpoint, &Signed::sign(body, &inventor)).await;
    assert!(
        matches!(reply, DispatcherReply::Registered { .. }),
        "{reply:?}"
    );
    let (client, key) = client_with(&net, 1_000_000).await;
    let model = client.upload_model(TINY, |_| {}).await.unwrap();
    let d = client.deploy(model, per_request(100_000)).await.unwrap();
    // It says it is ready, and stays alive.
    let ready = NodeRequest::ReplicaState {
        deployment: d.id(),
        model,
        state: ReplicaState::Ready,
    };
    let r: DispatcherReply = conn
        .call(&ready, Conversation::NodeDispatcher, FrameLimits::default())
        .await
        .unwrap();
    assert_eq!(r, DispatcherReply::Ok);
    let beating = {
        let conn = conn.clone();
        let deployment = d.id();
        tokio::spawn(async move {
            for seq in 1.. {
                let hb = NodeRequest::Heartbeat(Heartbeat {
                    seq,
                    load: NodeLoad::default(),
                    loaded_models: vec![],
                    ready: vec![crat_core::wire::ReadyReplica { deployment, model }],
                });
                let _ = conn
                    .call::<_, DispatcherReply>(
                        &hb,
                        Conversation::NodeDispatcher,
                        FrameLimits::default(),
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    d.wait_ready(Duration::from_secs(30)).await.unwrap();
    let cost = DispatcherConfig::new("x")
        .pricing
        .request_cost(TINY.len() as u64, 28 * 28 * 4)
        .unwrap();
    let ledger = net.dispatcher().ledger().clone();
    let allowance = d.info().await.unwrap().allowance_left;

    // The client received three answers from the node under its ticket and says so.
    let me = RawClient::new(&net, &key).await;
    let lease = me.lease(d.id()).await;
    assert_eq!(lease.ticket.body.audience, vec![inventor_id]);
    let real: Vec<(TaskId, [u8; 32], Credits)> = (0..3)
        .map(|i| {
            let inputs = [NamedTensor::new("input", input(i))];
            (
                TaskId::from_bytes(rand::random()),
                tensors_digest(&inputs),
                cost,
            )
        })
        .collect();
    me.acknowledge(&lease.ticket, inventor_id, &real).await;
    // The node reports five tasks it invented, then the three real ones, and one with its
    // input size inflated past the plan.
    let record = |task: TaskId, inputs_digest: [u8; 32], input_bytes: u64| UsageRecord {
        task,
        deployment: d.id(),
        inputs_digest,
        key: key.id,
        ticket_nonce: lease.ticket.body.nonce,
        input_bytes,
        output_bytes: 40,
        compute_us: 10,
    };
    let mut records: Vec<UsageRecord> = (0..5)
        .map(|_| {
            record(
                TaskId::from_bytes(rand::random()),
                rand::random(),
                28 * 28 * 4,
            )
        })
        .collect();
    records.extend(
        real.iter()
            .map(|(t, digest, _)| record(*t, *digest, 28 * 28 * 4)),
    );
    records.push(record(
        TaskId::from_bytes(rand::random()),
        rand::random(),
        1 << 20,
    ));
    let report = UsageReport {
        records,
        acks: vec![],
    };
    let DispatcherReply::UsageAck { accepted, held, .. } = report_usage(&conn, report).await else {
        panic!("no usage answer")
    };
    // Three records fill what the client acknowledged; the other five are held, the inflated
    // one refused.
    assert_eq!(accepted, 3);
    assert_eq!(held, vec![3, 4, 5, 6, 7]);
    let charged = ledger.usage_totals(&d.id()).unwrap().1;
    assert_eq!(charged.get(), 3 * cost.get());
    assert_eq!(
        d.info().await.unwrap().allowance_left.get(),
        allowance.get() - 3 * cost.get()
    );

    // Under a second ticket the client acknowledges two answers and the node never reports:
    // when the ticket's usage window ends, they are charged from the acknowledgement.
    let second = me.lease(d.id()).await;
    let two: Vec<(TaskId, [u8; 32], Credits)> = (0..2)
        .map(|_| (TaskId::from_bytes(rand::random()), rand::random(), cost))
        .collect();
    me.acknowledge(&second.ticket, inventor_id, &two).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while ledger.usage_totals(&d.id()).unwrap().1.get() < 5 * cost.get() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled: {:?}",
            net.dispatcher().stats()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The first ticket's window ended too: nothing more (its acknowledgement was charged in
    // full already), and the held records of both are refused from now on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        ledger.usage_totals(&d.id()).unwrap().1.get(),
        5 * cost.get()
    );
    assert_eq!(
        d.info().await.unwrap().allowance_left.get(),
        allowance.get() - 5 * cost.get()
    );
    beating.abort();
    net.shutdown();
}

/// Registers `key` as a node that takes any model, says its replica of `deployment` is ready
/// and keeps sending heartbeats; returns its connection and the heartbeat task.
async fn join_as_ready(
    net: &LocalNetwork,
    from: &QuicTransport,
    key: &SigningKey,
    nonce: [u8; 16],
    deployment: DeploymentId,
) -> (QuicConnection, tokio::task::JoinHandle<()>) {
    let mut body = registration(key, now_s(), nonce).body;
    body.model_bytes_max = 1 << 30;
    let (conn, reply) = register(net, from, &Signed::sign(body, key)).await;
    assert!(
        matches!(reply, DispatcherReply::Registered { .. }),
        "{reply:?}"
    );
    // Every deployment of these tests is of the tiny CNN.
    let model = ModelId::of_bytes(TINY);
    let ready = NodeRequest::ReplicaState {
        deployment,
        model,
        state: ReplicaState::Ready,
    };
    let r: DispatcherReply = conn
        .call(&ready, Conversation::NodeDispatcher, FrameLimits::default())
        .await
        .unwrap();
    assert_eq!(r, DispatcherReply::Ok);
    let beating = {
        let conn = conn.clone();
        tokio::spawn(async move {
            for seq in 1.. {
                let hb = NodeRequest::Heartbeat(Heartbeat {
                    seq,
                    load: NodeLoad::default(),
                    loaded_models: vec![],
                    ready: vec![crat_core::wire::ReadyReplica { deployment, model }],
                });
                let _ = conn
                    .call::<_, DispatcherReply>(
                        &hb,
                        Conversation::NodeDispatcher,
                        FrameLimits::default(),
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    (conn, beating)
}

/// A network with one hand-written node (`inventor`) serving a per-request deployment alone,
/// and a hand-written client of it, for the restart tests.
struct Inventor {
    net: LocalNetwork,
    key: SigningKey,
    id: NodeId,
    endpoint: QuicTransport,
    /// The connection of its first registration, kept open: the compute challenge sent on
    /// it would fail at once if it closed, and a failed challenge suspends the node.
    _placed: QuicConnection,
    conn: QuicConnection,
    beating: tokio::task::JoinHandle<()>,
    sdk_key: SdkKey,
    deployment: DeploymentId,
    client: RawClient,
    cost: Credits,
    allowance: Credits,
}

impl Inventor {
    async fn start(dir: &std::path::Path) -> Self {
        let mut cfg = config(dir);
        cfg.canary.interval_ms = 0;
        cfg.dispatch.replicas = 1;
        cfg.ticket_lifetime_s = 8;
        cfg.usage_grace_s = 4;
        let net = LocalNetwork::start(cfg, dir, vec![]).await.unwrap();
        let key = SigningKey::from_bytes(&[47; 32]);
        let id = NodeId::from_key(&key.verifying_key());
        let endpoint = endpoint(&key);
        // Registered before the deployment, so that its replica is placed there.
        let mut body = registration(&key, now_s(), [2; 16]).body;
        body.model_bytes_max = 1 << 30;
        let (placed, reply) = register(&net, &endpoint, &Signed::sign(body, &key)).await;
        assert!(
            matches!(reply, DispatcherReply::Registered { .. }),
            "{reply:?}"
        );
        let (sdk, sdk_key) = client_with(&net, 1_000_000).await;
        let model = sdk.upload_model(TINY, |_| {}).await.unwrap();
        let d = sdk.deploy(model, per_request(100_000)).await.unwrap();
        let (conn, beating) = join_as_ready(&net, &endpoint, &key, [3; 16], d.id()).await;
        d.wait_ready(Duration::from_secs(30)).await.unwrap();
        let cost = DispatcherConfig::new("x")
            .pricing
            .request_cost(TINY.len() as u64, 28 * 28 * 4)
            .unwrap();
        let allowance = d.info().await.unwrap().allowance_left;
        let client = RawClient::new(&net, &sdk_key).await;
        Self {
            net,
            key,
            id,
            endpoint,
            _placed: placed,
            conn,
            beating,
            sdk_key,
            deployment: d.id(),
            client,
            cost,
            allowance,
        }
    }

    /// Restarts the dispatcher; the node joins the new one (`nonce`: its registration's).
    async fn restart(&mut self, nonce: [u8; 16]) {
        self.beating.abort();
        self.net.restart_dispatcher().await.unwrap();
        let (conn, beating) =
            join_as_ready(&self.net, &self.endpoint, &self.key, nonce, self.deployment).await;
        self.conn = conn;
        self.beating = beating;
    }

    /// Credits charged for the deployment's usage so far.
    fn charged(&self) -> Credits {
        self.net
            .dispatcher()
            .ledger()
            .usage_totals(&self.deployment)
            .unwrap()
            .1
    }

    /// Waits until `credits` are charged (the settlement of a window) or fails.
    async fn wait_charged(&self, credits: Credits) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.charged() < credits {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not settled: {} of {credits} charged; {:?}",
                self.charged(),
                self.net.dispatcher().stats()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `n` answers received from the node: (task, inputs digest, cost).
    fn answers(&self, n: usize) -> Vec<(TaskId, [u8; 32], Credits)> {
        (0..n)
            .map(|_| {
                (
                    TaskId::from_bytes(rand::random()),
                    rand::random(),
                    self.cost,
                )
            })
            .collect()
    }

    /// The node's usage record of a task under ticket `nonce`.
    fn record(&self, nonce: [u8; 16], task: TaskId, inputs_digest: [u8; 32]) -> UsageRecord {
        UsageRecord {
            task,
            deployment: self.deployment,
            inputs_digest,
            key: self.sdk_key.id,
            ticket_nonce: nonce,
            input_bytes: 28 * 28 * 4,
            output_bytes: 40,
            compute_us: 10,
        }
    }

    /// Checks the ledger after everything was settled: `credits` charged, the allowance down
    /// by as much, and no acknowledgement left unsettled.
    fn assert_settled(&self, credits: Credits) {
        assert_eq!(self.charged(), credits);
        let ledger = self.net.dispatcher().ledger();
        let left = ledger
            .deployment(&self.deployment)
            .unwrap()
            .unwrap()
            .allowance_left;
        assert_eq!(left.get(), self.allowance.get() - credits.get());
        assert!(ledger.unsettled_acks(10).unwrap().is_empty());
    }
}

/// The dispatcher restarts between the client's acknowledgement and the end of the usage
/// window: the work it acknowledged and the node never reported is charged all the same,
/// exactly once (not again after another restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_work_never_reported_is_charged_once_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Inventor::start(dir.path()).await;
    let lease = n.client.lease(n.deployment).await;
    assert_eq!(lease.ticket.body.audience, vec![n.id]);
    n.client
        .acknowledge(&lease.ticket, n.id, &n.answers(2))
        .await;
    assert_eq!(n.charged(), Credits::ZERO);

    n.restart([4; 16]).await;
    let two = Credits::new(2 * n.cost.get());
    n.wait_charged(two).await;
    // Settled once: not again by the same process, nor after another restart.
    tokio::time::sleep(Duration::from_millis(500)).await;
    n.restart([5; 16]).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    n.assert_settled(two);
    n.beating.abort();
    n.net.shutdown();
}

/// The dispatcher restarts, and the node comes back unable to hold the model, so it serves
/// the deployment no more: its records under a ticket of the previous run are still charged
/// task by task, because the client acknowledged that node's work under that ticket (the
/// acknowledgement book, restored from the ledger, holds the genuine ticket). Before, they
/// were refused and the work was billed only in bulk, from the acknowledgement, when the
/// usage window ended (found by the chaos soak).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_records_are_charged_per_task_after_a_restart_by_a_node_no_longer_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Inventor::start(dir.path()).await;
    let lease = n.client.lease(n.deployment).await;
    let nonce = lease.ticket.body.nonce;
    let real = n.answers(2);
    n.client.acknowledge(&lease.ticket, n.id, &real).await;
    let proof = n.client.ack_proof(&lease.ticket, n.id, &real);

    n.beating.abort();
    n.net.restart_dispatcher().await.unwrap();
    // Back with room for no model: nothing is placed on it.
    let (conn, reply) =
        register(&n.net, &n.endpoint, &registration(&n.key, now_s(), [4; 16])).await;
    assert!(
        matches!(reply, DispatcherReply::Registered { .. }),
        "{reply:?}"
    );
    let report = UsageReport {
        records: real
            .iter()
            .map(|(t, digest, _)| n.record(nonce, *t, *digest))
            .collect(),
        acks: vec![proof],
    };
    let DispatcherReply::UsageAck { accepted, .. } = report_usage(&conn, report).await else {
        panic!("no usage answer")
    };
    assert_eq!(accepted, 2);
    let ledger = n.net.dispatcher().ledger();
    assert_eq!(
        ledger.usage_totals(&n.deployment).unwrap(),
        (2, Credits::new(2 * n.cost.get())),
        "two usage rows, one per task"
    );
    n.net.shutdown();
}

/// The dispatcher restarts after a node was paid for everything its client acknowledged of
/// a ticket: records the node invents afterwards, sent with the client's acknowledgement it
/// holds, are not paid (what was charged before the restart still counts against it), nor
/// after the window ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invented_records_are_not_paid_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Inventor::start(dir.path()).await;
    let lease = n.client.lease(n.deployment).await;
    let nonce = lease.ticket.body.nonce;
    let real = n.answers(3);
    n.client.acknowledge(&lease.ticket, n.id, &real).await;
    let proof = n.client.ack_proof(&lease.ticket, n.id, &real);
    let report = UsageReport {
        records: real
            .iter()
            .map(|(t, digest, _)| n.record(nonce, *t, *digest))
            .collect(),
        acks: vec![proof.clone()],
    };
    let DispatcherReply::UsageAck { accepted, .. } = report_usage(&n.conn, report).await else {
        panic!("no usage answer")
    };
    assert_eq!(accepted, 3);
    let three = Credits::new(3 * n.cost.get());
    assert_eq!(n.charged(), three);

    n.restart([4; 16]).await;
    let invented = UsageReport {
        records: (0..3)
            .map(|_| n.record(nonce, TaskId::from_bytes(rand::random()), rand::random()))
            .collect(),
        acks: vec![proof],
    };
    let DispatcherReply::UsageAck { accepted, held, .. } =
        report_usage(&n.conn, invented.clone()).await
    else {
        panic!("no usage answer")
    };
    assert_eq!((accepted, held), (0, vec![0, 1, 2]));
    assert_eq!(n.charged(), three);

    // After the window: nothing was left to settle, and the invented records sent again are
    // not charged either.
    let window_s = 8 + 4 + 1;
    let ends = lease.ticket.body.expires_at_s + 4 + 1;
    let wait_s = ends.saturating_sub(now_s()).min(window_s);
    tokio::time::sleep(Duration::from_secs(wait_s)).await;
    let DispatcherReply::UsageAck { accepted, .. } = report_usage(&n.conn, invented).await else {
        panic!("no usage answer")
    };
    assert_eq!(accepted, 0);
    n.assert_settled(three);
    n.beating.abort();
    n.net.shutdown();
}

/// Work served before an undeploy and acknowledged by the client is charged even when the
/// nodes that served it never report it: the allowance goes back only once the usage window
/// of the deployment's last tickets has ended (and its acknowledgements were settled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_served_before_an_undeploy_is_charged_before_the_refund() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.ticket_lifetime_s = 4;
    cfg.usage_grace_s = 1;
    cfg.canary.interval_ms = 0;
    let cost = task_cost();
    let mut net = LocalNetwork::start(cfg, dir.path(), vec![]).await.unwrap();
    // Nodes that would report their usage only after a minute: they die first.
    for ip in [[127, 0, 1, 1], [127, 0, 2, 1]] {
        let spec = crat_testnet::NodeSpec {
            gpu: None,
            backend: backend(),
            batch_size: 1,
        };
        net.add_node_on(
            spec,
            SigningKey::from_bytes(&rand::random()),
            ip.into(),
            |c| c.usage_flush_ms = 60_000,
        )
        .unwrap();
    }
    net.wait_online(2, Duration::from_secs(30)).await.unwrap();
    let (client, _) = client_with(&net, 1_000_000).await;
    let model = client.upload_model(TINY, |_| {}).await.unwrap();
    let d = client.deploy(model, per_request(100_000)).await.unwrap();
    d.wait_ready(Duration::from_secs(30)).await.unwrap();
    for i in 0..20 {
        d.infer(vec![NamedTensor::new("input", input(i))])
            .await
            .unwrap();
    }
    d.flush_acks().await.unwrap();
    for n in &net.nodes {
        n.kill();
    }
    d.undeploy().await.unwrap();
    let ledger = net.dispatcher().ledger().clone();
    assert_eq!(ledger.usage_totals(&d.id()).unwrap().1, Credits::ZERO);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let charged = ledger.usage_totals(&d.id()).unwrap().1;
        let refunded = ledger.stopping_deployments().unwrap().is_empty();
        if refunded {
            assert_eq!(charged.get(), 20 * cost, "charged before the refund");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not refunded: {:?}",
            net.dispatcher().stats()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(client.balance().await.unwrap().get(), 1_000_000 - 20 * cost);
    net.shutdown();
}

/// Registrations are limited per source address block (the address the packets come from),
/// heartbeats per node: throwaway identities from one block are refused `Busy` while another
/// block still registers, and a node beating too fast is told so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_limited_per_source_block_and_heartbeats_per_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.registration_rate_per_block = Some(crat_core::limit::RateLimit { per_s: 1, burst: 3 });
    cfg.heartbeat_rate = Some(crat_core::limit::RateLimit { per_s: 1, burst: 2 });
    let net = LocalNetwork::start(cfg, dir.path(), vec![]).await.unwrap();
    let mut registered = Vec::new();
    for _ in 0..4 {
        let key = SigningKey::from_bytes(&rand::random());
        let from = endpoint(&key);
        let (_conn, reply) =
            register(&net, &from, &registration(&key, now_s(), rand::random())).await;
        registered.push(matches!(reply, DispatcherReply::Registered { .. }));
        if !registered.last().unwrap() {
            assert_eq!(refusal(&reply).0, ErrorCode::Busy, "{reply:?}");
        }
    }
    assert_eq!(registered, [true, true, true, false]);
    // Another block is not refused for it.
    let key = SigningKey::from_bytes(&rand::random());
    let from = QuicTransport::bind("127.0.9.1:0".parse().unwrap(), &key, loopback_quic()).unwrap();
    let (conn, reply) = register(&net, &from, &registration(&key, now_s(), rand::random())).await;
    assert!(
        matches!(reply, DispatcherReply::Registered { .. }),
        "{reply:?}"
    );
    // Two heartbeats at once pass, the third is refused.
    let mut answers = Vec::new();
    for seq in 1..=3 {
        let hb = NodeRequest::Heartbeat(Heartbeat {
            seq,
            load: NodeLoad::default(),
            loaded_models: vec![],
            ready: vec![],
        });
        let answer: DispatcherReply = conn
            .call(&hb, Conversation::NodeDispatcher, FrameLimits::default())
            .await
            .unwrap();
        answers.push(answer);
    }
    assert!(matches!(answers[0], DispatcherReply::HeartbeatAck { .. }));
    assert!(matches!(answers[1], DispatcherReply::HeartbeatAck { .. }));
    assert_eq!(refusal(&answers[2]).0, ErrorCode::Busy);
    net.shutdown();
}
