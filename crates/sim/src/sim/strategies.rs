//! The strategies beside the cheaters (`[strategies]`), each meeting the dispatcher's own rule
//! from `crat_core::policy`, never a copy of it:
//!
//! - **hardware liars** register a better GPU than they have. What they are rated and paid is
//!   what the proof of hardware gives them ([`liar_proofs`]): the challenges planned for the
//!   claim ([`hardware::claims_of`], [`hardware::plan`]), answered when their real card would
//!   answer, judged by [`hardware::prove_device`] and [`hardware::prove_node`]. They are
//!   re-challenged at the class they proved ([`hardware::recheck_claims`]), which their card
//!   answers the same way every time, so a re-challenge never ends their sessions;
//! - **usage inventors** report invented tasks on top of those they served; what is charged
//!   is what [`acks::chargeable`] admits against their clients' acknowledgements
//!   ([`InventedUsage`]);
//! - **receipt withholders** never sign receipts: every answer of theirs that is checked
//!   fails (in `validation`), and the rewards rules slash them for it;
//! - **input framers** (clients) send their spot checks' validators other inputs than the
//!   worker; the report is judged by [`reports::same_inputs`] ([`framed_reports_refused`]).

use crat_core::gpu_table::{GpuEntry, GpuTable};
use crat_core::hardware::{CpuInfo, GpuInfo, HardwareInfo, PowerRating};
use crat_core::money::{Credits, MicroUsd};
use crat_core::policy::acks::{self, Tally};
use crat_core::policy::hardware::{self, Answer, ProofConfig};
use crat_core::policy::reports;

use super::Node;
use super::validation::Draws;
use crate::SimError;
use crate::scenario::{Strategies, Strategy};

/// What a liar of one GPU of the mix is rated and paid: what its answers prove.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct LiarProof {
    /// The card it claims.
    pub(super) claimed: String,
    /// The rating it proves.
    pub(super) rating: PowerRating,
    /// The daily mining income it proves.
    pub(super) income: MicroUsd,
}

/// The card a liar with `own` claims: `claim` when named, otherwise the slowest card of the
/// table faster than `own` and rated `classes_up` above it (at most 5); `own` itself when
/// there is none (nothing faster to claim).
fn claimed_card<'t>(
    table: &'t GpuTable,
    own: &'t GpuEntry,
    claim: &str,
    classes_up: u8,
) -> &'t GpuEntry {
    if let Some(e) = (!claim.is_empty()).then(|| table.lookup(claim)).flatten() {
        return e;
    }
    let target = own.rating.get().saturating_add(classes_up).min(5);
    table
        .entries()
        .iter()
        .filter(|e| e.rating.get() >= target && e.fp32_gflops > own.fp32_gflops)
        .min_by_key(|e| (e.fp32_gflops, e.mining_income_usd_micro_per_day))
        .unwrap_or(own)
}

/// When a card of `own` answers `challenge`: the deadline's fixed part (allowance and the
/// matrices' generation: [`hardware::deadline_ms`] without its product term) scaled by
/// `overhead_pct`, plus the product at `speed_pct` of the card's FP32 throughput
/// ([`hardware::deadline_ms`]'s product term at a margin of 100 %).
fn answer_ms(
    config: &ProofConfig,
    challenge: &hardware::DeviceChallenge,
    own: &GpuEntry,
    st: &Strategies,
) -> u32 {
    let (n, k, m) = challenge.spec_sizes();
    let fixed = ProofConfig {
        margin_pct: 0,
        ..config.clone()
    };
    let product = ProofConfig {
        margin_pct: 100,
        allowance_ms: 0,
        generation_ns_per_element: 0,
        ..config.clone()
    };
    let fixed_ms = hardware::deadline_ms(&fixed, n, k, m, 1);
    let gflops = (u128::from(own.fp32_gflops) * u128::from(st.liar_speed_pct) / 100).max(1);
    let product_ms = hardware::deadline_ms(&product, n, k, m, gflops as u64);
    let fixed_ms = u64::from(fixed_ms) * u64::from(st.liar_overhead_pct) / 100;
    u32::try_from(fixed_ms.saturating_add(u64::from(product_ms))).unwrap_or(u32::MAX)
}

/// What a liar owning each GPU of the mix (`gpus`, table rows) proves with the dispatcher's
/// default [`ProofConfig`]: the challenges planned for its claim, answered when its card
/// answers ([`answer_ms`]; the CPU challenge in time), judged by the policy.
pub(super) fn liar_proofs(gpus: &[&GpuEntry], st: &Strategies) -> Vec<LiarProof> {
    let table = GpuTable::builtin();
    let config = ProofConfig::default();
    gpus.iter()
        .map(|own| {
            let claimed = claimed_card(table, own, &st.liar_claim_gpu, st.liar_classes_up);
            let proven = prove(table, &config, own, &claimed.name, st);
            LiarProof {
                claimed: claimed.name.clone(),
                rating: proven.rating,
                income: proven.income,
            }
        })
        .collect()
}

/// What a node owning `own` and registering one GPU named `claimed` proves.
fn prove(
    table: &GpuTable,
    config: &ProofConfig,
    own: &GpuEntry,
    claimed: &str,
    st: &Strategies,
) -> hardware::Proven {
    let registration = HardwareInfo {
        gpus: vec![GpuInfo {
            name: claimed.into(),
            memory_bytes: 0,
            driver: String::new(),
            compute_capability: None,
        }],
        cpu: CpuInfo {
            model: String::new(),
            cores: 1,
            memory_bytes: 0,
        },
    };
    let challenges = hardware::plan(config, &hardware::claims_of(table, &registration));
    let proofs: Vec<hardware::DeviceProof> = challenges
        .iter()
        .map(|c| {
            let elapsed_ms = match c.device {
                None => c.deadline_ms,
                Some(_) => answer_ms(config, c, own, st),
            };
            hardware::prove_device(table, config, c, Some(Answer { elapsed_ms }))
        })
        .collect();
    hardware::prove_node(&proofs)
}

