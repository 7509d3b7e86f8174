//! The client conversation: uploads, quotes, deployments, leases, balances, key status and
//! spot-check reports, each request authenticated by its SDK key.
//!
//! The rules are [`crat_core::pricing`], [`crat_core::dispatch`] and [`crat_core::policy`]
//! (keys, ticket budgets, ticket memory, report plausibility and caps); this is their glue
//! to the ledger, the blob store and the upload area.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crat_backend::LoadedModel;
use crat_core::bps::Bps;
use crat_core::expiring::WhenFull;
use crat_core::id::{DeploymentId, KeyId, ModelId, NodeId, SdkKey};
use crat_core::money::Credits;
use crat_core::policy::budget::{ticket_budget, ticket_price};
use crat_core::policy::keys::{KeyStanding, check_key};
use crat_core::policy::reports::{check_report, report_subject};
use crat_core::policy::tickets::TicketsFull;
use crat_core::policy::updates::{UpdateHistory, UpdateRefusal, check_update, next_update_at};
use crat_core::pricing::DeployPlan;
use crat_core::sign::{Signed, TICKET_AUDIENCE_MAX, Ticket};
use crat_core::wire::{
    CHUNK_BYTES_MAX, ClientCall, ClientRequest, DeploymentInfo, DeploymentState,
    DispatcherResponse, ErrorCode, KeyInfo, KeyStatus, Lease, ModelSignature, ValidationReport,
    Verifiability,
};
use crat_transport::Transport;

use super::reply::{Refusal, err};
use super::shapes::ShapeBook;
use super::{CachedKey, Counters, Dispatcher, new_id};
use crate::blob::UploadProgress;
use crate::ledger::{
    AccountName, DeploymentRecord, KeyRecord, LedgerError, ModelRecord, ModelUpdate,
};

/// SDK key records cached at once (the cache is emptied when full).
const KEYS_CACHED_MAX: usize = 100_000;

/// The refusal of a key id the ledger does not hold.
fn unknown_key() -> Refusal {
    err(ErrorCode::Unauthenticated, "unknown SDK key").into()
}

/// A stopped deployment is refunded this long after the usage window of its last tickets
/// ends, so that the acknowledgement settlement of that window (each tick) comes first.
const REFUND_MARGIN_S: u64 = 5;

impl<T: Transport> Dispatcher<T> {
    /// Checks an SDK key: known (its record cached for `key_cache_ms`; an id the ledger does
    /// not hold remembered as unknown for `unknown_key_cache_ms`), and then [`check_key`]:
    /// secret, revocation, expiry.
    async fn authenticate(&self, key: &SdkKey) -> Result<KeyRecord, Refusal> {
        let now = self.inner.clock.now_s();
        let cache_for = Duration::from_millis(self.inner.config.key_cache_ms);
        let cached = self
            .inner
            .keys
            .read()
            .get(&key.id)
            .filter(|c| c.fetched.elapsed() < cache_for)
            .map(|c| c.record.clone());
        let record = match cached {
            Some(r) => r,
            None => {
                let now_ms = self.monotonic_ms();
                {
                    let mut unknown = self.inner.unknown_keys.lock();
                    unknown.forget_expired(now_ms);
                    if unknown.contains(&key.id) {
                        Counters::add(&self.inner.counters.unknown_keys_cached, 1);
                        return Err(unknown_key());
                    }
                }
                let id = key.id;
                Counters::add(&self.inner.counters.key_lookups, 1);
                let Some(record) = self.db(move |l| l.key(&id)).await? else {
                    self.remember_unknown(id);
                    return Err(unknown_key());
                };
                let mut keys = self.inner.keys.write();
                if keys.len() >= KEYS_CACHED_MAX {
                    keys.clear();
                }
                keys.insert(
                    key.id,
                    CachedKey {
                        record: record.clone(),
                        fetched: Instant::now(),
                    },
                );
                record
            }
        };
        let standing = KeyStanding {
            id: record.id,
            secret_hash: record.secret_hash,
            expires_at_s: record.expires_at_s,
            revoked_at_s: record.revoked_at_s,
        };
        check_key(&standing, &key.secret, now)?;
        Ok(record)
    }

