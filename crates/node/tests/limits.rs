//! The node's limits at the runtime level, against the fake dispatcher on the in-memory
//! transport: tasks per SDK key, the model queue and requests per client connection. Over a
//! limit a task is answered `Busy` (or waits, for the per-connection limit); nothing grows
//! without bound, and the node keeps serving.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use crat_backend::InferenceBackend;
use crat_backend::tract::TractBackend;
use crat_core::id::KeyId;
use crat_core::limit::RateLimit;
use crat_core::wire::ErrorCode;
use crat_node::batch::BatchConfig;

fn tract() -> Arc<dyn InferenceBackend> {
    Arc::new(TractBackend::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_over_a_keys_rate_are_busy_and_keys_are_independent() {
    let node = TestNode::start(
        vec![(assignment(dep(1), TINY), TINY.to_vec())],
        tract(),
        |c| {
            c.key_rate = Some(RateLimit { per_s: 1, burst: 3 });
        },
    )
    .await;
    let conn = node.client("client").await;
    let dkey = dispatcher_key();
    let (alice, bob, carol) = (
        KeyId::from_bytes([1; 16]),
        KeyId::from_bytes([2; 16]),
        KeyId::from_bytes([3; 16]),
    );
    let t = |key| ticket_for(&dkey, dep(1), node.id, NOW + 60, key);

    let started = Instant::now();
    let mut answers = Vec::new();
    for task in 0..5 {
        answers.push(code(
            &call(&conn, &infer(task, t(alice), dep(1), image(1))).await,
        ));
    }
    // The burst passes; after it, one task a second (the five calls take far less).
    let refilled = started.elapsed().as_secs() as usize;
    assert_eq!(answers[..3], [None; 3]);
    let busy = answers
        .iter()
        .filter(|a| **a == Some(ErrorCode::Busy))
        .count();
    assert_eq!(busy + answers.iter().filter(|a| a.is_none()).count(), 5);
    assert!(busy >= 2 - refilled.min(2), "{answers:?} in {refilled} s");
    // Another key has its own bucket.
    for task in 10..13 {
        assert_eq!(
            code(&call(&conn, &infer(task, t(bob), dep(1), image(1))).await),
            None
        );
    }
    // Tickets that do not verify spend nothing: the rate is checked after the ticket, so
    // nobody can exhaust a key by naming it.
    let forger = ed25519_dalek::SigningKey::from_bytes(&[66; 32]);
    for task in 20..30 {
        let forged = ticket_for(&forger, dep(1), node.id, NOW + 60, carol);
        assert_eq!(
            code(&call(&conn, &infer(task, forged, dep(1), image(1))).await),
            Some(ErrorCode::TicketRejected)
        );
    }
    assert_eq!(
        code(&call(&conn, &infer(30, t(carol), dep(1), image(1))).await),
        None
    );
    // After a second alice has one task again.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(
        code(&call(&conn, &infer(40, t(alice), dep(1), image(1))).await),
        None
    );
    // Usage only for the tasks that ran: alice's, bob's 3, carol's 1.
    let ran = (5 - busy) + 1 + 3 + 1;
    wait_for(|| node.seen.lock().unwrap().usage.len() >= ran && node.node.usage_pending() == 0)
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(node.seen.lock().unwrap().usage.len(), ran);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_model_queue_answers_busy_and_drains() {
    let gate = Gate::closed();
    let backend = Arc::new(GatedBackend {
        inner: tract(),
        gate: gate.clone(),
    });
    let node = TestNode::start(
        vec![(assignment(dep(1), TINY), TINY.to_vec())],
        backend,
        |c| {
            c.batch = BatchConfig {
                queue_len_max: 2,
                workers: 1,
                ..BatchConfig::default()
            };
        },
    )
    .await;
    let conn = node.client("client").await;
    let t = || ticket(&dispatcher_key(), dep(1), node.id, NOW + 60);
    // One task runs (held at the gate)...
    let mut held = Vec::new();
    {
        let (conn, req) = (conn.clone(), infer(0, t(), dep(1), image(0)));
        held.push(tokio::spawn(async move { call(&conn, &req).await }));
    }
    wait_for(|| gate.waiting() == 1).await;
    // ...two wait in the queue...
    for task in 1..3 {
        let (conn, req) = (conn.clone(), infer(task, t(), dep(1), image(0)));
        held.push(tokio::spawn(async move { call(&conn, &req).await }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // ...and every further task is refused at once, however many come.
    for task in 3..50 {
        let started = Instant::now();
        assert_eq!(
            code(&call(&conn, &infer(task, t(), dep(1), image(0))).await),
            Some(ErrorCode::Busy),
            "task {task}"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    assert_eq!(gate.waiting(), 1, "one run at a time");
    // Opened, the queue drains: the held tasks get their outputs, the node serves on.
    gate.open();
    for h in held {
        assert_eq!(code(&h.await.unwrap()), None);
    }
    assert_eq!(
        code(&call(&conn, &infer(100, t(), dep(1), image(0))).await),
        None
    );
    wait_for(|| node.seen.lock().unwrap().usage.len() >= 4).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        node.seen.lock().unwrap().usage.len(),
        4,
        "refused tasks cost nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_a_connections_limit_wait_and_other_connections_are_served() {
    let gate = Gate::closed();
    let backend = Arc::new(GatedBackend {
        inner: tract(),
        gate: gate.clone(),
    });
    let node = TestNode::start(
        vec![(assignment(dep(1), TINY), TINY.to_vec())],
        backend,
        |c| {
            c.client_concurrency_max = 2;
            c.batch = BatchConfig {
                workers: 8,
                ..BatchConfig::default()
            };
        },
    )
    .await;
    let t = || ticket(&dispatcher_key(), dep(1), node.id, NOW + 60);
    let first = node.client("first").await;
    let mut calls = Vec::new();
    for task in 0..6 {
        let (conn, req) = (first.clone(), infer(task, t(), dep(1), image(0)));
        calls.push(tokio::spawn(async move { call(&conn, &req).await }));
    }
    wait_for(|| gate.waiting() == 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        gate.waiting(),
        2,
        "only two of the connection's requests are served at once"
    );
    // Another connection has its own allowance.
    let second = node.client("second").await;
    {
        let req = infer(10, t(), dep(1), image(0));
        calls.push(tokio::spawn(async move { call(&second, &req).await }));
    }
    wait_for(|| gate.waiting() == 3).await;
    gate.open();
    // Held, not dropped: every request is answered.
    for c in calls {
        assert_eq!(code(&c.await.unwrap()), None);
    }
}

/// Usage the dispatcher has not taken yet is kept in the node's journal: a node that stops
/// (crashes) and starts again reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreported_usage_survives_a_node_restart() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("usage.journal");
    let models = vec![(assignment(dep(1), TINY), TINY.to_vec())];
    let backend: Arc<dyn InferenceBackend> = Arc::new(TractBackend::new());
    let node = TestNode::start(models.clone(), backend.clone(), |c| {
        c.usage_journal = Some(journal.clone());
    })
    .await;
    node.seen.lock().unwrap().refuse_usage = true;
    let conn = node.client("client").await;
    let t = ticket(&dispatcher_key(), dep(1), node.id, NOW + 60);
    for task in 0..5 {
        let answer = call(&conn, &infer(task, t.clone(), dep(1), image(task as u32))).await;
        assert_eq!(code(&answer), None);
    }
    // The journal holds the five records within a report interval or two.
    let journaled = || {
        std::fs::read(&journal).ok().and_then(|b| {
            match crat_core::wire::decode::<crat_core::wire::NodeRequest>(&b) {
                Ok(crat_core::wire::NodeRequest::Usage(r)) => Some(r.records.len()),
                _ => None,
            }
        })
    };
    wait_for(|| journaled() == Some(5)).await;
    assert!(node.seen.lock().unwrap().usage.is_empty());
    drop(node);

    // The same node starts again, against a dispatcher that takes usage: it reports them.
    let node = TestNode::start(models, backend, |c| c.usage_journal = Some(journal.clone())).await;
    wait_for(|| node.seen.lock().unwrap().usage.len() >= 5).await;
    let mut tasks: Vec<u64> = node
        .seen
        .lock()
        .unwrap()
        .usage
        .iter()
        .map(|u| u64::from_le_bytes(u.task.as_bytes()[..8].try_into().unwrap()))
        .collect();
    tasks.sort_unstable();
    assert_eq!(tasks, [0, 1, 2, 3, 4]);
    // Reported and acknowledged: the journal empties.
    wait_for(|| journaled() == Some(0)).await;
}

/// A client's acknowledgement is verified beside its task while the ticket is far from its
/// unacknowledged limit, and before it near the limit (where it may be what lets the task
/// through): a forged one is never kept either way, and a real one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_are_verified_beside_their_tasks_and_forged_ones_never_kept() {
    use crat_core::id::NodeId;
    use crat_core::money::Credits;
    use crat_core::sign::{Ack, Signed};
    use crat_core::wire::ClientToNode;
    use crat_transport::Transport;

    let node = TestNode::start(
        vec![(assignment(dep(1), TINY), TINY.to_vec())],
        tract(),
        |c| c.unacknowledged_tasks_max = 8,
    )
    .await;
    let client = ed25519_dalek::SigningKey::from_bytes(&[77; 32]);
    let client_id = NodeId::from_key(&client.verifying_key());
    let endpoint = node.net.bind("mem:acker", client_id).unwrap();
    let conn = endpoint
        .connect(&"mem:node".parse().unwrap(), &node.id)
        .await
        .unwrap();
    let mut body = ticket(&dispatcher_key(), dep(1), node.id, NOW + 60).body;
    body.client = client_id;
    let t = Signed::sign(body, &dispatcher_key());
    let ack = |tasks: u64, key: &ed25519_dalek::SigningKey| {
        Signed::sign(
            Ack {
                ticket_nonce: t.body.nonce,
                node: node.id,
                tasks,
                credits: Credits::new(tasks),
                accumulator: [0; 32],
            },
            key,
        )
    };
    let task = |n: u64, ack: Option<Signed<Ack>>| {
        let mut req = infer(n, t.clone(), dep(1), image(n as u32));
        if let ClientToNode::Infer(r) = &mut req {
            r.ack = ack.map(Box::new);
        }
        req
    };

    // Far from the limit (2 of 8 unacknowledged): a forged acknowledgement of both is
    // verified beside the task, which is served, and not kept.
    for n in 0..2 {
        assert_eq!(code(&call(&conn, &task(n, None)).await), None);
    }
    let forger = ed25519_dalek::SigningKey::from_bytes(&[78; 32]);
    assert_eq!(
        code(&call(&conn, &task(2, Some(ack(2, &forger)))).await),
        None
    );
    for n in 3..8 {
        assert_eq!(code(&call(&conn, &task(n, None)).await), None);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // 8 unacknowledged: the forged acknowledgement counted nothing.
    assert_eq!(
        code(&call(&conn, &task(8, None)).await),
        Some(ErrorCode::Busy)
    );
    // At the limit a real acknowledgement is verified before the task, and lets it through.
    assert_eq!(
        code(&call(&conn, &task(8, Some(ack(8, &client)))).await),
        None
    );
    // Far from it again, a real one verified beside its task is kept and forwarded.
    assert_eq!(
        code(&call(&conn, &task(9, Some(ack(9, &client)))).await),
        None
    );
    wait_for(|| {
        node.seen
            .lock()
            .unwrap()
            .acks
            .iter()
            .any(|p| p.ack.body.tasks == 9)
    })
    .await;
    let seen = node.seen.lock().unwrap();
    assert!(
        seen.acks
            .iter()
            .all(|p| p.ack.signer == client_id && p.ack.body.tasks >= 8),
        "only the client's acknowledgements are forwarded"
    );
}

/// A usage journal of `n` records of deployment 1, in `dir`.
fn usage_journal(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    use crat_core::id::TaskId;
    use crat_core::wire::{NodeRequest, UsageRecord, UsageReport};

    let journal = dir.join("usage.journal");
    let records: Vec<UsageRecord> = (0..n as u64)
        .map(|i| {
            let mut task = [0u8; 16];
            task[..8].copy_from_slice(&i.to_le_bytes());
            UsageRecord {
                task: TaskId::from_bytes(task),
                deployment: dep(1),
                inputs_digest: [0; 32],
                key: KeyId::from_bytes([9; 16]),
                ticket_nonce: [4; 16],
                input_bytes: 3136,
                output_bytes: 40,
                compute_us: 10,
            }
        })
        .collect();
    let report = NodeRequest::Usage(UsageReport {
        records,
        acks: Vec::new(),
    });
    std::fs::write(&journal, crat_core::wire::encode(&report).unwrap()).unwrap();
    journal
}

/// A node holding more usage than one report takes sends the next report at once, not an
/// interval later: a backlog of two and a half reports (here from its journal) is taken
/// within one interval of the first report. Before, one report went per interval, so a node
/// serving more tasks a second than a report holds fell behind until its buffer was full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_usage_goes_in_reports_back_to_back() {
    use crat_core::wire::USAGE_RECORDS_MAX;

    let dir = tempfile::tempdir().unwrap();
    let n = USAGE_RECORDS_MAX * 2 + 500;
    let journal = usage_journal(dir.path(), n);
    let node = TestNode::start(
        vec![(assignment(dep(1), TINY), TINY.to_vec())],
        tract(),
        |c| {
            c.usage_journal = Some(journal.clone());
            c.usage_flush_ms = 3_000;
        },
    )
    .await;
    wait_for(|| !node.seen.lock().unwrap().usage.is_empty()).await;
    let first = Instant::now();
    wait_for(|| node.seen.lock().unwrap().usage.len() >= n).await;
    assert!(
        first.elapsed() < Duration::from_millis(2_000),
        "the backlog took {:?} after the first report (the interval is 3 s)",
        first.elapsed()
    );
    assert_eq!(node.seen.lock().unwrap().usage.len(), n);
}

/// Records the dispatcher holds (waiting for a client's acknowledgement) go again with the
/// next report, an interval later: a report of which the dispatcher held more than half is
/// not followed at once, so a dispatcher holding records never gets them resent in a loop.
/// With a backlog of two and a half reports and three quarters of each held, one report
/// goes in the first half interval, and the next one after the interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_mostly_held_waits_for_the_interval_before_the_next() {
    use crat_core::wire::USAGE_RECORDS_MAX;

    let dir = tempfile::tempdir().unwrap();
    let journal = usage_journal(dir.path(), USAGE_RECORDS_MAX * 2 + 500);
    let node = TestNode::start_with(
        vec![(assignment(dep(1), TINY), TINY.to_vec())],
        tract(),
        Seen {
            hold_usage: USAGE_RECORDS_MAX * 3 / 4,
            ..Seen::default()
        },
        |c| {
            c.usage_journal = Some(journal.clone());
            c.usage_flush_ms = 2_000;
        },
    )
    .await;
    wait_for(|| node.seen.lock().unwrap().usage_reports >= 1).await;
    let first = Instant::now();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(
        node.seen.lock().unwrap().usage_reports,
        1,
        "a report mostly held was followed within {:?}",
        first.elapsed()
    );
    wait_for(|| node.seen.lock().unwrap().usage_reports >= 2).await;
    assert!(first.elapsed() >= Duration::from_millis(1_500));
    let seen = node.seen.lock().unwrap();
    assert_eq!(seen.usage.len(), 2 * (USAGE_RECORDS_MAX / 4));
}
