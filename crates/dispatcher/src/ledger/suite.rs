//! The ledger test suite: the behaviour of the [`Ledger`] trait, written once against any
//! backend, run by each backend's tests through [`ledger_suite!`].
//!
//! A backend provides a [`LedgerFactory`] (fresh, empty ledgers; reopening one, as a restarted
//! dispatcher does; the audit sums of [`LedgerTotals`]) and invokes the macro in its test
//! module, which generates one `#[test]` per suite test, named as here:
//!
//! ```ignore
//! #[cfg(test)]
//! mod suite {
//!     crate::ledger::suite::ledger_suite!(super::SqliteFactory::new());
//! }
//! ```
//!
//! The factory expression is evaluated once per generated test, so a test owns whatever its
//! factory holds (a temporary directory, a database) and its ledgers never meet another test's.
//!
//! Tests of one backend's internals (its migrations from old schemas, its storage settings)
//! stay with that backend. The fixtures here (`setup`, `per_request`, `charge`, …) are shared
//! with those tests.
//!
//! The suite is test code only (`#[cfg(test)]`): every ledger lives in this crate, so each
//! backend's unit tests reach it as `crate::ledger::suite`.

use crat_core::id::{DeploymentId, KeyId, ModelId, NodeId, TaskId};
use crat_core::money::{Credits, MicroCrat, MicroUsd};
use crat_core::pricing::{
    DeployPlan, PerInstancePlan, PerRequestPlan, PriceQuote, UpdateFrequency,
};
use crat_core::wire::{ModelSignature, RoundEarnings, Unverifiable, UsageRecord, Verifiability};
use crat_rewards::{Aggregates, Interval, NodeOutcome, RoundOutcome};

use super::{
    AccountName, DeploymentRecord, KeyRecord, Ledger, LedgerError, LedgerTotals, ModelRecord,
    ModelUpdate, NodeRecord, RoundRecord, RoundSettlement, UsageCharge, UsageOutcome,
};

pub(crate) mod acks;

/// How the suite gets the ledgers it tests.
pub(crate) trait LedgerFactory {
    /// The backend.
    type L: Ledger;

    /// A new, empty ledger with the current schema, durable (it can be [reopened]). Every
    /// ledger it returns is independent of every other one, of this factory or another: the
    /// tests run in parallel (a server backend gives each its own database or schema).
    ///
    /// [reopened]: LedgerFactory::reopen
    fn fresh(&self) -> Self::L;

    /// Closes `ledger` and opens the same database again, as a restarted dispatcher does: what
    /// it committed must be there.
    fn reopen(&self, ledger: Self::L) -> Self::L;

    /// The audit sums over the whole ledger, read in one transaction
    /// ([`LedgerTotals::is_conserved`] must hold after every method).
    fn totals(&self, ledger: &Self::L) -> Result<LedgerTotals, LedgerError>;
}

/// Generates one `#[test]` per suite test, each running it on a ledger of the factory
/// expression `$factory` (evaluated once per test; it must implement [`LedgerFactory`]).
///
/// A suite test that this list forgets is dead code, which the build's lints refuse.
macro_rules! ledger_suite {
    ($factory:expr) => {
        $crate::ledger::suite::ledger_suite!(@tests $factory; [
            data_survives_a_reopen,
            a_model_update_is_paid_from_the_allowance_kept_and_survives_a_reopen,
            a_deployment_keeps_its_verifiability,
            models_are_used_by_their_uploaders_or_by_anyone_once_public,
            accounts_and_grants,
            values_above_i64_max_are_refused_not_wrapped,
            deploy_with_insufficient_credits_stores_nothing,
            deploy_checks_references_and_consistency,
            per_instance_deploys_are_income_and_per_request_allowances_are_not,
            usage_is_charged_once_per_task_even_across_a_reopen,
            a_task_id_is_charged_once_per_distinct_inputs,
            known_usage_is_found_by_deployment_task_and_inputs,
            an_exhausted_allowance_records_uncollected,
            an_unknown_deployment_fails_the_whole_batch,
            a_stopped_deployment_is_charged_late_usage_until_its_refund,
            stop_refunds_exactly_once,
            income_window_is_half_open,
            model_signatures_are_stored_and_filled_in_once,
            latest_time_is_the_latest_of_income_journal_sessions_and_rounds,
            online_sessions_overlapping_a_window,
            many_online_sessions_are_recorded_at_once,
            validations_in_a_window,
            a_round_is_closed_over_the_nodes_active_in_it,
            idle_node_records_holding_nothing_are_forgotten,
            upsert_node_keeps_registration_and_round_state,
            close_round_applies_the_outcome_and_refuses_a_duplicate,
            a_node_reads_its_earnings_per_closed_round,
            rounds_are_unsettled_until_marked_and_keep_their_first_settlement,
            key_revocation_is_idempotent,
            model_insert_keeps_the_first,
            money_is_conserved_under_random_operations,
        ];
        acks: [
            acknowledgements_and_what_was_charged_survive_a_reopen,
            a_settlement_charges_once_and_later_records_and_acknowledgements_are_refused,
            a_failed_settlement_settles_nothing,
            values_beyond_the_database_are_refused_and_nothing_is_stored,
        ]);
    };
    (@tests $factory:expr; [$($name:ident),* $(,)?]; acks: [$($ack:ident),* $(,)?]) => {
        $(
            #[test]
            fn $name() {
                $crate::ledger::suite::$name(&$factory);
            }
        )*
        $(
            #[test]
            fn $ack() {
                $crate::ledger::suite::acks::$ack(&$factory);
            }
        )*
    };
}

pub(crate) use ledger_suite;

pub(crate) fn name(s: &str) -> AccountName {
    AccountName::new(s).unwrap()
}

pub(crate) fn key_id(n: u8) -> KeyId {
    KeyId::from_bytes([n; 16])
}

pub(crate) fn dep_id(n: u8) -> DeploymentId {
    DeploymentId::from_bytes([n; 16])
}

pub(crate) fn task(n: u64) -> TaskId {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&n.to_be_bytes());
    TaskId::from_bytes(b)
}

pub(crate) fn model_id() -> ModelId {
    ModelId::of_bytes(b"model")
}

/// An account `a` with `credits`, key 1 and the model.
pub(crate) fn setup(ledger: &dyn Ledger, credits: u64) -> AccountName {
    let a = name("alice");
    ledger.create_account(&a, 10).unwrap();
    if credits > 0 {
        ledger.grant(&a, Credits::new(credits), 10).unwrap();
    }
    ledger
        .insert_key(&KeyRecord {
            id: key_id(1),
            account: a.clone(),
            secret_hash: [7; 32],
            created_at_s: 10,
            expires_at_s: None,
            revoked_at_s: None,
        })
        .unwrap();
    ledger
        .insert_model(&ModelRecord {
            id: model_id(),
            bytes: 1000,
            account: a.clone(),
            stored_at_s: 10,
            signature: None,
        })
        .unwrap();
    a
}

fn price(upfront: u64) -> PriceQuote {
    PriceQuote {
        upfront: Credits::new(upfront),
        per_request_max: Credits::new(5),
        capacity: Credits::ZERO,
        updates: Credits::ZERO,
        credit_price_usd_micro: MicroUsd::new(100),
    }
}

