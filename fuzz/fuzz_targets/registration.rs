//! `cargo fuzz run registration`: see [`crat_fuzz::registration`] for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crat_fuzz::registration(data));
