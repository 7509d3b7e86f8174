//! Proptest strategies for every wire type (feature `proptest`), shared by this crate's tests
//! and the transport's, so a codec round-trip covers each message variant.

use ed25519_dalek::{Signature, SigningKey};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use crate::bps::Bps;
use crate::hardware::{CpuInfo, GpuInfo, HardwareInfo, PowerRating};
use crate::id::{DeploymentId, KeyId, ModelId, NodeId, PeerAddr, SdkKey, TaskId};
use crate::money::Credits;
use crate::policy::acks::AckProof;
use crate::pricing::{
    DeployPlan, PerInstancePlan, PerRequestPlan, PriceQuote, TaskPrice, UpdateFrequency,
};
use crate::sign::{Ack, BackendInfo, ProvenReceipt, Receipt, Registration, Signed, Ticket};
use crate::tensor::{DType, NamedTensor, Tensor};
use crate::wire::*;

/// Any node id (any 32 bytes; not necessarily a valid key).
pub fn node_id() -> impl Strategy<Value = NodeId> {
    any::<[u8; 32]>().prop_map(NodeId::from_bytes)
}
/// Any model id.
pub fn model_id() -> impl Strategy<Value = ModelId> {
    any::<[u8; 32]>().prop_map(ModelId::from_bytes)
}
/// Any deployment id.
pub fn deployment_id() -> impl Strategy<Value = DeploymentId> {
    any::<[u8; 16]>().prop_map(DeploymentId::from_bytes)
}
/// Any task id.
pub fn task_id() -> impl Strategy<Value = TaskId> {
    any::<[u8; 16]>().prop_map(TaskId::from_bytes)
}
/// Any key id.
pub fn key_id() -> impl Strategy<Value = KeyId> {
    any::<[u8; 16]>().prop_map(KeyId::from_bytes)
}
/// Any credit amount.
pub fn credits() -> impl Strategy<Value = Credits> {
    any::<u64>().prop_map(Credits::new)
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,24}"
}

/// Any dtype.
pub fn dtype() -> impl Strategy<Value = DType> {
    proptest::sample::select(DType::ALL.to_vec())
}

/// A valid tensor of up to rank 4 and a few hundred elements, any dtype.
pub fn tensor() -> impl Strategy<Value = Tensor> {
    (dtype(), vec(0u64..6, 0..=4)).prop_flat_map(|(dtype, shape)| {
        let elements: u64 = shape.iter().product();
        let bytes = elements as usize * dtype.size();
        let byte = if dtype == DType::Bool {
            (0u8..=1).boxed()
        } else {
            any::<u8>().boxed()
        };
        vec(byte, bytes).prop_map(move |data| {
            Tensor::new(dtype, shape.clone(), data).expect("strategy builds valid tensors")
        })
    })
}

/// A named tensor.
pub fn named_tensor() -> impl Strategy<Value = NamedTensor> {
    (text(), tensor()).prop_map(|(name, tensor)| NamedTensor { name, tensor })
}

/// A peer address.
pub fn peer_addr() -> impl Strategy<Value = PeerAddr> {
    "[a-z0-9:.\\[\\]]{1,40}".prop_map(|s| PeerAddr::new(s).expect("1..=40 bytes"))
}

/// A wire error.
pub fn wire_error() -> impl Strategy<Value = WireError> {
    (proptest::sample::select(ErrorCode::ALL.to_vec()), text())
        .prop_map(|(code, message)| WireError::new(code, message))
}

fn signature() -> impl Strategy<Value = Signature> {
    (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(a, b)| {
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&a);
        bytes[32..].copy_from_slice(&b);
        Signature::from_bytes(&bytes)
    })
}

/// A ticket body.
pub fn ticket() -> impl Strategy<Value = Ticket> {
    (
        deployment_id(),
        key_id(),
        credits(),
        any::<u64>(),
        any::<u64>(),
        any::<[u8; 16]>(),
        vec(node_id(), 0..4),
        (node_id(), task_price()),
    )
        .prop_map(
            |(
                deployment,
                key,
                credit_budget,
                issued_at_s,
                expires_at_s,
                nonce,
                audience,
                (client, price),
            )| Ticket {
                deployment,
                key,
                credit_budget,
                issued_at_s,
                expires_at_s,
                nonce,
                audience,
                client,
                price,
            },
        )
}

