//! `crat sim run` and `crat sim plot`, run as the built binary.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn crat(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_crat"))
        .args(args)
        .output()
        .unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("crat-sim-cli-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const SMALL: &str = "name = \"small\"\nrounds = 3\n[population]\nnodes = 30\n";

#[test]
fn run_writes_results_and_exported_rounds_recompute() {
    let dir = tmp("run");
    let scenario = dir.join("small.toml");
    fs::write(&scenario, SMALL).unwrap();
    let out = dir.join("out");
    let export = dir.join("rounds");
    let o = crat(&[
        "sim",
        "run",
        s(&scenario),
        "--seed",
        "7",
        "--out",
        s(&out),
        "--export-rounds",
        s(&export),
        "--plot",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = out.join("run-0000");
    for f in [
        "run.json",
        "rounds.csv",
        "nodes.csv",
        "summary.json",
        "usd.svg",
    ] {
        assert!(run.join(f).exists(), "{f}");
    }
    let meta: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(meta["seed"], 7);
    assert_eq!(meta["scenario"]["population"]["nodes"], 30);
    let nodes = fs::read_to_string(run.join("nodes.csv")).unwrap();
    assert_eq!(nodes.lines().count(), 31);
    // Each exported round recomputes, with `crat rewards compute`, to the simulator's result.
    for r in 0..3 {
        let input = export.join(format!("round-{r:06}.json"));
        let o = crat(&["rewards", "compute", "-i", s(&input)]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let want = fs::read(export.join(format!("round-{r:06}.result.json"))).unwrap();
        assert_eq!(o.stdout, want, "round {r}");
    }
    // Same seed, same bytes; plot re-draws from the CSV.
    let again = dir.join("again");
    assert!(
        crat(&[
            "sim",
            "run",
            s(&scenario),
            "--seed",
            "7",
            "--out",
            s(&again)
        ])
        .status
        .success()
    );
    for f in ["rounds.csv", "nodes.csv", "summary.json"] {
        assert_eq!(
            fs::read(run.join(f)).unwrap(),
            fs::read(again.join("run-0000").join(f)).unwrap(),
            "{f}"
        );
    }
    assert!(
        crat(&["sim", "plot", s(&again.join("run-0000"))])
            .status
            .success()
    );
    assert!(again.join("run-0000/bonus_by_rating.svg").exists());
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn sweep_times_seeds_and_field_errors() {
    let dir = tmp("sweep");
    let scenario = dir.join("sweep.toml");
    fs::write(
        &scenario,
        format!("{SMALL}[sweep]\n\"demand.per_request_clients\" = [0, 20]\n"),
    )
    .unwrap();
    let out = dir.join("out");
    let o = crat(&["sim", "run", s(&scenario), "--seeds", "2", "--out", s(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let runs = fs::read_to_string(out.join("runs.csv")).unwrap();
    assert_eq!(runs.lines().count(), 5, "{runs}");
    assert!(runs.contains("demand.per_request_clients=20"));
    assert!(out.join("run-0003/summary.json").exists());

    let bad = dir.join("bad.toml");
    fs::write(&bad, "[churn]\nmean_on_s = 0\n").unwrap();
    let o = crat(&["sim", "run", s(&bad), "--out", s(&dir.join("bad"))]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("churn.mean_on_s"));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn example_scenarios_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios");
    let mut n = 0;
    for e in fs::read_dir(root).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            crat_sim::Scenario::expand(&fs::read_to_string(&p).unwrap())
                .unwrap_or_else(|err| panic!("{}: {err}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 5);
}
