//! `crat node` runs the idle workload of its settings (`[node.idle]`): a `crat dispatcher`
//! and a `crat node` process, the node's idle command a shell that records its process id
//! and sleeps. It starts once the node has been idle for `idle_s`, is stopped (its whole
//! process group) when a task arrives, starts again after the next idle stretch, and is
//! stopped with the node.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

#[path = "chaos/processes.rs"]
#[allow(dead_code)]
mod processes;

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use processes::{DispatcherProc, Proc, free_port, operator};

const TINY: &[u8] = include_bytes!("../../backend/models/tiny_cnn.onnx");
/// How long a process may take to start (what `processes` waits for).
const START_TIMEOUT: Duration = Duration::from_secs(60);

fn crat(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_crat"))
        .args(args)
        .output()
        .unwrap()
}

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

/// The pid the idle command wrote last, once it is there and differs from `not`.
fn wait_for_pid(file: &Path, not: Option<i32>, within: Duration) -> i32 {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(text) = std::fs::read_to_string(file)
            && let Ok(pid) = text.trim().parse::<i32>()
            && Some(pid) != not
            && alive(pid)
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "the idle workload did not start within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_gone(pid: i32, within: Duration) {
    let deadline = Instant::now() + within;
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "the idle workload {pid} still runs after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crat_node_runs_its_idle_workload_between_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let config = dir.path().join("dispatcher.toml");
    std::fs::write(
        &config,
        "[dispatcher]\nreplicas = 1\nheartbeat_interval_s = 1\nproof_scale = \"test\"\n",
    )
    .unwrap();
    let data = dir.path().join("dispatcher");
    let d = data.to_str().unwrap();
    operator(&[
        "credits",
        "grant",
        "--data-dir",
        d,
        "--account",
        "idle",
        "100000",
    ])
    .unwrap();
    let key = operator(&["keys", "create", "--data-dir", d, "--account", "idle"]).unwrap();
    let key = key.trim().to_owned();
    let port = free_port(&[]).unwrap();
    let mut dispatcher = DispatcherProc {
        port,
        data,
        config,
        logs: logs.clone(),
        proc: None,
        lives: 0,
        id: None,
    };
    dispatcher.start().await.unwrap();
    let id = dispatcher.id.clone().unwrap();

    // The node's settings: its idle command records its pid, then sleeps (as a miner runs);
    // the sleep is the shell itself (`exec`), so the recorded pid is the group leader.
    let pid_file = dir.path().join("idle.pid");
    let node_port = free_port(&[port]).unwrap();
    let node_toml = dir.path().join("node.toml");
    std::fs::write(
        &node_toml,
        format!(
            "[client]\ndispatcher = \"{}\"\ndispatcher_id = \"{id}\"\n\n\
             [node]\nlisten = \"127.0.0.1:{node_port}\"\ndata_dir = \"{}\"\n\
             gpu = \"NVIDIA GeForce RTX 3080\"\n\n\
             [node.idle]\ncommand = [\"sh\", \"-c\", \"echo $$ > {}; exec sleep 1000\"]\n\
             idle_s = 1\ndemand_bps_max = 10000\nstop_grace_ms = 2000\n",
            dispatcher.addr(),
            dir.path().join("node").display(),
            pid_file.display(),
        ),
    )
    .unwrap();
    let node = Proc::spawn(
        "node".into(),
        &[
            "node".into(),
            "--config".into(),
            node_toml.display().to_string(),
        ],
        &logs,
        "warn",
    )
    .unwrap();

    // Idle from the start: the workload runs within a few seconds.
    let first = wait_for_pid(&pid_file, None, Duration::from_secs(30));

    // Work arrives: the workload stops before the task runs.
    let addr = dispatcher.addr();
    let client = ["--dispatcher", &addr, "--dispatcher-id", &id, "--key", &key];
    let model_path = dir.path().join("tiny.onnx");
    std::fs::write(&model_path, TINY).unwrap();
    let out = crat(&[&["upload"], &client[..], &[model_path.to_str().unwrap()]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let model = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    // The node may still be registering: a deploy finds no capacity until it has.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let out = loop {
        let out = crat(
            &[
                &["deploy"],
                &client[..],
                &["--model", &model, "--allowance", "50000"],
            ]
            .concat(),
        );
        if out.status.success()
            || !String::from_utf8_lossy(&out.stderr).contains("no capacity")
            || std::time::Instant::now() > deadline
        {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deployment = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let out = crat(
        &[
            &["infer"],
            &client[..],
            &[
                "--deployment",
                &deployment,
                "--input",
                "input:f32:1x1x28x28=zeros",
            ],
        ]
        .concat(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_gone(first, Duration::from_secs(10));

    // Idle again: a new run of the workload.
    let second = wait_for_pid(&pid_file, Some(first), Duration::from_secs(30));

    // The node stopped (Ctrl-C): its idle workload stops with it.
    kill(Pid::from_raw(node.pid() as i32), Signal::SIGINT).unwrap();
    wait_gone(second, Duration::from_secs(15));
    dispatcher.kill().unwrap();
}