/// A task price.
pub fn task_price() -> impl Strategy<Value = TaskPrice> {
    (credits(), credits(), any::<u64>()).prop_map(|(fixed, per_block, block_bytes)| TaskPrice {
        fixed,
        per_block,
        block_bytes,
    })
}

/// A signed receipt (by a random key).
pub fn signed_receipt() -> impl Strategy<Value = ProvenReceipt> {
    (
        task_id(),
        (deployment_id(), model_id()),
        node_id(),
        any::<([u8; 32], [u8; 32])>(),
        any::<[u8; 32]>(),
    )
        .prop_map(
            |(task, (deployment, model), node, (inputs_digest, outputs_digest), seed)| {
                ProvenReceipt::sign(
                    Receipt {
                        task,
                        deployment,
                        model,
                        node,
                        inputs_digest,
                        outputs_digest,
                    },
                    &SigningKey::from_bytes(&seed),
                )
            },
        )
}

/// A client's acknowledgement, signed by a random key.
pub fn signed_ack() -> impl Strategy<Value = Signed<Ack>> {
    (
        any::<[u8; 16]>(),
        node_id(),
        any::<u64>(),
        credits(),
        any::<([u8; 32], [u8; 32])>(),
    )
        .prop_map(
            |(ticket_nonce, node, tasks, credits, (accumulator, seed))| {
                Signed::sign(
                    Ack {
                        ticket_nonce,
                        node,
                        tasks,
                        credits,
                        accumulator,
                    },
                    &SigningKey::from_bytes(&seed),
                )
            },
        )
}

/// An acknowledgement with its ticket.
pub fn ack_proof() -> impl Strategy<Value = AckProof> {
    (signed_ticket(), signed_ack()).prop_map(|(ticket, ack)| AckProof { ticket, ack })
}

/// A ticket, really signed by a key derived from the strategy's seed.
pub fn signed_ticket() -> impl Strategy<Value = Signed<Ticket>> {
    (ticket(), any::<[u8; 32]>())
        .prop_map(|(t, seed)| Signed::sign(t, &SigningKey::from_bytes(&seed)))
}

fn hardware() -> impl Strategy<Value = HardwareInfo> {
    let gpu = (text(), any::<u64>(), text(), option::of(any::<(u8, u8)>())).prop_map(
        |(name, memory_bytes, driver, compute_capability)| GpuInfo {
            name,
            memory_bytes,
            driver,
            compute_capability,
        },
    );
    let cpu =
        (text(), any::<u32>(), any::<u64>()).prop_map(|(model, cores, memory_bytes)| CpuInfo {
            model,
            cores,
            memory_bytes,
        });
    (vec(gpu, 0..3), cpu).prop_map(|(gpus, cpu)| HardwareInfo { gpus, cpu })
}

/// A registration, signed with an arbitrary signature (not necessarily valid).
pub fn signed_registration() -> impl Strategy<Value = Signed<Registration>> {
    (
        node_id(),
        hardware(),
        1u8..=5,
        vec((text(), text()), 0..3),
        vec(peer_addr(), 0..3),
        any::<u64>(),
        any::<u64>(),
        any::<[u8; 16]>(),
        signature(),
    )
        .prop_map(
            |(
                node,
                hardware,
                rating,
                backends,
                listen_addrs,
                model_bytes_max,
                issued_at_s,
                nonce,
                sig,
            )| {
                Signed {
                    body: Registration {
                        node,
                        hardware,
                        rating: PowerRating::new(rating).expect("1..=5"),
                        backends: backends
                            .into_iter()
                            .map(|(name, execution_provider)| BackendInfo {
                                name,
                                execution_provider,
                            })
                            .collect(),
                        listen_addrs,
                        model_bytes_max,
                        issued_at_s,
                        nonce,
                    },
                    signer: node,
                    signature: sig,
                }
            },
        )
}

