//! `crat-rewards`: round economics as specified in `ECONOMICS.md`.
//!
//! **Not implemented yet** (issue 4). It exports nothing today.
