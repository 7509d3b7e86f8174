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

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crat_backend::{BackendError, Dim, LoadedModel, ModelInfo};
use crat_core::tensor::{DType, Tensor};
use tokio::sync::{Semaphore, mpsc, oneshot};

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

/// A model's batching queue. Cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
    queued: Arc<AtomicUsize>,
    config: BatchConfig,
}

impl Batcher {
    /// Starts batching for `model`. Must run inside a tokio runtime; the batcher stops when
    /// every clone is dropped.
    pub fn spawn(model: Arc<dyn LoadedModel>, mut config: BatchConfig) -> Self {
        if !model.info().batchable() {
            config.batch_size_max = 1;
        }
        config.batch_size_max = config.batch_size_max.max(1);
        config.workers = config.workers.max(1);
        let (tx, rx) = mpsc::channel(config.queue_len_max.max(1));
        let queued = Arc::new(AtomicUsize::new(0));
        tokio::spawn(batch_loop(model, config, rx, queued.clone()));
        Self { tx, queued, config }
    }

    /// The limits in force (merging is off for models without a batch dimension).
    pub fn config(&self) -> BatchConfig {
        self.config
    }

    /// Requests waiting now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Runs one request (inputs validated, in model order) and returns its outputs.
    pub async fn infer(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RunError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            rows: rows(&inputs).unwrap_or(0),
            inputs,
            enqueued: Instant::now(),
            reply,
        };
        // Counted before sending so the batch loop never decrements below zero.
        self.queued.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.tx.try_send(job) {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(match e {
                mpsc::error::TrySendError::Full(_) => RunError::Busy,
                mpsc::error::TrySendError::Closed(_) => RunError::Stopped,
            });
        }
        rx.await.unwrap_or(Err(RunError::Stopped))
    }
}

async fn batch_loop(
    model: Arc<dyn LoadedModel>,
    config: BatchConfig,
    mut rx: mpsc::Receiver<Job>,
    queued: Arc<AtomicUsize>,
) {
    let workers = Arc::new(Semaphore::new(config.workers));
    let delay = Duration::from_micros(config.queue_delay_us_max);
    let max = u64::from(config.batch_size_max);
    let mut carry: Option<Job> = None;
    loop {
        let Ok(permit) = workers.clone().acquire_owned().await else {
            return;
        };
        let first = match carry.take() {
            Some(job) => job,
            None => match rx.recv().await {
                Some(job) => {
                    queued.fetch_sub(1, Ordering::Relaxed);
                    job
                }
                None => return,
            },
        };
        let mut batch = vec![first];
        let first_key = key(&batch[0].inputs);
        let mut total = batch[0].rows;
        let mergeable = max > 1 && rows(&batch[0].inputs).is_some() && total < max;
        if mergeable {
            let deadline = tokio::time::Instant::from_std(batch[0].enqueued + delay);
            while total < max {
                let next = match rx.try_recv() {
                    Ok(job) => Some(job),
                    // Nothing queued and no time left to wait (always so with no delay):
                    // run now. Not even a zero-length timer: tokio's timers fire on the next
                    // millisecond tick, which would add ~1 ms to every request.
                    Err(mpsc::error::TryRecvError::Empty)
                        if tokio::time::Instant::now() >= deadline =>
                    {
                        None
                    }
                    Err(mpsc::error::TryRecvError::Empty) => {
                        tokio::time::timeout_at(deadline, rx.recv())
                            .await
                            .ok()
                            .flatten()
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                };
                let Some(job) = next else { break };
                queued.fetch_sub(1, Ordering::Relaxed);
                let fits = rows(&job.inputs).is_some()
                    && total + job.rows <= max
                    && key(&job.inputs) == first_key;
                if !fits {
                    // Different shapes (or too many rows): it starts the next batch.
                    carry = Some(job);
                    break;
                }
                total += job.rows;
                batch.push(job);
            }
        }
        metrics::histogram!(crate::metrics::BATCH_SIZE).record(batch.len() as f64);
        let model = model.clone();
        let timeout_ms = config.run_timeout_ms;
        if batch.len() == 1 {
            let job = batch.pop().expect("invariant: batch has one job");
            run_single(model, job, timeout_ms, permit);
        } else {
            tokio::spawn(async move {
                run_batch(model, batch, timeout_ms, permit).await;
            });
        }
    }
}

/// Runs one job with as few hand-offs as possible: the blocking thread that runs the model
/// answers the caller directly (one wake-up), instead of going through a task that awaits the
/// blocking call (three). A timer answers `Timeout` if the run outlives its limit; the worker
/// permit stays with the run, so a stuck run keeps its worker busy, as in [`run_guarded`].
fn run_single(
    model: Arc<dyn LoadedModel>,
    job: Job,
    timeout_ms: u64,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let reply = Arc::new(parking_lot::Mutex::new(Some(job.reply)));
    let answer = move |slot: &parking_lot::Mutex<Option<Reply>>, result| {
        let taken = slot.lock().take();
        if let Some(reply) = taken {
            let _ = reply.send(result);
        }
    };
    let timer = tokio::spawn({
        let reply = reply.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(timeout_ms)).await;
            answer(&reply, Err(RunError::Timeout(timeout_ms)));
        }
    });
    let inputs = job.inputs;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let result = catch_unwind(AssertUnwindSafe(|| model.run(&inputs)))
            .unwrap_or_else(|panic| Err(BackendError::Panicked(panic_message(&*panic))))
            .map_err(RunError::Backend);
        timer.abort();
        answer(&reply, result);
    });
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs `inputs` on a blocking thread with a time limit, catching panics. The worker permit
/// travels with the blocking call, so a run stuck past its limit keeps its worker busy
/// rather than letting stuck threads pile up.
async fn run_guarded(
    model: Arc<dyn LoadedModel>,
    inputs: Vec<Tensor>,
    timeout_ms: u64,
    permit: Arc<tokio::sync::OwnedSemaphorePermit>,
) -> Result<Vec<Tensor>, RunError> {
    let call = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        catch_unwind(AssertUnwindSafe(|| model.run(&inputs)))
            .unwrap_or_else(|panic| Err(BackendError::Panicked(panic_message(&*panic))))
    });
    match tokio::time::timeout(Duration::from_millis(timeout_ms), call).await {
        Ok(Ok(result)) => result.map_err(RunError::Backend),
        Ok(Err(join)) => Err(RunError::Backend(BackendError::Panicked(join.to_string()))),
        Err(_) => Err(RunError::Timeout(timeout_ms)),
    }
}