pub(crate) fn per_request(
    account: &AccountName,
    id: u8,
    allowance: u64,
    at_s: u64,
) -> DeploymentRecord {
    DeploymentRecord {
        id: dep_id(id),
        account: account.clone(),
        key: key_id(1),
        model: model_id(),
        model_bytes: 1000,
        plan: DeployPlan::PerRequest(PerRequestPlan {
            max_input_bytes: 4096,
            credit_allowance: Credits::new(allowance),
        }),
        price: price(allowance),
        allowance_left: Credits::new(allowance),
        created_at_s: at_s,
        stopped_at_s: None,
        verifiability: Verifiability::Verifiable,
        updates: 0,
        updated_at_s: None,
    }
}

fn per_instance(account: &AccountName, id: u8, upfront: u64, at_s: u64) -> DeploymentRecord {
    DeploymentRecord {
        plan: DeployPlan::PerInstance(PerInstancePlan {
            guaranteed_rps: 10,
            max_input_bytes: 4096,
            update_frequency: UpdateFrequency::Never,
            key_lifetime_s: 86_400,
        }),
        allowance_left: Credits::ZERO,
        ..per_request(account, id, upfront, at_s)
    }
}

pub(crate) fn charge(dep: u8, t: u64, cost: u64, at_s: u64) -> UsageCharge {
    UsageCharge {
        record: UsageRecord {
            task: task(t),
            deployment: dep_id(dep),
            key: key_id(1),
            ticket_nonce: [0; 16],
            inputs_digest: [0; 32],
            input_bytes: 100,
            output_bytes: 10,
            compute_us: 500,
        },
        node: NodeId::from_bytes([9; 32]),
        cost: Credits::new(cost),
        at_s,
    }
}

pub(crate) fn node(n: u8) -> NodeRecord {
    NodeRecord {
        id: NodeId::from_bytes([n; 32]),
        rating: 3,
        registered_at_s: 100,
        mining_income_usd_micro_per_day: MicroUsd::new(1_000_000),
        crat_micro: MicroCrat::ZERO,
        streak: 0,
        uptime_total_s: 0,
    }
}

pub(crate) fn round(index: u64) -> RoundRecord {
    RoundRecord {
        index,
        start_s: index * 86_400,
        length_s: 86_400,
        income_usd_micro: MicroUsd::new(5),
        carry_out_usd_micro: MicroUsd::new(1),
        paid_usd_micro: MicroUsd::new(4),
        inputs_json: "{}".into(),
        outcome_json: "{}".into(),
    }
}

pub(crate) fn outcome(nodes: &[(u8, u64, u64, u64)]) -> RoundOutcome {
    RoundOutcome {
        nodes: nodes
            .iter()
            .map(|&(n, crat, streak, uptime)| NodeOutcome {
                id: NodeId::from_bytes([n; 32]),
                uptime_s: 0,
                peak_uptime_s: 0,
                committed: false,
                eligible: false,
                rank: None,
                guaranteed_usd_micro: MicroUsd::ZERO,
                bonus_usd_micro: MicroUsd::ZERO,
                crat_issued_micro: MicroCrat::ZERO,
                crat_slashed_micro: MicroCrat::ZERO,
                crat_end_micro: MicroCrat::new(crat),
                streak_end: streak,
                uptime_total_s: uptime,
            })
            .collect(),
        aggregates: Aggregates {
            pool_usd_micro: MicroUsd::ZERO,
            paid_ranks: 0,
            bonus_paid_usd_micro: MicroUsd::ZERO,
            guaranteed_paid_usd_micro: MicroUsd::ZERO,
            carry_out_usd_micro: MicroUsd::ZERO,
        },
    }
}

impl DeploymentRecord {
    pub(crate) fn with_allowance(self, left: u64) -> Self {
        Self {
            allowance_left: Credits::new(left),
            ..self
        }
    }
}

/// SplitMix64: a seeded, dependency-free generator for the randomized test.
struct Rng(crat_core::splitmix::SplitMix64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0.next_u64() % n
    }
}

/// What a deploy and a usage charge committed is there after a reopen (the backend-independent
/// half of the SQLite backend's `migrations_run_once_and_data_survives_a_reopen`).
pub(crate) fn data_survives_a_reopen(f: &impl LedgerFactory) {
    let ledger = {
        let ledger = f.fresh();
        let a = setup(&ledger, 100);
        ledger
            .create_deployment(&per_request(&a, 1, 60, 20))
            .unwrap();
        ledger.charge_usage(&[charge(1, 1, 5, 30)]).unwrap();
        ledger
    };
    let ledger = f.reopen(ledger);
    let a = name("alice");
    assert_eq!(ledger.balance(&a).unwrap(), Credits::new(40));
    let d = ledger.deployment(&dep_id(1)).unwrap().unwrap();
    assert_eq!(d, per_request(&a, 1, 60, 20).with_allowance(55));
    assert_eq!(ledger.key(&key_id(1)).unwrap().unwrap().account, a);
    assert_eq!(ledger.model(&model_id()).unwrap().unwrap().bytes, 1000);
    assert_eq!(
        ledger.usage(&dep_id(1), &task(1)).unwrap()[0].charged,
        Credits::new(5)
    );
    assert!(f.totals(&ledger).unwrap().is_conserved());
}

pub(crate) fn a_model_update_is_paid_from_the_allowance_kept_and_survives_a_reopen(
    f: &impl LedgerFactory,
) {
    let other = ModelId::of_bytes(b"model 2");
    let update = |seq, previous, model, charged, at_s| ModelUpdate {
        deployment: dep_id(1),
        seq,
        previous,
        model,
        model_bytes: 2_000,
        verifiability: Verifiability::Unverifiable(Unverifiable::RandomOperator),
        charged: Credits::new(charged),
        at_s,
    };
    let ledger = {
        let ledger = f.fresh();
        let a = setup(&ledger, 100);
        ledger
            .insert_model(&ModelRecord {
                id: other,
                bytes: 2_000,
                account: a.clone(),
                stored_at_s: 10,
                signature: None,
            })
            .unwrap();
        ledger
            .create_deployment(&per_request(&a, 1, 60, 20))
            .unwrap();
        // Out of order, from another model, an unknown model, more than the allowance:
        // refused, nothing changes.
        for bad in [
            update(2, model_id(), other, 5, 30),
            update(1, other, other, 5, 30),
        ] {
            assert!(matches!(
                ledger.update_deployment_model(&bad),
                Err(LedgerError::Invalid(_))
            ));
        }
        assert!(matches!(
            ledger.update_deployment_model(&update(1, model_id(), ModelId::of_bytes(b"?"), 5, 30)),
            Err(LedgerError::NotFound(_))
        ));
        assert!(matches!(
            ledger.update_deployment_model(&update(1, model_id(), other, 61, 30)),
            Err(LedgerError::InsufficientCredits { .. })
        ));
        let after = ledger
            .update_deployment_model(&update(1, model_id(), other, 5, 30))
            .unwrap();
        assert_eq!(
            (
                after.model,
                after.model_bytes,
                after.allowance_left,
                after.updates
            ),
            (other, 2_000, Credits::new(55), 1)
        );
        assert_eq!(after.updated_at_s, Some(30));
        assert_eq!(ledger.deployment(&dep_id(1)).unwrap(), Some(after));
        // The charge is income at the update's time; money is conserved.
        assert_eq!(ledger.income(30, 31).unwrap(), Credits::new(5));
        assert!(f.totals(&ledger).unwrap().is_conserved());
        // Back to the first model, free.
        ledger
            .update_deployment_model(&update(2, other, model_id(), 0, 40))
            .unwrap();
        ledger
    };
    let ledger = f.reopen(ledger);
    let d = ledger.deployment(&dep_id(1)).unwrap().unwrap();
    assert_eq!(
        (d.model, d.updates, d.updated_at_s),
        (model_id(), 2, Some(40))
    );
    let history = ledger.model_updates(&dep_id(1)).unwrap();
    assert_eq!(
        history,
        vec![
            update(1, model_id(), other, 5, 30),
            update(2, other, model_id(), 0, 40)
        ]
    );
    assert!(f.totals(&ledger).unwrap().is_conserved());
    // A stopped deployment takes no update.
    ledger.stop_deployment(&dep_id(1), 50, 50).unwrap();
    assert!(matches!(
        ledger.update_deployment_model(&update(3, model_id(), other, 0, 60)),
        Err(LedgerError::NotFound(_))
    ));
}

