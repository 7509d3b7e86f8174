//! One conversation test body, run over the in-memory transport and over real QUIC on
//! loopback: requests both ways on one connection, typed errors for bad and oversized
//! requests, identity pinning, and a closed connection surfacing as an error.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::Duration;

use common::*;
use crat_core::bps::Bps;
use crat_core::id::{DeploymentId, TaskId};
use crat_core::strategies;
use crat_core::tensor::{NamedTensor, Tensor};
use crat_core::wire::{
    ClientToNode, Demand, DispatcherPush, ErrorCode, InferRequest, NodeAck, NodeToClient,
};
use crat_transport::memory::MemoryNetwork;
use crat_transport::{
    Connection, ConnectionExt, Conversation, Frame, FrameLimits, Transport, TransportError, serve,
};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;

const LIMITS: FrameLimits = FrameLimits {
    control_bytes_max: 1 << 20,
    tensor_bytes_max: 64 << 20,
};

/// A node that echoes inputs back as outputs.
async fn node_handler(req: ClientToNode) -> NodeToClient {
    match req {
        ClientToNode::Ping => NodeToClient::Pong,
        ClientToNode::Infer(r) => NodeToClient::Outputs {
            task: r.task,
            outputs: r.inputs,
            compute_us: 1,
        },
    }
}

fn infer(n: u8, tensor: Tensor) -> ClientToNode {
    let mut runner = TestRunner::deterministic();
    let ticket = strategies::signed_ticket()
        .new_tree(&mut runner)
        .unwrap()
        .current();
    ClientToNode::Infer(Box::new(InferRequest::new(
        TaskId::from_bytes([n; 16]),
        DeploymentId::from_bytes([7; 16]),
        ticket,
        vec![NamedTensor::new("x", tensor)],
    )))
}

async fn conversation<T: Transport>(server: T, client: T) {
    let server_id = server.local_id();
    let client_id = client.local_id();
    let server_addr = server.local_addr();

    // Server: serves client→node requests and, on the same connection, pushes one request of
    // its own to the client (the dispatcher→node direction).
    let server_task = tokio::spawn(async move {
        let conn = server.accept().await.unwrap();
        assert_eq!(conn.remote_id(), client_id);
        let push = conn.clone();
        let served = tokio::spawn(serve(
            conn,
            Conversation::ClientNode,
            LIMITS,
            64,
            node_handler,
        ));
        let ack: NodeAck = push
            .call(
                &DispatcherPush::Demand(Demand { level_bps: Bps(42) }),
                Conversation::NodeDispatcher,
                LIMITS,
            )
            .await
            .unwrap();
        assert_eq!(ack, NodeAck::Ok);
        // Keep the endpoint alive until serving ends (the client closes).
        let end = served.await.unwrap();
        assert!(matches!(end, TransportError::Closed(_)), "{end:?}");
        drop(server);
    });

    // A wrong pinned identity is refused.
    let wrong = client.connect(&server_addr, &id(99)).await;
    assert!(
        matches!(wrong, Err(TransportError::Identity { actual, .. }) if actual == server_id),
        "{:?}",
        wrong.err()
    );

    let conn = client.connect(&server_addr, &server_id).await.unwrap();
    assert_eq!(conn.remote_id(), server_id);

    // The client answers the server's push.
    let client_side = conn.clone();
    tokio::spawn(serve(
        client_side,
        Conversation::NodeDispatcher,
        LIMITS,
        4,
        |push: DispatcherPush| async move {
            assert_eq!(push, DispatcherPush::Demand(Demand { level_bps: Bps(42) }));
            NodeAck::Ok
        },
    ));

    let pong: NodeToClient = conn
        .call(&ClientToNode::Ping, Conversation::ClientNode, LIMITS)
        .await
        .unwrap();
    assert_eq!(pong, NodeToClient::Pong);

    let tensor = Tensor::from_slice(&[2, 3], &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    let reply: NodeToClient = conn
        .call(&infer(1, tensor.clone()), Conversation::ClientNode, LIMITS)
        .await
        .unwrap();
    match reply {
        NodeToClient::Outputs { task, outputs, .. } => {
            assert_eq!(task, TaskId::from_bytes([1; 16]));
            assert_eq!(outputs, vec![NamedTensor::new("x", tensor)]);
        }
        other => panic!("unexpected {other:?}"),
    }

    // Garbage body: a typed BadRequest error comes back, and the connection keeps working.
    let garbage = Frame::parse(vec![4, 0, 0, 0, 1, 0, 0xff, 0xff], 16).unwrap();
    let reply = conn.request(garbage, 1 << 20).await.unwrap();
    match reply.decode::<NodeToClient>().unwrap() {
        NodeToClient::Error(e) => assert_eq!(e.code, ErrorCode::BadRequest),
        other => panic!("unexpected {other:?}"),
    }

    // Oversized: a frame above the server's cap gets a typed TooLarge error.
    let big = Tensor::zeros(crat_core::tensor::DType::U8, &[66 << 20]).unwrap();
    let frame = Frame::encode(&infer(2, big), u32::MAX).unwrap();
    let reply = conn.request(frame, 1 << 20).await.unwrap();
    match reply.decode::<NodeToClient>().unwrap() {
        NodeToClient::Error(e) => assert_eq!(e.code, ErrorCode::TooLarge),
        other => panic!("unexpected {other:?}"),
    }

    // A response above the caller's cap is refused on read.
    let frame = Frame::encode(
        &infer(
            4,
            Tensor::zeros(crat_core::tensor::DType::U8, &[4096]).unwrap(),
        ),
        u32::MAX,
    )
    .unwrap();
    let err = conn.request(frame, 100).await.unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Frame(crat_transport::FrameError::TooLarge { .. })
        ),
        "{err:?}"
    );

    // Still healthy after all of that.
    let pong: NodeToClient = conn
        .call(&ClientToNode::Ping, Conversation::ClientNode, LIMITS)
        .await
        .unwrap();
    assert_eq!(pong, NodeToClient::Pong);

    // Closing surfaces as an error on both sides, not a hang.
    conn.close("done");
    let after = conn
        .call::<_, NodeToClient>(&ClientToNode::Ping, Conversation::ClientNode, LIMITS)
        .await;
    assert!(matches!(after, Err(TransportError::Closed(_))), "{after:?}");
    tokio::time::timeout(Duration::from_secs(10), server_task)
        .await
        .expect("server saw the close")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_in_memory() {
    let net = MemoryNetwork::new();
    let (server, client) = memory_pair(&net, 1, 2);
    conversation(server, client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_over_quic() {
    conversation(quic(1), quic(2)).await;
}
