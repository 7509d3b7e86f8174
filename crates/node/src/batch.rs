//! Dynamic batching, as Triton does it: requests for the same model whose inputs agree on
//! everything but the batch (outermost) dimension are stacked into one run, up to
//! [`BatchConfig::batch_size_max`] rows or until the oldest has waited
//! [`BatchConfig::queue_delay_us_max`], and the outputs are split back row by row.
//!
//! - Models without a batch dimension on every input and output run one request at a time.
//! - If a merged run fails, each of its requests is rerun alone, so one bad request never
//!   fails its neighbours.
//! - Every run has a time limit and catches backend panics; the queue is bounded and a full
//!   queue answers [`RunError::Busy`] at once.
//! - The best batch size depends on model and backend (tract runs PaddleOCR *slower* per item
//!   at batch 32 than at batch 1), so [`measure_batch_size`] picks it by timing the model.
//!   A model with symbolic sizes besides the batch dimension (an image model taking any
//!   height and width) has no shape to time at load: [`Batcher::measure_while_serving`]
//!   times the batches it actually serves instead, at each candidate size in turn.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crat_backend::{BackendError, Dim, LoadedModel, ModelInfo};
use crat_core::tensor::{DType, Tensor};
use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

/// Batching limits for one model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most rows (summed batch dimension) in one run. 1 disables merging.
    pub batch_size_max: u32,
    /// Longest a request waits for company before its batch runs. Default 0: a batch takes
    /// whatever is queued when a worker frees up, which adds no latency at low load and
    /// still forms full batches under load (requests queue while the worker is busy).
    pub queue_delay_us_max: u64,
    /// Requests waiting per model; beyond it callers get [`RunError::Busy`]. Default 1024.
    pub queue_len_max: usize,
    /// Runs of this model in progress at once. Default 1.
    pub workers: usize,
    /// Time limit of one run. Default 30 s.
    pub run_timeout_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            batch_size_max: 32,
            queue_delay_us_max: 0,
            queue_len_max: 1024,
            workers: 1,
            run_timeout_ms: 30_000,
        }
    }
}

/// Why a request did not produce outputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The model's queue is full; try later or elsewhere.
    #[error("model queue is full")]
    Busy,
    /// The run exceeded its time limit.
    #[error("run exceeded its time limit of {0} ms")]
    Timeout(u64),
    /// The backend refused or failed the request.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The batcher has stopped (model unloaded).
    #[error("model is no longer loaded")]
    Stopped,
}

type Reply = oneshot::Sender<Result<Vec<Tensor>, RunError>>;

/// What one backend run gives.
type RunResult = Result<Vec<Tensor>, BackendError>;

struct Job {
    inputs: Vec<Tensor>,
    rows: u64,
    enqueued: Instant,
    reply: Reply,
}

/// The stacking key: per input, its dtype and every dimension but the first.
type Key = Vec<(DType, Vec<u64>)>;

fn key(inputs: &[Tensor]) -> Key {
    inputs
        .iter()
        .map(|t| (t.dtype(), t.shape().get(1..).unwrap_or_default().to_vec()))
        .collect()
}

/// Rows of a request: the common outermost dimension of its inputs, or `None` when they
/// disagree (such a request always runs alone).
fn rows(inputs: &[Tensor]) -> Option<u64> {
    let first = *inputs.first()?.shape().first()?;
    inputs
        .iter()
        .all(|t| t.shape().first() == Some(&first))
        .then_some(first)
}

/// A model's batching queue. Cheap to clone; the run threads stop once every clone is
/// dropped and the requests still queued have run.
///
/// Each worker is a thread of its own that takes the next batch from the queue as soon as
/// it finishes a run, so under load a request costs no thread hand-off but the answer; a
/// watchdog thread answers [`RunError::Timeout`] for a run past its limit.
///
/// A quick model runs on the caller's thread instead, when nothing is queued or running:
/// after [`INLINE_AFTER_QUICK_RUNS`] runs in a row took at most [`INLINE_RUN_NS_MAX`] each,
/// a request of no more input bytes than theirs skips both hand-offs (to the run thread and
/// back), which is most of the latency a small model adds. One such run at a time. It goes
/// on while most runs stay quick: each quick run adds one to the model's score (at most
/// [`INLINE_SCORE_MAX`]), a run past the quick limit takes [`INLINE_SLOW_RUN_COST`] away, and
/// requests run inline while the score is at least [`INLINE_AFTER_QUICK_RUNS`]. So a run
/// preempted now and then (one in nine took longer than 50 µs on a busy 2-core VM) no longer
/// sends the next ones back to the run threads, while a model slow one run in five or more
/// drops out. A run longer than [`INLINE_RESET_NS`] starts the count again from zero, and one
/// on the caller's thread that takes longer than [`INLINE_SLOW_NS`] turns it off for the model
/// for good, so a caller's thread is never held for long twice.
#[derive(Clone)]
pub struct Batcher {
    handle: Arc<Handle>,
    config: BatchConfig,
}

/// Closes the queue when the last [`Batcher`] clone goes.
struct Handle(Arc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.state.lock().closed = true;
        self.0.work.notify_all();
        self.0.watch.notify_all();
    }
}

struct Shared {
    model: Arc<dyn LoadedModel>,
    config: BatchConfig,
    /// `config.batch_size_max` until a measurement while serving replaces it.
    batch_size_max: AtomicU32,
    /// True while `explore` holds a measurement in progress.
    exploring: AtomicBool,
    /// The measurement while serving ([`Batcher::measure_while_serving`]).
    explore: Mutex<Option<Explore>>,
    /// Its result, once it chose.
    tuning: Mutex<Option<BatchTuning>>,
    state: Mutex<State>,
    /// Run threads wait on it for requests.
    work: Condvar,
    /// One slot per worker: the replies of the run in progress and its deadline. Whoever
    /// takes the replies answers them: the worker when the run ends, the watchdog when it
    /// is past its limit.
    running: Mutex<Vec<Option<Running>>>,
    /// Wakes the watchdog early (on close).
    watch: Condvar,
    /// Run threads still alive.
    workers_alive: AtomicUsize,
    /// Runs in progress on the run threads.
    runs_active: AtomicUsize,
    inline: Inline,
}

/// Runs of at most this many nanoseconds count as quick (100 µs: what an async task may take
/// between two awaits). A model's run inside a serving node costs more than in a loop (the
/// network's work between runs takes its caches): the tiny CNN took 21.7 µs a run in
/// `cargo bench --bench backends` and 40–53 µs inside a node serving one request at a time
/// (2-core VM, 2026-12-07). With 50 µs, one run in six went to the run threads and the score
/// hovered around the limit. With 100 µs, the SDK side of `benches/compare` at one in flight
/// (three alternated invocations of four measured runs each) had p50 0.168–0.184 ms against
/// 0.184–0.194 ms, p99 0.262–0.320 ms (median 0.293) against 0.290–0.328 ms (median 0.302),
/// and 0.242 ms of CPU per task against 0.252 (medians).
pub const INLINE_RUN_NS_MAX: u64 = 100_000;
/// Quick runs in a row before requests run on the caller's thread: the score inlining
/// needs (see [`Batcher`]).
pub const INLINE_AFTER_QUICK_RUNS: u32 = 16;
/// Highest score: how much credit quick runs build up against slow ones.
pub const INLINE_SCORE_MAX: u32 = 32;
/// What a run past [`INLINE_RUN_NS_MAX`] takes from the score: inlining holds while at most
/// about one run in five is slow.
pub const INLINE_SLOW_RUN_COST: u32 = 4;
/// A run longer than this (1 ms: twenty times the quick limit) sets the score back to zero.
pub const INLINE_RESET_NS: u64 = 1_000_000;
/// A run on the caller's thread that takes longer than this (100 ms, far beyond a
/// scheduler's time slice, so a model whose run time depends on the values it is given)
/// turns inlining off for the model.
pub const INLINE_SLOW_NS: u64 = 100_000_000;

