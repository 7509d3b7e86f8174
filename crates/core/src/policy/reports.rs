//! Spot-check reports: which the dispatcher believes, how many it credits, and how often it
//! asks clients to spot-check.
//!
//! A client that spot-checks a task on a second (and third) replica reports the replicas'
//! signed receipts and which of them agreed. [`check_report`] refuses reports that are
//! inconsistent on their face; [`ReportBook`] credits each task once and no more reports per
//! deployment than its sampling rate explains, and keeps the sampling rates
//! ([`SamplingRates`]): a deployment one of whose replicas failed a validation recently is
//! sampled at the suspect rate.
//!
//! # Security
//! The receipts are signed by the nodes, so a client cannot invent an answer for a node, and a
//! task is credited once. Each receipt names the digest of the inputs its node ran, and a
//! report counts only when every receipt names the same inputs, so a client cannot send
//! different inputs to different replicas and report the honest one as disagreeing. Which answers *agreed* is the client's word: digests cannot be
//! compared within a tolerance, so only reports inconsistent on their face are refused (a node
//! outside the majority whose digest equals a majority node's, receipts of one operator, nodes
//! that are not the deployment's warm replicas, a task reported twice). A client lying about
//! agreement could cost a node its CRAT, and a client colluding with a replica could report
//! agreement on every task of a plan whose tasks cost it nothing (per-instance) to farm
//! validation CRAT, which is why a deployment's credited reports are capped at twice its
//! sampling rate plus a slack. Canaries, which need no client's word, are the check that does
//! not rest on it.

use std::collections::{BTreeSet, HashMap};

use crate::bps::Bps;
use crate::dispatch::DEPLOYMENTS_MAX;
use crate::expiring::{ExpiringMap, WhenFull};
use crate::id::{DeploymentId, NodeId, TaskId};
use crate::sign::SignatureError;
use crate::wire::{REPORT_RECEIPTS_MAX, ValidationReport};

/// Why a spot-check report is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// Fewer than 2 or more than [`REPORT_RECEIPTS_MAX`] receipts.
    #[error("a report carries 2..={REPORT_RECEIPTS_MAX} receipts")]
    ReceiptCount,
    /// A receipt's signature is not its node's.
    #[error("receipt: {0}")]
    Receipt(#[source] SignatureError),
    /// The receipts name different tasks or deployments.
    #[error("receipts of different tasks")]
    DifferentTasks,
    /// The receipts name different inputs: the replicas were not asked the same question, so
    /// their answers say nothing about each other (a client could otherwise frame an honest
    /// node by sending it other inputs under the same task id).
    #[error("receipts of different inputs")]
    DifferentInputs,
    /// The receipts name different models: answered while a model update rolled out, by the
    /// old model and the new one, they say nothing about each other.
    #[error("receipts of different models (a model update was rolling out)")]
    DifferentModels,
    /// Two receipts of one node.
    #[error("two receipts of {0}")]
    DuplicateNode(NodeId),
    /// A receipt's node is not a warm replica of the deployment.
    #[error("node {node} is not a replica of {deployment}")]
    NotAReplica {
        /// The node.
        node: NodeId,
        /// The deployment.
        deployment: DeploymentId,
    },
    /// Two receipts from nodes of one operator.
    #[error("two receipts from one operator")]
    SameOperator,
    /// The majority is not most of the receipts' nodes.
    #[error("the majority must be most of the receipts' nodes")]
    BadMajority,
    /// A node outside the majority returned the same digest as one inside it.
    #[error("identical answers reported as disagreeing")]
    IdenticalDisagreeing,
    /// The task was credited already.
    #[error("{0} was reported already")]
    AlreadyReported(TaskId),
    /// The deployment has more credited reports than its sampling rate explains.
    #[error("{0}: more reports than its sampling rate explains")]
    OverCap(DeploymentId),
}

