//! The node's side of a proof of hardware: answers the dispatcher's compute challenges
//! (`crat_core::policy::hardware`). A [`DispatcherPush::Challenge`] is computed with the
//! challenge model ([`crat_backend::challenge::matmul_model`]) on the node's selected backend
//! (so ONNX Runtime with CUDA multiplies on the GPU), committed with the Merkle root of the
//! product's rows, and its row tree kept until the dispatcher asks for rows
//! ([`DispatcherPush::OpenRows`]). The product itself is not kept: an opened row is recomputed
//! on the CPU (`k × m` multiply-adds; exact, so the same bits the device committed to), so a
//! node answering 16 GPU challenges of 1 GiB products holds 16 trees of a few MiB.
//!
//! Bounded: at most [`KEPT_MAX`] answered challenges are kept (the oldest are dropped first)
//! and at most [`RUNNING_MAX`] are computed at once (more are refused `Busy`).
//!
//! `device` in a challenge names the GPU of the registration (its index in the probe's
//! list). A challenge for GPU `d` runs on the selected backend's form for that GPU
//! ([`InferenceBackend::on_gpu`]: ONNX Runtime with CUDA on device `d`), so each GPU of a
//! multi-GPU node proves itself while the others run theirs; the CPU challenge, and every
//! challenge of a node whose backend runs on the CPU, run on the selected backend. The probe
//! lists GPUs in NVML's order (PCI bus), which is CUDA's when `CUDA_DEVICE_ORDER=PCI_BUS_ID`
//! is set (CUDA's default order puts the fastest first).
//!
//! ```
//! # #[cfg(feature = "tract")] {
//! use std::sync::Arc;
//! use crat_backend::tract::TractBackend;
//! use crat_core::policy::challenge::{ChallengeSpec, Opening, verify_opening};
//! use crat_core::wire::{ChallengeRequest, NodeAck};
//! use crat_node::challenge::Challenges;
//!
//! # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! # rt.block_on(async {
//! let challenges = Arc::new(Challenges::new(Arc::new(TractBackend::new())));
//! let req = ChallengeRequest { id: 1, seed: [3; 32], n: 16, k: 32, m: 8, device: None, deadline_ms: 1_000 };
//! let NodeAck::Committed { root, .. } = challenges.commit(req).await else { panic!() };
//! let NodeAck::Opened { rows, .. } = challenges.open(1, vec![5]).await else { panic!() };
//! let spec = ChallengeSpec::new([3; 32], 16, 32, 8).unwrap();
//! let opening = Opening::from_wire(&rows[0]).unwrap();
//! assert!(verify_opening(&spec, &root, &opening).is_ok());
//! # });
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crat_backend::challenge::{matmul_model, run_product};
use crat_backend::{InferenceBackend, LoadedModel};
use crat_core::policy::challenge::{ChallengeError, ChallengeSpec, Opening, RowTree};
use crat_core::policy::hardware::GPUS_MAX;
use crat_core::wire::{
    CHALLENGE_OPENED_BYTES_MAX, CHALLENGE_ROWS_MAX, ChallengeRequest, ErrorCode, NodeAck, WireError,
};
use parking_lot::Mutex;

/// Answered challenges kept for their opening.
pub const KEPT_MAX: usize = 32;
/// Challenges computed at once.
pub const RUNNING_MAX: usize = 24;

struct Kept {
    id: u64,
    spec: ChallengeSpec,
    tree: RowTree,
}

/// The challenges this node answered and keeps for opening. Cheap to share behind an `Arc`.
pub struct Challenges {
    backend: Arc<dyn InferenceBackend>,
    /// The challenge model on the selected backend (`None`) and on each GPU it was asked for.
    models: Mutex<HashMap<Option<u32>, Arc<dyn LoadedModel>>>,
    kept: Mutex<VecDeque<Kept>>,
    running: Mutex<usize>,
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> NodeAck {
    NodeAck::Error(WireError::new(code, message))
}

impl Challenges {
    /// Challenges answered with `backend`.
    pub fn new(backend: Arc<dyn InferenceBackend>) -> Self {
        Self {
            backend,
            models: Mutex::new(HashMap::new()),
            kept: Mutex::new(VecDeque::new()),
            running: Mutex::new(0),
        }
    }

