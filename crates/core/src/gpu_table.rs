//! GPU model → power rating, average daily mining income and FP32 throughput: one table, one
//! place. The throughput sizes the compute challenge that proves a card
//! ([`crate::policy::hardware`]); the rating and income are paid only for a proven card.
//!
//! The node's hardware probe, the dispatcher and the rewards code all read this table, so a
//! GPU is rated the same way everywhere. The table is data, `crates/core/data/gpus.csv`,
//! embedded at build time with `include_str!` and parsed without IO ([`GpuTable::builtin`]).
//! The header of that file says where the figures come from (rounded approximations in the
//! spirit of public mining-profitability calculators as of early 2026, not live quotes) and
//! how an operator updates them: edit the file and rebuild, or load a file of the same format
//! at run time with [`GpuTable::parse`] (the IO stays in the caller).
//!
//! Names are matched as NVML reports them, after [`normalize_name`]: case, vendor words
//! (`NVIDIA`, `GeForce`, `Tesla`, `Quadro`, `AMD`, `Radeon`), memory sizes (`80GB`) and form
//! factors (`PCIe`, `SXM4`, `HBM3`, `NVL`) do not matter. A GPU the table does not know is
//! rated from its memory (and compute capability, when known) by [`rate_unknown`], which also
//! says why.
//!
//! ```
//! use crat_core::gpu_table::{GpuTable, rate_unknown};
//! use crat_core::hardware::GpuInfo;
//!
//! let table = GpuTable::builtin();
//! let h100 = table.lookup("NVIDIA H100 80GB HBM3").expect("in the table");
//! assert_eq!(h100.rating.get(), 5);
//! assert_eq!(table.lookup("nvidia geforce rtx 3090 ti").map(|e| e.rating.get()), Some(5));
//! assert_eq!(table.lookup("NVIDIA GeForce GTX 1050").map(|e| e.rating.get()), Some(1));
//!
//! // Unknown cards are rated by memory, with a reason.
//! let (rating, why) = rate_unknown(24 << 30, Some((8, 9)));
//! assert_eq!(rating.get(), 5);
//! assert!(why.contains("24 GiB"));
//!
//! // The probe's view: table entry if known, estimate otherwise.
//! let gpu = GpuInfo {
//!     name: "Mystery Accelerator X".into(),
//!     memory_bytes: 8 << 30,
//!     driver: "560.35".into(),
//!     compute_capability: Some((8, 6)),
//! };
//! let assessed = table.assess(&gpu);
//! assert_eq!(assessed.matched, None);
//! assert_eq!(assessed.rating.get(), 3);
//! ```

use std::fmt::Write as _;
use std::sync::OnceLock;

use crate::hardware::{GpuInfo, PowerRating};
use crate::money::MicroUsd;

/// The embedded table, `crates/core/data/gpus.csv` (format described in its header).
pub const BUILTIN_GPU_TABLE_CSV: &str = include_str!("../data/gpus.csv");

/// Largest table text [`GpuTable::parse`] accepts.
pub const GPU_TABLE_BYTES_MAX: usize = 1 << 20;

/// Most rows [`GpuTable::parse`] accepts.
pub const GPU_TABLE_ROWS_MAX: usize = 4096;

/// Largest FP32 throughput a row may state: 100 PFLOPS, far above any card, so that challenge
/// sizes derived from it stay within `u64` arithmetic.
pub const GFLOPS_MAX: u64 = 100_000_000;

