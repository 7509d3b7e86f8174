//! The inference backend of `crat node` and `crat demo`: ONNX Runtime found or installed by
//! [`crat_node::ort_setup`] (printed as it goes), selected by crat-backend; tract when there
//! is no working ONNX Runtime, with the reason printed.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Context;
use crat_backend::select::{SelectConfig, Selected, select_backend};
use crat_node::ort_setup::{self, CudaCapability, Event, SetupConfig};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;

/// The `[node.onnxruntime]` table.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OnnxRuntimeSection {
    /// The ONNX Runtime library (`libonnxruntime.so.1.*`) to use; looked at before
    /// `ORT_DYLIB_PATH`, a Python package and the data directory.
    pub(crate) path: Option<PathBuf>,
    /// Install ONNX Runtime into the data directory when none is found (default true).
    pub(crate) install: Option<bool>,
    /// The package index's JSON simple API to install from (default https://pypi.org/simple/).
    pub(crate) index_url: Option<String>,
}

/// Where the demo keeps the ONNX Runtime it installs, across runs:
/// `${CRAT_CACHE_DIR:-$HOME/.cache/cryptorat}` (where scripts/install-onnxruntime.sh keeps its
/// copy too).
pub(crate) fn cache_dir() -> Option<PathBuf> {
    std::env::var_os("CRAT_CACHE_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/cryptorat")))
}

/// Prints [`Event`]s: a progress bar per download on a terminal (a line every tenth of it
/// otherwise, for logs), a line for the rest.
struct Printer {
    bar: Option<ProgressBar>,
    terminal: bool,
    /// Tenths of the current download printed (off a terminal).
    tenths: u64,
}

impl Printer {
    fn event(&mut self, event: Event) {
        match &event {
            Event::Download {
                done_bytes,
                total_bytes,
                ..
            } if !self.terminal => {
                let tenths = match total_bytes {
                    Some(total) if *total > 0 => done_bytes.saturating_mul(10) / total,
                    _ => done_bytes >> 27,
                };
                if *done_bytes == 0 || tenths > self.tenths {
                    self.tenths = tenths;
                    println!("onnxruntime: {event}");
                }
            }
            Event::Download {
                file,
                done_bytes,
                total_bytes,
            } => {
                let bar = self.bar.get_or_insert_with(|| {
                    println!("onnxruntime: downloading {file}");
                    let bar = ProgressBar::new(total_bytes.unwrap_or(0));
                    if let Ok(style) = ProgressStyle::with_template(
                        "  {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    ) {
                        bar.set_style(style);
                    }
                    bar
                });
                bar.set_position(*done_bytes);
            }
            _ => {
                if let Some(bar) = self.bar.take() {
                    bar.finish();
                }
                println!("onnxruntime: {event}");
            }
        }
    }
}

/// Finds or installs ONNX Runtime for a node whose data directory is `data_dir`, then selects
/// the backend. `cuda`: try the CUDA execution provider (and install the CUDA build when NVML
/// sees a GPU that can run it).
pub(crate) async fn select(
    data_dir: &Path,
    settings: &OnnxRuntimeSection,
    cuda: bool,
    gpu_detected: Option<bool>,
) -> anyhow::Result<Selected> {
    let mut config = SetupConfig::new(data_dir.to_path_buf());
    config.configured_path = settings.path.clone();
    config.install = settings.install.unwrap_or(true);
    if let Some(url) = &settings.index_url {
        config.index_url = url.clone();
    }
    config.cuda_compiled &= cuda;
    let gpu = if config.cuda_compiled && gpu_detected != Some(false) {
        CudaCapability::detect().0
    } else {
        CudaCapability::NONE
    };
    let mut printer = Printer {
        bar: None,
        terminal: std::io::stdout().is_terminal(),
        tenths: 0,
    };
    let setup = ort_setup::ensure(&config, &gpu, &mut |e| printer.event(e)).await;
    if let Some(bar) = printer.bar.take() {
        bar.abandon();
    }
    let (select, setup_error) = match setup {
        Ok(found) => {
            println!(
                "onnxruntime: {} ({}, {} build)",
                found.dylib.display(),
                found.source,
                found.flavor.name()
            );
            (
                SelectConfig {
                    ort_dylib_path: Some(found.dylib),
                    cuda_dylib_dir: found.cuda_dylib_dir,
                    cuda,
                    gpu_detected,
                    ..SelectConfig::default()
                },
                None,
            )
        }
        Err(e) => (
            SelectConfig {
                ort: false,
                cuda,
                gpu_detected,
                ..SelectConfig::default()
            },
            Some(e),
        ),
    };
    let selected = select_backend(&select).context("no inference backend")?;
    if selected.backend.name() != "ort" {
        let reason = match setup_error {
            Some(e) => e.to_string(),
            None => selected
                .fallbacks
                .iter()
                .find_map(|r| r.strip_prefix("ort: "))
                .unwrap_or("it did not load")
                .to_owned(),
        };
        println!(
            "no ONNX Runtime: {reason}; serving with {}",
            selected.describe()
        );
    } else if gpu_detected == Some(true) && selected.backend.execution_provider() != "cuda" {
        for r in selected
            .fallbacks
            .iter()
            .filter(|r| r.starts_with("cuda: "))
        {
            println!("passed over {r}");
        }
    }
    Ok(selected)
}