    /// The challenge model for `device` (`None`: the selected backend; a GPU the backend has
    /// no form for, past [`GPUS_MAX`], also runs there).
    fn model(
        &self,
        device: Option<u32>,
    ) -> Result<Arc<dyn LoadedModel>, crat_backend::BackendError> {
        let on = device
            .filter(|d| (*d as usize) < GPUS_MAX)
            .and_then(|d| self.backend.on_gpu(d).map(|b| (Some(d), b)));
        let (key, backend) = on.unwrap_or((None, self.backend.clone()));
        if let Some(m) = self.models.lock().get(&key) {
            return Ok(m.clone());
        }
        let m = backend.load(&matmul_model())?;
        self.models.lock().insert(key, m.clone());
        Ok(m)
    }

    /// Computes a challenge (on a blocking thread) and answers its commitment.
    pub async fn commit(self: &Arc<Self>, req: ChallengeRequest) -> NodeAck {
        let spec = match ChallengeSpec::new(req.seed, req.n, req.k, req.m) {
            Ok(s) => s,
            Err(e) => return refuse(ErrorCode::BadRequest, e.to_string()),
        };
        {
            let mut running = self.running.lock();
            if *running >= RUNNING_MAX {
                return refuse(ErrorCode::Busy, "too many challenges at once");
            }
            *running += 1;
        }
        let me = self.clone();
        let result = tokio::task::spawn_blocking(move || {
            let model = me.model(req.device)?;
            let product = run_product(&*model, &spec)?;
            let tree = RowTree::build(&product, spec.m())
                .map_err(|e| crat_backend::BackendError::Run(e.to_string()))?;
            Ok::<_, crat_backend::BackendError>(tree)
        })
        .await;
        *self.running.lock() -= 1;
        let tree = match result {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return refuse(ErrorCode::Internal, format!("challenge: {e}")),
            Err(e) => return refuse(ErrorCode::Internal, format!("challenge task: {e}")),
        };
        let root = tree.root();
        let mut kept = self.kept.lock();
        kept.retain(|k| k.id != req.id);
        while kept.len() >= KEPT_MAX {
            kept.pop_front();
        }
        kept.push_back(Kept {
            id: req.id,
            spec,
            tree,
        });
        NodeAck::Committed { id: req.id, root }
    }

    /// Opens rows of an answered challenge (and forgets it: each is opened once), recomputing
    /// them on a blocking thread.
    pub async fn open(&self, id: u64, rows: Vec<u32>) -> NodeAck {
        if rows.len() > CHALLENGE_ROWS_MAX {
            return refuse(
                ErrorCode::TooLarge,
                format!("more than {CHALLENGE_ROWS_MAX} rows"),
            );
        }
        let Some(kept) = ({
            let mut all = self.kept.lock();
            all.iter()
                .position(|k| k.id == id)
                .and_then(|i| all.remove(i))
        }) else {
            return refuse(ErrorCode::NotFound, format!("challenge {id}"));
        };
        if rows.len() * kept.spec.m() as usize * 4 > CHALLENGE_OPENED_BYTES_MAX {
            return refuse(ErrorCode::TooLarge, "opened rows too large");
        }
        let opened = tokio::task::spawn_blocking(move || {
            rows.iter()
                .map(|&row| {
                    Ok(Opening {
                        row,
                        path: kept.tree.path(row)?,
                        values: kept.spec.product_row(row),
                    }
                    .to_wire())
                })
                .collect::<Result<Vec<_>, ChallengeError>>()
        })
        .await;
        match opened {
            Ok(Ok(rows)) => NodeAck::Opened { id, rows },
            Ok(Err(e)) => refuse(ErrorCode::BadRequest, e.to_string()),
            Err(e) => refuse(ErrorCode::Internal, format!("opening task: {e}")),
        }
    }
}

#[cfg(all(test, feature = "tract"))]
mod tests {
    use super::*;
    use crat_core::policy::challenge::verify_opening;

    fn req(id: u64, n: u32) -> ChallengeRequest {
        ChallengeRequest {
            id,
            seed: [id as u8; 32],
            n,
            k: 64,
            m: 16,
            device: None,
            deadline_ms: 1_000,
        }
    }

