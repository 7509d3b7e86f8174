//! The dispatcher load harness at small scale, so that it cannot rot: a few hundred
//! simulated nodes against a real `crat dispatcher` process, on SQLite and on PostgreSQL
//! (`CRAT_TEST_POSTGRES_URL`, set by `scripts/test.sh`; without it the PostgreSQL test fails).
//! Every node must register and heartbeat, leases must be granted and the nodes' usage
//! reports charged (none held, none duplicate).

use std::path::PathBuf;
use std::process::Command;

use crat_benches::load::dispatcher::LedgerChoice;
use crat_benches::load::{LoadConfig, Report, run};

const NODES: usize = 300;

/// The `crat` binary: `CRAT_BIN`, else the one next to this test's target directory (a
/// workspace test run builds it), else built now.
fn crat_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("CRAT_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("the test knows its own path");
    // target/<profile>/deps/load-… → target/<profile>/crat
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("a test binary lives in target/<profile>/deps");
    let bin = profile_dir.join("crat");
    if !bin.is_file() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "crat-cli", "--bin", "crat"])
            .status()
            .expect("running cargo build for the crat binary");
        assert!(
            status.success(),
            "cargo build -p crat-cli --bin crat failed"
        );
    }
    assert!(bin.is_file(), "no crat binary at {}", bin.display());
    bin
}

fn small(ledger: LedgerChoice) -> LoadConfig {
    let mut c = LoadConfig::from_env().expect("load settings");
    c.bin = crat_bin();
    c.ledger = ledger;
    c.nodes = NODES;
    c.nodes_per_endpoint = 100;
    c.join_rate_per_s = 500;
    c.heartbeat_interval_s = 1;
    c.measure_s = 3;
    c.traffic_s = 3;
    c.keys = 2;
    c.deployments = 1;
    c.concurrent = 4;
    c.tasks_per_lease = 5;
    c.dir = None;
    c
}

fn check(report: &Report) {
    println!("{report}");
    assert_eq!(report.registered, NODES as u64, "every node registers");
    assert_eq!(report.heartbeats_refused, 0, "no heartbeat refused");
    assert_eq!(report.connections_lost, 0, "no connection lost");
    // Every node heartbeats once a second: at least half that rate answered in the window.
    assert!(
        report.heartbeats.heartbeats_per_s >= NODES as f64 * 0.5,
        "heartbeats answered: {:.0}/s",
        report.heartbeats.heartbeats_per_s
    );
    assert!(
        report.challenges.0 >= NODES as u64,
        "every node's challenge answered"
    );
    let traffic = report.traffic.as_ref().expect("a lease and usage window");
    assert!(traffic.leases_per_s > 0.0, "leases granted");
    assert!(traffic.charges_per_s > 0.0, "usage charged");
    assert_eq!(report.not_charged, (0, 0), "no usage held or duplicate");
    assert!(report.rss_joined_bytes > 0 && report.heartbeats.cpu_cores > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_harness_on_sqlite() {
    let report = run(&small(LedgerChoice::Sqlite)).await.expect("load run");
    check(&report);
}

fn postgres() -> LedgerChoice {
    let url = std::env::var("CRAT_TEST_POSTGRES_URL").expect(
        "CRAT_TEST_POSTGRES_URL is not set: run scripts/test.sh, or start PostgreSQL with \
         scripts/postgres.sh start and export the URL it prints",
    );
    let schema = format!("load_test_{:08x}", rand::random::<u32>());
    LedgerChoice::Postgres { url, schema }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_harness_on_postgres() {
    let report = run(&small(postgres())).await.expect("load run");
    check(&report);
}

/// Two dispatchers on one ledger: the clients lease through the standby, the nodes report
/// their usage to the active one, and every charge is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_harness_through_a_standby() {
    let config = LoadConfig {
        standby: true,
        ..small(postgres())
    };
    let report = run(&config).await.expect("load run");
    check(&report);
    assert!(report.standby_cpu_cores.is_some_and(|c| c > 0.0));
}
