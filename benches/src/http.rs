//! The HTTP side of the benches that compare the network with a FastAPI + onnxruntime server
//! (`gateway`, `compare`): the server of `benches/compare/fastapi_server.py` as a separate
//! process, keep-alive HTTP/1.1 connections sending one prepared KServe v2 binary request, and
//! the load driver both sides share. A bench harness: failures panic with the reason.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// How long the FastAPI server may take to answer its readiness check.
const FASTAPI_START_S_MAX: u64 = 120;
/// How long the FastAPI server may take to stop after SIGTERM before it is killed.
const FASTAPI_STOP_S_MAX: u64 = 10;

/// Requests per second and latency percentiles of one run.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    /// Completed requests per second of the run's wall time.
    pub rps: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
}

impl Summary {
    /// Summarizes `latencies` (at least one) over a run of `took`.
    pub fn of(mut latencies: Vec<Duration>, took: Duration) -> Self {
        assert!(!latencies.is_empty(), "a run of no requests");
        latencies.sort();
        let at = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
        Self {
            rps: latencies.len() as f64 / took.as_secs_f64(),
            p50: at(0.5),
            p99: at(0.99),
        }
    }
}

/// One request of a run: when it was sent, from the run's start, and how long its answer
/// took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// When it was sent, from the run's start.
    pub start: Duration,
    /// From sent to answered.
    pub latency: Duration,
}

/// Writes `samples` to `path`, in the order they were sent, one per line: the start and the
/// latency in microseconds (a `#` line names the columns). For a look at what a run's tail is
/// made of (when its slow requests came, together or apart), which p99 alone does not say.
pub fn write_samples(path: &Path, samples: &[Sample]) -> std::io::Result<()> {
    let mut sorted = samples.to_vec();
    sorted.sort_by_key(|s| s.start);
    let mut out = String::with_capacity(24 * sorted.len() + 32);
    out.push_str("# start_us latency_us\n");
    for s in &sorted {
        out.push_str(&format!(
            "{} {}\n",
            s.start.as_micros(),
            s.latency.as_micros()
        ));
    }
    std::fs::write(path, out)
}

/// Runs `tasks` calls of `call` with one worker per state (each owns its `S`, so the
/// number of states is the number in flight); gives the states back.
pub async fn load<S, F, Fut>(tasks: usize, states: Vec<S>, call: F) -> (Summary, Vec<S>)
where
    S: Send + 'static,
    F: Fn(S) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = S> + Send,
{
    let (summary, states, _) = load_samples(tasks, states, call).await;
    (summary, states)
}

/// [`load`], also giving back each request's [`Sample`].
pub async fn load_samples<S, F, Fut>(
    tasks: usize,
    states: Vec<S>,
    call: F,
) -> (Summary, Vec<S>, Vec<Sample>)
where
    S: Send + 'static,
    F: Fn(S) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = S> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for mut state in states {
        let next = next.clone();
        let call = call.clone();
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < tasks {
                let t = Instant::now();
                state = call(state).await;
                samples.push(Sample {
                    start: t.duration_since(started),
                    latency: t.elapsed(),
                });
            }
            (samples, state)
        }));
    }
    let mut all = Vec::with_capacity(tasks);
    let mut states = Vec::with_capacity(workers.len());
    for w in workers {
        let (samples, state) = w.await.unwrap();
        all.extend(samples);
        states.push(state);
    }
    let took = started.elapsed();
    let summary = Summary::of(all.iter().map(|s| s.latency).collect(), took);
    (summary, states, all)
}

