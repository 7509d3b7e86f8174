//! `crat-dispatcher`: the dispatch service.
//!
//! **Not implemented yet.** This crate is reserved for the node registry, model
//! store, ledger, leases and round closer (issue 5). It exports nothing today.
