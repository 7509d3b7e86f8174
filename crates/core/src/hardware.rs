//! What a node reports about its hardware: GPU/CPU description and its power rating.
//!
//! The probe that fills these in lives in `crat-node`; the table that maps a GPU model to a
//! rating and a mining income lives in [`crate::gpu_table`], so that the node's probe, the
//! dispatcher and the rewards code all read one table.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest hardware description string accepted on the wire (GPU or CPU model name, driver).
pub const HARDWARE_TEXT_BYTES_MAX: usize = 256;

/// A node's power rating, 1 (GTX 1050 class) ..= 5 (RTX 3090 Ti class and data-centre cards).
///
/// ```
/// use crat_core::hardware::PowerRating;
/// assert_eq!(PowerRating::new(5).map(PowerRating::get), Some(5));
/// assert!(PowerRating::new(0).is_none());
/// assert!(PowerRating::new(6).is_none());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct PowerRating(u8);

impl PowerRating {
    /// The lowest rating.
    pub const MIN: Self = Self(1);
    /// The highest rating.
    pub const MAX: Self = Self(5);

    /// A rating, or `None` outside 1..=5.
    pub const fn new(rating: u8) -> Option<Self> {
        if rating >= 1 && rating <= 5 {
            Some(Self(rating))
        } else {
            None
        }
    }

    /// The rating as a number in 1..=5.
    pub const fn get(self) -> u8 {
        self.0
    }
}

/// A rating outside 1..=5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("power rating {0} is outside 1..=5")]
pub struct RatingOutOfRange(pub u8);

impl TryFrom<u8> for PowerRating {
    type Error = RatingOutOfRange;
    fn try_from(v: u8) -> Result<Self, RatingOutOfRange> {
        Self::new(v).ok_or(RatingOutOfRange(v))
    }
}

impl From<PowerRating> for u8 {
    fn from(r: PowerRating) -> u8 {
        r.0
    }
}

impl fmt::Display for PowerRating {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One GPU as the probe saw it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct GpuInfo {
    /// Model name as the driver reports it, e.g. `NVIDIA GeForce RTX 3090 Ti`.
    pub name: String,
    /// Total device memory in bytes.
    pub memory_bytes: u64,
    /// Driver version string.
    pub driver: String,
    /// CUDA compute capability as (major, minor), when known.
    pub compute_capability: Option<(u8, u8)>,
}

/// The host CPU and memory.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct CpuInfo {
    /// CPU model name.
    pub model: String,
    /// Logical cores.
    pub cores: u32,
    /// Total host memory in bytes.
    pub memory_bytes: u64,
}

/// Most GPUs a hardware description lists (only the first
/// [`GPUS_MAX`](crate::policy::hardware::GPUS_MAX) are challenged and can be proven).
pub const GPUS_LISTED_MAX: usize = 4_096;

/// A node's hardware: its GPUs (possibly none) and its CPU.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct HardwareInfo {
    /// GPUs, in driver order (at most [`GPUS_LISTED_MAX`]).
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, GPUS_LISTED_MAX>")]
    pub gpus: Vec<GpuInfo>,
    /// The CPU.
    pub cpu: CpuInfo,
}