    #[tokio::test]
    async fn answers_verify_and_are_opened_once() {
        let c = Arc::new(Challenges::new(Arc::new(
            crat_backend::tract::TractBackend::new(),
        )));
        let NodeAck::Committed { id, root } = c.commit(req(7, 33)).await else {
            panic!("not committed")
        };
        assert_eq!(id, 7);
        let spec = ChallengeSpec::new([7; 32], 33, 64, 16).unwrap();
        let NodeAck::Opened { rows, .. } = c.open(7, vec![0, 32, 5]).await else {
            panic!("not opened")
        };
        for r in &rows {
            let opening = crat_core::policy::challenge::Opening::from_wire(r).unwrap();
            assert_eq!(verify_opening(&spec, &root, &opening), Ok(()));
        }
        assert!(
            matches!(c.open(7, vec![0]).await, NodeAck::Error(_)),
            "opened once"
        );
        assert!(matches!(
            c.commit(ChallengeRequest { n: 0, ..req(8, 1) }).await,
            NodeAck::Error(_)
        ));
        // Only the newest KEPT_MAX are kept.
        for id in 100..100 + KEPT_MAX as u64 + 1 {
            assert!(matches!(
                c.commit(req(id, 2)).await,
                NodeAck::Committed { .. }
            ));
        }
        assert!(matches!(c.open(100, vec![0]).await, NodeAck::Error(_)));
        assert!(matches!(c.open(101, vec![0]).await, NodeAck::Opened { .. }));
        let too_many = vec![0u32; CHALLENGE_ROWS_MAX + 1];
        assert!(matches!(c.open(102, too_many).await, NodeAck::Error(_)));
    }

    /// A backend that runs tract and records on which GPU (`None`: the selected backend)
    /// each challenge ran.
    struct Gpus {
        device: Option<u32>,
        runs: Arc<Mutex<Vec<Option<u32>>>>,
    }

    struct Recording {
        inner: Arc<dyn LoadedModel>,
        device: Option<u32>,
        runs: Arc<Mutex<Vec<Option<u32>>>>,
    }

    impl LoadedModel for Recording {
        fn info(&self) -> &crat_backend::ModelInfo {
            self.inner.info()
        }
        fn run(
            &self,
            inputs: &[crat_core::tensor::Tensor],
        ) -> Result<Vec<crat_core::tensor::Tensor>, crat_backend::BackendError> {
            self.runs.lock().push(self.device);
            self.inner.run(inputs)
        }
        fn memory_bytes(&self) -> u64 {
            self.inner.memory_bytes()
        }
    }

    impl InferenceBackend for Gpus {
        fn name(&self) -> &'static str {
            "test"
        }
        fn execution_provider(&self) -> &str {
            "cuda"
        }
        fn load(&self, model: &[u8]) -> Result<Arc<dyn LoadedModel>, crat_backend::BackendError> {
            Ok(Arc::new(Recording {
                inner: crat_backend::tract::TractBackend::new().load(model)?,
                device: self.device,
                runs: self.runs.clone(),
            }))
        }
        fn on_gpu(&self, device: u32) -> Option<Arc<dyn InferenceBackend>> {
            Some(Arc::new(Gpus {
                device: Some(device),
                runs: self.runs.clone(),
            }))
        }
    }

    #[tokio::test]
    async fn each_gpu_answers_its_own_challenge() {
        let runs = Arc::new(Mutex::new(Vec::new()));
        let c = Arc::new(Challenges::new(Arc::new(Gpus {
            device: None,
            runs: runs.clone(),
        })));
        for (id, device) in [(1, Some(1)), (2, Some(0)), (3, None), (4, Some(1))] {
            let NodeAck::Committed { root, .. } = c
                .commit(ChallengeRequest {
                    device,
                    ..req(id, 8)
                })
                .await
            else {
                panic!("not committed")
            };
            let NodeAck::Opened { rows, .. } = c.open(id, vec![3]).await else {
                panic!("not opened")
            };
            let spec = ChallengeSpec::new([id as u8; 32], 8, 64, 16).unwrap();
            let opening = Opening::from_wire(&rows[0]).unwrap();
            assert_eq!(verify_opening(&spec, &root, &opening), Ok(()));
        }
        assert_eq!(*runs.lock(), vec![Some(1), Some(0), None, Some(1)]);
        // A device past the cap runs on the selected backend.
        let far = GPUS_MAX as u32;
        assert!(matches!(
            c.commit(ChallengeRequest {
                device: Some(far),
                ..req(5, 8)
            })
            .await,
            NodeAck::Committed { .. }
        ));
        assert_eq!(runs.lock().last(), Some(&None));
    }
}
