//! Helpers shared by the dispatcher's integration tests: a loopback network of a real
//! dispatcher and tract nodes, SDK clients, raw calls for requests the SDK never sends, and
//! ([`scenarios`]) end-to-end scenarios run on QUIC and on iroh.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod scenarios;

use std::sync::Arc;

use crat_backend::InferenceBackend;
use crat_backend::tract::TractBackend;
use crat_core::hardware::{CpuInfo, HardwareInfo, PowerRating};
use crat_core::id::{NodeId, PeerAddr, SdkKey};
use crat_core::money::Credits;
use crat_core::pricing::{DeployPlan, PerInstancePlan, PerRequestPlan, UpdateFrequency};
use crat_core::sign::{Registration, Signed};
use crat_core::tensor::Tensor;
use crat_core::wire::{
    ClientCall, ClientRequest, DispatcherReply, DispatcherResponse, ErrorCode, NodeRequest,
};
use crat_dispatcher::DispatcherConfig;
use crat_dispatcher::admin;
use crat_dispatcher::ledger::AccountName;
use crat_sdk::{Client, ClientConfig};
use crat_testnet::{LocalNetwork, LocalTransport, NodeSpec, loopback_quic};
use crat_transport::iroh::IrohTransport;
use crat_transport::quic::{QuicConnection, QuicTransport};
use crat_transport::{ConnectionExt, Conversation, FrameLimits, Transport};
use ed25519_dalek::SigningKey;

pub const TINY: &[u8] = include_bytes!("../../../backend/models/tiny_cnn.onnx");

pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn backend() -> Arc<dyn InferenceBackend> {
    Arc::new(TractBackend::new())
}

pub fn config(dir: &std::path::Path) -> DispatcherConfig {
    let mut c = DispatcherConfig::new(dir.join("dispatcher"));
    c.dispatch.heartbeat_interval_s = 1;
    c.key_cache_ms = 0;
    c.tick_ms = 100;
    c
}

/// The GPUs the nodes of [`network`] declare, one node each.
pub const NETWORK_GPUS: [&str; 3] = [
    "NVIDIA GeForce RTX 3090",
    "NVIDIA GeForce RTX 3080",
    "NVIDIA GeForce GTX 1660 Ti",
];

/// Logs to the test's output as `RUST_LOG` says (`RUST_LOG=crat_dispatcher=info` shows what
/// the dispatcher does).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A QUIC network of three tract nodes ([`NETWORK_GPUS`]).
pub async fn network(config: DispatcherConfig, dir: &std::path::Path) -> LocalNetwork {
    init_tracing();
    LocalNetwork::start(config, dir, specs(&NETWORK_GPUS))
        .await
        .unwrap()
}

/// One tract node (batches of 4) per declared GPU.
pub fn specs(gpus: &[&str]) -> Vec<NodeSpec> {
    gpus.iter()
        .map(|g| NodeSpec {
            gpu: Some((*g).to_owned()),
            backend: backend(),
            batch_size: 4,
        })
        .collect()
}

/// A new SDK key of account `alice` at `net`'s dispatcher, `credits` granted to the account.
pub fn funded_key<T: LocalTransport>(net: &LocalNetwork<T>, credits: u64) -> SdkKey {
    let ledger = net.dispatcher().ledger().clone();
    let account = AccountName::new("alice").unwrap();
    admin::grant(&*ledger, &account, Credits::new(credits), now_s()).unwrap();
    admin::create_key(&*ledger, &account, now_s(), None).unwrap()
}

/// An SDK client of `net` ([`crat_sdk::connect`]: default settings) with a [`funded_key`].
pub async fn client_with(net: &LocalNetwork, credits: u64) -> (Client<QuicTransport>, SdkKey) {
    let key = funded_key(net, credits);
    let client = crat_sdk::connect(net.dispatcher_addr, net.dispatcher().id(), key.clone())
        .await
        .unwrap();
    (client, key)
}

/// How the [`scenarios`] get an SDK client of a network on transport `Self`.
#[allow(async_fn_in_trait)] // test support: nothing spawns these futures
pub trait Sdk: LocalTransport {
    /// A client with a [`funded_key`] granted `credits`.
    async fn client(net: &LocalNetwork<Self>, credits: u64) -> (Client<Self>, SdkKey);
}

