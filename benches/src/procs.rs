//! Processes for the benches that drive real `crat` binaries and servers (`runtimes`,
//! `compare`): a child with its output in files, ports, CPU and load from `/proc`. A bench
//! harness: failures panic with what the process printed.
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;

/// How long a process may take to exit after ctrl-c before it is killed.
pub const STOP_S_MAX: u64 = 30;

/// Cores this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The machine a bench ran on, for its header: the CPU model as the node reports it
/// ([`crat_node::probe::SystemProbe`]), the kernel release and [`wake_round_trips`]. Runs
/// on different VMs of the same size differ by more than most changes a bench measures.
pub fn machine() -> String {
    use crat_node::probe::HardwareProbe as _;
    let cpu = crat_node::probe::SystemProbe.probe().hardware.cpu.model;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "?".into(), |s| s.trim().to_owned());
    let us = |d: Option<Duration>| {
        d.map_or_else(|| "?".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e6))
    };
    let wake = wake_round_trips(WAKE_ROUND_TRIPS);
    format!(
        "{cpu}, kernel {kernel}; a thread woken and waking back: {} µs from another core, {} µs on one",
        us(wake.across),
        us(wake.within)
    )
}

/// Round trips [`machine`] times.
const WAKE_ROUND_TRIPS: usize = 2_000;

/// Medians of [`wake_round_trips`].
#[derive(Clone, Copy, Debug)]
pub struct WakeRoundTrips {
    /// The two threads on two cores; `None` with one core, or when they cannot be pinned.
    pub across: Option<Duration>,
    /// The two threads on one core; `None` when they cannot be pinned.
    pub within: Option<Duration>,
}

/// The median time, over `trips` round trips (at least one), for a thread to wake another
/// one blocked reading a pipe and be woken back the same way: with the two pinned to two
/// cores (`across`) and to one (`within`). It is the price of each hand-off between threads
/// or processes on an idle machine, which one request at a time pays several times over
/// (client, node and their runtimes' threads), and it is the machine's, not the code's: on
/// the 2-vCPU VM of 2026-12-07 it was 58–65 µs across and 2.6–3.9 µs within (this crate's
/// unit test, three runs; unpinned, the scheduler placed the same two threads either way
/// from one run to the next), so latency measured in microseconds moves with the VM drawn.
pub fn wake_round_trips(trips: usize) -> WakeRoundTrips {
    use nix::sched::{CpuSet, sched_getaffinity};
    use nix::unistd::Pid;
    let allowed: Vec<usize> = sched_getaffinity(Pid::from_raw(0))
        .map(|set| {
            (0..CpuSet::count())
                .filter(|&c| set.is_set(c).unwrap_or(false))
                .collect()
        })
        .unwrap_or_default();
    let first = allowed.first().copied();
    WakeRoundTrips {
        across: first
            .zip(allowed.get(1).copied())
            .and_then(|(a, b)| pipe_round_trip(trips, a, b)),
        within: first.and_then(|a| pipe_round_trip(trips, a, a)),
    }
}

/// [`wake_round_trips`] with this side pinned to core `mine` and the peer to `peers`.
fn pipe_round_trip(trips: usize, mine: usize, peers: usize) -> Option<Duration> {
    use std::io::{Read, Write};
    fn pin(cpu: usize) -> Option<()> {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu).ok()?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).ok()
    }
    let (mut to_peer_r, mut to_peer) = std::io::pipe().ok()?;
    let (mut to_me_r, mut to_me) = std::io::pipe().ok()?;
    let peer = std::thread::spawn(move || {
        pin(peers)?;
        let mut b = [0u8; 1];
        while to_peer_r.read_exact(&mut b).is_ok() && to_me.write_all(&b).is_ok() {}
        Some(())
    });
    // On a thread of its own, so that the caller's affinity is left as it was.
    let times = std::thread::spawn(move || {
        pin(mine)?;
        let mut b = [0u8; 1];
        let times: Option<Vec<Duration>> = (0..trips.max(1))
            .map(|_| {
                let t = Instant::now();
                to_peer.write_all(&[1]).ok()?;
                to_me_r.read_exact(&mut b).ok()?;
                Some(t.elapsed())
            })
            .collect();
        drop(to_peer);
        times
    })
    .join()
    .ok()
    .flatten();
    // Ends when the writing end is dropped (or at once when it could not be pinned).
    peer.join().ok()??;
    let mut times = times?;
    times.sort_unstable();
    times.get(times.len() / 2).copied()
}

/// The 1-minute load average.
pub fn load_1m() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// utime + stime of `/proc/<pid>/stat` (`self` for this process), in clock ticks; `None`
/// when it cannot be read (the process is gone).
pub fn cpu_ticks(pid: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command's ")": state is field 3, utime 14, stime 15.
    let rest: Vec<u64> = text
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    Some(rest.get(11)? + rest.get(12)?)
}

/// CPU time from `/proc` (in the kernel's clock ticks): all CPUs' busy and total time, and
/// the busy time of the bench and its processes.
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    busy: u64,
    total: u64,
    ours: u64,
}

