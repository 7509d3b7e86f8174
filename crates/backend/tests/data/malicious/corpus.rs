//! The malicious-model corpus: what each file is, how it is built, and what a node must do with
//! it. The files next to this one are exactly what [`corpus`] writes (crat-backend's `backends`
//! test checks that, and rewrites them with `CRAT_WRITE_CORPUS=1`); see README.md.
//!
//! Test support, included with `#[path]` by crat-backend's and the dispatcher's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};

/// A minimal protobuf writer, to build hostile ONNX models by hand.
#[derive(Default, Clone)]
pub struct Pb(pub Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(b);
                return;
            }
            self.0.push(b | 0x80);
        }
    }
    /// A varint field.
    pub fn int(mut self, field: u64, v: i64) -> Self {
        self.varint(field << 3);
        self.varint(v as u64);
        self
    }
    /// A length-delimited field.
    pub fn bytes(mut self, field: u64, b: &[u8]) -> Self {
        self.varint((field << 3) | 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    /// A string field.
    pub fn str(self, field: u64, s: &str) -> Self {
        self.bytes(field, s.as_bytes())
    }
    /// A message field.
    pub fn msg(self, field: u64, m: Pb) -> Self {
        self.bytes(field, &m.0)
    }
}

/// `ValueInfoProto` of a float tensor: `Ok(n)` a fixed dimension, `Err(name)` a named one.
pub fn value_info_dims(name: &str, dims: &[Result<i64, &str>]) -> Pb {
    let mut shape = Pb::default();
    for d in dims {
        shape = shape.msg(
            1,
            match d {
                Ok(n) => Pb::default().int(1, *n),
                Err(p) => Pb::default().str(2, p),
            },
        );
    }
    let tensor_type = Pb::default().int(1, 1).msg(2, shape);
    Pb::default()
        .str(1, name)
        .msg(2, Pb::default().msg(1, tensor_type))
}

/// `ValueInfoProto` of a float tensor with these fixed dims.
pub fn value_info(name: &str, dims: &[i64]) -> Pb {
    let dims: Vec<Result<i64, &str>> = dims.iter().map(|&d| Ok(d)).collect();
    value_info_dims(name, &dims)
}

/// A model `ModelProto { ir_version 7, opset 13, graph }`.
pub fn model(graph: Pb) -> Vec<u8> {
    Pb::default()
        .int(1, 7)
        .msg(8, Pb::default().str(1, "").int(2, 13))
        .msg(7, graph)
        .0
}

/// A model: opset 13, one node `op(inputs) -> y`, graph input x (`x_dims`), output y [1,4];
/// `extra` adds to the graph.
pub fn model_with(
    op: &str,
    node_inputs: &[&str],
    extra: impl FnOnce(Pb) -> Pb,
    x_dims: &[i64],
) -> Vec<u8> {
    let mut node = Pb::default();
    for i in node_inputs {
        node = node.str(1, i);
    }
    let node = node.str(2, "y").str(3, "n0").str(4, op);
    let graph = Pb::default()
        .msg(1, node)
        .str(2, "g")
        .msg(11, value_info("x", x_dims))
        .msg(12, value_info("y", &[1, 4]));
    model(extra(graph))
}

/// `y = x + RandomUniform(shape [1, 4])`, input and output `[1, 4]` floats, with a `seed`
/// attribute or without: legal, but its answers differ from run to run (unseeded), or between
/// runtimes (seeded), so no two replicas can be checked against each other.
pub fn random_uniform(seed: Option<f32>) -> Vec<u8> {
    // AttributeProto: name 1, f 2, ints 8, type 20 (FLOAT 1, INTS 7).
    let mut random = Pb::default()
        .str(2, "r")
        .str(3, "noise")
        .str(4, "RandomUniform")
        .msg(
            5,
            Pb::default().str(1, "shape").int(8, 1).int(8, 4).int(20, 7),
        );
    if let Some(seed) = seed {
        let mut attr = Pb::default().str(1, "seed");
        attr.0.push((2 << 3) | 5);
        attr.0.extend_from_slice(&seed.to_le_bytes());
        random = random.msg(5, attr.int(20, 1));
    }
    let add = Pb::default()
        .str(1, "x")
        .str(1, "r")
        .str(2, "y")
        .str(4, "Add");
    model(
        Pb::default()
            .msg(1, random)
            .msg(1, add)
            .str(2, "g")
            .msg(11, value_info("x", &[1, 4]))
            .msg(12, value_info("y", &[1, 4])),
    )
}

/// A model whose only node is `ConstantOfShape(s) -> y`, `s` the constant shape `dims` (an
/// `INT64` initializer): nothing declares a big shape, the tensor exists only once a backend
/// evaluates the node (tract does at load). Input `x` and output `y` are declared `[1, 4]`.
pub fn constant_of_shape(dims: &[i64]) -> Vec<u8> {
    constant_of_shape_typed(dims, None)
}

/// [`constant_of_shape`] filling with a zero of ONNX element type `elem` (a `value`
/// attribute; `None`: none, float zeros).
pub fn constant_of_shape_typed(dims: &[i64], elem: Option<i64>) -> Vec<u8> {
    let raw: Vec<u8> = dims.iter().flat_map(|d| d.to_le_bytes()).collect();
    // TensorProto { dims [rank], data_type INT64, name "s", raw_data }.
    let s = Pb::default()
        .int(1, dims.len() as i64)
        .int(2, 7)
        .str(8, "s")
        .bytes(9, &raw);
    let mut node = Pb::default()
        .str(1, "s")
        .str(2, "y")
        .str(3, "n0")
        .str(4, "ConstantOfShape");
    if let Some(elem) = elem {
        // AttributeProto { name "value", t: TensorProto { dims [1], data_type, raw_data 0 },
        // type TENSOR (4) }.
        let zero = Pb::default().int(1, 1).int(2, elem).bytes(9, &[0; 8]);
        node = node.msg(5, Pb::default().str(1, "value").msg(5, zero).int(20, 4));
    }
    model(
        Pb::default()
            .msg(1, node)
            .str(2, "g")
            .msg(5, s)
            .msg(11, value_info("x", &[1, 4]))
            .msg(12, value_info("y", &[1, 4])),
    )
}

/// `y = x + ReduceMax(ConstantOfShape(dims))`: it serves `[1, 4]` floats unchanged, and a
/// backend makes a tensor of `dims` zeros (floats) to do so (tract at load, folding it).
pub fn zeros_then_identity(dims: &[i64]) -> Vec<u8> {
    let raw: Vec<u8> = dims.iter().flat_map(|d| d.to_le_bytes()).collect();
    let s = Pb::default()
        .int(1, dims.len() as i64)
        .int(2, 7)
        .str(8, "s")
        .bytes(9, &raw);
    let zeros = Pb::default()
        .str(1, "s")
        .str(2, "z")
        .str(4, "ConstantOfShape");
    let max = Pb::default().str(1, "z").str(2, "m").str(4, "ReduceMax");
    let add = Pb::default()
        .str(1, "x")
        .str(1, "m")
        .str(2, "y")
        .str(4, "Add");
    model(
        Pb::default()
            .msg(1, zeros)
            .msg(1, max)
            .msg(1, add)
            .str(2, "g")
            .msg(5, s)
            .msg(11, value_info("x", &[1, 4]))
            .msg(12, value_info("y", &[1, 4])),
    )
}

/// `n` deterministic pseudo-random bytes.
pub fn noise_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 56) as u8
        })
        .collect()
}

