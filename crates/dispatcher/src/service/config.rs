//! What a dispatcher is configured with.

use crate::blob::UploadConfig;
use std::path::PathBuf;

use crat_core::bps::Bps;
use crat_core::dispatch::DispatchConfig;
use crat_core::limit::RateLimit;
use crat_core::policy::hardware::ProofConfig;
use crat_core::pricing::PricingParams;
use crat_rewards::Params;
use crat_transport::FrameLimits;

use super::canary::CanaryConfig;
use super::gate::GateConfig;
use crate::rounds::RoundClock;

/// Exchanges a peer may have open at once on a connection a dispatcher accepted, until the
/// dispatcher knows it for a client or a standby's link (then it allows
/// [`DispatcherConfig::concurrency_max`]); nodes stay at this. A dispatcher's transport is
/// bound with it (`QuicConfig::streams_accepted_initial`, `IrohConfig::streams_initial`):
/// QUIC keeps state for every stream a peer may open, about 20 KB per connection at 256,
/// which a dispatcher with 100,000 nodes would hold for nothing. A node opens a few at once
/// (heartbeat, usage reports, registration); more wait for the dispatcher to end one. QUIC
/// grants a peer new streams in a frame of its own every eighth of the limit, which at 32
/// makes a heartbeat cost about a tenth more datagrams than at 256; at 128 the dispatcher
/// held 13 KB more per node for about 3 % less CPU at 100,000 nodes (`cargo bench --bench
/// dispatcher_load`), so 32.
pub const ACCEPTED_EXCHANGES_INITIAL: u32 = 32;

