//! Two `crat dispatcher` processes sharing one PostgreSQL ledger, one model store (the object
//! store on a shared directory, or an S3 bucket), one payouts directory and one key
//! (`crat_dispatcher::cluster`): the first is active, the second stands by and forwards its
//! nodes and clients to it.
//!
//! - A node registered through the standby is placed by the active dispatcher, and a client
//!   that leases through the standby is charged (exactly) through the active one.
//! - The active dispatcher is killed (SIGKILL) while a client runs tasks through the standby:
//!   the standby takes over within seconds, the nodes register with it, the client's tasks go
//!   on, and it goes on closing rounds. Nothing is lost: every answered task is charged once,
//!   the ledger's money is conserved, the rounds are consecutive and each is settled once.
//!
//! Needs a PostgreSQL server: its URL in `CRAT_TEST_POSTGRES_URL`, and for the first test an
//! S3-compatible service: its endpoint in `CRAT_TEST_S3_ENDPOINT` (`scripts/test.sh` starts
//! both and sets them). Without them the tests fail, saying so.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

#[allow(dead_code)]
mod common;
#[path = "chaos/processes.rs"]
#[allow(dead_code)]
mod processes;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::Network;
use crat_core::id::{DeploymentId, NodeId};
use crat_core::money::Credits;
use crat_core::pricing::PricingParams;
use crat_core::tensor::{NamedTensor, Tensor};
use crat_dispatcher::ledger::{Ledger, PgLedger, PgOptions};
use processes::{DispatcherProc, NodeProc, free_port};

/// How long a process may take to start (used by `processes`).
const START_TIMEOUT: Duration = Duration::from_secs(60);
const TINY: &[u8] = include_bytes!("../../backend/models/tiny_cnn.onnx");
/// The input the tasks send: f32, 1x1x28x28.
const INPUT_BYTES: u64 = 4 * 28 * 28;

/// Where the dispatchers of a [`Cluster`] keep models.
#[derive(Clone, Copy)]
enum ModelStore {
    /// The object store on a directory both use (`file://`).
    SharedDir,
    /// A bucket of the test S3 service (`s3://`, set up by `models_store_options`).
    S3,
}

/// Two dispatchers on one ledger: `net.dispatcher` (started first, active) and `standby`.
struct Cluster {
    net: Network,
    standby: DispatcherProc,
    ledger: PgLedger,
    payouts: std::path::PathBuf,
}

impl Cluster {
    /// Starts both under `dir`, with `settings` added to their `[dispatcher]` table.
    async fn start(dir: &Path, settings: &str) -> Self {
        Self::start_with(dir, settings, ModelStore::SharedDir).await
    }