/// When a request may run on the caller's thread.
#[derive(Default)]
struct Inline {
    /// Quick single-request runs, less [`INLINE_SLOW_RUN_COST`] per slow one, between zero
    /// and [`INLINE_SCORE_MAX`].
    quick_runs: AtomicU32,
    /// The most input bytes among the quick runs since the score was last zero: larger
    /// requests go to the run threads.
    quick_bytes: AtomicU64,
    /// A run on a caller's thread is in progress.
    busy: AtomicBool,
    /// Off for good (a run on a caller's thread was slow).
    off: AtomicBool,
}

impl Inline {
    /// Counts a single-request run of `bytes` input bytes that took `ns`.
    fn record(&self, bytes: u64, ns: u64) {
        if ns <= INLINE_RUN_NS_MAX {
            self.quick_bytes.fetch_max(bytes, Ordering::Relaxed);
            let _ = self
                .quick_runs
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some((n + 1).min(INLINE_SCORE_MAX))
                });
            return;
        }
        let score = if ns > INLINE_RESET_NS {
            self.quick_runs.store(0, Ordering::Relaxed);
            0
        } else {
            let before = self
                .quick_runs
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(INLINE_SLOW_RUN_COST))
                })
                .unwrap_or(0);
            before.saturating_sub(INLINE_SLOW_RUN_COST)
        };
        if score == 0 {
            self.quick_bytes.store(0, Ordering::Relaxed);
        }
    }

    /// Claims the one inline slot for a request of `bytes`, when runs so far allow it.
    fn claim(&self, bytes: u64) -> bool {
        !self.off.load(Ordering::Relaxed)
            && self.quick_runs.load(Ordering::Relaxed) >= INLINE_AFTER_QUICK_RUNS
            && bytes <= self.quick_bytes.load(Ordering::Relaxed)
            && self
                .busy
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
    }
}

struct State {
    queue: VecDeque<Job>,
    closed: bool,
}

struct Running {
    deadline: Instant,
    replies: Vec<Reply>,
}

impl Batcher {
    /// Starts batching for `model`: `config.workers` run threads and a watchdog. Fails only
    /// when the operating system refuses a thread.
    pub fn spawn(model: Arc<dyn LoadedModel>, mut config: BatchConfig) -> std::io::Result<Self> {
        if !model.info().batchable() {
            config.batch_size_max = 1;
        }
        config.batch_size_max = config.batch_size_max.max(1);
        config.workers = config.workers.max(1);
        config.queue_len_max = config.queue_len_max.max(1);
        let shared = Arc::new(Shared {
            model,
            config,
            batch_size_max: AtomicU32::new(config.batch_size_max),
            exploring: AtomicBool::new(false),
            explore: Mutex::new(None),
            tuning: Mutex::new(None),
            state: Mutex::new(State {
                queue: VecDeque::new(),
                closed: false,
            }),
            work: Condvar::new(),
            running: Mutex::new((0..config.workers).map(|_| None).collect()),
            watch: Condvar::new(),
            workers_alive: AtomicUsize::new(0),
            runs_active: AtomicUsize::new(0),
            inline: Inline::default(),
        });
        // From here on a failure closes what was started.
        let handle = Arc::new(Handle(shared.clone()));
        for slot in 0..config.workers {
            shared.workers_alive.fetch_add(1, Ordering::AcqRel);
            let s = shared.clone();
            let started = std::thread::Builder::new()
                .name("crat-run".into())
                .spawn(move || {
                    crate::priority::run_thread();
                    s.worker(slot)
                });
            if let Err(e) = started {
                shared.workers_alive.fetch_sub(1, Ordering::AcqRel);
                return Err(e);
            }
        }
        let s = shared.clone();
        std::thread::Builder::new()
            .name("crat-run-watch".into())
            .spawn(move || s.watchdog())?;
        Ok(Self { handle, config })
    }

    /// The limits in force (merging is off for models without a batch dimension), with the
    /// batch size a measurement while serving chose, once it has.
    pub fn config(&self) -> BatchConfig {
        BatchConfig {
            batch_size_max: self.handle.0.batch_size_max.load(Ordering::Relaxed),
            ..self.config
        }
    }

    /// Chooses the batch size by timing the batches this batcher serves, for a model whose
    /// symbolic sizes beyond the batch dimension leave nothing to time at load
    /// ([`has_symbolic_inner_size`]). From now on the batches are formed for each of `sizes`
    /// in turn; a run whose rows fill its batch is one sample of that size's time per item:
    /// the run thread's CPU time (stacking, the run, splitting), which a run preempted by
    /// other work on a busy machine does not inflate. That is the run's whole cost when
    /// the backend runs on the calling thread (tract; ONNX Runtime with one intra-op
    /// thread, the default); a backend running a request on a pool of its own threads is
    /// timed by its calling thread's share alone.
    /// Once every size has [`EXPLORE_SAMPLES`], the size with the lowest time per item in
    /// its best run is kept (a larger one must be at least 5 % faster, as in
    /// [`measure_batch_size`]): the best, because what a busy machine adds to a run (caches
    /// emptied by other work) only ever adds. A size is first tried once the next smaller
    /// one has a sample, and only when that sample's time per item says its batch would
    /// take at most [`EXPLORE_RUN_NS_MAX`]. A size the load does not fill, or whose merged
    /// runs fail, [`EXPLORE_SHORT_MAX`] times in a row, or whose batch takes longer than
    /// that or outlives the run's time limit, is dropped with every larger one. The samples
    /// are real requests on the cores as busy as they are, so no run is spent on measuring;
    /// the choice holds for every shape the model is given. Does nothing for a model
    /// without a batch dimension or an empty `sizes`. It settles for what it has timed after
    /// [`EXPLORE_BATCHES_MAX`] batches.
    pub fn measure_while_serving(&self, sizes: &[u32]) {
        let shared = &self.handle.0;
        if !shared.model.info().batchable() {
            return;
        }
        if let Some(explore) = Explore::new(sizes) {
            *shared.explore.lock() = Some(explore);
            shared.exploring.store(true, Ordering::Release);
        }
    }

    /// What the measurement while serving chose, once it has (`None` before).
    pub fn tuning(&self) -> Option<BatchTuning> {
        self.handle.0.tuning.lock().clone()
    }

    /// Requests waiting now.
    pub fn queued(&self) -> usize {
        self.handle.0.state.lock().queue.len()
    }

    /// Runs one request (inputs validated, in model order) and returns its outputs.
    pub async fn infer(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RunError> {
        let shared = &self.handle.0;
        if let Some(result) = shared.try_inline(&inputs) {
            return result;
        }
        let (reply, rx) = oneshot::channel();
        let job = Job {
            rows: rows(&inputs).unwrap_or(0),
            inputs,
            enqueued: Instant::now(),
            reply,
        };
        {
            let mut state = shared.state.lock();
            if state.queue.len() >= shared.config.queue_len_max {
                return Err(RunError::Busy);
            }
            state.queue.push_back(job);
        }
        shared.work.notify_one();
        rx.await.unwrap_or(Err(RunError::Stopped))
    }
}

impl Shared {
    /// Runs `inputs` on this thread when the model is quick and idle (see [`Batcher`]).
    fn try_inline(&self, inputs: &[Tensor]) -> Option<Result<Vec<Tensor>, RunError>> {
        let bytes = input_bytes(inputs);
        if !self.inline.claim(bytes) {
            return None;
        }
        // Only when nothing waits or runs: otherwise it would overtake them.
        let idle =
            self.runs_active.load(Ordering::Acquire) == 0 && self.state.lock().queue.is_empty();
        let result = idle.then(|| {
            metrics::histogram!(crate::metrics::BATCH_SIZE).record(1.0);
            let started = Instant::now();
            let result = catch_unwind(AssertUnwindSafe(|| self.model.run(inputs)))
                .unwrap_or_else(|panic| Err(BackendError::Panicked(panic_message(&*panic))));
            let ns = elapsed_ns(started);
            if ns > INLINE_SLOW_NS {
                self.inline.off.store(true, Ordering::Relaxed);
            }
            self.inline.record(bytes, ns);
            result.map_err(RunError::Backend)
        });
        self.inline.busy.store(false, Ordering::Release);
        result
    }