fn assignment() -> impl Strategy<Value = Assignment> {
    (
        deployment_id(),
        model_id(),
        any::<u64>(),
        any::<u64>(),
        proptest::option::of(any::<u32>()),
    )
        .prop_map(
            |(deployment, model, model_bytes, max_input_bytes, rate_per_s)| Assignment {
                deployment,
                model,
                model_bytes,
                max_input_bytes,
                rate_per_s,
            },
        )
}

fn demand() -> impl Strategy<Value = Demand> {
    any::<u16>().prop_map(|level_bps| Demand {
        level_bps: Bps(level_bps),
    })
}

fn usage_record() -> impl Strategy<Value = UsageRecord> {
    (
        task_id(),
        deployment_id(),
        key_id(),
        any::<([u8; 16], [u8; 32])>(),
        any::<(u64, u64, u64)>(),
    )
        .prop_map(
            |(
                task,
                deployment,
                key,
                (ticket_nonce, inputs_digest),
                (input_bytes, output_bytes, compute_us),
            )| {
                UsageRecord {
                    task,
                    deployment,
                    inputs_digest,
                    key,
                    ticket_nonce,
                    input_bytes,
                    output_bytes,
                    compute_us,
                }
            },
        )
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..64)
}

/// Every [`NodeRequest`] variant.
pub fn node_request() -> impl Strategy<Value = NodeRequest> {
    let heartbeat = (
        any::<u64>(),
        any::<(u32, u32, u16)>(),
        vec(model_id(), 0..3),
        vec(
            (deployment_id(), model_id())
                .prop_map(|(deployment, model)| ReadyReplica { deployment, model }),
            0..3,
        ),
    )
        .prop_map(
            |(seq, (inflight, queued, utilisation_bps), loaded_models, ready)| {
                NodeRequest::Heartbeat(Heartbeat {
                    seq,
                    load: NodeLoad {
                        inflight,
                        queued,
                        utilisation_bps: Bps(utilisation_bps),
                    },
                    loaded_models,
                    ready,
                })
            },
        );
    let state = prop_oneof![
        Just(ReplicaState::Loading),
        Just(ReplicaState::Ready),
        text().prop_map(ReplicaState::Failed),
    ];
    prop_oneof![
        signed_registration().prop_map(|r| NodeRequest::Register(Box::new(r))),
        heartbeat,
        (model_id(), any::<u64>(), any::<u32>())
            .prop_map(|(model, offset, len)| NodeRequest::FetchModel { model, offset, len }),
        (deployment_id(), model_id(), state).prop_map(|(deployment, model, state)| {
            NodeRequest::ReplicaState {
                deployment,
                model,
                state,
            }
        }),
        (vec(usage_record(), 0..4), vec(ack_proof(), 0..2))
            .prop_map(|(records, acks)| NodeRequest::Usage(UsageReport { records, acks })),
        any::<u32>().prop_map(|rounds| NodeRequest::Standing { rounds }),
        Just(NodeRequest::Reach),
        (node_id(), any::<u32>(), any::<u64>(), signature()).prop_map(
            |(node, rounds, issued_at_s, signature)| {
                NodeRequest::StandingOf(Box::new(Signed {
                    body: crate::sign::StandingQuery {
                        node,
                        rounds,
                        issued_at_s,
                    },
                    signer: node,
                    signature,
                }))
            }
        ),
    ]
}

fn power_rating() -> impl Strategy<Value = PowerRating> {
    (1u8..=5).prop_map(|r| PowerRating::new(r).expect("1..=5 is a rating"))
}

fn micro_usd() -> impl Strategy<Value = crate::money::MicroUsd> {
    any::<u64>().prop_map(crate::money::MicroUsd::new)
}

fn micro_crat() -> impl Strategy<Value = crate::money::MicroCrat> {
    any::<u64>().prop_map(crate::money::MicroCrat::new)
}