/// A KServe v2 binary infer request of one input and one output, `POST
/// /v2/models/{model}/infer` to `addr` with `key` as bearer token (FastAPI ignores it): the
/// same bytes for the gateway and FastAPI but for `Host`.
pub fn infer_request(
    addr: SocketAddr,
    key: &str,
    model: &str,
    input: &str,
    shape: &[u64],
    data: &[u8],
    output: &str,
) -> Arc<Vec<u8>> {
    let shape: Vec<String> = shape.iter().map(u64::to_string).collect();
    let header = format!(
        r#"{{"inputs":[{{"name":"{input}","shape":[{}],"datatype":"FP32","parameters":{{"binary_data_size":{}}}}}],"outputs":[{{"name":"{output}","parameters":{{"binary_data":true}}}}]}}"#,
        shape.join(","),
        data.len()
    );
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(data);
    let mut request = format!(
        "POST /v2/models/{model}/infer HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         Inference-Header-Content-Length: {}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\n\r\n",
        header.len(),
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    Arc::new(request)
}

/// An HTTP answer: the status line, the `Inference-Header-Content-Length` header and the body.
#[derive(Debug)]
pub struct Answer {
    /// The status line, without its line end.
    pub status: String,
    /// The `Inference-Header-Content-Length` header's value.
    pub inference_header: Option<String>,
    /// The `X-Worker` header's value: which FastAPI worker process answered.
    pub worker: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

/// One keep-alive HTTP/1.1 connection; [`Conn::infer`] sends its request and checks the
/// answer is a 200.
pub struct Conn {
    stream: BufReader<tokio::net::TcpStream>,
    request: Arc<Vec<u8>>,
}

impl Conn {
    /// Connects (`TCP_NODELAY`).
    pub async fn open(addr: SocketAddr, request: Arc<Vec<u8>>) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream: BufReader::new(stream),
            request,
        }
    }

    /// Sends the request once and reads the answer.
    pub async fn exchange(&mut self) -> Answer {
        self.stream
            .get_mut()
            .write_all(&self.request)
            .await
            .unwrap();
        let mut line = String::new();
        let mut length = 0usize;
        let mut status = String::new();
        let mut inference_header = None;
        let mut worker = None;
        loop {
            line.clear();
            let read = self.stream.read_line(&mut line).await.unwrap();
            assert!(read > 0, "the server closed the connection");
            if status.is_empty() {
                status = line.trim_end().to_owned();
            }
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap();
                } else if k.eq_ignore_ascii_case("inference-header-content-length") {
                    inference_header = Some(v.trim().to_owned());
                } else if k.eq_ignore_ascii_case("x-worker") {
                    worker = Some(v.trim().to_owned());
                }
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await.unwrap();
        Answer {
            status,
            inference_header,
            worker,
            body,
        }
    }

    /// [`exchange`](Self::exchange), asserting a 200.
    pub async fn infer(mut self) -> Self {
        let answer = self.exchange().await;
        assert!(
            answer.status.contains(" 200 "),
            "{} {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
        self
    }
}

/// Opens `n` connections to `addr`, each sending `request`.
pub async fn connections(addr: SocketAddr, request: &Arc<Vec<u8>>, n: usize) -> Vec<Conn> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(Conn::open(addr, request.clone()).await);
    }
    conns
}

/// `n` connections to a server of `workers` worker processes that names the worker of each
/// answer (`X-Worker`), `n / workers` (rounded up) served by each: a connection is kept
/// only if its first answer (one exchange, untimed) came from a worker that still has room.
/// What a load balancer in front of the workers gives; the kernel alone may hand one worker
/// every connection. Panics after `50 × n` connections tried.
pub async fn balanced_connections(
    addr: SocketAddr,
    request: &Arc<Vec<u8>>,
    n: usize,
    workers: usize,
) -> Vec<Conn> {
    let room = n.div_ceil(workers.max(1));
    let mut per_worker: std::collections::HashMap<String, usize> = Default::default();
    let mut conns = Vec::with_capacity(n);
    for _ in 0..50 * n.max(1) {
        if conns.len() == n {
            return conns;
        }
        let mut conn = Conn::open(addr, request.clone()).await;
        let answer = conn.exchange().await;
        assert!(answer.status.contains(" 200 "), "{answer:?}");
        let worker = answer
            .worker
            .expect("the server names its worker (X-Worker)");
        let served = per_worker.entry(worker).or_default();
        if *served < room {
            *served += 1;
            conns.push(conn);
        }
    }
    assert_eq!(
        conns.len(),
        n,
        "could not spread {n} connections over {workers} workers: {per_worker:?}"
    );
    conns
}

/// The FastAPI + onnxruntime server of `benches/compare/`, a separate process on a free
/// loopback port. Dropping it (panics included) stops it: SIGTERM to uvicorn's supervisor,
/// which stops its workers; SIGKILL if it has not exited within 10 s.
pub struct FastApi {
    child: Child,
    /// Where it serves.
    pub addr: SocketAddr,
    /// onnxruntime's `intra_op_num_threads` in each worker (0: its default, one per core).
    pub intra_op_threads: u32,
}

/// The onnxruntime execution provider a FastAPI server runs its model with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// `CPUExecutionProvider` (onnxruntime from PyPI).
    Cpu,
    /// `CUDAExecutionProvider` alone (onnxruntime-gpu): the server refuses to start when
    /// onnxruntime does not run the model with it, rather than falling back to the CPU.
    Cuda,
}

impl Provider {
    /// Its name on `fastapi_server.py`'s command line and in a node's backend
    /// (`ort/cpu`, `ort/cuda`).
    pub fn name(self) -> &'static str {
        match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
        }
    }
}

