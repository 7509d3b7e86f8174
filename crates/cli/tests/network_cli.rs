//! The network verbs run as the built binary: the operator verbs on a ledger file, and
//! `crat demo` (the README's run command) end to end.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::process::{Command, Output};

fn crat(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_crat"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = crat(args);
    assert!(
        out.status.success(),
        "crat {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn operator_verbs_keep_accounts_keys_and_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert_eq!(
        ok(&[
            "credits",
            "grant",
            "--data-dir",
            d,
            "--account",
            "acme",
            "5000"
        ])
        .trim(),
        "balance 5000 credits"
    );
    ok(&[
        "credits",
        "grant",
        "--data-dir",
        d,
        "--account",
        "acme",
        "250",
    ]);
    assert_eq!(
        ok(&["credits", "balance", "--data-dir", d, "--account", "acme"]).trim(),
        "balance 5250 credits"
    );
    let key = ok(&["keys", "create", "--data-dir", d, "--account", "acme"]);
    let key = key.trim();
    assert!(key.starts_with("sk_"), "{key}");
    let status = ok(&["keys", "status", "--data-dir", d, key]);
    assert!(status.contains("account acme status Active"), "{status}");
    ok(&["keys", "revoke", "--data-dir", d, key]);
    let status = ok(&["keys", "status", "--data-dir", d, key]);
    assert!(status.contains("status Revoked"), "{status}");
    // No round closed yet: just the header.
    assert_eq!(ok(&["rounds", "list", "--data-dir", d]).lines().count(), 1);
    // Bad input: a clear error, non-zero exit.
    let out = crat(&[
        "credits",
        "grant",
        "--data-dir",
        d,
        "--account",
        "Not Valid",
        "1",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("account name"));
    let out = crat(&["rounds", "show", "--data-dir", d, "0"]);
    assert!(!out.status.success());
}

#[test]
fn demo_runs_end_to_end() {
    let out = ok(&["demo", "--tasks", "60", "--round-s", "5"]);
    assert!(
        out.contains("results: 60/60 tasks returned outputs, 0 failed; 60 equal"),
        "{out}"
    );
    assert!(out.contains("(killed)"), "{out}");
    assert!(out.contains("no task charged twice"), "{out}");
    // Every task answered is charged: reported by its node, or (the killed node's last ones)
    // from the client's acknowledgements once their window ended.
    assert!(
        out.contains("charged: 60 tasks") || out.contains("for 60 tasks, exactly"),
        "{out}"
    );
    assert!(out.contains("round 0 closed"), "{out}");
    assert!(out.contains("payouts: $"), "{out}");
}
