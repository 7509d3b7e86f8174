//! The dispatcher under test: a real `crat dispatcher` process, its setup through the `crat`
//! operator verbs, and what is measured of it from the outside (CPU time and resident memory
//! from `/proc`, its Prometheus metrics over HTTP).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crat_core::id::NodeId;

use super::LoadError;

/// How long the dispatcher has to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long it has to exit after SIGINT before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest metrics page read.
const METRICS_BYTES_MAX: u64 = 16 << 20;

/// Where the dispatcher keeps its ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LedgerChoice {
    /// `ledger.sqlite` in its data directory.
    Sqlite,
    /// A PostgreSQL database (URL) and schema.
    Postgres {
        /// `postgres://…`
        url: String,
        /// The schema (a fresh one per run keeps runs apart).
        schema: String,
    },
}

impl LedgerChoice {
    /// `sqlite` or `postgres`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres { .. } => "postgres",
        }
    }

    fn args(&self) -> Vec<String> {
        match self {
            Self::Sqlite => Vec::new(),
            Self::Postgres { url, schema } => vec![
                "--ledger".into(),
                url.clone(),
                "--ledger-schema".into(),
                schema.clone(),
            ],
        }
    }
}

/// What the dispatcher is started with.
#[derive(Clone, Debug)]
pub struct DispatcherSetup {
    /// The `crat` binary.
    pub bin: PathBuf,
    /// Its data directory (created).
    pub data_dir: PathBuf,
    /// Its ledger.
    pub ledger: LedgerChoice,
    /// The heartbeat interval it tells nodes (`[dispatcher] heartbeat_interval_s`).
    pub heartbeat_interval_s: u64,
    /// Its `RUST_LOG` (its log goes to `dispatcher.log` in the data directory).
    pub log_filter: String,
}

/// A running `crat dispatcher`; stopped (SIGINT, then SIGKILL) when dropped.
pub struct DispatcherProcess {
    child: Child,
    /// Its QUIC address.
    pub addr: SocketAddr,
    /// Its identity.
    pub id: NodeId,
    /// Its metrics address.
    pub metrics_addr: SocketAddr,
    clock_ticks_per_s: u64,
}

/// A sample of the process's CPU time.
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    /// utime + stime, seconds.
    pub cpu_s: f64,
    /// When it was taken.
    pub at: Instant,
}

impl CpuSample {
    /// CPU seconds per wall second since `earlier` (1.0 = one core busy).
    pub fn cores_since(&self, earlier: &CpuSample) -> f64 {
        let wall = self.at.duration_since(earlier.at).as_secs_f64();
        if wall <= 0.0 {
            0.0
        } else {
            (self.cpu_s - earlier.cpu_s) / wall
        }
    }
}

fn free_udp_port() -> Result<u16, LoadError> {
    let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| LoadError::io("a free UDP port", e))?;
    Ok(s.local_addr()
        .map_err(|e| LoadError::io("a free UDP port", e))?
        .port())
}

fn free_tcp_port() -> Result<u16, LoadError> {
    let s = TcpListener::bind("127.0.0.1:0").map_err(|e| LoadError::io("a free TCP port", e))?;
    Ok(s.local_addr()
        .map_err(|e| LoadError::io("a free TCP port", e))?
        .port())
}

