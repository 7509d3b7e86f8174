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

/// A running `crat` verb, killed when dropped.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str]) -> Running {
    Running(
        Command::new(env!("CARGO_BIN_EXE_crat"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Waits for the key file at `path` and returns its permission bits.
fn key_file_mode(path: &std::path::Path, running: &mut Running) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    for _ in 0..600 {
        if let Ok(meta) = std::fs::metadata(path) {
            return meta.permissions().mode() & 0o777;
        }
        if let Some(status) = running.0.try_wait().unwrap() {
            panic!("crat exited ({status}) before writing {}", path.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("{} never appeared", path.display());
}

#[test]
fn dispatcher_and_node_write_their_keys_private() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("dispatcher");
    let mut dispatcher = spawn(&[
        "dispatcher",
        "--data-dir",
        d.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(
        key_file_mode(&d.join("dispatcher.key"), &mut dispatcher),
        0o600
    );
    // "dispatcher <id> listening on …": the id the node is told to expect.
    let mut line = String::new();
    std::io::BufReader::new(dispatcher.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let id = line.split_whitespace().nth(1).unwrap().to_owned();
    let n = dir.path().join("node");
    let mut node = spawn(&[
        "node",
        "--dispatcher",
        "127.0.0.1:9",
        "--dispatcher-id",
        &id,
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        n.to_str().unwrap(),
        "--gpu",
        "test",
    ]);
    assert_eq!(key_file_mode(&n.join("node.key"), &mut node), 0o600);
}
