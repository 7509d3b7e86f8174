//! Client traffic: leases through the SDK ([`crat_sdk`]) and the usage reports of the nodes
//! that served them. The harness plays both sides of the direct data path (no tensors travel):
//! for each lease, a simulated node in the ticket's audience "runs" a batch of tasks, the
//! client acknowledges them with an [`Ack`](crat_core::sign::Ack) signed by its own
//! transport identity (as the SDK does after real answers), and the node reports them as
//! [`UsageRecord`]s with that acknowledgement, so the dispatcher admits and charges them
//! rather than holding them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crat_core::id::{DeploymentId, NodeId, PeerAddr, SdkKey, TaskId};
use crat_core::money::Credits;
use crat_core::policy::acks::{AckProof, Tally};
use crat_core::pricing::{DeployPlan, PerRequestPlan};
use crat_core::sign::Signed;
use crat_core::wire::{DispatcherReply, USAGE_RECORDS_MAX, UsageRecord, UsageReport};
use crat_sdk::{Client, ClientConfig};
use crat_transport::quic::{QuicConfig, QuicTransport};
use ed25519_dalek::SigningKey;

use super::LoadError;
use super::fleet::{FleetStats, SimNode};
use super::stats::{Counter, Errors, Histogram};

/// The model deployed (the backend crate's tiny CNN: the dispatcher checks and gates it at
/// deploy time; no node runs it here).
const MODEL: &[u8] = include_bytes!("../../../crates/backend/models/tiny_cnn.onnx");
/// How long a deployment has to become ready (its nodes report ready in their next
/// heartbeat).
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// What the client side does.
#[derive(Clone, Debug)]
pub struct TrafficConfig {
    /// SDK keys (one client each, all of one funded account).
    pub keys: Vec<String>,
    /// Deployments leased (round robin).
    pub deployments: usize,
    /// Leases (each followed by its usage report) in flight at once, over all clients.
    pub concurrent: usize,
    /// Tasks reported per lease.
    pub tasks_per_lease: usize,
    /// Input bytes of each task.
    pub input_bytes: u64,
    /// Credits set aside per deployment.
    pub allowance_per_deployment: u64,
}

/// What the traffic saw.
#[derive(Default)]
pub struct TrafficStats {
    /// Lease round trips.
    pub lease: Histogram,
    /// Leases granted.
    pub leases: Counter,
    /// Leases refused or failed.
    pub leases_failed: Counter,
    /// Usage records charged (the dispatcher's `accepted`).
    pub charged: Counter,
    /// Usage records held (beyond the acknowledgement: should stay 0).
    pub held: Counter,
    /// Usage records answered as duplicates or not chargeable (should stay 0).
    pub duplicates: Counter,
    /// Usage reports refused or failed.
    pub reports_failed: Counter,
    errors: Errors,
}

impl TrafficStats {
    fn error(&self, what: &str, e: impl std::fmt::Display) {
        self.errors.record(what, e);
    }

    /// The first distinct errors seen.
    pub fn errors(&self) -> Vec<String> {
        self.errors.list()
    }
}

struct Leaser {
    client: Client<QuicTransport>,
    identity: SigningKey,
}

/// Clients connected and deployments ready.
pub struct Traffic {
    leasers: Vec<Leaser>,
    deployments: Vec<DeploymentId>,
    nodes: Arc<HashMap<NodeId, Arc<SimNode>>>,
    config: TrafficConfig,
    /// What it saw.
    pub stats: Arc<TrafficStats>,
}

impl Traffic {
    /// Connects one SDK client per key, uploads the model and deploys it
    /// `config.deployments` times (per request), and waits until they are ready.
    pub async fn setup(
        config: TrafficConfig,
        addr: SocketAddr,
        dispatcher: NodeId,
        nodes: &[Arc<SimNode>],
    ) -> Result<Self, LoadError> {
        if config.keys.is_empty() {
            return Err(LoadError::Config(
                "traffic needs at least one SDK key".into(),
            ));
        }
        if config.tasks_per_lease == 0 || config.tasks_per_lease > USAGE_RECORDS_MAX {
            return Err(LoadError::Config(format!(
                "tasks per lease must be 1..={USAGE_RECORDS_MAX}"
            )));
        }
        let mut leasers = Vec::with_capacity(config.keys.len());
        for key in &config.keys {
            let key: SdkKey = key
                .parse()
                .map_err(|e| LoadError::Config(format!("SDK key: {e}")))?;
            let identity = SigningKey::from_bytes(&rand::random());
            let transport = QuicTransport::bind(
                crat_sdk::client_bind_addr(addr),
                &identity,
                QuicConfig::default(),
            )?;
            let client = Client::connect_with(
                transport,
                identity.clone(),
                PeerAddr::from(addr),
                dispatcher,
                key,
                ClientConfig::default(),
            )
            .await?;
            leasers.push(Leaser { client, identity });
        }
        let first = &leasers[0].client;
        let model = first.upload_model(MODEL, |_| {}).await?;
        let mut deployments = Vec::with_capacity(config.deployments);
        for _ in 0..config.deployments.max(1) {
            let d = first
                .deploy(
                    model,
                    DeployPlan::PerRequest(PerRequestPlan {
                        max_input_bytes: config.input_bytes.max(1),
                        credit_allowance: Credits::new(config.allowance_per_deployment),
                    }),
                )
                .await?;
            d.wait_ready(READY_TIMEOUT).await?;
            deployments.push(d.id());
        }
        let nodes = Arc::new(nodes.iter().map(|n| (n.id, n.clone())).collect());
        Ok(Self {
            leasers,
            deployments,
            nodes,
            config,
            stats: Arc::new(TrafficStats::default()),
        })
    }

