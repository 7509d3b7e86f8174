//! `crat rewards compute` and `crat rewards explain`, run as the built binary.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crat_rewards::{RoundInputs, RoundOutcome, compute};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn crat(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crat"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        // A command that fails on its arguments exits without reading: a broken pipe is fine.
        let _ = pipe.write_all(bytes);
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[test]
fn compute_from_file_and_stdin_matches_the_library() {
    let path = data("round.json");
    let round = std::fs::read(&path).unwrap();
    let want = compute(&RoundInputs::from_json(&text(&round)).unwrap())
        .unwrap()
        .to_json();

    let from_file = crat(
        &["rewards", "compute", "--input", path.to_str().unwrap()],
        None,
    );
    assert!(from_file.status.success(), "{}", text(&from_file.stderr));
    assert_eq!(text(&from_file.stdout), want);

    let from_stdin = crat(&["rewards", "compute"], Some(&round));
    assert!(from_stdin.status.success(), "{}", text(&from_stdin.stderr));
    assert_eq!(from_stdin.stdout, from_file.stdout);

    // The documented numbers of the sample round.
    let out = RoundOutcome::from_json(&want).unwrap();
    assert_eq!(out.aggregates.pool_usd_micro.get(), 21_500_000);
    assert_eq!(out.aggregates.paid_ranks, 2);
    let bonuses: Vec<u64> = out.nodes.iter().map(|n| n.bonus_usd_micro.get()).collect();
    assert_eq!(bonuses, [14_333_334, 7_166_666, 0, 0]);
}

#[test]
fn compute_writes_the_output_file() {
    let dir = std::env::temp_dir().join(format!("crat-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let result = dir.join("result.json");
    let out = crat(
        &[
            "rewards",
            "compute",
            "-i",
            data("round.json").to_str().unwrap(),
            "-o",
            result.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    let written = std::fs::read_to_string(&result).unwrap();
    let value: serde_json::Value = serde_json::from_str(&written).unwrap();
    assert_eq!(value["nodes"][0]["rank"], 1);
    assert_eq!(value["aggregates"]["carry_out_usd_micro"], 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn explain_traces_a_node() {
    let out = crat(
        &[
            "rewards",
            "explain",
            "--node",
            &"d".repeat(64),
            "--input",
            data("round.json").to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    for needle in [
        "guaranteed = mining_income_usd_micro_per_day 900000 x length_s 86400 / 86400 = 900000 µUSD",
        "validations_failed 1 = 0? no; so eligible: no",
        "not eligible: no rank, bonus = 0 µUSD",
        "slash: 1 failed validation(s), each keeps balance x (10000 - slash_bps 5000) / 10000: 30000000 -> 15000000",
        "crat_end = after slashing 15000000 + issued 8000000 + crat_external_micro 0 = 23000000 µCRAT",
    ] {
        assert!(s.contains(needle), "missing {needle:?} in\n{s}");
    }
}

#[test]
fn errors_name_the_field_and_fail() {
    let round = std::fs::read_to_string(data("round.json")).unwrap();
    let bad = round.replacen("\"rating\": 3", "\"rating\": 9", 1);
    let out = crat(&["rewards", "compute"], Some(bad.as_bytes()));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("nodes[1].rating"), "{err}");

    let reversed = round.replacen("[1767270000, 1767312000]", "[1767312000, 1767270000]", 1);
    let out = crat(&["rewards", "compute"], Some(reversed.as_bytes()));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("nodes[2].online[0]"),
        "{}",
        text(&out.stderr)
    );

    let out = crat(
        &["rewards", "explain", "--node", &"e".repeat(64)],
        Some(round.as_bytes()),
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("not in this round"));

    let out = crat(&["rewards", "explain", "--node", "xyz"], Some(b"{}"));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--node"));
}