fn run_verb(setup: &DispatcherSetup, args: &[&str]) -> Result<String, LoadError> {
    let mut cmd = Command::new(&setup.bin);
    cmd.args(args)
        .arg("--data-dir")
        .arg(&setup.data_dir)
        .args(setup.ledger.args());
    let out = cmd
        .output()
        .map_err(|e| LoadError::io("running the crat binary", e))?;
    if !out.status.success() {
        return Err(LoadError::Verb {
            verb: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Adds `credits` to account `account` (created if new) with `crat credits grant` on the
/// ledger, before the dispatcher starts.
pub fn grant(setup: &DispatcherSetup, account: &str, credits: u64) -> Result<(), LoadError> {
    std::fs::create_dir_all(&setup.data_dir)
        .map_err(|e| LoadError::io("creating the data directory", e))?;
    run_verb(
        setup,
        &[
            "credits",
            "grant",
            "--account",
            account,
            &credits.to_string(),
        ],
    )?;
    Ok(())
}

/// Creates an SDK key for `account` with `crat keys create`; returns it.
pub fn create_key(setup: &DispatcherSetup, account: &str) -> Result<String, LoadError> {
    let key = run_verb(setup, &["keys", "create", "--account", account])?;
    key.lines()
        .map(str::trim)
        .find(|l| l.starts_with("sk_"))
        .map(str::to_owned)
        .ok_or_else(|| LoadError::Verb {
            verb: "keys create".into(),
            stderr: format!("no key in its output: {key}"),
        })
}

impl DispatcherProcess {
    /// Starts `crat dispatcher` on loopback and waits for its listening line.
    pub fn start(setup: &DispatcherSetup) -> Result<Self, LoadError> {
        std::fs::create_dir_all(&setup.data_dir)
            .map_err(|e| LoadError::io("creating the data directory", e))?;
        let port = free_udp_port()?;
        let metrics_port = free_tcp_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let metrics_addr = SocketAddr::from(([127, 0, 0, 1], metrics_port));
        let config = setup.data_dir.join("crat.toml");
        // Small compute challenges: the simulated nodes answer them on the harness's CPU.
        std::fs::write(
            &config,
            format!(
                "[dispatcher]\nheartbeat_interval_s = {}\nproof_scale = \"test\"\n",
                setup.heartbeat_interval_s
            ),
        )
        .map_err(|e| LoadError::io("writing crat.toml", e))?;
        let log = std::fs::File::create(setup.data_dir.join("dispatcher.log"))
            .map_err(|e| LoadError::io("creating dispatcher.log", e))?;
        let mut child = Command::new(&setup.bin)
            .arg("dispatcher")
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(&setup.data_dir)
            .arg("--metrics-addr")
            .arg(metrics_addr.to_string())
            .args(setup.ledger.args())
            .env("RUST_LOG", &setup.log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| LoadError::io("starting crat dispatcher", e))?;
        let stdout = child.stdout.take().ok_or(LoadError::Dispatcher(
            "no stdout pipe to the dispatcher".into(),
        ))?;
        let (tx, rx) = mpsc::sync_channel::<String>(64);
        // Reads (and then drains) its stdout so the pipe never fills.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.try_send(line);
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let id = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("dispatcher ")
                        && let Some(id) = rest.split_whitespace().next()
                        && let Ok(id) = id.parse::<NodeId>()
                    {
                        break id;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let log = std::fs::read_to_string(setup.data_dir.join("dispatcher.log"))
                        .unwrap_or_default();
                    let tail: String = log.lines().rev().take(20).collect::<Vec<_>>().join("\n");
                    return Err(LoadError::Dispatcher(format!(
                        "no listening line within {START_TIMEOUT:?}; its log ends:\n{tail}"
                    )));
                }
            }
        };
        let clock_ticks_per_s = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .and_then(|t| u64::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(100);
        Ok(Self {
            child,
            addr,
            id,
            metrics_addr,
            clock_ticks_per_s,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its CPU time so far (user + system, from `/proc/PID/stat`).
    pub fn cpu(&self) -> Result<CpuSample, LoadError> {
        let at = Instant::now();
        let path = format!("/proc/{}/stat", self.pid());
        let stat = std::fs::read_to_string(&path).map_err(|e| LoadError::io("reading /proc", e))?;
        // Fields after the command name (which may hold spaces) in parentheses.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .ok_or_else(|| LoadError::Proc(format!("{path}: no ')'")))?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
        let ticks = |i: usize| -> Result<u64, LoadError> {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| LoadError::Proc(format!("{path}: field {}", i + 3)))
        };
        let total = ticks(11)? + ticks(12)?;
        Ok(CpuSample {
            cpu_s: total as f64 / self.clock_ticks_per_s as f64,
            at,
        })
    }

    /// Its resident memory (`VmRSS` of `/proc/PID/status`), bytes.
    pub fn rss_bytes(&self) -> Result<u64, LoadError> {
        let path = format!("/proc/{}/status", self.pid());
        let status =
            std::fs::read_to_string(&path).map_err(|e| LoadError::io("reading /proc", e))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .ok_or_else(|| LoadError::Proc(format!("{path}: no VmRSS")))
    }

    /// Its Prometheus metrics page.
    pub fn metrics(&self) -> Result<Metrics, LoadError> {
        let mut s = TcpStream::connect_timeout(&self.metrics_addr, Duration::from_secs(10))
            .map_err(|e| LoadError::io("connecting to the metrics endpoint", e))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| LoadError::io("metrics endpoint", e))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .map_err(|e| LoadError::io("asking for metrics", e))?;
        let mut body = String::new();
        s.take(METRICS_BYTES_MAX)
            .read_to_string(&mut body)
            .map_err(|e| LoadError::io("reading metrics", e))?;
        Ok(Metrics(body))
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops it: SIGINT (a graceful stop), SIGKILL after [`STOP_TIMEOUT`].
    pub fn stop(&mut self) {
        if !self.alive() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DispatcherProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Prometheus text page.
pub struct Metrics(String);

impl Metrics {
    /// The sum of the samples of metric `name` (exactly that name, any labels) whose labels
    /// contain `label` (e.g. `result="ok"`), if given.
    pub fn sum(&self, name: &str, label: Option<&str>) -> f64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let (metric, labels) = match series.split_once('{') {
                    Some((m, labels)) => (m, labels),
                    None => (series, ""),
                };
                if metric != name || label.is_some_and(|want| !labels.contains(want)) {
                    return None;
                }
                value.parse::<f64>().ok()
            })
            .sum()
    }
}

/// This process's resident memory (`VmRSS` of `/proc/self/status`), bytes; 0 if unknown.
pub fn self_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The machine's load averages (`/proc/loadavg`, first three fields).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The data directory for a run under `root`.
pub fn run_dir(root: &Path, ledger: &LedgerChoice) -> PathBuf {
    root.join(format!("dispatcher-{}", ledger.name()))
}
