//! Inference backends on real models: tract against ONNX Runtime, model descriptions, the
//! PaddleOCR text-direction check, the malicious-model corpus (tests/data/malicious) and
//! backend selection.
//!
//! ```text
//! cargo test -p crat-backend --test backends                      # tract only
//! export ORT_DYLIB_PATH=$(scripts/install-onnxruntime.sh)
//! cargo test -p crat-backend --features ort --test backends       # + ONNX Runtime
//! cargo test -p crat-backend --features cuda --test backends -- --include-ignored   # GPU host
//! ```
//!
//! With feature `ort` on, the ONNX Runtime tests fail (they do not skip) when `ORT_DYLIB_PATH`
//! does not name a working library.

#![allow(clippy::unwrap_used)]
// Some helpers serve only the tract-against-ort and CUDA tests.
#![cfg_attr(not(all(feature = "tract", feature = "ort")), allow(dead_code))]

use crat_backend::select::{SelectConfig, select_backend};
use crat_backend::{BackendError, Dim, InferenceBackend, LoadedModel, ModelInfo, TensorSpec};
use crat_core::tensor::{DType, Tensor};

const TINY_CNN: &[u8] = include_bytes!("../models/tiny_cnn.onnx");
const PADDLE_CLS: &[u8] = include_bytes!("../models/ch_ppocr_mobile_v2.0_cls_infer.onnx");
/// Three 48×192 greyscale text lines, dark on white (scripts/make_text_images.py).
const TEXT_LINES: &[u8] = include_bytes!("../models/text_lines_48x192.gray");
const TEXT_H: usize = 48;
const TEXT_W: usize = 192;

fn spec(name: &str, shape: Vec<Dim>) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        dtype: DType::F32,
        shape,
    }
}

fn sym(s: &str) -> Dim {
    Dim::Symbolic(s.into())
}

fn tiny_cnn_info() -> ModelInfo {
    ModelInfo {
        inputs: vec![spec(
            "input",
            vec![sym("N"), Dim::Fixed(1), Dim::Fixed(28), Dim::Fixed(28)],
        )],
        outputs: vec![spec("probs", vec![sym("N"), Dim::Fixed(10)])],
    }
}

fn paddle_info() -> ModelInfo {
    // PaddlePaddle declares the batch as dim_value -1 and height/width as dim_param "?".
    ModelInfo {
        inputs: vec![spec("x", vec![sym(""), Dim::Fixed(3), sym("?"), sym("?")])],
        outputs: vec![spec(
            "save_infer_model/scale_0.tmp_1",
            vec![sym(""), Dim::Fixed(2)],
        )],
    }
}

/// Deterministic pseudo-random floats in [lo, hi).
fn noise(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            lo + (hi - lo) * u
        })
        .collect()
}

fn tiny_input(batch: u64) -> Tensor {
    let n = batch as usize * 28 * 28;
    Tensor::from_slice(&[batch, 1, 28, 28], &noise(n, batch, 0.0, 1.0)).unwrap()
}

/// Text line `i` as a PaddleOCR input image [3, 48, 192], normalised (px/255 − 0.5)/0.5,
/// rotated by 180° when `rotated`.
fn text_image(i: usize, rotated: bool) -> Vec<f32> {
    let plane = &TEXT_LINES[i * TEXT_H * TEXT_W..(i + 1) * TEXT_H * TEXT_W];
    let mut grey: Vec<f32> = plane
        .iter()
        .map(|&p| (f32::from(p) / 255.0 - 0.5) / 0.5)
        .collect();
    if rotated {
        // A 180° rotation of a row-major image reverses its pixel order.
        grey.reverse();
    }
    let mut chw = Vec::with_capacity(3 * grey.len());
    for _ in 0..3 {
        chw.extend_from_slice(&grey);
    }
    chw
}

fn text_line_count() -> usize {
    TEXT_LINES.len() / (TEXT_H * TEXT_W)
}

