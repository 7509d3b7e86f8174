//! What the end-to-end tests check on QUIC (e2e.rs, verification.rs), on iroh: the same
//! scenarios ([`common::scenarios`]) on a [`LocalNetwork`] started with
//! [`LocalNetwork::start_iroh`], once with direct paths between nodes and clients and once with
//! paths that can only go through the relay (nodes on IPv4 loopback, clients on IPv6 loopback,
//! the dispatcher on both; see `crat_testnet::transports`). Each test also checks, with
//! `Client::node_paths`, that the client's connections to nodes took the paths the network was
//! built for.
//!
//! - tasks charged exactly: every answer right, allowance and usage totals equal tasks × price;
//! - a node killed mid-stream: the SDK fails over with the same task ids, each task answered
//!   once and charged at most once, the deployment re-placed;
//! - validation: spot checks catch a node perturbing every answer, honest nodes pass and earn
//!   validation CRAT, the cheater is excluded and slashed; canaries (sent by the dispatcher
//!   from endpoints where the clients are: through the relay in a relayed-only network) catch
//!   one too, honest replicas' canaries pass.
//!
//! The task counts are e2e.rs's (1,000 tasks charged; 600 with a node killed after 300).
//!
//! The relayed-only network needs IPv6 loopback (`::1`): without it these tests fail, saying
//! so.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use crat_core::id::NodeId;
use crat_dispatcher::DispatcherConfig;
use crat_sdk::Client;
use crat_testnet::{IrohPaths, LocalNetwork};
use crat_transport::PathKind;
use crat_transport::iroh::IrohTransport;

/// An iroh network with `paths` of three tract nodes ([`NETWORK_GPUS`]).
async fn iroh_network(
    paths: IrohPaths,
    config: DispatcherConfig,
    dir: &std::path::Path,
) -> LocalNetwork<IrohTransport> {
    init_tracing();
    let started = std::time::Instant::now();
    let net = LocalNetwork::start_iroh(paths, config, dir, specs(&NETWORK_GPUS))
        .await
        .unwrap();
    eprintln!("iroh network ({paths:?}) up in {:?}", started.elapsed());
    net
}

/// The path connections from the clients of a network with `paths` to its nodes take.
fn expected(paths: IrohPaths) -> PathKind {
    match paths {
        IrohPaths::Direct => PathKind::Direct,
        IrohPaths::Relayed => PathKind::Relayed,
    }
}

/// Every connection `client` has open to a node (but `killed`'s) is on the path of `paths`,
/// and there is at least one. A direct network's connection may start on the relay and move,
/// so it gets 10 s to; a relayed-only one must be relayed at once (it can never be direct).
async fn assert_paths(client: &Client<IrohTransport>, paths: IrohPaths, killed: Option<NodeId>) {
    let want = expected(paths);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let open: Vec<(NodeId, PathKind)> = client
            .node_paths()
            .into_iter()
            .filter(|(node, _)| Some(*node) != killed)
            .collect();
        assert!(!open.is_empty(), "no connection to a node is open");
        if open.iter().all(|(_, kind)| *kind == want) {
            eprintln!("{paths:?}: {} node connections, all {want:?}", open.len());
            return;
        }
        assert!(
            paths == IrohPaths::Direct && tokio::time::Instant::now() < deadline,
            "{paths:?} network, every node connection should be {want:?}: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 1,000 tasks on a per-request plan, each charged once at its price.
async fn tasks_charged_exactly(paths: IrohPaths) {
    let dir = tempfile::tempdir().unwrap();
    let net = iroh_network(paths, config(dir.path()), dir.path()).await;
    let client =
        scenarios::tasks_charged_exactly(&net, dir.path(), per_request(100_000), 1_000, None).await;
    assert_paths(&client, paths, None).await;
    net.shutdown();
}

/// 600 tasks, the first replica's node killed after 300.
async fn node_killed_mid_stream(paths: IrohPaths) {
    let dir = tempfile::tempdir().unwrap();
    let net = iroh_network(paths, config(dir.path()), dir.path()).await;
    let (client, victim) = scenarios::node_killed_mid_stream(&net, 600, 300).await;
    assert_paths(&client, paths, Some(victim)).await;
    net.shutdown();
}

/// Four nodes on four address blocks, the last perturbing every answer.
async fn spot_checks_catch(paths: IrohPaths) {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let start = now_s();
    let cfg = scenarios::spot_check_config(dir.path(), start);
    let mut net = LocalNetwork::start_iroh(paths, cfg, dir.path(), vec![])
        .await
        .unwrap();
    let client = scenarios::spot_checks_catch(&mut net, start, 1_000).await;
    assert_paths(&client, paths, None).await;
    net.shutdown();
}

/// Three honest nodes and a fourth perturbing every answer, caught by canaries.
async fn canaries_catch(paths: IrohPaths) {
    let dir = tempfile::tempdir().unwrap();
    let start = now_s();
    let cfg = scenarios::canary_config(dir.path(), start);
    let mut net = iroh_network(paths, cfg, dir.path()).await;
    let client = scenarios::canaries_catch(&mut net, start, 1_000).await;
    assert_paths(&client, paths, None).await;
    net.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tasks_charged_exactly() {
    tasks_charged_exactly(IrohPaths::Direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_tasks_charged_exactly() {
    tasks_charged_exactly(IrohPaths::Relayed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_node_killed_mid_stream_every_task_once() {
    node_killed_mid_stream(IrohPaths::Direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_node_killed_mid_stream_every_task_once() {
    node_killed_mid_stream(IrohPaths::Relayed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_spot_checks_catch_a_perturbing_node() {
    spot_checks_catch(IrohPaths::Direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_spot_checks_catch_a_perturbing_node() {
    spot_checks_catch(IrohPaths::Relayed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_canaries_catch_a_perturbing_node() {
    canaries_catch(IrohPaths::Direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_canaries_catch_a_perturbing_node() {
    canaries_catch(IrohPaths::Relayed).await;
}
