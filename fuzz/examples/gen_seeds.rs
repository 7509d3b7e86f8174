//! Writes the seed corpus `fuzz/seeds/<target>/`: real encodings of every decoded type, so the
//! fuzzer starts from valid inputs instead of having to discover the formats.
//!
//! ```text
//! cd fuzz && cargo run --example gen_seeds            # rewrites fuzz/seeds/
//! ```
//!
//! Values come from `crat_core::strategies` (the proptest strategies the codec tests use),
//! drawn with proptest's deterministic RNG, so the same sources give the same seeds.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a tool: a panic is the error report

use std::fs;
use std::path::{Path, PathBuf};

use crat_core::gpu_table::BUILTIN_GPU_TABLE_CSV;
use crat_core::hardware::PowerRating;
use crat_core::id::{DeploymentId, KeyId, ModelId, NodeId, TaskId};
use crat_core::id::{PeerAddr, SdkKey};
use crat_core::money::{Credits, MicroCrat, MicroUsd};
use crat_core::pricing::TaskPrice;
use crat_core::sign::{Signed, Ticket};
use crat_core::strategies as s;
use crat_core::wire::{self, Message};
use crat_fuzz::SEED_DISPATCHER_SECRET;
use crat_fuzz::frame::{CONTROL_BYTES_MAX, Frame};
use crat_rewards::{Interval, NodeInput, Params, Round, RoundInputs};
use ed25519_dalek::SigningKey;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;

/// The compressed Edwards identity point (y = 1): a public key of order 1.
const IDENTITY_POINT: [u8; 32] = {
    let mut p = [0u8; 32];
    p[0] = 1;
    p
};

/// Samples per message type (each a few hundred bytes at most).
const PER_TYPE: usize = 6;
/// Seeds larger than this are skipped: libFuzzer's default `-max_len` is 4096.
const SEED_BYTES_MAX: usize = 4096;

struct Seeds {
    root: PathBuf,
    runner: TestRunner,
}

impl Seeds {
    fn write(&self, target: &str, name: &str, bytes: &[u8]) {
        if bytes.len() > SEED_BYTES_MAX {
            return;
        }
        let dir = self.root.join(target);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(name), bytes).unwrap();
    }

    fn sample<S: Strategy>(&mut self, strategy: &S) -> S::Value {
        strategy.new_tree(&mut self.runner).unwrap().current()
    }

    /// `PER_TYPE` encodings of `M`, for the `wire` target and (framed) the `frame` target.
    fn messages<M: Message, S: Strategy<Value = M>>(&mut self, name: &str, strategy: S) {
        for i in 0..PER_TYPE {
            let msg = self.sample(&strategy);
            self.write("wire", &format!("{name}-{i}"), &wire::encode(&msg).unwrap());
            if i < 2 {
                let frame = Frame::encode(&msg, CONTROL_BYTES_MAX).unwrap();
                self.write("frame", &format!("{name}-{i}"), frame.as_bytes());
            }
        }
    }
}

fn node(byte: u8, crat: u64, online: Vec<Interval>) -> NodeInput {
    NodeInput {
        id: NodeId::from_bytes([byte; 32]),
        rating: PowerRating::new(byte % 5 + 1).unwrap(),
        registered_at_s: u64::from(byte) * 1_000,
        mining_income_usd_micro_per_day: MicroUsd::new(300_000),
        crat_start_micro: MicroCrat::new(crat),
        streak_start: u64::from(byte % 3),
        uptime_total_s_before: 0,
        online,
        validations_ok: 2,
        validations_failed: u64::from(byte == 3),
        crat_external_micro: MicroCrat::ZERO,
    }
}

