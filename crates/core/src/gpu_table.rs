//! GPU model → power rating and average daily mining income: one table, one place.
//!
//! **Not filled yet** (issue 4 delivers the table and its loader).