pub(crate) fn a_deployment_keeps_its_verifiability(f: &impl LedgerFactory) {
    let random = Verifiability::Unverifiable(Unverifiable::RandomOperator);
    let ledger = {
        let ledger = f.fresh();
        let a = setup(&ledger, 100);
        let d = DeploymentRecord {
            verifiability: random,
            ..per_request(&a, 1, 60, 20)
        };
        ledger.create_deployment(&d).unwrap();
        ledger
            .create_deployment(&per_request(&a, 2, 10, 20))
            .unwrap();
        ledger
    };
    let ledger = f.reopen(ledger);
    let verdicts: Vec<_> = ledger
        .active_deployments()
        .unwrap()
        .iter()
        .map(|d| (d.id, d.verifiability))
        .collect();
    assert_eq!(
        verdicts,
        vec![(dep_id(1), random), (dep_id(2), Verifiability::Verifiable)]
    );
    let stopped = ledger.stop_deployment(&dep_id(1), 30, 30).unwrap();
    assert_eq!(stopped.verifiability, random);
}

pub(crate) fn models_are_used_by_their_uploaders_or_by_anyone_once_public(f: &impl LedgerFactory) {
    let ledger = f.fresh();
    let alice = setup(&ledger, 0);
    let (bob, carol) = (name("bob"), name("carol"));
    ledger.create_account(&bob, 10).unwrap();
    ledger.create_account(&carol, 10).unwrap();
    assert!(ledger.may_use_model(&model_id(), &alice).unwrap());
    assert!(!ledger.may_use_model(&model_id(), &bob).unwrap());
    assert!(
        !ledger
            .may_use_model(&ModelId::of_bytes(b"x"), &alice)
            .unwrap()
    );
    // Bob uploads the same bytes: he owns it too; the model row is unchanged.
    ledger
        .insert_model(&ModelRecord {
            id: model_id(),
            bytes: 1000,
            account: bob.clone(),
            stored_at_s: 20,
            signature: None,
        })
        .unwrap();
    assert!(ledger.may_use_model(&model_id(), &bob).unwrap());
    assert_eq!(ledger.model(&model_id()).unwrap().unwrap().account, alice);
    // Only an owner makes it public; then anyone may use it, until made private again.
    assert!(matches!(
        ledger.set_model_public(&model_id(), &carol, true),
        Err(LedgerError::NotFound(_))
    ));
    assert!(!ledger.may_use_model(&model_id(), &carol).unwrap());
    ledger.set_model_public(&model_id(), &bob, true).unwrap();
    assert!(ledger.may_use_model(&model_id(), &carol).unwrap());
    ledger.set_model_public(&model_id(), &alice, false).unwrap();
    assert!(!ledger.may_use_model(&model_id(), &carol).unwrap());
}

pub(crate) fn accounts_and_grants(f: &impl LedgerFactory) {
    let ledger = f.fresh();
    let a = name("bob");
    assert!(matches!(ledger.balance(&a), Err(LedgerError::NotFound(_))));
    assert!(matches!(
        ledger.grant(&a, Credits::new(1), 0),
        Err(LedgerError::NotFound(_))
    ));
    ledger.create_account(&a, 0).unwrap();
    assert!(matches!(
        ledger.create_account(&a, 0),
        Err(LedgerError::Exists(_))
    ));
    assert_eq!(ledger.balance(&a).unwrap(), Credits::ZERO);
    assert_eq!(
        ledger.grant(&a, Credits::new(7), 1).unwrap(),
        Credits::new(7)
    );
    assert_eq!(
        ledger.grant(&a, Credits::new(3), 2).unwrap(),
        Credits::new(10)
    );
    assert_eq!(ledger.balance(&a).unwrap(), Credits::new(10));
    // Grants are not income.
    assert_eq!(ledger.income(0, 100).unwrap(), Credits::ZERO);
}

pub(crate) fn values_above_i64_max_are_refused_not_wrapped(f: &impl LedgerFactory) {
    let ledger = f.fresh();
    let a = setup(&ledger, 0);
    let big = i64::MAX as u64 + 1;
    assert!(matches!(
        ledger.grant(&a, Credits::new(big), 0),
        Err(LedgerError::Invalid(_))
    ));
    assert!(matches!(
        ledger.grant(&a, Credits::MAX, 0),
        Err(LedgerError::Invalid(_))
    ));
    ledger.grant(&a, Credits::new(i64::MAX as u64), 0).unwrap();
    // The balance would pass i64::MAX.
    assert!(matches!(
        ledger.grant(&a, Credits::new(1), 0),
        Err(LedgerError::Overflow(_))
    ));
    assert_eq!(ledger.balance(&a).unwrap(), Credits::new(i64::MAX as u64));
    let mut n = node(1);
    n.registered_at_s = u64::MAX;
    assert!(matches!(
        ledger.upsert_node(&n),
        Err(LedgerError::Invalid(_))
    ));
    assert!(ledger.node(&n.id).unwrap().is_none());
    let mut r = round(0);
    r.paid_usd_micro = MicroUsd::MAX;
    assert!(matches!(
        ledger.close_round(&r, &outcome(&[])),
        Err(LedgerError::Invalid(_))
    ));
    assert!(ledger.last_round().unwrap().is_none());
    let mut c = charge(1, 1, 0, 0);
    c.record.compute_us = u64::MAX;
    assert!(matches!(
        ledger.charge_usage(&[c]),
        Err(LedgerError::Invalid(_))
    ));
}

pub(crate) fn deploy_with_insufficient_credits_stores_nothing(f: &impl LedgerFactory) {
    let ledger = f.fresh();
    let a = setup(&ledger, 50);
    let err = ledger
        .create_deployment(&per_request(&a, 1, 60, 20))
        .unwrap_err();
    assert!(matches!(
        err,
        LedgerError::InsufficientCredits { balance, needed }
            if balance == Credits::new(50) && needed == Credits::new(60)
    ));
    assert!(ledger.deployment(&dep_id(1)).unwrap().is_none());
    assert!(ledger.active_deployments().unwrap().is_empty());
    assert_eq!(ledger.balance(&a).unwrap(), Credits::new(50));
    assert!(f.totals(&ledger).unwrap().is_conserved());
}