/// The task and deployment a report is about (its first receipt's); checks the receipt count.
pub fn report_subject(report: &ValidationReport) -> Result<(TaskId, DeploymentId), ReportError> {
    if !(2..=REPORT_RECEIPTS_MAX).contains(&report.receipts.len()) {
        return Err(ReportError::ReceiptCount);
    }
    let first = &report.receipts[0].body;
    Ok((first.task, first.deployment))
}

/// Whether receipts naming these inputs digests answered one question: every digest equal,
/// [`ReportError::DifferentInputs`] otherwise. [`check_report`] applies it to a report's
/// receipts (so a client that sent different inputs to different replicas under one task id
/// frames nobody), and the simulator to its input framers' spot checks.
///
/// ```
/// use crat_core::policy::reports::{ReportError, same_inputs};
///
/// assert_eq!(same_inputs([&[1; 32], &[1; 32]]), Ok(()));
/// assert_eq!(same_inputs([&[1; 32], &[2; 32]]), Err(ReportError::DifferentInputs));
/// ```
pub fn same_inputs<'a>(digests: impl IntoIterator<Item = &'a [u8; 32]>) -> Result<(), ReportError> {
    let mut digests = digests.into_iter();
    let Some(first) = digests.next() else {
        return Ok(());
    };
    if digests.all(|d| d == first) {
        Ok(())
    } else {
        Err(ReportError::DifferentInputs)
    }
}

/// A report found plausible: who is credited and who failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportVerdict {
    /// The task.
    pub task: TaskId,
    /// Its deployment.
    pub deployment: DeploymentId,
    /// Validators in the majority (every receipt after the first): each earns a
    /// `validations_ok`.
    pub validators_ok: Vec<NodeId>,
    /// Nodes outside the majority: each gets a `validations_failed`.
    pub failed: Vec<NodeId>,
}

/// Checks `report` against the deployment's warm `replicas` (node, operator): signatures,
/// one task with one set of inputs, distinct nodes and operators, a real majority, no identical answers on both
/// sides (see the [module docs](self)).
pub fn check_report(
    report: &ValidationReport,
    replicas: &[(NodeId, u64)],
) -> Result<ReportVerdict, ReportError> {
    let (task, deployment) = report_subject(report)?;
    let receipts = &report.receipts;
    let mut nodes = Vec::with_capacity(receipts.len());
    let mut operators = Vec::with_capacity(receipts.len());
    for r in receipts {
        r.verify(Some(&r.body.node)).map_err(ReportError::Receipt)?;
        if r.body.task != task || r.body.deployment != deployment {
            return Err(ReportError::DifferentTasks);
        }
        same_inputs([&receipts[0].body.inputs_digest, &r.body.inputs_digest])?;
        if r.body.model != receipts[0].body.model {
            return Err(ReportError::DifferentModels);
        }
        if nodes.contains(&r.body.node) {
            return Err(ReportError::DuplicateNode(r.body.node));
        }
        // Only the deployment's replicas did its work (a node that signs receipts for tasks
        // it never ran would otherwise earn validation CRAT with a colluding client).
        let operator = replicas
            .iter()
            .find(|(n, _)| *n == r.body.node)
            .map(|(_, o)| *o)
            .ok_or(ReportError::NotAReplica {
                node: r.body.node,
                deployment,
            })?;
        if operators.contains(&operator) {
            return Err(ReportError::SameOperator);
        }
        nodes.push(r.body.node);
        operators.push(operator);
    }
    let majority = &report.majority;
    let distinct: BTreeSet<&NodeId> = majority.iter().collect();
    if distinct.len() != majority.len()
        || majority.len() < 2
        || majority.len() * 2 <= receipts.len()
        || !majority.iter().all(|n| nodes.contains(n))
    {
        return Err(ReportError::BadMajority);
    }
    let digests_in: Vec<[u8; 32]> = receipts
        .iter()
        .filter(|r| majority.contains(&r.body.node))
        .map(|r| r.body.outputs_digest)
        .collect();
    if receipts
        .iter()
        .any(|r| !majority.contains(&r.body.node) && digests_in.contains(&r.body.outputs_digest))
    {
        return Err(ReportError::IdenticalDisagreeing);
    }
    Ok(ReportVerdict {
        task,
        deployment,
        validators_ok: nodes[1..]
            .iter()
            .filter(|n| majority.contains(n))
            .copied()
            .collect(),
        failed: nodes
            .iter()
            .filter(|n| !majority.contains(n))
            .copied()
            .collect(),
    })
}

