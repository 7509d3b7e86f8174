//! Idle workload: run something useful (a miner, in real life) while the node has no work
//! and the network has little demand, and stop it the moment work arrives.
//!
//! [`IdlePolicy`] is the decision, sans-IO (time is passed in). [`IdleController`] applies it
//! to an [`IdleWorkload`]; [`CommandWorkload`] is the usual workload: a child process started
//! with a command line in a process group of its own, and stopped with SIGTERM to the whole
//! group, then SIGKILL to the group after a grace period (so what the command started in
//! turn stops with it).

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
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

/// A command run as a child process while idle, in a process group of its own.
///
/// The child leads a new process group (`setpgid(0, 0)` at spawn), so whatever it starts
/// (a miner's workers, a shell script's background jobs) is stopped with it: stopping sends
/// SIGTERM to the whole group, waits up to the grace period for the child to exit and the
/// group to empty, then sends SIGKILL to the group. Dropping the workload sends SIGKILL to
/// the group. Members that leave the group (`setsid`, `setpgid`) are out of reach, as they
/// would be of a shell's job control. A member that exited counts until it is reaped (by its
/// parent, or by init once orphaned): under an init that never reaps, a stop that leaves
/// orphans lasts the whole grace period.
pub struct CommandWorkload {
    program: String,
    args: Vec<String>,
    grace: Duration,
    child: tokio::sync::Mutex<Option<Running>>,
    running: Mutex<bool>,
}

/// A started child and the process group it leads.
struct Running {
    child: Child,
    /// The group's id: the child's pid, kept because [`Child::id`] forgets it once the
    /// child is reaped while the rest of the group may live on.
    group: Pid,
}

/// How often a stopping workload's process group is checked for members.
const GROUP_POLL_MS: u64 = 10;

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

    /// Process id of the running child, if any (also its process group's id).
    pub async fn pid(&self) -> Option<u32> {
        self.child.lock().await.as_ref().and_then(|r| r.child.id())
    }

    fn set_running(&self, running: bool) {
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = running;
    }

    /// Ends `running`'s process group: SIGTERM to the group, then SIGKILL to it once the
    /// grace period has passed with the child alive or the group not yet empty.
    async fn terminate(&self, mut running: Running) -> Result<(), IdleError> {
        let group = running.group;
        signal_group(group, Signal::SIGTERM)?;
        let deadline = tokio::time::Instant::now() + self.grace;
        let exited = match tokio::time::timeout_at(deadline, running.child.wait()).await {
            Ok(Ok(status)) => Some(status),
            Ok(Err(e)) => return Err(IdleError::Stop(format!("waiting for the child: {e}"))),
            Err(_) => None,
        };
        // The child is reaped; what it started may still be finishing.
        if exited.is_some() {
            while group_has_members(group)? && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(GROUP_POLL_MS)).await;
            }
        }
        if exited.is_none() || group_has_members(group)? {
            tracing::warn!(
                group = group.as_raw(),
                "idle workload outlived its grace period; killing its process group"
            );
            signal_group(group, Signal::SIGKILL)?;
            let status = running
                .child
                .wait()
                .await
                .map_err(|e| IdleError::Stop(format!("waiting for the child: {e}")))?;
            tracing::info!(?status, "idle workload killed");
        } else {
            tracing::info!(status = ?exited, "idle workload stopped");
        }
        Ok(())
    }
}

/// Sends `signal` to process group `group`; a group with no members left is not an error.
fn signal_group(group: Pid, signal: Signal) -> Result<(), IdleError> {
    match killpg(group, signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(IdleError::Stop(format!(
            "{signal} to process group {group}: {e}"
        ))),
    }
}

/// Whether any process (exited but not yet reaped ones included) is in group `group`.
fn group_has_members(group: Pid) -> Result<bool, IdleError> {
    match killpg(group, None) {
        Ok(()) | Err(Errno::EPERM) => Ok(true),
        Err(Errno::ESRCH) => Ok(false),
        Err(e) => Err(IdleError::Stop(format!(
            "checking process group {group}: {e}"
        ))),
    }
}

