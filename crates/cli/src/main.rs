//! The `crat` command.
fn main() {}
