//! Idle workload: run something useful (a miner, in real life) while the node has no work
//! and the network has little demand, and stop it the moment work arrives.
//!
//! [`IdlePolicy`] is the decision, sans-IO (time is passed in). [`IdleController`] applies it
//! to an [`IdleWorkload`]; [`CommandWorkload`] is the usual workload: a child process started
//! with a command line and stopped with SIGTERM, then SIGKILL after a grace period.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// Why the idle workload could not be started or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdleError {
    /// The command could not be started.
    #[error("cannot start idle workload: {0}")]
    Start(std::io::Error),
    /// The process could not be signalled or reaped.
    #[error("cannot stop idle workload: {0}")]
    Stop(String),
}

/// Something a node runs while idle.
#[async_trait]
pub trait IdleWorkload: Send + Sync {
    /// Starts it (no-op if running).
    async fn start(&self) -> Result<(), IdleError>;
    /// Stops it (no-op if stopped).
    async fn stop(&self) -> Result<(), IdleError>;
    /// True while it runs.
    fn is_running(&self) -> bool;
}

#[async_trait]
impl<W: IdleWorkload + ?Sized> IdleWorkload for Box<W> {
    async fn start(&self) -> Result<(), IdleError> {
        (**self).start().await
    }
    async fn stop(&self) -> Result<(), IdleError> {
        (**self).stop().await
    }
    fn is_running(&self) -> bool {
        (**self).is_running()
    }
}

/// A command run as a child process while idle.
pub struct CommandWorkload {
    program: String,
    args: Vec<String>,
    grace: Duration,
    child: tokio::sync::Mutex<Option<Child>>,
    running: Mutex<bool>,
}

impl CommandWorkload {
    /// `program` with `args`, given `grace` between SIGTERM and SIGKILL when stopped.
    pub fn new(program: impl Into<String>, args: Vec<String>, grace: Duration) -> Self {
        Self {
            program: program.into(),
            args,
            grace,
            child: tokio::sync::Mutex::new(None),
            running: Mutex::new(false),
        }
    }

    /// Process id of the running child, if any.
    pub async fn pid(&self) -> Option<u32> {
        self.child.lock().await.as_ref().and_then(Child::id)
    }

    fn set_running(&self, running: bool) {
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = running;
    }
}

#[async_trait]
impl IdleWorkload for CommandWorkload {
    async fn start(&self) -> Result<(), IdleError> {
        let mut child = self.child.lock().await;
        if let Some(c) = child.as_mut()
            && matches!(c.try_wait(), Ok(None))
        {
            return Ok(());
        }
        let spawned = Command::new(&self.program)
            .args(&self.args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(IdleError::Start)?;
        tracing::info!(program = %self.program, pid = ?spawned.id(), "idle workload started");
        *child = Some(spawned);
        self.set_running(true);
        Ok(())
    }

    async fn stop(&self) -> Result<(), IdleError> {
        let mut guard = self.child.lock().await;
        let Some(mut child) = guard.take() else {
            return Ok(());
        };
        self.set_running(false);
        let Some(pid) = child.id() else {
            // Already exited and reaped.
            return Ok(());
        };
        let pid = Pid::from_raw(
            i32::try_from(pid).map_err(|_| IdleError::Stop(format!("pid {pid} out of range")))?,
        );
        if let Err(e) = kill(pid, Signal::SIGTERM) {
            return Err(IdleError::Stop(format!("SIGTERM: {e}")));
        }
        match tokio::time::timeout(self.grace, child.wait()).await {
            Ok(Ok(status)) => {
                tracing::info!(?status, "idle workload stopped");
                Ok(())
            }
            Ok(Err(e)) => Err(IdleError::Stop(e.to_string())),
            Err(_) => {
                tracing::warn!("idle workload ignored SIGTERM; killing it");
                child
                    .kill()
                    .await
                    .map_err(|e| IdleError::Stop(format!("SIGKILL: {e}")))
            }
        }
    }

    fn is_running(&self) -> bool {
        *self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// When to run the idle workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdlePolicy {
    /// Seconds without work before the workload may start. Default 300.
    pub idle_s_min: u64,
    /// Network demand (basis points) at or below which the network counts as quiet.
    /// Default 2,000 (20 %).
    pub demand_bps_max: u16,
}

impl Default for IdlePolicy {
    fn default() -> Self {
        Self {
            idle_s_min: 300,
            demand_bps_max: 2_000,
        }
    }
}

/// What the controller should do after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleAction {
    /// Nothing changes.
    None,
    /// Start the workload.
    Start,
    /// Stop the workload.
    Stop,
}

/// The idle decision state: sans-IO, driven by events with explicit times.
#[derive(Clone, Debug)]
pub struct IdleState {
    policy: IdlePolicy,
    last_work_s: u64,
    demand_bps: u16,
    running: bool,
}

impl IdleState {
    /// A node that started (and so last "worked") at `now_s`, with unknown (high) demand.
    pub fn new(policy: IdlePolicy, now_s: u64) -> Self {
        Self {
            policy,
            last_work_s: now_s,
            demand_bps: u16::MAX,
            running: false,
        }
    }

    /// Work arrived at `now_s`.
    pub fn on_work(&mut self, now_s: u64) -> IdleAction {
        self.last_work_s = self.last_work_s.max(now_s);
        self.transition(false)
    }

