//! `cargo fuzz run text`: see [`crat_fuzz::text`] for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crat_fuzz::text(data));