#[async_trait]
impl IdleWorkload for CommandWorkload {
    async fn start(&self) -> Result<(), IdleError> {
        let mut guard = self.child.lock().await;
        if let Some(r) = guard.as_mut()
            && matches!(r.child.try_wait(), Ok(None))
        {
            return Ok(());
        }
        // A child that exited on its own may have left members of its group behind.
        if let Some(exited) = guard.take() {
            self.terminate(exited).await?;
        }
        let spawned = Command::new(&self.program)
            .args(&self.args)
            .stdin(std::process::Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(IdleError::Start)?;
        let group = spawned
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .map(Pid::from_raw)
            .ok_or_else(|| {
                IdleError::Start(std::io::Error::other("the spawned child has no process id"))
            })?;
        tracing::info!(program = %self.program, pid = group.as_raw(), "idle workload started");
        *guard = Some(Running {
            child: spawned,
            group,
        });
        self.set_running(true);
        Ok(())
    }

    async fn stop(&self) -> Result<(), IdleError> {
        let mut guard = self.child.lock().await;
        let Some(running) = guard.take() else {
            return Ok(());
        };
        self.set_running(false);
        self.terminate(running).await
    }

    fn is_running(&self) -> bool {
        *self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for CommandWorkload {
    fn drop(&mut self) {
        // The child itself is killed and reaped by `kill_on_drop`; this ends the rest of its
        // group. Best effort: nothing can be reported from a drop.
        if let Some(running) = self.child.get_mut() {
            let _ = killpg(running.group, Signal::SIGKILL);
        }
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
    /// The node was stopped by its operator: the workload does not run until it starts again.
    suspended: bool,
}

/// Where the idle workload stands ([`IdleController::status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IdleStatus {
    /// It is running now.
    pub running: bool,
    /// The node is stopped, and the workload with it.
    pub suspended: bool,
    /// Seconds since the node last had work.
    pub idle_for_s: u64,
    /// The network's demand as the dispatcher last reported it (basis points); `None` before
    /// the first report.
    pub demand_bps: Option<u16>,
    /// Seconds without work before it may start.
    pub idle_s_min: u64,
    /// Demand at or below which the network counts as quiet.
    pub demand_bps_max: u16,
}

impl IdleState {
    /// A node that started (and so last "worked") at `now_s`, with unknown (high) demand.
    pub fn new(policy: IdlePolicy, now_s: u64) -> Self {
        Self {
            policy,
            last_work_s: now_s,
            demand_bps: u16::MAX,
            running: false,
            suspended: false,
        }
    }

    /// The operator stopped (`true`) or started (`false`) the node at `now_s`: a stopped
    /// node's workload is stopped and does not start; a started node counts as having just
    /// worked, so the workload waits a whole idle time again.
    pub fn suspend(&mut self, suspended: bool, now_s: u64) -> IdleAction {
        self.suspended = suspended;
        if !suspended {
            self.last_work_s = self.last_work_s.max(now_s);
        }
        self.tick(now_s)
    }

    /// Where it stands at `now_s`.
    pub fn status(&self, now_s: u64) -> IdleStatus {
        IdleStatus {
            running: self.running,
            suspended: self.suspended,
            idle_for_s: now_s.saturating_sub(self.last_work_s),
            demand_bps: (self.demand_bps != u16::MAX).then_some(self.demand_bps),
            idle_s_min: self.policy.idle_s_min,
            demand_bps_max: self.policy.demand_bps_max,
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
        let quiet = !self.suspended
            && now_s.saturating_sub(self.last_work_s) >= self.policy.idle_s_min
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

    /// The node was stopped (`true`: the workload stops and stays stopped) or started again
    /// (see [`IdleState::suspend`]).
    pub async fn suspend(&self, suspended: bool, now_s: u64) {
        let action = self.with_state(|s| s.suspend(suspended, now_s));
        self.apply(action).await;
    }

    /// Where the workload stands at `now_s`.
    pub fn status(&self, now_s: u64) -> IdleStatus {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .status(now_s)
    }
}

#[cfg(test)]
mod tests {
    use nix::sys::signal::kill;

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

    #[test]
    fn a_stopped_node_runs_no_workload_and_waits_a_whole_idle_time_once_started() {
        let policy = IdlePolicy {
            idle_s_min: 60,
            demand_bps_max: 1_000,
        };
        let mut s = IdleState::new(policy, 0);
        assert_eq!(s.on_demand(0, 100), IdleAction::Start);
        assert_eq!(s.suspend(true, 101), IdleAction::Stop);
        assert_eq!(s.tick(500), IdleAction::None);
        assert_eq!(s.on_demand(0, 501), IdleAction::None);
        let status = s.status(502);
        assert!(status.suspended && !status.running);
        assert_eq!(status.demand_bps, Some(0));
        assert_eq!(s.suspend(false, 600), IdleAction::None);
        assert_eq!(s.tick(659), IdleAction::None);
        assert_eq!(s.tick(660), IdleAction::Start);
        assert_eq!(s.status(661).idle_for_s, 61);
        assert_eq!(IdleState::new(policy, 0).status(5).demand_bps, None);
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

    /// Whether process `pid` has ended: gone, or a zombie waiting for its reaper (its
    /// parent, or init for an orphan).
    fn ended(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            // The state follows the command name, which is in parentheses.
            Ok(stat) => matches!(
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.trim_start().chars().next()),
                Some('Z' | 'X')
            ),
        }
    }

    /// Starts `sh -c script` with `$PIDFILE` naming a file the script writes a pid into;
    /// returns the workload, the child's pid and the pid the script wrote.
    async fn start_with_grandchild(script: &str, grace: Duration) -> (CommandWorkload, i32, i32) {
        let pidfile = std::env::temp_dir().join(format!(
            "crat-idle-group-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        let _ = std::fs::remove_file(&pidfile);
        let w = CommandWorkload::new(
            "sh",
            vec![
                "-c".into(),
                script.into(),
                "sh".into(),
                pidfile.display().to_string(),
            ],
            grace,
        );
        w.start().await.unwrap();
        let child = i32::try_from(w.pid().await.unwrap()).unwrap();
        let mut grandchild = None;
        for _ in 0..10_000 {
            if let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
            {
                grandchild = Some(pid);
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let _ = std::fs::remove_file(&pidfile);
        let grandchild = grandchild.expect("the script never wrote its grandchild's pid");
        assert_ne!(child, grandchild);
        assert!(!ended(grandchild), "the grandchild runs");
        (w, child, grandchild)
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    // The pid is written to a temporary name and renamed, so it is never read half-written.
    const WRITE_PID: &str = r#"echo $! > "$1.tmp"; mv "$1.tmp" "$1""#;

    #[tokio::test]
    async fn stopping_ends_what_the_workload_started() {
        let script = format!("sleep 1000 & {WRITE_PID}; sleep 1000");
        let (w, child, grandchild) = start_with_grandchild(&script, Duration::from_secs(2)).await;
        w.stop().await.unwrap();
        assert!(ended(child), "the child {child} still runs");
        // Without the process group, SIGTERM to the child left this one running.
        for _ in 0..1_000 {
            if ended(grandchild) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(ended(grandchild), "the grandchild {grandchild} still runs");
        assert!(!w.is_running());
    }

    #[tokio::test]
    async fn a_grandchild_ignoring_sigterm_is_killed_after_grace() {
        let script = format!(r#"(trap '' TERM; exec sleep 1000) & {WRITE_PID}; sleep 1000"#);
        let grace = Duration::from_millis(300);
        let (w, child, grandchild) = start_with_grandchild(&script, grace).await;
        let t = std::time::Instant::now();
        w.stop().await.unwrap();
        // The child went at SIGTERM; the group stayed until SIGKILL at the end of the grace.
        assert!(t.elapsed() >= grace);
        assert!(ended(child), "the child {child} still runs");
        for _ in 0..1_000 {
            if ended(grandchild) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(ended(grandchild), "the grandchild {grandchild} still runs");
    }

    #[tokio::test]
    async fn what_an_exited_launcher_left_behind_is_stopped() {
        // The child starts the real work in the background and exits at once.
        let script = format!("sleep 1000 & {WRITE_PID}");
        let (w, _, grandchild) = start_with_grandchild(&script, Duration::from_secs(2)).await;
        w.stop().await.unwrap();
        for _ in 0..1_000 {
            if ended(grandchild) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(ended(grandchild), "the grandchild {grandchild} still runs");
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