/// Everything a dispatcher is configured with.
#[derive(Clone, Debug)]
pub struct DispatcherConfig {
    /// Where the ledger, models, partial uploads and payouts live.
    pub data_dir: PathBuf,
    /// Where models are stored (default `data_dir/models`): a directory every dispatcher
    /// sharing a ledger mounts ([`crate::cluster`]).
    pub models_dir: PathBuf,
    /// Models in an object store instead of [`models_dir`](Self::models_dir): a URL
    /// `ObjectBlobStore::from_url` opens (`file:///dir`, `s3://bucket/prefix`; feature
    /// `object-store`, and `s3` for S3). Default `None`.
    pub models_store: Option<String>,
    /// Settings of [`models_store`](Self::models_store) over what the environment says
    /// (`ObjectBlobStore::from_url_with`): for S3, `object_store`'s option names, e.g.
    /// `("aws_endpoint", "https://minio.internal:9000")`. Default none. Shown by name only.
    pub models_store_options: StoreOptions,
    /// Where payouts are written (default `data_dir/payouts`): a directory every dispatcher
    /// sharing a ledger mounts, so that a round settled by one is never paid again by another
    /// after a crash between paying and recording it.
    pub payouts_dir: PathBuf,
    /// Where the dispatchers sharing this one's ledger reach it while it is the active one
    /// ([`crate::cluster`]); default: its transport's address.
    pub cluster_addr: Option<crat_core::id::PeerAddr>,
    /// Dispatch rules (heartbeats, replicas, capacity).
    pub dispatch: DispatchConfig,
    /// Prices.
    pub pricing: PricingParams,
    /// Round economics; `rewards.round_s` is the round length.
    pub rewards: Params,
    /// Start of round 0 (Unix seconds). Default 0: rounds are aligned to `round_s`.
    pub round_epoch_s: u64,
    /// How long after a round ends it is closed (so last heartbeats land). Default 10 s.
    pub round_close_delay_s: u64,
    /// How long a node that holds nothing (no CRAT, no streak) and does nothing (no session,
    /// no validation) keeps its ledger record: after each round closes, records idle since
    /// this long before the round's start are removed,
    /// [`NODE_RECORDS_FORGOTTEN_PER_ROUND`](crate::ledger::NODE_RECORDS_FORGOTTEN_PER_ROUND)
    /// at most ([`crate::ledger::Ledger::forget_idle_nodes`]). Throwaway registrations
    /// thus leave nothing behind for long; a node that earned CRAT is kept. Default 30 days.
    pub node_records_kept_s: u64,
    /// Lifetime of a lease's ticket. Default 300 s.
    pub ticket_lifetime_s: u64,
    /// Tickets remembered (by nonce) so that usage is charged only under a ticket this
    /// dispatcher issued for that deployment to that node. Past it, with every remembered
    /// ticket still live, a lease is answered `Busy`. Default 262,144.
    pub tickets_tracked_max: usize,
    /// Of those, most of one SDK key: a key leasing as fast as it may fills its own share and
    /// gets `QuotaExceeded`, every other key still leases. Default 16,384 (a key renewing
    /// a 300 s lease every 240 s can keep about 1,000 deployment handles leased).
    pub tickets_per_key_max: usize,
    /// A per-request deployment whose allowance is spent is stopped after this long (leases
    /// issued before it ran out have expired by then). Default 300 s.
    pub spent_deployment_idle_s: u64,
    /// Deployments an account may have running at once; past it, a deploy is answered
    /// `QuotaExceeded`. Default 256.
    pub deployments_per_account_max: usize,
    /// Least time between two model updates of a per-request deployment (each is paid from
    /// its allowance; per-instance plans are spaced by their update frequency). Default 60 s.
    pub update_interval_s: u64,
    /// (ticket, node) pairs whose acknowledged and charged work is tracked in memory until
    /// the ticket's usage window ends (the ledger keeps them all). Past it, acknowledgements
    /// are still stored and answered `Ok`: their pairs' records are held until the window
    /// ends, and the ledger's settlement charges the acknowledged work then. Default 262,144.
    pub acks_tracked_max: usize,
    /// How long after a ticket expires its usage is still accepted (nodes retry reports).
    /// Also how long after a start usage under tickets of a previous run is accepted from a
    /// node that serves the deployment. Default 3,600 s.
    pub usage_grace_s: u64,
    /// Frame caps.
    pub frame_limits: FrameLimits,
    /// Largest model accepted. Default 1 GiB.
    pub model_bytes_max: u64,
    /// What a node holds of one model: a model whose memory estimate (from its graph, before
    /// anything loads it: [`crat_backend::onnx_check::MemoryEstimate`]) is above it is refused
    /// at upload and at deploy (`ModelRejected`, with the estimate and what it is made of).
    /// Default 8 GiB, the model memory of `crat node` (each node also refuses to load a model
    /// estimated above its own, a failed load the deployment counts).
    pub model_memory_bytes_max: u64,
    /// Partial uploads kept at once. Default 64.
    pub uploads_max: usize,
    /// Of those, most of one account. Default 4.
    pub uploads_per_account_max: usize,
    /// Most bytes of one account's partial uploads together. Default 4 GiB.
    pub upload_bytes_per_account_max: u64,
    /// An upload is refused (`Busy`) when it would leave less than this free on the disk of
    /// the data directory (where the ledger lives too). Default 1 GiB.
    pub upload_free_bytes_min: u64,
    /// Requests handled at once per connection. Default 256.
    pub concurrency_max: usize,
    /// Requests per SDK key arriving over the network, once the key is authenticated; over
    /// it a request is answered `Busy`. `None`: unlimited. Default 2,000/s, bursts of 4,000
    /// (a 100 MB upload is about 130 requests). In-process calls
    /// ([`Dispatcher::handle_client`]) are not limited.
    pub client_key_rate: Option<RateLimit>,
    /// Registrations per source address block (the IPv4 /24 or IPv6 /48 the packets come
    /// from, whatever the node claims): throwaway identities from one block cannot flood the
    /// registry or crowd out its honest nodes' re-registrations. Past it, `Busy`. Default 10
    /// a second, bursts of 200; `None` turns it off.
    pub registration_rate_per_block: Option<RateLimit>,
    /// Heartbeats per node (each is a ledger write), and standing queries
    /// (`NodeRequest::Standing`, ledger reads) with them: past it, `Busy`. Default 2 a
    /// second, bursts of 10; `None` turns it off.
    pub heartbeat_rate: Option<RateLimit>,
    /// SDK keys whose request rate is tracked at once (least recently used forgotten beyond).
    /// Default 65,536.
    pub client_keys_tracked_max: usize,
    /// Node registrations remembered for their freshness window, so that each is accepted
    /// once; when this many are fresh, a node the registry does not know is answered `Busy`
    /// (one it knows still re-registers: its connection's handshake proved its key). Default
    /// 65,536.
    pub registrations_tracked_max: usize,
    /// How long a key's status is cached (revocations take effect within this). Default 1 s.
    pub key_cache_ms: u64,
    /// How long an SDK key id the ledger does not hold is remembered as unknown, so that
    /// requests naming it again are refused without a ledger lookup (measured on the
    /// monotonic clock). A key later stored under such an id authenticates within this; key
    /// ids are 128 random bits, so only a key named before it existed is ever delayed.
    /// 0: unknown ids are looked up every time. Default 10,000 ms.
    pub unknown_key_cache_ms: u64,
    /// Unknown SDK key ids remembered at once; beyond it the oldest is forgotten (a flood of
    /// fresh ids costs a lookup each, as without the cache). Default 65,536.
    pub unknown_keys_cached_max: usize,
    /// How long the estimate of the running round that answers nodes' standing queries
    /// (`NodeRequest::Standing`: rank, bonus so far) is reused before it is computed again.
    /// Computing it reads every node active in the round, so a flood of queries costs one
    /// computation per this interval. 0: computed for every query. Default 10,000 ms.
    pub standing_estimate_ms: u64,
    /// How often the state machine ticks and round closing is checked. Default 1 s.
    pub tick_ms: u64,
    /// Canary tasks (sent only by a dispatcher built with [`CanaryParts`](super::CanaryParts)).
    pub canary: CanaryConfig,
    /// The determinism gate run on a model at deploy time (on the reference backends of the
    /// [`CanaryParts`](super::CanaryParts), with [`CanaryConfig::tolerance`]).
    pub gate: GateConfig,
    /// Share of tasks clients spot-check on a second replica (sent in every lease), in
    /// basis points. Default 100 (1 %). At most 10,000.
    pub validation_bps: Bps,
    /// The share for a deployment one of whose replicas failed a validation within the
    /// exclusion window ([`crat_core::dispatch::Dispatch::suspect`]): a cheater caught once
    /// is checked ten times as often until it is caught again and excluded, or the window
    /// passes. Basis points; default 1,000 (10 %); never below `validation_bps`.
    pub validation_bps_suspect: Bps,
    /// Spot-check reports remembered (by task) so that each task is credited once; the
    /// oldest are forgotten beyond. Default 65,536.
    pub validation_reports_tracked_max: usize,
    /// Reports credited per deployment beyond what its sampling rate explains: a
    /// deployment's reports are credited up to `2 × validation_bps / 10,000 × its tasks`
    /// (usage records) plus this, so a client colluding with a replica cannot report every
    /// task. Over it a report is answered `Busy`. Default 16.
    pub validation_reports_slack: u64,
    /// Proof of hardware: challenge sizes, deadlines and the random re-challenge rate
    /// ([`ProofConfig`]; its defaults are the real sizes, `ProofConfig::test_scale` is for
    /// tests on a CPU).
    pub hardware: ProofConfig,
}