impl Sdk for QuicTransport {
    /// [`client_with`].
    async fn client(net: &LocalNetwork, credits: u64) -> (Client<Self>, SdkKey) {
        client_with(net, credits).await
    }
}

impl Sdk for IrohTransport {
    /// An endpoint where the network's clients are (`LocalNetwork::bind_client`: with the
    /// relay, on IPv6 loopback in a relayed-only network), default client settings.
    async fn client(net: &LocalNetwork<Self>, credits: u64) -> (Client<Self>, SdkKey) {
        let key = funded_key(net, credits);
        let identity = SigningKey::from_bytes(&rand::random());
        let transport = net.bind_client(&identity).await.unwrap();
        let client = Client::connect_with(
            transport,
            identity,
            net.dispatcher_peer_addr(),
            net.dispatcher().id(),
            key.clone(),
            ClientConfig::default(),
        )
        .await
        .unwrap();
        (client, key)
    }
}

pub fn input(seed: u32) -> Tensor {
    let values: Vec<f32> = (0..28 * 28)
        .map(|i| {
            ((i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed * 97)
                % 1000) as f32
                / 1000.0
        })
        .collect();
    Tensor::from_slice(&[1, 1, 28, 28], &values).unwrap()
}

pub fn per_request(allowance: u64) -> DeployPlan {
    DeployPlan::PerRequest(PerRequestPlan {
        max_input_bytes: 1 << 16,
        credit_allowance: Credits::new(allowance),
    })
}

pub fn per_instance() -> DeployPlan {
    DeployPlan::PerInstance(PerInstancePlan {
        guaranteed_rps: 20,
        max_input_bytes: 1 << 16,
        update_frequency: UpdateFrequency::Never,
        key_lifetime_s: 3_600,
    })
}

/// Raw client → dispatcher call, for requests the SDK never sends, from a new endpoint where
/// `net`'s clients are.
pub async fn raw_call<T: LocalTransport>(
    net: &LocalNetwork<T>,
    key: &SdkKey,
    call: ClientCall,
) -> DispatcherResponse {
    let t = net
        .bind_client(&SigningKey::from_bytes(&rand::random()))
        .await
        .unwrap();
    let conn = t
        .connect(&net.dispatcher_peer_addr(), &net.dispatcher().id())
        .await
        .unwrap();
    conn.call(
        &ClientRequest {
            key: key.clone(),
            call,
        },
        Conversation::ClientDispatcher,
        FrameLimits::default(),
    )
    .await
    .unwrap()
}

/// Waits (10 s at most) until `count` usage records of `deployment` reached the ledger, and
/// 300 ms more for any that should not come; returns the totals then.
pub async fn settled_usage<T: LocalTransport>(
    net: &LocalNetwork<T>,
    deployment: &crat_core::id::DeploymentId,
    count: u64,
) -> (u64, Credits) {
    let ledger = net.dispatcher().ledger().clone();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while ledger.usage_totals(deployment).unwrap().0 < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "usage {:?} of {count}",
            ledger.usage_totals(deployment)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    ledger.usage_totals(deployment).unwrap()
}

/// A client written by hand: its own endpoint and identity, connected to the dispatcher, so
/// the tickets of the leases it fetches name it and it can present them to nodes directly.
pub struct RawClient {
    /// Its endpoint.
    pub transport: QuicTransport,
    /// Its identity key (the transport's).
    pub identity: SigningKey,
    dispatcher: crat_transport::quic::QuicConnection,
    key: SdkKey,
}

impl RawClient {
    /// A new identity, connected to `net`'s dispatcher, calling with `key`.
    pub async fn new(net: &LocalNetwork, key: &SdkKey) -> Self {
        let identity = SigningKey::from_bytes(&rand::random());
        let transport =
            QuicTransport::bind("127.0.0.1:0".parse().unwrap(), &identity, loopback_quic())
                .unwrap();
        let dispatcher = transport
            .connect(&PeerAddr::from(net.dispatcher_addr), &net.dispatcher().id())
            .await
            .unwrap();
        Self {
            transport,
            identity,
            dispatcher,
            key: key.clone(),
        }
    }

