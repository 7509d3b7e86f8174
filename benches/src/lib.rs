//! Shared helpers for the criterion benchmarks in `benches/benches/`.
//!
//! Run them all with `cargo bench -p crat-benches`, or one with e.g.
//! `cargo bench -p crat-benches --bench quic`.

pub use mimalloc::MiMalloc;

use crat_core::id::{DeploymentId, KeyId, TaskId};
use crat_core::money::Credits;
use crat_core::sign::{Signed, Ticket};
use crat_core::tensor::{NamedTensor, Tensor};
use crat_core::wire::{ClientToNode, InferRequest};
use ed25519_dalek::SigningKey;

/// A signed ticket like the ones real tasks carry.
pub fn ticket() -> Signed<Ticket> {
    Signed::sign(
        Ticket {
            deployment: DeploymentId::from_bytes([1; 16]),
            key: KeyId::from_bytes([2; 16]),
            credit_budget: Credits::new(1_000),
            issued_at_s: 0,
            expires_at_s: 600,
            nonce: [3; 16],
            audience: vec![crat_core::id::NodeId::from_bytes([4; 32])],
        },
        &SigningKey::from_bytes(&[5; 32]),
    )
}

/// An inference request carrying one f32 tensor of `elements` values.
pub fn infer_f32(elements: usize) -> ClientToNode {
    let values: Vec<f32> = (0..elements).map(|i| i as f32 * 0.5).collect();
    let tensor = Tensor::from_slice(&[elements as u64], &values).expect("1-D tensor is valid");
    ClientToNode::Infer(Box::new(InferRequest {
        task: TaskId::from_bytes([6; 16]),
        deployment: DeploymentId::from_bytes([1; 16]),
        ticket: ticket(),
        inputs: vec![NamedTensor::new("input", tensor)],
    }))
}

/// An inference request carrying `bytes` of u8 tensor data.
pub fn infer_bytes(bytes: usize) -> ClientToNode {
    let tensor = Tensor::new(
        crat_core::tensor::DType::U8,
        vec![bytes as u64],
        vec![7u8; bytes],
    )
    .expect("1-D tensor is valid");
    ClientToNode::Infer(Box::new(InferRequest {
        task: TaskId::from_bytes([6; 16]),
        deployment: DeploymentId::from_bytes([1; 16]),
        ticket: ticket(),
        inputs: vec![NamedTensor::new("input", tensor)],
    }))
}

/// mimalloc's option index for the purge delay (mimalloc v2 `mi_option_purge_delay`).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Makes mimalloc (the benches' global allocator, as in the `crat` binary) keep freed memory
/// for `delay_ms` before returning it to the OS, so a steady stream of large frames reuses
/// pages instead of faulting in fresh zeroed ones for every 64 MiB message.
///
/// The index is `mi_option_purge_delay` in both mimalloc v2 and v3 headers bundled by
/// `libmimalloc-sys` 0.1.49.
#[allow(unsafe_code)]
pub fn retain_freed_memory_ms(delay_ms: i64) {
    // SAFETY: plain FFI calls reading and setting a process-wide option; no pointers involved.
    let now = unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, delay_ms as _);
        libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY)
    };
    assert_eq!(
        now as i64, delay_ms,
        "mimalloc did not take the purge delay"
    );
}
