//! The round parameters of `docs/economics.md`, with its defaults, and the `[start, end)`
//! interval type.

use crat_core::bps::Bps;
use crat_core::money::{MicroCrat, MicroUsd};
use serde::{Deserialize, Serialize};

use crate::RewardsError;

/// Most peak windows a parameter set may list.
pub const PEAK_WINDOWS_MAX: usize = 64;

/// A half-open interval of seconds `[start_s, end_s)`. In JSON it is a pair `[start, end]`.
///
/// Absolute Unix seconds for a node's `online` intervals, offsets from the round start for
/// [`Params::peak_windows`]. An interval with `end_s < start_s` is rejected when a round is
/// computed; `end_s == start_s` is empty and allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "[u64; 2]", into = "[u64; 2]")]
pub struct Interval {
    /// First second inside the interval.
    pub start_s: u64,
    /// First second after the interval.
    pub end_s: u64,
}

impl Interval {
    /// `[start_s, end_s)`.
    pub const fn new(start_s: u64, end_s: u64) -> Self {
        Self { start_s, end_s }
    }

    /// Its length in seconds (zero if reversed).
    pub const fn len_s(&self) -> u64 {
        self.end_s.saturating_sub(self.start_s)
    }
}

impl From<[u64; 2]> for Interval {
    fn from([start_s, end_s]: [u64; 2]) -> Self {
        Self { start_s, end_s }
    }
}

impl From<Interval> for [u64; 2] {
    fn from(i: Interval) -> Self {
        [i.start_s, i.end_s]
    }
}

/// The parameters of the round economics (`docs/economics.md`, "Parameters"). [`Default`] gives
/// the spec's defaults; in JSON any subset may be given and the rest take their defaults.
///
/// Ranges checked when a round is computed: `round_s ≥ 1`; `*_bps ≤ 10000`;
/// `min_bonus_usd_micro ≥ 1` (so that a zero pool pays no rank, as the spec states);
/// `streak_min ≥ 1` (streak CRAT counts `streak_end − 1` steps); peak windows not reversed,
/// at most [`PEAK_WINDOWS_MAX`]. Peak windows may overlap (their union counts once) and may
/// reach past the round (the part outside is never online).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Round length in seconds (default 86,400). A round's `length_s` must equal it.
    pub round_s: u64,
    /// Peak-hour windows as offsets within the round (default `[[57600, 79200]]`, 16:00–22:00).
    pub peak_windows: Vec<Interval>,
    /// Share of the round's B2B income that goes to the bonus pool, in basis points (8,000).
    pub bonus_share_bps: u64,
    /// Smallest bonus the last paid rank may receive (10,000 µUSD).
    pub min_bonus_usd_micro: MicroUsd,
    /// Downtime allowed while still committed for the whole round (600 s).
    pub commit_downtime_s_max: u64,
    /// Uptime share of the round needed to be eligible for a bonus, in basis points (5,000).
    pub bonus_uptime_bps_min: u64,
    /// Streak length from which streak CRAT is paid (2).
    pub streak_min: u64,
    /// CRAT per streak step (1,000,000 µCRAT).
    pub streak_unit_crat_micro: MicroCrat,
    /// Streak steps counted at most (30).
    pub streak_cap: u64,
    /// CRAT per full hour online inside peak windows (500,000 µCRAT).
    pub peak_unit_crat_micro_per_hour: MicroCrat,
    /// CRAT per correct validation of another node's work (100,000 µCRAT).
    pub validation_unit_crat_micro: MicroCrat,
    /// Share of the CRAT balance removed per failed validation of the node's own work, in
    /// basis points (5,000).
    pub slash_bps: u64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            round_s: 86_400,
            peak_windows: vec![Interval::new(57_600, 79_200)],
            bonus_share_bps: 8_000,
            min_bonus_usd_micro: MicroUsd::new(10_000),
            commit_downtime_s_max: 600,
            bonus_uptime_bps_min: 5_000,
            streak_min: 2,
            streak_unit_crat_micro: MicroCrat::new(1_000_000),
            streak_cap: 30,
            peak_unit_crat_micro_per_hour: MicroCrat::new(500_000),
            validation_unit_crat_micro: MicroCrat::new(100_000),
            slash_bps: 5_000,
        }
    }
}

/// Basis points in a whole.
pub(crate) const BPS: u64 = Bps::FULL.get() as u64;

impl Params {
    /// Checks the ranges listed on [`Params`]; errors name the field (`params.slash_bps`).
    pub fn validate(&self) -> Result<(), RewardsError> {
        if self.round_s == 0 {
            return Err(RewardsError::out_of_range(
                "params.round_s",
                "must be at least 1",
            ));
        }
        for (name, bps) in [
            ("params.bonus_share_bps", self.bonus_share_bps),
            ("params.bonus_uptime_bps_min", self.bonus_uptime_bps_min),
            ("params.slash_bps", self.slash_bps),
        ] {
            if bps > BPS {
                return Err(RewardsError::out_of_range(
                    name,
                    format!("{bps} basis points is more than {BPS}"),
                ));
            }
        }
        if self.min_bonus_usd_micro == MicroUsd::ZERO {
            return Err(RewardsError::out_of_range(
                "params.min_bonus_usd_micro",
                "must be at least 1",
            ));
        }
        if self.streak_min == 0 {
            return Err(RewardsError::out_of_range(
                "params.streak_min",
                "must be at least 1",
            ));
        }
        if self.peak_windows.len() > PEAK_WINDOWS_MAX {
            return Err(RewardsError::out_of_range(
                "params.peak_windows",
                format!(
                    "{} windows, more than {PEAK_WINDOWS_MAX}",
                    self.peak_windows.len()
                ),
            ));
        }
        for (i, w) in self.peak_windows.iter().enumerate() {
            if w.end_s < w.start_s {
                return Err(RewardsError::out_of_range(
                    format!("params.peak_windows[{i}]"),
                    format!("interval end {} before start {}", w.end_s, w.start_s),
                ));
            }
        }
        Ok(())
    }
}