    /// One worker: takes a batch as soon as it is free, runs it, answers, again; returns
    /// once the queue is closed and empty.
    fn worker(&self, slot: usize) {
        while let Some((batch, target)) = self.next_batch() {
            metrics::histogram!(crate::metrics::BATCH_SIZE).record(batch.len() as f64);
            let rows: u64 = batch.iter().map(|j| j.rows).sum();
            let cpu = target.and_then(|_| thread_cpu_ns());
            // Runs catch their own panics; this catches one in the stacking or splitting
            // around them, so the thread lives on and the batch's callers, their replies
            // dropped, get `Stopped` instead of waiting for ever.
            let ran = catch_unwind(AssertUnwindSafe(|| self.run_batch(slot, batch)));
            if let Some(target) = target {
                let seen = match ran {
                    Ok(Ran::Done(wall_ns)) => Seen::Rows {
                        rows,
                        // The thread's CPU time, which a preempted run does not inflate;
                        // the wall time where the system has no per-thread clock.
                        ns: cpu
                            .zip(thread_cpu_ns())
                            .map_or(wall_ns, |(before, after)| after.saturating_sub(before)),
                    },
                    // A model that fails merged batches counts them as unfilled: after a
                    // few in a row the size goes, rather than every batch being run twice.
                    Ok(Ran::MergedFailed) => Seen::Rows { rows: 0, ns: 0 },
                    // Past the run's time limit: far too slow a size.
                    Ok(Ran::TimedOut) => Seen::TooSlow,
                    Ok(Ran::Failed) | Err(_) => Seen::Nothing,
                };
                self.explored(target, seen);
            }
            self.runs_active.fetch_sub(1, Ordering::AcqRel);
        }
        self.workers_alive.fetch_sub(1, Ordering::AcqRel);
        self.watch.notify_all();
    }

    /// The next batch: the oldest request and those after it that stack with it, up to
    /// `batch_size_max` rows, waiting for company until the oldest has waited
    /// `queue_delay_us_max`. Requests whose caller is gone are dropped unrun. `None` once
    /// the queue is closed and empty. While measuring, the batch is formed for the size
    /// being measured, which comes back with it.
    fn next_batch(&self) -> Option<(Vec<Job>, Option<u32>)> {
        let mut state = self.state.lock();
        let first = loop {
            match state.queue.pop_front() {
                Some(job) if job.reply.is_closed() => continue,
                Some(job) => break job,
                None if state.closed => return None,
                None => self.work.wait(&mut state),
            }
        };
        // Counted while the queue is locked, so a caller never sees it empty and nothing
        // running while this batch is on its way to run.
        self.runs_active.fetch_add(1, Ordering::AcqRel);
        let target = if self.exploring.load(Ordering::Acquire) {
            self.explore.lock().as_mut().map(Explore::target)
        } else {
            None
        };
        let max = u64::from(target.unwrap_or_else(|| self.batch_size_max.load(Ordering::Relaxed)));
        let mut total = first.rows;
        if max <= 1 || rows(&first.inputs).is_none() || total >= max {
            return Some((vec![first], target));
        }
        let first_key = key(&first.inputs);
        let deadline = first.enqueued + Duration::from_micros(self.config.queue_delay_us_max);
        let mut batch = vec![first];
        while total < max {
            let Some(next) = state.queue.front() else {
                if state.closed || Instant::now() >= deadline {
                    break;
                }
                self.work.wait_until(&mut state, deadline);
                continue;
            };
            if next.reply.is_closed() {
                state.queue.pop_front();
                continue;
            }
            let fits = rows(&next.inputs).is_some()
                && total + next.rows <= max
                && key(&next.inputs) == first_key;
            if !fits {
                // Different shapes (or too many rows): it starts the next batch.
                break;
            }
            let job = state
                .queue
                .pop_front()
                .expect("invariant: front was just seen");
            total += job.rows;
            batch.push(job);
        }
        Some((batch, target))
    }

    /// Counts what a batch formed for the measured size `target` showed; once the
    /// measurement chooses, its size is the one in force.
    fn explored(&self, target: u32, seen: Seen) {
        let mut explore = self.explore.lock();
        let Some(e) = explore.as_mut() else {
            return;
        };
        let tuning = match seen {
            Seen::Rows { rows, ns } => e.record(target, rows, ns),
            Seen::TooSlow => {
                e.drop_from(target);
                e.finished()
            }
            Seen::Nothing => e.finished(),
        };
        let Some(tuning) = tuning else {
            return;
        };
        *explore = None;
        self.exploring.store(false, Ordering::Release);
        self.batch_size_max
            .store(tuning.batch_size_max, Ordering::Relaxed);
        tracing::info!(chosen = tuning.batch_size_max, best_per_item_ns = ?tuning.per_item_ns, "batch size measured while serving");
        *self.tuning.lock() = Some(tuning);
    }

    /// Runs a batch and answers its callers.
    fn run_batch(&self, slot: usize, mut batch: Vec<Job>) -> Ran {
        if batch.len() == 1 {
            let job = batch.pop().expect("invariant: batch has one job");
            return self.run_one(slot, job);
        }
        let counts: Vec<u64> = batch.iter().map(|j| j.rows).collect();
        let total: u64 = counts.iter().sum();
        let merged = stack(&batch);
        let (inputs, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|j| (j.inputs, j.reply)).unzip();
        let started = Instant::now();
        let Some((replies, result)) = self.guarded(slot, &merged, replies) else {
            return Ran::TimedOut; // the watchdog answered every caller
        };
        let ns = elapsed_ns(started);
        drop(merged);
        match result.map(|outs| split(outs, &counts, total)) {
            Ok(Some(parts)) => {
                for (reply, part) in replies.into_iter().zip(parts) {
                    let _ = reply.send(Ok(part));
                }
                Ran::Done(ns)
            }
            // The merged run failed or returned outputs that cannot be split by rows: run
            // each request alone so only the faulty ones fail.
            _ => {
                for (inputs, reply) in inputs.into_iter().zip(replies) {
                    self.run_one(
                        slot,
                        Job {
                            rows: 0,
                            inputs,
                            enqueued: Instant::now(),
                            reply,
                        },
                    );
                }
                Ran::MergedFailed
            }
        }
    }

    /// Runs one request and answers it.
    fn run_one(&self, slot: usize, job: Job) -> Ran {
        let bytes = input_bytes(&job.inputs);
        let started = Instant::now();
        let run = self.guarded(slot, &job.inputs, vec![job.reply]);
        let ns = elapsed_ns(started);
        self.inline.record(bytes, ns);
        let Some((mut replies, result)) = run else {
            return Ran::TimedOut;
        };
        drop(job.inputs);
        let ran = if result.is_ok() {
            Ran::Done(ns)
        } else {
            Ran::Failed
        };
        if let Some(reply) = replies.pop() {
            let _ = reply.send(result.map_err(RunError::Backend));
        }
        ran
    }

