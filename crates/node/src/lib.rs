//! `crat-node`: what a node builder composes into a compute-node daemon.
//!
//! **Not implemented yet.** This crate is reserved for the hardware probe, the ONNX
//! inference backends (ort with CUDA/CPU, tract), the model cache, dynamic batching,
//! the idle workload and the node runtime (issue 3). It exports nothing today.
