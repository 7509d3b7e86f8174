//! The model check against a real protobuf decoder: tract's `prost`-generated `ModelProto`.
//!
//! Every upload reaches [`check_model`], a hand-written protobuf walker; if it were more lenient
//! than a real decoder, a model it let through could reach a backend in a state the backend
//! never expected. Property: whatever bytes — the shipped models, the malicious corpus, and
//! random mutations of them (bit flips, truncations, insertions, duplicated runs) — a model the
//! check accepts is one prost decodes too, with the same graph inputs (initializers excluded)
//! and outputs, in order. (The other direction does not hold by design: the check refuses
//! well-formed models for what they contain, external data or shape bombs.)
//!
//! `cargo fuzz run onnx_check` (fuzz/) drives the check itself with libFuzzer for crashes,
//! hangs and memory; this property runs with every test run.
#![cfg(feature = "tract")]
#![allow(clippy::unwrap_used)]

use crat_backend::onnx_check::check_model;
use proptest::prelude::*;
use prost::Message;
use tract_onnx::pb::ModelProto;

const TINY_CNN: &[u8] = include_bytes!("../models/tiny_cnn.onnx");
const PADDLE_CLS: &[u8] = include_bytes!("../models/ch_ppocr_mobile_v2.0_cls_infer.onnx");

fn seeds() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/malicious");
    let mut seeds = vec![TINY_CNN.to_vec()];
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    names.sort();
    seeds.extend(names.iter().map(|p| std::fs::read(p).unwrap()));
    seeds
}

/// Checks the property on `bytes`; returns whether the check accepted them.
fn agree(bytes: &[u8]) -> bool {
    let Ok(summary) = check_model(bytes) else {
        return false;
    };
    let proto = ModelProto::decode(bytes).unwrap_or_else(|e| {
        panic!(
            "check_model accepted {} bytes that prost refuses: {e}",
            bytes.len()
        )
    });
    let graph = proto.graph.expect("an accepted model has a graph");
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&str> = graph
        .input
        .iter()
        .map(|v| v.name.as_str())
        .filter(|n| !initializers.contains(n))
        .collect();
    let outputs: Vec<&str> = graph.output.iter().map(|v| v.name.as_str()).collect();
    let ours_in: Vec<&str> = summary
        .info
        .inputs
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    let ours_out: Vec<&str> = summary
        .info
        .outputs
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(ours_in, inputs, "graph inputs");
    assert_eq!(ours_out, outputs, "graph outputs");
    true
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Truncate { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Repeat { at: usize, len: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        1 => any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        2 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => (any::<usize>(), 1usize..64).prop_map(|(at, len)| Mutation::Repeat { at, len }),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        if bytes.is_empty() {
            break;
        }
        let n = bytes.len();
        match m {
            Mutation::Flip { at, bit } => bytes[at % n] ^= 1 << bit,
            Mutation::Truncate { at } => bytes.truncate(at % n),
            Mutation::Insert { at, bytes: new } => {
                let at = at % n;
                bytes.splice(at..at, new.iter().copied());
            }
            Mutation::Repeat { at, len } => {
                let at = at % n;
                let end = (at + len).min(n);
                let run = bytes[at..end].to_vec();
                bytes.splice(end..end, run);
            }
        }
    }
    bytes
}

#[test]
fn the_shipped_models_and_the_corpus_agree() {
    assert!(agree(TINY_CNN));
    assert!(agree(PADDLE_CLS));
    let accepted = seeds().iter().filter(|s| agree(s)).count();
    // The tiny CNN and the corpus files that are well-formed models (refused by backends or
    // limits later, not by the check) are accepted.
    assert!(accepted >= 2, "{accepted}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn what_the_check_accepts_prost_decodes_the_same(
        seed in 0usize..64,
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let seeds = seeds();
        let bytes = mutate(seeds[seed % seeds.len()].clone(), &mutations);
        agree(&bytes);
    }
}
