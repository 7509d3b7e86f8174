//! Settlement is durable and resumable: a round whose settlement fails stays unsettled in the
//! ledger, later rounds close and settle meanwhile, and after a restart on the same ledger and
//! data directory the dispatcher settles it on its own; nothing is paid twice.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crat_core::clock::Clock;
use crat_core::id::NodeId;
use crat_core::money::{MicroCrat, MicroUsd};
use crat_dispatcher::blob::{LocalBlobStore, UploadConfig, Uploads};
use crat_dispatcher::ledger::{Ledger, NodeRecord, SqliteLedger};
use crat_dispatcher::{Dispatcher, DispatcherConfig, DispatcherParts};
use crat_rewards::file_export::FileSettlement;
use crat_rewards::{PayoutBatch, RoundOutcome, Settlement, SettlementError, SettlementReceipt};
use crat_transport::memory::{MemoryNetwork, MemoryTransport};
use ed25519_dalek::SigningKey;
use parking_lot::Mutex;

const ROUND_S: u64 = 100;

/// A clock the test sets.
struct Manual(AtomicU64);

impl Clock for Manual {
    fn now_s(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// What the flaky settlement saw, shared across restarts.
#[derive(Default)]
struct Shared {
    /// Whether the one injected failure happened.
    failed: AtomicBool,
    /// Per round, how many times it was newly paid, and how many times recognised as paid.
    paid: Mutex<BTreeMap<u64, (u32, u32)>>,
}

/// File settlement that fails once, for `fail_round`, before writing anything.
struct FailsOnce {
    files: FileSettlement,
    fail_round: u64,
    shared: Arc<Shared>,
}

impl Settlement for FailsOnce {
    fn settle(&mut self, batch: &PayoutBatch) -> Result<SettlementReceipt, SettlementError> {
        if batch.round_index == self.fail_round && !self.shared.failed.swap(true, Ordering::SeqCst)
        {
            return Err(SettlementError::Adapter {
                adapter: "fails-once",
                source: "the payment API is down".into(),
            });
        }
        let receipt = self.files.settle(batch)?;
        let mut paid = self.shared.paid.lock();
        let entry = paid.entry(batch.round_index).or_default();
        if receipt.newly_settled {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
        Ok(receipt)
    }
}

fn node(b: u8) -> NodeRecord {
    NodeRecord {
        id: NodeId::from_bytes([b; 32]),
        rating: 3,
        registered_at_s: 0,
        // 8.64 USD a day: 10,000 µUSD per 100 s round when committed.
        mining_income_usd_micro_per_day: MicroUsd::new(8_640_000),
        crat_micro: MicroCrat::ZERO,
        streak: 0,
        uptime_total_s: 0,
    }
}

fn config(dir: &Path) -> DispatcherConfig {
    let mut c = DispatcherConfig::new(dir);
    c.rewards.round_s = ROUND_S;
    c.round_epoch_s = 0;
    c.round_close_delay_s = 0;
    c.tick_ms = 20;
    c
}

fn dispatcher(
    dir: &Path,
    net: &MemoryNetwork,
    clock: Arc<Manual>,
    shared: Arc<Shared>,
) -> Dispatcher<MemoryTransport> {
    let key = SigningKey::from_bytes(&[7; 32]);
    let transport = net
        .bind("mem:dispatcher", NodeId::from_key(&key.verifying_key()))
        .unwrap();
    let ledger = Arc::new(SqliteLedger::open(&dir.join("ledger.sqlite")).unwrap());
    Dispatcher::new(
        DispatcherParts {
            key,
            transport,
            ledger,
            blobs: Arc::new(LocalBlobStore::open(&dir.join("models")).unwrap()),
            uploads: Uploads::open(UploadConfig::new(dir.join("uploads"))).unwrap(),
            settlement: Box::new(FailsOnce {
                files: FileSettlement::new(dir.join("payouts")),
                fail_round: 0,
                shared,
            }),
            clock,
            canary: None,
        },
        config(dir),
    )
    .unwrap()
}

/// Round `index`'s files hold exactly the payouts of its stored outcome, and their digest.
fn assert_files_verify(ledger: &dyn Ledger, payouts: &Path, index: u64) {
    let record = ledger.round(index).unwrap().expect("round stored");
    let outcome = RoundOutcome::from_json(&record.outcome_json).unwrap();
    let batch = PayoutBatch::from_outcome(index, &outcome).unwrap();
    assert!(!batch.payouts.is_empty(), "round {index} pays something");
    let files = FileSettlement::new(payouts);
    let json = std::fs::read_to_string(files.path(index, "json"))
        .unwrap_or_else(|e| panic!("round {index} JSON: {e}"));
    assert_eq!(json, batch.to_json());
    assert_eq!(
        std::fs::read_to_string(files.path(index, "csv")).unwrap(),
        batch.to_csv()
    );
    let digest = std::fs::read_to_string(files.path(index, "blake3")).unwrap();
    assert_eq!(
        digest.split_whitespace().next(),
        Some(blake3::hash(json.as_bytes()).to_hex().as_str())
    );
    let settled = ledger
        .round_settlement(index)
        .unwrap()
        .unwrap_or_else(|| panic!("round {index} marked settled"));
    assert_eq!(
        settled.digest.map(hex::encode),
        Some(batch.digest_hex()),
        "the ledger keeps the receipt's digest"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_that_fails_once_then_a_restart_settles_the_round() {
    let dir = tempfile::tempdir().unwrap();
    let payouts = dir.path().join("payouts");
    let shared = Arc::new(Shared::default());
    let clock = Arc::new(Manual(AtomicU64::new(250)));
    {
        let ledger = SqliteLedger::open(&dir.path().join("ledger.sqlite")).unwrap();
        for b in [1, 2] {
            ledger.upsert_node(&node(b)).unwrap();
            ledger
                .record_online(&NodeId::from_bytes([b; 32]), 0, 1_000)
                .unwrap();
        }
    }

    // Rounds 0 and 1 are due. Round 0's settlement fails; round 1 still closes and settles.
    let net = MemoryNetwork::new();
    let d = dispatcher(dir.path(), &net, clock.clone(), shared.clone());
    let closed = d.close_due_rounds().await.unwrap();
    let indices: Vec<_> = closed.iter().map(|c| c.record.index).collect();
    assert_eq!(indices, [0, 1]);
    assert!(closed[0].receipt.is_none(), "round 0 stored, not settled");
    assert!(closed[1].receipt.as_ref().unwrap().newly_settled);
    let ledger = d.ledger().clone();
    assert_eq!(ledger.unsettled_rounds(10).unwrap(), [0]);
    assert_eq!(ledger.round_settlement(0).unwrap(), None);
    assert!(!FileSettlement::new(&payouts).path(0, "json").exists());
    assert_files_verify(&*ledger, &payouts, 1);
    let stats = d.stats();
    assert_eq!((stats.rounds_closed, stats.rounds_settled), (2, 1));
    assert_eq!(stats.settlement_failures, 1);
    // Within the backoff (1 s) round 0 is not tried again.
    assert!(d.settle_pending().await.unwrap().is_empty());
    assert_eq!(d.stats().settlement_failures, 1);
    // The dispatcher goes away before retrying.
    d.close();
    drop((d, ledger));

    // Restart on the same ledger and data directory, one round later: the running dispatcher
    // settles round 0 on its own, and round 2 closes and settles too.
    clock.0.store(350, Ordering::SeqCst);
    let net = MemoryNetwork::new();
    let d = dispatcher(dir.path(), &net, clock.clone(), shared.clone());
    let running = tokio::spawn({
        let d = d.clone();
        async move { d.run().await }
    });
    let ledger = d.ledger().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !ledger.unsettled_rounds(10).unwrap().is_empty() || ledger.round(2).unwrap().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "unsettled after the restart: {:?}",
            ledger.unsettled_rounds(10).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for index in 0..=2 {
        assert_files_verify(&*ledger, &payouts, index);
    }
    assert_eq!(
        d.stats().rounds_settled,
        2,
        "rounds 0 and 2, by this process"
    );
    // Nothing is settled twice: more passes pay nothing and the ledger keeps its records.
    let settled_at = ledger.round_settlement(0).unwrap();
    assert!(d.settle_pending().await.unwrap().is_empty());
    assert_eq!(ledger.round_settlement(0).unwrap(), settled_at);
    d.close();
    running.abort();
    let _ = running.await;
    let paid = shared.paid.lock().clone();
    let newly: Vec<_> = paid.iter().map(|(&i, &(n, _))| (i, n)).collect();
    assert_eq!(
        newly,
        [(0, 1), (1, 1), (2, 1)],
        "each round paid exactly once"
    );
    assert!(shared.failed.load(Ordering::SeqCst));
}
