//! Receipts proven together (a group commit): the answers of a node that are ready together
//! (a batch's, woken at once, and those finishing while a signature is being made) share
//! one signature over a hash tree of their receipts ([`ProvenReceipt::sign_all`]). At one
//! task in flight every receipt has a signature of its own, as before; under load the node
//! signs far less than once per task.
//!
//! Signatures are made with nonces made ahead of time ([`SigningNonce`]) while there are
//! some: a thread of their own makes them (up to [`NONCES_MAX`]) under `SCHED_IDLE`, on CPU
//! nothing else wants, and signing one answer's receipt then costs about a tenth of an
//! ed25519 signature made from nothing (`receipt/sign_with_nonce` against `receipt/sign` in
//! `benches/benches/codec.rs`). At one task in flight that takes most of the signature off
//! each answer's path; a node whose cores are saturated gets no nonces made, signs as
//! before, and shares each signature among the answers ready together.

use std::sync::{Arc, Weak};

use crat_core::sign::{ProvenReceipt, Receipt, SigningNonce};
use ed25519_dalek::SigningKey;
use parking_lot::Mutex;
use rand::RngCore;
use tokio::sync::oneshot;

/// Nonces kept ready at most.
pub const NONCES_MAX: usize = 64;
/// The nonce maker is woken when fewer are ready.
const NONCES_REFILL_BELOW: usize = NONCES_MAX * 3 / 4;

/// A node's receipt signer. Cheap to share ([`Arc`]).
pub struct ReceiptSigner {
    key: SigningKey,
    state: Mutex<State>,
    nonces: Nonces,
}

/// Signing nonces made ahead of time by a thread of their own, which ends with the signer.
struct Nonces {
    ready: Arc<Mutex<Vec<SigningNonce>>>,
    /// Wakes the maker; dropped with the signer, which ends the maker's thread.
    wake: std::sync::mpsc::SyncSender<()>,
}

impl Nonces {
    fn start() -> Self {
        let ready = Arc::new(Mutex::new(Vec::with_capacity(NONCES_MAX)));
        let (wake, woken) = std::sync::mpsc::sync_channel(1);
        let weak = Arc::downgrade(&ready);
        let started = std::thread::Builder::new()
            .name("crat-nonces".into())
            .spawn(move || make_nonces(&weak, &woken));
        if let Err(e) = started {
            tracing::warn!(error = %e, "no thread to make signing nonces: receipts are signed from nothing");
        }
        // A first batch at once.
        let _ = wake.try_send(());
        Self { ready, wake }
    }

    /// A nonce, when one is ready and not being added; wakes the maker when few are left.
    /// Never waits: the maker may hold the lock while preempted (it runs under
    /// `SCHED_IDLE`), and a signature without a nonce is only slower.
    fn take(&self) -> Option<SigningNonce> {
        let mut ready = self.ready.try_lock()?;
        let nonce = ready.pop();
        if ready.len() < NONCES_REFILL_BELOW {
            let _ = self.wake.try_send(());
        }
        nonce
    }
}

/// The nonce maker's loop: when woken, fills the pool up to [`NONCES_MAX`] with nonces of the
/// operating system's random bytes; ends when the signer is gone.
fn make_nonces(ready: &Weak<Mutex<Vec<SigningNonce>>>, woken: &std::sync::mpsc::Receiver<()>) {
    crate::priority::idle_thread();
    while woken.recv().is_ok() {
        loop {
            let Some(ready) = ready.upgrade() else {
                return;
            };
            if ready.lock().len() >= NONCES_MAX {
                break;
            }
            let mut random = [0u8; 64];
            rand::rngs::OsRng.fill_bytes(&mut random);
            let nonce = SigningNonce::from_random(&mut random);
            ready.lock().push(nonce);
        }
    }
}

struct State {
    /// Receipts waiting for the next signature, each with where its proof goes. At most one
    /// per task in progress, which the node's own limits bound.
    pending: Vec<(Receipt, oneshot::Sender<ProvenReceipt>)>,
    /// A signer is at work and will take every receipt pending.
    signing: bool,
}

