//! Proof of hardware (issue 13, items 1 and 2): which compute challenges a node gets for the
//! hardware it claims, by when it must answer each, what its answers prove, and when it is
//! challenged again during a round. Sans-IO: the dispatcher sends the challenges and times the
//! answers; the arithmetic of one challenge is [`crate::policy::challenge`].
//!
//! **Sizing.** Every challenge multiplies `A (n × k) · B (k × m)` with `k` and `m` fixed by the
//! configuration; `n` is chosen so that the product takes [`ProofConfig::compute_us`] at the
//! claimed card's FP32 throughput (the GPU table's `fp32_gflops`). The deadline for a card of
//! throughput `G` is [`deadline_ms`]: a fixed allowance (round trip, hashing) plus the time to
//! generate `A` and `B` on a CPU plus the product's time at `G` times a margin.
//!
//! **Verdict.** A GPU is proven as the *best class whose deadline it met* with a correct
//! answer ([`prove_device`]): its claimed row when it met that deadline; otherwise the
//! fastest of the table's cards with a throughput between `claimed / downgrade_factor` and
//! the claim whose (longer) deadline it met sets the throughput it showed, and it is rated
//! and paid as the *cheapest* card in the table at least that fast (any of them could have
//! given the answer; keeping up with an A100's FP32 does not make a card an A100).
//! A card more than `downgrade_factor` times slower than its claim proves nothing: claiming far
//! above what one has costs the card's whole income, not one class. A node's rating is the
//! best of its proven GPUs (at least 1) and its mining income their sum ([`Proven`]). The CPU
//! challenge (small, with a generous deadline) proves that the node computes at all: rating 1,
//! no income. A node that has proved nothing yet is rated 1 with no income, and is still placed
//! (it serves as a CPU node would); what it is paid stays 0 until a GPU is proven.
//!
//! **Caps.** At most [`GPUS_MAX`] GPUs of a registration are challenged, all at the same time
//! (so one card cannot answer for several); claims beyond the cap count for nothing.
//!
//! **During a round** (item 2) a node is challenged again at random times
//! ([`next_challenge_s`]: exponential gaps of mean [`ProofConfig::interval_mean_s`], drawn from
//! the dispatcher's secret, so the node cannot know when), on every device it proved, at the
//! class it proved ([`recheck_claims`]). A missed or failed challenge ends the node's online
//! session at its last passed challenge ([`session_end_after_failure`];
//! [`crate::dispatch::Dispatch::challenge_failed`] applies it), and heartbeats do not open a
//! new session until a challenge passes again. So "committed for the whole round" means
//! "proven for the whole round". Rates and costs: `docs/hardware-proof.md`.
//!
//! ```
//! use crat_core::gpu_table::GpuTable;
//! use crat_core::hardware::{CpuInfo, GpuInfo, HardwareInfo};
//! use crat_core::policy::hardware::{
//!     Answer, ProofConfig, Proven, claims_of, plan, prove_device, prove_node,
//! };
//!
//! let table = GpuTable::builtin();
//! let config = ProofConfig::default();
//! let b200 = GpuInfo { name: "NVIDIA B200".into(), memory_bytes: 180 << 30, driver: "x".into(), compute_capability: Some((10, 0)) };
//! let hw = HardwareInfo { gpus: vec![b200; 1_000], cpu: CpuInfo { model: "x".into(), cores: 8, memory_bytes: 1 << 34 } };
//! // 1,000 claimed B200s: 16 challenged (the cap) plus the CPU, all at once.
//! let challenges = plan(&config, &claims_of(table, &hw));
//! assert_eq!(challenges.len(), 17);
//! // The GPU challenges are the largest challenge (2¹⁶ × 4096 × 4096, 2.2 TFLOP) with a
//! // deadline from a B200's throughput.
//! let gpu = &challenges[1];
//! assert_eq!(gpu.spec_sizes(), (65_536, 4_096, 4_096));
//! // A node that answers only the CPU challenge (correctly, in time) proves a CPU: rating 1,
//! // no mining income, however many GPUs it claimed.
//! let proofs: Vec<_> = challenges
//!     .iter()
//!     .map(|c| {
//!         let answer = c.device.is_none().then_some(Answer { elapsed_ms: 900 });
//!         prove_device(table, &config, c, answer)
//!     })
//!     .collect();
//! let proven: Proven = prove_node(&proofs);
//! assert_eq!((proven.rating.get(), proven.income.get(), proven.cpu), (1, 0, true));
//! // The same node answering one B200 challenge within its deadline proves one B200.
//! let mut proofs = proofs;
//! proofs[1] = prove_device(table, &config, gpu, Some(Answer { elapsed_ms: gpu.deadline_ms }));
//! let proven = prove_node(&proofs);
//! assert_eq!((proven.rating.get(), proven.income.get()), (5, 1_200_000));
//! ```

