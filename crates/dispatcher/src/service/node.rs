//! The node conversation: registration, heartbeats, model fetches, replica states, usage.
//!
//! The rules are [`crat_core::dispatch`] (placement, liveness) and [`crat_core::policy`]
//! (ticket memory, usage admission, hardware rating); this is their glue to the ledger, the
//! blob store and the node connections.

use crat_core::dispatch::{Effect, operator_of};
use crat_core::gpu_table::GpuTable;
use crat_core::hardware::PowerRating;
use crat_core::id::{NodeId, PeerAddr};
use crat_core::money::MicroUsd;
use crat_core::policy::acks::Decision;
use crat_core::policy::hardware::claims_of;
use crat_core::policy::tickets::{ticket_allows, within_restart_grace};
use crat_core::policy::usage::{Admission, DeploymentTerms, UsageFacts, admit};
use crat_core::sign::{Registration, ReplayError, Signed};
use crat_core::wire::{
    CHUNK_BYTES_MAX, DispatcherPush, DispatcherReply, ErrorCode, NodeAck, NodeRequest,
    USAGE_RECORDS_MAX, UsageReport,
};
use crat_transport::{Connection, ConnectionExt, Conversation, Transport, serve};

use super::acks::check_ack_count;
use super::reply::{Refusal, err};
use super::{Counters, Dispatcher, NodeConn};
use crate::ledger::{DeploymentRecord, Ledger, LedgerError, NodeRecord, UsageCharge};

/// Online sessions a flush writes per ledger transaction.
const SESSIONS_PER_WRITE: usize = 10_000;
/// Online sessions waiting for the ledger at most; more are written at once.
const SESSIONS_PENDING_MAX: usize = 2 * crat_core::dispatch::NODES_MAX;

impl<T: Transport> Dispatcher<T> {
    /// Serves a registered node's requests until its connection ends, then lets the state
    /// machine know it left (unless a newer connection of it took over).
    pub(super) async fn node_connection(
        &self,
        conn: crate::cluster::Link<T::Connection>,
        serial: u64,
    ) {
        let node = conn.remote_id();
        let me = self.clone();
        let e = serve(
            conn,
            Conversation::NodeDispatcher,
            self.inner.config.frame_limits,
            self.inner.config.concurrency_max,
            move |req: NodeRequest| {
                let me = me.clone();
                async move { me.handle_node(node, req).await }
            },
        )
        .await;
        tracing::info!(%node, error = %e, "node connection ended");
        let current = {
            let mut conns = self.inner.node_conns.lock();
            match conns.get(&node) {
                Some(c) if c.serial == serial => {
                    conns.remove(&node);
                    true
                }
                _ => false,
            }
        };
        if current {
            let effects = self.inner.dispatch.lock().node_left(&node);
            self.apply(effects).await;
        }
    }

