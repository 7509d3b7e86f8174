//! The interchange JSON (`docs/economics.md`, "Interchange"): parsing with errors that name the
//! field, and writing.
//!
//! Parsing takes the derived serde path first (fast, `deny_unknown_fields`). Only when that
//! fails is the document walked field by field to say *where* it fails (`nodes[3].rating:
//! power rating 7 is outside 1..=5`), because serde's own messages give a line and column
//! but not the field.

use std::fmt::Display;

use crat_core::hardware::PowerRating;
use crat_core::id::NodeId;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::{RewardsError, RoundInputs, RoundOutcome};

/// Longest interchange document accepted (1 GiB; a round of a million nodes is about 400 MB).
pub const INTERCHANGE_BYTES_MAX: usize = 1 << 30;

impl RoundInputs {
    /// Parses the interchange document `{"params": {…}, "round": {…}, "nodes": [{…}]}`.
    ///
    /// Rejects unknown and missing fields and values of the wrong type or range for their
    /// type (negative numbers, floats, a rating outside 1..=5, a malformed id), naming the
    /// field. Range rules that involve the round (reversed intervals, `length_s = 0`, bps
    /// above 10,000, duplicate ids) are checked by [`crate::compute`].
    pub fn from_json(text: &str) -> Result<Self, RewardsError> {
        if text.len() > INTERCHANGE_BYTES_MAX {
            return Err(RewardsError::TooLarge { bytes: text.len() });
        }
        serde_json::from_str(text).map_err(|e| diagnose(text, e))
    }