/// A round's usage inventors: invented credits they reported and credits charged beyond
/// what their clients acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct InventedUsage {
    /// Credits of the invented tasks reported.
    pub(super) attempted: u64,
    /// Credits charged beyond the acknowledged ones (0 under the rule).
    pub(super) charged: u64,
}

/// Phase 4½: each inventor's records of the round (the `draws[k].tasks` it served, each of
/// `cost`, acknowledged by its clients, and `inventor_inflation_bps` of them again invented)
/// charged by [`acks::chargeable`]; what it admits beyond the acknowledged credits adds to the
/// round's income.
pub(super) fn invented_usage(
    nodes: &[Node],
    draws: &Draws<'_>,
    inflation_bps: u32,
    cost: Credits,
) -> Result<InventedUsage, SimError> {
    let mut out = InventedUsage::default();
    for (n, d) in nodes.iter().zip(draws.iter()) {
        if n.strategy != Strategy::UsageInventor || d.tasks == 0 {
            continue;
        }
        let acked_credits = d.tasks.checked_mul(cost.get()).ok_or(SimError::Limit {
            name: "credits of a node's tasks in a round",
            value: u64::MAX,
        })?;
        let acked = Tally {
            tasks: d.tasks,
            credits: Credits::new(acked_credits),
            ..Tally::default()
        };
        let invented = (u128::from(d.tasks) * u128::from(inflation_bps) / 10_000) as u64;
        let reported = d.tasks.saturating_add(invented);
        let charged = acks::chargeable(&Tally::default(), &acked, reported, cost);
        let charged_credits = u128::from(charged) * u128::from(cost.get());
        out.attempted = out
            .attempted
            .saturating_add(invented.saturating_mul(cost.get()));
        out.charged = out
            .charged
            .saturating_add(charged_credits.saturating_sub(u128::from(acked_credits)) as u64);
    }
    Ok(out)
}

/// Whether the dispatcher refuses a framer's report: its receipts name the inputs the worker
/// and the validator were sent, which differ ([`reports::same_inputs`]).
pub(super) fn framed_reports_refused() -> bool {
    const WORKER_INPUTS: [u8; 32] = [1; 32];
    const VALIDATOR_INPUTS: [u8; 32] = [2; 32];
    reports::same_inputs([&WORKER_INPUTS, &VALIDATOR_INPUTS]).is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> &'static GpuEntry {
        GpuTable::builtin().lookup(name).unwrap()
    }

    #[test]
    fn an_honest_claim_proves_the_table_row() {
        // The simulator rates honest nodes by their table row: what their own claim proves
        // at the slowest speed and overhead the deadlines allow for.
        let st = Strategies {
            liar_speed_pct: 67,
            ..Strategies::default()
        };
        let (table, config) = (GpuTable::builtin(), ProofConfig::default());
        for e in table.entries() {
            let p = prove(table, &config, e, &e.name, &st);
            assert_eq!(
                (p.rating, p.income),
                (e.rating, e.mining_income_usd_micro_per_day),
                "{}",
                e.name
            );
        }
    }

    #[test]
    fn liars_get_what_their_card_proves() {
        let gpus = [
            entry("NVIDIA GeForce GTX 1650"),
            entry("NVIDIA GeForce RTX 3080"),
        ];
        // Claiming a B200: the GTX 1650 is more than 4 times slower and proves nothing; the
        // RTX 3080 is paid as the cheapest card at least as fast as the fastest class whose
        // deadline it met, less than a B200.
        let st = Strategies {
            liar_claim_gpu: "NVIDIA B200".into(),
            ..Strategies::default()
        };
        let p = liar_proofs(&gpus, &st);
        assert_eq!(p[0].claimed, "NVIDIA B200");
        assert_eq!((p[0].rating.get(), p[0].income.get()), (1, 0));
        assert!(p[1].income < entry("NVIDIA B200").mining_income_usd_micro_per_day);
        // One class up at full speed: within the deadlines' 150 % margin, paid as claimed.
        let st = Strategies::default();
        let p = liar_proofs(&gpus, &st);
        assert_eq!(p[0].claimed, "NVIDIA GeForce GTX 1060");
        assert_eq!((p[0].rating.get(), p[0].income.get()), (2, 55_000));
        // At 60 % of its peak, the claimed deadline is missed; the GTX 1650 is paid as the
        // cheapest card at least as fast as what it showed.
        let st = Strategies {
            liar_speed_pct: 60,
            ..Strategies::default()
        };
        let p = liar_proofs(&gpus, &st);
        assert_eq!(p[0].rating.get(), 1);
        assert!(p[0].income.get() < 45_000, "{:?}", p[0]);
        // The RTX 3080 at 60 % (17.8 TFLOPS) misses the RTX 3090's deadline and meets the
        // A100's (19.5 TFLOPS FP32, rated 5): it is paid as the cheapest card of at least
        // 19.5 TFLOPS, never as an A100, and no more than its own card (29.8 TFLOPS).
        let a100 = entry("NVIDIA A100");
        let own = entry("NVIDIA GeForce RTX 3080");
        assert!(
            p[1].income < a100.mining_income_usd_micro_per_day,
            "{:?}",
            p[1]
        );
        assert!(
            p[1].income <= own.mining_income_usd_micro_per_day,
            "{:?}",
            p[1]
        );
    }

    #[test]
    fn framed_reports_are_refused() {
        assert!(framed_reports_refused());
    }
}
