//! Receipts proven together (a group commit): the answers of a node that are ready together
//! (a batch's, woken at once, and those finishing while a signature is being made) share
//! one signature over a hash tree of their receipts ([`ProvenReceipt::sign_all`]). At one
//! task in flight every receipt has a signature of its own, as before; under load the node
//! signs far less than once per task.

use std::sync::Arc;

use crat_core::sign::{ProvenReceipt, Receipt};
use ed25519_dalek::SigningKey;
use parking_lot::Mutex;
use tokio::sync::oneshot;

/// A node's receipt signer. Cheap to share ([`Arc`]).
pub struct ReceiptSigner {
    key: SigningKey,
    state: Mutex<State>,
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

    /// Signs every receipt pending and sends the proofs; returns whether more arrived
    /// meanwhile (the signing task signs those too), else marks the signer idle.
    fn sign_pending(&self) -> bool {
        let pending = std::mem::take(&mut self.state.lock().pending);
        if !pending.is_empty() {
            let _idle_on_panic = IdleOnPanic(self);
            let (bodies, senders): (Vec<_>, Vec<_>) = pending.into_iter().unzip();
            let proofs = ProvenReceipt::sign_all(bodies, &self.key);
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