/// What the model check (`onnx_check::check_model`) says, and so the backends' first error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `BackendError::Load`: malformed or over a limit.
    Load,
    /// `BackendError::ExternalData`, naming `../../etc/passwd`.
    ExternalDataPasswd,
    /// `BackendError::ExternalData`.
    ExternalData,
}

/// What a node must do with a corpus model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The check refuses it: every backend's load fails with this error, and the dispatcher
    /// refuses the upload (`ModelRejected`).
    Refused(Refusal),
    /// It passes the check but no backend loads it: the upload is stored, and every replica
    /// of a deployment fails (the deployment never becomes ready).
    FailsAtLoad,
    /// Hostile in shape but legal: it loads and serves `[1, 4]` inputs, giving `max(x, 0)`.
    ServesRelu,
}

/// One corpus file.
pub struct Entry {
    /// File name in the corpus directory.
    pub name: &'static str,
    /// What it is.
    pub what: &'static str,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// What a node must do with it.
    pub expect: Expect,
}

/// The corpus directory.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../backend/tests/data/malicious")
}

const TINY_CNN: &[u8] = include_bytes!("../../../models/tiny_cnn.onnx");

/// Nodes in `long_relu_chain.onnx`.
pub const CHAIN_NODES: usize = 4_000;
/// Depth of the `If` nesting in `deep_if_nesting.onnx` (the check's limit is 32).
pub const IF_DEPTH: usize = 40;