    /// Runs `inputs`, catching panics, with `replies` in the worker's slot for the
    /// watchdog; gives them back with the result, or `None` when the watchdog took them
    /// (the run outlived its limit and its callers were told so).
    fn guarded(
        &self,
        slot: usize,
        inputs: &[Tensor],
        replies: Vec<Reply>,
    ) -> Option<(Vec<Reply>, RunResult)> {
        let deadline = Instant::now() + Duration::from_millis(self.config.run_timeout_ms);
        self.running.lock()[slot] = Some(Running { deadline, replies });
        let result = catch_unwind(AssertUnwindSafe(|| self.model.run(inputs)))
            .unwrap_or_else(|panic| Err(BackendError::Panicked(panic_message(&*panic))));
        let running = self.running.lock()[slot].take()?;
        Some((running.replies, result))
    }

    /// Answers [`RunError::Timeout`] to the callers of every run past its limit, checking
    /// a few times per limit (at least once a second); returns once every worker is gone.
    fn watchdog(&self) {
        let limit_ms = self.config.run_timeout_ms;
        let tick = Duration::from_millis((limit_ms / 4).clamp(1, 1_000));
        let mut running = self.running.lock();
        loop {
            let now = Instant::now();
            for slot in running.iter_mut() {
                if slot.as_ref().is_some_and(|r| r.deadline <= now) {
                    for reply in slot.take().into_iter().flat_map(|r| r.replies) {
                        let _ = reply.send(Err(RunError::Timeout(limit_ms)));
                    }
                }
            }
            if self.workers_alive.load(Ordering::Acquire) == 0 {
                return;
            }
            self.watch.wait_for(&mut running, tick);
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Concatenates every job's inputs along the outermost dimension.
fn stack(batch: &[Job]) -> Vec<Tensor> {
    let inputs = batch[0].inputs.len();
    let total: u64 = batch.iter().map(|j| j.rows).sum();
    (0..inputs)
        .map(|i| {
            let first = &batch[0].inputs[i];
            let bytes: usize = batch.iter().map(|j| j.inputs[i].bytes().len()).sum();
            let mut data = Vec::with_capacity(bytes);
            for job in batch {
                data.extend_from_slice(job.inputs[i].bytes());
            }
            let mut shape = first.shape().to_vec();
            shape[0] = total;
            Tensor::new(first.dtype(), shape, data)
                .expect("invariant: stacking equal-shaped rows keeps shape × size == bytes")
        })
        .collect()
}

/// Splits each output along its outermost dimension into `counts` rows per request, or
/// `None` when an output's batch dimension is not the total number of rows.
fn split(outputs: Vec<Tensor>, counts: &[u64], total: u64) -> Option<Vec<Vec<Tensor>>> {
    let mut parts: Vec<Vec<Tensor>> = vec![Vec::with_capacity(outputs.len()); counts.len()];
    for out in outputs {
        if out.shape().first() != Some(&total) || total == 0 {
            return None;
        }
        let row_bytes = out.bytes().len() / total as usize;
        let mut offset = 0;
        for (part, &n) in parts.iter_mut().zip(counts) {
            let len = row_bytes * n as usize;
            let mut shape = out.shape().to_vec();
            shape[0] = n;
            let t = Tensor::new(
                out.dtype(),
                shape,
                out.bytes()[offset..offset + len].to_vec(),
            )
            .ok()?;
            offset += len;
            part.push(t);
        }
    }
    Some(parts)
}

/// Per-item run time at each tried batch size, and the size chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchTuning {
    /// The batch size with the lowest time per item.
    pub batch_size_max: u32,
    /// (batch size, nanoseconds per item in its best run), for each size tried.
    pub per_item_ns: Vec<(u32, u64)>,
}

/// What a batch formed for a measured size showed the measurement.
enum Seen {
    /// A run of `rows` (0: a merged run that failed) that took `ns`.
    Rows { rows: u64, ns: u64 },
    /// A run past the time limit.
    TooSlow,
    /// A failed run, which says nothing about the size.
    Nothing,
}

/// How a batch's run went.
enum Ran {
    /// It succeeded in this many nanoseconds (wall time).
    Done(u64),
    /// Its requests were merged, the merged run failed (or its outputs could not be split by
    /// rows), and each was rerun alone.
    MergedFailed,
    /// It failed or panicked.
    Failed,
    /// It outlived the run's time limit (its callers were answered `Timeout`).
    TimedOut,
}

/// Nanoseconds since `started` (saturating).
fn elapsed_ns(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Input bytes of a request: what the quick runs that allow inlining are compared by.
fn input_bytes(inputs: &[Tensor]) -> u64 {
    inputs.iter().map(|t| t.bytes().len() as u64).sum()
}

/// CPU time this thread has used, in nanoseconds (`None` where the system cannot say).
fn thread_cpu_ns() -> Option<u64> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).ok()?;
    let ns = i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec());
    u64::try_from(ns).ok()
}

/// Full batches timed per candidate size by [`Batcher::measure_while_serving`].
pub const EXPLORE_SAMPLES: u32 = 8;
/// A candidate size whose full batch takes longer than this (100 ms of the run thread's CPU)
/// is dropped by [`Batcher::measure_while_serving`] with every larger one: its callers wait
/// that long, and batching's gains per item show at far smaller sizes.
pub const EXPLORE_RUN_NS_MAX: u64 = 100_000_000;
/// Batches in a row formed for a candidate size that the queue could not fill, after which
/// [`Batcher::measure_while_serving`] drops that size and every larger one.
pub const EXPLORE_SHORT_MAX: u32 = 8;
/// Batches a measurement while serving forms before it settles for what it has timed (the
/// smallest size when nothing): requests that all fail, or all carry more rows than a size,
/// would otherwise keep it from ever finishing.
pub const EXPLORE_BATCHES_MAX: u32 = 4_096;
/// Runs a measurement at load makes per batch size (the best counts).
pub const MEASURE_REPS: u32 = 3;

/// A measurement while serving ([`Batcher::measure_while_serving`]): candidate sizes,
/// ascending, each with the best time per item of its full batches so far.
#[derive(Debug)]
struct Explore {
    candidates: Vec<Candidate>,
    /// Index of the candidate the last batch was formed for.
    last: usize,
    /// Batches formed so far (at most [`EXPLORE_BATCHES_MAX`] count).
    batches: u32,
}

#[derive(Debug)]
struct Candidate {
    size: u32,
    /// Full batches timed.
    samples: u32,
    /// The fewest nanoseconds per item among them.
    best_ns: u64,
    /// Batches in a row formed for this size that the queue could not fill.
    short: u32,
}

impl Explore {
    /// Over `sizes` (0 ignored, duplicates once); `None` when none is left.
    fn new(sizes: &[u32]) -> Option<Self> {
        let mut sizes: Vec<u32> = sizes.iter().copied().filter(|&n| n > 0).collect();
        sizes.sort_unstable();
        sizes.dedup();
        if sizes.is_empty() {
            return None;
        }
        Some(Self {
            batches: 0,
            last: sizes.len() - 1,
            candidates: sizes
                .into_iter()
                .map(|size| Candidate {
                    size,
                    samples: 0,
                    best_ns: u64::MAX,
                    short: 0,
                })
                .collect(),
        })
    }