pub(crate) fn deploy_checks_references_and_consistency(f: &impl LedgerFactory) {
    let ledger = f.fresh();
    let a = setup(&ledger, 500);
    let mut d = per_request(&a, 1, 60, 20);
    d.allowance_left = Credits::ZERO;
    assert!(matches!(
        ledger.create_deployment(&d),
        Err(LedgerError::Invalid(_))
    ));
    let mut d = per_request(&a, 1, 60, 20);
    d.model = ModelId::of_bytes(b"other");
    assert!(matches!(
        ledger.create_deployment(&d),
        Err(LedgerError::NotFound(_))
    ));
    let mut d = per_request(&a, 1, 60, 20);
    d.key = key_id(2);
    assert!(matches!(
        ledger.create_deployment(&d),
        Err(LedgerError::NotFound(_))
    ));
    ledger
        .create_deployment(&per_request(&a, 1, 60, 20))
        .unwrap();
    assert!(matches!(
        ledger.create_deployment(&per_request(&a, 1, 60, 20)),
        Err(LedgerError::Exists(_))
    ));
    assert_eq!(ledger.balance(&a).unwrap(), Credits::new(440));
}

pub(crate) fn per_instance_deploys_are_income_and_per_request_allowances_are_not(
    f: &impl LedgerFactory,
) {
    let ledger = f.fresh();
    let a = setup(&ledger, 500);
    assert_eq!(
        ledger
            .create_deployment(&per_instance(&a, 1, 100, 20))
            .unwrap(),
        Credits::new(400)
    );
    assert_eq!(
        ledger
            .create_deployment(&per_request(&a, 2, 100, 21))
            .unwrap(),
        Credits::new(300)
    );
    assert_eq!(ledger.income(0, 100).unwrap(), Credits::new(100));
    let active: Vec<_> = ledger
        .active_deployments()
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(active, [dep_id(1), dep_id(2)]);
    assert_eq!(
        ledger
            .deployment(&dep_id(1))
            .unwrap()
            .unwrap()
            .allowance_left,
        Credits::ZERO
    );
}

pub(crate) fn usage_is_charged_once_per_task_even_across_a_reopen(f: &impl LedgerFactory) {
    let ledger = {
        let ledger = f.fresh();
        let a = setup(&ledger, 100);
        ledger
            .create_deployment(&per_request(&a, 1, 100, 20))
            .unwrap();
        let out = ledger
            .charge_usage(&[
                charge(1, 1, 10, 30),
                charge(1, 2, 10, 30),
                charge(1, 1, 10, 31),
            ])
            .unwrap();
        assert_eq!(
            out,
            UsageOutcome {
                accepted: 2,
                duplicates: 1,
                charged: Credits::new(20),
                uncollected: Credits::ZERO,
                duplicated: vec![2],
            }
        );
        let again = ledger.charge_usage(&[charge(1, 2, 10, 40)]).unwrap();
        assert_eq!(again.duplicates, 1);
        assert_eq!(again.charged, Credits::ZERO);
        ledger
    };
    let ledger = f.reopen(ledger);
    let out = ledger
        .charge_usage(&[charge(1, 1, 10, 50), charge(1, 3, 10, 50)])
        .unwrap();
    assert_eq!((out.accepted, out.duplicates), (1, 1));
    assert_eq!(out.charged, Credits::new(10));
    assert_eq!(
        ledger.usage_totals(&dep_id(1)).unwrap(),
        (3, Credits::new(30))
    );
    assert_eq!(
        ledger
            .deployment(&dep_id(1))
            .unwrap()
            .unwrap()
            .allowance_left,
        Credits::new(70)
    );
    let rows = ledger.usage(&dep_id(1), &task(1)).unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.at_s, 30);
    assert_eq!(row.deployment, dep_id(1));
    assert_eq!(ledger.income(0, 100).unwrap(), Credits::new(30));
    assert!(f.totals(&ledger).unwrap().is_conserved());
}

pub(crate) fn a_task_id_is_charged_once_per_distinct_inputs(f: &impl LedgerFactory) {
    let ledger = f.fresh();
    let a = setup(&ledger, 100);
    ledger
        .create_deployment(&per_request(&a, 1, 100, 20))
        .unwrap();
    let with_inputs = |digest: u8, at_s: u64| {
        let mut c = charge(1, 1, 10, at_s);
        c.record.inputs_digest = [digest; 32];
        c
    };
    // Three inputs under one task id, and a failover's second record of the first.
    let out = ledger
        .charge_usage(&[
            with_inputs(1, 30),
            with_inputs(2, 31),
            with_inputs(3, 32),
            with_inputs(1, 33),
        ])
        .unwrap();
    assert_eq!((out.accepted, out.duplicates), (3, 1));
    assert_eq!(out.charged, Credits::new(30));
    let rows = ledger.usage(&dep_id(1), &task(1)).unwrap();
    let digests: Vec<[u8; 32]> = rows.iter().map(|r| r.inputs_digest).collect();
    assert_eq!(digests, vec![[1; 32], [2; 32], [3; 32]]);
    assert!(f.totals(&ledger).unwrap().is_conserved());
}

pub(crate) fn known_usage_is_found_by_deployment_task_and_inputs(f: &impl LedgerFactory) {
    let ledger = f.fresh();
    let a = setup(&ledger, 100);
    ledger
        .create_deployment(&per_request(&a, 1, 100, 20))
        .unwrap();
    ledger.charge_usage(&[charge(1, 1, 10, 30)]).unwrap();
    let known = ledger
        .usage_known(&[
            (dep_id(1), task(1), [0; 32]),
            (dep_id(1), task(1), [1; 32]),
            (dep_id(1), task(2), [0; 32]),
            (dep_id(2), task(1), [0; 32]),
        ])
        .unwrap();
    assert_eq!(known, vec![true, false, false, false]);
}

pub(crate) fn an_exhausted_allowance_records_uncollected(f: &impl LedgerFactory) {
    let ledger = f.fresh();
    let a = setup(&ledger, 100);
    ledger
        .create_deployment(&per_request(&a, 1, 25, 20))
        .unwrap();
    let out = ledger
        .charge_usage(&[
            charge(1, 1, 10, 30),
            charge(1, 2, 10, 30),
            charge(1, 3, 10, 30),
        ])
        .unwrap();
    assert_eq!(out.charged, Credits::new(25));
    assert_eq!(out.uncollected, Credits::new(5));
    let row = ledger.usage(&dep_id(1), &task(3)).unwrap().remove(0);
    assert_eq!(
        (row.charged, row.uncollected),
        (Credits::new(5), Credits::new(5))
    );
    let out = ledger.charge_usage(&[charge(1, 4, 10, 30)]).unwrap();
    assert_eq!(
        (out.charged, out.uncollected),
        (Credits::ZERO, Credits::new(10))
    );
    assert_eq!(
        ledger
            .deployment(&dep_id(1))
            .unwrap()
            .unwrap()
            .allowance_left,
        Credits::ZERO
    );
    assert_eq!(ledger.balance(&a).unwrap(), Credits::new(75));
}

