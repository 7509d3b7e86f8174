//! The node runtime against a scripted fake dispatcher, over the in-memory transport, with
//! the real tract backend and the tiny CNN: registration, model fetch, readiness, serving
//! tasks with offline ticket checks, batching, typed errors and usage reports; and a node
//! whose dispatcher keeps going away coming back at once each time.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use crat_backend::InferenceBackend;
use crat_backend::tract::TractBackend;
use crat_core::hardware::CpuInfo;
use crat_core::id::{DeploymentId, NodeId, TaskId};
use crat_core::sign::{Signed, Ticket};
use crat_core::tensor::{NamedTensor, Tensor};
use crat_core::wire::{
    ClientToNode, Demand, DispatcherReply, ErrorCode, InferRequest, NodeRequest, NodeToClient,
    ReplicaState,
};
use crat_node::batch::BatchConfig;
use crat_node::cache::{ModelCache, ModelStore};
use crat_node::probe::{FakeProbe, HardwareProbe};
use crat_node::runtime::{BatchSizing, Node, NodeConfig, NodeParts};
use crat_transport::memory::MemoryNetwork;
use crat_transport::{Connection, ConnectionExt, Conversation, FrameLimits, Transport, serve};
use ed25519_dalek::SigningKey;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_registers_fetches_serves_and_reports_usage() {
    let net = MemoryNetwork::new();
    let dkey = dispatcher_key();
    let did = NodeId::from_key(&dkey.verifying_key());
    let dispatcher = net.bind("mem:dispatcher", did).unwrap();
    let nkey = SigningKey::from_bytes(&[2; 32]);
    let nid = NodeId::from_key(&nkey.verifying_key());
    let node_transport = net.bind("mem:node", nid).unwrap();

    let garbage = b"this is not an onnx model".to_vec();
    let good = assignment(dep(1), TINY);
    let bad = assignment(dep(2), &garbage);
    let seen = Arc::new(Mutex::new(Seen::default()));
    {
        let seen = seen.clone();
        let models = vec![
            (good.clone(), TINY.to_vec()),
            (bad.clone(), garbage.clone()),
        ];
        tokio::spawn(async move {
            while let Ok(conn) = dispatcher.accept().await {
                fake_dispatcher(conn, models.clone(), seen.clone());
            }
        });
    }

    let dir = std::env::temp_dir().join(format!("crat-node-rt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let backend: Arc<dyn InferenceBackend> = Arc::new(TractBackend::new());
    let clock = Arc::new(ManualClock(AtomicU64::new(NOW)));
    let cpu = CpuInfo {
        model: "test".into(),
        cores: 2,
        memory_bytes: 1 << 30,
    };
    let mut config = NodeConfig::new(
        "mem:dispatcher".parse().unwrap(),
        did,
        "mem:node".parse().unwrap(),
    );
    config.batch_sizing = BatchSizing::Fixed(16);
    config.batch = BatchConfig {
        queue_delay_us_max: 5_000,
        ..BatchConfig::default()
    };
    config.usage_flush_ms = 50;
    let node = Node::new(
        NodeParts {
            key: nkey,
            transport: node_transport,
            cache: ModelCache::new(backend.clone(), 1 << 30),
            store: ModelStore::open(&dir, 1 << 30).unwrap(),
            hardware: FakeProbe::new(vec![], cpu).probe(),
            idle: None,
            clock: clock.clone(),
        },
        config,
    );
    let running = tokio::spawn({
        let node = node.clone();
        async move { node.run().await }
    });

    // Registered, fetched the model, loaded it, said so; the bad model failed with a reason.
    wait_for(|| {
        let s = seen.lock().unwrap();
        s.states
            .iter()
            .any(|(d, st)| *d == dep(1) && *st == ReplicaState::Ready)
            && s.states
                .iter()
                .any(|(d, st)| *d == dep(2) && matches!(st, ReplicaState::Failed(_)))
    })
    .await;
    assert_eq!(seen.lock().unwrap().registered, Some(nid));
    // The bad model is not retried on every heartbeat.
    wait_for(|| seen.lock().unwrap().heartbeats >= 5).await;
    let failures = seen
        .lock()
        .unwrap()
        .states
        .iter()
        .filter(|(d, _)| *d == dep(2))
        .count();
    assert_eq!(failures, 1, "one failed load, reported once");
    assert_eq!(node.ready(), vec![dep(1)]);
    assert!(
        dir.join(format!("{}.onnx", good.model)).exists(),
        "model stored on disk"
    );
    wait_for(|| seen.lock().unwrap().heartbeats >= 2).await;

    // A client calls the node directly.
    let client = net.bind("mem:client", NodeId::from_bytes([3; 32])).unwrap();
    let conn = client
        .connect(&"mem:node".parse().unwrap(), &nid)
        .await
        .unwrap();
    let call = move |req: ClientToNode| {
        let conn = conn.clone();
        async move {
            conn.call::<_, NodeToClient>(&req, Conversation::ClientNode, FrameLimits::default())
                .await
                .unwrap()
        }
    };
    let infer = |task: u8, t: Signed<Ticket>, d: DeploymentId, x: Tensor| {
        ClientToNode::Infer(Box::new(InferRequest::new(
            TaskId::from_bytes([task; 16]),
            d,
            t,
            vec![NamedTensor::new("input", x)],
        )))
    };
    let direct = backend.load(TINY).unwrap();

    // 32 concurrent tasks: each gets exactly the outputs a direct backend run gives.
    let mut tasks = Vec::new();
    for i in 0..32u8 {
        let req = infer(
            i,
            ticket(&dkey, dep(1), nid, NOW + 60),
            dep(1),
            image(u32::from(i)),
        );
        let call = call.clone();
        let direct = direct.clone();
        tasks.push(tokio::spawn(async move {
            match call(req).await {
                NodeToClient::Receipted { task, outputs, .. } => {
                    assert_eq!(task, TaskId::from_bytes([i; 16]));
                    assert_eq!(outputs[0].name, "probs");
                    // Batched and single runs may differ in the last bits (other kernels and
                    // summation order), never by more than 1e-5.
                    let want = direct.run(&[image(u32::from(i))]).unwrap()[0]
                        .to_vec::<f32>()
                        .unwrap();
                    let got = outputs[0].tensor.to_vec::<f32>().unwrap();
                    assert_eq!(outputs[0].tensor.shape(), &[1, 10]);
                    let diff = got
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    assert!(diff <= 1e-5, "task {i} got another row: max diff {diff}");
                }
                other => panic!("task {i}: {other:?}"),
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    // Typed refusals.
    let code = |r: NodeToClient| match r {
        NodeToClient::Error(e) => e.code,
        other => panic!("expected an error, got {other:?}"),
    };
    let forger = SigningKey::from_bytes(&[66; 32]);
    let other_node = NodeId::from_bytes([5; 32]);
    let wrong_shape = Tensor::zeros(crat_core::tensor::DType::F32, &[1, 1, 27, 28]).unwrap();
    // (task, ticket, deployment asked for, input, expected refusal)
    let refusals = [
        (
            100,
            ticket(&forger, dep(1), nid, NOW + 60),
            dep(1),
            image(0),
            ErrorCode::TicketRejected,
        ),
        (
            101,
            ticket(&dkey, dep(1), nid, NOW - 1),
            dep(1),
            image(0),
            ErrorCode::TicketRejected,
        ),
        (
            102,
            ticket(&dkey, dep(3), nid, NOW + 60),
            dep(1),
            image(0),
            ErrorCode::TicketRejected,
        ),
        (
            103,
            ticket(&dkey, dep(1), other_node, NOW + 60),
            dep(1),
            image(0),
            ErrorCode::TicketRejected,
        ),
        (
            104,
            ticket(&dkey, dep(2), nid, NOW + 60),
            dep(2),
            image(0),
            ErrorCode::NotFound,
        ),
        (
            105,
            ticket(&dkey, dep(1), nid, NOW + 60),
            dep(1),
            wrong_shape,
            ErrorCode::InvalidInput,
        ),
    ];
    for (task, t, d, x, expected) in refusals {
        assert_eq!(
            code(call(infer(task, t, d, x)).await),
            expected,
            "task {task}"
        );
    }
    assert_eq!(call(ClientToNode::Ping).await, NodeToClient::Pong);

    // Usage for exactly the 32 served tasks reaches the dispatcher; nothing stays pending.
    wait_for(|| seen.lock().unwrap().usage.len() >= 32 && node.usage_pending() == 0).await;
    let usage = seen.lock().unwrap().usage.clone();
    assert_eq!(usage.len(), 32);
    let mut tasks: Vec<TaskId> = usage.iter().map(|u| u.task).collect();
    tasks.sort();
    tasks.dedup();
    assert_eq!(tasks.len(), 32);
    assert!(
        usage
            .iter()
            .all(|u| u.deployment == dep(1) && u.input_bytes == 784 * 4 && u.output_bytes == 40)
    );

    running.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A dispatcher that goes away (closes the connection) after each session's first heartbeat,
/// as one restarted over and over: the node comes back within its first backoff every time,
/// since each session registered. (It used to double its backoff across sessions, so after a
/// few restarts a node stayed away for the longest backoff, 30 s by default.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_dispatcher_keeps_restarting_comes_back_at_once() {
    let net = MemoryNetwork::new();
    let did = NodeId::from_key(&dispatcher_key().verifying_key());
    let dispatcher = net.bind("mem:dispatcher", did).unwrap();
    let nkey = SigningKey::from_bytes(&[2; 32]);
    let nid = NodeId::from_key(&nkey.verifying_key());
    let registrations = Arc::new(Mutex::new(Vec::<std::time::Instant>::new()));
    {
        let registrations = registrations.clone();
        tokio::spawn(async move {
            while let Ok(conn) = dispatcher.accept().await {
                let registrations = registrations.clone();
                let me = conn.clone();
                tokio::spawn(serve(
                    conn,
                    Conversation::NodeDispatcher,
                    FrameLimits::default(),
                    16,
                    move |req: NodeRequest| {
                        let registrations = registrations.clone();
                        let me = me.clone();
                        async move {
                            match req {
                                NodeRequest::Register(_) => {
                                    registrations
                                        .lock()
                                        .unwrap()
                                        .push(std::time::Instant::now());
                                    DispatcherReply::Registered {
                                        dispatcher: did,
                                        heartbeat_interval_ms: 20,
                                        assignments: vec![],
                                    }
                                }
                                NodeRequest::Heartbeat(_) => {
                                    // Answered, then gone.
                                    tokio::spawn(async move {
                                        tokio::time::sleep(Duration::from_millis(10)).await;
                                        me.close("restarting");
                                    });
                                    DispatcherReply::HeartbeatAck {
                                        demand: Demand {
                                            level_bps: crat_core::bps::Bps(9_000),
                                        },
                                        assignments: vec![],
                                    }
                                }
                                _ => DispatcherReply::Ok,
                            }
                        }
                    },
                ));
            }
        });
    }
    let dir = std::env::temp_dir().join(format!("crat-node-restarts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // The default backoff limit (30 s): the one `crat node` runs with.
    let config = NodeConfig::new(
        "mem:dispatcher".parse().unwrap(),
        did,
        "mem:node".parse().unwrap(),
    );
    let node = Node::new(
        NodeParts {
            key: nkey,
            transport: net.bind("mem:node", nid).unwrap(),
            cache: ModelCache::new(Arc::new(TractBackend::new()), 1 << 30),
            store: ModelStore::open(&dir, 1 << 30).unwrap(),
            hardware: FakeProbe::new(
                vec![],
                CpuInfo {
                    model: "test".into(),
                    cores: 2,
                    memory_bytes: 1 << 30,
                },
            )
            .probe(),
            idle: None,
            clock: Arc::new(ManualClock(AtomicU64::new(NOW))),
        },
        config,
    );
    let running = tokio::spawn({
        let node = node.clone();
        async move { node.run().await }
    });
    // 10 sessions: with the backoff doubling across them, the last gap alone would be 64 s.
    let started = std::time::Instant::now();
    while registrations.lock().unwrap().len() < 10 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{} registrations in 20 s",
            registrations.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at = registrations.lock().unwrap().clone();
    for pair in at.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap < Duration::from_secs(2),
            "a registration {gap:?} after the one before"
        );
    }
    running.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A model whose image sizes are symbolic (the PaddleOCR classifier takes any height and
/// width) has no shape to time when it loads: under `BatchSizing::Measure` its batch size is
/// measured on the tasks it serves, and the size chosen is in force from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_with_symbolic_image_sizes_has_its_batch_size_measured_on_the_tasks_it_serves() {
    const CLS: &[u8] = include_bytes!("../../backend/models/ch_ppocr_mobile_v2.0_cls_infer.onnx");
    let backend: Arc<dyn InferenceBackend> = Arc::new(TractBackend::new());
    let node = TestNode::start(
        vec![(assignment(dep(1), CLS), CLS.to_vec())],
        backend,
        |c| {
            c.batch_sizing = BatchSizing::Measure(vec![1, 2]);
        },
    )
    .await;
    let (config, tuning) = node.node.batching(&dep(1)).unwrap();
    assert_eq!((config.batch_size_max, tuning), (1, None));
    assert!(node.node.batching(&dep(2)).is_none());

    let conn = node.client("client").await;
    let dkey = dispatcher_key();
    let x = Tensor::zeros(crat_core::tensor::DType::F32, &[1, 3, 48, 192]).unwrap();
    let mut task = 0u64;
    // Bursts of 8 tasks at once (so that batches of 2 form) until the measurement chooses;
    // the ticket pays for 1,000.
    let tuning = loop {
        if let Some((_, Some(tuning))) = node.node.batching(&dep(1)) {
            break tuning;
        }
        assert!(task < 800, "nothing chosen after {task} tasks");
        let mut calls = Vec::new();
        for _ in 0..8 {
            task += 1;
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&task.to_le_bytes());
            let req = ClientToNode::Infer(Box::new(InferRequest::new(
                TaskId::from_bytes(id),
                dep(1),
                ticket(&dkey, dep(1), node.id, NOW + 60),
                vec![NamedTensor::new("x", x.clone())],
            )));
            let conn = conn.clone();
            calls.push(tokio::spawn(async move { call(&conn, &req).await }));
        }
        for c in calls {
            let answer = c.await.unwrap();
            assert_eq!(code(&answer), None, "{answer:?}");
        }
    };
    assert_eq!(tuning.per_item_ns[0].0, 1, "{tuning:?}");
    assert!([1, 2].contains(&tuning.batch_size_max), "{tuning:?}");
    let (config, _) = node.node.batching(&dep(1)).unwrap();
    assert_eq!(config.batch_size_max, tuning.batch_size_max);
}
