//! `crat infer` with NumPy files, as the built binaries run it: a `crat dispatcher` and a
//! `crat node` process, the model uploaded and deployed with `crat upload` and `crat deploy`
//! (whose wait prints its progress), then `crat infer --input input=x.npy --out y.npy` and
//! `--inputs x.npz --out y.npz`. The inputs were written by NumPy 2.4 (`tests/data/npy`);
//! the outputs must be what the model computes on them locally, in NumPy's format.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

#[allow(dead_code)]
mod common;
#[path = "chaos/processes.rs"]
#[allow(dead_code)]
mod processes;

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use common::{Network, crat};
use crat_backend::InferenceBackend;
use crat_backend::tract::TractBackend;
use crat_core::tensor::{DType, Tensor};
use processes::NodeProc;

const START_TIMEOUT: Duration = Duration::from_secs(60);
const TINY: &[u8] = include_bytes!("../../backend/models/tiny_cnn.onnx");
const TINY_V2: &[u8] = include_bytes!("../../backend/models/tiny_cnn_v2.onnx");

/// The data of a `.npy` file, after checking its header names `descr` and `shape`.
fn npy_data<'a>(bytes: &'a [u8], descr: &str, shape: &str) -> &'a [u8] {
    assert!(bytes.starts_with(b"\x93NUMPY\x01\x00"), "a version 1 .npy");
    let len = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
    let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
    assert!(header.contains(&format!("'descr': '{descr}'")), "{header}");
    assert!(header.contains(&format!("'shape': {shape}")), "{header}");
    assert_eq!((10 + len) % 64, 0, "data aligned as NumPy aligns it");
    &bytes[10 + len..]
}

fn f32s(data: &[u8]) -> Vec<f32> {
    data.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= 1e-4 * w.abs().max(1.0),
            "{got:?} vs {want:?}"
        );
    }
}

/// The tiny model's output name, as its signature declares it.
fn local_output_name() -> String {
    crat_backend::onnx_check::check_model(TINY)
        .unwrap()
        .info
        .outputs[0]
        .name
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crat_infer_reads_and_writes_numpy_files() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/npy");
    // One node: one replica; compute challenges at test scale (the node proves its CPU).
    let mut net = Network::start(
        dir.path(),
        "replicas = 1\nheartbeat_interval_s = 1\nproof_scale = \"test\"\n",
    )
    .await
    .unwrap();
    let mut node = NodeProc {
        index: 0,
        port: net.free_port().unwrap(),
        data: dir.path().join("node"),
        logs: net.logs.clone(),
        proc: None,
        lives: 0,
    };
    node.start(&net.dispatcher).unwrap();
    let client = net.client();

    // Uploaded and deployed; the deploy's wait prints its progress.
    let (model, deployment, stderr) = net.deploy(dir.path(), TINY).unwrap();
    assert!(
        stderr.contains("Ready: 1/1 replicas ready"),
        "progress shown: {stderr}"
    );

    // What the model computes locally on the NumPy input.
    let input_npy = std::fs::read(data_dir.join("tiny_input.npy")).unwrap();
    let input = Tensor::new(
        DType::F32,
        vec![1, 1, 28, 28],
        npy_data(&input_npy, "<f4", "(1, 1, 28, 28)").to_vec(),
    )
    .unwrap();
    let local = TractBackend::new().load(TINY).unwrap();
    let want = local.run(&[input]).unwrap().remove(0);
    let want = want.to_vec::<f32>().unwrap();

    // .npy in, .npy out.
    let out_npy = dir.path().join("out.npy");
    let input_arg = format!("input={}", data_dir.join("tiny_input.npy").display());
    // `crat infer` on the deployment with `args` after it; it must succeed.
    let infer = |args: &[&str]| {
        let out = crat(
            &[
                &["infer"],
                &client[..],
                &["--deployment", &deployment],
                args,
            ]
            .concat(),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    infer(&["--input", &input_arg, "--out", out_npy.to_str().unwrap()]);
    let bytes = std::fs::read(&out_npy).unwrap();
    assert_close(&f32s(npy_data(&bytes, "<f4", "(1, 10)")), &want);

    // .npz in, .npz out: one array per output, named by it.
    let out_npz = dir.path().join("out.npz");
    let inputs = data_dir.join("tiny_inputs.npz");
    infer(&[
        "--inputs",
        inputs.to_str().unwrap(),
        "--out",
        out_npz.to_str().unwrap(),
    ]);
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&out_npz).unwrap()).unwrap();
    assert_eq!(zip.len(), 1);
    let name = format!("{}.npy", local_output_name());
    let mut entry = zip.by_name(&name).unwrap();
    let mut bytes = Vec::new();
    entry.read_to_end(&mut bytes).unwrap();
    assert_close(&f32s(npy_data(&bytes, "<f4", "(1, 10)")), &want);

    // Bad input: a clear error, not a crash.
    let out = crat(
        &[
            &["infer"],
            &client[..],
            &[
                "--deployment",
                &deployment,
                "--input",
                &format!("input={}", data_dir.join("big_endian.npy").display()),
            ],
        ]
        .concat(),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("astype"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // `crat deploy --update`: the deployment's model replaced by the same network with other
    // weights; the wait shows the replica switching, then `crat infer` gets the new answers.
    let v2_path = dir.path().join("tiny_v2.onnx");
    std::fs::write(&v2_path, TINY_V2).unwrap();
    let (v2, _) = net
        .client_verb("upload", &[v2_path.to_str().unwrap()])
        .unwrap();
    let out = crat(
        &[
            &["deploy"],
            &client[..],
            &["--update", &deployment, "--model", &v2],
        ]
        .concat(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("update 1 of this deployment"), "{stderr}");
    assert!(
        stderr.contains("Ready: 1/1 replicas ready, 1 on the new model"),
        "progress shown: {stderr}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), deployment);
    infer(&["--input", &input_arg, "--out", out_npy.to_str().unwrap()]);
    let bytes = std::fs::read(&out_npy).unwrap();
    let input = Tensor::new(
        DType::F32,
        vec![1, 1, 28, 28],
        npy_data(&input_npy, "<f4", "(1, 1, 28, 28)").to_vec(),
    )
    .unwrap();
    let want_v2 = TractBackend::new()
        .load(TINY_V2)
        .unwrap()
        .run(&[input])
        .unwrap();
    assert_close(
        &f32s(npy_data(&bytes, "<f4", "(1, 10)")),
        &want_v2[0].to_vec::<f32>().unwrap(),
    );
    // At once again: beyond the plan (a per-request deployment updates once a minute).
    let out = crat(
        &[
            &["deploy"],
            &client[..],
            &["--update", &deployment, "--model", &model],
        ]
        .concat(),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("update too frequent"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    node.kill().unwrap();
    net.dispatcher.kill().unwrap();
}