pub(crate) fn an_unknown_deployment_fails_the_whole_batch(f: &impl LedgerFactory) {
    let ledger = f.fresh();
    let a = setup(&ledger, 100);
    ledger
        .create_deployment(&per_request(&a, 1, 100, 20))
        .unwrap();
    let err = ledger
        .charge_usage(&[charge(1, 1, 10, 30), charge(9, 2, 10, 30)])
        .unwrap_err();
    assert!(matches!(err, LedgerError::NotFound(_)), "{err}");
    assert!(ledger.usage(&dep_id(1), &task(1)).unwrap().is_empty());
    assert_eq!(ledger.usage_totals(&dep_id(1)).unwrap(), (0, Credits::ZERO));
    assert_eq!(
        ledger
            .deployment(&dep_id(1))
            .unwrap()
            .unwrap()
            .allowance_left,
        Credits::new(100)
    );
    assert_eq!(ledger.income(0, 100).unwrap(), Credits::ZERO);
}

pub(crate) fn a_stopped_deployment_is_charged_late_usage_until_its_refund(f: &impl LedgerFactory) {
    let ledger = {
        let ledger = f.fresh();
        let a = setup(&ledger, 100);
        ledger
            .create_deployment(&per_request(&a, 1, 80, 20))
            .unwrap();
        let stopped = ledger.stop_deployment(&dep_id(1), 40, 100).unwrap();
        assert_eq!(
            (stopped.stopped_at_s, stopped.allowance_left),
            (Some(40), Credits::new(80))
        );
        assert_eq!(ledger.balance(&a).unwrap(), Credits::new(20));
        // Usage served before the stop and reported after it is charged.
        let out = ledger.charge_usage(&[charge(1, 1, 30, 50)]).unwrap();
        assert_eq!(out.charged, Credits::new(30));
        assert!(ledger.refund_stopped(99, 10).unwrap().is_empty());
        ledger
    };
    // Across a restart: still pending, then refunded once.
    let ledger = f.reopen(ledger);
    let a = name("alice");
    assert_eq!(ledger.stopping_deployments().unwrap().len(), 1);
    assert!(ledger.active_deployments().unwrap().is_empty());
    let refunded = ledger.refund_stopped(100, 10).unwrap();
    assert_eq!(refunded.len(), 1);
    assert_eq!(refunded[0].allowance_left, Credits::ZERO);
    assert_eq!(ledger.balance(&a).unwrap(), Credits::new(70));
    assert!(ledger.refund_stopped(1_000, 10).unwrap().is_empty());
    assert!(ledger.stopping_deployments().unwrap().is_empty());
    assert_eq!(ledger.balance(&a).unwrap(), Credits::new(70));
    assert!(f.totals(&ledger).unwrap().is_conserved());
}

pub(crate) fn stop_refunds_exactly_once(f: &impl LedgerFactory) {
    let ledger = f.fresh();
    let a = setup(&ledger, 100);
    ledger
        .create_deployment(&per_request(&a, 1, 80, 20))
        .unwrap();
    ledger.charge_usage(&[charge(1, 1, 30, 30)]).unwrap();
    let stopped = ledger.stop_deployment(&dep_id(1), 40, 40).unwrap();
    assert_eq!(stopped.allowance_left, Credits::ZERO);
    assert_eq!(stopped.stopped_at_s, Some(40));
    assert_eq!(ledger.balance(&a).unwrap(), Credits::new(70));
    let again = ledger.stop_deployment(&dep_id(1), 50, 50).unwrap();
    assert_eq!(again, stopped);
    assert_eq!(ledger.balance(&a).unwrap(), Credits::new(70));
    assert_eq!(ledger.deployment(&dep_id(1)).unwrap().unwrap(), stopped);
    assert!(ledger.active_deployments().unwrap().is_empty());
    assert!(matches!(
        ledger.stop_deployment(&dep_id(2), 50, 50),
        Err(LedgerError::NotFound(_))
    ));
    // Usage reported after the stop is recorded, uncollected.
    let out = ledger.charge_usage(&[charge(1, 2, 5, 60)]).unwrap();
    assert_eq!(
        (out.charged, out.uncollected),
        (Credits::ZERO, Credits::new(5))
    );
    assert!(f.totals(&ledger).unwrap().is_conserved());
}

pub(crate) fn income_window_is_half_open(f: &impl LedgerFactory) {
    let ledger = f.fresh();
    let a = setup(&ledger, 1000);
    ledger
        .create_deployment(&per_instance(&a, 1, 100, 100))
        .unwrap();
    ledger
        .create_deployment(&per_request(&a, 2, 500, 100))
        .unwrap();
    ledger
        .charge_usage(&[
            charge(2, 1, 1, 199),
            charge(2, 2, 2, 200),
            charge(2, 3, 4, 299),
        ])
        .unwrap();
    assert_eq!(ledger.income(100, 200).unwrap(), Credits::new(101));
    assert_eq!(ledger.income(101, 200).unwrap(), Credits::new(1));
    assert_eq!(ledger.income(200, 300).unwrap(), Credits::new(6));
    assert_eq!(ledger.income(200, 299).unwrap(), Credits::new(2));
    assert_eq!(ledger.income(0, u64::MAX).unwrap(), Credits::new(107));
    assert_eq!(ledger.income(300, 200).unwrap(), Credits::ZERO);
}

pub(crate) fn model_signatures_are_stored_and_filled_in_once(f: &impl LedgerFactory) {
    use crat_core::tensor::DType;
    use crat_core::wire::TensorSignature;
    let ledger = f.fresh();
    let a = setup(&ledger, 0);
    let sig = |name: &str| ModelSignature {
        inputs: vec![TensorSignature {
            name: name.into(),
            dtype: DType::F32,
            shape: Some(vec![None, Some(3)]),
        }],
        outputs: vec![TensorSignature {
            name: "out".into(),
            dtype: DType::I64,
            shape: None,
        }],
    };
    let record = |signature| ModelRecord {
        id: model_id(),
        bytes: 10,
        account: a.clone(),
        stored_at_s: 10,
        signature,
    };
    // Stored before signatures were: none, then filled in once.
    ledger.insert_model(&record(None)).unwrap();
    assert_eq!(ledger.model(&model_id()).unwrap().unwrap().signature, None);
    ledger.set_model_signature(&model_id(), &sig("x")).unwrap();
    ledger.set_model_signature(&model_id(), &sig("y")).unwrap();
    ledger.insert_model(&record(Some(sig("z")))).unwrap();
    assert_eq!(
        ledger.model(&model_id()).unwrap().unwrap().signature,
        Some(sig("x")),
        "the first one recorded is kept"
    );
    assert!(matches!(
        ledger.set_model_signature(&ModelId::of_bytes(b"other"), &sig("x")),
        Err(LedgerError::NotFound(_))
    ));
    let mut huge = sig("x");
    huge.inputs[0].shape = Some(vec![Some(1); 65]);
    assert!(matches!(
        ledger.set_model_signature(&model_id(), &huge),
        Err(LedgerError::Invalid(_))
    ));
}

