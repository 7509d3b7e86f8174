//! `crat-dispatcher`: the dispatch service.

pub mod blob;
pub mod ledger;
