//! `cargo fuzz run tensor`: see [`crat_fuzz::tensor`] for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crat_fuzz::tensor(data));