/// The shares of tasks clients are asked to spot-check, in basis points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SamplingRates {
    normal: Bps,
    suspect: Bps,
}

/// A sampling rate above [`Bps::FULL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{name} must be 0..=10000")]
pub struct RateOutOfRange {
    /// The setting's name.
    pub name: &'static str,
}

impl SamplingRates {
    /// `normal` for every deployment, `suspect` (never below the normal rate) for one a
    /// replica of which failed a validation recently.
    pub fn new(normal: Bps, suspect: Bps) -> Result<Self, RateOutOfRange> {
        let share = |rate: Bps, name| Bps::share(rate.get()).map_err(|_| RateOutOfRange { name });
        let suspect = share(suspect, "validation_bps_suspect")?;
        let normal = share(normal, "validation_bps")?;
        Ok(Self {
            normal,
            suspect: suspect.max(normal),
        })
    }

    /// The normal rate.
    pub fn normal(&self) -> Bps {
        self.normal
    }

    /// The suspect rate (at least the normal one).
    pub fn suspect(&self) -> Bps {
        self.suspect
    }
}

/// The memory of credited reports and suspected deployments (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct ReportBook {
    rates: SamplingRates,
    slack: u64,
    /// Tasks whose report was credited; the oldest forgotten beyond capacity.
    reported: ExpiringMap<(DeploymentId, TaskId), ()>,
    /// Deployments that were sampled at the suspect rate (their reports are capped by it).
    suspected: ExpiringMap<DeploymentId, ()>,
    /// Reports credited per deployment.
    counts: HashMap<DeploymentId, u64>,
}

impl ReportBook {
    /// A book remembering up to `tracked_max` reported tasks (and as many suspected
    /// deployments), crediting up to `2 × rate × tasks + slack` reports per deployment.
    pub fn new(rates: SamplingRates, tracked_max: usize, slack: u64) -> Self {
        Self {
            rates,
            slack,
            reported: ExpiringMap::new(tracked_max.max(1)),
            suspected: ExpiringMap::new(tracked_max.max(1)),
            counts: HashMap::new(),
        }
    }

    /// The sampling rate for a deployment's next lease: the suspect rate while `suspect` (one
    /// of its replicas failed a validation within the exclusion window, as
    /// [`Dispatch::suspect`](crate::dispatch::Dispatch::suspect) says), which is remembered
    /// for its report cap; the normal rate otherwise.
    pub fn lease_bps(&mut self, deployment: DeploymentId, suspect: bool) -> Bps {
        if !suspect {
            return self.rates.normal;
        }
        // Never refuses: it forgets the oldest instead.
        let _ = self
            .suspected
            .insert(deployment, (), u64::MAX, 0, WhenFull::ForgetSoonest);
        self.rates.suspect
    }

    /// The rate a deployment's credited reports are capped by: the highest it was sampled at
    /// (reports of tasks sampled at the suspect rate stay creditable afterwards).
    pub fn cap_bps(&self, deployment: &DeploymentId) -> Bps {
        if self.suspected.contains(deployment) {
            self.rates.suspect
        } else {
            self.rates.normal
        }
    }

