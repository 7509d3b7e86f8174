//! `crat-node`: what a node builder composes into a compute-node daemon.
//!
//! Work in progress (issue 3): [`backend`] defines the inference-backend interface.

#![forbid(unsafe_code)]

pub mod backend;