    /// Answers one request of the client whose transport identity is `client` (the peer
    /// its tickets will name; also usable in-process, e.g. by benchmarks). Not subject to
    /// [`DispatcherConfig::client_key_rate`], which guards the network path.
    pub async fn handle_client(&self, client: NodeId, req: ClientRequest) -> DispatcherResponse {
        self.client(client, req, false)
            .await
            .unwrap_or_else(|e| DispatcherResponse::Error(e.into()))
    }

    /// A client request from the network: rate-limited per key.
    pub(super) async fn handle_remote_client(
        &self,
        client: NodeId,
        req: ClientRequest,
    ) -> DispatcherResponse {
        self.client(client, req, true)
            .await
            .unwrap_or_else(|e| DispatcherResponse::Error(e.into()))
    }

    /// Remembers that the ledger does not hold `id`, for `unknown_key_cache_ms` (the oldest
    /// remembered id makes room when `unknown_keys_cached_max` are held).
    fn remember_unknown(&self, id: KeyId) {
        let ttl_ms = self.inner.config.unknown_key_cache_ms;
        if ttl_ms == 0 {
            return;
        }
        // Read after the lookup, so the entry lives its full time past the ledger's answer.
        let now_ms = self.monotonic_ms();
        // `ForgetSoonest` makes room whenever the capacity is not 0, and a capacity of 0
        // means remembering nothing: either way the refusal needs no handling.
        let _ = self.inner.unknown_keys.lock().insert(
            id,
            (),
            now_ms.saturating_add(ttl_ms),
            now_ms,
            WhenFull::ForgetSoonest,
        );
    }

