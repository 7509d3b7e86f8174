//! The crate's error type for computing rounds: every variant names the input field at fault.

use crat_core::id::NodeId;

use crate::{INTERCHANGE_BYTES_MAX, ROUND_NODES_MAX};

/// Why a round could not be computed. Field paths are written as in the interchange JSON,
/// e.g. `nodes[3].online[1]` or `params.slash_bps`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RewardsError {
    /// The interchange JSON is malformed, has an unknown or missing field, or a value of the
    /// wrong type (a negative number, a float, a rating outside 1..=5). `field` is the path
    /// of the offending value, or `(document)` for a syntax error.
    #[error("{field}: {message}")]
    Json {
        /// Path of the offending value.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A value is outside the range the rules allow (a reversed interval, `length_s = 0`, a
    /// share above 10,000 basis points, ...).
    #[error("{field}: {reason}")]
    OutOfRange {
        /// Path of the offending value.
        field: String,
        /// What range it must be in.
        reason: String,
    },
    /// Two nodes of one round share an id.
    #[error("nodes[{index}].id: {id} already appears at nodes[{first}]")]
    DuplicateNode {
        /// Index of the later occurrence.
        index: usize,
        /// Index of the first occurrence.
        first: usize,
        /// The shared id.
        id: NodeId,
    },
    /// A result does not fit in 64 bits (only reachable with absurd inputs, e.g. a CRAT
    /// balance near `u64::MAX` plus issuance).
    #[error("{field}: {quantity} does not fit in u64")]
    Overflow {
        /// Path of the input whose result overflows.
        field: String,
        /// Which result overflows.
        quantity: &'static str,
    },
    /// More than [`ROUND_NODES_MAX`] nodes in one round.
    #[error("nodes: {count} nodes, more than {ROUND_NODES_MAX}")]
    TooManyNodes {
        /// Number of nodes given.
        count: usize,
    },
    /// The interchange text is longer than [`INTERCHANGE_BYTES_MAX`].
    #[error("input is {bytes} bytes, more than {INTERCHANGE_BYTES_MAX}")]
    TooLarge {
        /// Length of the text.
        bytes: usize,
    },
    /// The node asked about is not in the round ([`crate::explain`]) or not registered with
    /// the driver ([`crate::RoundDriver`]).
    #[error("node {id} is not in this round")]
    UnknownNode {
        /// The id asked about.
        id: NodeId,
    },
    /// The driver was given two activity records for one node in one round.
    #[error("activity for node {id} given twice")]
    DuplicateActivity {
        /// The node.
        id: NodeId,
    },
}

impl RewardsError {
    pub(crate) fn out_of_range(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::OutOfRange {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn overflow(field: impl Into<String>, quantity: &'static str) -> Self {
        Self::Overflow {
            field: field.into(),
            quantity,
        }
    }
}