/// A [`NodeStanding`] of any shape.
pub fn node_standing() -> impl Strategy<Value = NodeStanding> {
    let gpu = (any::<u32>(), text(), power_rating()).prop_map(|(device, name, rating)| ProvenGpu {
        device,
        name,
        rating,
    });
    let proven = (
        power_rating(),
        micro_usd(),
        any::<bool>(),
        vec(gpu, 0..3),
        any::<bool>(),
    )
        .prop_map(
            |(rating, mining_income_usd_micro_per_day, cpu, gpus, challenged)| ProvenHardware {
                rating,
                mining_income_usd_micro_per_day,
                cpu,
                gpus,
                challenged,
            },
        );
    let round = (
        any::<(u64, u64, u64, u64, u64)>(),
        any::<(bool, bool)>(),
        option::of(any::<u64>()),
        any::<(u64, u64, u64)>(),
        micro_usd(),
        micro_usd(),
    )
        .prop_map(
            |(
                (index, start_s, length_s, elapsed_s, uptime_s),
                (committed, eligible),
                rank,
                (ranked, paid_ranks, tasks_served),
                guaranteed_usd_micro,
                bonus_usd_micro,
            )| RoundSoFar {
                index,
                start_s,
                length_s,
                elapsed_s,
                uptime_s,
                committed,
                eligible,
                rank,
                ranked,
                paid_ranks,
                guaranteed_usd_micro,
                bonus_usd_micro,
                tasks_served,
            },
        );
    let earnings = (
        any::<(u64, u64, u64, bool)>(),
        option::of(any::<u64>()),
        (micro_usd(), micro_usd()),
        (micro_crat(), micro_crat(), micro_crat()),
    )
        .prop_map(
            |(
                (index, start_s, uptime_s, committed),
                rank,
                (guaranteed_usd_micro, bonus_usd_micro),
                (crat_issued_micro, crat_slashed_micro, crat_end_micro),
            )| RoundEarnings {
                index,
                start_s,
                uptime_s,
                committed,
                rank,
                guaranteed_usd_micro,
                bonus_usd_micro,
                crat_issued_micro,
                crat_slashed_micro,
                crat_end_micro,
            },
        );
    (
        node_id(),
        any::<bool>(),
        proven,
        any::<(u64, u64)>(),
        (micro_crat(), any::<u64>(), any::<u64>()),
        round,
        vec(earnings, 0..4),
        any::<Option<bool>>(),
    )
        .prop_map(
            |(
                node,
                online,
                proven,
                (challenges_passed, challenges_failed),
                (crat_micro, streak, uptime_total_s),
                round,
                closed,
                direct,
            )| NodeStanding {
                node,
                online,
                proven,
                challenges_passed,
                challenges_failed,
                crat_micro,
                streak,
                uptime_total_s,
                round,
                closed,
                direct,
            },
        )
}

/// Every [`DispatcherReply`] variant.
pub fn dispatcher_reply() -> impl Strategy<Value = DispatcherReply> {
    prop_oneof![
        (node_id(), any::<u32>(), vec(assignment(), 0..3)).prop_map(
            |(dispatcher, heartbeat_interval_ms, assignments)| DispatcherReply::Registered {
                dispatcher,
                heartbeat_interval_ms,
                assignments
            }
        ),
        (demand(), vec(assignment(), 0..3)).prop_map(|(demand, assignments)| {
            DispatcherReply::HeartbeatAck {
                demand,
                assignments,
            }
        }),
        (any::<u64>(), any::<u64>(), bytes()).prop_map(|(offset, total_bytes, data)| {
            DispatcherReply::ModelChunk {
                offset,
                total_bytes,
                data,
            }
        }),
        (any::<(u32, u32)>(), vec(any::<u32>(), 0..4)).prop_map(
            |((accepted, duplicates), held)| DispatcherReply::UsageAck {
                accepted,
                duplicates,
                held,
            }
        ),
        Just(DispatcherReply::Ok),
        wire_error().prop_map(DispatcherReply::Error),
        node_standing().prop_map(|s| DispatcherReply::Standing(Box::new(s))),
        (
            proptest::option::of(peer_addr()),
            any::<Option<bool>>(),
            any::<u32>()
        )
            .prop_map(|(observed, inbound, probe_ms)| {
                DispatcherReply::Reach(crate::wire::Reach {
                    observed,
                    inbound,
                    probe_ms,
                })
            }),
    ]
}