    /// Acknowledges to the dispatcher, as an honest client does, the answers received from
    /// `node` under `ticket`: each (task, inputs digest, cost), counted from the ticket's
    /// first task.
    pub async fn acknowledge(
        &self,
        ticket: &crat_core::sign::Signed<crat_core::sign::Ticket>,
        node: crat_core::id::NodeId,
        tasks: &[(crat_core::id::TaskId, [u8; 32], Credits)],
    ) {
        let proof = self.ack_proof(ticket, node, tasks);
        let answer: DispatcherResponse = self
            .dispatcher
            .call(
                &ClientRequest {
                    key: self.key.clone(),
                    call: ClientCall::Acknowledge(vec![proof]),
                },
                Conversation::ClientDispatcher,
                FrameLimits::default(),
            )
            .await
            .unwrap();
        assert_eq!(answer, DispatcherResponse::Ok);
    }

    /// The acknowledgement an honest client signs of the answers received from `node` under
    /// `ticket` (see [`RawClient::acknowledge`]), as it hands it to the node too.
    pub fn ack_proof(
        &self,
        ticket: &crat_core::sign::Signed<crat_core::sign::Ticket>,
        node: crat_core::id::NodeId,
        tasks: &[(crat_core::id::TaskId, [u8; 32], Credits)],
    ) -> crat_core::policy::acks::AckProof {
        let mut tally = crat_core::policy::acks::Tally::default();
        for (task, digest, cost) in tasks {
            tally.add(task, digest, *cost).unwrap();
        }
        crat_core::policy::acks::AckProof {
            ticket: ticket.clone(),
            ack: crat_core::sign::Signed::sign(tally.ack(ticket.body.nonce, node), &self.identity),
        }
    }

    /// A lease of `deployment`.
    pub async fn lease(&self, deployment: crat_core::id::DeploymentId) -> crat_core::wire::Lease {
        let answer: DispatcherResponse = self
            .dispatcher
            .call(
                &ClientRequest {
                    key: self.key.clone(),
                    call: ClientCall::Lease { deployment },
                },
                Conversation::ClientDispatcher,
                FrameLimits::default(),
            )
            .await
            .unwrap();
        match answer {
            DispatcherResponse::Lease(lease) => lease,
            other => panic!("no lease: {other:?}"),
        }
    }
}

/// What one tiny-CNN task costs at the default prices.
pub fn task_cost() -> u64 {
    crat_dispatcher::DispatcherConfig::new("x")
        .pricing
        .request_cost(TINY.len() as u64, 28 * 28 * 4)
        .unwrap()
        .get()
}

/// A QUIC endpoint on 127.0.0.1 with identity `key`.
pub fn endpoint(key: &SigningKey) -> QuicTransport {
    QuicTransport::bind("127.0.0.1:0".parse().unwrap(), key, loopback_quic()).unwrap()
}

/// A registration of `key`'s node: no GPU, nothing can be placed on it.
pub fn registration(key: &SigningKey, issued_at_s: u64, nonce: [u8; 16]) -> Signed<Registration> {
    Signed::sign(
        Registration {
            node: NodeId::from_key(&key.verifying_key()),
            hardware: HardwareInfo {
                gpus: vec![],
                cpu: CpuInfo {
                    model: "replayer".into(),
                    cores: 1,
                    memory_bytes: 1 << 30,
                },
            },
            rating: PowerRating::MIN,
            backends: vec![],
            listen_addrs: vec![PeerAddr::new("127.0.0.1:9").unwrap()],
            // Nothing is ever placed on it.
            model_bytes_max: 0,
            issued_at_s,
            nonce,
        },
        key,
    )
}

/// Opens a new connection from `from` and registers `reg` as its first request.
pub async fn register(
    net: &LocalNetwork,
    from: &QuicTransport,
    reg: &Signed<Registration>,
) -> (QuicConnection, DispatcherReply) {
    let conn = from
        .connect(&PeerAddr::from(net.dispatcher_addr), &net.dispatcher().id())
        .await
        .unwrap();
    let reply = conn
        .call(
            &NodeRequest::Register(Box::new(reg.clone())),
            Conversation::NodeDispatcher,
            FrameLimits::default(),
        )
        .await
        .unwrap();
    (conn, reply)
}

/// The code and message of a refusal (panics on anything else).
pub fn refusal(reply: &DispatcherReply) -> (ErrorCode, &str) {
    match reply {
        DispatcherReply::Error(e) => (e.code, e.message.as_str()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}
