//! Hardware probe: what GPUs and CPU a node has, how they are doing, and its power rating.
//!
//! [`SystemProbe`] asks NVML (through `nvml-wrapper`, which loads the driver's
//! `libnvidia-ml` at run time). Without a driver `Nvml::init()` fails and the probe falls back
//! to a CPU description read from `/proc`, saying so in [`HardwareReport::notes`]. The rating
//! and mining income come from the one GPU table in [`crat_core::gpu_table`], which the
//! rewards use too. [`FakeProbe`] reports whatever hardware a test wants.
//!
//! ```
//! use crat_core::hardware::{CpuInfo, GpuInfo};
//! use crat_node::probe::{FakeProbe, HardwareProbe};
//! let probe = FakeProbe::new(
//!     vec![GpuInfo {
//!         name: "NVIDIA GeForce RTX 3090 Ti".into(),
//!         memory_bytes: 24 << 30,
//!         driver: "550.54".into(),
//!         compute_capability: Some((8, 6)),
//!     }],
//!     CpuInfo { model: "test".into(), cores: 8, memory_bytes: 32 << 30 },
//! );
//! let report = probe.probe();
//! assert_eq!(report.rating.get(), 5);
//! ```

use crat_core::gpu_table::GpuTable;
use crat_core::hardware::{CpuInfo, GpuInfo, HardwareInfo, PowerRating};
use crat_core::money::MicroUsd;

/// Live readings of one GPU (absent values: the driver did not say).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuStats {
    /// Compute utilisation in basis points (0..=10,000).
    pub utilisation_bps: u16,
    /// Core temperature in °C.
    pub temperature_c: Option<u32>,
    /// Power draw in milliwatts.
    pub power_mw: Option<u32>,
    /// Device memory in use, in bytes.
    pub memory_used_bytes: Option<u64>,
}

/// Everything the probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HardwareReport {
    /// What the node registers with.
    pub hardware: HardwareInfo,
    /// Live readings, one per GPU in `hardware.gpus` order.
    pub gpu_stats: Vec<GpuStats>,
    /// The node's power rating: that of its best GPU; 1 for a CPU-only node.
    pub rating: PowerRating,
    /// Average daily mining income of all its GPUs together (what a committed round pays as
    /// guaranteed USD); 0 for a CPU-only node.
    pub mining_income_usd_micro_per_day: MicroUsd,
    /// In plain words, how the rating and income were decided.
    pub rating_reason: String,
    /// Anything the probe could not read, and why.
    pub notes: Vec<String>,
}

/// Something that can describe the hardware.
pub trait HardwareProbe: Send + Sync {
    /// Probes now.
    fn probe(&self) -> HardwareReport;
}

/// Rates a node from its GPUs with the built-in GPU table.
pub fn rate(gpus: &[GpuInfo]) -> (PowerRating, MicroUsd, String) {
    if gpus.is_empty() {
        return (
            PowerRating::MIN,
            MicroUsd::ZERO,
            "no GPU: a CPU-only node has the lowest rating and no mining income".into(),
        );
    }
    let table = GpuTable::builtin();
    let assessed: Vec<_> = gpus.iter().map(|g| table.assess(g)).collect();
    let rating = assessed
        .iter()
        .map(|a| a.rating)
        .max()
        .unwrap_or(PowerRating::MIN);
    let income = MicroUsd::checked_sum(assessed.iter().map(|a| a.mining_income_usd_micro_per_day))
        .unwrap_or(MicroUsd::MAX);
    let reasons: Vec<&str> = assessed.iter().map(|a| a.reason.as_str()).collect();
    let reason = format!(
        "rating {rating} is the best of {} GPU(s); income is their sum. {}",
        gpus.len(),
        reasons.join("; ")
    );
    (rating, income, reason)
}

fn report(
    gpus: Vec<GpuInfo>,
    gpu_stats: Vec<GpuStats>,
    cpu: CpuInfo,
    notes: Vec<String>,
) -> HardwareReport {
    let (rating, income, rating_reason) = rate(&gpus);
    HardwareReport {
        hardware: HardwareInfo { gpus, cpu },
        gpu_stats,
        rating,
        mining_income_usd_micro_per_day: income,
        rating_reason,
        notes,
    }
}

/// Probes the real machine: NVML for GPUs, `/proc` for the CPU.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemProbe;

impl HardwareProbe for SystemProbe {
    fn probe(&self) -> HardwareReport {
        let mut notes = Vec::new();
        let (gpus, stats) = match probe_nvml() {
            Ok(found) => found,
            Err(e) => {
                notes.push(format!(
                    "no GPU through NVML ({e}); describing the CPU only"
                ));
                (Vec::new(), Vec::new())
            }
        };
        report(gpus, stats, cpu_info(&mut notes), notes)
    }
}

