//! `crat-transport`.