impl DispatcherConfig {
    /// Defaults, with data under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir: PathBuf = data_dir.into();
        Self {
            models_dir: data_dir.join("models"),
            models_store: None,
            models_store_options: StoreOptions::default(),
            payouts_dir: data_dir.join("payouts"),
            cluster_addr: None,
            data_dir,
            dispatch: DispatchConfig::default(),
            pricing: PricingParams::default(),
            rewards: Params::default(),
            round_epoch_s: 0,
            round_close_delay_s: 10,
            node_records_kept_s: 30 * 86_400,
            ticket_lifetime_s: 300,
            tickets_tracked_max: 262_144,
            tickets_per_key_max: 16_384,
            deployments_per_account_max: 256,
            update_interval_s: 60,
            spent_deployment_idle_s: 300,
            acks_tracked_max: 262_144,
            usage_grace_s: 3_600,
            frame_limits: FrameLimits::default(),
            model_bytes_max: 1 << 30,
            model_memory_bytes_max: UploadConfig::MEMORY_BYTES_MAX_DEFAULT,
            uploads_max: 64,
            uploads_per_account_max: UploadConfig::UPLOADS_PER_ACCOUNT_MAX_DEFAULT,
            upload_bytes_per_account_max: UploadConfig::UPLOAD_BYTES_PER_ACCOUNT_MAX_DEFAULT,
            upload_free_bytes_min: UploadConfig::FREE_BYTES_MIN_DEFAULT,
            concurrency_max: 256,
            client_key_rate: Some(RateLimit {
                per_s: 2_000,
                burst: 4_000,
            }),
            client_keys_tracked_max: 65_536,
            registration_rate_per_block: Some(RateLimit {
                per_s: 10,
                burst: 200,
            }),
            heartbeat_rate: Some(RateLimit {
                per_s: 2,
                burst: 10,
            }),
            registrations_tracked_max: 65_536,
            key_cache_ms: 1_000,
            unknown_key_cache_ms: 10_000,
            unknown_keys_cached_max: 65_536,
            standing_estimate_ms: 10_000,
            tick_ms: 1_000,
            canary: CanaryConfig::default(),
            gate: GateConfig::default(),
            validation_bps: Bps(100),
            validation_bps_suspect: Bps(1_000),
            validation_reports_tracked_max: 65_536,
            validation_reports_slack: 16,
            hardware: ProofConfig::default(),
        }
    }

    /// The round clock these settings describe.
    pub fn round_clock(&self) -> RoundClock {
        RoundClock {
            epoch_s: self.round_epoch_s,
            round_s: self.rewards.round_s,
        }
    }

    /// The ledger file.
    pub fn ledger_path(&self) -> PathBuf {
        self.data_dir.join("ledger.sqlite")
    }
}

/// Settings of an object store by option name ([`DispatcherConfig::models_store_options`]).
/// Its `Debug` shows the names only: values may be credentials.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StoreOptions(pub Vec<(String, String)>);

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::StoreOptions;

    #[test]
    fn store_options_never_show_their_values() {
        let o = StoreOptions(vec![
            ("aws_access_key_id".into(), "AKIDEXAMPLE".into()),
            ("aws_secret_access_key".into(), "wJalrXUtnFEMI".into()),
        ]);
        let shown = format!("{o:?}");
        assert_eq!(shown, r#"["aws_access_key_id", "aws_secret_access_key"]"#);
        assert!(!shown.contains("AKIDEXAMPLE") && !shown.contains("wJalrXUtnFEMI"));
    }
}
