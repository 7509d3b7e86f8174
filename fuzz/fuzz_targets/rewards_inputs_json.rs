//! `cargo fuzz run rewards_inputs_json`: see [`crat_fuzz::rewards_inputs_json`] for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crat_fuzz::rewards_inputs_json(data));