use crate::gpu_table::GpuTable;
use crate::hardware::{HardwareInfo, PowerRating};
use crate::money::MicroUsd;
use crate::policy::challenge::{DIM_MAX, ELEMENTS_MAX, K_MAX};

/// Most GPUs of one node that are challenged (and so can be proven).
pub const GPUS_MAX: usize = 16;

/// How challenges are sized, timed and scheduled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProofConfig {
    /// Inner dimension of every GPU challenge. Default 4,096.
    pub k: u32,
    /// Columns of every GPU challenge's product; checking one opened row costs the dispatcher
    /// `k × m` multiply-adds. Default 4,096.
    pub m: u32,
    /// The product's time at the claimed card's FP32 throughput, in µs. Default 2,000,000
    /// (2 s).
    pub compute_us: u32,
    /// The deadline allows the product's time at the class's throughput times this, in
    /// percent. Default 150.
    pub margin_pct: u32,
    /// Fixed part of every GPU deadline (round trip, scheduling, hashing the rows), in ms.
    /// Default 1,500.
    pub allowance_ms: u32,
    /// Time allowed per generated matrix element (`n·k + k·m` of them, generated on the node's
    /// CPU), in ns. Default 5.
    pub generation_ns_per_element: u32,
    /// A GPU slower than its claim is proven as a slower class only within this factor of the
    /// claimed throughput. Default 4.
    pub downgrade_factor: u32,
    /// Sizes `(n, k, m)` of the CPU challenge. Default 256 × 1,024 × 256 (134 MFLOP).
    pub cpu_sizes: (u32, u32, u32),
    /// Deadline of the CPU challenge, in ms. Default 30,000.
    pub cpu_deadline_ms: u32,
    /// Rows opened per challenge. A node that computed a share `f` of the rows right passes
    /// with probability `f^rows_opened`. Default 16.
    pub rows_opened: u32,
    /// How long the dispatcher waits for the opened rows, in ms. Default 10,000.
    pub open_deadline_ms: u32,
    /// Mean time between challenges of a node during a round (exponential gaps), in s.
    /// Default 3,600 (24 a day).
    pub interval_mean_s: u64,
    /// After a failed or missed challenge, the next one comes this much later, in s (until it
    /// passes, the node earns no uptime). Default 300.
    pub retry_after_failure_s: u64,
}

impl Default for ProofConfig {
    fn default() -> Self {
        Self {
            k: 4_096,
            m: 4_096,
            compute_us: 2_000_000,
            margin_pct: 150,
            allowance_ms: 1_500,
            generation_ns_per_element: 5,
            downgrade_factor: 4,
            cpu_sizes: (256, 1_024, 256),
            cpu_deadline_ms: 30_000,
            rows_opened: 16,
            open_deadline_ms: 10_000,
            interval_mean_s: 3_600,
            retry_after_failure_s: 300,
        }
    }
}

