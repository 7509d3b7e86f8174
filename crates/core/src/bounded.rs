//! Lists decoded with a bound on their length, checked element by element, so that a
//! decoder never holds more than `N` elements whatever length the bytes claim.
//!
//! postcard spends one byte on a small integer, an empty string or an empty list, which the
//! decoded value holds in 8 to 80: without a bound, a 64 MiB frame of `u64` dimensions or of
//! empty tensors decodes to 512 MiB or more before any check sees it. Every list of the wire
//! messages is decoded through [`vec`] with a bound at or above the limit its message
//! documents (the message's own checks still answer with a typed error between the two).
//!
//! ```
//! use serde::Deserialize;
//!
//! #[derive(Deserialize, Debug)]
//! struct Shape {
//!     #[serde(deserialize_with = "crat_core::bounded::vec::<_, _, 3>")]
//!     dims: Vec<u64>,
//! }
//! let ok: Shape = postcard::from_bytes(&[3, 1, 2, 3]).unwrap();
//! assert_eq!(ok.dims, [1, 2, 3]);
//! // Four elements, or a claim of 2³² of them, fail at the fourth.
//! assert!(postcard::from_bytes::<Shape>(&[4, 1, 2, 3, 4]).is_err());
//! assert!(postcard::from_bytes::<Shape>(&[0x80, 0x80, 0x80, 0x80, 0x10, 1, 2, 3, 4]).is_err());
//! ```

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};

struct Bounded<T, const N: usize>(PhantomData<T>);

impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for Bounded<T, N> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a list of at most {N} elements")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let claimed = seq.size_hint().unwrap_or(0);
        if claimed > N {
            return Err(A::Error::invalid_length(claimed, &self));
        }
        let mut out = Vec::with_capacity(claimed);
        while let Some(element) = seq.next_element()? {
            if out.len() == N {
                return Err(A::Error::invalid_length(N + 1, &self));
            }
            out.push(element);
        }
        Ok(out)
    }
}

/// Decodes a list of at most `N` elements (`#[serde(deserialize_with =
/// "crat_core::bounded::vec::<_, _, N>")]`).
pub fn vec<'de, D, T, const N: usize>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    deserializer.deserialize_seq(Bounded::<T, N>(PhantomData))
}
