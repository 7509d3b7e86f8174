//! `cargo fuzz run ticket`: see [`crat_fuzz::ticket`] for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crat_fuzz::ticket(data));
