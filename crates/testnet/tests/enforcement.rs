#![allow(clippy::unwrap_used)]
//! Budgets and rates are enforced where the work happens (issue 13, item 4): a real
//! dispatcher, tract nodes and loopback QUIC.
//!
//! - A per-instance replica serves its share of the plan's guaranteed rate and refuses the
//!   rest with `RateLimited`: a plan of 1 task/s flooded with 5,000 tasks serves about one a
//!   second per replica.
//! - A node serves a ticket only within its credit budget, at the price the ticket names:
//!   past it, `BudgetExhausted`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use crat_core::id::TaskId;
use crat_core::money::Credits;
use crat_core::pricing::{DeployPlan, PerInstancePlan, UpdateFrequency};
use crat_core::tensor::NamedTensor;
use crat_core::wire::{ClientToNode, ErrorCode, InferRequest, NodeToClient};
use crat_dispatcher::DispatcherConfig;
use crat_sdk::{ClientConfig, Error};
use crat_testnet::loopback_quic;
use crat_transport::{ConnectionExt, Conversation, FrameLimits, Transport};
use futures_util::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_instance_plan_is_served_at_its_rate_and_no_faster() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.canary.interval_ms = 0;
    let net = network(cfg, dir.path()).await;
    let (client, key) = client_with(&net, 1_000_000).await;
    let model = client.upload_model(TINY, |_| {}).await.unwrap();
    let plan = DeployPlan::PerInstance(PerInstancePlan {
        guaranteed_rps: 1,
        max_input_bytes: 1 << 16,
        update_frequency: UpdateFrequency::Never,
        key_lifetime_s: 3_600,
    });
    let d = client.deploy(model, plan).await.unwrap();
    let info = d.wait_ready(Duration::from_secs(30)).await.unwrap();
    let replicas = u64::from(info.replicas_wanted);

    // One attempt per task: each task is one request to one replica.
    let config = ClientConfig {
        attempts_max: Some(1),
        ..ClientConfig::default()
    };
    let flooder = crat_sdk::connect_quic_with(
        net.dispatcher_addr,
        net.dispatcher().id(),
        key,
        config,
        loopback_quic(),
    )
    .await
    .unwrap();
    let d = flooder.deployment(d.id());
    let started = Instant::now();
    let results: Vec<Result<_, Error>> = d
        .infer_many(
            futures_util::stream::iter(0..5_000u32)
                .map(|i| vec![NamedTensor::new("input", input(i % 50))]),
            64,
        )
        .collect()
        .await;
    let elapsed = started.elapsed();
    let served = results.iter().filter(|r| r.is_ok()).count() as u64;
    let limited = results
        .iter()
        .filter(|r| match r {
            Err(Error::RateLimited(_)) => true,
            Err(Error::NoReplica { last: Some(e), .. }) => matches!(**e, Error::RateLimited(_)),
            _ => false,
        })
        .count() as u64;
    eprintln!("5,000 tasks at a 1 task/s plan in {elapsed:?}: {served} served, {limited} refused");
    // Each replica: its burst (1) plus 1 a second.
    let allowed = replicas * (1 + elapsed.as_secs() + 1);
    assert!(served >= 1, "the bought rate is served");
    assert!(
        served <= allowed,
        "{served} served, at most {allowed} allowed"
    );
    assert_eq!(
        served + limited,
        5_000,
        "every other task is refused as rate-limited"
    );
    net.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_is_served_within_its_budget_and_no_further() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.canary.interval_ms = 0;
    let net = network(cfg, dir.path()).await;
    let cost = DispatcherConfig::new("x")
        .pricing
        .request_cost(TINY.len() as u64, 28 * 28 * 4)
        .unwrap();
    let (client, key) = client_with(&net, 1_000_000).await;
    let model = client.upload_model(TINY, |_| {}).await.unwrap();
    // An allowance of five tasks.
    let d = client
        .deploy(model, per_request(5 * cost.get()))
        .await
        .unwrap();
    d.wait_ready(Duration::from_secs(30)).await.unwrap();

    // A client that keeps sending under one ticket to one node, never reporting anything.
    let me = RawClient::new(&net, &key).await;
    let lease = me.lease(d.id()).await;
    assert_eq!(
        lease.ticket.body.credit_budget,
        Credits::new(5 * cost.get())
    );
    assert_eq!(lease.ticket.body.price.cost(28 * 28 * 4), Some(cost));
    let replica = &lease.replicas[0];
    let node = me
        .transport
        .connect(&replica.addrs[0], &replica.node)
        .await
        .unwrap();
    let mut outcomes = Vec::new();
    for i in 0..12u32 {
        let req = ClientToNode::Infer(Box::new(InferRequest::new(
            TaskId::from_bytes(rand::random()),
            d.id(),
            lease.ticket.clone(),
            vec![NamedTensor::new("input", input(i))],
        )));
        let r: NodeToClient = node
            .call(&req, Conversation::ClientNode, FrameLimits::default())
            .await
            .unwrap();
        outcomes.push(match r {
            NodeToClient::Receipted { .. } => None,
            NodeToClient::Error(e) => Some(e.code),
            other => panic!("task {i}: {other:?}"),
        });
    }
    // Five tasks paid for, then refusals.
    assert_eq!(outcomes[..5], [None; 5]);
    assert!(
        outcomes[5..]
            .iter()
            .all(|o| *o == Some(ErrorCode::BudgetExhausted)),
        "{outcomes:?}"
    );
    net.shutdown();
}