fn probe_nvml() -> Result<(Vec<GpuInfo>, Vec<GpuStats>), nvml_wrapper::error::NvmlError> {
    let nvml = nvml_wrapper::Nvml::init()?;
    let driver = nvml.sys_driver_version().unwrap_or_default();
    let mut gpus = Vec::new();
    let mut stats = Vec::new();
    for i in 0..nvml.device_count()? {
        let d = nvml.device_by_index(i)?;
        let (sample, memory_bytes) = read_gpu(&d);
        gpus.push(GpuInfo {
            name: d.name()?,
            memory_bytes: memory_bytes.unwrap_or(0),
            driver: driver.clone(),
            compute_capability: d
                .cuda_compute_capability()
                .ok()
                .and_then(|c| Some((u8::try_from(c.major).ok()?, u8::try_from(c.minor).ok()?))),
        });
        stats.push(sample);
    }
    Ok((gpus, stats))
}

/// One GPU's live readings, and its memory in all (what the probe reports and the metrics
/// sampler records).
pub(crate) fn read_gpu(d: &nvml_wrapper::Device<'_>) -> (GpuStats, Option<u64>) {
    use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
    let memory = d.memory_info().ok();
    let stats = GpuStats {
        utilisation_bps: d
            .utilization_rates()
            .map_or(0, |u| (u.gpu.min(100) * 100) as u16),
        temperature_c: d.temperature(TemperatureSensor::Gpu).ok(),
        power_mw: d.power_usage().ok(),
        memory_used_bytes: memory.as_ref().map(|m| m.used),
    };
    (stats, memory.map(|m| m.total))
}

fn cpu_info(notes: &mut Vec<String>) -> CpuInfo {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| {
            notes.push("CPU model unknown (no /proc/cpuinfo)".into());
            "unknown CPU".into()
        });
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or_else(|| {
            notes.push("host memory unknown (no /proc/meminfo)".into());
            0
        });
    CpuInfo {
        model: truncate(model),
        cores,
        memory_bytes,
    }
}

fn truncate(mut s: String) -> String {
    let max = crat_core::hardware::HARDWARE_TEXT_BYTES_MAX;
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// A probe that reports fixed hardware, for tests and simulations.
#[derive(Clone, Debug)]
pub struct FakeProbe {
    gpus: Vec<GpuInfo>,
    cpu: CpuInfo,
}

impl FakeProbe {
    /// Reports `gpus` and `cpu`.
    pub fn new(gpus: Vec<GpuInfo>, cpu: CpuInfo) -> Self {
        Self { gpus, cpu }
    }
}

impl HardwareProbe for FakeProbe {
    fn probe(&self) -> HardwareReport {
        let stats = vec![GpuStats::default(); self.gpus.len()];
        report(self.gpus.clone(), stats, self.cpu.clone(), Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(name: &str, gib: u64) -> GpuInfo {
        GpuInfo {
            name: name.into(),
            memory_bytes: gib << 30,
            driver: "1".into(),
            compute_capability: None,
        }
    }

    fn cpu() -> CpuInfo {
        CpuInfo {
            model: "cpu".into(),
            cores: 2,
            memory_bytes: 1 << 30,
        }
    }

    #[test]
    fn table_gpus_and_unknown_gpus_are_rated_with_reasons() {
        let known = FakeProbe::new(vec![gpu("NVIDIA GeForce GTX 1050", 2)], cpu()).probe();
        assert_eq!(known.rating.get(), 1);
        assert!(known.mining_income_usd_micro_per_day > MicroUsd::ZERO);
        let unknown = FakeProbe::new(vec![gpu("Imaginary GPU 9000", 48)], cpu()).probe();
        assert!(unknown.rating.get() >= 1);
        assert!(unknown.rating_reason.contains("Imaginary GPU 9000"));
    }

    #[test]
    fn best_gpu_rates_and_incomes_add_up() {
        let one = FakeProbe::new(vec![gpu("NVIDIA GeForce GTX 1050", 2)], cpu()).probe();
        let two = FakeProbe::new(
            vec![
                gpu("NVIDIA GeForce GTX 1050", 2),
                gpu("NVIDIA GeForce RTX 3090 Ti", 24),
            ],
            cpu(),
        )
        .probe();
        assert_eq!(two.rating.get(), 5);
        assert!(two.mining_income_usd_micro_per_day > one.mining_income_usd_micro_per_day);
    }

    #[test]
    fn cpu_only_node() {
        let r = FakeProbe::new(vec![], cpu()).probe();
        assert_eq!(r.rating, PowerRating::MIN);
        assert_eq!(r.mining_income_usd_micro_per_day, MicroUsd::ZERO);
        assert!(r.rating_reason.contains("CPU-only"));
    }

    #[test]
    fn system_probe_without_a_driver_falls_back_cleanly() {
        // On a machine with an NVIDIA driver this reports its GPUs; on one without, it must
        // still describe the CPU and say why there is no GPU.
        let r = SystemProbe.probe();
        assert!(r.hardware.cpu.cores >= 1);
        if r.hardware.gpus.is_empty() {
            assert!(r.notes.iter().any(|n| n.contains("NVML")), "{:?}", r.notes);
        }
    }
}