    /// [`Cluster::start`], with the model store `store`.
    async fn start_with(dir: &Path, settings: &str, store: ModelStore) -> Self {
        let url = common::postgres_url();
        // A schema of this test's own: runs sharing a server never meet.
        let schema = format!(
            "cluster_{}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let ledger_args = ["--ledger", url.as_str(), "--ledger-schema", schema.as_str()];
        let shared = dir.join("shared");
        let payouts = shared.join("payouts");
        let models = match store {
            ModelStore::SharedDir => format!(
                "models_store = \"file://{}\"\n",
                shared.join("models").display()
            ),
            // Under a prefix of this test's own in the bucket.
            ModelStore::S3 => format!(
                "models_store = \"s3://crat-test/{schema}/models\"\n\
                 models_store_options = {{ aws_endpoint = \"{}\", aws_allow_http = \"true\", \
                 aws_access_key_id = \"test\", aws_secret_access_key = \"test\", \
                 aws_region = \"us-east-1\" }}\n",
                common::s3_endpoint()
            ),
        };
        let settings = format!(
            "heartbeat_interval_s = 1\nproof_scale = \"test\"\n\
             {models}payouts_dir = \"{}\"\n{settings}",
            payouts.display()
        );
        let net = Network::start_on_ledger(dir, &settings, &ledger_args)
            .await
            .unwrap();
        // The second dispatcher: its own data directory, the cluster's key.
        let data = dir.join("dispatcher-b");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(dir.join("logs-standby")).unwrap();
        std::fs::copy(net.data.join("dispatcher.key"), data.join("dispatcher.key")).unwrap();
        let mut standby = DispatcherProc {
            port: free_port(&[net.dispatcher.port]).unwrap(),
            data,
            config: net.dispatcher.config.clone(),
            // Its own log files (their names count lives, as the active one's do).
            logs: dir.join("logs-standby"),
            proc: None,
            lives: 0,
            id: Some(net.id.clone()),
            args: ledger_args.iter().map(|a| (*a).to_owned()).collect(),
        };
        standby.start().await.unwrap();
        assert!(
            standby
                .proc
                .as_ref()
                .unwrap()
                .tail()
                .contains("standing by"),
            "the second dispatcher should stand by:\n{}",
            standby.proc.as_ref().unwrap().tail()
        );
        let ledger = PgLedger::connect_with(
            &url,
            &PgOptions {
                schema,
                pool_size: 2,
                ..PgOptions::default()
            },
        )
        .unwrap();
        Self {
            net,
            standby,
            ledger,
            payouts,
        }
    }

    /// A node registering through `through`, with `alternate` as the dispatcher's other
    /// address when given.
    fn node(
        &self,
        index: usize,
        dir: &Path,
        through: &DispatcherProc,
        alternate: Option<&DispatcherProc>,
        extra: &[&str],
    ) -> NodeProc {
        let mut node = NodeProc {
            index,
            port: free_port(&[self.net.dispatcher.port, self.standby.port]).unwrap(),
            data: dir.join(format!("node{index}")),
            logs: self.net.logs.clone(),
            proc: None,
            lives: 0,
        };
        let more = alternate.map(|a| a.addr());
        let more: Vec<&str> = more
            .iter()
            .flat_map(|a| ["--dispatcher-alternate", a.as_str()])
            .chain(extra.iter().copied())
            .collect();
        node.start_with(through, &more).unwrap();
        node
    }

    /// An SDK client of the cluster through `through`, with `alternate` as the dispatcher's
    /// other address when given.
    async fn client(
        &self,
        through: &DispatcherProc,
        alternate: Option<&DispatcherProc>,
    ) -> crat_sdk::Client<crat_transport::quic::QuicTransport> {
        let config = crat_sdk::ClientConfig {
            dispatcher_alternates: alternate
                .map(|a| crat_core::id::PeerAddr::new(a.addr()).unwrap())
                .into_iter()
                .collect(),
            ..crat_sdk::ClientConfig::default()
        };
        crat_sdk::connect_quic_with(
            through.addr().parse().unwrap(),
            self.net.id.parse::<NodeId>().unwrap(),
            self.net.key.parse().unwrap(),
            config,
            crat_transport::quic::QuicConfig::default(),
        )
        .await
        .unwrap()
    }

    fn logs(&self) -> String {
        let tail = |d: &DispatcherProc| d.proc.as_ref().map(|p| p.tail()).unwrap_or_default();
        format!(
            "active:\n{}\nstandby:\n{}",
            tail(&self.net.dispatcher),
            tail(&self.standby)
        )
    }

    /// Waits until the ledger has charged `credits` for `deployment` (at most 90 s).
    async fn charged(&self, deployment: &DeploymentId, credits: Credits) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (_, charged) = self.ledger.usage_totals(deployment).unwrap();
            if charged == credits {
                return;
            }
            assert!(
                charged < credits,
                "charged {charged:?}, more than the {credits:?} answered"
            );
            assert!(
                Instant::now() < deadline,
                "charged {charged:?} of {credits:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn zeros() -> Vec<NamedTensor> {
    vec![NamedTensor::new(
        "input",
        Tensor::from_slice(&[1, 1, 28, 28], &[0f32; 784]).unwrap(),
    )]
}

/// The price of one task of the tiny CNN on `deployment`.
fn task_price(ledger: &PgLedger, deployment: &DeploymentId) -> Credits {
    let d = ledger.deployment(deployment).unwrap().unwrap();
    PricingParams::default()
        .request_cost(d.model_bytes, INPUT_BYTES)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_forwards_nodes_and_clients_to_the_active_dispatcher() {
    let dir = tempfile::tempdir().unwrap();
    // Models in an S3 bucket (moto's server): both dispatchers open it; the active one
    // stores the model deployed through it and serves it to both nodes.
    let cluster = Cluster::start_with(dir.path(), "replicas = 2\n", ModelStore::S3).await;
    // One node registers with the active dispatcher, one through the standby.
    let _direct = cluster.node(0, dir.path(), &cluster.net.dispatcher, None, &[]);
    let _forwarded = cluster.node(1, dir.path(), &cluster.standby, None, &[]);
    // Deployed through the active dispatcher, on both nodes: the one registered through the
    // standby is placed by the active dispatcher.
    let (_, deployment, _) = cluster.net.deploy(dir.path(), TINY).unwrap();
    let id: DeploymentId = deployment.parse().unwrap();
    let via_standby = cluster.client(&cluster.standby, None).await;
    let d = via_standby.deployment(id);
    let info = d.wait_ready(Duration::from_secs(60)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut info = info;
    while info.replicas_ready < 2 {
        assert!(
            Instant::now() < deadline,
            "both nodes never served: {info:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        info = d.info().await.unwrap();
    }
    // Leased through the standby; the nodes report to the dispatchers they registered with.
    const TASKS: u64 = 30;
    for _ in 0..TASKS {
        d.infer(zeros()).await.unwrap();
    }
    d.flush_acks().await.unwrap();
    let price = task_price(&cluster.ledger, &id);
    cluster
        .charged(&id, Credits::new(price.get() * TASKS))
        .await;
    let totals = cluster.ledger.totals().unwrap();
    assert!(totals.is_conserved(), "{totals:?}");
    // The tasks went to both nodes (the client connected to two).
    assert_eq!(
        via_standby.node_paths().len(),
        2,
        "{:?}",
        via_standby.node_paths()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_active_dispatcher_is_replaced_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(
        dir.path(),
        // Usage is accepted for 40 s after its ticket expires: longer than a node or client
        // on the killed dispatcher takes to find it dead (the transport's 30 s idle timeout).
        "replicas = 2\nround_s = 6\nround_close_delay_s = 1\nticket_lifetime_s = 10\n\
         usage_grace_s = 40\n",
    )
    .await;
    // One node registers with the active dispatcher, one through the standby, each knowing
    // the other's address; the client leases through the active dispatcher and knows the
    // standby's address too. When the active one dies, the node and the client on it go to
    // the other address.
    let n0 = cluster.node(
        0,
        dir.path(),
        &cluster.net.dispatcher,
        Some(&cluster.standby),
        &[],
    );
    let n1 = cluster.node(
        1,
        dir.path(),
        &cluster.standby,
        Some(&cluster.net.dispatcher),
        &[],
    );
    let client = cluster
        .client(&cluster.net.dispatcher, Some(&cluster.standby))
        .await;
    let model = client.upload_model(TINY, |_| {}).await.unwrap();
    // Stored in the object store on the shared directory, where either dispatcher reads it.
    let stored = dir.path().join("shared/models").join(model.to_string());
    assert_eq!(
        std::fs::read(&stored).unwrap(),
        TINY,
        "{}",
        stored.display()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let d = loop {
        match client
            .deploy(
                model,
                crat_core::pricing::DeployPlan::PerRequest(crat_core::pricing::PerRequestPlan {
                    max_input_bytes: 1 << 16,
                    credit_allowance: Credits::new(50_000),
                }),
            )
            .await
        {
            Ok(d) => break d,
            Err(e) if e.to_string().contains("capacity") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("deploy: {e}\n{}", cluster.logs()),
        }
    };
    let id = d.id();
    d.wait_ready(Duration::from_secs(60)).await.unwrap();

    // Load: tasks one after another, counting those answered.
    let answered = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (d, answered, failed, stop) =
            (d.clone(), answered.clone(), failed.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match d.infer(zeros()).await {
                    Ok(_) => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            d.flush_acks().await
        })
    };

    // The active dispatcher closes a round, then dies.
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.ledger.last_round().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "no round closed\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before_kill = answered.load(Ordering::Relaxed);
    assert!(before_kill > 0, "no task answered before the kill");
    cluster.net.dispatcher.kill().unwrap();
    let killed_at = Instant::now();
    let closed_before = cluster.ledger.last_round().unwrap().unwrap().index;

    // The standby takes over within seconds, and the tasks go on.
    cluster
        .standby
        .proc
        .as_mut()
        .unwrap()
        .wait_for("taking over as the active dispatcher")
        .await
        .unwrap();
    let took_over = killed_at.elapsed();
    assert!(
        took_over < Duration::from_secs(15),
        "took over after {took_over:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let after_kill = answered.load(Ordering::Relaxed);
    while answered.load(Ordering::Relaxed) < after_kill + 20 {
        assert!(
            Instant::now() < deadline,
            "tasks did not resume after the takeover\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // It closes the next rounds.
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.ledger.last_round().unwrap().unwrap().index < closed_before + 2 {
        assert!(
            Instant::now() < deadline,
            "the new active dispatcher closes no round\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap().unwrap();
    let answered = answered.load(Ordering::Relaxed);

    // Every answered task is charged once. And nothing more will be: no node holds usage it
    // has not reported, and no acknowledgement holds work not charged (which its settlement,
    // after the usage window, would charge).
    let price = task_price(&cluster.ledger, &id);
    cluster
        .charged(&id, Credits::new(price.get() * answered))
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in [&n0, &n1] {
        while !node.journal().unwrap().is_empty() {
            assert!(
                Instant::now() < deadline,
                "node {} holds usage it does not report\n{}",
                node.index,
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    cluster
        .charged(&id, Credits::new(price.get() * answered))
        .await;
    for a in cluster.ledger.unsettled_acks(10_000).unwrap() {
        assert_eq!(a.entry.unreported(a.ticket_nonce, a.node), None, "{a:?}");
    }
    let totals = cluster.ledger.totals().unwrap();
    assert!(totals.is_conserved(), "{totals:?}");

    // The rounds are consecutive, each closed once and settled once, paid into the shared
    // payouts directory once.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster.ledger.unsettled_rounds(64).unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "rounds left unsettled\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut rounds: Vec<u64> = cluster
        .ledger
        .rounds(1_000)
        .unwrap()
        .iter()
        .map(|r| r.index)
        .collect();
    rounds.sort_unstable();
    let (first, last) = (rounds[0], *rounds.last().unwrap());
    assert_eq!(rounds, (first..=last).collect::<Vec<_>>(), "rounds skipped");
    assert!(last >= closed_before + 2);
    for r in &rounds {
        assert!(cluster.ledger.round_settlement(*r).unwrap().is_some());
    }
    let files = std::fs::read_dir(&cluster.payouts)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .count();
    assert!(
        files <= rounds.len(),
        "{files} payout files for {} rounds",
        rounds.len()
    );
    eprintln!(
        "took over in {took_over:?}; {answered} tasks answered ({before_kill} before the kill), \
         {} failed during the failover; rounds {first}..={last} ({closed_before} closed before \
         the kill)",
        failed.load(Ordering::Relaxed)
    );
}

/// The same on the iroh transport (the networks whose nodes sit behind NATs): iroh will not
/// dial its own identity, so the standby's link goes out from an endpoint of its own, proven a
/// member by the cluster key's signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_forwards_on_the_iroh_transport_too() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(
        dir.path(),
        "replicas = 2\n[network]\ntransport = \"iroh\"\n",
    )
    .await;
    let iroh = ["--transport", "iroh"];
    let _direct = cluster.node(0, dir.path(), &cluster.net.dispatcher, None, &iroh);
    let _forwarded = cluster.node(1, dir.path(), &cluster.standby, None, &iroh);
    // Every client verb through the standby.
    let addr = cluster.standby.addr();
    let verb = |verb: &str, args: &[&str]| {
        let flags = [
            "--dispatcher",
            addr.as_str(),
            "--dispatcher-id",
            cluster.net.id.as_str(),
            "--key",
            cluster.net.key.as_str(),
            "--transport",
            "iroh",
        ];
        let out = common::crat(&[&[verb][..], &flags, args].concat());
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            stderr,
        )
    };
    let path = dir.path().join("model.onnx");
    std::fs::write(&path, TINY).unwrap();
    let (ok, model, stderr) = verb("upload", &[path.to_str().unwrap()]);
    assert!(ok, "upload: {stderr}\n{}", cluster.logs());
    let deadline = Instant::now() + Duration::from_secs(60);
    let deployment = loop {
        let (ok, out, stderr) = verb("deploy", &["--model", &model, "--allowance", "50000"]);
        if ok {
            break out;
        }
        assert!(
            stderr.contains("no capacity") && Instant::now() < deadline,
            "deploy: {stderr}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let id: DeploymentId = deployment.parse().unwrap();
    const TASKS: u64 = 20;
    let (ok, _, stderr) = verb(
        "infer",
        &[
            "--deployment",
            &deployment,
            "--input",
            "input:f32:1x1x28x28=zeros",
            "--repeat",
            "20",
        ],
    );
    assert!(ok, "infer: {stderr}\n{}", cluster.logs());
    let price = task_price(&cluster.ledger, &id);
    cluster
        .charged(&id, Credits::new(price.get() * TASKS))
        .await;
    let totals = cluster.ledger.totals().unwrap();
    assert!(totals.is_conserved(), "{totals:?}");
}