    /// Registers the node behind `conn` (its registration signed by the connection's own
    /// identity); the answer carries its assignments.
    pub(super) async fn register(
        &self,
        conn: &crate::cluster::Link<T::Connection>,
        serial: u64,
        reg: Signed<Registration>,
    ) -> Result<DispatcherReply, Refusal> {
        let now = self.inner.clock.now_s();
        // The address the packets come from, not the one the node claims: its block is the
        // node's operator (placement limits) and what registrations are rate-limited by,
        // before a signature is checked.
        // On a transport that relays, the address of a direct path (the NAT's public mapping),
        // never the relay's: a dispatcher must be reached directly, so that nodes cannot hide
        // their operator behind a relay.
        let seen = conn.observed_addr();
        if seen.is_none() && conn.path_kind() == crat_transport::PathKind::Relayed {
            return Err(err(
                ErrorCode::BadRequest,
                "registration through a relay: reach the dispatcher at its direct address",
            )
            .into());
        }
        let observed = seen.map_or_else(|| conn.remote_addr(), PeerAddr::from);
        let block = operator_of(&reg.body.node, std::slice::from_ref(&observed));
        if let Some(rates) = &self.inner.block_rates {
            rates
                .lock()
                .allow(&block, self.monotonic_ms())
                .map_err(|e| {
                    err(
                        ErrorCode::Busy,
                        format!("registrations from {observed}: {e}"),
                    )
                })?;
        }
        let r = reg
            .verify_registration(now)
            .map_err(|e| err(ErrorCode::Unauthenticated, e.to_string()))?
            .clone();
        // Each registration is accepted once: a copy presented again while it is still fresh
        // (on this connection or another) is a replay.
        let once = self
            .inner
            .registrations
            .lock()
            .check((r.node, r.nonce), r.expires_at_s(), now);
        match once {
            Ok(()) => {}
            Err(e @ ReplayError::Full { .. }) => {
                // Fresh registrations of throwaway identities filled the memory: a node the
                // registry knows still comes back (its registration arrives on a connection
                // whose handshake proved its key, so only that key's holder could replay it);
                // new nodes wait until entries expire.
                if self.inner.dispatch.lock().operator(&r.node).is_none() {
                    return Err(err(ErrorCode::Busy, format!("registration: {e}")).into());
                }
                tracing::warn!(node = %r.node, "registration memory full; a known node re-registers");
            }
            Err(e) => {
                return Err(err(
                    ErrorCode::Unauthenticated,
                    format!("registration refused: {e}"),
                )
                .into());
            }
        }
        // Nothing is paid or ranked on a claim: rating 1 and no mining income until the
        // compute challenges sent below (`hardware`) prove more.
        let claims = claims_of(GpuTable::builtin(), &r.hardware);
        let (rating, income) = (PowerRating::MIN, MicroUsd::ZERO);
        let record = NodeRecord {
            id: r.node,
            rating: u8::from(rating),
            registered_at_s: now,
            mining_income_usd_micro_per_day: income,
            crat_micro: crat_core::money::MicroCrat::ZERO,
            streak: 0,
            uptime_total_s: 0,
        };
        self.db(move |l| l.upsert_node(&record)).await?;
        self.inner.node_conns.lock().insert(
            r.node,
            NodeConn {
                serial,
                conn: conn.clone(),
            },
        );
        let (effects, assignments) = {
            let mut d = self.inner.dispatch.lock();
            let effects = d.node_joined(
                now,
                r.node,
                rating,
                self.inner.transport.advertised(&r.listen_addrs, seen),
                &observed,
                r.hardware.clone(),
                r.model_bytes_max,
            )?;
            (effects, d.assignments_for(&r.node))
        };
        // Its own assignments travel in the answer; pushes go to the others.
        let effects = effects
            .into_iter()
            .filter(|e| !matches!(e, Effect::Push { node, .. } if *node == r.node))
            .collect();
        self.apply(effects).await;
        self.challenge_registration(r.node, claims);
        tracing::info!(node = %r.node, gpus_claimed = r.hardware.gpus.len(), "node registered");
        Ok(DispatcherReply::Registered {
            dispatcher: self.inner.id,
            heartbeat_interval_ms: u32::try_from(
                self.inner
                    .config
                    .dispatch
                    .heartbeat_interval_s
                    .saturating_mul(1000),
            )
            .unwrap_or(u32::MAX),
            assignments,
        })
    }

