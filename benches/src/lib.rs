//! Shared helpers for the criterion benchmarks in `benches/benches/`.
//!
//! Run them all with `cargo bench -p crat-benches`, or one with e.g.
//! `cargo bench -p crat-benches --bench quic`.

pub mod http;
pub mod load;
pub mod procs;

/// The benches run on the `crat` binary's allocator (see [`crat_alloc`]).
pub use crat_alloc::{MiMalloc, huge_pages_off_unless_asked, retain_freed_memory_ms};

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
            client: crat_core::id::NodeId::from_bytes([6; 32]),
            price: crat_core::pricing::TaskPrice::FREE,
        },
        &SigningKey::from_bytes(&[5; 32]),
    )
}

/// An inference request carrying one f32 tensor of `elements` values.
pub fn infer_f32(elements: usize) -> ClientToNode {
    let values: Vec<f32> = (0..elements).map(|i| i as f32 * 0.5).collect();
    let tensor = Tensor::from_slice(&[elements as u64], &values).expect("1-D tensor is valid");
    ClientToNode::Infer(Box::new(InferRequest::new(
        TaskId::from_bytes([6; 16]),
        DeploymentId::from_bytes([1; 16]),
        ticket(),
        vec![NamedTensor::new("input", tensor)],
    )))
}

/// An inference request carrying `bytes` of u8 tensor data.
pub fn infer_bytes(bytes: usize) -> ClientToNode {
    let tensor = Tensor::new(
        crat_core::tensor::DType::U8,
        vec![bytes as u64],
        vec![7u8; bytes],
    )
    .expect("1-D tensor is valid");
    ClientToNode::Infer(Box::new(InferRequest::new(
        TaskId::from_bytes([6; 16]),
        DeploymentId::from_bytes([1; 16]),
        ticket(),
        vec![NamedTensor::new("input", tensor)],
    )))
}

/// A valid, self-contained ONNX model of about `initializer_bytes` bytes: one `Identity` node
/// (`x` → `y`, f32 `[1]`), plus one f32 initializer `w` of `initializer_bytes / 4` elements
/// that no node uses. It passes `crat_backend::onnx_check::check_model`, which the
/// dispatcher runs on every finished upload.
///
/// The initializer's raw data are the model's last bytes (fields are written in an order that
/// puts them there), so a caller can make a distinct model — a distinct content-addressed id —
/// by changing the tail, e.g. `model[len - 8..]`.
pub fn onnx_model_with_unused_initializer(initializer_bytes: usize) -> Vec<u8> {
    let elements = initializer_bytes / 4;
    let raw: Vec<u8> = (0..elements)
        .flat_map(|i| (i as f32 * 1e-3).to_le_bytes())
        .collect();
    let tensor_type = Pb::default().msg(
        1, // TypeProto.tensor_type
        Pb::default()
            .int(1, 1) // elem_type FLOAT
            .msg(2, Pb::default().msg(1, Pb::default().int(1, 1))), // shape [1]
    );
    let value = |name: &str| {
        Pb::default()
            .bytes(1, name.as_bytes()) // ValueInfoProto.name
            .msg(2, tensor_type.clone()) // ValueInfoProto.type
    };
    let node = Pb::default()
        .bytes(1, b"x") // NodeProto.input
        .bytes(2, b"y") // NodeProto.output
        .bytes(4, b"Identity"); // NodeProto.op_type
    let initializer = Pb::default()
        .int(1, elements as i64) // TensorProto.dims
        .int(2, 1) // data_type FLOAT
        .bytes(8, b"w") // name
        .bytes(9, &raw); // raw_data: last
    let graph = Pb::default()
        .msg(1, node) // GraphProto.node
        .bytes(2, b"bench") // name
        .msg(11, value("x")) // input
        .msg(12, value("y")) // output
        .msg(5, initializer); // initializer: last
    Pb::default()
        .int(1, 7) // ModelProto.ir_version
        .msg(8, Pb::default().bytes(1, b"").int(2, 13)) // opset_import ai.onnx 13
        .msg(7, graph) // graph: last
        .0
}

/// A minimal protobuf writer (varint and length-delimited fields only).
#[derive(Clone, Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(b);
                break;
            }
            self.0.push(b | 0x80);
        }
    }

    fn int(mut self, field: u32, v: i64) -> Self {
        self.varint(u64::from(field) << 3);
        self.varint(v as u64);
        self
    }

    fn bytes(mut self, field: u32, b: &[u8]) -> Self {
        self.varint((u64::from(field) << 3) | 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }

    fn msg(self, field: u32, m: Pb) -> Self {
        self.bytes(field, &m.0)
    }
}

/// A two-worker tokio runtime, as the benches' networks run on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the bench's tokio runtime starts")
}

/// Seconds since the Unix epoch.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A temporary data directory, on tmpfs when there is one, so the ledger and uploads measure
/// the code, not the disk.
pub fn data_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = tempfile::Builder::new()
            .prefix("crat-bench-")
            .tempdir_in(shm)
    {
        return d;
    }
    tempfile::tempdir().expect("a temporary directory for the bench")
}

/// This crate's folder (`benches/`, beside `crates/`): `CRAT_BENCHES_DIR` when set, for a
/// bench binary built on one machine and run from a copy of the repository elsewhere
/// (`benches/compare/gpu/device.sh`), else where it was built.
pub fn benches_dir() -> std::path::PathBuf {
    std::env::var_os("CRAT_BENCHES_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(
            || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")),
            std::path::PathBuf::from,
        )
}
