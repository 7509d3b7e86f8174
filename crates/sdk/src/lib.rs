//! `crat-sdk`: the client library an integrator embeds.
//!
//! **Not implemented yet.** This crate is reserved for uploading models, deploying
//! them, leases, direct node connections, retries and streaming (issue 5). It exports
//! nothing today.
