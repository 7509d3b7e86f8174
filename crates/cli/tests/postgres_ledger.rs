//! `crat dispatcher --ledger postgres://…` as the built binaries run it: the dispatcher keeps
//! its ledger in a schema of its own of the test PostgreSQL server, the operator verbs
//! (`crat credits`, `crat keys`) reach the same ledger with the same `--ledger`, and a client
//! uploads, deploys and infers through a `crat node`, all over TLS to the server
//! (`--ledger-ca`). The client's credits go down by exactly the deployment's up-front price,
//! its allowance by exactly the task's price, and the ledger the test reads directly agrees
//! with `crat credits balance`.
//!
//! Needs a PostgreSQL server: its URL in `CRAT_TEST_POSTGRES_URL` (`scripts/test.sh` starts one
//! and sets it). Without it the test fails, saying so.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

#[allow(dead_code)]
mod common;
#[path = "chaos/processes.rs"]
#[allow(dead_code)]
mod processes;

use std::time::{Duration, Instant};

use common::Network;
use crat_core::id::DeploymentId;
use crat_core::money::Credits;
use crat_core::pricing::PricingParams;
use crat_dispatcher::ledger::{Ledger, PgLedger, PgOptions};
use processes::{NodeProc, operator};

/// How long a process may take to start (used by `processes`).
const START_TIMEOUT: Duration = Duration::from_secs(60);
const TINY: &[u8] = include_bytes!("../../backend/models/tiny_cnn.onnx");
/// The input `infer_zeros` sends: f32, 1x1x28x28.
const INPUT_BYTES: u64 = 4 * 28 * 28;
const GRANTED: u64 = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_on_postgres_charges_exactly_the_price() {
    // Over TLS, verified against the test server's CA: `--ledger-ca` reaches the dispatcher
    // and the operator verbs (without it, `sslmode=require` would verify against the Mozilla
    // roots, and the test server's certificate would be refused).
    let url = format!("{}?sslmode=require", common::postgres_url());
    let ca = common::postgres_ca();
    let ca = ca.to_str().unwrap();
    // A schema of this test's own: runs sharing a server never meet.
    let schema = format!("cli_{}_{:08x}", std::process::id(), rand::random::<u32>());
    let ledger_args = [
        "--ledger",
        url.as_str(),
        "--ledger-schema",
        schema.as_str(),
        "--ledger-ca",
        ca,
    ];
    let dir = tempfile::tempdir().unwrap();
    let net = Network::start_on_ledger(
        dir.path(),
        "replicas = 1\nheartbeat_interval_s = 1\nproof_scale = \"test\"\n",
        &ledger_args,
    )
    .await
    .unwrap();
    let mut node = NodeProc {
        index: 0,
        port: net.free_port().unwrap(),
        data: dir.path().join("node"),
        logs: net.logs.clone(),
        proc: None,
        lives: 0,
    };
    node.start(&net.dispatcher).unwrap();
    let data = net.data.to_str().unwrap().to_owned();
    let balance = || {
        operator(
            &[
                &[
                    "credits",
                    "balance",
                    "--data-dir",
                    &data,
                    "--account",
                    "test",
                ][..],
                &ledger_args,
            ]
            .concat(),
        )
        .unwrap()
        .trim()
        .to_owned()
    };
    assert_eq!(balance(), format!("balance {GRANTED} credits"));

    let (_model, deployment, _) = net.deploy(dir.path(), TINY).unwrap();
    let ledger = PgLedger::connect_with(
        &url,
        &PgOptions {
            schema: schema.clone(),
            pool_size: 2,
            ca_file: Some(common::postgres_ca()),
            ..PgOptions::default()
        },
    )
    .unwrap();
    let id: DeploymentId = deployment.parse().unwrap();
    let deployed = ledger.deployment(&id).unwrap().unwrap();
    let upfront = deployed.price.upfront;
    assert!(upfront > Credits::ZERO);
    assert_eq!(
        balance(),
        format!("balance {} credits", GRANTED - upfront.get())
    );

    net.infer_zeros(&deployment).unwrap();
    // The node reports the task's usage; the dispatcher charges it to the ledger.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (tasks, charged) = loop {
        let totals = ledger.usage_totals(&id).unwrap();
        if totals.0 >= 1 {
            break totals;
        }
        assert!(
            Instant::now() < deadline,
            "the task's usage never reached the ledger; the dispatcher said:\n{}",
            net.dispatcher
                .proc
                .as_ref()
                .map(|p| p.tail())
                .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let price = PricingParams::default()
        .request_cost(deployed.model_bytes, INPUT_BYTES)
        .unwrap();
    assert_eq!((tasks, charged), (1, price));
    let after = ledger.deployment(&id).unwrap().unwrap();
    assert_eq!(
        after.allowance_left,
        deployed.allowance_left.checked_sub(price).unwrap()
    );
    // The task was paid from the allowance: the balance is what the deploy left, and the
    // ledger read directly agrees with `crat credits balance`.
    let direct = ledger
        .balance(&crat_dispatcher::ledger::AccountName::new("test").unwrap())
        .unwrap();
    assert_eq!(direct, Credits::new(GRANTED - upfront.get()));
    assert_eq!(balance(), format!("balance {} credits", direct.get()));
    assert_eq!(ledger.income(0, u64::MAX).unwrap(), price);
    let totals = ledger.totals().unwrap();
    assert!(totals.is_conserved(), "{totals:?}");
    assert_eq!(totals.granted, Credits::new(GRANTED));
    // Nothing went to a SQLite file.
    assert!(!net.data.join("ledger.sqlite").exists());
}
