//! The network end to end: a real dispatcher (SQLite file, model directory), real nodes
//! (tract backend, the tiny CNN) and the real SDK, all on loopback QUIC in this process. The
//! charging and failover scenarios live in `common::scenarios`; iroh_e2e.rs runs them on iroh.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use crat_core::id::{DeploymentId, KeyId, ModelId, SdkKey, TaskId};
use crat_core::money::Credits;
use crat_core::pricing::DeployPlan;
use crat_core::sign::{Signed, Ticket};
use crat_core::tensor::{NamedTensor, Tensor};
use crat_core::wire::{
    ClientCall, ClientToNode, DispatcherResponse, ErrorCode, InferRequest, NodeToClient,
};
use crat_dispatcher::DispatcherConfig;
use crat_dispatcher::admin;
use crat_dispatcher::ledger::AccountName;
use crat_rewards::{Interval, RoundInputs, compute};
use crat_sdk::Error;
use crat_testnet::loopback_quic;
use crat_transport::quic::QuicTransport;
use crat_transport::{ConnectionExt, Conversation, FrameLimits, Transport};
use ed25519_dalek::SigningKey;

/// `n` tasks with 32 in flight; `pace_per_s` spaces their starts (a per-instance plan buys a
/// rate, and its replicas refuse tasks beyond it). See [`scenarios::tasks_charged_exactly`].
async fn happy_path(plan: DeployPlan, n: u32, pace_per_s: Option<u64>) {
    let dir = tempfile::tempdir().unwrap();
    let net = network(config(dir.path()), dir.path()).await;
    scenarios::tasks_charged_exactly(&net, dir.path(), plan, n, pace_per_s).await;
    net.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_per_request() {
    happy_path(per_request(100_000), 1_000, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_per_instance() {
    // 20 tasks/s bought over two replicas; sent at 16/s.
    happy_path(per_instance(), 80, Some(16)).await;
}

/// A model stored before the ledger kept signatures (migration 10) gets one the first time a
/// deployment of it is described: read from its bytes, then recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_stored_without_a_signature_gets_one_when_described() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(config(dir.path()), dir.path()).await;
    let (client, _) = client_with(&net, 1_000_000).await;
    let model = client.upload_model(TINY, |_| {}).await.unwrap();
    // As a ledger written before signatures holds it.
    rusqlite::Connection::open(dir.path().join("dispatcher/ledger.sqlite"))
        .unwrap()
        .execute("UPDATE models SET signature = NULL", [])
        .unwrap();
    let ledger = net.dispatcher().ledger().clone();
    assert_eq!(ledger.model(&model).unwrap().unwrap().signature, None);
    let d = client.deploy(model, per_request(10_000)).await.unwrap();
    let want = crat_backend::onnx_check::check_model(TINY)
        .unwrap()
        .signature();
    assert!(want.is_some());
    assert_eq!(d.info().await.unwrap().signature, want);
    assert_eq!(ledger.model(&model).unwrap().unwrap().signature, want);
    net.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_killed_mid_stream_every_task_once() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(config(dir.path()), dir.path()).await;
    scenarios::node_killed_mid_stream(&net, 600, 300).await;
    net.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatcher_restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = network(config(dir.path()), dir.path()).await;
    let (client, _) = client_with(&net, 1_000_000).await;
    let model = client.upload_model(TINY, |_| {}).await.unwrap();
    let d = client.deploy(model, per_request(100_000)).await.unwrap();
    d.wait_ready(Duration::from_secs(30)).await.unwrap();
    for i in 0..20 {
        d.infer(vec![NamedTensor::new("input", input(i))])
            .await
            .unwrap();
    }
    let ledger = net.dispatcher().ledger().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ledger.usage_totals(&d.id()).unwrap().0 < 20 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let balance = client.balance().await.unwrap();
    let info = d.info().await.unwrap();
    drop(ledger);

    net.restart_dispatcher().await.unwrap();
    net.wait_online(3, Duration::from_secs(30)).await.unwrap();

    // The same client object reconnects; key, balance, deployment and usage survived.
    assert_eq!(client.balance().await.unwrap(), balance);
    assert_eq!(
        client.key_status().await.unwrap().status,
        crat_core::wire::KeyStatus::Active
    );
    let after = d.wait_ready(Duration::from_secs(30)).await.unwrap();
    assert_eq!(after.allowance_left, info.allowance_left);
    assert_eq!(
        net.dispatcher().ledger().usage_totals(&d.id()).unwrap().0,
        20
    );
    d.infer(vec![NamedTensor::new("input", input(99))])
        .await
        .unwrap();
    // The model is still stored: uploading again sends nothing.
    let mut already = false;
    client
        .upload_model(TINY, |p| already |= p.already_stored)
        .await
        .unwrap();
    assert!(already);
    net.shutdown();
}

/// A store that copies (an object store) leaves the staged file behind: the dispatcher
/// removes it once the model is recorded. A store that fails leaves it for the next upload,
/// which finishes it again.
#[cfg(feature = "object-store")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_upload_leaves_nothing_staged_and_a_failed_store_is_finished_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("object-store");
    let mut cfg = config(dir.path());
    cfg.models_store = Some(format!("file://{}", store.display()));
    let staging = cfg.data_dir.join("uploads");
    let net = network(cfg, dir.path()).await;
    let (client, _key) = client_with(&net, 1_000).await;
    let staged = || -> Vec<String> {
        std::fs::read_dir(&staging)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };

    let tiny = client.upload_model(TINY, |_| {}).await.unwrap();
    assert!(store.join(tiny.to_string()).exists());
    assert_eq!(staged(), Vec::<String>::new());

    // A folder where the store would put the model: storing fails, the staged model stays.
    let model: &[u8] = include_bytes!("../../backend/models/tiny_cnn_v2.onnx");
    let id = ModelId::of_bytes(model);
    std::fs::create_dir(store.join(id.to_string())).unwrap();
    let err = client.upload_model(model, |_| {}).await.unwrap_err();
    assert!(matches!(err, Error::Internal(_)), "{err}");
    assert_eq!(staged().len(), 1, "{:?}", staged());
    assert!(staged()[0].ends_with(&format!("{id}.model")));

    std::fs::remove_dir(store.join(id.to_string())).unwrap();
    let mut seen = Vec::new();
    assert_eq!(
        client.upload_model(model, |p| seen.push(p)).await.unwrap(),
        id
    );
    assert!(seen.iter().all(|p| !p.already_stored));
    assert_eq!(
        std::fs::read(store.join(id.to_string())).unwrap(),
        model.to_vec()
    );
    assert_eq!(staged(), Vec::<String>::new());
    net.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_typed_errors_and_charges_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.model_bytes_max = 256 << 10;
    let net = network(cfg, dir.path()).await;
    let (client, key) = client_with(&net, 1_000).await;
    let ledger = net.dispatcher().ledger().clone();

    // Not ONNX.
    let junk = vec![7u8; 5_000];
    assert!(matches!(
        client.upload_model(&junk, |_| {}).await,
        Err(Error::ModelRejected(_))
    ));
    // Over the size cap.
    let big = vec![1u8; 300 << 10];
    assert!(matches!(
        client.upload_model(&big, |_| {}).await,
        Err(Error::TooLarge(_))
    ));
    // Hash mismatch: announce one model, send another's bytes.
    let claimed = ModelId::of_bytes(b"something else");
    let r = raw_call(
        &net,
        &key,
        ClientCall::UploadBegin {
            model: claimed,
            total_bytes: TINY.len() as u64,
        },
    )
    .await;
    assert!(
        matches!(
            r,
            DispatcherResponse::Upload {
                received_bytes: 0,
                ..
            }
        ),
        "{r:?}"
    );
    let r = raw_call(
        &net,
        &key,
        ClientCall::UploadChunk {
            model: claimed,
            offset: 0,
            data: TINY.to_vec(),
        },
    )
    .await;
    assert!(matches!(r, DispatcherResponse::Upload { .. }), "{r:?}");
    let r = raw_call(&net, &key, ClientCall::UploadFinish { model: claimed }).await;
    assert!(
        matches!(r, DispatcherResponse::Error(ref e) if e.code == ErrorCode::ModelRejected),
        "{r:?}"
    );

    // The real model; too expensive a deployment is refused and charges nothing.
    let model = client.upload_model(TINY, |_| {}).await.unwrap();
    assert!(matches!(
        client.deploy(model, per_request(5_000)).await,
        Err(Error::InsufficientCredits(_))
    ));
    assert_eq!(client.balance().await.unwrap(), Credits::new(1_000));
    let d = client.deploy(model, per_request(500)).await.unwrap();
    d.wait_ready(Duration::from_secs(30)).await.unwrap();

    // Wrong tensor shape: the node refuses it; not retried, not charged.
    let wrong = Tensor::from_slice(&[1, 1, 27, 28], &vec![0f32; 27 * 28]).unwrap();
    let r = d.infer(vec![NamedTensor::new("input", wrong)]).await;
    assert!(matches!(r, Err(Error::InvalidInput(_))), "{r:?}");

    // Tickets at a node: forged, expired, for another deployment.
    let lease = d.lease().await.unwrap();
    let replica = &lease.replicas[0];
    let t = QuicTransport::bind(
        "127.0.0.1:0".parse().unwrap(),
        &SigningKey::from_bytes(&rand::random()),
        loopback_quic(),
    )
    .unwrap();
    let conn = t.connect(&replica.addrs[0], &replica.node).await.unwrap();
    let good = lease.ticket.body.clone();
    let other_dep = DeploymentId::from_bytes([5; 16]);
    let cases: Vec<(&str, Signed<Ticket>, DeploymentId)> = vec![
        (
            "forged",
            Signed::sign(good.clone(), &SigningKey::from_bytes(&[9; 32])),
            d.id(),
        ),
        (
            "expired",
            Signed::sign(
                Ticket {
                    issued_at_s: now_s() - 100,
                    expires_at_s: now_s() - 50,
                    ..good.clone()
                },
                &net.dispatcher_key,
            ),
            d.id(),
        ),
        ("other deployment", lease.ticket.clone(), other_dep),
    ];
    for (what, ticket, deployment) in cases {
        let req = ClientToNode::Infer(Box::new(InferRequest::new(
            TaskId::from_bytes(rand::random()),
            deployment,
            ticket,
            vec![NamedTensor::new("input", input(1))],
        )));
        let r: NodeToClient = conn
            .call(&req, Conversation::ClientNode, FrameLimits::default())
            .await
            .unwrap();
        assert!(
            matches!(r, NodeToClient::Error(ref e) if e.code == ErrorCode::TicketRejected),
            "{what}: {r:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ledger.usage_totals(&d.id()).unwrap(), (0, Credits::ZERO));

    // Everything still serves.
    d.infer(vec![NamedTensor::new("input", input(3))])
        .await
        .unwrap();

    // Expired and revoked keys.
    let account = AccountName::new("alice").unwrap();
    let expired = admin::create_key(&*ledger, &account, now_s() - 10, Some(5)).unwrap();
    let r = raw_call(&net, &expired, ClientCall::Balance).await;
    assert!(
        matches!(r, DispatcherResponse::Error(ref e) if e.code == ErrorCode::KeyExpired),
        "{r:?}"
    );
    ledger.revoke_key(&key.id, now_s()).unwrap();
    assert!(matches!(client.balance().await, Err(Error::KeyRevoked(_))));
    let r = raw_call(&net, &key, ClientCall::Lease { deployment: d.id() }).await;
    assert!(
        matches!(r, DispatcherResponse::Error(ref e) if e.code == ErrorCode::KeyRevoked),
        "{r:?}"
    );
    // Unknown key, wrong secret.
    let stranger = SdkKey {
        id: KeyId::from_bytes([3; 16]),
        secret: [4; 32],
    };
    let r = raw_call(&net, &stranger, ClientCall::Balance).await;
    assert!(
        matches!(r, DispatcherResponse::Error(ref e) if e.code == ErrorCode::Unauthenticated),
        "{r:?}"
    );
    let wrong_secret = SdkKey {
        id: expired.id,
        secret: [4; 32],
    };
    let r = raw_call(&net, &wrong_secret, ClientCall::Balance).await;
    assert!(
        matches!(r, DispatcherResponse::Error(ref e) if e.code == ErrorCode::Unauthenticated),
        "{r:?}"
    );
    // Charged: one task (the good one above), nothing else.
    let cost = DispatcherConfig::new("x")
        .pricing
        .request_cost(TINY.len() as u64, 28 * 28 * 4)
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ledger.usage_totals(&d.id()).unwrap().0 < 1 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ledger.usage_totals(&d.id()).unwrap(), (1, cost));
    assert_eq!(net.dispatcher().online_nodes(), 3, "no process died");
    net.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_closes_with_uptime_and_payouts_equal_rewards() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    let start = now_s();
    cfg.round_epoch_s = start;
    cfg.round_close_delay_s = 1;
    cfg.rewards.round_s = 6;
    cfg.rewards.peak_windows = vec![Interval::new(0, 6)];
    cfg.rewards.commit_downtime_s_max = 3;
    // Guaranteed USD is paid only for proven GPUs: deadlines these CPU nodes meet, so their
    // declared GPUs are proven and the round pays something.
    cfg.hardware = crat_core::policy::hardware::ProofConfig {
        allowance_ms: 30_000,
        ..crat_core::policy::hardware::ProofConfig::test_scale()
    };
    let net = network(cfg, dir.path()).await;
    let (client, _) = client_with(&net, 1_000_000).await;
    let model = client.upload_model(TINY, |_| {}).await.unwrap();
    let d = client.deploy(model, per_request(100_000)).await.unwrap();
    d.wait_ready(Duration::from_secs(30)).await.unwrap();
    for i in 0..50 {
        d.infer(vec![NamedTensor::new("input", input(i))])
            .await
            .unwrap();
    }
    // Wait for round 0 to end and be closed by the dispatcher's own ticker.
    let ledger = net.dispatcher().ledger().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let record = loop {
        if let Some(r) = ledger.round(0).unwrap() {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "round 0 not closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let inputs = RoundInputs::from_json(&record.inputs_json).unwrap();
    assert_eq!(inputs.round.start_s, start);
    assert_eq!(inputs.nodes.len(), 3);
    for n in &inputs.nodes {
        let up: u64 = n
            .online
            .iter()
            .map(|i| i.end_s.min(start + 6).saturating_sub(i.start_s.max(start)))
            .sum();
        assert!(up >= 3, "uptime recorded from heartbeats: {n:?}");
    }
    // Income: the round's usage charges, valued at the credit price.
    assert!(inputs.round.income_usd_micro.get() > 0);
    let outcome = compute(&inputs).unwrap();
    assert_eq!(outcome.to_json(), record.outcome_json);
    // Nodes carry the outcome forward; payouts were settled to files.
    for o in &outcome.nodes {
        assert_eq!(
            ledger.node(&o.id).unwrap().unwrap().crat_micro,
            o.crat_end_micro
        );
    }
    let paid: u64 = outcome
        .nodes
        .iter()
        .map(|o| o.guaranteed_usd_micro.get() + o.bonus_usd_micro.get())
        .sum();
    assert_eq!(paid, record.paid_usd_micro.get());
    assert!(paid > 0);
    // The round is stored before it is settled: wait for the payout files.
    let payouts = dir.path().join("dispatcher/payouts");
    while payouts.read_dir().map_or(0, Iterator::count) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "round 0 stored but not settled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    net.shutdown();
}