impl ReceiptSigner {
    /// A signer with the node's key.
    pub fn new(key: SigningKey) -> Arc<Self> {
        Arc::new(Self {
            key,
            state: Mutex::new(State {
                pending: Vec::new(),
                signing: false,
            }),
            nonces: Nonces::start(),
        })
    }

    /// Proves `receipt`, under the next signature, with every other receipt waiting by
    /// then. The signing runs on a task of its own, started by the first receipt to find no
    /// signer at work; it first lets the tasks ready to run (the other answers of a batch,
    /// woken with this one) reach here, then signs until no receipt is left. A caller that
    /// goes away leaves its receipt signed all the same.
    pub async fn prove(self: &Arc<Self>, receipt: Receipt) -> ProvenReceipt {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut state = self.state.lock();
            state.pending.push((receipt.clone(), tx));
            !std::mem::replace(&mut state.signing, true)
        };
        if start {
            let me = self.clone();
            tokio::spawn(async move {
                loop {
                    // Behind the tasks ready to run: their receipts join this signature.
                    tokio::task::yield_now().await;
                    if !me.sign_pending() {
                        break;
                    }
                }
            });
        }
        // The signer answers every receipt it takes; should it panic, the receipts it held
        // are let go (`IdleOnPanic`) and each is signed alone here.
        match rx.await {
            Ok(proof) => proof,
            Err(_) => ProvenReceipt::sign(receipt, &self.key),
        }
    }

    /// Signing nonces ready now (at most [`NONCES_MAX`]). Waits for the pool's lock, which
    /// the maker may hold while preempted: for tests only.
    #[cfg(test)]
    fn nonces_ready(&self) -> usize {
        self.nonces.ready.lock().len()
    }

    /// Signs every receipt pending and sends the proofs; returns whether more arrived
    /// meanwhile (the signing task signs those too), else marks the signer idle.
    fn sign_pending(&self) -> bool {
        let pending = std::mem::take(&mut self.state.lock().pending);
        if !pending.is_empty() {
            let _idle_on_panic = IdleOnPanic(self);
            let (bodies, senders): (Vec<_>, Vec<_>) = pending.into_iter().unzip();
            let (mut ahead, mut none) = (0, 0);
            let proofs = ProvenReceipt::sign_all_with(bodies, &self.key, || {
                let nonce = self.nonces.take();
                if nonce.is_some() {
                    ahead += 1;
                } else {
                    none += 1;
                }
                nonce
            });
            crate::metrics::receipt_signatures(ahead, none);
            for (sender, proof) in senders.into_iter().zip(proofs) {
                let _ = sender.send(proof);
            }
        }
        let mut state = self.state.lock();
        if state.pending.is_empty() {
            state.signing = false;
            false
        } else {
            true
        }
    }
}

/// Should signing panic, lets go of every receipt waiting (their callers sign them alone)
/// and marks the signer idle, so the next receipt starts a new signing task: without it the
/// signer would stay "at work" and every later receipt would wait for ever.
struct IdleOnPanic<'a>(&'a ReceiptSigner);