    /// Runs `config.concurrent` lease-and-report loops for `duration`; `fleet` collects the
    /// usage reports' latencies.
    pub async fn run(&self, duration: Duration, fleet: Arc<FleetStats>) {
        let deadline = Instant::now() + duration;
        let mut loops = tokio::task::JoinSet::new();
        for worker in 0..self.config.concurrent.max(1) {
            let leaser = &self.leasers[worker % self.leasers.len()];
            let client = leaser.client.clone();
            let identity = leaser.identity.clone();
            let deployment = self.deployments[worker % self.deployments.len()];
            let nodes = self.nodes.clone();
            let stats = self.stats.clone();
            let fleet = fleet.clone();
            let tasks = self.config.tasks_per_lease;
            let input_bytes = self.config.input_bytes;
            loops.spawn(async move {
                while Instant::now() < deadline {
                    let r = lease_and_report(
                        &client,
                        &identity,
                        deployment,
                        &nodes,
                        tasks,
                        input_bytes,
                        &stats,
                        &fleet,
                    )
                    .await;
                    if let Err(e) = r {
                        stats.error("lease and report", e);
                        // A refusal (a quota, say) is not retried in a tight loop.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            });
        }
        while loops.join_next().await.is_some() {}
    }
}

#[allow(clippy::too_many_arguments)]
async fn lease_and_report(
    client: &Client<QuicTransport>,
    identity: &SigningKey,
    deployment: DeploymentId,
    nodes: &HashMap<NodeId, Arc<SimNode>>,
    tasks: usize,
    input_bytes: u64,
    stats: &TrafficStats,
    fleet: &FleetStats,
) -> Result<(), LoadError> {
    // A fresh handle leases anew (a handle caches its lease until it is due).
    let started = Instant::now();
    let lease = match client.deployment(deployment).lease().await {
        Ok(l) => l,
        Err(e) => {
            stats.leases_failed.add(1);
            return Err(e.into());
        }
    };
    stats.lease.record(started.elapsed());
    stats.leases.add(1);
    let ticket = &lease.ticket.body;
    let pick = rand::random::<usize>() % lease.replicas.len().max(1);
    let node = lease
        .replicas
        .get(pick)
        .and_then(|r| nodes.get(&r.node))
        .ok_or(LoadError::NoReplica)?;
    let cost = ticket
        .price
        .cost(input_bytes)
        .ok_or_else(|| LoadError::Config("task price overflows".into()))?;
    let mut tally = Tally::default();
    let mut records = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        let task = TaskId::from_bytes(rand::random());
        let inputs_digest: [u8; 32] = rand::random();
        tally
            .add(&task, &inputs_digest, cost)
            .ok_or_else(|| LoadError::Config("acknowledged credits overflow".into()))?;
        records.push(UsageRecord {
            task,
            deployment,
            inputs_digest,
            key: ticket.key,
            ticket_nonce: ticket.nonce,
            input_bytes,
            output_bytes: 64,
            compute_us: 1_000,
        });
    }
    let ack = Signed::sign(tally.ack(ticket.nonce, node.id), identity);
    let report = UsageReport {
        records,
        acks: vec![AckProof {
            ticket: lease.ticket.clone(),
            ack,
        }],
    };
    match node.report_usage(report, fleet).await {
        Ok(DispatcherReply::UsageAck {
            accepted,
            duplicates,
            held,
        }) => {
            stats.charged.add(u64::from(accepted));
            stats.duplicates.add(u64::from(duplicates));
            stats.held.add(held.len() as u64);
            Ok(())
        }
        Ok(other) => {
            stats.reports_failed.add(1);
            Err(LoadError::Refused(format!("usage report: {other:?}")))
        }
        Err(e) => {
            stats.reports_failed.add(1);
            Err(e)
        }
    }
}