impl ProofConfig {
    /// Sizes and deadlines for tests on a CPU: tiny challenges (a GPU challenge is
    /// `n × 64 × 32` with `n` from 0.1 µs of work at the claimed throughput: 7.5 MFLOP for a
    /// B200) and deadlines with no allowance (1 ms), so a CPU proves a CPU and never a GPU; the
    /// CPU challenge (32 × 64 × 32) has 20 s. Schedules are the defaults; tests of item 2
    /// shorten `interval_mean_s`.
    pub fn test_scale() -> Self {
        Self {
            k: 64,
            m: 32,
            compute_us: 0,
            margin_pct: 200,
            allowance_ms: 0,
            generation_ns_per_element: 0,
            cpu_sizes: (32, 64, 32),
            cpu_deadline_ms: 20_000,
            rows_opened: 8,
            open_deadline_ms: 5_000,
            ..Self::default()
        }
    }
}

/// What a challenge is meant to prove.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The node computes at all (rating 1, no income).
    Cpu,
    /// GPU number `device` of the registration is a card of this class.
    Gpu {
        /// Index into the registration's GPU list.
        device: u32,
        /// The card's name as claimed (or the table row it was proven as).
        name: String,
        /// FP32 throughput of the class, GFLOPS.
        gflops: u64,
        /// Its rating.
        rating: PowerRating,
        /// Its daily mining income.
        income: MicroUsd,
    },
}

/// The claims a registration makes: the CPU, then its first [`GPUS_MAX`] GPUs, each as its
/// table row (a GPU the table does not know: its estimated rating, the slowest throughput and
/// lowest income of that rating).
pub fn claims_of(table: &GpuTable, hardware: &HardwareInfo) -> Vec<Claim> {
    let mut claims = vec![Claim::Cpu];
    for (device, gpu) in (0u32..).zip(hardware.gpus.iter().take(GPUS_MAX)) {
        let (name, gflops, rating, income) = match table.lookup(&gpu.name) {
            Some(e) => (
                e.name.clone(),
                e.fp32_gflops,
                e.rating,
                e.mining_income_usd_micro_per_day,
            ),
            None => {
                let a = table.assess(gpu);
                let Some(gflops) = table.gflops_floor(a.rating) else {
                    continue;
                };
                (
                    gpu.name.clone(),
                    gflops,
                    a.rating,
                    a.mining_income_usd_micro_per_day,
                )
            }
        };
        claims.push(Claim::Gpu {
            device,
            name,
            gflops,
            rating,
            income,
        });
    }
    claims
}

/// One challenge to send: sizes, device, deadline and what it proves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceChallenge {
    /// The GPU (`None`: the CPU challenge).
    pub device: Option<u32>,
    /// Rows of the product.
    pub n: u32,
    /// Inner dimension.
    pub k: u32,
    /// Columns.
    pub m: u32,
    /// The commitment must arrive within this (for the claimed class), in ms.
    pub deadline_ms: u32,
    /// How long the dispatcher waits at most: the deadline of the slowest class this answer
    /// can still prove, in ms.
    pub wait_ms: u32,
    /// What it proves.
    pub claim: Claim,
}

impl DeviceChallenge {
    /// `(n, k, m)`.
    pub fn spec_sizes(&self) -> (u32, u32, u32) {
        (self.n, self.k, self.m)
    }
}

/// Rows `n` such that `A (n × k) · B (k × m)` takes `compute_us` at `gflops` (at least
/// 0.1 µs' worth), within the challenge limits.
pub fn rows_for(gflops: u64, k: u32, m: u32, compute_us: u32) -> u32 {
    // GFLOPS × µs = 1,000 flops; 0 µs stands for 0.1 µs (test sizes).
    let flops = match compute_us {
        0 => u128::from(gflops) * 100,
        us => u128::from(gflops) * 1_000 * u128::from(us),
    };
    let per_row = 2 * u128::from(k) * u128::from(m);
    let by_elements = u128::from(ELEMENTS_MAX) / u128::from(k.max(m).max(1));
    let n = flops
        .div_ceil(per_row.max(1))
        .clamp(1, u128::from(DIM_MAX).min(by_elements));
    u32::try_from(n).unwrap_or(DIM_MAX)
}

