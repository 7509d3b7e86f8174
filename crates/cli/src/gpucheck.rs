//! `crat gpu-check`: what a node on this machine would serve with, checked for real. The
//! hardware probe (NVML), the backend the node selects (ONNX Runtime with CUDA when a GPU
//! and the libraries are there, with the reasons for anything passed over), a proof-of-
//! hardware challenge computed on it and verified row by row, and models run on it against
//! the CPU reference (ONNX Runtime on the CPU, else tract): agreement within the network's
//! tolerance and the median time per run of each. `scripts/gpu-check.sh` sets up ONNX
//! Runtime for the GPU and runs it; without a GPU it checks the CPU path (`--require-gpu`
//! makes that a failure).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use crat_backend::select::{SelectConfig, select_backend};
use crat_backend::tract::TractBackend;
use crat_backend::{InferenceBackend, LoadedModel};
use crat_core::policy::challenge::{ChallengeSpec, Opening, verify_opening};
use crat_core::tensor::{NamedTensor, Tensor};
use crat_core::verify::{Tolerance, agree};
use crat_core::wire::{ChallengeRequest, NodeAck};
use crat_node::challenge::Challenges;
use crat_node::probe::{HardwareProbe, SystemProbe};
use serde_json::json;

const TINY: &[u8] = include_bytes!("../../backend/models/tiny_cnn.onnx");
const PADDLE: &[u8] = include_bytes!("../../backend/models/ch_ppocr_mobile_v2.0_cls_infer.onnx");
/// Largest input a checked model is fed, in bytes.
const INPUT_BYTES_MAX: u64 = 64 << 20;

/// Options of `crat gpu-check`.
#[derive(Debug, Args)]
pub(crate) struct GpuCheckArgs {
    /// Fail unless the selected backend runs on a GPU (the CUDA execution provider).
    #[arg(long)]
    require_gpu: bool,
    /// Runs per model and backend timed (the median is printed).
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// The challenge's matrices are SIZE × SIZE.
    #[arg(long, default_value_t = 1_024)]
    challenge_size: u32,
    /// Another ONNX model to check (besides the tiny CNN and the PaddleOCR classifier).
    #[arg(long = "model")]
    models: Vec<PathBuf>,
    /// Print one JSON object instead of lines of text.
    #[arg(long)]
    json: bool,
}

