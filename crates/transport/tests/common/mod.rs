//! Helpers shared by the transport integration tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;

use crat_core::id::NodeId;
use crat_transport::memory::{MemoryNetwork, MemoryTransport};
use crat_transport::quic::{QuicConfig, QuicTransport};
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