impl Drop for IdleOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut state = self.0.state.lock();
            state.pending.clear();
            state.signing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crat_core::id::{DeploymentId, ModelId, NodeId, TaskId};

    fn receipt(node: NodeId, i: u32) -> Receipt {
        let mut task = [0u8; 16];
        task[..4].copy_from_slice(&i.to_le_bytes());
        Receipt {
            task: TaskId::from_bytes(task),
            deployment: DeploymentId::from_bytes([1; 16]),
            model: ModelId::from_bytes([2; 32]),
            node,
            inputs_digest: [3; 32],
            outputs_digest: [4; 32],
        }
    }

    /// Once the maker has filled the pool, a receipt is signed with a nonce made ahead (not
    /// the deterministic signature) that verifies, and the pool has one nonce fewer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn receipts_are_signed_with_nonces_made_ahead() {
        let key = SigningKey::from_bytes(&[8; 32]);
        let node = NodeId::from_key(&key.verifying_key());
        let signer = ReceiptSigner::new(key.clone());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while signer.nonces_ready() < NONCES_MAX {
            assert!(std::time::Instant::now() < deadline, "no nonces made");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let proof = signer.prove(receipt(node, 1)).await;
        assert_eq!(proof.verify(Some(&node)), Ok(&receipt(node, 1)));
        let deterministic = ProvenReceipt::sign(receipt(node, 1), &key);
        assert_ne!(proof.root.signature, deterministic.root.signature);
        // Above the refill mark: the maker was not woken, the pool is one short.
        assert_eq!(signer.nonces_ready(), NONCES_MAX - 1);
    }

    /// The maker fills the pool to [`NONCES_MAX`] when woken, and ends when the signer's
    /// side of it is gone.
    #[test]
    fn the_nonce_maker_fills_the_pool_and_ends_with_the_signer() {
        let ready = Arc::new(Mutex::new(Vec::new()));
        let (wake, woken) = std::sync::mpsc::sync_channel(1);
        let weak = Arc::downgrade(&ready);
        let maker = std::thread::spawn(move || make_nonces(&weak, &woken));
        wake.send(()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while ready.lock().len() < NONCES_MAX {
            assert!(std::time::Instant::now() < deadline, "pool not filled");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(ready.lock().len(), NONCES_MAX, "filled beyond its bound");
        drop(wake);
        maker.join().unwrap();
        // Woken with the pool gone, it ends too.
        let (wake, woken) = std::sync::mpsc::sync_channel(1);
        let weak = Arc::downgrade(&ready);
        drop(ready);
        wake.send(()).unwrap();
        std::thread::spawn(move || make_nonces(&weak, &woken))
            .join()
            .unwrap();
    }

    /// One at a time, each receipt has a signature of its own; many at once share
    /// signatures, and every proof verifies for its own receipt.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn receipts_proven_at_once_share_signatures_and_each_verifies() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let node = NodeId::from_key(&key.verifying_key());
        let signer = ReceiptSigner::new(key);
        for i in 0..3 {
            let proof = signer.prove(receipt(node, i)).await;
            assert_eq!(proof.root.body.leaves, 1);
            assert_eq!(proof.verify(Some(&node)), Ok(&receipt(node, i)));
        }
        let tasks: Vec<_> = (0..2_000)
            .map(|i| {
                let signer = signer.clone();
                tokio::spawn(async move { signer.prove(receipt(node, i)).await })
            })
            .collect();
        let mut roots = HashSet::new();
        for (i, task) in tasks.into_iter().enumerate() {
            let proof = task.await.unwrap();
            assert_eq!(proof.verify(Some(&node)), Ok(&receipt(node, i as u32)));
            roots.insert(proof.root.signature.to_bytes());
        }
        assert!(roots.len() < 2_000, "{} signatures", roots.len());
        assert!(!signer.state.lock().signing);
        assert!(signer.state.lock().pending.is_empty());
    }

    /// A panic while signing lets the waiting receipts go and leaves the signer idle, so
    /// no caller waits for ever and the next receipt is signed as usual.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_while_signing_leaves_no_receipt_waiting() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let node = NodeId::from_key(&key.verifying_key());
        let signer = ReceiptSigner::new(key);
        // A receipt waiting on a signer at work, which then panics.
        let (tx, rx) = oneshot::channel();
        {
            let mut state = signer.state.lock();
            state.pending.push((receipt(node, 0), tx));
            state.signing = true;
        }
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _idle_on_panic = IdleOnPanic(&signer);
            panic!("signing failed");
        }));
        assert!(panicked.is_err());
        let answer = tokio::time::timeout(std::time::Duration::from_secs(10), rx).await;
        assert!(
            matches!(answer, Ok(Err(_))),
            "the waiting receipt is let go"
        );
        assert!(!signer.state.lock().signing);
        let proof = signer.prove(receipt(node, 1)).await;
        assert_eq!(proof.verify(Some(&node)), Ok(&receipt(node, 1)));
    }
}
