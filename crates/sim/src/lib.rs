//! `crat-sim`: the discrete-event simulator of the network's economics.
//!
//! **Not implemented yet.** This crate is reserved for the event kernel, scenario
//! models, sweeps and reports (issue 6). It exports nothing today.
