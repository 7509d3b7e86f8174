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
/// back), which is most of the latency a small model adds. One such run at a time; one past
/// the quick limit needs a new series of quick runs before the next (a preempted run is
/// one), and one that takes longer than [`INLINE_SLOW_NS`] turns it off for the model for
/// good, so a caller's thread is never held for long twice.
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

/// Runs of at most this many nanoseconds count as quick (50 µs: well within what an async
/// task may take between two awaits).
pub const INLINE_RUN_NS_MAX: u64 = 50_000;
/// Quick runs in a row before requests run on the caller's thread.
pub const INLINE_AFTER_QUICK_RUNS: u32 = 16;
/// A run on the caller's thread that takes longer than this (100 ms, far beyond a
/// scheduler's time slice, so a model whose run time depends on the values it is given)
/// turns inlining off for the model.
pub const INLINE_SLOW_NS: u64 = 100_000_000;

/// When a request may run on the caller's thread.
#[derive(Default)]
struct Inline {
    /// Quick single-request runs in a row (saturating).
    quick_runs: AtomicU32,
    /// The most input bytes among those runs: larger requests go to the run threads.
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
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1));
        } else {
            self.quick_runs.store(0, Ordering::Relaxed);
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
                .spawn(move || s.worker(slot));
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

    /// The limits in force (merging is off for models without a batch dimension).
    pub fn config(&self) -> BatchConfig {
        self.config
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
        let bytes: u64 = inputs.iter().map(|t| t.bytes().len() as u64).sum();
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
            let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
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
        while let Some(batch) = self.next_batch() {
            metrics::histogram!(crate::metrics::BATCH_SIZE).record(batch.len() as f64);
            // Runs catch their own panics; this catches one in the stacking or splitting
            // around them, so the thread lives on and the batch's callers, their replies
            // dropped, get `Stopped` instead of waiting for ever.
            let _ = catch_unwind(AssertUnwindSafe(|| self.run_batch(slot, batch)));
            self.runs_active.fetch_sub(1, Ordering::AcqRel);
        }
        self.workers_alive.fetch_sub(1, Ordering::AcqRel);
        self.watch.notify_all();
    }

    /// The next batch: the oldest request and those after it that stack with it, up to
    /// `batch_size_max` rows, waiting for company until the oldest has waited
    /// `queue_delay_us_max`. Requests whose caller is gone are dropped unrun. `None` once
    /// the queue is closed and empty.
    fn next_batch(&self) -> Option<Vec<Job>> {
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
        let max = u64::from(self.config.batch_size_max);
        let mut total = first.rows;
        if max <= 1 || rows(&first.inputs).is_none() || total >= max {
            return Some(vec![first]);
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
        Some(batch)
    }

    fn run_batch(&self, slot: usize, mut batch: Vec<Job>) {
        if batch.len() == 1 {
            let job = batch.pop().expect("invariant: batch has one job");
            self.run_one(slot, job);
            return;
        }
        let counts: Vec<u64> = batch.iter().map(|j| j.rows).collect();
        let total: u64 = counts.iter().sum();
        let merged = stack(&batch);
        let (inputs, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|j| (j.inputs, j.reply)).unzip();
        let Some((replies, result)) = self.guarded(slot, &merged, replies) else {
            return; // past its limit: the watchdog answered every caller
        };
        drop(merged);
        match result.map(|outs| split(outs, &counts, total)) {
            Ok(Some(parts)) => {
                for (reply, part) in replies.into_iter().zip(parts) {
                    let _ = reply.send(Ok(part));
                }
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
            }
        }
    }

    fn run_one(&self, slot: usize, job: Job) {
        let bytes: u64 = job.inputs.iter().map(|t| t.bytes().len() as u64).sum();
        let started = Instant::now();
        let run = self.guarded(slot, &job.inputs, vec![job.reply]);
        self.inline.record(
            bytes,
            u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
        );
        if let Some((mut replies, result)) = run {
            drop(job.inputs);
            if let Some(reply) = replies.pop() {
                let _ = reply.send(result.map_err(RunError::Backend));
            }
        }
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
    /// (batch size, nanoseconds per item), for each size tried.
    pub per_item_ns: Vec<(u32, u64)>,
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
            best = best.min(t.elapsed().as_nanos() as u64);
        }
        per_item_ns.push((n, best / u64::from(n)));
    }
    let mut chosen = *per_item_ns.first()?;
    for &(n, ns) in &per_item_ns[1..] {
        if ns * 100 < chosen.1 * 95 {
            chosen = (n, ns);
        }
    }
    Some(BatchTuning {
        batch_size_max: chosen.0,
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
            self.on_run_thread
                .lock()
                .unwrap()
                .push(std::thread::current().name() == Some("crat-run"));
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
        // K is symbolic: nothing to time.
        assert_eq!(measure_batch_size(model.as_ref(), &[1, 8], 1), None);
    }
}
