//! The soak's two clients: the SDK in this process, streaming tasks and uploading models
//! while the network's processes die, counting what they get.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use crat_core::id::{ModelId, TaskId};
use crat_core::tensor::{NamedTensor, Tensor};
use crat_sdk::{Client, ClientConfig, Deployment};
use crat_transport::quic::QuicTransport;
use parking_lot::Mutex;

use crate::TINY;

/// What one client saw.
#[derive(Default)]
pub(crate) struct Traffic {
    /// Tasks answered (each id is fresh).
    pub(crate) answered: Mutex<Vec<TaskId>>,
    /// When the last answer came.
    pub(crate) last_answer: Mutex<Option<Instant>>,
    /// Failed tasks and uploads, by error kind.
    pub(crate) errors: Mutex<BTreeMap<String, u64>>,
    /// Uploads done: the model and its size.
    pub(crate) uploads: Mutex<Vec<(ModelId, u64)>>,
}

impl Traffic {
    pub(crate) fn error(&self, what: &str, e: &dyn std::fmt::Debug) {
        let text = format!("{e:?}");
        let kind = text
            .split(|c: char| !c.is_alphanumeric())
            .next()
            .unwrap_or("?");
        *self
            .errors
            .lock()
            .entry(format!("{what} {kind}"))
            .or_default() += 1;
    }

    pub(crate) fn answered(&self) -> usize {
        self.answered.lock().len()
    }
}

/// A tiny-model input that differs from task to task.
pub(crate) fn input(n: u32) -> Vec<NamedTensor> {
    let values: Vec<f32> = (0..28 * 28u32)
        .map(|i| ((i.wrapping_mul(31) ^ n) % 251) as f32 / 251.0)
        .collect();
    vec![NamedTensor::new(
        "input",
        Tensor::from_slice(&[1, 1, 28, 28], &values).expect("784 values for 1×1×28×28"),
    )]
}

/// Sends tasks to `d`, one at a time, until `stop`; a failed task is counted and followed by
/// a short pause (the dispatcher or a node is down: nothing to hurry for).
pub(crate) async fn stream_tasks(
    d: Deployment<QuicTransport>,
    stop: Arc<AtomicBool>,
    t: Arc<Traffic>,
) {
    let mut n = rand::random::<u32>();
    while !stop.load(Ordering::Relaxed) {
        n = n.wrapping_add(1);
        let task = TaskId::from_bytes(rand::random());
        match d.infer_task(task, input(n)).await {
            Ok(_) => {
                t.answered.lock().push(task);
                *t.last_answer.lock() = Some(Instant::now());
            }
            Err(e) => {
                t.error("task", &e);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// `tiny_cnn.onnx` with one more `metadata_props` entry (`ModelProto` field 14, a
/// `StringStringEntryProto` of key and value): a valid model of new bytes for each `tag`.
pub(crate) fn tiny_variant(tag: &str) -> Vec<u8> {
    let (key, value) = (b"crat-chaos-upload", tag.as_bytes());
    assert!(key.len() < 128 && value.len() < 128, "one-byte lengths");
    let mut entry = vec![0x0a, key.len() as u8];
    entry.extend_from_slice(key);
    entry.extend_from_slice(&[0x12, value.len() as u8]);
    entry.extend_from_slice(value);
    let mut model = TINY.to_vec();
    model.extend_from_slice(&[0x72, entry.len() as u8]);
    model.extend_from_slice(&entry);
    model
}

/// Uploads a new variant of the tiny model every few seconds until `stop`; one that fails is
/// tried again (the SDK resumes it) before the next.
pub(crate) async fn upload_now_and_then(
    client: Client<QuicTransport>,
    name: &'static str,
    stop: Arc<AtomicBool>,
    t: Arc<Traffic>,
) {
    let mut i = 0u32;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let bytes = tiny_variant(&format!("{name}-{i}"));
        match tokio::time::timeout(Duration::from_secs(20), client.upload_model(&bytes, |_| {}))
            .await
        {
            Ok(Ok(model)) => {
                t.uploads.lock().push((model, bytes.len() as u64));
                i += 1;
            }
            Ok(Err(e)) => t.error("upload", &e),
            Err(e) => t.error("upload", &e),
        }
    }
}

/// The SDK's settings for a network whose processes die: short timeouts, so a call to a dead
/// process fails in seconds and the next one dials again.
pub(crate) fn client_config() -> ClientConfig {
    ClientConfig {
        dispatcher_timeout_ms: 5_000,
        infer_timeout_ms: 5_000,
        connect_timeout_ms: 2_000,
        ..ClientConfig::default()
    }
}

/// Tries `f` every 500 ms until it succeeds, for at most `within`.
pub(crate) async fn retry<T, E: std::fmt::Debug, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> F,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(what, error = ?e, "retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => bail!("{what}: still failing after {within:?}: {e:?}"),
        }
    }
}