pub(crate) fn latest_time_is_the_latest_of_income_journal_sessions_and_rounds(
    f: &impl LedgerFactory,
) {
    let ledger = f.fresh();
    assert_eq!(ledger.latest_time_s().unwrap(), 0);
    let a = setup(&ledger, 1000);
    assert_eq!(ledger.latest_time_s().unwrap(), 10, "the grant");
    ledger
        .create_deployment(&per_request(&a, 2, 500, 100))
        .unwrap();
    ledger.charge_usage(&[charge(2, 1, 1, 250)]).unwrap();
    assert_eq!(ledger.latest_time_s().unwrap(), 250, "the usage charge");
    let n = node(1);
    ledger.upsert_node(&n).unwrap();
    ledger.record_online(&n.id, 200, 400).unwrap();
    assert_eq!(ledger.latest_time_s().unwrap(), 400, "the session's end");
    ledger.close_round(&round(0), &outcome(&[])).unwrap();
    assert_eq!(ledger.latest_time_s().unwrap(), 86_400, "the round's end");
    // An older charge recorded later (a clock that went back) does not lower it.
    ledger.charge_usage(&[charge(2, 2, 1, 300)]).unwrap();
    assert_eq!(ledger.latest_time_s().unwrap(), 86_400);
}

/// `record_online_many` records as `record_online` does, in one call: sessions created and
/// extended (never shortened, never past a cut), a node not stored skipped and counted, a
/// session ending before it starts refusing the whole call.
pub(crate) fn many_online_sessions_are_recorded_at_once(f: &impl LedgerFactory) {
    let ledger = f.fresh();
    let (a, b, stranger) = (node(1), node(2), node(3));
    ledger.upsert_node(&a).unwrap();
    ledger.upsert_node(&b).unwrap();
    ledger.cut_online(&b.id, 100, 120).unwrap();
    let skipped = ledger
        .record_online_many(&[
            (a.id, 0, 10),
            (a.id, 0, 50),
            (a.id, 0, 40),
            (a.id, 60, 70),
            (b.id, 100, 150),
            (stranger.id, 0, 10),
        ])
        .unwrap();
    assert_eq!(skipped, 1);
    let iv = |x, y| Interval::new(x, y);
    assert_eq!(
        ledger.online_sessions(&a.id, 0, 1000).unwrap(),
        [iv(0, 50), iv(60, 70)]
    );
    assert_eq!(
        ledger.online_sessions(&b.id, 0, 1000).unwrap(),
        [iv(100, 120)]
    );
    assert!(matches!(
        ledger.record_online_many(&[(a.id, 0, 500), (a.id, 400, 399)]),
        Err(LedgerError::Invalid(_))
    ));
    assert_eq!(
        ledger.online_sessions(&a.id, 0, 1000).unwrap(),
        [iv(0, 50), iv(60, 70)],
        "nothing of a refused call is recorded"
    );
    assert_eq!(ledger.record_online_many(&[]).unwrap(), 0);
}

pub(crate) fn online_sessions_overlapping_a_window(f: &impl LedgerFactory) {
    let ledger = f.fresh();
    let n = node(1);
    assert!(matches!(
        ledger.record_online(&n.id, 0, 10),
        Err(LedgerError::NotFound(_))
    ));
    ledger.upsert_node(&n).unwrap();
    ledger.record_online(&n.id, 0, 10).unwrap();
    ledger.record_online(&n.id, 0, 50).unwrap();
    ledger.record_online(&n.id, 0, 40).unwrap(); // never shrinks
    ledger.record_online(&n.id, 100, 150).unwrap();
    ledger.record_online(&n.id, 200, 300).unwrap();
    assert!(matches!(
        ledger.record_online(&n.id, 400, 399),
        Err(LedgerError::Invalid(_))
    ));
    let iv = |a, b| Interval::new(a, b);
    assert_eq!(
        ledger.online_sessions(&n.id, 0, 1000).unwrap(),
        [iv(0, 50), iv(100, 150), iv(200, 300)]
    );
    assert_eq!(
        ledger.online_sessions(&n.id, 50, 100).unwrap(),
        Vec::<Interval>::new()
    );
    assert_eq!(
        ledger.online_sessions(&n.id, 49, 101).unwrap(),
        [iv(0, 50), iv(100, 150)]
    );
    assert_eq!(
        ledger.online_sessions(&n.id, 120, 250).unwrap(),
        [iv(100, 150), iv(200, 300)]
    );
    assert_eq!(
        ledger.online_sessions(&n.id, 299, u64::MAX).unwrap(),
        [iv(200, 300)]
    );
    assert!(
        ledger
            .online_sessions(&node(2).id, 0, 1000)
            .unwrap()
            .is_empty()
    ); // A failed challenge cuts a session; uptime reported late never extends it again.
    ledger.record_online(&n.id, 500, 600).unwrap();
    ledger.cut_online(&n.id, 500, 520).unwrap();
    ledger.record_online(&n.id, 500, 650).unwrap();
    assert_eq!(
        ledger.online_sessions(&n.id, 500, 1000).unwrap(),
        [Interval::new(500, 520)]
    );
    ledger.cut_online(&n.id, 700, 700).unwrap();
    ledger.record_online(&n.id, 700, 710).unwrap();
    assert_eq!(
        ledger.online_sessions(&n.id, 699, 1000).unwrap(),
        [Interval::new(700, 700)]
    );
    assert!(matches!(
        ledger.cut_online(&n.id, 800, 799),
        Err(LedgerError::Invalid(_))
    ));
}

pub(crate) fn validations_in_a_window(f: &impl LedgerFactory) {
    let ledger = f.fresh();
    let n = node(1);
    ledger.upsert_node(&n).unwrap();
    for (ok, at) in [(true, 10), (true, 10), (false, 10), (true, 20), (false, 30)] {
        ledger.record_validation(&n.id, ok, at).unwrap();
    }
    assert_eq!(ledger.validations(&n.id, 0, 100).unwrap(), (3, 2));
    assert_eq!(ledger.validations(&n.id, 10, 30).unwrap(), (3, 1));
    assert_eq!(ledger.validations(&n.id, 11, 30).unwrap(), (1, 0));
    assert_eq!(ledger.validations(&node(2).id, 0, 100).unwrap(), (0, 0));
}

pub(crate) fn a_round_is_closed_over_the_nodes_active_in_it(f: &impl LedgerFactory) {
    let ledger = f.fresh();
    for b in 1..=5 {
        ledger.upsert_node(&node(b)).unwrap(); // registered at 100
    }
    let id = |b: u8| NodeId::from_bytes([b; 32]);
    ledger.record_online(&id(1), 150, 250).unwrap(); // overlaps [200, 300)
    ledger.record_online(&id(2), 100, 200).unwrap(); // ends as the window starts
    ledger.record_validation(&id(3), true, 299).unwrap(); // validated in it
    ledger.record_validation(&id(4), true, 300).unwrap(); // after it
    // Node 5 has a streak (from round 0) that a round without it would not end.
    ledger
        .close_round(&round(0), &outcome(&[(5, 0, 2, 100)]))
        .unwrap();
    let ids = |v: Vec<NodeRecord>| v.into_iter().map(|n| n.id).collect::<Vec<_>>();
    assert_eq!(
        ids(ledger.round_nodes(200, 300).unwrap()),
        [id(1), id(3), id(5)]
    );
    // Nodes registered at or after the window's end are left out.
    assert_eq!(
        ids(ledger.round_nodes(0, 100).unwrap()),
        Vec::<NodeId>::new()
    );
    assert_eq!(
        ids(ledger.round_nodes(100, 201).unwrap()),
        [id(1), id(2), id(5)]
    );
}