/// Every [`DispatcherPush`] variant.
pub fn dispatcher_push() -> impl Strategy<Value = DispatcherPush> {
    prop_oneof![
        assignment().prop_map(DispatcherPush::Assign),
        deployment_id().prop_map(|deployment| DispatcherPush::Unassign { deployment }),
        demand().prop_map(DispatcherPush::Demand),
        challenge_request().prop_map(DispatcherPush::Challenge),
        (any::<u64>(), vec(any::<u32>(), 0..8))
            .prop_map(|(id, rows)| DispatcherPush::OpenRows { id, rows }),
    ]
}

/// Any [`ChallengeRequest`].
pub fn challenge_request() -> impl Strategy<Value = ChallengeRequest> {
    (
        any::<(u64, [u8; 32], u32, u32, u32)>(),
        option::of(any::<u32>()),
        any::<u32>(),
    )
        .prop_map(
            |((id, seed, n, k, m), device, deadline_ms)| ChallengeRequest {
                id,
                seed,
                n,
                k,
                m,
                device,
                deadline_ms,
            },
        )
}

/// Any [`RowOpening`].
pub fn row_opening() -> impl Strategy<Value = RowOpening> {
    (
        any::<u32>(),
        vec(any::<u8>(), 0..64),
        vec(any::<[u8; 32]>(), 0..4),
    )
        .prop_map(|(row, values, path)| RowOpening { row, values, path })
}

/// Every [`NodeAck`] variant.
pub fn node_ack() -> impl Strategy<Value = NodeAck> {
    prop_oneof![
        Just(NodeAck::Ok),
        wire_error().prop_map(NodeAck::Error),
        any::<(u64, [u8; 32])>().prop_map(|(id, root)| NodeAck::Committed { id, root }),
        (any::<u64>(), vec(row_opening(), 0..4))
            .prop_map(|(id, rows)| NodeAck::Opened { id, rows }),
    ]
}

/// Any deployment plan.
pub fn deploy_plan() -> impl Strategy<Value = DeployPlan> {
    let freq = proptest::sample::select(vec![
        UpdateFrequency::Never,
        UpdateFrequency::Monthly,
        UpdateFrequency::Weekly,
        UpdateFrequency::Daily,
        UpdateFrequency::Hourly,
    ]);
    prop_oneof![
        (any::<u32>(), any::<u64>(), freq, any::<u64>()).prop_map(
            |(guaranteed_rps, max_input_bytes, update_frequency, key_lifetime_s)| {
                DeployPlan::PerInstance(PerInstancePlan {
                    guaranteed_rps,
                    max_input_bytes,
                    update_frequency,
                    key_lifetime_s,
                })
            }
        ),
        (any::<u64>(), credits()).prop_map(|(max_input_bytes, credit_allowance)| {
            DeployPlan::PerRequest(PerRequestPlan {
                max_input_bytes,
                credit_allowance,
            })
        }),
    ]
}

fn quote() -> impl Strategy<Value = PriceQuote> {
    (credits(), credits(), credits(), credits(), any::<u64>()).prop_map(
        |(upfront, per_request_max, capacity, updates, price)| PriceQuote {
            upfront,
            per_request_max,
            capacity,
            updates,
            credit_price_usd_micro: crate::money::MicroUsd::new(price),
        },
    )
}

fn sdk_key() -> impl Strategy<Value = SdkKey> {
    (key_id(), any::<[u8; 32]>()).prop_map(|(id, secret)| SdkKey { id, secret })
}

/// Any [`ShapeCount`].
pub fn shape_count() -> impl Strategy<Value = ShapeCount> {
    (vec((".{0,8}", vec(any::<u64>(), 0..4)), 0..3), any::<u64>()).prop_map(|(inputs, tasks)| {
        ShapeCount {
            inputs: inputs
                .into_iter()
                .map(|(name, dims)| InputDims { name, dims })
                .collect(),
            tasks,
        }
    })
}