/// The median of `runs` timed calls of `f` (after one untimed call).
fn median_time(runs: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    f()?;
    let mut times = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

fn named(model: &dyn LoadedModel, outputs: Vec<Tensor>) -> Vec<NamedTensor> {
    model
        .info()
        .outputs
        .iter()
        .zip(outputs)
        .map(|(spec, t)| NamedTensor::new(spec.name.clone(), t))
        .collect()
}

/// The CPU reference: ONNX Runtime on the CPU if it loads, else tract.
fn reference() -> Arc<dyn InferenceBackend> {
    match select_backend(&SelectConfig {
        cuda: false,
        ..SelectConfig::default()
    }) {
        Ok(s) => s.backend,
        Err(_) => Arc::new(TractBackend::new()),
    }
}

pub(crate) fn run(args: GpuCheckArgs) -> anyhow::Result<()> {
    let report = SystemProbe.probe();
    let gpus: Vec<_> = report
        .hardware
        .gpus
        .iter()
        .map(|g| json!({"name": g.name, "memory_bytes": g.memory_bytes, "driver": g.driver}))
        .collect();
    let selected = select_backend(&SelectConfig {
        gpu_detected: Some(!report.hardware.gpus.is_empty()),
        ..SelectConfig::default()
    })
    .context("no inference backend works here")?;
    let backend = selected.backend.clone();
    let on_gpu = backend.execution_provider() == "cuda";
    let reference = reference();
    let mut out = json!({
        "gpus": gpus,
        "probe_notes": report.notes,
        "rating": report.rating.get(),
        "rating_reason": report.rating_reason,
        "backend": selected.describe(),
        "execution_provider": backend.execution_provider(),
        "passed_over": selected.fallbacks,
        "reference": format!("{} ({})", reference.name(), reference.execution_provider()),
    });
    if !args.json {
        println!("GPUs: {}", out["gpus"]);
        println!(
            "backend: {} (passed over: {})",
            out["backend"], out["passed_over"]
        );
    }

    // A proof-of-hardware challenge on the selected backend, as the dispatcher sends one.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let n = args.challenge_size.max(1);
    let seed: [u8; 32] = rand::random();
    let spec = ChallengeSpec::new(seed, n, n, n).context("challenge size")?;
    let challenges = Arc::new(Challenges::new(backend.clone()));
    let started = Instant::now();
    let committed = rt.block_on(challenges.commit(ChallengeRequest {
        id: 1,
        seed,
        n,
        k: n,
        m: n,
        device: on_gpu.then_some(0),
        deadline_ms: 600_000,
    }));
    let took = started.elapsed();
    let NodeAck::Committed { root, .. } = committed else {
        bail!("the challenge was not computed: {committed:?}");
    };
    let rows = vec![0, n / 2, n - 1];
    let NodeAck::Opened { rows: opened, .. } = rt.block_on(challenges.open(1, rows.clone())) else {
        bail!("the challenge's rows were not opened");
    };
    for row in &opened {
        let opening = Opening::from_wire(row).context("opened row")?;
        verify_opening(&spec, &root, &opening)
            .map_err(|e| anyhow::anyhow!("an opened row does not verify: {e}"))?;
    }
    let macs = u64::from(n).pow(3);
    out["challenge"] = json!({
        "size": n,
        "ms": took.as_secs_f64() * 1e3,
        "gmacs_per_s": macs as f64 / took.as_secs_f64() / 1e9,
        "rows_verified": opened.len(),
    });
    if !args.json {
        println!(
            "challenge {n}×{n}×{n}: {:.1} ms ({:.1} GMAC/s), {} opened rows verified",
            took.as_secs_f64() * 1e3,
            macs as f64 / took.as_secs_f64() / 1e9,
            opened.len()
        );
    }

    // Models: the selected backend against the CPU reference.
    let mut models: Vec<(String, Vec<u8>)> = vec![
        ("tiny_cnn".into(), TINY.to_vec()),
        ("ppocr_cls".into(), PADDLE.to_vec()),
    ];
    for path in &args.models {
        let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
        models.push((path.display().to_string(), bytes));
    }
    let tol = Tolerance::default();
    let mut results = Vec::new();
    let mut all_agree = true;
    for (name, bytes) in &models {
        let on = backend
            .load(bytes)
            .with_context(|| format!("{name}: load"))?;
        let cpu = reference
            .load(bytes)
            .with_context(|| format!("{name}: load on the reference"))?;
        let inputs = crat_dispatcher::canary_inputs(on.info(), 7, INPUT_BYTES_MAX)
            .with_context(|| format!("{name}: inputs"))?;
        let tensors: Vec<Tensor> = inputs.iter().map(|t| t.tensor.clone()).collect();
        let got = named(on.as_ref(), on.run(&tensors)?);
        let want = named(cpu.as_ref(), cpu.run(&tensors)?);
        let agreement = agree(&got, &want, &tol);
        all_agree &= agreement.is_ok();
        let t_on = median_time(args.runs, || Ok(on.run(&tensors).map(drop)?))?;
        let t_cpu = median_time(args.runs, || Ok(cpu.run(&tensors).map(drop)?))?;
        if !args.json {
            println!(
                "{name}: {} vs the reference; median {:.3} ms on {}, {:.3} ms on the reference ({:.2}×)",
                match &agreement {
                    Ok(()) => "agrees".to_owned(),
                    Err(d) => format!("DISAGREES ({d})"),
                },
                t_on.as_secs_f64() * 1e3,
                backend.execution_provider(),
                t_cpu.as_secs_f64() * 1e3,
                t_cpu.as_secs_f64() / t_on.as_secs_f64().max(1e-12),
            );
        }
        results.push(json!({
            "model": name,
            "agrees": agreement.is_ok(),
            "disagreement": agreement.err().map(|d| d.to_string()),
            "median_ms": t_on.as_secs_f64() * 1e3,
            "reference_median_ms": t_cpu.as_secs_f64() * 1e3,
        }));
    }
    out["models"] = json!(results);
    if args.json {
        println!("{out}");
    }
    if !all_agree {
        bail!("a model's answers on the selected backend disagree with the CPU reference");
    }
    if args.require_gpu && !on_gpu {
        bail!(
            "--require-gpu: the selected backend runs on {}, not a GPU (passed over: {})",
            backend.execution_provider(),
            selected.fallbacks.join("; ")
        );
    }
    Ok(())
}
