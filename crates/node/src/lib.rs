//! `crat-node`: what a node builder composes into a compute-node daemon.
//!
//! Work in progress (issue 3).

#![forbid(unsafe_code)]

pub mod backend;
pub mod batch;
pub mod cache;
pub mod idle;
pub mod probe;
pub mod runtime;
pub mod validate;
