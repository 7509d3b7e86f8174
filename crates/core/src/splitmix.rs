//! SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators",
//! OOPSLA 2014; the generator of Java's `SplittableRandom`): the one small, deterministic,
//! dependency-free generator the workspace uses where a seed must always give the same
//! numbers (the simulator's random streams, canary inputs, randomized tests).
//!
//! The state advances by an odd increment (the "gamma") and each output is the state passed
//! through a 64-bit finalizer. [`mix64`] is the first output from a seed, a strong hash of
//! one 64-bit value. Not for anything secret: the outputs reveal the state.
//!
//! ```
//! use crat_core::splitmix::{SplitMix64, mix64};
//!
//! let mut rng = SplitMix64::new(0);
//! assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
//! assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
//! // mix64 is the first output of a generator seeded with its argument.
//! assert_eq!(mix64(0), 0xE220_A839_7B1D_CDAF);
//! ```

/// The default increment: the odd integer closest to 2^64 / φ.
pub const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// A SplitMix64 generator: a Weyl sequence (the state advancing by an odd `gamma`) passed
/// through a 64-bit finalizer. It passes BigCrush and a draw costs about a nanosecond;
/// starting one costs nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
    gamma: u64,
}

impl SplitMix64 {
    /// The generator seeded with `seed`, advancing by [`GOLDEN_GAMMA`] (the standard
    /// SplitMix64 sequence).
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed,
            gamma: GOLDEN_GAMMA,
        }
    }

    /// The generator at `state` advancing by `gamma | 1` (an increment must be odd; one with
    /// well-mixed bits, such as a [`mix64`] output, gives an independent stream).
    pub fn with_gamma(state: u64, gamma: u64) -> Self {
        Self {
            state,
            gamma: gamma | 1,
        }
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(self.gamma);
        finalize(self.state)
    }
}

/// The SplitMix64 hash of `x`: the first output of [`SplitMix64::new`]`(x)`. Neighbouring
/// inputs give unrelated outputs, so it derives independent seeds from counters.
#[inline]
pub fn mix64(x: u64) -> u64 {
    finalize(x.wrapping_add(GOLDEN_GAMMA))
}

/// SplitMix64's output function (a variant of MurmurHash3's 64-bit finalizer).
#[inline]
fn finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference sequences of SplitMix64 (Vigna's `splitmix64.c`) for seeds 0 and
    /// 1234567.
    #[test]
    fn known_outputs() {
        let mut rng = SplitMix64::new(0);
        let got: Vec<u64> = (0..4).map(|_| rng.next_u64()).collect();
        assert_eq!(
            got,
            [
                0xE220_A839_7B1D_CDAF,
                0x6E78_9E6A_A1B9_65F4,
                0x06C4_5D18_8009_454F,
                0xF88B_B8A8_724C_81EC
            ]
        );
        let mut rng = SplitMix64::new(1_234_567);
        let got: Vec<u64> = (0..5).map(|_| rng.next_u64()).collect();
        assert_eq!(
            got,
            [
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423,
                4_593_380_528_125_082_431,
                16_408_922_859_458_223_821
            ]
        );
        assert_eq!(mix64(1_234_567), 6_457_827_717_110_365_317);
    }

    #[test]
    fn gamma_is_odd_and_sets_the_step() {
        let mut a = SplitMix64::with_gamma(5, 8);
        let mut b = SplitMix64::with_gamma(5, 9);
        assert_eq!(a, b);
        assert_eq!(a.next_u64(), b.next_u64());
        // With the golden gamma it is the standard sequence.
        let mut c = SplitMix64::with_gamma(7, GOLDEN_GAMMA);
        let mut d = SplitMix64::new(7);
        assert_eq!((c.next_u64(), c.next_u64()), (d.next_u64(), d.next_u64()));
    }
}