impl CpuSample {
    /// Samples now: the machine, this process and `pids`.
    pub fn take(pids: &[u32]) -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest is counted in user)
        let at = |i: usize| fields.get(i).copied().unwrap_or(0);
        let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
        let total = busy + at(3) + at(4);
        // A process that has exited counts nothing.
        let ours = cpu_ticks("self").unwrap_or(0)
            + pids
                .iter()
                .map(|p| cpu_ticks(&p.to_string()).unwrap_or(0))
                .sum::<u64>();
        Self { busy, total, ours }
    }

    /// Cores used by this network and by everything else between `self` and `later`.
    pub fn cores(self, later: CpuSample, cores: usize) -> (f64, f64) {
        let total = later.total.saturating_sub(self.total).max(1) as f64;
        let busy = later.busy.saturating_sub(self.busy) as f64;
        let ours = (later.ours.saturating_sub(self.ours) as f64).min(busy);
        let cores = cores as f64;
        (ours / total * cores, (busy - ours) / total * cores)
    }
}

/// Waits until the machine is quiet: until a `window` in which every process together used
/// at most `cores_max` cores, or `wait_max` has passed. A run
/// measured right after another would otherwise also measure the network digesting the
/// previous run (its usage reports, acknowledgements and ledger writes), which a steady load
/// does not meet; a window longer than the nodes' usage interval (1 s) sees those.
pub async fn settle(window: std::time::Duration, cores_max: f64, wait_max: std::time::Duration) {
    let started = std::time::Instant::now();
    loop {
        let before = CpuSample::take(&[]);
        tokio::time::sleep(window).await;
        let (ours, others) = before.cores(CpuSample::take(&[]), cores());
        if ours + others <= cores_max || started.elapsed() >= wait_max {
            return;
        }
    }
}

/// A free UDP port on loopback below the ephemeral range (no endpoint bound to port 0, a
/// client's or a dispatcher's canary endpoint, takes it before its process binds it).
pub fn free_port(taken: &[u16]) -> u16 {
    for _ in 0..1_000 {
        let port = rand::thread_rng().gen_range(20_000..32_000);
        if !taken.contains(&port) && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free UDP port in 20000..32000")
}

/// A `crat` child process, its output in `<logs>/<name>.out` and `.err`; killed when dropped.
pub struct Proc {
    /// Its name in messages and log file names.
    pub name: String,
    /// The process.
    pub child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    /// Starts `command` (`RUST_LOG=warn`, `NO_COLOR=1`, no stdin).
    pub fn spawn(name: String, mut command: Command, logs: &Path) -> Self {
        let stdout = logs.join(format!("{name}.out"));
        let stderr = logs.join(format!("{name}.err"));
        let child = command
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self {
            name,
            child,
            stdout,
            stderr,
        }
    }

    /// Its stdout so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// The last lines of its output, for failure messages.
    pub fn tail(&self) -> String {
        let mut out = String::new();
        for path in [&self.stdout, &self.stderr] {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let _ = writeln!(out, "--- {}", path.display());
            for l in &lines[lines.len().saturating_sub(20)..] {
                let _ = writeln!(out, "{l}");
            }
        }
        out
    }

    /// Panics, with its last output, if it has exited.
    pub fn check_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "{} exited on its own ({status}):\n{}",
                self.name,
                self.tail()
            );
        }
    }

    /// Waits until its stdout has a line starting with `marker` (or containing it, with
    /// `anywhere`) and returns that line.
    pub async fn wait_for(&mut self, marker: &str, anywhere: bool, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let text = self.output();
            let hit = text.lines().find(|l| {
                if anywhere {
                    l.contains(marker)
                } else {
                    l.starts_with(marker)
                }
            });
            if let Some(line) = hit {
                return line.to_owned();
            }
            self.check_alive();
            assert!(
                Instant::now() < deadline,
                "{} printed no {marker:?} within {within:?}:\n{}",
                self.name,
                self.tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Interrupts it (ctrl-c) and waits for it to exit; kills it after `STOP_S_MAX`.
    pub async fn stop(&mut self) {
        self.check_alive();
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let deadline = Instant::now() + Duration::from_secs(STOP_S_MAX);
        let status: ExitStatus = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                println!(
                    "  {} did not exit within {STOP_S_MAX} s of ctrl-c: killed",
                    self.name
                );
                let _ = self.child.kill();
                break self.child.wait().unwrap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if !status.success() {
            println!("  {} exited with {status} after ctrl-c", self.name);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `crat <args>` run to completion; its stdout.
pub fn crat_verb(crat: &Path, args: &[&str]) -> String {
    let out = Command::new(crat).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "crat {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A `crat` command whose environment has no `ORT_DYLIB_PATH` and no `CRAT_ONNXRUNTIME*`.
pub fn stripped(crat: &Path) -> Command {
    let mut command = Command::new(crat);
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if text == "ORT_DYLIB_PATH" || text.starts_with("CRAT_ONNXRUNTIME") {
            command.env_remove(&name);
        }
    }
    command
}

/// `crat node` (environment as [`stripped`]) joining the dispatcher at `addr` (id `id`),
/// listening on 127.0.0.1:`port`, with its data in `data_dir`.
pub fn node_command(
    crat: &Path,
    addr: &str,
    id: &crat_core::id::NodeId,
    port: u16,
    data_dir: &Path,
) -> Command {
    let mut command = stripped(crat);
    command
        .args(["node", "--dispatcher", addr, "--dispatcher-id"])
        .arg(id.to_string())
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data_dir);
    command
}

/// The processes whose parent is `pid` (from `/proc/*/stat`), e.g. uvicorn's workers.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            // After the command's ")": state, then the parent's pid.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(pid)
        })
        .collect()
}