    /// The size the next batch is formed for: the candidates still short of samples, in
    /// turn, so each is timed under the same conditions as the others. A size is first
    /// tried once the next smaller one has a sample whose time per item says a batch of this
    /// size would take at most [`EXPLORE_RUN_NS_MAX`]; otherwise it goes, with every larger.
    fn target(&mut self) -> u32 {
        self.batches = self.batches.saturating_add(1);
        let too_long = (1..self.candidates.len()).find(|&i| {
            let smaller = &self.candidates[i - 1];
            smaller.samples > 0
                && smaller
                    .best_ns
                    .saturating_mul(u64::from(self.candidates[i].size))
                    > EXPLORE_RUN_NS_MAX
        });
        if let Some(i) = too_long {
            self.candidates.truncate(i);
            self.last = self.last.min(i - 1);
        }
        let n = self.candidates.len();
        for step in 1..=n {
            let i = (self.last + step) % n;
            let open = i == 0 || self.candidates[i - 1].samples > 0;
            if open && self.candidates[i].samples < EXPLORE_SAMPLES {
                self.last = i;
                return self.candidates[i].size;
            }
        }
        // Every candidate is complete; `record` has chosen already, so this is not reached
        // while measuring.
        self.candidates[self.last % n].size
    }

    /// Drops `target` and every larger size, unless it is the smallest.
    fn drop_from(&mut self, target: u32) {
        if let Some(i) = self.candidates.iter().position(|c| c.size == target)
            && i > 0
        {
            self.candidates.truncate(i);
            self.last = i - 1;
        }
    }

    /// Counts a successful run of `rows` formed for `target` that took `ns`: a sample when
    /// the rows filled it, a short batch when they did not. Gives the choice once every
    /// remaining candidate has its samples.
    fn record(&mut self, target: u32, rows: u64, ns: u64) -> Option<BatchTuning> {
        let i = self.candidates.iter().position(|c| c.size == target)?;
        let c = &mut self.candidates[i];
        let drop_from_here = match rows.cmp(&u64::from(target)) {
            std::cmp::Ordering::Equal => {
                c.short = 0;
                c.samples = c.samples.saturating_add(1);
                c.best_ns = c.best_ns.min(ns / rows);
                // Too slow a batch for its callers to wait for.
                ns > EXPLORE_RUN_NS_MAX
            }
            std::cmp::Ordering::Less => {
                c.short += 1;
                // The load does not queue this many.
                c.short >= EXPLORE_SHORT_MAX
            }
            // A request larger than the size runs alone: it says nothing about the size.
            std::cmp::Ordering::Greater => false,
        };
        // The smallest size stays, whatever it costs: requests are served at it anyway.
        if drop_from_here {
            self.drop_from(target);
        }
        self.finished()
    }

