//! The dispatcher's ledger charging usage (`Ledger::charge_usage`): what a node's usage
//! report costs the dispatcher per record, on SQLite (a file in a temporary directory, the
//! dispatcher's settings) and, when `CRAT_TEST_POSTGRES_URL` names a server
//! (`scripts/postgres.sh start` prints one), on PostgreSQL in a fresh schema.
//! Each iteration charges one report of 2,000 records of one (ticket, node) pair whose client
//! acknowledged them (the case a node serving one client at 4,000 tasks/s sends every
//! second), new task ids each time: time-ordered as the SDK makes them
//! (`TaskId::time_ordered`), and, for SQLite, random (`…/sqlite_random_ids`), as they were
//! before.
//!
//! ```text
//! cargo bench -p crat-benches --bench ledger
//! ```

#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};

use crat_core::id::{DeploymentId, KeyId, ModelId, NodeId, TaskId};
use crat_core::money::{Credits, MicroUsd};
use crat_core::policy::acks::Tally;
use crat_core::pricing::{DeployPlan, PerRequestPlan, PriceQuote};
use crat_core::wire::{UsageRecord, Verifiability};
use crat_dispatcher::ledger::{
    AccountName, AckRecord, DeploymentRecord, KeyRecord, Ledger, ModelRecord, PgLedger, PgOptions,
    SqliteLedger, UsageCharge,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Records per report.
const RECORDS: u64 = 2_000;
const NONCE: [u8; 16] = [5; 16];

fn node() -> NodeId {
    NodeId::from_bytes([6; 32])
}

/// An account with credits, a key, a model and a per-request deployment with an allowance
/// for every task the bench charges, and the client's acknowledgement of them all.
fn prepare(ledger: &dyn Ledger) {
    let account = AccountName::new("bench").unwrap();
    ledger.create_account(&account, 10).unwrap();
    ledger.grant(&account, Credits::new(1 << 50), 10).unwrap();
    ledger
        .insert_key(&KeyRecord {
            id: KeyId::from_bytes([1; 16]),
            account: account.clone(),
            secret_hash: [7; 32],
            created_at_s: 10,
            expires_at_s: None,
            revoked_at_s: None,
        })
        .unwrap();
    let model = ModelId::of_bytes(b"model");
    ledger
        .insert_model(&ModelRecord {
            id: model,
            bytes: 1000,
            account: account.clone(),
            stored_at_s: 10,
            signature: None,
        })
        .unwrap();
    let allowance = Credits::new(1 << 40);
    ledger
        .create_deployment(&DeploymentRecord {
            id: DeploymentId::from_bytes([1; 16]),
            account,
            key: KeyId::from_bytes([1; 16]),
            model,
            model_bytes: 1000,
            plan: DeployPlan::PerRequest(PerRequestPlan {
                max_input_bytes: 4096,
                credit_allowance: allowance,
            }),
            price: PriceQuote {
                upfront: allowance,
                per_request_max: Credits::new(5),
                capacity: Credits::ZERO,
                updates: Credits::ZERO,
                credit_price_usd_micro: MicroUsd::new(100),
            },
            allowance_left: allowance,
            created_at_s: 20,
            stopped_at_s: None,
            verifiability: Verifiability::Verifiable,
            updates: 0,
            updated_at_s: None,
        })
        .unwrap();
    let acked = Tally {
        tasks: 1 << 40,
        credits: Credits::new(1 << 42),
        ..Tally::default()
    };
    ledger
        .store_acks(&[AckRecord {
            ticket_nonce: NONCE,
            node: node(),
            deployment: DeploymentId::from_bytes([1; 16]),
            key: KeyId::from_bytes([1; 16]),
            settle_at_s: u64::from(u32::MAX),
            acked,
        }])
        .unwrap();
}

/// How a report's task ids are made.
#[derive(Clone, Copy)]
enum Ids {
    /// As the SDK makes them: time-ordered, one millisecond apart here.
    TimeOrdered,
    /// 16 random bytes.
    Random,
}

/// A report of fresh tasks.
fn report(next: &AtomicU64, ids: Ids) -> Vec<UsageCharge> {
    (0..RECORDS)
        .map(|_| {
            let n = next.fetch_add(1, Ordering::Relaxed);
            let task = match ids {
                Ids::TimeOrdered => TaskId::time_ordered(1_765_000_000_000 + n, rand::random()),
                Ids::Random => TaskId::from_bytes(rand::random()),
            };
            let digest: [u8; 32] = rand::random();
            UsageCharge {
                record: UsageRecord {
                    task,
                    deployment: DeploymentId::from_bytes([1; 16]),
                    inputs_digest: digest,
                    key: KeyId::from_bytes([1; 16]),
                    ticket_nonce: NONCE,
                    input_bytes: 3136,
                    output_bytes: 40,
                    compute_us: 10,
                },
                node: node(),
                cost: Credits::new(3),
                at_s: 40,
            }
        })
        .collect()
}

fn charge(c: &mut Criterion, name: &str, ledger: &dyn Ledger, ids: Ids) {
    prepare(ledger);
    let next = AtomicU64::new(0);
    let mut g = c.benchmark_group("ledger/charge_usage");
    g.throughput(Throughput::Elements(RECORDS));
    g.sample_size(20);
    g.bench_function(name, |b| {
        b.iter_batched(
            || report(&next, ids),
            |charges| {
                let outcome = ledger.charge_usage(&charges).unwrap();
                assert_eq!(u64::from(outcome.accepted), RECORDS);
            },
            criterion::BatchSize::PerIteration,
        );
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteLedger::open(&dir.path().join("ledger.sqlite")).unwrap();
    charge(c, "sqlite", &sqlite, Ids::TimeOrdered);
    let random = SqliteLedger::open(&dir.path().join("random.sqlite")).unwrap();
    charge(c, "sqlite_random_ids", &random, Ids::Random);
    if let Ok(url) = std::env::var("CRAT_TEST_POSTGRES_URL") {
        let options = PgOptions {
            schema: format!("bench_ledger_{}", std::process::id()),
            ..PgOptions::default()
        };
        let pg = PgLedger::connect_with(&url, &options).unwrap();
        charge(c, "postgres", &pg, Ids::TimeOrdered);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
