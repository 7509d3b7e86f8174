//! `crat-node`: what a node builder composes into a compute-node daemon.
//!
//! The inference backends (tract, ONNX Runtime, selection), the ONNX model check and input
//! validation live in `crat-backend`; this crate's features `tract`, `ort` and `cuda` turn on
//! the backend's features of the same names.
//!
//! | module | what it does |
//! |---|---|
//! | [`probe`] | GPUs through NVML, else the CPU; power rating from the shared GPU table |
//! | [`cache`] | content-addressed model files verified on every read; loaded models under a byte budget, loaded once |
//! | [`batch`] | Triton-style dynamic batching with a batch size measured per model |
//! | [`idle`] | run a configured command (a miner) while idle in a process group of its own, stop the whole group when work arrives |
//! | [`metrics`] | Prometheus series (tasks, latency, batches, queue, usage, heartbeats, GPUs from NVML), recorded when the binary installs a recorder |
//! | [`challenge`] | proof-of-hardware challenges: the product on the selected backend, its row commitment, openings |
//! | [`ort_setup`] | ONNX Runtime found on the host or installed from PyPI (CPU, or CUDA when NVML sees a GPU), sha256-checked |
//! | [`runtime`] | registration, heartbeats, offline ticket checks, serving, usage reports |
//! | [`activity`] | tasks per second and latency quantiles over the last minute, in fixed memory |
//! | [`dashboard`] | the operator's local web page: hardware, proven rating, backend, models, live tasks, earnings chart, idle workload, START / STOP |
//! | [`standing`] | the operator's view: proven hardware, this round's uptime, commitment, estimated rank and tasks, earnings per closed round (`Node::standing`, or [`standing::ask_standing`] with the node's key from another process, as `crat node status` does) |
//!
//! A model served through validation and the batcher, as the runtime does for each task:
//!
//! ```
//! use std::sync::Arc;
//! use crat_backend::InferenceBackend;
//! use crat_backend::tract::TractBackend;
//! use crat_backend::validate::validate_inputs;
//! use crat_core::tensor::{NamedTensor, Tensor};
//! use crat_node::batch::{BatchConfig, Batcher};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../backend/models/tiny_cnn.onnx"))?;
//! let model = TractBackend::new().load(&bytes)?;
//! assert_eq!(model.info().inputs[0].name, "input");
//! let batcher = Batcher::spawn(model.clone(), BatchConfig::default())?;
//!
//! let image = Tensor::from_slice(&[1, 1, 28, 28], &[0.5f32; 784])?;
//! let inputs = validate_inputs(model.info(), vec![NamedTensor::new("input", image)], 1 << 20)?;
//! let outputs = batcher.infer(inputs).await?;
//! let probs = outputs[0].to_vec::<f32>()?;
//! assert_eq!(probs.len(), 10);
//! assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-4);
//! # Ok(())
//! # }
//! ```

// One foreign call is unsafe: `priority`'s `sched_setscheduler` (no safe wrapper exists in
// libc, nix or rustix); it has the only `allow`.
#![deny(unsafe_code)]

pub mod activity;
pub mod batch;
pub mod cache;
pub mod challenge;
pub mod dashboard;
pub mod idle;
pub mod metrics;
pub mod ort_setup;
pub mod priority;
pub mod probe;
pub mod receipts;
pub mod runtime;
pub mod standing;
