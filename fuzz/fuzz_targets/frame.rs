//! `cargo fuzz run frame`: see [`crat_fuzz::frame`] for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crat_fuzz::frame(data));
