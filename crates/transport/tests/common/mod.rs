//! Helpers shared by the transport integration tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;

use crat_core::id::NodeId;
use crat_core::wire::{ClientToNode, NodeToClient};
use crat_transport::memory::{MemoryNetwork, MemoryTransport};
use crat_transport::quic::{QuicConfig, QuicTransport};
use crat_transport::{Conversation, FrameLimits, Transport, serve};
use ed25519_dalek::SigningKey;

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

pub fn id(seed: u8) -> NodeId {
    NodeId::from_key(&key(seed).verifying_key())
}

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

pub fn quic(seed: u8) -> QuicTransport {
    QuicTransport::bind(loopback(), &key(seed), QuicConfig::default()).unwrap()
}

pub fn quic_with(seed: u8, config: QuicConfig) -> QuicTransport {
    QuicTransport::bind(loopback(), &key(seed), config).unwrap()
}

pub fn memory_pair(net: &MemoryNetwork, a: u8, b: u8) -> (MemoryTransport, MemoryTransport) {
    (
        net.bind(&format!("mem:{a}"), id(a)).unwrap(),
        net.bind(&format!("mem:{b}"), id(b)).unwrap(),
    )
}

/// Frame caps of the echo tests.
pub const LIMITS: FrameLimits = FrameLimits {
    control_bytes_max: 1 << 20,
    tensor_bytes_max: 64 << 20,
};

/// Answers a ping with a pong and a task with its own inputs.
pub async fn echo(req: ClientToNode) -> NodeToClient {
    match req {
        ClientToNode::Ping => NodeToClient::Pong,
        ClientToNode::Infer(r) => NodeToClient::Outputs {
            task: r.task,
            outputs: r.inputs,
            compute_us: 0,
        },
    }
}

/// Serves [`echo`] on every connection `server` accepts.
pub fn spawn_echo_server<T: Transport>(server: T) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok(conn) = server.accept().await {
            tokio::spawn(serve(conn, Conversation::ClientNode, LIMITS, 256, echo));
        }
    })
}