/// The deadline for a card of `gflops` on a challenge of these sizes, in ms: the fixed
/// allowance, the generation of `A` and `B`, and the product at `gflops` times the margin.
pub fn deadline_ms(config: &ProofConfig, n: u32, k: u32, m: u32, gflops: u64) -> u32 {
    let (n, k, m) = (u128::from(n), u128::from(k), u128::from(m));
    let generation_ns = (n * k + k * m) * u128::from(config.generation_ns_per_element);
    let compute = 2 * n * k * m * u128::from(config.margin_pct);
    // flops / (gflops · 10⁶) is ms; the margin is in percent.
    let compute_ms = compute.div_ceil(u128::from(gflops.max(1)) * 100_000_000);
    let total = u128::from(config.allowance_ms) + generation_ns.div_ceil(1_000_000) + compute_ms;
    u32::try_from(total).unwrap_or(u32::MAX)
}

/// The challenges for `claims`: every one sent at the same time.
pub fn plan(config: &ProofConfig, claims: &[Claim]) -> Vec<DeviceChallenge> {
    claims
        .iter()
        .map(|claim| match claim {
            Claim::Cpu => {
                let (n, k, m) = config.cpu_sizes;
                DeviceChallenge {
                    device: None,
                    n,
                    k: k.min(K_MAX),
                    m,
                    deadline_ms: config.cpu_deadline_ms,
                    wait_ms: config.cpu_deadline_ms,
                    claim: Claim::Cpu,
                }
            }
            Claim::Gpu { device, gflops, .. } => {
                let (k, m) = (config.k.min(K_MAX), config.m);
                let n = rows_for(*gflops, k, m, config.compute_us);
                let slowest = (*gflops / u64::from(config.downgrade_factor.max(1))).max(1);
                DeviceChallenge {
                    device: Some(*device),
                    n,
                    k,
                    m,
                    deadline_ms: deadline_ms(config, n, k, m, *gflops),
                    wait_ms: deadline_ms(config, n, k, m, slowest),
                    claim: claim.clone(),
                }
            }
        })
        .collect()
}

/// The claims a node is re-challenged with during a round: the CPU and every GPU it proved,
/// at the class it proved.
pub fn recheck_claims(proven: &Proven) -> Vec<Claim> {
    let mut claims = vec![Claim::Cpu];
    claims.extend(proven.gpus.iter().cloned());
    claims
}

/// A correct answer (the opened rows verified) and when its commitment arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    /// From sending the challenge to receiving the commitment, in ms.
    pub elapsed_ms: u32,
}

/// What one challenge proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceProof {
    /// Nothing: no answer, a wrong one, or too slow even for the slowest class in range.
    Nothing,
    /// The CPU challenge passed.
    Cpu,
    /// A GPU of this class (a [`Claim::Gpu`]).
    Gpu(Claim),
}

/// What `answer` (a correct answer, or `None`) to `challenge` proves.
pub fn prove_device(
    table: &GpuTable,
    config: &ProofConfig,
    challenge: &DeviceChallenge,
    answer: Option<Answer>,
) -> DeviceProof {
    let Some(answer) = answer else {
        return DeviceProof::Nothing;
    };
    let (n, k, m) = challenge.spec_sizes();
    match &challenge.claim {
        Claim::Cpu if answer.elapsed_ms <= challenge.deadline_ms => DeviceProof::Cpu,
        Claim::Cpu => DeviceProof::Nothing,
        Claim::Gpu { .. } if answer.elapsed_ms <= challenge.deadline_ms => {
            DeviceProof::Gpu(challenge.claim.clone())
        }
        Claim::Gpu { device, gflops, .. } => {
            let floor = *gflops / u64::from(config.downgrade_factor.max(1));
            // The fastest class it kept up with, within the downgrade range.
            let Some(shown) = table
                .entries()
                .iter()
                .filter(|e| e.fp32_gflops >= floor && e.fp32_gflops <= *gflops)
                .filter(|e| answer.elapsed_ms <= deadline_ms(config, n, k, m, e.fp32_gflops))
                .map(|e| e.fp32_gflops)
                .max()
            else {
                return DeviceProof::Nothing;
            };
            // Paid as the cheapest card that is at least that fast: any of them could have
            // given this answer, so the evidence is worth no more than the least of them (a
            // card that merely keeps up with an A100's FP32 throughput is not an A100).
            table
                .entries()
                .iter()
                .filter(|e| e.fp32_gflops >= shown)
                .min_by_key(|e| (e.mining_income_usd_micro_per_day, e.rating, e.fp32_gflops))
                .map_or(DeviceProof::Nothing, |e| {
                    DeviceProof::Gpu(Claim::Gpu {
                        device: *device,
                        name: e.name.clone(),
                        gflops: e.fp32_gflops,
                        rating: e.rating,
                        income: e.mining_income_usd_micro_per_day,
                    })
                })
        }
    }
}