/// Why a GPU table could not be parsed. Lines are numbered from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GpuTableError {
    /// The text is longer than [`GPU_TABLE_BYTES_MAX`].
    #[error("GPU table is {bytes} bytes, more than {GPU_TABLE_BYTES_MAX}")]
    TooLarge {
        /// Length of the text.
        bytes: usize,
    },
    /// More than [`GPU_TABLE_ROWS_MAX`] rows.
    #[error("GPU table has more than {GPU_TABLE_ROWS_MAX} rows")]
    TooManyRows,
    /// A row does not have exactly four comma-separated columns.
    #[error(
        "line {line}: expected 4 columns (name,rating,mining_income_usd_micro_per_day,fp32_gflops), found {found}"
    )]
    Columns {
        /// Line number.
        line: usize,
        /// Columns found.
        found: usize,
    },
    /// The name is empty (or only vendor words) after normalisation.
    #[error("line {line}: empty GPU name")]
    Name {
        /// Line number.
        line: usize,
    },
    /// The rating is not an integer in 1..=5.
    #[error("line {line}: rating {text:?} is not an integer in 1..=5")]
    Rating {
        /// Line number.
        line: usize,
        /// The text found.
        text: String,
    },
    /// The income is not a non-negative integer that fits u64.
    #[error("line {line}: mining income {text:?} is not a non-negative integer (µUSD per day)")]
    Income {
        /// Line number.
        line: usize,
        /// The text found.
        text: String,
    },
    /// The throughput is not an integer in 1..=[`GFLOPS_MAX`].
    #[error("line {line}: FP32 throughput {text:?} is not an integer in 1..={GFLOPS_MAX} (GFLOPS)")]
    Throughput {
        /// Line number.
        line: usize,
        /// The text found.
        text: String,
    },
    /// Two rows normalise to the same name.
    #[error("line {line}: {key:?} already defined on line {first_line}")]
    Duplicate {
        /// Line number of the second row.
        line: usize,
        /// Line number of the first row.
        first_line: usize,
        /// The normalised name both rows share.
        key: String,
    },
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuEntry {
    /// The model name as written in the table, e.g. `NVIDIA GeForce RTX 3090 Ti`.
    pub name: String,
    /// The name after [`normalize_name`]; what lookups compare.
    pub key: String,
    /// Power rating 1..=5.
    pub rating: PowerRating,
    /// Average gross mining income of one such card for one day, in µUSD.
    pub mining_income_usd_micro_per_day: MicroUsd,
    /// Peak FP32 throughput in GFLOPS (public specification figure, 1..=[`GFLOPS_MAX`]).
    pub fp32_gflops: u64,
}

/// How the table rated one GPU ([`GpuTable::assess`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuAssessment {
    /// The rating used for ranking.
    pub rating: PowerRating,
    /// The daily mining income used for the guaranteed reward, in µUSD.
    pub mining_income_usd_micro_per_day: MicroUsd,
    /// The table row's name when the GPU is in the table; `None` when estimated.
    pub matched: Option<String>,
    /// In plain words, where the rating and income come from.
    pub reason: String,
}

/// GPU model → rating and mining income.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuTable {
    /// Sorted by `key`, keys unique.
    entries: Vec<GpuEntry>,
}

/// Words that say who made the card or which product line it belongs to, not which model.
const VENDOR_WORDS: &[&str] = &[
    "nvidia", "geforce", "tesla", "quadro", "amd", "radeon", "(tm)", "(r)", "lhr",
];

/// Words that describe a package or memory type of the same model.
const FORM_WORDS: &[&str] = &[
    "pcie", "sxm", "sxm2", "sxm3", "sxm4", "sxm5", "hbm", "hbm2", "hbm2e", "hbm3", "hbm3e", "nvl",
];