/// Every [`ClientRequest`] call variant.
pub fn client_request() -> impl Strategy<Value = ClientRequest> {
    let call = prop_oneof![
        (model_id(), any::<u64>())
            .prop_map(|(model, total_bytes)| ClientCall::UploadBegin { model, total_bytes }),
        (model_id(), any::<u64>(), bytes()).prop_map(|(model, offset, data)| {
            ClientCall::UploadChunk {
                model,
                offset,
                data,
            }
        }),
        model_id().prop_map(|model| ClientCall::UploadFinish { model }),
        (model_id(), deploy_plan()).prop_map(|(model, plan)| ClientCall::Quote { model, plan }),
        (model_id(), deploy_plan()).prop_map(|(model, plan)| ClientCall::Deploy { model, plan }),
        deployment_id().prop_map(|deployment| ClientCall::Deployment { deployment }),
        (deployment_id(), model_id())
            .prop_map(|(deployment, model)| ClientCall::UpdateModel { deployment, model }),
        deployment_id().prop_map(|deployment| ClientCall::Undeploy { deployment }),
        deployment_id().prop_map(|deployment| ClientCall::Lease { deployment }),
        Just(ClientCall::Balance),
        Just(ClientCall::KeyStatus),
        node_id().prop_map(|endpoint| ClientCall::RelayAccess { endpoint }),
        (vec(signed_receipt(), 0..4), vec(node_id(), 0..4)).prop_map(|(receipts, majority)| {
            ClientCall::ReportValidation(Box::new(ValidationReport { receipts, majority }))
        }),
        vec(ack_proof(), 0..3).prop_map(ClientCall::Acknowledge),
        (deployment_id(), vec(shape_count(), 0..3))
            .prop_map(|(deployment, shapes)| ClientCall::InputShapes { deployment, shapes }),
        (deployment_id(), node_id())
            .prop_map(|(deployment, node)| ClientCall::ReportNoReceipt { deployment, node }),
        (model_id(), any::<bool>())
            .prop_map(|(model, public)| ClientCall::SetModelPublic { model, public }),
    ];
    (sdk_key(), call).prop_map(|(key, call)| ClientRequest { key, call })
}

/// Every [`Verifiability`].
pub fn verifiability() -> impl Strategy<Value = Verifiability> {
    proptest::sample::select(vec![
        Verifiability::Verifiable,
        Verifiability::Unverifiable(Unverifiable::RandomOperator),
        Verifiability::Unverifiable(Unverifiable::Nondeterministic),
        Verifiability::Unverifiable(Unverifiable::BackendsDisagree),
        Verifiability::Unverifiable(Unverifiable::TimedOut),
        Verifiability::Unverifiable(Unverifiable::TooLarge),
        Verifiability::Unverifiable(Unverifiable::NotRunnable),
    ])
}

/// A [`ModelSignature`]: a few tensors with open and fixed dimensions.
pub fn model_signature() -> impl Strategy<Value = ModelSignature> {
    fn tensor() -> impl Strategy<Value = TensorSignature> {
        (
            text(),
            dtype(),
            option::of(vec(option::of(any::<u64>()), 0..6)),
        )
            .prop_map(|(name, dtype, shape)| TensorSignature { name, dtype, shape })
    }
    (vec(tensor(), 0..4), vec(tensor(), 0..4))
        .prop_map(|(inputs, outputs)| ModelSignature { inputs, outputs })
}

