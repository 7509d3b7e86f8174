//! How a node's threads share its CPU: network work does not preempt model runs.
//!
//! On a CPU node the cores are busy running models while packets, timers and answers keep
//! waking the node's network threads (tokio's). Under Linux's default policy each of those
//! wake-ups preempts the run on that core, and the run then refills its caches.
//! [`network_thread`] puts the calling thread under `SCHED_BATCH`: it keeps its nice value
//! and its fair share of the CPU, but a wake-up no longer preempts the thread running; it
//! waits for an idle core or for the end of that thread's time slice. An idle core takes
//! it at once, so a node with spare CPU (one task in flight, a GPU node) answers as before.
//! The node's run threads (started from its network threads, so under `SCHED_BATCH` by
//! inheritance) put themselves back under the default policy with [`run_thread`], and keep
//! preempting as usual.
//!
//! The price: on a machine whose cores are saturated by *other* programs, a batch thread
//! waits for them too. Measured (benches/compare, tiny CNN, SDK side, two `yes` processes
//! beside it on the 2 cores, 2026-12-06 23:17–23:20): at 64 in flight 14,141 / 14,932
//! tasks/s against 13,189 / 14,131 under the default policy, but at one in flight 719 / 470
//! tasks/s (p99 7.8–8.0 ms) against 2,430 / 2,329 (p99 4.1–4.2 ms). So `crat node` uses it
//! only on a node without a GPU, whose runs are what keeps its cores busy; a GPU node's
//! runs leave the CPU to its network threads, which keep preempting the machine's other
//! programs as before. `[node] network_threads_yield` in `crat node`'s settings overrides
//! that choice either way.
//!
//! A daemon composed from these crates sets it with
//! [`tokio::runtime::Builder::on_thread_start`]:
//!
//! ```
//! let rt = tokio::runtime::Builder::new_multi_thread()
//!     .enable_all()
//!     .on_thread_start(crat_node::priority::network_thread)
//!     .build()
//!     .unwrap();
//! // Tasks run on the runtime's worker threads.
//! let batch = rt.block_on(async {
//!     tokio::spawn(async { crat_node::priority::is_network_thread() }).await.unwrap()
//! });
//! assert_eq!(batch, cfg!(target_os = "linux"));
//! ```
//!
//! Elsewhere than Linux, or if the kernel refuses, nothing changes but the speed of a node
//! whose CPU is saturated.

/// Puts the calling thread under `SCHED_BATCH`, for `on_thread_start` of the runtime a
/// node's network work runs on (threads it starts inherit it). A refusal is logged at debug
/// level; nothing else changes.
pub fn network_thread() {
    #[cfg(target_os = "linux")]
    if let Err(e) = set_policy(libc::SCHED_BATCH) {
        tracing::debug!(error = %e, "network thread left under the default scheduling policy");
    }
}

/// Puts the calling thread back under the default policy (`SCHED_OTHER`, which any thread
/// may return to): each of the node's run threads calls it first.
pub fn run_thread() {
    #[cfg(target_os = "linux")]
    if let Err(e) = set_policy(libc::SCHED_OTHER) {
        tracing::debug!(error = %e, "run thread left under its inherited scheduling policy");
    }
}

/// Puts the calling thread under `SCHED_IDLE`: it runs only on a core nothing else wants, for
/// work made ahead of time (the receipts' signing nonces, `crate::receipts`). A refusal is
/// logged at debug level; the thread then keeps its inherited policy.
pub(crate) fn idle_thread() {
    #[cfg(target_os = "linux")]
    if let Err(e) = set_policy(libc::SCHED_IDLE) {
        tracing::debug!(error = %e, "idle thread left under its inherited scheduling policy");
    }
}

/// Whether the calling thread runs under `SCHED_BATCH` ([`network_thread`] was called on
/// it); always `false` elsewhere than Linux.
pub fn is_network_thread() -> bool {
    #[cfg(target_os = "linux")]
    {
        policy_of("thread-self") == Some(libc::SCHED_BATCH)
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// `sched_setscheduler(0, policy)` for a policy without a static priority.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set_policy(policy: libc::c_int) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param` that outlives the call, which only reads it;
    // pid 0 names the calling thread.
    let done = unsafe { libc::sched_setscheduler(0, policy, &raw const param) };
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The scheduling policy of `/proc/{task}` (`thread-self`, or `self/task/{tid}`): field 41
/// of its `stat`, read after the command name (which may hold spaces and parentheses).
#[cfg(target_os = "linux")]
pub(crate) fn policy_of(task: &str) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{task}/stat")).ok()?;
    let (_, after_comm) = stat.rsplit_once(')')?;
    // Fields from the third (state) on; the policy is the 41st of the whole line.
    after_comm.split_whitespace().nth(41 - 3)?.parse().ok()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_network_thread_is_batch_and_a_run_thread_it_starts_is_not() {
        std::thread::spawn(|| {
            assert_eq!(policy_of("thread-self"), Some(libc::SCHED_OTHER));
            assert!(!is_network_thread());
            network_thread();
            assert!(is_network_thread());
            let child = std::thread::spawn(|| {
                let inherited = policy_of("thread-self");
                run_thread();
                (inherited, policy_of("thread-self"))
            })
            .join()
            .unwrap();
            assert_eq!(child, (Some(libc::SCHED_BATCH), Some(libc::SCHED_OTHER)));
            assert!(is_network_thread());
        })
        .join()
        .unwrap();
        assert!(!is_network_thread(), "only the thread that asked");
    }
}