pub(crate) fn idle_node_records_holding_nothing_are_forgotten(f: &impl LedgerFactory) {
    let ledger = f.fresh();
    for b in 1..=6 {
        ledger.upsert_node(&node(b)).unwrap(); // registered at 100
    }
    let id = |b: u8| NodeId::from_bytes([b; 32]);
    ledger.record_online(&id(1), 100, 500).unwrap(); // idle since 500
    ledger.record_online(&id(2), 100, 1_500).unwrap(); // online recently
    ledger.record_validation(&id(3), true, 1_200).unwrap(); // validated recently
    ledger.record_validation(&id(6), true, 200).unwrap(); // validated long ago
    // Node 4 holds CRAT and node 5 a streak: both kept, however idle.
    ledger
        .close_round(&round(0), &outcome(&[(4, 7, 0, 0), (5, 0, 3, 0)]))
        .unwrap();
    assert_eq!(ledger.forget_idle_nodes(1_000, 1).unwrap(), 1, "bounded");
    assert_eq!(ledger.forget_idle_nodes(1_000, 100).unwrap(), 1);
    assert_eq!(ledger.forget_idle_nodes(1_000, 100).unwrap(), 0);
    let kept: Vec<NodeId> = ledger.nodes().unwrap().into_iter().map(|n| n.id).collect();
    assert_eq!(kept, [id(2), id(3), id(4), id(5)]);
    // Their history went with them; the others' stays.
    assert!(
        ledger
            .online_sessions(&id(1), 0, u64::MAX)
            .unwrap()
            .is_empty()
    );
    assert_eq!(ledger.validations(&id(6), 0, u64::MAX).unwrap(), (0, 0));
    assert_eq!(ledger.validations(&id(3), 0, u64::MAX).unwrap(), (1, 0));
    // A forgotten node that comes back registers as new.
    ledger.upsert_node(&node(1)).unwrap();
    ledger.record_online(&id(1), 2_000, 2_010).unwrap();
    assert!(ledger.node(&id(1)).unwrap().is_some());
}

pub(crate) fn upsert_node_keeps_registration_and_round_state(f: &impl LedgerFactory) {
    let ledger = f.fresh();
    let n = node(1);
    ledger.upsert_node(&n).unwrap();
    ledger
        .close_round(&round(0), &outcome(&[(1, 5_000, 1, 86_000)]))
        .unwrap();
    let mut again = node(1);
    again.rating = 5;
    again.registered_at_s = 999;
    again.mining_income_usd_micro_per_day = MicroUsd::new(2);
    again.crat_micro = MicroCrat::new(1);
    ledger.upsert_node(&again).unwrap();
    let stored = ledger.node(&n.id).unwrap().unwrap();
    assert_eq!(
        stored,
        NodeRecord {
            id: n.id,
            rating: 5,
            registered_at_s: 100,
            mining_income_usd_micro_per_day: MicroUsd::new(2),
            crat_micro: MicroCrat::new(5_000),
            streak: 1,
            uptime_total_s: 86_000,
        }
    );
    let mut bad = node(2);
    bad.rating = 6;
    assert!(matches!(
        ledger.upsert_node(&bad),
        Err(LedgerError::Invalid(_))
    ));
    ledger.upsert_node(&node(0)).unwrap();
    let ids: Vec<_> = ledger.nodes().unwrap().into_iter().map(|n| n.id).collect();
    assert_eq!(ids, [node(0).id, node(1).id]);
}

pub(crate) fn close_round_applies_the_outcome_and_refuses_a_duplicate(f: &impl LedgerFactory) {
    let ledger = f.fresh();
    ledger.upsert_node(&node(1)).unwrap();
    ledger.upsert_node(&node(2)).unwrap();
    ledger
        .close_round(&round(0), &outcome(&[(1, 10, 1, 100), (2, 20, 0, 50)]))
        .unwrap();
    assert_eq!(
        ledger.node(&node(2).id).unwrap().unwrap().crat_micro,
        MicroCrat::new(20)
    );
    assert!(matches!(
        ledger.close_round(&round(0), &outcome(&[(1, 99, 9, 999)])),
        Err(LedgerError::Exists(_))
    ));
    assert_eq!(
        ledger.node(&node(1).id).unwrap().unwrap().crat_micro,
        MicroCrat::new(10)
    );
    // A node the ledger does not know fails the round atomically.
    assert!(matches!(
        ledger.close_round(&round(1), &outcome(&[(1, 30, 2, 200), (3, 1, 1, 1)])),
        Err(LedgerError::NotFound(_))
    ));
    assert!(ledger.round(1).unwrap().is_none());
    assert_eq!(ledger.node(&node(1).id).unwrap().unwrap().streak, 1);
    ledger
        .close_round(&round(1), &outcome(&[(1, 30, 2, 200)]))
        .unwrap();
    ledger.close_round(&round(2), &outcome(&[])).unwrap();
    let n1 = ledger.node(&node(1).id).unwrap().unwrap();
    assert_eq!(
        (n1.crat_micro, n1.streak, n1.uptime_total_s),
        (MicroCrat::new(30), 2, 200)
    );
    assert_eq!(ledger.last_round().unwrap(), Some(round(2)));
    assert_eq!(ledger.round(0).unwrap(), Some(round(0)));
    assert_eq!(ledger.round(u64::MAX).unwrap(), None);
    let idx: Vec<_> = ledger
        .rounds(2)
        .unwrap()
        .into_iter()
        .map(|r| r.index)
        .collect();
    assert_eq!(idx, [2, 1]);
    assert_eq!(ledger.rounds(10).unwrap().len(), 3);
}

pub(crate) fn a_node_reads_its_earnings_per_closed_round(f: &impl LedgerFactory) {
    let ledger = f.fresh();
    ledger.upsert_node(&node(1)).unwrap();
    ledger.upsert_node(&node(2)).unwrap();
    for i in 0..3 {
        let mut o = outcome(&[(1, 10 * (i + 1), i, 100), (2, 5, 0, 50)]);
        o.nodes[0].rank = Some(1);
        o.nodes[0].committed = true;
        o.nodes[0].uptime_s = 80_000 + i;
        o.nodes[0].guaranteed_usd_micro = MicroUsd::new(1_000 + i);
        o.nodes[0].bonus_usd_micro = MicroUsd::new(7);
        o.nodes[0].crat_issued_micro = MicroCrat::new(3);
        ledger.close_round(&round(i), &o).unwrap();
    }
    let mine = ledger.node_rounds(&node(1).id, 2).unwrap();
    assert_eq!(mine.iter().map(|r| r.index).collect::<Vec<_>>(), [2, 1]);
    assert_eq!(
        mine[0],
        RoundEarnings {
            index: 2,
            start_s: 2 * 86_400,
            uptime_s: 80_002,
            committed: true,
            rank: Some(1),
            guaranteed_usd_micro: MicroUsd::new(1_002),
            bonus_usd_micro: MicroUsd::new(7),
            crat_issued_micro: MicroCrat::new(3),
            crat_slashed_micro: MicroCrat::ZERO,
            crat_end_micro: MicroCrat::new(30),
        }
    );
    let theirs = ledger.node_rounds(&node(2).id, 10).unwrap();
    assert_eq!(theirs.len(), 3);
    assert!(theirs.iter().all(|r| r.rank.is_none() && !r.committed));
    assert!(ledger.node_rounds(&node(3).id, 10).unwrap().is_empty());
    assert_eq!(ledger.tasks_served(&node(1).id, 0, u64::MAX).unwrap(), 0);
}