/// A batch of PaddleOCR inputs: the text lines upright and rotated, then noise.
fn paddle_input(batch: u64) -> Tensor {
    let mut data = Vec::new();
    let lines = text_line_count();
    for i in 0..batch as usize {
        if i < 2 * lines {
            data.extend(text_image(i % lines, i >= lines));
        } else {
            data.extend(noise(3 * TEXT_H * TEXT_W, i as u64, -1.0, 1.0));
        }
    }
    Tensor::from_slice(&[batch, 3, TEXT_H as u64, TEXT_W as u64], &data).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.shape(), b.shape());
    let (a, b) = (a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Asserts that the model classifies every text line upright as 0° and rotated as 180°.
fn check_text_direction(model: &dyn LoadedModel, backend: &str) {
    let lines = text_line_count();
    assert!(lines >= 3);
    for rotated in [false, true] {
        let data: Vec<f32> = (0..lines).flat_map(|i| text_image(i, rotated)).collect();
        let x =
            Tensor::from_slice(&[lines as u64, 3, TEXT_H as u64, TEXT_W as u64], &data).unwrap();
        let probs = model.run(&[x]).unwrap().remove(0);
        assert_eq!(probs.shape(), &[lines as u64, 2]);
        let p = probs.to_vec::<f32>().unwrap();
        for i in 0..lines {
            let (p0, p180) = (p[2 * i], p[2 * i + 1]);
            assert!(
                (p0 + p180 - 1.0).abs() < 1e-4,
                "{backend}: softmax {p0} {p180}"
            );
            if rotated {
                assert!(p180 > 0.9, "{backend}: line {i} rotated: P(180°) = {p180}");
            } else {
                assert!(p0 > 0.9, "{backend}: line {i} upright: P(0°) = {p0}");
            }
        }
    }
}

#[path = "data/malicious/corpus.rs"]
mod corpus;

use corpus::{Expect, Refusal, model_with};

/// Every model of the malicious corpus gets its typed error (or, for the legal-but-hostile
/// ones, loads and computes the right thing), and the backend keeps serving afterwards.
fn check_corpus(backend: &dyn InferenceBackend) {
    // The control: the writer builds models the backend accepts.
    let ok = backend
        .load(&model_with("Identity", &["x"], |g| g, &[1, 4]))
        .unwrap_or_else(|e| panic!("{}: identity model: {e}", backend.name()));
    let x = Tensor::from_slice(&[1, 4], &[1.0f32, 2.0, 3.0, 4.0]).unwrap();
    assert_eq!(ok.run(std::slice::from_ref(&x)).unwrap()[0], x);

    for entry in corpus::corpus() {
        let (name, what) = (backend.name(), entry.name);
        match (entry.expect, backend.load(&entry.bytes)) {
            (Expect::Refused(refusal), Err(e)) => {
                let right = match refusal {
                    Refusal::Load => matches!(e, BackendError::Load(_)),
                    Refusal::ExternalData => matches!(e, BackendError::ExternalData(_)),
                    Refusal::ExternalDataPasswd => {
                        matches!(&e, BackendError::ExternalData(m) if m.contains("../../etc/passwd"))
                    }
                };
                assert!(right, "{name}: {what}: wrong error {e:?}");
            }
            (Expect::FailsAtLoad, Err(_)) => {}
            (Expect::ServesRelu, Ok(model)) => {
                let x = Tensor::from_slice(
                    &[3, 4],
                    &[
                        -1.0f32, 2.0, -3.0, 4.0, 0.5, -0.5, 9.0, -9.0, 1.0, 1.0, 1.0, -1.0,
                    ],
                )
                .unwrap();
                let y = model.run(std::slice::from_ref(&x)).unwrap().remove(0);
                let want = [
                    0.0f32, 2.0, 0.0, 4.0, 0.5, 0.0, 9.0, 0.0, 1.0, 1.0, 1.0, 0.0,
                ];
                assert_eq!(y.to_vec::<f32>().unwrap(), want, "{name}: {what}");
            }
            (expect, Ok(_)) => panic!("{name}: {what}: loaded, expected {expect:?}"),
            (expect, Err(e)) => panic!("{name}: {what}: {e:?}, expected {expect:?}"),
        }
    }
    let model = backend.load(TINY_CNN).unwrap();
    assert_eq!(model.run(&[tiny_input(2)]).unwrap()[0].shape(), &[2, 10]);
}

/// The files of the corpus directory are exactly what the generator writes (set
/// `CRAT_WRITE_CORPUS=1` to rewrite them), each is small, and the model check alone gives
/// the verdict the corpus records for it.
#[test]
fn corpus_files_are_what_the_generator_writes() {
    let dir = corpus::dir();
    let write = std::env::var_os("CRAT_WRITE_CORPUS").is_some();
    let mut expected = vec!["README.md".to_owned(), "corpus.rs".to_owned()];
    for entry in corpus::corpus() {
        let path = dir.join(entry.name);
        if write {
            std::fs::write(&path, &entry.bytes).unwrap();
        }
        let on_disk = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (CRAT_WRITE_CORPUS=1 writes it)", path.display()));
        assert!(
            on_disk == entry.bytes,
            "{} differs from the generator",
            entry.name
        );
        assert!(entry.bytes.len() < 100 << 10, "{} is too big", entry.name);
        let checked = crat_backend::onnx_check::check_model(&entry.bytes);
        match entry.expect {
            Expect::Refused(_) => assert!(checked.is_err(), "{} passes the check", entry.name),
            _ => assert!(checked.is_ok(), "{}: {:?}", entry.name, checked.err()),
        }
        expected.push(entry.name.to_owned());
    }
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    expected.sort();
    assert_eq!(found, expected, "files in the corpus directory");
}

/// Bad inputs give typed errors and the model keeps serving.
fn check_bad_inputs(model: &dyn LoadedModel, backend: &str) {
    let wrong_dtype = Tensor::zeros(DType::F64, &[1, 1, 28, 28]).unwrap();
    assert!(
        matches!(model.run(&[wrong_dtype]), Err(BackendError::Input(_))),
        "{backend}: dtype"
    );
    assert!(
        matches!(model.run(&[]), Err(BackendError::Input(_))),
        "{backend}: no inputs"
    );
    let wrong_shape = Tensor::zeros(DType::F32, &[1, 1, 27, 28]).unwrap();
    let r = model.run(&[wrong_shape]);
    assert!(
        matches!(r, Err(BackendError::Input(_) | BackendError::Run(_))),
        "{backend}: shape: {r:?}"
    );
    assert_eq!(model.run(&[tiny_input(1)]).unwrap()[0].shape(), &[1, 10]);
}

// ---------------------------------------------------------------------------------------------
// tract

#[cfg(feature = "tract")]
mod tract {
    use crat_backend::tract::TractBackend;

    use super::*;

    #[test]
    fn describes_both_models() {
        let backend = TractBackend::new();
        assert_eq!(backend.name(), "tract");
        assert_eq!(backend.execution_provider(), "cpu");
        assert_eq!(*backend.load(TINY_CNN).unwrap().info(), tiny_cnn_info());
        let paddle = backend.load(PADDLE_CLS).unwrap();
        assert_eq!(*paddle.info(), paddle_info());
        assert!(paddle.info().batchable());
        assert!(paddle.memory_bytes() >= PADDLE_CLS.len() as u64);
    }

    #[test]
    fn tiny_cnn_runs_batches() {
        let model = TractBackend::new().load(TINY_CNN).unwrap();
        let one = model.run(&[tiny_input(1)]).unwrap().remove(0);
        let many = model.run(&[tiny_input(32)]).unwrap().remove(0);
        assert_eq!(one.shape(), &[1, 10]);
        assert_eq!(many.shape(), &[32, 10]);
        for row in many.to_vec::<f32>().unwrap().chunks(10) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn paddle_reads_text_direction() {
        let model = TractBackend::new().load_model(PADDLE_CLS).unwrap();
        check_text_direction(&model, "tract");
        // Its Reshape defeats a symbolic batch plan: tract plans per batch size.
        assert_eq!(model.symbolic_batch(), Some(false));
    }

    #[test]
    fn refuses_or_serves_the_malicious_corpus() {
        check_corpus(&TractBackend::new());
    }

    #[test]
    fn refuses_bad_inputs() {
        let model = TractBackend::new().load(TINY_CNN).unwrap();
        check_bad_inputs(model.as_ref(), "tract");
    }
}

// ---------------------------------------------------------------------------------------------
// ONNX Runtime

#[cfg(feature = "ort")]
mod ort {
    use crat_backend::ort::{Device, OrtBackend, OrtConfig};

    use super::*;

    /// The CPU backend from ORT_DYLIB_PATH. Panics (fails the test) when it is missing.
    pub(super) fn backend() -> OrtBackend {
        OrtBackend::new(&OrtConfig::default()).unwrap_or_else(|e| {
            panic!(
                "feature `ort` is on but ONNX Runtime is unavailable: {e}\n\
                 run: export ORT_DYLIB_PATH=$(scripts/install-onnxruntime.sh)"
            )
        })
    }

    #[test]
    fn describes_both_models() {
        let backend = backend();
        assert_eq!(backend.name(), "ort");
        assert_eq!(backend.execution_provider(), "cpu");
        // On the CPU there is no per-GPU form (a node's challenges run on this backend).
        assert!(backend.on_gpu(0).is_none());
        assert!(
            backend.build_info().contains("ORT Build Info"),
            "{}",
            backend.build_info()
        );
        assert_eq!(*backend.load(TINY_CNN).unwrap().info(), tiny_cnn_info());
        assert_eq!(*backend.load(PADDLE_CLS).unwrap().info(), paddle_info());
    }

    #[test]
    fn paddle_reads_text_direction() {
        let model = backend().load(PADDLE_CLS).unwrap();
        check_text_direction(model.as_ref(), "ort");
    }

    #[test]
    fn refuses_or_serves_the_malicious_corpus() {
        check_corpus(&backend());
    }

    #[test]
    fn refuses_bad_inputs() {
        let model = backend().load(TINY_CNN).unwrap();
        check_bad_inputs(model.as_ref(), "ort");
    }

    #[test]
    fn bogus_library_path_is_an_error() {
        let config = OrtConfig {
            dylib_path: Some("/nonexistent/libonnxruntime.so.1.31.1".into()),
            ..OrtConfig::default()
        };
        let e = OrtBackend::new(&config).unwrap_err();
        assert!(
            matches!(&e, BackendError::Unavailable(m) if m.contains("/nonexistent/")),
            "{e:?}"
        );
        // The process is fine and the real library still loads.
        backend();
    }

    #[test]
    fn thread_count_is_bounded() {
        let config = OrtConfig {
            intra_threads: 0,
            ..OrtConfig::default()
        };
        assert!(matches!(
            OrtBackend::new(&config),
            Err(BackendError::Unavailable(_))
        ));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_unavailable() {
        let config = OrtConfig {
            device: Device::Cuda { device_id: 0 },
            ..OrtConfig::default()
        };
        let e = OrtBackend::new(&config).unwrap_err();
        assert!(matches!(&e, BackendError::Unavailable(m) if m.contains("not compiled in")));
    }

    /// Runs on a host with an NVIDIA GPU, the `onnxruntime-gpu` library in ORT_DYLIB_PATH and
    /// the CUDA 13 libraries on the loader path:
    /// `cargo test -p crat-backend --features cuda --test backends -- --ignored cuda`.
    #[cfg(feature = "cuda")]
    #[test]
    #[ignore = "needs an NVIDIA GPU and the onnxruntime-gpu library"]
    fn cuda_really_runs_and_matches_cpu() {
        let cuda = OrtBackend::new(&OrtConfig {
            device: Device::Cuda { device_id: 0 },
            ..OrtConfig::default()
        })
        .unwrap();
        assert_eq!(cuda.execution_provider(), "cuda");
        // The per-GPU form of a CUDA backend is CUDA too (device 0 exists on any GPU host).
        let device0 = cuda.on_gpu(0).expect("a CUDA backend has per-GPU forms");
        assert_eq!(device0.execution_provider(), "cuda");
        device0.load(TINY_CNN).expect("loads on device 0");
        let cpu = backend();
        for (name, bytes, input) in [
            ("tiny cnn", TINY_CNN, tiny_input(32)),
            ("paddle", PADDLE_CLS, paddle_input(32)),
        ] {
            // error_on_failure: this fails unless the CUDA provider really came up.
            let on_gpu = cuda.load(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            let a = on_gpu.run(std::slice::from_ref(&input)).unwrap().remove(0);
            let b = cpu.load(bytes).unwrap().run(&[input]).unwrap().remove(0);
            let diff = max_abs_diff(&a, &b);
            println!("{name}: CUDA vs CPU max |diff| = {diff:e}");
            assert!(diff < 1e-3, "{name}: CUDA vs CPU differ by {diff}");
        }
        check_text_direction(cuda.load(PADDLE_CLS).unwrap().as_ref(), "ort cuda");
        let selected = select_backend(&SelectConfig::default()).unwrap();
        assert_eq!(selected.describe(), "ort/cuda", "{selected:?}");
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_falls_back_when_no_gpu_is_detected() {
        let selected = select_backend(&SelectConfig {
            gpu_detected: Some(false),
            ..SelectConfig::default()
        })
        .unwrap();
        assert_eq!(selected.describe(), "ort/cpu");
        assert_eq!(selected.fallbacks, vec!["cuda: no NVIDIA GPU detected"]);
    }

    /// Without a GPU (or with the CPU-only library) registering CUDA fails and selection says
    /// so; on a GPU host with the GPU library CUDA is chosen.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_is_tried_and_reported() {
        let selected = select_backend(&SelectConfig::default()).unwrap();
        if selected.describe() != "ort/cuda" {
            assert_eq!(selected.describe(), "ort/cpu");
            assert!(
                selected.fallbacks.len() == 1 && selected.fallbacks[0].starts_with("cuda: "),
                "{selected:?}"
            );
            println!("{selected:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// tract against ONNX Runtime

#[cfg(all(feature = "tract", feature = "ort"))]
mod agree {
    use crat_backend::tract::TractBackend;

    use super::corpus::Pb;

    use super::*;

    fn compare(bytes: &[u8], input: impl Fn(u64) -> Tensor, name: &str) {
        let tract = TractBackend::new().load(bytes).unwrap();
        let ort = ort::backend().load(bytes).unwrap();
        assert_eq!(tract.info(), ort.info());
        for batch in [1, 32] {
            let x = input(batch);
            let a = tract.run(std::slice::from_ref(&x)).unwrap().remove(0);
            let b = ort.run(&[x]).unwrap().remove(0);
            let diff = max_abs_diff(&a, &b);
            println!("{name} batch {batch}: max |tract - ort| = {diff:e}");
            assert!(
                diff <= 1e-5,
                "{name} batch {batch}: tract vs ort differ by {diff}"
            );
        }
    }

    #[test]
    fn tiny_cnn() {
        compare(TINY_CNN, tiny_input, "tiny cnn");
    }

    #[test]
    fn paddle() {
        compare(PADDLE_CLS, paddle_input, "paddle");
    }

    /// An output declared without a shape gets the one each backend infers, the same on both.
    #[test]
    fn undeclared_output_shapes_are_inferred() {
        let x = {
            let shape = Pb::default()
                .msg(1, Pb::default().str(2, "N"))
                .msg(1, Pb::default().int(1, 3));
            let tt = Pb::default().int(1, 1).msg(2, shape);
            Pb::default().str(1, "x").msg(2, Pb::default().msg(1, tt))
        };
        let y = Pb::default()
            .str(1, "y")
            .msg(2, Pb::default().msg(1, Pb::default().int(1, 1)));
        let node = Pb::default().str(1, "x").str(2, "y").str(4, "Relu");
        let model = Pb::default()
            .int(1, 7)
            .msg(8, Pb::default().str(1, "").int(2, 13))
            .msg(7, Pb::default().msg(1, node).msg(11, x).msg(12, y))
            .0;
        let expected = vec![sym("N"), Dim::Fixed(3)];
        let tract = TractBackend::new().load(&model).unwrap();
        assert_eq!(tract.info().outputs[0].shape, expected);
        let ort = ort::backend().load(&model).unwrap();
        assert_eq!(ort.info().outputs[0].shape, expected);
    }

    /// Every dtype goes in and comes back out unchanged through both backends (Identity
    /// models built here, one per dtype).
    #[test]
    fn every_dtype_round_trips() {
        let tract = TractBackend::new();
        let ort = ort::backend();
        let codes = [
            (DType::F32, 1),
            (DType::U8, 2),
            (DType::I8, 3),
            (DType::I32, 6),
            (DType::I64, 7),
            (DType::Bool, 9),
            (DType::F16, 10),
            (DType::F64, 11),
        ];
        for (dtype, code) in codes {
            let vi = |name: &str| {
                let shape = Pb::default()
                    .msg(1, Pb::default().str(2, "N"))
                    .msg(1, Pb::default().int(1, 3));
                let tt = Pb::default().int(1, code).msg(2, shape);
                Pb::default().str(1, name).msg(2, Pb::default().msg(1, tt))
            };
            let node = Pb::default().str(1, "x").str(2, "y").str(4, "Identity");
            let graph = Pb::default().msg(1, node).msg(11, vi("x")).msg(12, vi("y"));
            let model = Pb::default()
                .int(1, 7)
                .msg(8, Pb::default().str(1, "").int(2, 13))
                .msg(7, graph)
                .0;
            let bytes: Vec<u8> = match dtype {
                DType::Bool => vec![1, 0, 1, 1, 0, 0],
                // 1.0, -2.0, 0.5, 65504, 0, -0 as f16 bits.
                DType::F16 => [0x3c00u16, 0xc000, 0x3800, 0x7bff, 0, 0x8000]
                    .iter()
                    .flat_map(|b| b.to_le_bytes())
                    .collect(),
                _ => (0..6 * dtype.size())
                    .map(|i| (i * 29 % 251) as u8)
                    .collect(),
            };
            let x = Tensor::new(dtype, vec![2, 3], bytes).unwrap();
            for backend in [&tract as &dyn InferenceBackend, &ort] {
                let m = backend
                    .load(&model)
                    .unwrap_or_else(|e| panic!("{} {dtype}: {e}", backend.name()));
                assert_eq!(m.info().inputs[0].dtype, dtype);
                let y = m.run(std::slice::from_ref(&x)).unwrap().remove(0);
                assert_eq!(y, x, "{} {dtype}", backend.name());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// selection

#[cfg(any(feature = "tract", feature = "ort"))]
#[test]
fn selection_picks_the_best_available_and_says_why() {
    let selected = select_backend(&SelectConfig::default()).unwrap();
    let model = selected.backend.load(TINY_CNN).unwrap();
    assert_eq!(*model.info(), tiny_cnn_info());
    if cfg!(feature = "ort") {
        assert_eq!(selected.backend.name(), "ort", "{selected:?}");
    } else {
        assert_eq!(selected.describe(), "tract/cpu");
        assert!(
            selected
                .fallbacks
                .contains(&"ort: feature `ort` not compiled in".to_owned()),
            "{selected:?}"
        );
    }
    if !cfg!(feature = "cuda") {
        assert_eq!(
            selected.fallbacks[0], "cuda: feature `cuda` not compiled in",
            "{selected:?}"
        );
    }
}

#[cfg(feature = "tract")]
#[test]
fn selection_falls_back_to_tract_with_a_bogus_library_path() {
    let selected = select_backend(&SelectConfig {
        ort_dylib_path: Some("/nonexistent/libonnxruntime.so".into()),
        ..SelectConfig::default()
    })
    .unwrap();
    assert_eq!(selected.describe(), "tract/cpu");
    let ort_reason = selected
        .fallbacks
        .iter()
        .find(|r| r.starts_with("ort: "))
        .unwrap();
    if cfg!(feature = "ort") {
        // "not found at …", or "already loaded from … cannot also load …" when another test
        // in this process loaded the real library first.
        assert!(
            ort_reason.contains("/nonexistent/libonnxruntime.so"),
            "{ort_reason}"
        );
    }
}

#[test]
fn selection_with_everything_disabled_is_an_error() {
    let e = select_backend(&SelectConfig {
        ort: false,
        cuda: false,
        tract: false,
        ..SelectConfig::default()
    })
    .unwrap_err();
    let BackendError::Unavailable(m) = e else {
        panic!("{e:?}")
    };
    assert!(m.contains("cuda: disabled by configuration"), "{m}");
    assert!(m.contains("tract"), "{m}");
}

#[cfg(any(feature = "tract", feature = "ort"))]
#[test]
fn selected_backend_is_shareable() {
    let selected = select_backend(&SelectConfig::default()).unwrap();
    let backend: std::sync::Arc<dyn InferenceBackend> = std::sync::Arc::clone(&selected.backend);
    let model = backend.load(TINY_CNN).unwrap();
    std::thread::scope(|s| {
        for batch in 1..=4u64 {
            let model = &model;
            s.spawn(move || {
                let y = model.run(&[tiny_input(batch)]).unwrap().remove(0);
                assert_eq!(y.shape(), &[batch, 10]);
            });
        }
    });
}
