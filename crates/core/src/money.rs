//! Money as integers: micro-dollars, credits and micro-CRAT.
//!
//! Each unit is its own newtype so a credit can never be added to a dollar by accident.
//! Arithmetic is checked (`None` on overflow or underflow) or saturating, never wrapping, and
//! there is no float anywhere. Serde writes each as a plain integer (JSON number, postcard
//! varint), which is what the interchange of `docs/economics.md` uses.
//!
//! ```
//! use crat_core::money::{Credits, MicroUsd};
//! let price = MicroUsd::new(100); // one credit costs 100 µUSD by default
//! let spent = Credits::new(1_234);
//! assert_eq!(spent.to_usd(price), Some(MicroUsd::new(123_400)));
//! assert_eq!(MicroUsd::new(123_400).to_string(), "$0.123400");
//! assert_eq!(Credits::new(1).checked_sub(Credits::new(2)), None);
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! amount {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(u64);

        impl $name {
            /// Zero.
            pub const ZERO: Self = Self(0);
            /// The largest amount.
            pub const MAX: Self = Self(u64::MAX);

            /// Wraps an integer amount in base units.
            pub const fn new(units: u64) -> Self {
                Self(units)
            }

            /// The amount in base units.
            pub const fn get(self) -> u64 {
                self.0
            }

            /// `self + rhs`, or `None` on overflow.
            pub const fn checked_add(self, rhs: Self) -> Option<Self> {
                match self.0.checked_add(rhs.0) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// `self - rhs`, or `None` if `rhs > self`.
            pub const fn checked_sub(self, rhs: Self) -> Option<Self> {
                match self.0.checked_sub(rhs.0) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// `self × n`, or `None` on overflow.
            pub const fn checked_mul(self, n: u64) -> Option<Self> {
                match self.0.checked_mul(n) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// `self + rhs`, capped at [`Self::MAX`].
            pub const fn saturating_add(self, rhs: Self) -> Self {
                Self(self.0.saturating_add(rhs.0))
            }

            /// `self - rhs`, floored at zero.
            pub const fn saturating_sub(self, rhs: Self) -> Self {
                Self(self.0.saturating_sub(rhs.0))
            }

            /// The sum of `amounts`, or `None` on overflow.
            pub fn checked_sum<I: IntoIterator<Item = Self>>(amounts: I) -> Option<Self> {
                amounts
                    .into_iter()
                    .try_fold(Self::ZERO, |acc, a| acc.checked_add(a))
            }
        }
    };
}

amount!(
    /// US dollars in micro-dollars (1 USD = 1,000,000 µUSD).
    MicroUsd
);
amount!(
    /// Credits, what clients spend on requests and instances. One credit's price in µUSD is a
    /// pricing parameter ([`crate::pricing::PricingParams::credit_price_usd_micro`]).
    Credits
);
amount!(
    /// CRAT reputation tokens in micro-CRAT (1 CRAT = 1,000,000 µCRAT).
    MicroCrat
);

impl Credits {
    /// The value of these credits in µUSD at `price_per_credit`, or `None` on overflow.
    pub const fn to_usd(self, price_per_credit: MicroUsd) -> Option<MicroUsd> {
        match self.0.checked_mul(price_per_credit.0) {
            Some(v) => Some(MicroUsd(v)),
            None => None,
        }
    }
}

fn write_micro(f: &mut fmt::Formatter<'_>, prefix: &str, units: u64, suffix: &str) -> fmt::Result {
    write!(
        f,
        "{prefix}{}.{:06}{suffix}",
        units / 1_000_000,
        units % 1_000_000
    )
}

impl fmt::Display for MicroUsd {
    /// Dollars with six decimals: `$12.000345`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_micro(f, "$", self.0, "")
    }
}

impl fmt::Display for MicroCrat {
    /// CRAT with six decimals: `1.500000 CRAT`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_micro(f, "", self.0, " CRAT")
    }
}

impl fmt::Display for Credits {
    /// Whole credits: `1234 credits`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} credits", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_arithmetic() {
        assert_eq!(MicroUsd::MAX.checked_add(MicroUsd::new(1)), None);
        assert_eq!(MicroUsd::new(5).checked_sub(MicroUsd::new(6)), None);
        assert_eq!(
            MicroUsd::new(5).saturating_sub(MicroUsd::new(6)),
            MicroUsd::ZERO
        );
        assert_eq!(MicroCrat::new(3).checked_mul(4), Some(MicroCrat::new(12)));
        assert_eq!(MicroCrat::new(u64::MAX).checked_mul(2), None);
        assert_eq!(
            Credits::checked_sum([Credits::new(1), Credits::new(2)]),
            Some(Credits::new(3))
        );
        assert_eq!(Credits::checked_sum([Credits::MAX, Credits::new(1)]), None);
        assert_eq!(Credits::new(u64::MAX).to_usd(MicroUsd::new(2)), None);
    }

    #[test]
    fn display() {
        assert_eq!(MicroUsd::new(12_000_345).to_string(), "$12.000345");
        assert_eq!(MicroCrat::new(1_500_000).to_string(), "1.500000 CRAT");
        assert_eq!(Credits::new(7).to_string(), "7 credits");
    }

    #[test]
    fn serde_is_a_plain_integer() {
        assert_eq!(serde_json::to_string(&MicroUsd::new(42)).unwrap(), "42");
        assert_eq!(
            serde_json::from_str::<MicroCrat>("7").unwrap(),
            MicroCrat::new(7)
        );
    }
}