/// What a node proved with one round of challenges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proven {
    /// Best rating of its proven GPUs; 1 without any.
    pub rating: PowerRating,
    /// Sum of its proven GPUs' daily mining income.
    pub income: MicroUsd,
    /// Whether the CPU challenge passed.
    pub cpu: bool,
    /// Its proven GPUs ([`Claim::Gpu`]s), by device.
    pub gpus: Vec<Claim>,
}

impl Proven {
    /// Nothing proven: rating 1, no income.
    pub fn nothing() -> Self {
        Self {
            rating: PowerRating::MIN,
            income: MicroUsd::ZERO,
            cpu: false,
            gpus: Vec::new(),
        }
    }

    /// Whether any challenge passed (the node is present and computing).
    pub fn passed_any(&self) -> bool {
        self.cpu || !self.gpus.is_empty()
    }
}

/// A node's rating and income from what each of its challenges proved.
pub fn prove_node(proofs: &[DeviceProof]) -> Proven {
    let mut proven = Proven::nothing();
    for proof in proofs {
        match proof {
            DeviceProof::Nothing => {}
            DeviceProof::Cpu => proven.cpu = true,
            DeviceProof::Gpu(claim) => {
                if let Claim::Gpu { rating, income, .. } = claim {
                    proven.rating = proven.rating.max(*rating);
                    proven.income = proven.income.saturating_add(*income);
                }
                proven.gpus.push(claim.clone());
            }
        }
    }
    proven
}

/// When `node` is next challenged after `after_s`: an exponential gap of mean `mean_s`
/// (memoryless, so no moment is safer than another), drawn from the dispatcher's `secret`,
/// at least 1 s and at most `20 × mean_s`.
pub fn next_challenge_s(secret: &[u8; 32], node: &[u8; 32], after_s: u64, mean_s: u64) -> u64 {
    let h = blake3::Hasher::new()
        .update(b"crat/v1/challenge-schedule\0")
        .update(secret)
        .update(node)
        .update(&after_s.to_le_bytes())
        .finalize();
    let mut word = [0u8; 8];
    word.copy_from_slice(&h.as_bytes()[..8]);
    // u in (0, 1]: 53 random bits, never 0.
    let u = ((u64::from_le_bytes(word) >> 11) + 1) as f64 / (1u64 << 53) as f64;
    let mean = mean_s.max(1);
    let gap = (-u.ln() * mean as f64).ceil();
    let cap = mean.saturating_mul(20);
    let gap = if gap.is_finite() && gap >= 1.0 {
        (gap as u64).min(cap)
    } else {
        1
    };
    after_s.saturating_add(gap.max(1))
}