/// `80gb`, `16g`, `480gb`: a memory size.
fn is_memory_word(word: &str) -> bool {
    let digits = word.trim_end_matches("gb").trim_end_matches('g');
    digits.len() < word.len() && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// The name lookups compare: lowercase, `-`/`_` as spaces, vendor words, memory sizes and form
/// factors removed, single spaces.
///
/// ```
/// use crat_core::gpu_table::normalize_name;
/// assert_eq!(normalize_name("NVIDIA GeForce RTX 3090 Ti"), "rtx 3090 ti");
/// assert_eq!(normalize_name("NVIDIA A100-SXM4-80GB"), "a100");
/// assert_eq!(normalize_name("NVIDIA H100 80GB HBM3"), "h100");
/// assert_eq!(normalize_name("Tesla V100-PCIE-16GB"), "v100");
/// ```
pub fn normalize_name(name: &str) -> String {
    let lower = name.to_lowercase().replace(['-', '_'], " ");
    let mut out = String::with_capacity(lower.len());
    for word in lower.split_whitespace() {
        if VENDOR_WORDS.contains(&word) || FORM_WORDS.contains(&word) || is_memory_word(word) {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Memory thresholds for GPUs the table does not know, largest first: (at least this many MiB,
/// rating). Slightly below the nominal sizes, because drivers report a little less than the
/// marketing figure (a "24 GB" card reports 24,576 MiB or somewhat less).
const MEMORY_RATING_MIB: &[(u64, u8)] = &[(19_000, 5), (11_000, 4), (7_500, 3), (5_500, 2)];

/// Rates a GPU the table does not know from its memory and, when given, its CUDA compute
/// capability; returns the rating and the reason in plain words.
///
/// The rule, a conservative stand-in for the table:
/// - by memory: ≥ 19,000 MiB (24 GB class and data-centre cards) → 5; ≥ 11,000 MiB (12–16 GB)
///   → 4; ≥ 7,500 MiB (8–10 GB) → 3; ≥ 5,500 MiB (6 GB) → 2; less → 1;
/// - then capped by the architecture the compute capability reveals: below 6.0
///   (Maxwell and older) → at most 1; 6.x (Pascal) → at most 3; 7.x (Volta, Turing) → at
///   most 4; 8.0 and newer → no cap.
///
/// ```
/// use crat_core::gpu_table::rate_unknown;
/// assert_eq!(rate_unknown(80 << 30, None).0.get(), 5);
/// assert_eq!(rate_unknown(24 << 30, Some((6, 1))).0.get(), 3); // a Pascal card with 24 GB
/// assert_eq!(rate_unknown(2 << 30, None).0.get(), 1);
/// ```
pub fn rate_unknown(
    memory_bytes: u64,
    compute_capability: Option<(u8, u8)>,
) -> (PowerRating, String) {
    let mib = memory_bytes >> 20;
    let by_memory = MEMORY_RATING_MIB
        .iter()
        .find(|(min, _)| mib >= *min)
        .map_or(1, |&(_, rating)| rating);
    let mut reason = String::new();
    let _ = write!(
        reason,
        "not in the GPU table; {} of memory ({mib} MiB) rates {by_memory}",
        human_memory(memory_bytes)
    );
    let rating = match compute_capability {
        Some((major, minor)) => {
            let (cap, arch) = match major {
                0..=5 => (1, "Maxwell or older"),
                6 => (3, "Pascal"),
                7 => (4, "Volta/Turing"),
                _ => (5, "Ampere or newer"),
            };
            if cap < by_memory {
                let _ = write!(
                    reason,
                    "; compute capability {major}.{minor} ({arch}) caps it at {cap}"
                );
                cap
            } else {
                let _ = write!(
                    reason,
                    "; compute capability {major}.{minor} ({arch}) does not lower it"
                );
                by_memory
            }
        }
        None => {
            reason.push_str("; compute capability unknown");
            by_memory
        }
    };
    let _ = write!(reason, " → rating {rating}");
    // `rating` is 1..=5: every arm above yields a value in that range.
    let rating = PowerRating::new(rating).unwrap_or(PowerRating::MIN);
    (rating, reason)
}

/// `24 GiB`, or `1.5 GiB` below 10 GiB when not whole.
fn human_memory(bytes: u64) -> String {
    let gib_tenths = (u128::from(bytes) * 10 / (1u128 << 30)) as u64;
    if gib_tenths.is_multiple_of(10) || gib_tenths >= 100 {
        format!("{} GiB", gib_tenths / 10)
    } else {
        format!("{}.{} GiB", gib_tenths / 10, gib_tenths % 10)
    }
}

impl GpuTable {
    /// The table embedded from `crates/core/data/gpus.csv`, parsed once.
    pub fn builtin() -> &'static GpuTable {
        static TABLE: OnceLock<GpuTable> = OnceLock::new();
        TABLE.get_or_init(|| {
            GpuTable::parse(BUILTIN_GPU_TABLE_CSV)
                .expect("the embedded GPU table parses (checked by the gpu_table tests)")
        })
    }

    /// Parses a table in the format of `crates/core/data/gpus.csv`: `#` comments and blank
    /// lines are skipped; every other line is
    /// `name,rating,mining_income_usd_micro_per_day,fp32_gflops`.
    pub fn parse(csv: &str) -> Result<Self, GpuTableError> {
        if csv.len() > GPU_TABLE_BYTES_MAX {
            return Err(GpuTableError::TooLarge { bytes: csv.len() });
        }
        let mut rows: Vec<(GpuEntry, usize)> = Vec::new();
        for (i, raw) in csv.lines().enumerate() {
            let line = i + 1;
            let text = raw.trim();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            if rows.len() == GPU_TABLE_ROWS_MAX {
                return Err(GpuTableError::TooManyRows);
            }
            let columns: Vec<&str> = text.split(',').map(str::trim).collect();
            let [name, rating, income, gflops] = columns[..] else {
                return Err(GpuTableError::Columns {
                    line,
                    found: columns.len(),
                });
            };
            let key = normalize_name(name);
            if key.is_empty() {
                return Err(GpuTableError::Name { line });
            }
            let rating = rating
                .parse::<u8>()
                .ok()
                .and_then(PowerRating::new)
                .ok_or_else(|| GpuTableError::Rating {
                    line,
                    text: rating.to_owned(),
                })?;
            let income = income.parse::<u64>().map_err(|_| GpuTableError::Income {
                line,
                text: income.to_owned(),
            })?;
            let fp32_gflops = gflops
                .parse::<u64>()
                .ok()
                .filter(|g| (1..=GFLOPS_MAX).contains(g))
                .ok_or_else(|| GpuTableError::Throughput {
                    line,
                    text: gflops.to_owned(),
                })?;
            rows.push((
                GpuEntry {
                    name: name.to_owned(),
                    key,
                    rating,
                    mining_income_usd_micro_per_day: MicroUsd::new(income),
                    fp32_gflops,
                },
                line,
            ));
        }
        rows.sort_by(|a, b| a.0.key.cmp(&b.0.key).then(a.1.cmp(&b.1)));
        for pair in rows.windows(2) {
            if pair[0].0.key == pair[1].0.key {
                return Err(GpuTableError::Duplicate {
                    line: pair[1].1,
                    first_line: pair[0].1,
                    key: pair[1].0.key.clone(),
                });
            }
        }
        Ok(Self {
            entries: rows.into_iter().map(|(entry, _)| entry).collect(),
        })
    }

    /// All rows, sorted by normalised name.
    pub fn entries(&self) -> &[GpuEntry] {
        &self.entries
    }

    /// The row for a GPU name as NVML reports it (see [`normalize_name`]), if any.
    pub fn lookup(&self, name: &str) -> Option<&GpuEntry> {
        let key = normalize_name(name);
        self.entries
            .binary_search_by(|e| e.key.as_str().cmp(&key))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// The lowest daily mining income among rows with `rating` (zero if there are none): what
    /// an unknown GPU of that rating is assumed to earn, so an estimate never pays more than a
    /// known card of the same class.
    pub fn income_floor(&self, rating: PowerRating) -> MicroUsd {
        self.entries
            .iter()
            .filter(|e| e.rating == rating)
            .map(|e| e.mining_income_usd_micro_per_day)
            .min()
            .unwrap_or(MicroUsd::ZERO)
    }

    /// The lowest FP32 throughput among rows with `rating` (`None` if there are none): what an
    /// unknown GPU of that rating must prove.
    pub fn gflops_floor(&self, rating: PowerRating) -> Option<u64> {
        self.entries
            .iter()
            .filter(|e| e.rating == rating)
            .map(|e| e.fp32_gflops)
            .min()
    }

    /// Rates one GPU: its table row when the name is known, otherwise [`rate_unknown`] for
    /// the rating and [`GpuTable::income_floor`] of that rating for the income.
    pub fn assess(&self, gpu: &GpuInfo) -> GpuAssessment {
        if let Some(entry) = self.lookup(&gpu.name) {
            return GpuAssessment {
                rating: entry.rating,
                mining_income_usd_micro_per_day: entry.mining_income_usd_micro_per_day,
                matched: Some(entry.name.clone()),
                reason: format!(
                    "{:?} matches table row {:?}: rating {}, mining income {} µUSD/day",
                    gpu.name,
                    entry.name,
                    entry.rating,
                    entry.mining_income_usd_micro_per_day.get()
                ),
            };
        }
        let (rating, why) = rate_unknown(gpu.memory_bytes, gpu.compute_capability);
        let income = self.income_floor(rating);
        GpuAssessment {
            rating,
            mining_income_usd_micro_per_day: income,
            matched: None,
            reason: format!(
                "{:?} {why}; mining income {} µUSD/day is the lowest in the table for rating {rating}",
                gpu.name,
                income.get()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_table_parses_and_covers_the_scale() {
        let table = GpuTable::parse(BUILTIN_GPU_TABLE_CSV).unwrap();
        assert!(table.entries().len() > 50);
        for r in 1..=5 {
            let rating = PowerRating::new(r).unwrap();
            assert!(
                table.entries().iter().any(|e| e.rating == rating),
                "no rating {r}"
            );
            assert!(table.income_floor(rating).get() > 0);
            assert!(table.gflops_floor(rating).is_some_and(|g| g > 0));
        }
        assert_eq!(GpuTable::builtin(), &table);
    }

    #[test]
    fn nvml_names_resolve() {
        let t = GpuTable::builtin();
        let cases = [
            (
                "NVIDIA GeForce RTX 3090 Ti",
                "NVIDIA GeForce RTX 3090 Ti",
                5,
            ),
            ("NVIDIA GeForce RTX 3090", "NVIDIA GeForce RTX 3090", 5),
            ("NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 4090", 5),
            ("NVIDIA GeForce GTX 1050", "NVIDIA GeForce GTX 1050", 1),
            ("GeForce GTX 1050 Ti", "NVIDIA GeForce GTX 1050 Ti", 1),
            ("NVIDIA GeForce GTX 1060 6GB", "NVIDIA GeForce GTX 1060", 2),
            (
                "NVIDIA GeForce RTX 3060 Ti",
                "NVIDIA GeForce RTX 3060 Ti",
                3,
            ),
            ("NVIDIA GeForce RTX 3060", "NVIDIA GeForce RTX 3060", 3),
            ("NVIDIA H100 80GB HBM3", "NVIDIA H100", 5),
            ("NVIDIA H100 PCIe", "NVIDIA H100", 5),
            ("NVIDIA H100 NVL", "NVIDIA H100", 5),
            ("NVIDIA H200", "NVIDIA H200", 5),
            ("NVIDIA A100-SXM4-80GB", "NVIDIA A100", 5),
            ("NVIDIA A100-PCIE-40GB", "NVIDIA A100", 5),
            ("NVIDIA A100 80GB PCIe", "NVIDIA A100", 5),
            ("NVIDIA L4", "NVIDIA L4", 3),
            ("NVIDIA L40S", "NVIDIA L40S", 5),
            ("Tesla T4", "Tesla T4", 3),
            ("Tesla V100-SXM2-16GB", "Tesla V100", 4),
            ("Tesla V100-PCIE-32GB", "Tesla V100", 4),
            ("NVIDIA A10", "NVIDIA A10", 4),
            ("NVIDIA A10G", "NVIDIA A10G", 4),
            ("NVIDIA RTX A6000", "NVIDIA RTX A6000", 5),
            (
                "NVIDIA RTX 6000 Ada Generation",
                "NVIDIA RTX 6000 Ada Generation",
                5,
            ),
            ("  nvidia   GEFORCE rtx 3080 ", "NVIDIA GeForce RTX 3080", 4),
        ];
        for (nvml, row, rating) in cases {
            let e = t.lookup(nvml).unwrap_or_else(|| panic!("{nvml} not found"));
            assert_eq!(e.name, row, "{nvml}");
            assert_eq!(e.rating.get(), rating, "{nvml}");
        }
        assert!(t.lookup("NVIDIA A100-SXM4-40GB MIG 1g.5gb").is_none());
        assert!(t.lookup("NVIDIA GeForce RTX 4090 Laptop GPU").is_none());
        assert!(t.lookup("").is_none());
    }

    #[test]
    fn unknown_gpus_are_rated_by_memory_and_architecture() {
        let gib = 1u64 << 30;
        assert_eq!(rate_unknown(2 * gib, None).0.get(), 1);
        assert_eq!(rate_unknown(4 * gib, None).0.get(), 1);
        assert_eq!(rate_unknown(6 * gib, None).0.get(), 2);
        assert_eq!(rate_unknown(8 * gib, None).0.get(), 3);
        assert_eq!(rate_unknown(12 * gib, None).0.get(), 4);
        assert_eq!(rate_unknown(16 * gib, None).0.get(), 4);
        assert_eq!(rate_unknown(24 * gib, None).0.get(), 5);
        assert_eq!(rate_unknown(u64::MAX, None).0.get(), 5);
        assert_eq!(rate_unknown(0, None).0.get(), 1);
        let (r, why) = rate_unknown(24 * gib, Some((5, 2)));
        assert_eq!(r.get(), 1);
        assert!(why.contains("Maxwell"), "{why}");
        assert!(why.ends_with("rating 1"), "{why}");
        assert_eq!(rate_unknown(24 * gib, Some((7, 5))).0.get(), 4);
        let (r, why) = rate_unknown(80 * gib, Some((9, 0)));
        assert_eq!(r.get(), 5);
        assert!(
            why.contains("80 GiB") && why.contains("does not lower"),
            "{why}"
        );
        assert!(rate_unknown(gib * 3 / 2, None).1.contains("1.5 GiB"));
    }

    #[test]
    fn assess_uses_table_then_estimate() {
        let t = GpuTable::builtin();
        let known = t.assess(&GpuInfo {
            name: "NVIDIA H100 80GB HBM3".into(),
            memory_bytes: 80 << 30,
            driver: "550".into(),
            compute_capability: Some((9, 0)),
        });
        assert_eq!(known.matched.as_deref(), Some("NVIDIA H100"));
        assert_eq!(known.rating.get(), 5);
        let unknown = t.assess(&GpuInfo {
            name: "Future GPU".into(),
            memory_bytes: 12 << 30,
            driver: "999".into(),
            compute_capability: None,
        });
        assert_eq!(unknown.matched, None);
        assert_eq!(unknown.rating.get(), 4);
        assert_eq!(
            unknown.mining_income_usd_micro_per_day,
            t.income_floor(PowerRating::new(4).unwrap())
        );
        assert!(unknown.reason.contains("not in the GPU table"));
    }

    #[test]
    fn bad_tables_are_rejected_with_line_numbers() {
        assert_eq!(
            GpuTable::parse("# c\nA,1,1\n"),
            Err(GpuTableError::Columns { line: 2, found: 3 })
        );
        assert!(matches!(
            GpuTable::parse("A,6,1,1"),
            Err(GpuTableError::Rating { line: 1, .. })
        ));
        assert!(matches!(
            GpuTable::parse("A,1,-1,1"),
            Err(GpuTableError::Income { line: 1, .. })
        ));
        for bad in ["0", "-5", "1.5", "", "100000001"] {
            assert_eq!(
                GpuTable::parse(&format!("A,1,1,{bad}")),
                Err(GpuTableError::Throughput {
                    line: 1,
                    text: bad.into()
                }),
                "{bad:?}"
            );
        }
        assert_eq!(
            GpuTable::parse("NVIDIA,1,1,1"),
            Err(GpuTableError::Name { line: 1 })
        );
        assert_eq!(
            GpuTable::parse("NVIDIA H100,5,1,1\n\nH100 PCIe,5,2,1\n"),
            Err(GpuTableError::Duplicate {
                line: 3,
                first_line: 1,
                key: "h100".into()
            })
        );
        let big = "x".repeat(GPU_TABLE_BYTES_MAX + 1);
        assert!(matches!(
            GpuTable::parse(&big),
            Err(GpuTableError::TooLarge { .. })
        ));
    }
}