/// A `crat dispatcher` process on a free loopback port, its ledger holding an account
/// `bench` with credits and an SDK key for it.
pub struct Dispatcher {
    /// The process.
    pub proc: Proc,
    /// Its UDP port on 127.0.0.1.
    pub port: u16,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    /// Its id, as it printed it.
    pub id: crat_core::id::NodeId,
    /// The account's key.
    pub key: crat_core::id::SdkKey,
}

impl Dispatcher {
    /// Grants `credits` to the account `bench` and creates its key (on the ledger, offline),
    /// then starts `crat dispatcher` in `dir/dispatcher` with test-scale hardware proofs and
    /// 1 s heartbeats (nodes join within seconds), `ORT_DYLIB_PATH` set to `ort_dylib` (its
    /// determinism gate runs tract and ONNX Runtime), and waits until it listens.
    pub async fn start(
        crat: &Path,
        dir: &Path,
        logs: &Path,
        ort_dylib: &Path,
        credits: u64,
        start_within: Duration,
    ) -> Self {
        let data = dir.join("dispatcher");
        let d = data.to_str().unwrap();
        let credits = credits.to_string();
        crat_verb(
            crat,
            &[
                "credits",
                "grant",
                "--data-dir",
                d,
                "--account",
                "bench",
                &credits,
            ],
        );
        let key = crat_verb(
            crat,
            &["keys", "create", "--data-dir", d, "--account", "bench"],
        )
        .trim()
        .parse()
        .unwrap();
        let config = dir.join("dispatcher.toml");
        std::fs::write(
            &config,
            "[dispatcher]\nheartbeat_interval_s = 1\nproof_scale = \"test\"\n",
        )
        .unwrap();
        let port = free_port(&[]);
        let addr = format!("127.0.0.1:{port}");
        let mut command = stripped(crat);
        command
            .env("ORT_DYLIB_PATH", ort_dylib)
            .args(["dispatcher", "--listen", &addr, "--data-dir", d, "--config"])
            .arg(&config);
        let mut proc = Proc::spawn("dispatcher".into(), command, logs);
        let line = proc.wait_for(" listening on ", true, start_within).await;
        // "dispatcher <id> listening on <addr>"
        let id = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        Self {
            proc,
            port,
            addr,
            id,
            key,
        }
    }
}

/// Uploads `model` with `client` and deploys it per request (inputs up to `max_input_bytes`,
/// an allowance of `allowance` credits), then waits until `replicas` replicas are ready,
/// checking meanwhile that none of `procs` exited.
pub async fn deploy_ready(
    client: &crat_sdk::Client<crat_transport::quic::QuicTransport>,
    model: &[u8],
    max_input_bytes: u64,
    allowance: u64,
    replicas: usize,
    procs: &mut [&mut Proc],
    within: Duration,
) -> crat_sdk::Deployment<crat_transport::quic::QuicTransport> {
    use crat_core::money::Credits;
    use crat_core::pricing::{DeployPlan, PerRequestPlan};

    let uploaded = client.upload_model(model, |_| {}).await.unwrap();
    let plan = DeployPlan::PerRequest(PerRequestPlan {
        max_input_bytes,
        credit_allowance: Credits::new(allowance),
    });
    let deployment = client.deploy(uploaded, plan).await.unwrap();
    let ready_by = Instant::now() + within;
    deployment.wait_ready(within).await.unwrap();
    loop {
        let info = deployment.info().await.unwrap();
        if info.replicas_ready as usize >= replicas {
            return deployment;
        }
        for proc in procs.iter_mut() {
            proc.check_alive();
        }
        assert!(
            Instant::now() < ready_by,
            "{} of {replicas} replicas ready after {within:?}: {info:?}",
            info.replicas_ready
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_round_trips_are_measured_on_one_core_and_across_two() {
        let wake = wake_round_trips(200);
        let plausible = |d: Duration| d > Duration::ZERO && d < Duration::from_secs(1);
        assert!(wake.within.is_some_and(plausible), "{wake:?}");
        if cores() > 1 {
            assert!(wake.across.is_some_and(plausible), "{wake:?}");
        }
        println!("{}", machine());
    }
}