/// Seed directories written by hand, not by this program.
const KEPT: &[&str] = &["onnx_check"];

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    // Generated seeds are rewritten; kept ones (models, and inputs that once failed a
    // target) stay.
    if root.exists() {
        for entry in fs::read_dir(&root).unwrap() {
            let path = entry.unwrap().path();
            if !KEPT
                .iter()
                .any(|k| path.file_name().is_some_and(|n| n == *k))
            {
                fs::remove_dir_all(&path).unwrap();
            }
        }
    }
    let mut seeds = Seeds {
        root,
        runner: TestRunner::deterministic(),
    };

    // Every message enum of the three conversations.
    seeds.messages("node_request", s::node_request());
    seeds.messages("dispatcher_reply", s::dispatcher_reply());
    seeds.messages("dispatcher_push", s::dispatcher_push());
    seeds.messages("node_ack", s::node_ack());
    seeds.messages("client_request", s::client_request());
    seeds.messages("dispatcher_response", s::dispatcher_response());
    seeds.messages("client_to_node", s::client_to_node());
    seeds.messages("node_to_client", s::node_to_client());

    // Tickets: really signed, by random keys and by the seed dispatcher with a sane window.
    for i in 0..PER_TYPE {
        let t = seeds.sample(&s::signed_ticket());
        seeds.write(
            "ticket",
            &format!("random-{i}"),
            &postcard::to_stdvec(&t).unwrap(),
        );
    }
    let dispatcher = SigningKey::from_bytes(&SEED_DISPATCHER_SECRET);
    for (i, audience) in [0usize, 1, 3].into_iter().enumerate() {
        let ticket = Ticket {
            deployment: DeploymentId::from_bytes([3; 16]),
            key: KeyId::from_bytes([4; 16]),
            credit_budget: Credits::new(1_000),
            issued_at_s: 1_000,
            expires_at_s: 1_600,
            nonce: [i as u8; 16],
            audience: (0..audience)
                .map(|n| NodeId::from_bytes([n as u8 + 10; 32]))
                .collect(),
            client: NodeId::from_bytes([9; 32]),
            price: TaskPrice {
                fixed: Credits::new(2),
                per_block: Credits::new(1),
                block_bytes: 65_536,
            },
        };
        let signed = Signed::sign(ticket, &dispatcher);
        let bytes = postcard::to_stdvec(&signed).unwrap();
        seeds.write("ticket", &format!("dispatcher-{i}"), &bytes);
    }

    // A small-order ("weak") signer key with the signature (R = identity, s = 0), which plain
    // ed25519 verification accepts for every message: `Signed::verify` must refuse it
    // (regression seed for the `verify_strict` fix in crat-core's sign.rs).
    let weak_signer = NodeId::from_bytes(IDENTITY_POINT);
    let weak_signature = {
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&IDENTITY_POINT);
        ed25519_dalek::Signature::from_bytes(&bytes)
    };
    let mut weak = Signed::sign(seeds.sample(&s::ticket()), &dispatcher);
    weak.signer = weak_signer;
    weak.signature = weak_signature;
    let bytes = postcard::to_stdvec(&weak).unwrap();
    seeds.write("ticket", "weak-key", &bytes);

    // Registrations: random signatures, and really self-signed ones.
    for i in 0..PER_TYPE {
        let mut r = seeds.sample(&s::signed_registration());
        if i % 2 == 0 {
            let key = SigningKey::from_bytes(&[i as u8 + 1; 32]);
            r.body.node = NodeId::from_key(&key.verifying_key());
            r = Signed::sign(r.body, &key);
        }
        let bytes = postcard::to_stdvec(&r).unwrap();
        seeds.write("registration", &format!("reg-{i}"), &bytes);
    }
    let mut weak = seeds.sample(&s::signed_registration());
    weak.body.node = weak_signer;
    weak.signer = weak_signer;
    weak.signature = weak_signature;
    let bytes = postcard::to_stdvec(&weak).unwrap();
    seeds.write("registration", "weak-key", &bytes);

    // Tensors and named tensors, every dtype.
    for i in 0..2 * PER_TYPE {
        let t = seeds.sample(&s::tensor());
        seeds.write(
            "tensor",
            &format!("tensor-{i}"),
            &postcard::to_stdvec(&t).unwrap(),
        );
    }
    for i in 0..PER_TYPE {
        let t = seeds.sample(&s::named_tensor());
        seeds.write(
            "tensor",
            &format!("named-{i}"),
            &postcard::to_stdvec(&t).unwrap(),
        );
    }

    // Text forms.
    let texts = [
        NodeId::from_bytes([0xab; 32]).to_string(),
        ModelId::of_bytes(b"model").to_string(),
        DeploymentId::from_bytes([1; 16]).to_string(),
        TaskId::from_bytes([2; 16]).to_string(),
        KeyId::from_bytes([3; 16]).to_string(),
        SdkKey {
            id: KeyId::from_bytes([0xaa; 16]),
            secret: [0x55; 32],
        }
        .to_string(),
        PeerAddr::new("127.0.0.1:4433").unwrap().to_string(),
        PeerAddr::new("mem:node-1").unwrap().to_string(),
    ];
    for (i, text) in texts.iter().enumerate() {
        seeds.write("text", &format!("id-{i}"), text.as_bytes());
    }
    // The GPU table: its comment header and its first rows (the whole file is above 4 KiB).
    let head: String = BUILTIN_GPU_TABLE_CSV
        .lines()
        .take(40)
        .map(|l| format!("{l}\n"))
        .collect();
    seeds.write("text", "gpus-head.csv", head.as_bytes());

    // Rewards interchange documents: the CLI's example round, and rounds built here.
    let cli_round = include_str!("../../crates/cli/tests/data/round.json");
    seeds.write(
        "rewards_inputs_json",
        "cli-round.json",
        cli_round.as_bytes(),
    );
    let day = 86_400;
    let inputs = RoundInputs {
        params: Params::default(),
        round: Round {
            index: 1,
            start_s: day,
            length_s: day,
            income_usd_micro: MicroUsd::new(100_000),
            carry_in_usd_micro: MicroUsd::ZERO,
        },
        nodes: vec![
            node(1, 1_000_000, vec![Interval::new(day, 2 * day)]),
            node(2, 5_000_000, vec![Interval::new(day, day + 50_000)]),
            node(
                3,
                0,
                vec![
                    Interval::new(day + 100, day + 200),
                    Interval::new(day + 150, day + 90_000),
                ],
            ),
        ],
    };
    let mut one_node = inputs.clone();
    one_node.nodes.truncate(1);
    for (name, doc) in [("round", &inputs), ("one-node", &one_node)] {
        seeds.write(
            "rewards_inputs_json",
            &format!("{name}.json"),
            doc.to_json().as_bytes(),
        );
        let out = crat_rewards::compute(doc).unwrap();
        seeds.write(
            "rewards_outcome_json",
            &format!("{name}.json"),
            out.to_json().as_bytes(),
        );
    }
    let cli_inputs = RoundInputs::from_json(cli_round).unwrap();
    let out = crat_rewards::compute(&cli_inputs).unwrap();
    seeds.write(
        "rewards_outcome_json",
        "cli-round.json",
        out.to_json().as_bytes(),
    );
}