async fn run_batch(
    model: Arc<dyn LoadedModel>,
    mut batch: Vec<Job>,
    timeout_ms: u64,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let permit = Arc::new(permit);
    if batch.len() == 1 {
        let job = batch.pop().expect("invariant: batch has one job");
        let result = run_guarded(model, job.inputs, timeout_ms, permit).await;
        let _ = job.reply.send(result);
        return;
    }
    let counts: Vec<u64> = batch.iter().map(|j| j.rows).collect();
    let total: u64 = counts.iter().sum();
    let merged = stack(&batch);
    let outputs = run_guarded(model.clone(), merged, timeout_ms, permit.clone()).await;
    match outputs.map(|outs| split(outs, &counts, total)) {
        Ok(Some(parts)) => {
            for (job, part) in batch.into_iter().zip(parts) {
                let _ = job.reply.send(Ok(part));
            }
        }
        Err(RunError::Timeout(ms)) => {
            for job in batch {
                let _ = job.reply.send(Err(RunError::Timeout(ms)));
            }
        }
        // The merged run failed or returned outputs that cannot be split by rows: run each
        // request alone so only the faulty ones fail.
        _ => {
            for job in batch {
                let result =
                    run_guarded(model.clone(), job.inputs, timeout_ms, permit.clone()).await;
                let _ = job.reply.send(result);
            }
        }
    }
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
        let b = Batcher::spawn(model.clone(), config());
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
        let b = Batcher::spawn(model.clone(), config());
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
        let b = Batcher::spawn(model.clone(), config());
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
        let b = Batcher::spawn(model.clone(), config());
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
        );
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
        let slow = tokio::spawn({
            let b = b.clone();
            async move { b.infer(rows_of(&[999.0], 1)).await }
        });
        until(|| model.runs.lock().unwrap().len() == 1).await;
        // One running (its worker is busy), two queued: the next is refused at once.
        let q1 = tokio::spawn({
            let b = b.clone();
            async move { b.infer(rows_of(&[1.0], 1)).await }
        });
        let q2 = tokio::spawn({
            let b = b.clone();
            async move { b.infer(rows_of(&[1.0], 1)).await }
        });
        until(|| b.queued() == 2).await;
        assert_eq!(b.infer(rows_of(&[1.0], 1)).await, Err(RunError::Busy));
        assert_eq!(slow.await.unwrap(), Err(RunError::Timeout(100)));
        // The queued ones run once the stuck worker comes back.
        assert!(q1.await.unwrap().is_ok());
        assert!(q2.await.unwrap().is_ok());
    }

    #[test]
    fn measure_picks_the_fastest_per_item_size() {
        let model = RowSum::new(true);
        // K is symbolic: nothing to time.
        assert_eq!(measure_batch_size(model.as_ref(), &[1, 8], 1), None);
    }
}
