//! `cargo fuzz run wire`: see [`crat_fuzz::wire`] for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crat_fuzz::wire(data));
