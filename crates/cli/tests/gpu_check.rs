//! `crat gpu-check` on this machine: the probe, the selected backend, a challenge verified row
//! by row, and the shipped models against the CPU reference. Without a GPU (CI) the selected
//! backend runs on the CPU and `--require-gpu` fails with the reason; on a GPU machine
//! `scripts/gpu-check.sh` runs the same command with CUDA set up.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

fn crat(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_crat"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn gpu_check_verifies_a_challenge_and_the_models_on_the_selected_backend() {
    let out = crat(&[
        "gpu-check",
        "--json",
        "--runs",
        "2",
        "--challenge-size",
        "96",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["challenge"]["size"], 96);
    assert_eq!(report["challenge"]["rows_verified"], 3);
    let models = report["models"].as_array().unwrap();
    let names: Vec<&str> = models
        .iter()
        .map(|m| m["model"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tiny_cnn", "ppocr_cls"]);
    for m in models {
        assert_eq!(m["agrees"], true, "{m}");
        assert!(m["median_ms"].as_f64().unwrap() > 0.0, "{m}");
    }
    let no_gpu = report["gpus"].as_array().unwrap().is_empty();
    if no_gpu {
        assert_eq!(report["execution_provider"], "cpu", "{report}");
        // Asked for a GPU where there is none: a failure with the reason.
        let out = crat(&[
            "gpu-check",
            "--require-gpu",
            "--runs",
            "1",
            "--challenge-size",
            "16",
        ]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("not a GPU"), "{stderr}");
        assert!(stderr.contains("no NVIDIA GPU detected"), "{stderr}");
    }
}

/// Microsoft's ONNX Runtime builds (the PyPI wheel the tests load) keep telemetry in
/// `~/.cache/Microsoft/DeveloperTools/.onnxruntime/` and upload it, unless
/// `ORT_DISABLE_TELEMETRY` is 1 before the library loads; `crat` sets it (and newer
/// versions' `ORT_TELEMETRY_DISABLED`). Run with a home of
/// its own and an environment without the variable (nor the CI variables that also quiet
/// ONNX Runtime), in a network namespace of its own so that nothing can leave even if this
/// fails: ONNX Runtime must load and nothing may appear under that home.
#[test]
fn crat_keeps_onnx_runtime_telemetry_off() {
    let home = tempfile::tempdir().unwrap();
    let mut command = Command::new("unshare");
    command
        .args(["--net", "--", env!("CARGO_BIN_EXE_crat")])
        .args(["gpu-check", "--runs", "1", "--challenge-size", "16"])
        .env_clear()
        .env("HOME", home.path())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    let dylib = crat_backend::ort::DYLIB_PATH_ENV;
    if let Some(path) = std::env::var_os(dylib) {
        command.env(dylib, path);
    }
    let out = command
        .output()
        .expect("unshare (util-linux) runs the command in a network namespace of its own");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // Otherwise ONNX Runtime never loaded and this proves nothing.
    assert!(
        stdout.contains("backend: \"ort/"),
        "ONNX Runtime did not load ({dylib}): {stdout}\n{stderr}"
    );
    let written: Vec<_> = walk(home.path());
    assert!(
        written.is_empty(),
        "ONNX Runtime wrote under its home: {written:?}"
    );
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