    /// The interchange document, pretty-printed (all parameters written out).
    pub fn to_json(&self) -> String {
        // Plain structs of integers, strings and lists always serialize.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

impl RoundOutcome {
    /// Parses a result document written by [`RoundOutcome::to_json`].
    pub fn from_json(text: &str) -> Result<Self, RewardsError> {
        if text.len() > INTERCHANGE_BYTES_MAX {
            return Err(RewardsError::TooLarge { bytes: text.len() });
        }
        serde_json::from_str(text).map_err(|e| json_error(DOCUMENT, e))
    }
}

/// The path used for errors about the document as a whole.
const DOCUMENT: &str = "(document)";

fn json_error(field: impl Into<String>, message: impl Display) -> RewardsError {
    RewardsError::Json {
        field: field.into(),
        message: message.to_string(),
    }
}

type Check = fn(&Value, &str) -> Result<(), RewardsError>;

/// The fields of [`crate::Params`], all optional.
pub(crate) const PARAMS_FIELDS: &[(&str, Check)] = &[
    ("round_s", scalar::<u64>),
    ("peak_windows", intervals),
    ("bonus_share_bps", scalar::<u64>),
    ("min_bonus_usd_micro", scalar::<u64>),
    ("commit_downtime_s_max", scalar::<u64>),
    ("bonus_uptime_bps_min", scalar::<u64>),
    ("streak_min", scalar::<u64>),
    ("streak_unit_crat_micro", scalar::<u64>),
    ("streak_cap", scalar::<u64>),
    ("peak_unit_crat_micro_per_hour", scalar::<u64>),
    ("validation_unit_crat_micro", scalar::<u64>),
    ("slash_bps", scalar::<u64>),
];

/// The fields of [`crate::Round`], all required.
pub(crate) const ROUND_FIELDS: &[(&str, Check)] = &[
    ("index", scalar::<u64>),
    ("start_s", scalar::<u64>),
    ("length_s", scalar::<u64>),
    ("income_usd_micro", scalar::<u64>),
    ("carry_in_usd_micro", scalar::<u64>),
];

/// The fields of [`crate::NodeInput`], all required.
pub(crate) const NODE_FIELDS: &[(&str, Check)] = &[
    ("id", scalar::<NodeId>),
    ("rating", scalar::<PowerRating>),
    ("registered_at_s", scalar::<u64>),
    ("mining_income_usd_micro_per_day", scalar::<u64>),
    ("crat_start_micro", scalar::<u64>),
    ("streak_start", scalar::<u64>),
    ("uptime_total_s_before", scalar::<u64>),
    ("online", intervals),
    ("validations_ok", scalar::<u64>),
    ("validations_failed", scalar::<u64>),
    ("crat_external_micro", scalar::<u64>),
];

fn scalar<T: for<'de> Deserialize<'de>>(v: &Value, path: &str) -> Result<(), RewardsError> {
    T::deserialize(v).map(drop).map_err(|e| json_error(path, e))
}

fn intervals(v: &Value, path: &str) -> Result<(), RewardsError> {
    let list = v
        .as_array()
        .ok_or_else(|| json_error(path, "expected a list of [start, end] pairs"))?;
    for (j, item) in list.iter().enumerate() {
        scalar::<[u64; 2]>(item, &format!("{path}[{j}]"))?;
    }
    Ok(())
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn object<'v>(v: &'v Value, path: &str) -> Result<&'v Map<String, Value>, RewardsError> {
    v.as_object().ok_or_else(|| {
        json_error(
            if path.is_empty() { DOCUMENT } else { path },
            "expected an object",
        )
    })
}

/// Checks an object against a field list: unknown fields first, then each field in list
/// order (missing when `required`, ill-typed otherwise).
fn check_object(
    v: &Value,
    path: &str,
    fields: &[(&str, Check)],
    required: &[&str],
) -> Result<(), RewardsError> {
    let obj = object(v, path)?;
    for key in obj.keys() {
        if !fields.iter().any(|(name, _)| name == key) {
            let names: Vec<&str> = fields.iter().map(|(name, _)| *name).collect();
            return Err(json_error(
                join(path, key),
                format!("unknown field, expected one of {}", names.join(", ")),
            ));
        }
    }
    for (name, check) in fields {
        match obj.get(*name) {
            Some(value) => check(value, &join(path, name))?,
            None if required.contains(name) => {
                return Err(json_error(join(path, name), "missing field"));
            }
            None => {}
        }
    }
    Ok(())
}

fn all(fields: &[(&'static str, Check)]) -> Vec<&'static str> {
    fields.iter().map(|(name, _)| *name).collect()
}

fn check_document(doc: &Value) -> Result<(), RewardsError> {
    let top: &[(&str, Check)] = &[
        ("params", |v, p| check_object(v, p, PARAMS_FIELDS, &[])),
        ("round", |v, p| {
            check_object(v, p, ROUND_FIELDS, &all(ROUND_FIELDS))
        }),
        ("nodes", |v, p| {
            let list = v
                .as_array()
                .ok_or_else(|| json_error(p, "expected a list of nodes"))?;
            let required = all(NODE_FIELDS);
            for (i, node) in list.iter().enumerate() {
                check_object(node, &format!("{p}[{i}]"), NODE_FIELDS, &required)?;
            }
            Ok(())
        }),
    ];
    check_object(doc, "", top, &["round", "nodes"])
}

/// Finds the field at fault once serde has rejected `text`.
fn diagnose(text: &str, original: serde_json::Error) -> RewardsError {
    let doc: Value = match serde_json::from_str(text) {
        Ok(doc) => doc,
        Err(syntax) => return json_error(DOCUMENT, syntax),
    };
    match check_document(&doc) {
        Err(e) => e,
        Ok(()) => json_error(DOCUMENT, original),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::{Interval, NodeInput, Params, Round};

    fn names(fields: &[(&str, Check)]) -> BTreeSet<String> {
        fields.iter().map(|(n, _)| (*n).to_owned()).collect()
    }

    fn keys_of<T: serde::Serialize>(v: &T) -> BTreeSet<String> {
        serde_json::to_value(v)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    #[test]
    fn field_lists_match_the_types() {
        assert_eq!(names(PARAMS_FIELDS), keys_of(&Params::default()));
        let round = Round {
            index: 0,
            start_s: 0,
            length_s: 1,
            income_usd_micro: Default::default(),
            carry_in_usd_micro: Default::default(),
        };
        assert_eq!(names(ROUND_FIELDS), keys_of(&round));
        let node = NodeInput {
            id: NodeId::from_bytes([0; 32]),
            rating: PowerRating::MIN,
            registered_at_s: 0,
            mining_income_usd_micro_per_day: Default::default(),
            crat_start_micro: Default::default(),
            streak_start: 0,
            uptime_total_s_before: 0,
            online: vec![Interval::new(0, 1)],
            validations_ok: 0,
            validations_failed: 0,
            crat_external_micro: Default::default(),
        };
        assert_eq!(names(NODE_FIELDS), keys_of(&node));
    }
}