/// Every corpus model, in README order.
pub fn corpus() -> Vec<Entry> {
    let external = model_with(
        "Add",
        &["x", "w"],
        |g| {
            let entry = Pb::default().str(1, "location").str(2, "../../etc/passwd");
            let w = Pb::default().int(1, 4).int(2, 1).str(8, "w").msg(13, entry);
            g.msg(5, w)
        },
        &[1, 4],
    );
    let external_flag = model_with(
        "Add",
        &["x", "w"],
        |g| g.msg(5, Pb::default().int(1, 4).int(2, 1).str(8, "w").int(14, 1)),
        &[1, 4],
    );
    // An initializer claiming 2^20 × 2^20 × 4 float elements (16 TiB) and holding none.
    let huge_initializer = model_with(
        "Add",
        &["x", "w"],
        |g| {
            let w = Pb::default()
                .int(1, 1 << 20)
                .int(1, 1 << 20)
                .int(1, 4)
                .int(2, 1)
                .str(8, "w");
            g.msg(5, w)
        },
        &[1, 4],
    );
    // ConstantOfShape with the constant shape [2^20, 2^20]: nothing declares a big shape, the
    // 2^40-element (4 TiB) tensor exists only once a backend evaluates the node.
    let constant_of_shape_2p40 = constant_of_shape(&[1 << 20, 1 << 20]);
    // If nodes nested IF_DEPTH deep through their then_branch graphs.
    let deep_if = {
        let mut g = Pb::default()
            .msg(1, Pb::default().str(1, "x").str(2, "y").str(4, "Identity"))
            .msg(12, value_info("y", &[1, 4]));
        for _ in 0..IF_DEPTH {
            let attr = Pb::default().str(1, "then_branch").int(20, 5).msg(6, g);
            let node = Pb::default()
                .str(1, "c")
                .str(2, "y")
                .str(4, "If")
                .msg(5, attr);
            g = Pb::default().msg(1, node).msg(12, value_info("y", &[1, 4]));
        }
        model(g.msg(11, value_info("x", &[1, 4])))
    };
    // CHAIN_NODES Relu nodes in a row, x → t1 → … → y, over a batch dimension N.
    let chain = {
        let mut g = Pb::default();
        let name = |i: usize| {
            if i == 0 {
                "x".to_owned()
            } else if i == CHAIN_NODES {
                "y".to_owned()
            } else {
                format!("{i:x}")
            }
        };
        for i in 0..CHAIN_NODES {
            g = g.msg(
                1,
                Pb::default()
                    .str(1, &name(i))
                    .str(2, &name(i + 1))
                    .str(4, "Relu"),
            );
        }
        model(
            g.msg(11, value_info_dims("x", &[Err("N"), Ok(4)]))
                .msg(12, value_info_dims("y", &[Err("N"), Ok(4)])),
        )
    };
    use Expect::*;
    vec![
        Entry {
            name: "random_bytes.onnx",
            what: "4 KiB of pseudo-random bytes",
            bytes: noise_bytes(4096, 99),
            expect: Refused(Refusal::Load),
        },
        Entry {
            name: "empty.onnx",
            what: "zero bytes",
            bytes: Vec::new(),
            expect: Refused(Refusal::Load),
        },
        Entry {
            name: "truncated_tiny_cnn.onnx",
            what: "the first half of the tiny CNN (a protobuf cut mid-message)",
            bytes: TINY_CNN[..TINY_CNN.len() / 2].to_vec(),
            expect: Refused(Refusal::Load),
        },
        Entry {
            name: "unknown_operator.onnx",
            what: "a well-formed model whose only node is the operator CratNoSuchOperator",
            bytes: model_with("CratNoSuchOperator", &["x"], |g| g, &[1, 4]),
            expect: FailsAtLoad,
        },
        Entry {
            name: "input_2p40_elements.onnx",
            what: "an Identity model declaring its input as [2^20, 2^20]: 2^40 elements",
            bytes: model_with("Identity", &["x"], |g| g, &[1 << 20, 1 << 20]),
            expect: Refused(Refusal::Load),
        },
        Entry {
            name: "initializer_2p42_elements.onnx",
            what: "an initializer claiming [2^20, 2^20, 4] floats (16 TiB) with no data",
            bytes: huge_initializer,
            expect: Refused(Refusal::Load),
        },
        Entry {
            name: "constant_of_shape_2p40.onnx",
            what: "ConstantOfShape of the constant shape [2^20, 2^20]: a 4 TiB tensor at run time",
            bytes: constant_of_shape_2p40,
            expect: Refused(Refusal::Load),
        },
        Entry {
            name: "constant_of_shape_2p32.onnx",
            what: "ConstantOfShape of the constant shape [65536, 65536]: 16 GiB of floats, which \
                   tract allocated at load before the check followed constant shapes",
            bytes: constant_of_shape(&[1 << 16, 1 << 16]),
            expect: Refused(Refusal::Load),
        },
        Entry {
            name: "constant_of_shape_f64_2p28.onnx",
            what: "ConstantOfShape of [16384, 16384] doubles: 2^28 elements (the element limit) \
                   but 2 GiB, over the 1 GiB a node holds of one tensor",
            bytes: constant_of_shape_typed(&[1 << 14, 1 << 14], Some(11)),
            expect: Refused(Refusal::Load),
        },
        Entry {
            name: "external_data_passwd.onnx",
            what: "an initializer stored in the external file ../../etc/passwd",
            bytes: external,
            expect: Refused(Refusal::ExternalDataPasswd),
        },
        Entry {
            name: "external_data_flag.onnx",
            what: "an initializer with data_location = EXTERNAL and no location",
            bytes: external_flag,
            expect: Refused(Refusal::ExternalData),
        },
        Entry {
            name: "deep_if_nesting.onnx",
            what: "If nodes nested 40 deep through their then_branch subgraphs",
            bytes: deep_if,
            expect: Refused(Refusal::Load),
        },
        Entry {
            name: "long_relu_chain.onnx",
            what: "4,000 Relu nodes in one chain (legal: it must load, run and stay bounded)",
            bytes: chain,
            expect: ServesRelu,
        },
    ]
}
