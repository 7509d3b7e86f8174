//! The soak's processes: the dispatcher and the nodes as `crat` child processes, killed with
//! SIGKILL, restarted on their ports and data directories, interrupted at the end.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use crat_core::wire::{NodeRequest, UsageRecord};
use rand::Rng;

use crate::START_TIMEOUT;

/// A `crat` process of the soak; killed with SIGKILL when dropped.
pub(crate) struct Proc {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    /// Starts `crat args`, its output to `<logs>/<name>.out` and `.err`.
    pub(crate) fn spawn(
        name: String,
        args: &[String],
        logs: &Path,
        rust_log: &str,
    ) -> anyhow::Result<Self> {
        let stdout = logs.join(format!("{name}.out"));
        let stderr = logs.join(format!("{name}.err"));
        let child = Command::new(env!("CARGO_BIN_EXE_crat"))
            .args(args)
            .env("RUST_LOG", rust_log)
            // Tests never download ONNX Runtime: a node without one serves with tract.
            .env("CRAT_ONNXRUNTIME_INSTALL", "false")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout)?)
            .stderr(std::fs::File::create(&stderr)?)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            name,
            child,
            stdout,
            stderr,
        })
    }

    /// Its process id.
    #[allow(dead_code)] // the soak does not need it; node_idle.rs does
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of its output, for failure messages.
    pub(crate) fn tail(&self) -> String {
        let mut out = String::new();
        for path in [&self.stdout, &self.stderr] {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(12);
            let _ = writeln!(out, "--- {}", path.display());
            for l in &lines[from..] {
                let _ = writeln!(out, "{l}");
            }
        }
        out
    }

    /// Fails if it exited on its own (a crash: nothing here stops by itself).
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited on its own ({status}):\n{}",
                self.name,
                self.tail()
            );
        }
        Ok(())
    }

    /// SIGKILL, after checking it was still running.
    pub(crate) fn kill(&mut self) -> anyhow::Result<()> {
        self.check_alive()?;
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Waits until its stdout has a line containing `marker` and returns that line.
    pub(crate) async fn wait_for(&mut self, marker: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&self.stdout).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains(marker)) {
                return Ok(line.to_owned());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "{} printed no {marker:?} in {START_TIMEOUT:?}:\n{}",
                    self.name,
                    self.tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Interrupts it (ctrl-c) and waits for a clean exit.
    pub(crate) async fn stop(&mut self) -> anyhow::Result<()> {
        self.check_alive()?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)?;
        let deadline = Instant::now() + START_TIMEOUT;
        let status: ExitStatus = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                bail!("{} did not exit after ctrl-c:\n{}", self.name, self.tail());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        ensure!(
            status.success(),
            "{} exited with {status} after ctrl-c:\n{}",
            self.name,
            self.tail()
        );
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free UDP port on loopback below the ephemeral range (so that no endpoint bound to port 0
/// meanwhile, a client's or a canary's, takes it while its process is down).
pub(crate) fn free_port(taken: &[u16]) -> anyhow::Result<u16> {
    for _ in 0..1_000 {
        let port = rand::thread_rng().gen_range(20_000..32_000);
        if !taken.contains(&port) && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free UDP port in 20000..32000")
}

/// The dispatcher: one process at a time, every life on the same port and data directory.
pub(crate) struct DispatcherProc {
    pub(crate) port: u16,
    pub(crate) data: PathBuf,
    pub(crate) config: PathBuf,
    pub(crate) logs: PathBuf,
    /// The running life, if any.
    pub(crate) proc: Option<Proc>,
    /// Lives started.
    pub(crate) lives: u32,
    /// Its id, as the first life printed it.
    pub(crate) id: Option<String>,
    /// More flags every life is started with (e.g. `--ledger URL`).
    pub(crate) args: Vec<String>,
}

impl DispatcherProc {
    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts a life and waits until it listens (with the same id as every life before).
    pub(crate) async fn start(&mut self) -> anyhow::Result<()> {
        self.lives += 1;
        let args: Vec<String> = [
            "dispatcher",
            "--listen",
            &self.addr(),
            "--data-dir",
            self.data.to_str().context("path")?,
            "--config",
            self.config.to_str().context("path")?,
        ]
        .map(String::from)
        .into_iter()
        .chain(self.args.iter().cloned())
        .collect();
        let mut p = Proc::spawn(
            format!("dispatcher-{:03}", self.lives),
            &args,
            &self.logs,
            "warn,crat_dispatcher::service::closing=info,crat_dispatcher::service::node=info",
        )?;
        let line = p.wait_for("listening on").await?;
        // "dispatcher <id> listening on <addr>"
        let id = line
            .split_whitespace()
            .nth(1)
            .context("no id in the dispatcher's first line")?
            .to_owned();
        match &self.id {
            Some(first) => ensure!(
                *first == id,
                "life {} came back as {id}, not {first}",
                self.lives
            ),
            None => self.id = Some(id),
        }
        self.proc = Some(p);
        Ok(())
    }

    pub(crate) fn kill(&mut self) -> anyhow::Result<()> {
        self.proc
            .as_mut()
            .context("no dispatcher to kill")?
            .kill()?;
        self.proc = None;
        Ok(())
    }
}

/// One compute node: one process at a time, every life on the same port and data directory.
pub(crate) struct NodeProc {
    pub(crate) index: usize,
    pub(crate) port: u16,
    pub(crate) data: PathBuf,
    pub(crate) logs: PathBuf,
    pub(crate) proc: Option<Proc>,
    pub(crate) lives: u32,
}

impl NodeProc {
    pub(crate) fn start(&mut self, dispatcher: &DispatcherProc) -> anyhow::Result<()> {
        self.start_with(dispatcher, &[])
    }

    /// [`NodeProc::start`] with `more` flags.
    pub(crate) fn start_with(
        &mut self,
        dispatcher: &DispatcherProc,
        more: &[&str],
    ) -> anyhow::Result<()> {
        self.lives += 1;
        let args = [
            "node",
            "--dispatcher",
            &dispatcher.addr(),
            "--dispatcher-id",
            dispatcher.id.as_deref().context("dispatcher id")?,
            "--listen",
            &format!("127.0.0.1:{}", self.port),
            "--data-dir",
            self.data.to_str().context("path")?,
            "--gpu",
            "NVIDIA GeForce RTX 3080",
        ]
        .into_iter()
        .chain(more.iter().copied())
        .map(String::from)
        .collect::<Vec<_>>();
        self.proc = Some(Proc::spawn(
            format!("node{}-{:03}", self.index, self.lives),
            &args,
            &self.logs,
            "warn",
        )?);
        Ok(())
    }

    pub(crate) fn kill(&mut self) -> anyhow::Result<()> {
        self.proc.as_mut().context("no node to kill")?.kill()?;
        self.proc = None;
        Ok(())
    }

    /// The usage records its journal holds (what it has not had acknowledged yet).
    pub(crate) fn journal(&self) -> anyhow::Result<Vec<UsageRecord>> {
        let path = self.data.join("usage.journal");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        match crat_core::wire::decode::<NodeRequest>(&bytes)? {
            NodeRequest::Usage(report) => Ok(report.records),
            other => bail!("{} holds {other:?}", path.display()),
        }
    }
}

/// Runs `crat` to completion (the operator verbs) and returns its stdout.
pub(crate) fn operator(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_crat"))
        .args(args)
        .output()?;
    ensure!(
        out.status.success(),
        "crat {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}
