//! `crat-core`: the types every CryptoRAT crate shares.
#![forbid(unsafe_code)]

pub mod gpu_table;
pub mod hardware;
pub mod id;
pub mod money;