/// Every [`DispatcherResponse`] variant.
pub fn dispatcher_response() -> impl Strategy<Value = DispatcherResponse> {
    let state = proptest::sample::select(vec![
        DeploymentState::Pending,
        DeploymentState::Ready,
        DeploymentState::Degraded,
        DeploymentState::Stopped,
        DeploymentState::Failed,
    ]);
    let info = (
        deployment_id(),
        model_id(),
        deploy_plan(),
        state,
        (any::<(u32, u32, u32, u32)>(), option::of(any::<u64>())),
        quote(),
        credits(),
        verifiability(),
        (option::of(text()), option::of(text())),
        option::of(model_signature()),
    )
        .prop_map(
            |(
                id,
                model,
                plan,
                state,
                ((replicas_ready, replicas_wanted, replicas_on_model, updates), next_update_at_s),
                price,
                allowance_left,
                verifiability,
                (failure, shortfall),
                signature,
            )| {
                DeploymentInfo {
                    id,
                    model,
                    plan,
                    state,
                    replicas_ready,
                    replicas_on_model,
                    updates,
                    next_update_at_s,
                    replicas_wanted,
                    price,
                    allowance_left,
                    verifiability,
                    failure,
                    shortfall,
                    signature,
                }
            },
        );
    let replica = (
        node_id(),
        vec(peer_addr(), 0..3),
        any::<u64>(),
        any::<Option<bool>>(),
    )
        .prop_map(|(node, addrs, operator, direct)| Replica {
            node,
            addrs,
            operator,
            direct,
        });
    let lease = (vec(replica, 0..4), signed_ticket(), any::<u16>()).prop_map(
        |(replicas, ticket, validation_bps)| Lease {
            replicas,
            ticket,
            validation_bps: Bps(validation_bps),
        },
    );
    let status = proptest::sample::select(vec![
        KeyStatus::Active,
        KeyStatus::Expired,
        KeyStatus::Revoked,
    ]);
    let key = (key_id(), status, any::<u64>(), option::of(any::<u64>())).prop_map(
        |(id, status, created_at_s, expires_at_s)| KeyInfo {
            id,
            status,
            created_at_s,
            expires_at_s,
        },
    );
    prop_oneof![
        (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(
            |(received_bytes, total_bytes, chunk_bytes_max)| DispatcherResponse::Upload {
                received_bytes,
                total_bytes,
                chunk_bytes_max
            }
        ),
        (model_id(), any::<u64>())
            .prop_map(|(model, bytes)| DispatcherResponse::ModelStored { model, bytes }),
        quote().prop_map(DispatcherResponse::Quote),
        info.prop_map(DispatcherResponse::Deployment),
        lease.prop_map(DispatcherResponse::Lease),
        credits().prop_map(DispatcherResponse::Balance),
        any::<bool>().prop_map(|allowed| DispatcherResponse::RelayAccess { allowed }),
        key.prop_map(DispatcherResponse::Key),
        Just(DispatcherResponse::Ok),
        wire_error().prop_map(DispatcherResponse::Error),
    ]
}

/// Every [`ClientToNode`] variant.
pub fn client_to_node() -> impl Strategy<Value = ClientToNode> {
    let infer = (
        task_id(),
        deployment_id(),
        signed_ticket(),
        vec(named_tensor(), 0..3),
        proptest::option::of(signed_ack()),
    )
        .prop_map(|(task, deployment, ticket, inputs, ack)| {
            let mut request = InferRequest::new(task, deployment, ticket, inputs);
            request.ack = ack.map(Box::new);
            ClientToNode::Infer(Box::new(request))
        });
    prop_oneof![infer, Just(ClientToNode::Ping)]
}

/// Every [`NodeToClient`] variant.
pub fn node_to_client() -> impl Strategy<Value = NodeToClient> {
    prop_oneof![
        (task_id(), vec(named_tensor(), 0..3), any::<u64>()).prop_map(
            |(task, outputs, compute_us)| NodeToClient::Outputs {
                task,
                outputs,
                compute_us
            }
        ),
        Just(NodeToClient::Pong),
        wire_error().prop_map(NodeToClient::Error),
        (
            task_id(),
            vec(named_tensor(), 0..3),
            any::<u64>(),
            signed_receipt()
        )
            .prop_map(
                |(task, outputs, compute_us, receipt)| NodeToClient::Receipted {
                    task,
                    outputs,
                    compute_us,
                    receipt: Box::new(receipt),
                }
            ),
    ]
}