    /// The dispatcher reported demand.
    pub fn on_demand(&mut self, demand_bps: u16, now_s: u64) -> IdleAction {
        self.demand_bps = demand_bps;
        self.tick(now_s)
    }

    /// Time passed.
    pub fn tick(&mut self, now_s: u64) -> IdleAction {
        let quiet = now_s.saturating_sub(self.last_work_s) >= self.policy.idle_s_min
            && self.demand_bps <= self.policy.demand_bps_max;
        self.transition(quiet)
    }

    fn transition(&mut self, want: bool) -> IdleAction {
        match (self.running, want) {
            (false, true) => {
                self.running = true;
                IdleAction::Start
            }
            (true, false) => {
                self.running = false;
                IdleAction::Stop
            }
            _ => IdleAction::None,
        }
    }

    /// True while the workload should be running.
    pub fn running(&self) -> bool {
        self.running
    }
}

/// Applies an [`IdleState`] to a workload.
pub struct IdleController<W: IdleWorkload> {
    workload: W,
    state: Mutex<IdleState>,
}

impl<W: IdleWorkload> IdleController<W> {
    /// Controls `workload` with `policy`, starting at `now_s`.
    pub fn new(workload: W, policy: IdlePolicy, now_s: u64) -> Self {
        Self {
            workload,
            state: Mutex::new(IdleState::new(policy, now_s)),
        }
    }

    /// The workload.
    pub fn workload(&self) -> &W {
        &self.workload
    }

    async fn apply(&self, action: IdleAction) {
        let result = match action {
            IdleAction::None => Ok(()),
            IdleAction::Start => self.workload.start().await,
            IdleAction::Stop => self.workload.stop().await,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "idle workload");
        }
    }

    fn with_state(&self, f: impl FnOnce(&mut IdleState) -> IdleAction) -> IdleAction {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Work arrived: stops the workload if it runs.
    pub async fn work_arrived(&self, now_s: u64) {
        let action = self.with_state(|s| s.on_work(now_s));
        self.apply(action).await;
    }

    /// The dispatcher reported demand.
    pub async fn demand(&self, demand_bps: u16, now_s: u64) {
        let action = self.with_state(|s| s.on_demand(demand_bps, now_s));
        self.apply(action).await;
    }

    /// Time passed.
    pub async fn tick(&self, now_s: u64) {
        let action = self.with_state(|s| s.tick(now_s));
        self.apply(action).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_starts_when_idle_and_quiet_and_stops_on_work() {
        let mut s = IdleState::new(
            IdlePolicy {
                idle_s_min: 60,
                demand_bps_max: 1_000,
            },
            0,
        );
        // Demand unknown until the dispatcher says: nothing starts.
        assert_eq!(s.tick(100), IdleAction::None);
        // Quiet network but not idle long enough since the last work.
        assert_eq!(s.on_work(90), IdleAction::None);
        assert_eq!(s.on_demand(500, 120), IdleAction::None);
        assert_eq!(s.tick(150), IdleAction::Start);
        assert_eq!(s.tick(151), IdleAction::None);
        assert_eq!(s.on_work(152), IdleAction::Stop);
        assert_eq!(s.tick(200), IdleAction::None);
        assert_eq!(s.tick(212), IdleAction::Start);
        // Demand rising stops it too.
        assert_eq!(s.on_demand(5_000, 213), IdleAction::Stop);
    }

    #[tokio::test]
    async fn command_workload_stops_with_sigterm() {
        let w = CommandWorkload::new("sleep", vec!["30".into()], Duration::from_secs(5));
        w.start().await.unwrap();
        assert!(w.is_running());
        assert!(w.pid().await.is_some());
        let t = std::time::Instant::now();
        w.stop().await.unwrap();
        assert!(!w.is_running());
        assert!(t.elapsed() < Duration::from_secs(4), "SIGTERM ended it");
    }

    #[tokio::test]
    async fn command_workload_ignoring_sigterm_is_killed_after_grace() {
        let ready = std::env::temp_dir().join(format!("crat-idle-trap-{}", std::process::id()));
        let _ = std::fs::remove_file(&ready);
        let w = CommandWorkload::new(
            "sh",
            vec![
                "-c".into(),
                format!("trap '' TERM; touch {}; sleep 30", ready.display()),
            ],
            Duration::from_millis(300),
        );
        w.start().await.unwrap();
        // Wait until the shell has installed its trap (it says so by creating the file).
        for _ in 0..10_000 {
            if ready.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(ready.exists(), "the workload never started");
        let t = std::time::Instant::now();
        w.stop().await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(!w.is_running());
        let _ = std::fs::remove_file(&ready);
    }

    #[tokio::test]
    async fn controller_drives_a_dummy_process() {
        let c = IdleController::new(
            CommandWorkload::new("sleep", vec!["30".into()], Duration::from_secs(2)),
            IdlePolicy {
                idle_s_min: 10,
                demand_bps_max: 100,
            },
            0,
        );
        c.demand(0, 5).await;
        assert!(!c.workload().is_running());
        c.tick(11).await;
        assert!(c.workload().is_running());
        let pid = c.workload().pid().await.unwrap();
        c.work_arrived(12).await;
        assert!(!c.workload().is_running());
        // The process is really gone.
        assert!(kill(Pid::from_raw(pid as i32), None).is_err());
        assert!(matches!(
            CommandWorkload::new("/nonexistent/miner", vec![], Duration::from_secs(1))
                .start()
                .await,
            Err(IdleError::Start(_))
        ));
    }
}
