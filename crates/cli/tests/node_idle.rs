//! `crat node` runs the idle workload of its settings (`[node.idle]`): a `crat dispatcher`
//! and a `crat node` process, the node's idle command a shell that records its process id
//! and sleeps. It starts once the node has been idle for `idle_s`, is stopped (its whole
//! process group) when a task arrives, starts again after the next idle stretch, and is
//! stopped with the node.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

#[allow(dead_code)]
mod common;
#[path = "chaos/processes.rs"]
#[allow(dead_code)]
mod processes;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Network;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use processes::Proc;

const TINY: &[u8] = include_bytes!("../../backend/models/tiny_cnn.onnx");
/// How long a process may take to start (what `processes` waits for).
const START_TIMEOUT: Duration = Duration::from_secs(60);

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
    let mut net = Network::start(
        dir.path(),
        "replicas = 1\nheartbeat_interval_s = 1\nproof_scale = \"test\"\n",
    )
    .await
    .unwrap();
    let id = &net.id;

    // The node's settings: its idle command records its pid, then sleeps (as a miner runs);
    // the sleep is the shell itself (`exec`), so the recorded pid is the group leader.
    let pid_file = dir.path().join("idle.pid");
    let node_port = net.free_port().unwrap();
    let node_toml = dir.path().join("node.toml");
    std::fs::write(
        &node_toml,
        format!(
            "[client]\ndispatcher = \"{}\"\ndispatcher_id = \"{id}\"\n\n\
             [node]\nlisten = \"127.0.0.1:{node_port}\"\ndata_dir = \"{}\"\n\
             gpu = \"NVIDIA GeForce RTX 3080\"\n\n\
             [node.idle]\ncommand = [\"sh\", \"-c\", \"echo $$ > {}; exec sleep 1000\"]\n\
             idle_s = 1\ndemand_bps_max = 10000\nstop_grace_ms = 2000\n",
            net.addr,
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
        &net.logs,
        "warn",
    )
    .unwrap();

    // Idle from the start: the workload runs within a few seconds.
    let first = wait_for_pid(&pid_file, None, Duration::from_secs(30));

    // Work arrives: the workload stops before the task runs.
    let (_, deployment, _) = net.deploy(dir.path(), TINY).unwrap();
    net.infer_zeros(&deployment).unwrap();
    wait_gone(first, Duration::from_secs(10));

    // Idle again: a new run of the workload.
    let second = wait_for_pid(&pid_file, Some(first), Duration::from_secs(30));

    // The node stopped (Ctrl-C): its idle workload stops with it.
    kill(Pid::from_raw(node.pid() as i32), Signal::SIGINT).unwrap();
    wait_gone(second, Duration::from_secs(15));
    net.dispatcher.kill().unwrap();
}