/// The end of an online session that a missed or failed challenge interrupts: the last
/// challenge passed within it, or its start when none was.
pub fn session_end_after_failure(session_start_s: u64, last_passed_s: Option<u64>) -> u64 {
    last_passed_s
        .filter(|t| *t >= session_start_s)
        .unwrap_or(session_start_s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::{CpuInfo, GpuInfo};

    fn hw(gpus: &[&str]) -> HardwareInfo {
        HardwareInfo {
            gpus: gpus
                .iter()
                .map(|n| GpuInfo {
                    name: (*n).into(),
                    memory_bytes: 24 << 30,
                    driver: "x".into(),
                    compute_capability: None,
                })
                .collect(),
            cpu: CpuInfo {
                model: "x".into(),
                cores: 4,
                memory_bytes: 1 << 34,
            },
        }
    }

    #[test]
    fn sizes_follow_the_claimed_throughput_and_stay_in_range() {
        let t = GpuTable::builtin();
        let c = ProofConfig::default();
        let plan = plan(
            &c,
            &claims_of(t, &hw(&["NVIDIA B200", "NVIDIA GeForce GT 1030"])),
        );
        assert_eq!(plan.len(), 3);
        let (b200, gt) = (&plan[1], &plan[2]);
        // 2 s of either card's FP32 work is more rows than a challenge has: both get the
        // largest challenge, 2¹⁶ × 4096 × 4096 (2.2 TFLOP), and deadlines from their throughput.
        assert_eq!((b200.n, gt.n), (DIM_MAX, DIM_MAX));
        // Allowance 1.5 s + generation of 285 M elements at 5 ns + 1.5 × 29 ms.
        assert_eq!(b200.deadline_ms, 1_500 + 1_427 + 44);
        assert_eq!(gt.deadline_ms, 1_500 + 1_427 + 2_999);
        assert!(b200.wait_ms > b200.deadline_ms);
        // Slower classes get fewer rows: 2 s at 1 TFLOPS over 4096 × 4096.
        assert_eq!(rows_for(1_000, 4_096, 4_096, 2_000_000), 59_605);
        for ch in &plan {
            assert!(
                crate::policy::challenge::ChallengeSpec::new([0; 32], ch.n, ch.k, ch.m).is_ok()
            );
        }
        assert_eq!(
            rows_for(u64::MAX / 1_000_000_000, 4_096, 1_024, 2_000_000),
            DIM_MAX
        );
        assert_eq!(rows_for(1, 4_096, 1_024, 1), 1);
        // Test sizes: 0.1 µs at 75 TFLOPS over 64 × 32 (7.5 MFLOP).
        assert_eq!(rows_for(75_000, 64, 32, 0), 1_832);
    }

    #[test]
    fn the_proven_class_is_the_best_deadline_met_within_the_downgrade_range() {
        let t = GpuTable::builtin();
        let c = ProofConfig::default();
        let plan = plan(&c, &claims_of(t, &hw(&["NVIDIA GeForce RTX 4090"])));
        let gpu = &plan[1];
        let at = |ms| prove_device(t, &c, gpu, Some(Answer { elapsed_ms: ms }));
        assert!(
            matches!(at(gpu.deadline_ms), DeviceProof::Gpu(Claim::Gpu { rating, .. }) if rating.get() == 5)
        );
        // Twice as slow as a 4090 (82.5 → ~41 TFLOPS): a slower class, never more income.
        let slow = deadline_ms(&c, gpu.n, gpu.k, gpu.m, 41_000);
        match at(slow) {
            DeviceProof::Gpu(Claim::Gpu { gflops, income, .. }) => {
                assert!(gflops <= 41_000);
                assert!(income.get() < 550_000);
            }
            other => panic!("{other:?}"),
        }
        // A card that keeps up only with an A100's FP32 (19.5 TFLOPS, rating 5) is paid as the
        // cheapest card at least that fast, not as an A100.
        let a100 = t.lookup("NVIDIA A100-SXM4-80GB").expect("in the table");
        let plan3090 = super::plan(&c, &claims_of(t, &hw(&["NVIDIA GeForce RTX 3090"])));
        let g3090 = &plan3090[1];
        let shown = deadline_ms(&c, g3090.n, g3090.k, g3090.m, a100.fp32_gflops);
        match prove_device(t, &c, g3090, Some(Answer { elapsed_ms: shown })) {
            DeviceProof::Gpu(Claim::Gpu { gflops, income, .. }) => {
                let cheapest = t
                    .entries()
                    .iter()
                    .filter(|e| e.fp32_gflops >= a100.fp32_gflops)
                    .map(|e| e.mining_income_usd_micro_per_day)
                    .min()
                    .expect("some card");
                assert_eq!(income, cheapest);
                assert!(income < a100.mining_income_usd_micro_per_day);
                assert!(gflops >= a100.fp32_gflops);
            }
            other => panic!("{other:?}"),
        }
        // Beyond the downgrade range, and wrong or missing answers: nothing.
        assert_eq!(at(gpu.wait_ms + 1), DeviceProof::Nothing);
        assert_eq!(prove_device(t, &c, gpu, None), DeviceProof::Nothing);
        // The CPU challenge.
        let cpu = &plan[0];
        assert_eq!(
            prove_device(t, &c, cpu, Some(Answer { elapsed_ms: 1 })),
            DeviceProof::Cpu
        );
        assert_eq!(
            prove_device(
                t,
                &c,
                cpu,
                Some(Answer {
                    elapsed_ms: cpu.deadline_ms + 1
                })
            ),
            DeviceProof::Nothing
        );
    }

    #[test]
    fn a_node_is_rated_by_what_it_proved() {
        let t = GpuTable::builtin();
        let c = ProofConfig::default();
        let claims = claims_of(t, &hw(&["NVIDIA B200"; 1_000]));
        assert_eq!(claims.len(), GPUS_MAX + 1);
        let plan = plan(&c, &claims);
        let none: Vec<_> = plan
            .iter()
            .map(|ch| prove_device(t, &c, ch, None))
            .collect();
        assert_eq!(prove_node(&none), Proven::nothing());
        assert!(!prove_node(&none).passed_any());
        let two: Vec<_> = plan
            .iter()
            .take(3)
            .map(|ch| {
                prove_device(
                    t,
                    &c,
                    ch,
                    Some(Answer {
                        elapsed_ms: ch.deadline_ms,
                    }),
                )
            })
            .collect();
        let p = prove_node(&two);
        assert_eq!(
            (p.rating.get(), p.income.get(), p.cpu, p.gpus.len()),
            (5, 2_400_000, true, 2)
        );
        // Rechecks challenge what was proven, at the class proven.
        let again = super::plan(&c, &recheck_claims(&p));
        assert_eq!(again.len(), 3);
        assert_eq!(again[1], plan[1]);
    }

    #[test]
    fn unknown_gpus_are_challenged_at_their_estimated_class() {
        let t = GpuTable::builtin();
        let claims = claims_of(t, &hw(&["Mystery Accelerator"]));
        match &claims[1] {
            Claim::Gpu {
                gflops,
                rating,
                income,
                ..
            } => {
                assert_eq!(Some(*gflops), t.gflops_floor(*rating));
                assert_eq!(*income, t.income_floor(*rating));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_schedule_is_random_memoryless_and_bounded() {
        let secret = [5; 32];
        let mut t = 0;
        let mut gaps = Vec::new();
        for _ in 0..2_000 {
            let next = next_challenge_s(&secret, &[1; 32], t, 3_600);
            assert!(next > t && next - t <= 72_000);
            gaps.push(next - t);
            t = next;
        }
        let mean = gaps.iter().sum::<u64>() / gaps.len() as u64;
        assert!((3_200..4_000).contains(&mean), "mean gap {mean}");
        // Some gaps are short: no safe window after a challenge.
        assert!(gaps.iter().filter(|g| **g < 360).count() > 100);
        assert_ne!(
            next_challenge_s(&secret, &[1; 32], 0, 3_600),
            next_challenge_s(&[6; 32], &[1; 32], 0, 3_600)
        );
        assert_eq!(session_end_after_failure(100, Some(150)), 150);
        assert_eq!(session_end_after_failure(100, Some(50)), 100);
        assert_eq!(session_end_after_failure(100, None), 100);
    }
}