    /// Milliseconds since this dispatcher started (monotonic: wall-clock jumps do not move
    /// it).
    pub(super) fn monotonic_ms(&self) -> u64 {
        u64::try_from(self.inner.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// `Busy` when `key` is over its request rate. Checked after authentication, so nobody
    /// can spend another key's allowance by naming it.
    fn check_rate(&self, key: &KeyId) -> Result<(), Refusal> {
        let Some(rates) = &self.inner.key_rates else {
            return Ok(());
        };
        let now_ms = self.monotonic_ms();
        rates
            .lock()
            .allow(key, now_ms)
            .map_err(|e| err(ErrorCode::Busy, format!("{key}: {e}")).into())
    }

    async fn client(
        &self,
        client: NodeId,
        req: ClientRequest,
        rate_limited: bool,
    ) -> Result<DispatcherResponse, Refusal> {
        // Acknowledgements carry their own proof (a ticket this dispatcher signed, the
        // acknowledgement signed by the ticket's client) and can only cost their signer what
        // it acknowledged: they are taken whatever the key's standing, so that revoking a key
        // does not make work already received free.
        if let ClientCall::Acknowledge(proofs) = &req.call {
            self.acknowledge(proofs).await?;
            return Ok(DispatcherResponse::Ok);
        }
        let key = self.authenticate(&req.key).await?;
        if rate_limited {
            self.check_rate(&key.id)?;
        }
        // A client with a valid key may use the relays (for an hour after its last call).
        self.remember_relay_member(client);
        let now = self.inner.clock.now_s();
        match req.call {
            ClientCall::UploadBegin { model, total_bytes } => {
                // Held, like a finish: a begin during a finish of the same model waits for
                // it and then finds the model stored.
                let _held = self.inner.uploads.hold(&key.account, model).await;
                if let Some(stored) = self.already_stored(model, &key.account).await? {
                    return Ok(stored);
                }
                let p = self
                    .inner
                    .uploads
                    .begin(&key.account, model, total_bytes)
                    .await?;
                Ok(upload_progress(p))
            }
            ClientCall::UploadChunk {
                model,
                offset,
                data,
            } => {
                let p = self
                    .inner
                    .uploads
                    .write(&key.account, model, offset, &data)
                    .await?;
                Ok(upload_progress(p))
            }
            ClientCall::UploadFinish { model } => {
                // Held from the check to the ledger's record: a repeated finish (a client
                // that redials) or a begin of the same model waits for this one.
                let _held = self.inner.uploads.hold(&key.account, model).await;
                if let Some(stored) = self.already_stored(model, &key.account).await? {
                    // A partial upload of stored bytes (one begun again while they were
                    // being stored) has nothing left to give.
                    self.inner.uploads.abort(&key.account, model).await;
                    return Ok(stored);
                }
                let staged = self.inner.uploads.finish(&key.account, model).await?;
                // Should storing or recording fail, the staged file stays, and the client's
                // next upload of the model finishes it again without sending it again.
                self.inner
                    .blobs
                    .put_file(&model, &staged.path)
                    .await
                    .map_err(|e| Refusal::Internal(e.to_string()))?;
                let (bytes, signature) = (staged.bytes, staged.signature.clone());
                self.remember_model(model, bytes, signature, &key.account, now)
                    .await?;
                self.inner.uploads.discard(&staged).await;
                tracing::info!(%model, bytes, "model stored");
                Ok(DispatcherResponse::ModelStored {
                    model,
                    bytes: staged.bytes,
                })
            }
            ClientCall::Quote { model, plan } => {
                let bytes = self.model_bytes(model, &key.account).await?;
                let quote = self
                    .inner
                    .config
                    .pricing
                    .quote(bytes, &plan)
                    .map_err(|e| err(ErrorCode::BadRequest, e.to_string()))?;
                Ok(DispatcherResponse::Quote(quote))
            }
            ClientCall::Deploy { model, plan } => self.deploy(&key, model, plan, now).await,
            ClientCall::UpdateModel { deployment, model } => {
                self.update_model(&key, deployment, model, now).await
            }
            ClientCall::Deployment { deployment } => {
                let d = self.owned_deployment(&key, &deployment)?;
                Ok(DispatcherResponse::Deployment(self.describe(&d).await))
            }
            ClientCall::Undeploy { deployment } => {
                self.owned_deployment(&key, &deployment)?;
                self.stop(deployment, now).await?;
                Ok(DispatcherResponse::Ok)
            }
            ClientCall::SetModelPublic { model, public } => {
                let account = key.account.clone();
                self.db(move |l| l.set_model_public(&model, &account, public))
                    .await?;
                Ok(DispatcherResponse::Ok)
            }
            ClientCall::ReportNoReceipt { deployment, node } => {
                let dep = self.owned_deployment(&key, &deployment)?;
                Counters::add(&self.inner.counters.receipt_reports, 1);
                self.canary_suspect(dep, node);
                Ok(DispatcherResponse::Ok)
            }
            ClientCall::InputShapes { deployment, shapes } => {
                self.owned_deployment(&key, &deployment)?;
                ShapeBook::check(&shapes).map_err(|e| err(ErrorCode::TooLarge, e.to_string()))?;
                if let Some(canary) = &self.inner.canary {
                    let _ = canary.shapes.lock().record(deployment, &shapes);
                }
                Ok(DispatcherResponse::Ok)
            }
            ClientCall::Lease { deployment } => self
                .lease(&key, &deployment, client, now)
                .map(DispatcherResponse::Lease),
            ClientCall::Balance => {
                let account = key.account.clone();
                let b = self.db(move |l| l.balance(&account)).await?;
                Ok(DispatcherResponse::Balance(b))
            }
            ClientCall::ReportValidation(report) => {
                self.validation_report(&key, *report, now).await?;
                Ok(DispatcherResponse::Ok)
            }
            ClientCall::Acknowledge(_) => Err(Refusal::Internal(
                "acknowledgements are taken before authentication".into(),
            )),
            ClientCall::RelayAccess { endpoint } => Ok(DispatcherResponse::RelayAccess {
                allowed: self.relay_member(&endpoint),
            }),
            ClientCall::KeyStatus => Ok(DispatcherResponse::Key(KeyInfo {
                id: key.id,
                status: KeyStatus::Active,
                created_at_s: key.created_at_s,
                expires_at_s: key.expires_at_s,
            })),
        }
    }

    /// `ModelStored` if the blob store has `model` already and `account` may use it (it
    /// uploaded it before, or it is public); otherwise the account uploads the bytes (stored
    /// once, content-addressed) and so becomes an owner.
    async fn already_stored(
        &self,
        model: ModelId,
        account: &AccountName,
    ) -> Result<Option<DispatcherResponse>, Refusal> {
        let size = self
            .inner
            .blobs
            .size(&model)
            .await
            .map_err(|e| Refusal::Internal(e.to_string()))?;
        let Some(size) = size else { return Ok(None) };
        // Stored for another account: this one owns it only once it has sent the bytes
        // (knowing a hash is not having the model).
        let (who, id) = (account.clone(), model);
        if !self.db(move |l| l.may_use_model(&id, &who)).await? {
            return Ok(None);
        }
        Ok(Some(DispatcherResponse::ModelStored { model, bytes: size }))
    }

    async fn remember_model(
        &self,
        model: ModelId,
        bytes: u64,
        signature: Option<ModelSignature>,
        account: &AccountName,
        now: u64,
    ) -> Result<(), Refusal> {
        let record = ModelRecord {
            id: model,
            bytes,
            account: account.clone(),
            stored_at_s: now,
            signature,
        };
        self.db(move |l| l.insert_model(&record)).await
    }

    /// The size of `model`, if `account` may use it (it uploaded it, or it is public).
    async fn model_bytes(&self, model: ModelId, account: &AccountName) -> Result<u64, Refusal> {
        let who = account.clone();
        let (found, usable) = self
            .db(move |l| Ok((l.model(&model)?, l.may_use_model(&model, &who)?)))
            .await?;
        match found {
            Some(m) if usable => Ok(m.bytes),
            _ => Err(err(
                ErrorCode::NotFound,
                format!("model {model} is not uploaded by this account (nor public)"),
            )
            .into()),
        }
    }

    /// Stops a deployment: its replicas are released and it gets no new lease. The allowance
    /// goes back once the usage window of the last tickets issued has ended: usage served
    /// before the stop and reported (or settled from clients' acknowledgements) after it is
    /// still charged.
    pub(super) async fn stop(&self, deployment: DeploymentId, now: u64) -> Result<(), Refusal> {
        let effects = self.inner.dispatch.lock().undeploy(&deployment);
        let config = &self.inner.config;
        let refund_at = now
            .saturating_add(config.ticket_lifetime_s)
            .saturating_add(config.usage_grace_s)
            .saturating_add(REFUND_MARGIN_S);
        let stopped = self
            .db(move |l| l.stop_deployment(&deployment, now, refund_at))
            .await?;
        self.store_deployments(vec![stopped.clone()]);
        if let Some(canary) = &self.inner.canary {
            canary.shapes.lock().forget(&stopped.id);
        }
        self.apply(effects).await;
        Ok(())
    }

    fn owned_deployment(
        &self,
        key: &KeyRecord,
        id: &DeploymentId,
    ) -> Result<DeploymentRecord, Refusal> {
        let deployments = self.inner.deployments.read();
        deployments
            .get(id)
            .filter(|d| d.account == key.account)
            .cloned()
            .ok_or_else(|| err(ErrorCode::NotFound, format!("deployment {id}")).into())
    }

    /// What `model` takes and returns: as the ledger recorded it at upload, or, for a model
    /// stored before signatures were, read from its bytes now and recorded. `None` when
    /// neither works (logged) or the wire cannot carry it.
    async fn model_signature(&self, model: ModelId) -> Option<ModelSignature> {
        match self.db(move |l| l.model(&model)).await {
            Ok(Some(record)) if record.signature.is_some() => return record.signature,
            Ok(Some(_)) => {}
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(%model, error = ?e, "reading a model's signature failed");
                return None;
            }
        }
        let signature = match self
            .read_model(&model, self.inner.config.model_bytes_max)
            .await
        {
            Ok(bytes) => tokio::task::spawn_blocking(move || {
                crat_backend::onnx_check::check_model(&bytes)
                    .map(|s| s.signature())
                    .map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(format!("check task failed: {e}"))),
            Err(e) => Err(e),
        };
        match signature {
            Ok(Some(signature)) => {
                let stored = signature.clone();
                if let Err(e) = self
                    .db(move |l| l.set_model_signature(&model, &stored))
                    .await
                {
                    tracing::warn!(%model, error = ?e, "recording a model's signature failed");
                }
                Some(signature)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(%model, error = %e, "a stored model's signature is unreadable");
                None
            }
        }
    }

    async fn describe(&self, d: &DeploymentRecord) -> DeploymentInfo {
        let signature = self.model_signature(d.model).await;
        // The dispatch state is read before the load failures: a deployment that fails to
        // load has its reasons recorded before it leaves the dispatch state, so one no longer
        // there (stopped, or being stopped: the ledger's write may not have landed yet) is
        // seen with its reasons, as failed rather than stopped.
        let live = if d.stopped_at_s.is_none() {
            self.inner.dispatch.lock().deployment_state(&d.id)
        } else {
            None
        };
        let failure = self.inner.load_failures.lock().get(&d.id).cloned();
        let (state, ready, wanted) = live.unwrap_or_else(|| {
            let state = if failure.is_some() {
                DeploymentState::Failed
            } else {
                DeploymentState::Stopped
            };
            (state, 0, 0)
        });
        let (on_model, shortfall) = if live.is_none() {
            (0, None)
        } else {
            let dispatch = self.inner.dispatch.lock();
            (
                dispatch.replicas_on_model(&d.id),
                dispatch.shortfall(&d.id).map(|s| s.to_string()),
            )
        };
        let next_update_at_s = next_update_at(
            &d.plan,
            &update_history(d),
            self.inner.config.update_interval_s,
        )
        .filter(|_| d.stopped_at_s.is_none());
        DeploymentInfo {
            id: d.id,
            model: d.model,
            plan: d.plan,
            state,
            replicas_ready: ready,
            replicas_on_model: on_model,
            updates: d.updates,
            next_update_at_s,
            replicas_wanted: wanted,
            price: d.price,
            allowance_left: d.allowance_left,
            verifiability: d.verifiability,
            failure,
            shortfall,
            signature,
        }
    }

    async fn deploy(
        &self,
        key: &KeyRecord,
        model: ModelId,
        plan: DeployPlan,
        now: u64,
    ) -> Result<DispatcherResponse, Refusal> {
        let model_bytes = self.model_bytes(model, &key.account).await?;
        let price = self
            .inner
            .config
            .pricing
            .quote(model_bytes, &plan)
            .map_err(|e| err(ErrorCode::BadRequest, e.to_string()))?;
        let account = key.account.clone();
        let balance = self.db(move |l| l.balance(&account)).await?;
        if balance < price.upfront {
            return Err(err(
                ErrorCode::InsufficientCredits,
                format!(
                    "deploying costs {} credits up front; the balance is {}",
                    price.upfront.get(),
                    balance.get()
                ),
            )
            .into());
        }
        let running = self
            .inner
            .deployments
            .read()
            .values()
            .filter(|d| d.account == key.account && d.stopped_at_s.is_none())
            .count();
        let most = self.inner.config.deployments_per_account_max;
        if running >= most {
            return Err(err(
                ErrorCode::QuotaExceeded,
                format!("the account runs {running} deployments, its most; stop one first"),
            )
            .into());
        }
        // The determinism gate (once per model; may take a while, or be `Busy`), before
        // anything is placed or charged.
        let (verifiability, reference) = self.gate_verdict(model, model_bytes).await?;
        let id = DeploymentId::from_bytes(new_id());
        // Place first (nothing is charged if there is no capacity), then charge; if the
        // charge fails the placement is undone before any node hears of it. A per-request
        // deployment short of replicas is created with those that fit (the answer's
        // `shortfall` says why); see `Dispatch::deploy`.
        let effects = self
            .inner
            .dispatch
            .lock()
            .deploy(now, id, model, model_bytes, plan)?;
        let record = DeploymentRecord {
            id,
            account: key.account.clone(),
            key: key.id,
            model,
            model_bytes,
            plan,
            price,
            allowance_left: match plan {
                DeployPlan::PerRequest(p) => p.credit_allowance,
                DeployPlan::PerInstance(_) => Credits::ZERO,
            },
            created_at_s: now,
            stopped_at_s: None,
            verifiability,
            updates: 0,
            updated_at_s: None,
        };
        let stored = record.clone();
        if let Err(e) = self.db(move |l| l.create_deployment(&stored)).await {
            self.inner.dispatch.lock().undeploy(&id);
            return Err(e);
        }
        self.inner.deployments.write().insert(id, record.clone());
        self.keep_for_canaries(model, reference);
        self.apply(effects).await;
        tracing::info!(deployment = %id, %model, upfront = price.upfront.get(), %verifiability, "deployed");
        Ok(DispatcherResponse::Deployment(self.describe(&record).await))
    }

    /// The determinism gate's verdict on `model` (once per model; may take a while, or be
    /// `Busy`), with the model the gate loaded on the canaries' reference backend when it ran
    /// it now: [`keep_for_canaries`](Self::keep_for_canaries) once the deployment stands.
    async fn gate_verdict(
        &self,
        model: ModelId,
        model_bytes: u64,
    ) -> Result<(Verifiability, Option<Arc<dyn LoadedModel>>), Refusal> {
        Ok(self
            .inner
            .gate
            .verdict_keeping(
                model,
                model_bytes,
                self.read_model(&model, self.inner.config.gate.model_bytes_max),
            )
            .await?)
    }

    /// Keeps the gate's reference model of a deployment that now stands for its canaries, so
    /// that the first canary does not load it again (a deploy refused after the gate keeps
    /// nothing).
    fn keep_for_canaries(&self, model: ModelId, reference: Option<Arc<dyn LoadedModel>>) {
        if let (Some(loaded), Some(canary)) = (reference, &self.inner.canary) {
            canary.keep_reference(model, loaded);
        }
    }

    /// Replaces a deployment's model ([`ClientCall::UpdateModel`]): the account may use the
    /// new model, its signature can replace the deployed one's, the plan allows an update now
    /// (and, per-instance, the model costs no more than was paid), the determinism gate has a
    /// verdict on it; then the ledger (update and charge, atomically) and the state machine
    /// (every replica told the new model; each keeps serving the old one until it switches).
    async fn update_model(
        &self,
        key: &KeyRecord,
        id: DeploymentId,
        model: ModelId,
        now: u64,
    ) -> Result<DispatcherResponse, Refusal> {
        let d = self.owned_deployment(key, &id)?;
        if d.stopped_at_s.is_some() {
            return Err(err(ErrorCode::NotFound, format!("deployment {id} is stopped")).into());
        }
        if d.model == model {
            // Already its model (a retried update): nothing to do, nothing charged.
            return Ok(DispatcherResponse::Deployment(self.describe(&d).await));
        }
        let model_bytes = self.model_bytes(model, &key.account).await?;
        let charged = check_update(
            &self.inner.config.pricing,
            &d.plan,
            &d.price,
            &update_history(&d),
            self.inner.config.update_interval_s,
            model_bytes,
            now,
        )
        .map_err(|e| match e {
            UpdateRefusal::TooSoon { .. } => err(ErrorCode::UpdateTooFrequent, e.to_string()),
            _ => err(ErrorCode::ModelRejected, e.to_string()),
        })?;
        let (Some(old), Some(new)) = (
            self.model_signature(d.model).await,
            self.model_signature(model).await,
        ) else {
            return Err(err(
                ErrorCode::ModelRejected,
                "the models' inputs and outputs cannot both be read, so the new model cannot be \
                 checked to serve the deployment's callers",
            )
            .into());
        };
        new.check_replaces(&old)
            .map_err(|e| err(ErrorCode::ModelRejected, format!("{e}")))?;
        let (verifiability, reference) = self.gate_verdict(model, model_bytes).await?;
        let update = ModelUpdate {
            deployment: id,
            seq: d.updates.saturating_add(1),
            previous: d.model,
            model,
            model_bytes,
            verifiability,
            charged,
            at_s: now,
        };
        let after = self
            .db(move |l| l.update_deployment_model(&update))
            .await
            .map_err(|e| match e {
                Refusal::Ledger(LedgerError::InsufficientCredits { balance, needed }) => err(
                    ErrorCode::InsufficientCredits,
                    format!(
                        "the update costs {} credits from the deployment's allowance; {} are left",
                        needed.get(),
                        balance.get()
                    ),
                )
                .into(),
                e => e,
            })?;
        self.inner.deployments.write().insert(id, after.clone());
        self.keep_for_canaries(model, reference);
        let effects = self
            .inner
            .dispatch
            .lock()
            .update_model(now, &id, model, model_bytes)?;
        self.apply(effects).await;
        tracing::info!(deployment = %id, from = %d.model, to = %model, charged = charged.get(), %verifiability, "model updated");
        Ok(DispatcherResponse::Deployment(self.describe(&after).await))
    }

    /// Issues a lease: the warm replicas, a ticket for them (remembered, so that usage is
    /// charged only under it) that only `client` may present, and the sampling rate (0 for an
    /// unverifiable deployment).
    fn lease(
        &self,
        key: &KeyRecord,
        id: &DeploymentId,
        client: NodeId,
        now: u64,
    ) -> Result<Lease, Refusal> {
        let d = self.owned_deployment(key, id)?;
        if d.stopped_at_s.is_some() {
            return Err(err(ErrorCode::NotFound, format!("deployment {id} is stopped")).into());
        }
        let budget = ticket_budget(
            &d.plan,
            d.allowance_left,
            d.price.upfront,
            d.created_at_s,
            now,
        )
        .map_err(|e| Refusal::Budget(*id, e))?;
        let mut replicas = self.inner.dispatch.lock().lease_replicas(id)?;
        replicas.truncate(TICKET_AUDIENCE_MAX);
        let config = &self.inner.config;
        let ticket = Ticket {
            deployment: *id,
            key: key.id,
            credit_budget: budget,
            issued_at_s: now,
            expires_at_s: now.saturating_add(config.ticket_lifetime_s),
            nonce: new_id(),
            audience: replicas.iter().map(|r| r.node).collect(),
            client,
            price: ticket_price(
                &d.plan,
                &config.pricing,
                d.model_bytes,
                d.price.per_request_max,
            ),
        };
        let forget_at_s = ticket.expires_at_s.saturating_add(config.usage_grace_s);
        let remembered = self.inner.tickets.lock().insert(now, &ticket, forget_at_s);
        match remembered {
            Ok(()) => {}
            Err(e @ TicketsFull::KeyQuota { .. }) => {
                return Err(err(ErrorCode::QuotaExceeded, format!("{}: {e}", key.id)).into());
            }
            Err(TicketsFull::Full { .. }) => {
                return Err(
                    err(ErrorCode::Busy, "too many live tickets; try again shortly").into(),
                );
            }
        }
        Counters::add(&self.inner.counters.leases, 1);
        metrics::counter!(crate::metrics::LEASES_TOTAL).increment(1);
        let validation_bps = if d.verifiability.is_verifiable() {
            let suspect = self.inner.dispatch.lock().suspect(id);
            self.inner.reports.lock().lease_bps(*id, suspect)
        } else {
            Bps::ZERO
        };
        Ok(Lease {
            replicas,
            ticket: Signed::sign(ticket, &self.inner.key),
            validation_bps,
        })
    }

    /// Checks a spot-check report ([`check_report`]) and credits it once, within the
    /// deployment's report cap: each validator in the majority gets a `validations_ok`,
    /// each node outside it a `validations_failed` (which may exclude it from placement).
    /// The security argument is in [`crat_core::policy::reports`]. A report about an
    /// unverifiable deployment is refused ([`Refusal::Unverifiable`], `BadRequest`) before
    /// anything is credited or recorded: its replicas may disagree honestly.
    async fn validation_report(
        &self,
        key: &KeyRecord,
        report: ValidationReport,
        now: u64,
    ) -> Result<(), Refusal> {
        let (task, deployment) = report_subject(&report)?;
        let d = self.owned_deployment(key, &deployment)?;
        if let Verifiability::Unverifiable(why) = d.verifiability {
            return Err(Refusal::Unverifiable(deployment, why));
        }
        let replicas = self.inner.dispatch.lock().ready_replicas(&deployment);
        let verdict = check_report(&report, &replicas)?;
        self.inner.reports.lock().check_new(deployment, task)?;
        // No more reports than the sampling rate explains (twice, plus a slack).
        let (tasks, _) = self.db(move |l| l.usage_totals(&deployment)).await?;
        self.inner.reports.lock().credit(deployment, task, tasks)?;
        let credited = verdict.validators_ok.clone();
        self.db(move |l| {
            for n in &credited {
                l.record_validation(n, true, now)?;
            }
            Ok(())
        })
        .await?;
        let counters = &self.inner.counters;
        Counters::add(&counters.validations_ok, verdict.validators_ok.len() as u64);
        metrics::counter!(crate::metrics::VALIDATIONS_TOTAL, "result" => "ok")
            .increment(verdict.validators_ok.len() as u64);
        for n in verdict.failed {
            tracing::warn!(node = %n, %task, "spot check failed");
            Counters::add(&counters.validations_failed, 1);
            metrics::counter!(crate::metrics::VALIDATIONS_TOTAL, "result" => "failed").increment(1);
            self.validation_failed(n).await;
        }
        Ok(())
    }
}

/// A deployment's updates so far, as the update rule reads them.
fn update_history(d: &DeploymentRecord) -> UpdateHistory {
    UpdateHistory {
        created_at_s: d.created_at_s,
        updates: d.updates,
        last_update_at_s: d.updated_at_s,
    }
}

fn upload_progress(p: UploadProgress) -> DispatcherResponse {
    DispatcherResponse::Upload {
        received_bytes: p.received_bytes,
        total_bytes: p.total_bytes,
        chunk_bytes_max: CHUNK_BYTES_MAX,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use crat_core::wire::ClientCall;
    use crat_transport::memory::{MemoryNetwork, MemoryTransport};
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::DispatcherConfig;
    use crate::admin::ensure_account;

    fn dispatcher(dir: &std::path::Path, unknown_key_cache_ms: u64) -> Dispatcher<MemoryTransport> {
        let key = SigningKey::from_bytes(&[3; 32]);
        let transport = MemoryNetwork::new()
            .bind("mem:dispatcher", NodeId::from_key(&key.verifying_key()))
            .unwrap();
        let mut config = DispatcherConfig::new(dir);
        config.unknown_key_cache_ms = unknown_key_cache_ms;
        Dispatcher::open(config, key, transport).unwrap()
    }

    async fn balance(d: &Dispatcher<MemoryTransport>, key: SdkKey) -> DispatcherResponse {
        let client = NodeId::from_bytes([9; 32]);
        let call = ClientCall::Balance;
        d.handle_client(client, ClientRequest { key, call }).await
    }

    fn unauthenticated(r: &DispatcherResponse) -> bool {
        matches!(r, DispatcherResponse::Error(e) if e.code == ErrorCode::Unauthenticated)
    }

    /// Stores `key` in the ledger, as `crat keys create` does (with a chosen id).
    fn store(d: &Dispatcher<MemoryTransport>, key: &SdkKey) {
        let account = AccountName::new("alice").unwrap();
        ensure_account(&**d.ledger(), &account, 0).unwrap();
        d.ledger()
            .insert_key(&KeyRecord {
                id: key.id,
                account,
                secret_hash: *blake3::hash(&key.secret).as_bytes(),
                created_at_s: 0,
                expires_at_s: None,
                revoked_at_s: None,
            })
            .unwrap();
    }

    #[tokio::test]
    async fn an_unknown_key_is_looked_up_once_per_cache_time() {
        let dir = tempfile::tempdir().unwrap();
        let d = dispatcher(dir.path(), 60_000);
        let unknown = SdkKey {
            id: KeyId::from_bytes([1; 16]),
            secret: [2; 32],
        };
        for _ in 0..1_000 {
            assert!(unauthenticated(&balance(&d, unknown.clone()).await));
        }
        let stats = d.stats();
        assert_eq!(stats.key_lookups, 1, "one ledger lookup for 1,000 requests");
        assert_eq!(stats.unknown_keys_cached, 999);
        // Another unknown id is its own lookup; known keys are unaffected.
        let other = SdkKey {
            id: KeyId::from_bytes([4; 16]),
            secret: [2; 32],
        };
        assert!(unauthenticated(&balance(&d, other).await));
        assert_eq!(d.stats().key_lookups, 2);
        let known = SdkKey {
            id: KeyId::from_bytes([5; 16]),
            secret: [6; 32],
        };
        store(&d, &known);
        assert!(!unauthenticated(&balance(&d, known).await));
    }

    #[tokio::test]
    async fn a_key_stored_after_it_was_unknown_authenticates_after_the_cache_time() {
        let dir = tempfile::tempdir().unwrap();
        let cache_ms = 200;
        let d = dispatcher(dir.path(), cache_ms);
        let key = SdkKey {
            id: KeyId::from_bytes([1; 16]),
            secret: [2; 32],
        };
        assert!(unauthenticated(&balance(&d, key.clone()).await));
        store(&d, &key);
        tokio::time::sleep(Duration::from_millis(cache_ms + 50)).await;
        let r = balance(&d, key).await;
        assert!(matches!(r, DispatcherResponse::Balance(_)), "{r:?}");
        assert_eq!(d.stats().key_lookups, 2);
    }

    #[tokio::test]
    async fn a_zero_cache_time_looks_unknown_keys_up_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let d = dispatcher(dir.path(), 0);
        let unknown = SdkKey {
            id: KeyId::from_bytes([1; 16]),
            secret: [2; 32],
        };
        for _ in 0..3 {
            assert!(unauthenticated(&balance(&d, unknown.clone()).await));
        }
        assert_eq!(d.stats().key_lookups, 3);
    }
}
