//! The interchange JSON: round trips, defaults, and rejections that name the field.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::{DAY, node, round};
use crat_rewards::{Params, RewardsError, RoundInputs, RoundOutcome, compute};

const ID1: &str = "0101010101010101010101010101010101010101010101010101010101010101";

/// A one-node document with `params` and a node field replaced as given.
fn doc(params: &str, node_extra: &str) -> String {
    format!(
        r#"{{ {params}
  "round": {{"index": 3, "start_s": 86400, "length_s": 86400, "income_usd_micro": 1000000,
             "carry_in_usd_micro": 5}},
  "nodes": [{{"id": "{ID1}", "rating": 4, "registered_at_s": 10,
    "mining_income_usd_micro_per_day": 320000, "crat_start_micro": 2000000, "streak_start": 3,
    "uptime_total_s_before": 1000, "online": [[86400, 172800], [90000, 100000]],
    "validations_ok": 2, "validations_failed": 0, "crat_external_micro": 0 {node_extra}}}]
}}"#
    )
}

fn field_of(e: RewardsError) -> String {
    match e {
        RewardsError::Json { field, .. } | RewardsError::OutOfRange { field, .. } => field,
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn inputs_and_outcomes_round_trip() {
    let mut inputs = round(
        0,
        123_456,
        7,
        vec![node(1, 3, 10, &[(0, DAY)]), node(2, 5, 0, &[(5, 9)])],
    );
    inputs.params.slash_bps = 1_234;
    let text = inputs.to_json();
    assert_eq!(RoundInputs::from_json(&text).unwrap(), inputs);
    let out = compute(&inputs).unwrap();
    let json = out.to_json();
    assert_eq!(RoundOutcome::from_json(&json).unwrap(), out);
    // Also through plain serde_json (what other tools would use).
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(serde_json::from_value::<RoundOutcome>(value).unwrap(), out);
}

#[test]
fn output_fields_are_named_and_ordered_as_the_spec() {
    let inputs = RoundInputs::from_json(&doc("", "")).unwrap();
    let json = compute(&inputs).unwrap().to_json();
    let node_fields = [
        "id",
        "uptime_s",
        "peak_uptime_s",
        "committed",
        "eligible",
        "rank",
        "guaranteed_usd_micro",
        "bonus_usd_micro",
        "crat_issued_micro",
        "crat_slashed_micro",
        "crat_end_micro",
        "streak_end",
        "uptime_total_s",
    ];
    let aggregate_fields = [
        "pool_usd_micro",
        "paid_ranks",
        "bonus_paid_usd_micro",
        "guaranteed_paid_usd_micro",
        "carry_out_usd_micro",
    ];
    let mut at = json.find("\"nodes\"").unwrap();
    for f in node_fields.iter().chain(&aggregate_fields) {
        let pos = json[at..]
            .find(&format!("\"{f}\":"))
            .unwrap_or_else(|| panic!("{f}"))
            + at;
        at = pos;
    }
    assert!(json.contains(&format!("\"id\":\"{ID1}\"")));
    assert!(json.contains("\"rank\":1"));
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value.as_object().unwrap().len(), 2);
    assert_eq!(
        value["nodes"][0].as_object().unwrap().len(),
        node_fields.len()
    );
    assert_eq!(
        value["aggregates"].as_object().unwrap().len(),
        aggregate_fields.len()
    );
    // A node that is not eligible has "rank": null.
    let mut inputs = inputs;
    inputs.nodes[0].online.clear();
    assert!(
        compute(&inputs)
            .unwrap()
            .to_json()
            .contains("\"rank\":null")
    );
}

#[test]
fn params_may_be_any_subset() {
    let none = RoundInputs::from_json(&doc("", "")).unwrap();
    assert_eq!(none.params, Params::default());
    let some = RoundInputs::from_json(&doc(
        r#""params": {"slash_bps": 2500, "peak_windows": [[0, 3600], [7200, 10800]]},"#,
        "",
    ))
    .unwrap();
    assert_eq!(some.params.slash_bps, 2_500);
    assert_eq!(some.params.peak_windows.len(), 2);
    assert_eq!(some.params.round_s, 86_400);
    assert_eq!(some.params.streak_cap, 30);
    let empty = RoundInputs::from_json(&doc(r#""params": {},"#, "")).unwrap();
    assert_eq!(empty.params, Params::default());
}

#[test]
fn bad_documents_are_rejected_naming_the_field() {
    let cases = [
        (doc(r#""colour": 1,"#, ""), "colour", "unknown field"),
        (
            doc(r#""params": {"slash": 1},"#, ""),
            "params.slash",
            "unknown field",
        ),
        (
            doc("", r#", "colour": "red""#),
            "nodes[0].colour",
            "unknown field",
        ),
        (
            doc("", "").replace(r#""rating": 4"#, r#""rating": 6"#),
            "nodes[0].rating",
            "outside 1..=5",
        ),
        (
            doc("", "").replace(r#""rating": 4"#, r#""rating": 0"#),
            "nodes[0].rating",
            "outside 1..=5",
        ),
        (
            doc("", "").replace("[90000, 100000]", "[-5, 100000]"),
            "nodes[0].online[1]",
            "-5",
        ),
        (
            doc("", "").replace("[90000, 100000]", "[90000]"),
            "nodes[0].online[1]",
            "length 1",
        ),
        (
            doc("", "").replace(r#""registered_at_s": 10"#, r#""registered_at_s": -10"#),
            "nodes[0].registered_at_s",
            "-10",
        ),
        (
            doc("", "").replace(r#""streak_start": 3"#, r#""streak_start": 3.5"#),
            "nodes[0].streak_start",
            "floating point",
        ),
        (
            doc("", "").replace(r#""streak_start": 3,"#, ""),
            "nodes[0].streak_start",
            "missing field",
        ),
        (doc("", "").replace(ID1, "zz"), "nodes[0].id", "hex"),
        (
            doc("", "").replace(
                r#""income_usd_micro": 1000000"#,
                r#""income_usd_micro": 18446744073709551616"#,
            ),
            "round.income_usd_micro",
            "",
        ),
        (
            doc(r#""params": {"round_s": "day"},"#, ""),
            "params.round_s",
            "expected u64",
        ),
        (
            doc("", "").replace("\"nodes\"", "\"node\""),
            "node",
            "unknown field",
        ),
        ("[1, 2]".to_owned(), "(document)", "expected an object"),
        ("{\"round\": ".to_owned(), "(document)", "EOF"),
    ];
    for (text, field, message) in cases {
        let err = RoundInputs::from_json(&text).unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains(message), "{shown:?} lacks {message:?}");
        assert_eq!(field_of(err), field, "{shown}");
    }
}

#[test]
fn out_of_range_rounds_are_rejected_naming_the_field() {
    let cases = [
        (
            doc("", "").replace("[90000, 100000]", "[100000, 90000]"),
            "nodes[0].online[1]",
        ),
        (
            doc("", "").replace(r#""length_s": 86400"#, r#""length_s": 0"#),
            "round.length_s",
        ),
        (
            doc(r#""params": {"slash_bps": 10001},"#, ""),
            "params.slash_bps",
        ),
        (
            doc(r#""params": {"bonus_uptime_bps_min": 99999},"#, ""),
            "params.bonus_uptime_bps_min",
        ),
        (
            doc(r#""params": {"peak_windows": [[5, 4]]},"#, ""),
            "params.peak_windows[0]",
        ),
    ];
    for (text, field) in cases {
        let err = RoundInputs::from_json(&text)
            .and_then(|i| compute(&i))
            .unwrap_err();
        assert_eq!(field_of(err), field);
    }
}