    /// The choice, once every candidate has its samples, or after [`EXPLORE_BATCHES_MAX`]
    /// batches among the candidates timed so far (the smallest size when none was).
    fn finished(&self) -> Option<BatchTuning> {
        let complete = self.candidates.iter().all(|c| c.samples >= EXPLORE_SAMPLES);
        if !complete && self.batches < EXPLORE_BATCHES_MAX {
            return None;
        }
        let per_item_ns: Vec<(u32, u64)> = self
            .candidates
            .iter()
            .filter(|c| c.samples > 0)
            .map(|c| (c.size, c.best_ns))
            .collect();
        Some(BatchTuning {
            batch_size_max: choose(&per_item_ns).unwrap_or(self.candidates[0].size),
            per_item_ns,
        })
    }
}

/// The size with the lowest time per item among `(size, ns per item)`, ascending; a larger
/// size must be at least 5 % faster per item to win, so noise does not buy latency for
/// nothing.
fn choose(per_item_ns: &[(u32, u64)]) -> Option<u32> {
    let mut chosen = *per_item_ns.first()?;
    for &(n, ns) in &per_item_ns[1..] {
        if u128::from(ns) * 100 < u128::from(chosen.1) * 95 {
            chosen = (n, ns);
        }
    }
    Some(chosen.0)
}

/// True when `info` is batchable but an input has a symbolic size beyond the batch dimension,
/// so [`measure_batch_size`] has no shape to time: [`Batcher::measure_while_serving`] times
/// the requests instead.
pub fn has_symbolic_inner_size(info: &ModelInfo) -> bool {
    info.batchable()
        && info.inputs.iter().any(|spec| {
            spec.shape
                .get(1..)
                .unwrap_or_default()
                .iter()
                .any(|d| matches!(d, Dim::Symbolic(_)))
        })
}

/// Times `model` on zero inputs at each of `sizes` (best of `reps` runs) and picks the size
/// with the lowest time per item; a larger size must be at least 5 % faster per item to win,
/// so noise does not buy latency for nothing. Returns `None` when the model has no batch
/// dimension or an input has another symbolic dimension (no shape to time).
pub fn measure_batch_size(
    model: &dyn LoadedModel,
    sizes: &[u32],
    reps: u32,
) -> Option<BatchTuning> {
    let info: &ModelInfo = model.info();
    if !info.batchable() {
        return None;
    }
    let mut per_item_ns = Vec::new();
    for &n in sizes.iter().filter(|&&n| n > 0) {
        let inputs = info
            .inputs
            .iter()
            .map(|spec| {
                let mut shape = vec![u64::from(n)];
                for d in &spec.shape[1..] {
                    match d {
                        Dim::Fixed(v) => shape.push(*v),
                        Dim::Symbolic(_) => return None,
                    }
                }
                Tensor::zeros(spec.dtype, &shape).ok()
            })
            .collect::<Option<Vec<_>>>()?;
        let mut best = u64::MAX;
        for _ in 0..reps.max(1) {
            let t = Instant::now();
            model.run(&inputs).ok()?;
            best = best.min(elapsed_ns(t));
        }
        per_item_ns.push((n, best / u64::from(n)));
    }
    Some(BatchTuning {
        batch_size_max: choose(&per_item_ns)?,
        per_item_ns,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crat_backend::TensorSpec;

    /// A model that sums each row of `x` [N, K] into `y` [N, 1]; a row holding NaN fails the
    /// run, -1 panics, 999 sleeps for a second. It records the rows of every run.
    struct RowSum {
        info: ModelInfo,
        runs: Mutex<Vec<u64>>,
        /// Whether each run was on a run thread (else on a caller's).
        on_run_thread: Mutex<Vec<bool>>,
        /// Fail every run of more than one row.
        fail_merged: AtomicBool,
        /// The scheduling policy of the thread of every run (Linux).
        policies: Mutex<Vec<Option<i32>>>,
    }

    impl RowSum {
        fn new(batchable: bool) -> Arc<Self> {
            let n = if batchable {
                Dim::Symbolic("N".into())
            } else {
                Dim::Fixed(1)
            };
            Arc::new(Self {
                info: ModelInfo {
                    inputs: vec![TensorSpec {
                        name: "x".into(),
                        dtype: DType::F32,
                        shape: vec![n.clone(), Dim::Symbolic("K".into())],
                    }],
                    outputs: vec![TensorSpec {
                        name: "y".into(),
                        dtype: DType::F32,
                        shape: vec![n, Dim::Fixed(1)],
                    }],
                },
                runs: Mutex::new(Vec::new()),
                on_run_thread: Mutex::new(Vec::new()),
                fail_merged: AtomicBool::new(false),
                policies: Mutex::new(Vec::new()),
            })
        }
    }

    impl LoadedModel for RowSum {
        fn info(&self) -> &ModelInfo {
            &self.info
        }
        fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
            let x = inputs[0].to_vec::<f32>().unwrap();
            let (n, k) = (inputs[0].shape()[0], inputs[0].shape()[1] as usize);
            self.runs.lock().unwrap().push(n);
            if n > 1 && self.fail_merged.load(Ordering::Relaxed) {
                return Err(BackendError::Run("no batches".into()));
            }
            self.on_run_thread
                .lock()
                .unwrap()
                .push(std::thread::current().name() == Some("crat-run"));
            #[cfg(target_os = "linux")]
            self.policies
                .lock()
                .unwrap()
                .push(crate::priority::policy_of("thread-self"));
            if x.iter().any(|v| v.is_nan()) {
                return Err(BackendError::Run("NaN in input".into()));
            }
            assert!(!x.contains(&-1.0), "asked to panic");
            if x.contains(&999.0) {
                std::thread::sleep(Duration::from_millis(1_000));
            }
            let sums: Vec<f32> = x.chunks(k).map(|r| r.iter().sum()).collect();
            Ok(vec![Tensor::from_slice(&[n, 1], &sums).unwrap()])
        }
        fn memory_bytes(&self) -> u64 {
            0
        }
    }

    fn rows_of(values: &[f32], k: u64) -> Vec<Tensor> {
        vec![Tensor::from_slice(&[values.len() as u64 / k, k], values).unwrap()]
    }

    /// Polls `f` every millisecond, for at most 10 s (no fixed sleeps: CI may be slow).
    async fn until(f: impl Fn() -> bool) {
        for _ in 0..10_000 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("condition not reached");
    }

    /// Sends a request of `values` in rows of `k` from a task of its own.
    fn spawn_infer(
        b: &Batcher,
        values: Vec<f32>,
        k: u64,
    ) -> tokio::task::JoinHandle<Result<Vec<Tensor>, RunError>> {
        let b = b.clone();
        tokio::spawn(async move { b.infer(rows_of(&values, k)).await })
    }

    /// Starts a run that sleeps a second and returns once it is running.
    async fn occupy(
        b: &Batcher,
        model: &RowSum,
    ) -> tokio::task::JoinHandle<Result<Vec<Tensor>, RunError>> {
        let slow = spawn_infer(b, vec![999.0], 1);
        until(|| model.runs.lock().unwrap().len() == 1).await;
        slow
    }

    /// A batcher of `model` that runs requests one by one, without waiting for company.
    fn unbatched(model: &Arc<RowSum>) -> Batcher {
        let config = BatchConfig {
            batch_size_max: 1,
            ..config()
        };
        Batcher::spawn(model.clone(), config).unwrap()
    }

    fn config() -> BatchConfig {
        BatchConfig {
            batch_size_max: 64,
            queue_delay_us_max: 20_000,
            ..BatchConfig::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_caller_gets_exactly_its_own_rows() {
        let model = RowSum::new(true);
        let b = Batcher::spawn(model.clone(), config()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..40u32 {
            let b = b.clone();
            // Requests of 1 or 2 rows, each row holding distinct values.
            let n = 1 + (i % 2);
            let values: Vec<f32> = (0..n * 3).map(|j| (i * 100 + j) as f32).collect();
            tasks.push(tokio::spawn(async move {
                let out = b.infer(rows_of(&values, 3)).await.unwrap();
                let want: Vec<f32> = values.chunks(3).map(|r| r.iter().sum()).collect();
                assert_eq!(out[0].shape(), &[u64::from(n), 1]);
                assert_eq!(out[0].to_vec::<f32>().unwrap(), want, "request {i}");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let runs = model.runs.lock().unwrap().clone();
        assert_eq!(runs.iter().sum::<u64>(), 60);
        assert!(runs.len() < 40, "requests were merged: {runs:?}");
        assert!(runs.iter().all(|&r| r <= 64));
    }

    /// Started from a network thread (`SCHED_BATCH`, as in `crat node`), a batcher's run
    /// threads still run under the default policy: network work yields to runs, not runs
    /// to each other.
    #[cfg(target_os = "linux")]
    #[test]
    fn run_threads_started_from_a_network_thread_run_under_the_default_policy() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(crate::priority::network_thread)
            .build()
            .unwrap();
        let model = RowSum::new(true);
        let out = rt.block_on(rt.spawn({
            let model = model.clone();
            async move {
                assert!(crate::priority::is_network_thread());
                let b = Batcher::spawn(model, config()).unwrap();
                b.infer(rows_of(&[1.0, 2.0], 2)).await.unwrap()
            }
        }));
        assert_eq!(out.unwrap()[0].to_vec::<f32>().unwrap(), vec![3.0]);
        assert_eq!(*model.on_run_thread.lock().unwrap(), vec![true]);
        assert_eq!(
            *model.policies.lock().unwrap(),
            vec![Some(libc::SCHED_OTHER)]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mixed_shapes_are_not_merged() {
        let model = RowSum::new(true);
        let b = Batcher::spawn(model.clone(), config()).unwrap();
        let (a, c) = tokio::join!(
            b.infer(rows_of(&[1.0, 2.0], 2)),
            b.infer(rows_of(&[1.0, 2.0, 3.0], 3)),
        );
        assert_eq!(a.unwrap()[0].to_vec::<f32>().unwrap(), vec![3.0]);
        assert_eq!(c.unwrap()[0].to_vec::<f32>().unwrap(), vec![6.0]);
        assert_eq!(model.runs.lock().unwrap().len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_or_panicking_request_does_not_fail_its_neighbours() {
        let model = RowSum::new(true);
        let b = Batcher::spawn(model.clone(), config()).unwrap();
        let (good1, bad, good2, panics) = tokio::join!(
            b.infer(rows_of(&[1.0, 1.0], 2)),
            b.infer(rows_of(&[f32::NAN, 1.0], 2)),
            b.infer(rows_of(&[2.0, 2.0], 2)),
            b.infer(rows_of(&[-1.0, 0.0], 2)),
        );
        assert_eq!(good1.unwrap()[0].to_vec::<f32>().unwrap(), vec![2.0]);
        assert_eq!(good2.unwrap()[0].to_vec::<f32>().unwrap(), vec![4.0]);
        assert!(matches!(bad, Err(RunError::Backend(BackendError::Run(_)))));
        assert!(matches!(
            panics,
            Err(RunError::Backend(BackendError::Panicked(_)))
        ));
        // Still serving.
        assert!(b.infer(rows_of(&[5.0], 1)).await.is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn models_without_batch_dim_run_one_by_one() {
        let model = RowSum::new(false);
        let b = Batcher::spawn(model.clone(), config()).unwrap();
        assert_eq!(b.config().batch_size_max, 1);
        let (x, y) = tokio::join!(b.infer(rows_of(&[1.0], 1)), b.infer(rows_of(&[2.0], 1)));
        assert!(x.is_ok() && y.is_ok());
        assert_eq!(*model.runs.lock().unwrap(), vec![1, 1]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn time_limit_and_full_queue() {
        let model = RowSum::new(true);
        let b = Batcher::spawn(
            model.clone(),
            BatchConfig {
                batch_size_max: 1,
                queue_len_max: 2,
                run_timeout_ms: 100,
                ..config()
            },
        )
        .unwrap();
        let slow = occupy(&b, &model).await;
        // One running (its worker is busy), two queued: the next is refused at once.
        let q1 = spawn_infer(&b, vec![1.0], 1);
        let q2 = spawn_infer(&b, vec![1.0], 1);
        until(|| b.queued() == 2).await;
        assert_eq!(b.infer(rows_of(&[1.0], 1)).await, Err(RunError::Busy));
        assert_eq!(slow.await.unwrap(), Err(RunError::Timeout(100)));
        // The queued ones run once the stuck worker comes back.
        assert!(q1.await.unwrap().is_ok());
        assert!(q2.await.unwrap().is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_whose_caller_left_are_not_run_and_threads_stop_with_the_batcher() {
        let model = RowSum::new(true);
        let b = unbatched(&model);
        let slow = occupy(&b, &model).await;
        // Queued behind the slow run, then abandoned: it must not run.
        let gone = spawn_infer(&b, vec![7.0, 7.0], 2);
        until(|| b.queued() == 1).await;
        gone.abort();
        assert!(slow.await.unwrap().is_ok());
        assert_eq!(
            b.infer(rows_of(&[1.0], 1)).await.unwrap()[0]
                .to_vec::<f32>()
                .unwrap(),
            vec![1.0]
        );
        assert_eq!(
            *model.runs.lock().unwrap(),
            vec![1, 1],
            "the abandoned request ran"
        );
        // The run threads and the watchdog hold the model; they let go once the batcher
        // is dropped.
        drop(b);
        until(|| Arc::strong_count(&model) == 1).await;
    }

    #[test]
    fn inlining_holds_through_an_occasional_slow_run_but_not_a_slow_model() {
        const QUICK: u64 = INLINE_RUN_NS_MAX;
        const SLOW: u64 = INLINE_RUN_NS_MAX + 1;
        let inline = Inline::default();
        let claim = |bytes| {
            let claimed = inline.claim(bytes);
            inline.busy.store(false, Ordering::Release);
            claimed
        };
        for _ in 1..INLINE_AFTER_QUICK_RUNS {
            inline.record(100, QUICK);
        }
        assert!(!claim(100), "fewer quick runs than needed");
        inline.record(100, QUICK);
        assert!(claim(100));
        assert!(!claim(101), "more input bytes than any quick run");
        for _ in 0..INLINE_SCORE_MAX {
            inline.record(100, QUICK);
        }
        // A preempted run now and then, at the rate seen on a busy VM (one in nine): still
        // inline, over many runs.
        for i in 0..900 {
            inline.record(100, if i % 9 == 0 { SLOW } else { QUICK });
            assert!(claim(100), "run {i}");
        }
        // One in three slow: a slow model drops out, and the quick bytes are forgotten.
        let mut out_at = None;
        for i in 0..100 {
            inline.record(100, if i % 3 == 0 { SLOW } else { QUICK });
            if !claim(100) {
                out_at = Some(i);
                break;
            }
        }
        assert!(
            out_at.is_some(),
            "a model slow one run in three stayed inline"
        );
        // Back to quick: inline again after a series, up to the score's ceiling only, so a
        // few slow runs in a row take it out again.
        for _ in 0..1_000 {
            inline.record(100, QUICK);
        }
        assert!(claim(100));
        for _ in 0..(INLINE_SCORE_MAX - INLINE_AFTER_QUICK_RUNS) / INLINE_SLOW_RUN_COST + 1 {
            inline.record(100, SLOW);
        }
        assert!(!claim(100));
        // A run past INLINE_RESET_NS starts again from zero.
        for _ in 0..INLINE_SCORE_MAX {
            inline.record(100, QUICK);
        }
        inline.record(100, INLINE_RESET_NS + 1);
        assert!(!claim(100));
        assert_eq!(inline.quick_bytes.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quick_runs_move_to_the_callers_thread_until_one_is_slow() {
        let model = RowSum::new(true);
        let b = unbatched(&model);
        let last_on_run_thread = || *model.on_run_thread.lock().unwrap().last().unwrap();
        // Quick runs in a row (a run preempted past the limit starts the count again).
        let mut inline_after = None;
        for i in 0..2_000 {
            b.infer(rows_of(&[1.0, 2.0], 2)).await.unwrap();
            if !last_on_run_thread() {
                inline_after = Some(i);
                break;
            }
        }
        let inline_after = inline_after.expect("a quick model never ran on the caller's thread");
        assert!(inline_after >= INLINE_AFTER_QUICK_RUNS as usize);
        // More input bytes than the quick runs had: a run thread.
        let out = b.infer(rows_of(&[1.0, 2.0, 3.0, 4.0], 2)).await.unwrap();
        assert_eq!(out[0].to_vec::<f32>().unwrap(), vec![3.0, 7.0]);
        assert!(last_on_run_thread());
        // Errors and panics on the caller's thread come back as on a run thread.
        for _ in 0..2_000 {
            let bad = b.infer(rows_of(&[f32::NAN, 1.0], 2)).await;
            assert!(matches!(bad, Err(RunError::Backend(BackendError::Run(_)))));
            if !last_on_run_thread() {
                break;
            }
        }
        assert!(!last_on_run_thread(), "never inline again");
        // A slow run on the caller's thread (a second) turns inlining off for good. Quick
        // runs first each time: a slow run on a run thread (or a preempted quick one) starts
        // the series again.
        for _ in 0..20 {
            for _ in 0..INLINE_AFTER_QUICK_RUNS {
                b.infer(rows_of(&[1.0, 2.0], 2)).await.unwrap();
            }
            b.infer(rows_of(&[999.0], 1)).await.unwrap();
            if !last_on_run_thread() {
                break;
            }
        }
        assert!(!last_on_run_thread(), "the slow request never ran inline");
        for _ in 0..50 {
            b.infer(rows_of(&[1.0, 2.0], 2)).await.unwrap();
            assert!(last_on_run_thread());
        }
    }

    #[test]
    fn measure_picks_the_fastest_per_item_size() {
        let model = RowSum::new(true);
        // K is symbolic: nothing to time at load.
        assert!(has_symbolic_inner_size(model.info()));
        assert_eq!(measure_batch_size(model.as_ref(), &[1, 8], 1), None);
        assert!(!has_symbolic_inner_size(RowSum::new(false).info()));
        // A larger size must be at least 5 % faster per item to win.
        assert_eq!(choose(&[(1, 1000), (2, 960), (4, 951)]), Some(1));
        assert_eq!(choose(&[(1, 1000), (2, 940), (4, 880)]), Some(4));
        assert_eq!(choose(&[(1, 1000), (2, 940), (4, 990)]), Some(2));
        assert_eq!(choose(&[]), None);
    }

    /// Feeds `e` full batches of the size it asks for, `ns_per_item(size)` each, until it
    /// chooses; the sizes asked for, in order, and the choice.
    fn explore_until_chosen(
        e: &mut Explore,
        ns_per_item: impl Fn(u32) -> u64,
    ) -> (Vec<u32>, BatchTuning) {
        let mut asked = Vec::new();
        for _ in 0..1_000 {
            let size = e.target();
            asked.push(size);
            let rows = u64::from(size);
            if let Some(t) = e.record(size, rows, ns_per_item(size) * rows) {
                return (asked, t);
            }
        }
        panic!("no choice after 1,000 batches: {e:?}");
    }

    #[test]
    fn measuring_while_serving_takes_each_size_in_turn_and_keeps_the_fastest() {
        assert!(Explore::new(&[]).is_none());
        assert!(Explore::new(&[0]).is_none());
        let mut e = Explore::new(&[4, 1, 2, 2, 0]).unwrap();
        let (asked, t) = explore_until_chosen(&mut e, |n| match n {
            1 => 1_000,
            2 => 900,
            _ => 800,
        });
        // In turn, five full batches each.
        assert_eq!(asked, [1, 2, 4].repeat(EXPLORE_SAMPLES as usize));
        assert_eq!(t.per_item_ns, [(1, 1_000), (2, 900), (4, 800)]);
        assert_eq!(t.batch_size_max, 4);
        // Batching does not pay: one at a time.
        let mut e = Explore::new(&[1, 2, 4]).unwrap();
        let (_, t) = explore_until_chosen(&mut e, |n| 1_000 + u64::from(n));
        assert_eq!(t.batch_size_max, 1);
        // The best run counts, not one slowed by a busy machine.
        let mut e = Explore::new(&[1, 2]).unwrap();
        assert_eq!(e.target(), 1);
        assert_eq!(e.record(1, 1, 50_000), None);
        assert_eq!(e.target(), 2);
        assert_eq!(e.record(2, 2, 2 * 700), None);
        let (_, t) = explore_until_chosen(&mut e, |n| if n == 1 { 1_000 } else { 800 });
        assert_eq!(t.per_item_ns, [(1, 1_000), (2, 700)]);
        // A size whose batch runs past the limit goes, with every larger one; the smallest
        // stays whatever it costs.
        let mut e = Explore::new(&[1, 2, 4, 8]).unwrap();
        let (asked, t) = explore_until_chosen(&mut e, |n| EXPLORE_RUN_NS_MAX / 3 + u64::from(n));
        // A batch of 4 would take 4/3 of the limit by 2's time per item: 4 and 8 are never
        // tried.
        assert_eq!(&asked[..2], [1, 2]);
        assert!(asked.iter().all(|&n| n <= 2), "{asked:?}");
        // A batch that did take longer goes at once; so does one past the time limit.
        let mut e = Explore::new(&[1, 2, 4]).unwrap();
        assert_eq!((e.target(), e.target()), (1, 1));
        assert_eq!(e.record(1, 1, 1_000), None);
        assert_eq!(e.target(), 2);
        assert_eq!(e.record(2, 2, EXPLORE_RUN_NS_MAX + 1), None);
        assert!(e.candidates.iter().all(|c| c.size == 1));
        let mut e = Explore::new(&[1, 2, 4]).unwrap();
        assert_eq!(e.record(1, 1, 1_000), None);
        e.drop_from(4);
        e.drop_from(1);
        assert_eq!(
            e.candidates.iter().map(|c| c.size).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(
            t.per_item_ns.iter().map(|p| p.0).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(t.batch_size_max, 1);
    }

    #[test]
    fn sizes_the_load_does_not_fill_are_dropped() {
        let mut e = Explore::new(&[1, 2, 8, 16]).unwrap();
        // Batches formed for 8 hold 3 rows: short; one that fills in between starts the count
        // again; a request larger than the size says nothing.
        let mut shorts = 0;
        let mut chosen = None;
        for _ in 0..1_000 {
            let size = e.target();
            let rows = match size {
                8 if shorts == 3 => {
                    shorts += 1;
                    8
                }
                8 => {
                    shorts += 1;
                    3
                }
                16 => 17,
                n => u64::from(n),
            };
            if let Some(t) = e.record(size, rows, rows * 1_000 / u64::from(size.min(2))) {
                chosen = Some(t);
                break;
            }
        }
        let t = chosen.expect("a choice");
        // 8 was short EXPLORE_SHORT_MAX times in a row (after its one full batch): it and 16 went.
        assert_eq!(shorts, 1 + 3 + EXPLORE_SHORT_MAX as usize);
        assert_eq!(
            t.per_item_ns.iter().map(|p| p.0).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(t.batch_size_max, 2);
        // A batch formed for a size already dropped is ignored.
        let mut e = Explore::new(&[1, 2]).unwrap();
        assert_eq!(e.record(8, 8, 1), None);
    }

    #[test]
    fn measuring_while_serving_settles_after_its_batch_limit() {
        // Requests that all carry more rows than any size: nothing is ever timed.
        let mut e = Explore::new(&[1, 2]).unwrap();
        let mut formed = 0;
        let t = loop {
            let size = e.target();
            formed += 1;
            if let Some(t) = e.record(size, 3, 1_000) {
                break t;
            }
            assert!(formed < EXPLORE_BATCHES_MAX, "{e:?}");
        };
        assert_eq!(formed, EXPLORE_BATCHES_MAX);
        assert_eq!((t.batch_size_max, t.per_item_ns.len()), (1, 0));
        // Only 1 was timed (2's batches all too large): it is chosen from what there is.
        let mut e = Explore::new(&[1, 2]).unwrap();
        assert_eq!(e.target(), 1);
        assert_eq!(e.record(1, 1, 1_000), None);
        let t = loop {
            let size = e.target();
            let rows = if size == 1 { 1 } else { 5 };
            if let Some(t) = e.record(size, rows, 1_000 * rows) {
                break t;
            }
        };
        assert_eq!(t.per_item_ns, [(1, 1_000)]);
        assert_eq!(t.batch_size_max, 1);
    }

    /// Sends bursts of 8 one-row requests of `k` columns, each caller checking its own
    /// answer, until `b`'s measurement while serving has chosen (at most 2,000 bursts).
    async fn bursts_until_chosen(b: &Batcher, k: u64) -> BatchTuning {
        for burst in 0..2_000u32 {
            if let Some(t) = b.tuning() {
                return t;
            }
            let calls: Vec<_> = (0..8u32)
                .map(|i| {
                    let v = (burst * 8 + i) as f32;
                    let mut row = vec![1.0; k as usize];
                    row[0] = v;
                    (v + (k - 1) as f32, spawn_infer(b, row, k))
                })
                .collect();
            for (sum, call) in calls {
                let out = call.await.unwrap().unwrap();
                assert_eq!(out[0].to_vec::<f32>().unwrap(), [sum]);
            }
        }
        b.tuning().expect("a choice after 2,000 bursts")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_model_without_a_shape_to_time_is_measured_on_the_batches_it_serves() {
        let model = RowSum::new(true);
        let b = unbatched(&model);
        b.measure_while_serving(&[1, 2, 4]);
        assert_eq!(b.tuning(), None);
        assert_eq!(b.config().batch_size_max, 1);
        let t = bursts_until_chosen(&b, 3).await;
        assert_eq!(b.config().batch_size_max, t.batch_size_max);
        assert_eq!(t.per_item_ns[0].0, 1);
        assert!(t.per_item_ns.iter().all(|p| [1, 2, 4].contains(&p.0)));
        // Batches of up to the chosen size only from now on.
        let runs = model.runs.lock().unwrap().len();
        let calls: Vec<_> = (0..16).map(|_| spawn_infer(&b, vec![1.0; 3], 3)).collect();
        for call in calls {
            call.await.unwrap().unwrap();
        }
        let after = model.runs.lock().unwrap()[runs..].to_vec();
        assert!(
            after.iter().all(|&n| n <= u64::from(t.batch_size_max)),
            "{after:?} {t:?}"
        );

        // A model whose merged runs fail keeps one request per run.
        let failing = RowSum::new(true);
        failing.fail_merged.store(true, Ordering::Relaxed);
        let b = unbatched(&failing);
        b.measure_while_serving(&[1, 2, 4]);
        let t = bursts_until_chosen(&b, 1).await;
        assert_eq!((t.batch_size_max, t.per_item_ns.len()), (1, 1), "{t:?}");

        // A batch formed for a size that outlives the run's time limit drops the size.
        let slow = RowSum::new(true);
        let config = BatchConfig {
            batch_size_max: 1,
            run_timeout_ms: 200,
            ..BatchConfig::default()
        };
        let b = Batcher::spawn(slow.clone(), config).unwrap();
        b.measure_while_serving(&[1, 2]);
        b.infer(rows_of(&[1.0], 1)).await.unwrap();
        // The next batch is formed for 2; its run sleeps a second.
        assert_eq!(
            b.infer(rows_of(&[999.0], 1)).await,
            Err(RunError::Timeout(200))
        );
        let t = bursts_until_chosen(&b, 1).await;
        assert_eq!((t.batch_size_max, t.per_item_ns.len()), (1, 1), "{t:?}");

        // A model without a batch dimension is never measured.
        let fixed = RowSum::new(false);
        let b = unbatched(&fixed);
        b.measure_while_serving(&[1, 2]);
        for _ in 0..50 {
            b.infer(rows_of(&[1.0], 1)).await.unwrap();
        }
        assert_eq!(b.tuning(), None);
    }
}