impl FastApi {
    /// Starts `python benches/compare/fastapi_server.py model --name name` (2 workers).
    pub fn start(
        python: &Path,
        model: &Path,
        name: &str,
        intra_op_threads: u32,
        provider: Provider,
    ) -> Self {
        // A port the system had free; released again for the server to bind (another process
        // could take it in between: the readiness check would then fail loudly).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script = crate::benches_dir().join("compare/fastapi_server.py");
        let child = Command::new(python)
            .arg(script)
            .arg(model)
            .args(["--name", name, "--port", &port.to_string()])
            .args(["--intra-op-threads", &intra_op_threads.to_string()])
            .args(["--provider", provider.name()])
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
        Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            intra_op_threads,
        }
    }

    /// Its process id (uvicorn's supervisor; the workers are its children).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `GET /v2/health/ready` answers 200.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(FASTAPI_START_S_MAX);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the FastAPI server exited before it was ready: {status}");
            }
            if let Ok(mut stream) = tokio::net::TcpStream::connect(self.addr).await {
                let request = format!(
                    "GET /v2/health/ready HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                    self.addr
                );
                let mut answer = Vec::new();
                if stream.write_all(request.as_bytes()).await.is_ok()
                    && stream.read_to_end(&mut answer).await.is_ok()
                    && answer.starts_with(b"HTTP/1.1 200 ")
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the FastAPI server was not ready within {FASTAPI_START_S_MAX} s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for FastApi {
    fn drop(&mut self) {
        // Best effort: nothing can be reported from a drop.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(FASTAPI_STOP_S_MAX);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checks that FastAPI's answer is the gateway's: the same status line, the same
/// `Inference-Header-Content-Length`, the same JSON header byte for byte, and the same f32
/// outputs within the tolerance the network allows two honest backends
/// (`crat_core::verify::Tolerance::default()`): their kernels may round differently in the
/// last bits (tract against onnxruntime, or two onnxruntime versions). Returns a line saying
/// how many floats differ and by how much.
pub fn check_same_answer(fastapi: &Answer, gateway: &Answer) -> String {
    use crat_core::tensor::{DType, Tensor};
    use crat_core::verify::{Tolerance, tensors_agree};

    assert!(gateway.status.contains(" 200 "), "{gateway:?}");
    assert_eq!(fastapi.status, gateway.status);
    assert_eq!(fastapi.inference_header, gateway.inference_header);
    let json_len: usize = gateway
        .inference_header
        .as_deref()
        .expect("a binary answer has an Inference-Header-Content-Length")
        .parse()
        .unwrap();
    let (fastapi_json, fastapi_out) = fastapi.body.split_at(json_len);
    let (gateway_json, gateway_out) = gateway.body.split_at(json_len);
    assert_eq!(
        String::from_utf8_lossy(fastapi_json),
        String::from_utf8_lossy(gateway_json)
    );
    let floats = |bytes: &[u8]| {
        Tensor::new(DType::F32, vec![bytes.len() as u64 / 4], bytes.to_vec()).unwrap()
    };
    let (f, g) = (floats(fastapi_out), floats(gateway_out));
    tensors_agree("output", &f, &g, &Tolerance::default()).unwrap();
    let (f, g) = (f.to_vec::<f32>().unwrap(), g.to_vec::<f32>().unwrap());
    let differ = f.iter().zip(&g).filter(|(a, b)| a != b).count();
    let apart = f
        .iter()
        .zip(&g)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    format!(
        "answers checked: FastAPI's status, headers and JSON ({json_len} bytes) are the \
         gateway's; {differ} of {} output floats differ, by at most {apart:e}, within the \
         network's tolerance",
        g.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_load_gives_one_sample_per_request_and_writes_them_in_the_order_sent() {
        let tasks = 40;
        let (summary, states, samples) = load_samples(tasks, vec![0u32; 4], |n| async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            n + 1
        })
        .await;
        assert_eq!(samples.len(), tasks);
        assert_eq!(
            states.iter().sum::<u32>() as usize,
            tasks,
            "each request ran once"
        );
        assert!(
            samples
                .iter()
                .all(|s| s.latency >= Duration::from_millis(1))
        );
        let mut latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
        latencies.sort();
        assert_eq!(
            summary.p50, latencies[20],
            "the summary is of these samples"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.txt");
        let out_of_order = [
            Sample {
                start: Duration::from_micros(250),
                latency: Duration::from_micros(190),
            },
            Sample {
                start: Duration::from_micros(7),
                latency: Duration::from_micros(1_234),
            },
        ];
        write_samples(&path, &out_of_order).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "# start_us latency_us\n7 1234\n250 190\n"
        );
    }
}
