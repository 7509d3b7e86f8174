//! Usage admission: which of a node's usage records may be charged, and at what price.
//!
//! A node reports the tasks it ran; the dispatcher decides per record, from facts it looked
//! up (is the task a canary, does the ticket name this node, is the deployment ours), whether
//! it is charged. Duplicates (a task charged before) are the ledger's to find: it charges
//! once per (deployment, task id, inputs digest).
//!
//! A record is never charged for more input than the deployment's plan admits: an honest node
//! refuses larger inputs, so a record above the plan's `max_input_bytes` is a node inflating
//! its usage and is refused.

use crate::money::Credits;
use crate::pricing::{DeployPlan, PricingParams};
use crate::wire::UsageRecord;

/// What the dispatcher knows of a record's deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeploymentTerms {
    /// Its plan.
    pub plan: DeployPlan,
    /// Its model's size.
    pub model_bytes: u64,
    /// The cost of one request at the plan's largest input, as quoted when it was deployed
    /// (charged when today's prices cannot price the record).
    pub per_request_max: Credits,
}

/// The facts about one record that the caller looked up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageFacts {
    /// The task is one of the dispatcher's own canaries.
    pub canary: bool,
    /// The ticket lets this node charge this deployment
    /// ([`tickets::ticket_allows`](super::tickets::ticket_allows)).
    pub ticket_allows: bool,
    /// The deployment, if it is one of ours.
    pub deployment: Option<DeploymentTerms>,
}

/// The decision on one usage record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Charge it (at most once per task: the ledger drops duplicates) at this cost; 0 for
    /// per-instance plans, whose requests the reservation covers.
    Charge(Credits),
    /// Nothing to charge, and never worth retrying.
    Ignore(IgnoreReason),
    /// The ticket does not let this node charge this deployment, or the record claims more
    /// input than the plan admits.
    Refuse,
}

/// Why a record is not charged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IgnoreReason {
    /// A canary: the dispatcher's own task, charged to nobody.
    Canary,
    /// Not a deployment of this dispatcher.
    UnknownDeployment,
    /// Statistics the ledger cannot store (beyond `i64`): a node's bug.
    Absurd,
}

/// Decides whether `record` is charged, and its price (see the [module docs](self)).
pub fn admit(record: &UsageRecord, facts: UsageFacts, pricing: &PricingParams) -> Admission {
    if facts.canary {
        return Admission::Ignore(IgnoreReason::Canary);
    }
    // The ledger stores integers as i64.
    let sane = [record.input_bytes, record.output_bytes, record.compute_us]
        .iter()
        .all(|v| i64::try_from(*v).is_ok());
    if !sane {
        return Admission::Ignore(IgnoreReason::Absurd);
    }
    let Some(d) = facts.deployment else {
        return Admission::Ignore(IgnoreReason::UnknownDeployment);
    };
    if !facts.ticket_allows || record.input_bytes > d.plan.max_input_bytes() {
        return Admission::Refuse;
    }
    Admission::Charge(match d.plan {
        DeployPlan::PerRequest(_) => pricing
            .request_cost(d.model_bytes, record.input_bytes)
            .unwrap_or(d.per_request_max),
        DeployPlan::PerInstance(_) => Credits::ZERO,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{DeploymentId, KeyId, TaskId};
    use crate::pricing::{PerInstancePlan, PerRequestPlan, UpdateFrequency};

    fn record(input_bytes: u64) -> UsageRecord {
        UsageRecord {
            task: TaskId::from_bytes([1; 16]),
            deployment: DeploymentId::from_bytes([2; 16]),
            key: KeyId::from_bytes([3; 16]),
            ticket_nonce: [4; 16],
            inputs_digest: [5; 32],
            input_bytes,
            output_bytes: 10,
            compute_us: 5,
        }
    }

    fn terms(plan: DeployPlan) -> DeploymentTerms {
        DeploymentTerms {
            plan,
            model_bytes: 1 << 20,
            per_request_max: Credits::new(123),
        }
    }

    fn facts(deployment: Option<DeploymentTerms>) -> UsageFacts {
        UsageFacts {
            canary: false,
            ticket_allows: true,
            deployment,
        }
    }

    #[test]
    fn per_request_records_cost_what_pricing_says_per_instance_nothing() {
        let pricing = PricingParams::default();
        let per_request = terms(DeployPlan::PerRequest(PerRequestPlan {
            max_input_bytes: 4_096,
            credit_allowance: Credits::new(1_000_000),
        }));
        let expected = pricing
            .request_cost(per_request.model_bytes, 1_000)
            .expect("prices a small input");
        assert_eq!(
            admit(&record(1_000), facts(Some(per_request)), &pricing),
            Admission::Charge(expected)
        );
        // An input the plan admits but today's prices refuse is charged at the quoted maximum.
        let huge = terms(DeployPlan::PerRequest(PerRequestPlan {
            max_input_bytes: u64::MAX >> 2,
            credit_allowance: Credits::new(1_000_000),
        }));
        assert_eq!(
            admit(&record(u64::MAX >> 2), facts(Some(huge)), &pricing),
            Admission::Charge(Credits::new(123))
        );
        let per_instance = terms(DeployPlan::PerInstance(PerInstancePlan {
            guaranteed_rps: 1,
            max_input_bytes: 4_096,
            update_frequency: UpdateFrequency::Never,
            key_lifetime_s: 60,
        }));
        assert_eq!(
            admit(&record(1_000), facts(Some(per_instance)), &pricing),
            Admission::Charge(Credits::ZERO)
        );
    }

    #[test]
    fn canaries_unknown_deployments_absurd_records_and_foreign_tickets_are_not_charged() {
        let pricing = PricingParams::default();
        let d = terms(DeployPlan::PerRequest(PerRequestPlan {
            max_input_bytes: 4_096,
            credit_allowance: Credits::new(1),
        }));
        let canary = UsageFacts {
            canary: true,
            ..facts(Some(d))
        };
        assert_eq!(
            admit(&record(1), canary, &pricing),
            Admission::Ignore(IgnoreReason::Canary)
        );
        assert_eq!(
            admit(&record(1), facts(None), &pricing),
            Admission::Ignore(IgnoreReason::UnknownDeployment)
        );
        assert_eq!(
            admit(&record(u64::MAX), facts(Some(d)), &pricing),
            Admission::Ignore(IgnoreReason::Absurd)
        );
        let foreign = UsageFacts {
            ticket_allows: false,
            ..facts(Some(d))
        };
        assert_eq!(admit(&record(1), foreign, &pricing), Admission::Refuse);
        // Inflated input sizes: over the plan's limit is a lie, not a bigger bill.
        assert_eq!(
            admit(&record(4_096), facts(Some(d)), &pricing),
            Admission::Charge(pricing.request_cost(d.model_bytes, 4_096).expect("priced"))
        );
        assert_eq!(
            admit(&record(4_097), facts(Some(d)), &pricing),
            Admission::Refuse
        );
    }
}