pub(crate) fn rounds_are_unsettled_until_marked_and_keep_their_first_settlement(
    f: &impl LedgerFactory,
) {
    let ledger = f.fresh();
    for i in 0..3 {
        ledger.close_round(&round(i), &outcome(&[])).unwrap();
    }
    assert_eq!(ledger.unsettled_rounds(10).unwrap(), [0, 1, 2]);
    assert_eq!(ledger.unsettled_rounds(2).unwrap(), [0, 1]);
    assert_eq!(ledger.round_settlement(1).unwrap(), None);
    // A later round settles before an earlier one.
    let first = RoundSettlement {
        settled_at_s: 500,
        digest: Some([9; 32]),
    };
    assert_eq!(ledger.mark_round_settled(1, &first).unwrap(), first);
    assert_eq!(ledger.unsettled_rounds(10).unwrap(), [0, 2]);
    // Marking again keeps the first record.
    let later = RoundSettlement {
        settled_at_s: 900,
        digest: None,
    };
    assert_eq!(ledger.mark_round_settled(1, &later).unwrap(), first);
    assert_eq!(ledger.round_settlement(1).unwrap(), Some(first));
    // A settlement without a digest is recorded as such.
    assert_eq!(ledger.mark_round_settled(0, &later).unwrap(), later);
    assert_eq!(ledger.unsettled_rounds(10).unwrap(), [2]);
    // A round that is not closed cannot be settled.
    assert!(matches!(
        ledger.mark_round_settled(7, &first),
        Err(LedgerError::NotFound(_))
    ));
    assert!(matches!(
        ledger.round_settlement(u64::MAX),
        Err(LedgerError::NotFound(_))
    ));
    assert!(matches!(
        ledger.mark_round_settled(
            2,
            &RoundSettlement {
                settled_at_s: u64::MAX,
                digest: None
            }
        ),
        Err(LedgerError::Invalid(_))
    ));
    assert_eq!(ledger.unsettled_rounds(10).unwrap(), [2]);
}

pub(crate) fn key_revocation_is_idempotent(f: &impl LedgerFactory) {
    let ledger = f.fresh();
    let a = setup(&ledger, 0);
    let k2 = KeyRecord {
        id: key_id(2),
        account: a.clone(),
        secret_hash: [8; 32],
        created_at_s: 20,
        expires_at_s: Some(1000),
        revoked_at_s: None,
    };
    ledger.insert_key(&k2).unwrap();
    assert!(matches!(
        ledger.insert_key(&k2),
        Err(LedgerError::Exists(_))
    ));
    let mut orphan = k2.clone();
    orphan.id = key_id(3);
    orphan.account = name("nobody");
    assert!(matches!(
        ledger.insert_key(&orphan),
        Err(LedgerError::NotFound(_))
    ));
    let revoked = ledger.revoke_key(&key_id(2), 50).unwrap();
    assert_eq!(revoked.revoked_at_s, Some(50));
    assert_eq!(ledger.revoke_key(&key_id(2), 60).unwrap(), revoked);
    assert_eq!(ledger.key(&key_id(2)).unwrap(), Some(revoked.clone()));
    assert!(matches!(
        ledger.revoke_key(&key_id(3), 60),
        Err(LedgerError::NotFound(_))
    ));
    let ids: Vec<_> = ledger.keys(&a).unwrap().into_iter().map(|k| k.id).collect();
    assert_eq!(ids, [key_id(1), key_id(2)]);
    assert!(ledger.keys(&name("nobody")).unwrap().is_empty());
}

pub(crate) fn model_insert_keeps_the_first(f: &impl LedgerFactory) {
    let ledger = f.fresh();
    let a = setup(&ledger, 0);
    ledger.create_account(&name("eve"), 0).unwrap();
    ledger
        .insert_model(&ModelRecord {
            id: model_id(),
            bytes: 5,
            account: name("eve"),
            stored_at_s: 99,
            signature: None,
        })
        .unwrap();
    let m = ledger.model(&model_id()).unwrap().unwrap();
    assert_eq!((m.bytes, m.account, m.stored_at_s), (1000, a, 10));
    assert!(ledger.model(&ModelId::of_bytes(b"x")).unwrap().is_none());
}

pub(crate) fn money_is_conserved_under_random_operations(f: &impl LedgerFactory) {
    for seed in 0..8u64 {
        let ledger = f.fresh();
        let mut rng = Rng(crat_core::splitmix::SplitMix64::new(seed));
        let accounts = [name("a0"), name("a1"), name("a2")];
        for (i, a) in accounts.iter().enumerate() {
            ledger.create_account(a, 0).unwrap();
            ledger
                .insert_key(&KeyRecord {
                    id: key_id(i as u8),
                    account: a.clone(),
                    secret_hash: [0; 32],
                    created_at_s: 0,
                    expires_at_s: None,
                    revoked_at_s: None,
                })
                .unwrap();
        }
        ledger
            .insert_model(&ModelRecord {
                id: model_id(),
                bytes: 1000,
                account: accounts[0].clone(),
                stored_at_s: 0,
                signature: None,
            })
            .unwrap();
        let mut granted = 0u64;
        let mut deployments: Vec<u8> = Vec::new();
        for step in 0..400u64 {
            let a = rng.below(3) as usize;
            match rng.below(10) {
                0 | 1 => {
                    let c = rng.below(1000);
                    ledger.grant(&accounts[a], Credits::new(c), step).unwrap();
                    granted += c;
                }
                2 | 3 => {
                    let id = deployments.len() as u8;
                    let upfront = rng.below(500);
                    let mut d = if rng.below(2) == 0 {
                        per_request(&accounts[a], id, upfront, step)
                    } else {
                        per_instance(&accounts[a], id, upfront, step)
                    };
                    d.key = key_id(a as u8);
                    match ledger.create_deployment(&d) {
                        Ok(_) => deployments.push(id),
                        Err(LedgerError::InsufficientCredits { .. }) => {}
                        Err(e) => panic!("seed {seed}: {e}"),
                    }
                }
                4 => {
                    if let Some(&d) = deployments.get(rng.below(256) as usize) {
                        // Refunded now or a few steps later; usage in between is
                        // still charged from the allowance.
                        let refund_at = step + rng.below(4) * rng.below(8);
                        ledger.stop_deployment(&dep_id(d), step, refund_at).unwrap();
                    }
                }
                _ => {
                    if deployments.is_empty() {
                        continue;
                    }
                    let batch: Vec<_> = (0..rng.below(8))
                        .map(|_| {
                            let d = deployments[rng.below(deployments.len() as u64) as usize];
                            // Task ids repeat often, so duplicates are exercised.
                            charge(d, rng.below(300), rng.below(50), step)
                        })
                        .collect();
                    ledger.charge_usage(&batch).unwrap();
                }
            }
            ledger.refund_stopped(step, 1_024).unwrap();
            let t = f.totals(&ledger).unwrap();
            assert_eq!(t.granted, Credits::new(granted), "seed {seed} step {step}");
            assert!(t.is_conserved(), "seed {seed} step {step}: {t:?}");
        }
        let t = f.totals(&ledger).unwrap();
        assert_eq!(ledger.income(0, u64::MAX).unwrap(), t.income, "seed {seed}");
    }
}
