//! `cargo fuzz run onnx_check`: see [`crat_fuzz::onnx_check`] for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crat_fuzz::onnx_check(data));
