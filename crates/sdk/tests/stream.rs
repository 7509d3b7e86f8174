//! `infer_many`: results in input order, never more than `concurrency` tasks in flight
//! (measured at a scripted node that answers out of order).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use crat_core::id::NodeId;
use crat_core::money::Credits;
use crat_core::pricing::{DeployPlan, PerRequestPlan};
use crat_core::sign::{ProvenReceipt, Receipt, tensors_digest};
use crat_core::tensor::{NamedTensor, Tensor};
use crat_core::wire::{ClientToNode, NodeToClient, Replica};
use crat_transport::memory::MemoryNetwork;
use crat_transport::{Conversation, FrameLimits, Transport, serve};
use ed25519_dalek::SigningKey;
use futures_util::{StreamExt, stream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_many_keeps_order_and_bounds_concurrency() {
    const TASKS: u32 = 60;
    const CONCURRENCY: usize = 4;
    let net = MemoryNetwork::new();
    let clock = clock();
    let fake = start_dispatcher(&net, clock.clone(), 4096);

    // An echo node: answers each task with its input, after a delay that varies by task so
    // answers come back out of order; records how many tasks it holds at once.
    let node_key = SigningKey::from_bytes(&[50; 32]);
    let node_id = NodeId::from_key(&node_key.verifying_key());
    let node = net.bind("mem:echo", node_id).unwrap();
    let inflight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    {
        let (inflight, peak) = (inflight.clone(), peak.clone());
        tokio::spawn(async move {
            while let Ok(conn) = node.accept().await {
                let (inflight, peak) = (inflight.clone(), peak.clone());
                let node_key = node_key.clone();
                tokio::spawn(serve(
                    conn,
                    Conversation::ClientNode,
                    FrameLimits::default(),
                    64,
                    move |req: ClientToNode| {
                        let (inflight, peak) = (inflight.clone(), peak.clone());
                        let node_key = node_key.clone();
                        async move {
                            let ClientToNode::Infer(req) = req else {
                                return NodeToClient::Pong;
                            };
                            let now = inflight.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::SeqCst);
                            let delay = u64::from(req.task.as_bytes()[0] % 7);
                            tokio::time::sleep(Duration::from_millis(1 + delay)).await;
                            inflight.fetch_sub(1, Ordering::SeqCst);
                            // Receipted, as every answer must be.
                            let receipt = ProvenReceipt::sign(
                                Receipt {
                                    task: req.task,
                                    deployment: req.deployment,
                                    model: crat_core::id::ModelId::of_bytes(b"echo"),
                                    node: node_id,
                                    inputs_digest: req.inputs_digest,
                                    outputs_digest: tensors_digest(&req.inputs),
                                },
                                &node_key,
                            );
                            NodeToClient::Receipted {
                                task: req.task,
                                outputs: req.inputs,
                                compute_us: 1,
                                receipt: Box::new(receipt),
                            }
                        }
                    },
                ));
            }
        });
    }

    let client = client(&net, "mem:client", sdk_key(), config(clock))
        .await
        .unwrap();
    let model = client
        .upload_model(b"not really onnx", |_| {})
        .await
        .unwrap();
    let plan = DeployPlan::PerRequest(PerRequestPlan {
        max_input_bytes: 1 << 20,
        credit_allowance: Credits::new(10),
    });
    let d = client.deploy(model, plan).await.unwrap();
    {
        let mut s = fake.state();
        s.nodes.push(Replica {
            node: node_id,
            addrs: vec!["mem:echo".parse().unwrap()],
            operator: 0,
            direct: None,
        });
        s.ready.insert(d.id(), vec![node_id]);
    }
    d.wait_ready(Duration::from_secs(5)).await.unwrap();

    let inputs = stream::iter(0..TASKS).map(|i| {
        vec![NamedTensor::new(
            "x",
            Tensor::from_slice(&[1], &[i64::from(i)]).unwrap(),
        )]
    });
    let results: Vec<_> = d.infer_many(inputs, CONCURRENCY).collect().await;
    assert_eq!(results.len(), TASKS as usize);
    for (i, r) in results.into_iter().enumerate() {
        let out = r.unwrap();
        assert_eq!(
            out[0].tensor.to_vec::<i64>().unwrap(),
            vec![i as i64],
            "order"
        );
    }
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= CONCURRENCY, "{peak} tasks in flight");
    assert!(peak >= 2, "tasks ran concurrently (peak {peak})");
    assert_eq!(d.stats().completed, u64::from(TASKS));
}