    /// How many reports a deployment with `tasks` charged tasks may have credited:
    /// `2 × cap_bps / 10,000 × tasks + slack`.
    pub fn reports_allowed(&self, deployment: &DeploymentId, tasks: u64) -> u64 {
        tasks
            .saturating_mul(2 * u64::from(self.cap_bps(deployment).get()))
            .checked_div(u64::from(Bps::FULL.get()))
            .unwrap_or(0)
            .saturating_add(self.slack)
    }

    /// [`ReportError::AlreadyReported`] if `task` was credited already.
    pub fn check_new(&self, deployment: DeploymentId, task: TaskId) -> Result<(), ReportError> {
        if self.reported.contains(&(deployment, task)) {
            return Err(ReportError::AlreadyReported(task));
        }
        Ok(())
    }

    /// Credits the report of `task` of a deployment with `tasks` charged tasks, or refuses
    /// it: over the cap, or reported already.
    pub fn credit(
        &mut self,
        deployment: DeploymentId,
        task: TaskId,
        tasks: u64,
    ) -> Result<(), ReportError> {
        let allowed = self.reports_allowed(&deployment, tasks);
        if self.counts.len() >= DEPLOYMENTS_MAX {
            self.counts.clear();
        }
        let n = self.counts.entry(deployment).or_insert(0);
        if *n >= allowed {
            return Err(ReportError::OverCap(deployment));
        }
        if self.reported.contains(&(deployment, task)) {
            return Err(ReportError::AlreadyReported(task));
        }
        // Never refuses: it forgets the oldest instead.
        let _ = self
            .reported
            .insert((deployment, task), (), u64::MAX, 0, WhenFull::ForgetSoonest);
        *n += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::{ProvenReceipt, Receipt};
    use ed25519_dalek::SigningKey;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    fn node(b: u8) -> NodeId {
        NodeId::from_key(&key(b).verifying_key())
    }

    fn receipt(signer: u8, task: u8, digest: u8) -> ProvenReceipt {
        ProvenReceipt::sign(
            Receipt {
                task: TaskId::from_bytes([task; 16]),
                deployment: DeploymentId::from_bytes([9; 16]),
                model: crate::id::ModelId::from_bytes([5; 32]),
                node: node(signer),
                inputs_digest: [task; 32],
                outputs_digest: [digest; 32],
            },
            &key(signer),
        )
    }

    fn report(receipts: Vec<ProvenReceipt>, majority: &[u8]) -> ValidationReport {
        ValidationReport {
            receipts,
            majority: majority.iter().map(|b| node(*b)).collect(),
        }
    }

    fn replicas() -> Vec<(NodeId, u64)> {
        vec![(node(1), 10), (node(2), 20), (node(3), 30), (node(4), 30)]
    }

    #[test]
    fn a_consistent_report_credits_validators_and_fails_the_minority() {
        let r = report(
            vec![receipt(1, 5, 0), receipt(2, 5, 0), receipt(3, 5, 7)],
            &[1, 2],
        );
        let v = check_report(&r, &replicas()).expect("plausible");
        assert_eq!(v.validators_ok, vec![node(2)]);
        assert_eq!(v.failed, vec![node(3)]);
        assert_eq!(v.task, TaskId::from_bytes([5; 16]));
    }

    #[test]
    fn inconsistent_reports_are_refused() {
        let reps = replicas();
        let check = |r: ValidationReport| check_report(&r, &reps);
        assert_eq!(
            check(report(vec![receipt(1, 5, 0)], &[1])),
            Err(ReportError::ReceiptCount)
        );
        assert_eq!(
            check(report(vec![receipt(1, 5, 0), receipt(2, 6, 0)], &[1, 2])),
            Err(ReportError::DifferentTasks)
        );
        assert_eq!(
            check(report(vec![receipt(1, 5, 0), receipt(1, 5, 0)], &[1])),
            Err(ReportError::DuplicateNode(node(1)))
        );
        assert!(matches!(
            check(report(vec![receipt(1, 5, 0), receipt(8, 5, 0)], &[1, 8])),
            Err(ReportError::NotAReplica { .. })
        ));
        assert_eq!(
            check(report(vec![receipt(3, 5, 0), receipt(4, 5, 0)], &[3, 4])),
            Err(ReportError::SameOperator)
        );
        assert_eq!(
            check(report(
                vec![receipt(1, 5, 0), receipt(2, 5, 1), receipt(3, 5, 2)],
                &[1]
            )),
            Err(ReportError::BadMajority)
        );
        assert_eq!(
            check(report(
                vec![receipt(1, 5, 0), receipt(2, 5, 0), receipt(3, 5, 0)],
                &[1, 2]
            )),
            Err(ReportError::IdenticalDisagreeing)
        );
        // The same task id run on other inputs: the answers cannot be compared, so the
        // "disagreeing" replica is not failed (a client framing an honest node).
        let mut framed = receipt(3, 5, 7);
        framed.body.inputs_digest = [1; 32];
        let framed = ProvenReceipt::sign(framed.body, &key(3));
        assert_eq!(
            check(report(
                vec![receipt(1, 5, 0), receipt(2, 5, 0), framed],
                &[1, 2]
            )),
            Err(ReportError::DifferentInputs)
        );
        // Answers of the model before an update and of the new one: not comparable, so the
        // one that differs is not failed.
        let mut updated = receipt(3, 5, 7);
        updated.body.model = crate::id::ModelId::from_bytes([6; 32]);
        let updated = ProvenReceipt::sign(updated.body, &key(3));
        assert_eq!(
            check(report(
                vec![receipt(1, 5, 0), receipt(2, 5, 0), updated],
                &[1, 2]
            )),
            Err(ReportError::DifferentModels)
        );
        // A receipt signed by another key than its node's.
        let mut forged = receipt(2, 5, 0);
        forged.body.node = node(3);
        assert!(matches!(
            check(report(vec![receipt(1, 5, 0), forged], &[1, 3])),
            Err(ReportError::Receipt(_))
        ));
    }

    #[test]
    fn reports_are_capped_by_the_highest_rate_sampled_and_credited_once() {
        let rates = SamplingRates::new(Bps(100), Bps(1_000)).expect("in range");
        let mut book = ReportBook::new(rates, 16, 1);
        let d = DeploymentId::from_bytes([1; 16]);
        let task = |b: u8| TaskId::from_bytes([b; 16]);
        assert_eq!(book.lease_bps(d, false), Bps(100));
        // 1,000 tasks at 1 %: 2 × 10 + 1 reports.
        assert_eq!(book.reports_allowed(&d, 1_000), 21);
        assert_eq!(book.lease_bps(d, true), Bps(1_000));
        assert_eq!(book.lease_bps(d, false), Bps(100));
        assert_eq!(book.cap_bps(&d), Bps(1_000));
        assert_eq!(book.reports_allowed(&d, 1_000), 201);
        assert_eq!(book.credit(d, task(1), 0), Ok(()));
        assert_eq!(
            book.check_new(d, task(1)),
            Err(ReportError::AlreadyReported(task(1)))
        );
        assert_eq!(book.credit(d, task(2), 0), Err(ReportError::OverCap(d)));
        assert_eq!(
            book.credit(d, task(1), 1_000),
            Err(ReportError::AlreadyReported(task(1)))
        );
        assert_eq!(book.credit(d, task(2), 1_000), Ok(()));
    }

    #[test]
    fn rates_are_basis_points_and_the_suspect_one_never_lower() {
        assert_eq!(
            SamplingRates::new(Bps(10_001), Bps(10_000)),
            Err(RateOutOfRange {
                name: "validation_bps"
            })
        );
        assert!(SamplingRates::new(Bps(0), Bps(10_001)).is_err());
        assert_eq!(
            SamplingRates::new(Bps(500), Bps(100)).map(|r| r.suspect()),
            Ok(Bps(500))
        );
    }
}