    /// Carries out the state machine's effects.
    pub(super) async fn apply(&self, effects: Vec<Effect>) {
        let mut sessions = Vec::new();
        for effect in effects {
            match effect {
                Effect::Push { node, push } => self.push(node, push),
                Effect::Online {
                    node,
                    session_start_s,
                    until_s,
                } => sessions.push((node, session_start_s, until_s)),
                Effect::Offline {
                    node,
                    session_start_s,
                    last_seen_s,
                } => {
                    tracing::info!(%node, "node offline");
                    sessions.push((node, session_start_s, last_seen_s));
                }
                Effect::DeploymentState { deployment, state } => {
                    tracing::info!(%deployment, ?state, "deployment state");
                }
            }
        }
        if !sessions.is_empty() {
            let full = {
                let mut pending = self.inner.sessions.lock();
                for (node, start, end) in sessions {
                    let until = pending.entry((node, start)).or_insert(end);
                    *until = (*until).max(end);
                }
                pending.len() >= SESSIONS_PENDING_MAX
            };
            if full {
                self.flush_sessions().await;
            }
        }
    }

    /// Writes the online sessions waiting for the ledger (`Inner::sessions`), in transactions
    /// of at most [`SESSIONS_PER_WRITE`]: every tick, and before anything reads them (rounds,
    /// standings). What fails to be written waits for the next flush.
    pub(super) async fn flush_sessions(&self) {
        // One flush at a time: when this returns, what was waiting when it was called is in
        // the ledger, even if a concurrent flush took it.
        let _flushing = self.inner.flushing.lock().await;
        let batch: Vec<(NodeId, u64, u64)> = {
            let mut pending = self.inner.sessions.lock();
            pending.drain().map(|((n, s), e)| (n, s, e)).collect()
        };
        if batch.is_empty() {
            return;
        }
        let written = self
            .db(move |l| {
                let mut result = Ok(0u32);
                for chunk in batch.chunks(SESSIONS_PER_WRITE) {
                    match l.record_online_many(chunk) {
                        Ok(n) => result = result.map(|skipped| skipped + n),
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                Ok((result, batch))
            })
            .await;
        match written {
            Ok((Ok(0), _)) => {}
            Ok((Ok(skipped), _)) => {
                tracing::warn!(
                    skipped,
                    "uptime of nodes the ledger no longer holds not recorded"
                );
            }
            Ok((Err(e), batch)) => {
                tracing::error!(error = ?e, sessions = batch.len(), "uptime not recorded yet; retried next tick");
                let mut pending = self.inner.sessions.lock();
                for (node, start, end) in batch {
                    let until = pending.entry((node, start)).or_insert(end);
                    *until = (*until).max(end);
                }
            }
            Err(e) => tracing::error!(error = ?e, "uptime not recorded"),
        }
    }

    fn push(&self, node: NodeId, push: DispatcherPush) {
        let conn = self
            .inner
            .node_conns
            .lock()
            .get(&node)
            .map(|c| c.conn.clone());
        let Some(conn) = conn else { return };
        let limits = self.inner.config.frame_limits;
        tokio::spawn(async move {
            match conn
                .call::<_, NodeAck>(&push, Conversation::NodeDispatcher, limits)
                .await
            {
                Ok(NodeAck::Ok) => {}
                Ok(NodeAck::Error(e)) => tracing::warn!(%node, error = %e, "push refused"),
                Ok(other) => tracing::debug!(%node, ?other, "unexpected answer to a push"),
                Err(e) => tracing::debug!(%node, error = %e, "push not delivered"),
            }
        });
    }

    /// Answers one request from a registered node (the reply boundary of this
    /// conversation).
    async fn handle_node(&self, node: NodeId, req: NodeRequest) -> DispatcherReply {
        let heartbeat = matches!(req, NodeRequest::Heartbeat(_));
        let reply = self
            .node_request(node, req)
            .await
            .unwrap_or_else(|e| DispatcherReply::Error(e.into()));
        if heartbeat {
            metrics::counter!(
                crate::metrics::HEARTBEATS_TOTAL,
                "result" => crate::metrics::reply_result(&reply)
            )
            .increment(1);
        }
        reply
    }

    async fn node_request(
        &self,
        node: NodeId,
        req: NodeRequest,
    ) -> Result<DispatcherReply, Refusal> {
        let now = self.inner.clock.now_s();
        match req {
            NodeRequest::Register(_) => Err(err(
                ErrorCode::BadRequest,
                "already registered on this connection",
            )
            .into()),
            NodeRequest::Heartbeat(hb) => {
                if let Some(rates) = &self.inner.heartbeat_rates {
                    rates
                        .lock()
                        .allow(&node, self.monotonic_ms())
                        .map_err(|e| err(ErrorCode::Busy, format!("heartbeats: {e}")))?;
                }
                let effects = self
                    .inner
                    .dispatch
                    .lock()
                    .heartbeat(now, &node, &hb)
                    .map_err(|e| err(ErrorCode::Unauthenticated, e.to_string()))?;
                self.apply(effects).await;
                let mut d = self.inner.dispatch.lock();
                Ok(DispatcherReply::HeartbeatAck {
                    demand: d.demand_at(now),
                    assignments: d.assignments_for(&node),
                })
            }
            NodeRequest::FetchModel { model, offset, len } => {
                if len == 0 || len > CHUNK_BYTES_MAX {
                    return Err(err(
                        ErrorCode::BadRequest,
                        format!("chunk length must be 1..={CHUNK_BYTES_MAX}"),
                    )
                    .into());
                }
                // Models may be proprietary: a node gets only what it was assigned.
                let assigned = self
                    .inner
                    .dispatch
                    .lock()
                    .assignments_for(&node)
                    .iter()
                    .any(|a| a.model == model);
                if !assigned {
                    return Err(err(
                        ErrorCode::NotFound,
                        format!("model {model} is not assigned to this node"),
                    )
                    .into());
                }
                let total = self
                    .inner
                    .blobs
                    .size(&model)
                    .await
                    .map_err(|e| Refusal::Internal(e.to_string()))?
                    .ok_or_else(|| err(ErrorCode::NotFound, format!("model {model}")))?;
                let data = self
                    .inner
                    .blobs
                    .read_range(&model, offset, len)
                    .await
                    .map_err(|e| err(ErrorCode::BadRequest, e.to_string()))?;
                Ok(DispatcherReply::ModelChunk {
                    offset,
                    total_bytes: total,
                    data,
                })
            }
            NodeRequest::Standing { rounds } => Ok(DispatcherReply::Standing(Box::new(
                self.standing(node, rounds).await?,
            ))),
            NodeRequest::StandingOf(query) => {
                let q = query
                    .verify_query(now)
                    .map_err(|e| err(ErrorCode::Unauthenticated, e.to_string()))?;
                Ok(DispatcherReply::Standing(Box::new(
                    self.standing(q.node, q.rounds).await?,
                )))
            }
            NodeRequest::Reach => {
                let conn = self
                    .inner
                    .node_conns
                    .lock()
                    .get(&node)
                    .map(|c| c.conn.clone());
                match conn {
                    Some(conn) => Ok(DispatcherReply::Reach(self.reach(&conn).await)),
                    None => Err(err(ErrorCode::NotFound, "no connection of this node").into()),
                }
            }
            NodeRequest::ReplicaState {
                deployment,
                model,
                state,
            } => {
                let effects = self.inner.dispatch.lock().replica_state(
                    now,
                    &node,
                    &deployment,
                    model,
                    &state,
                );
                self.apply(effects).await;
                Ok(DispatcherReply::Ok)
            }
            NodeRequest::Usage(report) => self.usage(node, now, report).await,
        }
    }

    /// Charges what [`admit`] lets be charged of a node's usage report, once per task.
    async fn usage(
        &self,
        node: NodeId,
        now: u64,
        report: UsageReport,
    ) -> Result<DispatcherReply, Refusal> {
        if report.records.len() > USAGE_RECORDS_MAX {
            return Err(err(
                ErrorCode::TooLarge,
                format!("more than {USAGE_RECORDS_MAX} records"),
            )
            .into());
        }
        check_ack_count(report.acks.len())?;
        // The clients' acknowledgements first (stored before anything is charged under
        // them): they say what may be charged.
        self.forwarded_acks(&report.acks, node).await;
        let config = &self.inner.config;
        let restart_grace = within_restart_grace(
            self.inner.started.elapsed().as_secs(),
            config.ticket_lifetime_s,
            config.usage_grace_s,
        );
        // What the ticket memory says of each record. (Locks are taken one after another,
        // never nested.)
        let known: Vec<Option<bool>> = {
            let mut tickets = self.inner.tickets.lock();
            tickets.forget_old(now);
            report
                .records
                .iter()
                .map(|r| tickets.allows(&r.ticket_nonce, &r.deployment, &node))
                .collect()
        };
        // A ticket of the previous run whose client acknowledged this node's work under it:
        // the acknowledgement book (restored from the ledger) holds the genuine ticket, and
        // charges stay within what was acknowledged.
        let acked: Vec<bool> = if restart_grace {
            let acks = self.inner.acks.lock();
            report
                .records
                .iter()
                .map(|r| {
                    acks.entry(&r.ticket_nonce, &node)
                        .is_some_and(|e| e.deployment == r.deployment)
                })
                .collect()
        } else {
            vec![false; report.records.len()]
        };
        let allowed: Vec<bool> = {
            let dispatch = self.inner.dispatch.lock();
            report
                .records
                .iter()
                .zip(known)
                .zip(acked)
                .map(|((r, known), acked)| {
                    ticket_allows(known, restart_grace, || {
                        acked || dispatch.serves(&node, &r.deployment)
                    })
                })
                .collect()
        };
        let mut admitted = Vec::with_capacity(report.records.len());
        let (mut unknown, mut refused) = (0u32, 0u32);
        {
            let deployments = self.inner.deployments.read();
            for (index, (record, ticket_allows)) in
                report.records.into_iter().zip(allowed).enumerate()
            {
                let facts = UsageFacts {
                    canary: self
                        .inner
                        .canary
                        .as_ref()
                        .is_some_and(|c| c.is_canary(&record.task)),
                    ticket_allows,
                    deployment: deployments
                        .get(&record.deployment)
                        .map(|d| DeploymentTerms {
                            plan: d.plan,
                            model_bytes: d.model_bytes,
                            per_request_max: d.price.per_request_max,
                        }),
                };
                match admit(&record, facts, &config.pricing) {
                    Admission::Charge(cost) => admitted.push((index, record, cost)),
                    Admission::Refuse => {
                        refused += 1;
                        unknown += 1;
                    }
                    // Nothing to charge, never retried.
                    Admission::Ignore(_) => unknown += 1,
                }
            }
        }
        // Charged once per (deployment, task, inputs), and only within what its client
        // acknowledged of this node: a new record beyond it is held (reported again later).
        // A record the ledger had already is a duplicate whatever its acknowledgement: one
        // counted against it is counted back; a held one is dropped.
        let mut charges = Vec::with_capacity(admitted.len());
        let mut held = Vec::new();
        {
            let mut acks = self.inner.acks.lock();
            for (index, record, cost) in admitted {
                let decision = acks.admit(
                    &record.ticket_nonce,
                    &node,
                    &record.task,
                    &record.inputs_digest,
                    cost,
                );
                match decision {
                    Decision::Charge => charges.push(UsageCharge {
                        record,
                        node,
                        cost,
                        at_s: now,
                    }),
                    Decision::Hold => held.push((index as u32, record)),
                }
            }
        }
        let held_keys: Vec<_> = held
            .iter()
            .map(|(_, r)| (r.deployment, r.task, r.inputs_digest))
            .collect();
        // Counted back if the charge fails (the book's tally must stay the ledger's); a
        // failure after the charge committed counts nothing back.
        let refunds: Vec<_> = charges
            .iter()
            .map(|c| {
                let r = &c.record;
                (r.ticket_nonce, r.task, r.inputs_digest, c.cost)
            })
            .collect();
        let charged = self
            .db(move |l| {
                let outcome = match l.charge_usage(&charges) {
                    Ok(outcome) => outcome,
                    Err(e) => return Ok(Err(e)),
                };
                let after = deployments_touched(l, &charges)?;
                let known = l.usage_known(&held_keys)?;
                Ok(Ok((outcome, after, known, charges)))
            })
            .await?;
        let (outcome, after, known, charges) = match charged {
            Ok(charged) => charged,
            Err(e) => {
                let mut acks = self.inner.acks.lock();
                for (nonce, task, digest, cost) in &refunds {
                    acks.refund(nonce, &node, task, digest, *cost);
                }
                return Err(Refusal::Ledger(e));
            }
        };
        {
            let mut acks = self.inner.acks.lock();
            for i in &outcome.duplicated {
                if let Some(c) = charges.get(*i as usize) {
                    let r = &c.record;
                    acks.refund(&r.ticket_nonce, &node, &r.task, &r.inputs_digest, c.cost);
                }
            }
        }
        let mut duplicates = 0u32;
        let held: Vec<u32> = held
            .into_iter()
            .zip(known)
            .filter_map(|((index, _), known)| {
                duplicates += u32::from(known);
                (!known).then_some(index)
            })
            .collect();
        self.store_deployments(after);
        let counters = &self.inner.counters;
        Counters::add(&counters.usage_records, u64::from(outcome.accepted));
        Counters::add(
            &counters.usage_duplicates,
            u64::from(outcome.duplicates + duplicates),
        );
        Counters::add(&counters.usage_held, held.len() as u64);
        crate::metrics::usage_records("charged", u64::from(outcome.accepted));
        crate::metrics::usage_records("duplicate", u64::from(outcome.duplicates + duplicates));
        crate::metrics::usage_records("held", held.len() as u64);
        if unknown > 0 {
            tracing::warn!(
                %node,
                unknown,
                refused,
                "usage for unknown deployments or without a ticket naming the node ignored"
            );
        }
        Ok(DispatcherReply::UsageAck {
            accepted: outcome.accepted,
            duplicates: outcome.duplicates + duplicates + unknown,
            held,
        })
    }
}

/// The deployments `charges` touched, read back (their allowances moved).
pub(super) fn deployments_touched(
    l: &dyn Ledger,
    charges: &[UsageCharge],
) -> Result<Vec<DeploymentRecord>, LedgerError> {
    let mut touched: Vec<_> = charges.iter().map(|c| c.record.deployment).collect();
    touched.sort();
    touched.dedup();
    let mut after = Vec::with_capacity(touched.len());
    for id in touched {
        if let Some(d) = l.deployment(&id)? {
            after.push(d);
        }
    }
    Ok(after)
}

impl<T: Transport> Dispatcher<T> {
    /// Puts deployments read back after a charge ([`deployments_touched`]) in the in-memory
    /// map. Charges from several nodes run concurrently, and their read-backs may arrive out
    /// of order: an allowance only ever goes down (charges, the refund), so a read-back with
    /// more left than the map holds is an older one and is dropped (it used to overwrite a
    /// newer one, leaving the allowance shown too high until the next charge: seen in CI as
    /// 52 credits too many left after 1,000 tasks, with every task charged in the ledger).
    pub(super) fn store_deployments(&self, after: Vec<DeploymentRecord>) {
        let mut deployments = self.inner.deployments.write();
        for d in after {
            let Some(slot) = deployments.get_mut(&d.id) else {
                continue;
            };
            // Equal allowances: the one that says stopped is the newer (a stop is never undone).
            let newer = d.allowance_left < slot.allowance_left
                || (d.allowance_left == slot.allowance_left
                    && (d.stopped_at_s.is_some() || slot.stopped_at_s.is_none()));
            if newer {
                *slot = d;
            }
        }
    }
}
