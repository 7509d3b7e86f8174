//! Basis points: shares and rates in hundredths of a percent, 10,000 = 100 %.
//!
//! [`Bps`] is a `u16` on the wire and in every text format (serde transparent), so a field
//! that was a bare `*_bps: u16` keeps its encoding. Decoding does not check the range: a
//! value is a share only where the rule using it says so, and [`Bps::share`] is the checked
//! way to build one.
//!
//! ```
//! use crat_core::bps::Bps;
//!
//! let fee = Bps::share(250)?; // 2.5 %
//! assert_eq!(fee.apply(1_000_001), 25_000); // floored
//! assert_eq!(Bps::FULL.apply(u64::MAX), u64::MAX);
//! assert!(Bps::share(10_001).is_err());
//! assert_eq!(Bps::ratio(1, 3), Bps(3_333));
//! # Ok::<(), crat_core::bps::BpsError>(())
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

/// Basis points: `Bps(100)` is 1 %, [`Bps::FULL`] is 100 %.
#[derive(
    Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Bps(pub u16);

/// A share above 100 % ([`Bps::share`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} basis points is more than 10000 (100 %)")]
pub struct BpsError(pub u16);

impl Bps {
    /// 0 %.
    pub const ZERO: Self = Self(0);
    /// 100 %: 10,000 basis points.
    pub const FULL: Self = Self(10_000);

    /// A share: `bps` when it is at most [`Bps::FULL`].
    pub const fn share(bps: u16) -> Result<Self, BpsError> {
        if bps > Self::FULL.0 {
            Err(BpsError(bps))
        } else {
            Ok(Self(bps))
        }
    }

    /// The number of basis points.
    pub const fn get(self) -> u16 {
        self.0
    }

    /// This many basis points of `amount`: ⌊amount × bps / 10,000⌋, computed in 128 bits (so
    /// it cannot overflow for a share; above 100 % it saturates at `u64::MAX`).
    pub fn apply(self, amount: u64) -> u64 {
        let scaled = u128::from(amount) * u128::from(self.0) / u128::from(Self::FULL.0);
        u64::try_from(scaled).unwrap_or(u64::MAX)
    }

    /// `part / whole` in basis points, floored and capped at [`Bps::FULL`]; 0 when `whole`
    /// is 0.
    pub fn ratio(part: u64, whole: u64) -> Self {
        let bps = (u128::from(part) * u128::from(Self::FULL.0))
            .checked_div(u128::from(whole))
            .unwrap_or(0)
            .min(u128::from(Self::FULL.0));
        // At most 10,000: fits.
        Self(bps as u16)
    }
}

impl From<Bps> for u16 {
    fn from(b: Bps) -> u16 {
        b.0
    }
}

impl fmt::Display for Bps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bps", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_is_checked() {
        assert_eq!(Bps::share(0), Ok(Bps::ZERO));
        assert_eq!(Bps::share(10_000), Ok(Bps::FULL));
        assert_eq!(Bps::share(10_001), Err(BpsError(10_001)));
        assert_eq!(Bps::share(u16::MAX), Err(BpsError(u16::MAX)));
    }

    #[test]
    fn apply_floors_without_overflow() {
        assert_eq!(Bps(200).apply(12_345), 246);
        assert_eq!(Bps(1).apply(9_999), 0);
        assert_eq!(Bps::ZERO.apply(u64::MAX), 0);
        assert_eq!(Bps::FULL.apply(u64::MAX), u64::MAX);
        assert_eq!(Bps(5_000).apply(u64::MAX), u64::MAX / 2);
        assert_eq!(Bps(u16::MAX).apply(u64::MAX), u64::MAX);
        assert_eq!(Bps(20_000).apply(7), 14);
    }

    #[test]
    fn ratio_floors_and_caps() {
        assert_eq!(Bps::ratio(0, 0), Bps::ZERO);
        assert_eq!(Bps::ratio(5, 0), Bps::ZERO);
        assert_eq!(Bps::ratio(1, 3), Bps(3_333));
        assert_eq!(Bps::ratio(3, 3), Bps::FULL);
        assert_eq!(Bps::ratio(7, 3), Bps::FULL);
        assert_eq!(Bps::ratio(u64::MAX, u64::MAX), Bps::FULL);
    }

    #[test]
    fn encodes_as_a_bare_u16() {
        for v in [0u16, 1, 127, 128, 10_000, u16::MAX] {
            assert_eq!(
                postcard::to_stdvec(&Bps(v)).unwrap(),
                postcard::to_stdvec(&v).unwrap()
            );
            assert_eq!(serde_json::to_string(&Bps(v)).unwrap(), v.to_string());
            let back: Bps = postcard::from_bytes(&postcard::to_stdvec(&v).unwrap()).unwrap();
            assert_eq!(back, Bps(v));
        }
    }
}
