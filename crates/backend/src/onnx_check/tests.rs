//! Tests of the model check and its memory estimate, on models written by hand.

use super::*;

/// A minimal protobuf writer for building hostile models in tests.
#[derive(Default)]
struct W(Vec<u8>);

impl W {
    fn varint(&mut self, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(b);
                break;
            }
            self.0.push(b | 0x80);
        }
    }
    fn int(mut self, field: u32, v: i64) -> Self {
        self.varint(u64::from(field) << 3);
        self.varint(v as u64);
        self
    }
    fn bytes(mut self, field: u32, b: &[u8]) -> Self {
        self.varint((u64::from(field) << 3) | 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    fn msg(self, field: u32, m: W) -> Self {
        self.bytes(field, &m.0)
    }
}

fn tensor_type(elem: i64, dims: &[Result<i64, &str>]) -> W {
    let mut shape = W::default();
    for d in dims {
        shape = shape.msg(
            SHAPE_DIM,
            match d {
                Ok(v) => W::default().int(DIM_VALUE, *v),
                Err(p) => W::default().bytes(DIM_PARAM, p.as_bytes()),
            },
        );
    }
    W::default().msg(
        TYPE_TENSOR,
        W::default()
            .int(TYPE_TENSOR_ELEM_TYPE, elem)
            .msg(TYPE_TENSOR_SHAPE, shape),
    )
}

fn value(name: &str, ty: W) -> W {
    W::default()
        .bytes(VALUE_INFO_NAME, name.as_bytes())
        .msg(VALUE_INFO_TYPE, ty)
}

fn model(graph: W) -> Vec<u8> {
    W::default()
        .int(MODEL_IR_VERSION, 7)
        .msg(
            MODEL_OPSET_IMPORT,
            W::default().bytes(OPSET_DOMAIN, b"").int(OPSET_VERSION, 13),
        )
        .msg(MODEL_GRAPH, graph)
        .0
}

fn identity_graph() -> W {
    let node = W::default()
        .bytes(1, b"x")
        .bytes(2, b"y")
        .bytes(4, b"Identity");
    W::default()
        .msg(GRAPH_NODE, node)
        .msg(
            GRAPH_INPUT,
            value("x", tensor_type(1, &[Err("N"), Ok(3), Ok(-1)])),
        )
        .msg(
            GRAPH_OUTPUT,
            value("y", tensor_type(1, &[Err("N"), Ok(3), Ok(-1)])),
        )
}

#[test]
fn a_varint_beyond_64_bits_is_malformed() {
    let mut max = vec![0xff; 9];
    max.push(0x01);
    assert_eq!(Reader::new(&max).varint().unwrap(), u64::MAX);
    let mut beyond = vec![0xff; 9];
    beyond.push(0x02);
    assert!(Reader::new(&beyond).varint().is_err());
}

#[test]
fn reads_declared_io() {
    let s = check_model(&model(identity_graph())).unwrap();
    assert_eq!(s.opset, 13);
    assert_eq!(s.ir_version, 7);
    assert_eq!(s.node_count, 1);
    assert_eq!(s.info.inputs[0].name, "x");
    assert_eq!(s.info.inputs[0].dtype, DType::F32);
    assert_eq!(
        s.info.inputs[0].shape,
        vec![
            Dim::Symbolic("N".into()),
            Dim::Fixed(3),
            Dim::Symbolic(String::new())
        ]
    );
    // The output declares no type at all: not servable.
    let s = check_model(&model(
        identity_graph().msg(GRAPH_OUTPUT, value("z", tensor_type(8, &[]))),
    ));
    assert!(matches!(s, Err(BackendError::Load(_))), "{s:?}");
}

#[test]
fn random_operators_without_a_seed_are_flagged_once() {
    let random = |op: &str, out: &str, seeded: bool| {
        let mut n = W::default()
            .bytes(1, b"x")
            .bytes(2, out.as_bytes())
            .bytes(4, op.as_bytes());
        if seeded {
            // AttributeProto { name: "seed", f: 1.0, type: FLOAT }
            let mut seed = W::default().bytes(ATTR_NAME, b"seed");
            seed.varint((2 << 3) | 5);
            seed.0.extend_from_slice(&1f32.to_le_bytes());
            n = n.msg(NODE_ATTRIBUTE, seed.int(20, 1));
        }
        n
    };
    let graph = |nodes: Vec<W>| {
        let mut g = W::default();
        for n in nodes {
            g = g.msg(GRAPH_NODE, n);
        }
        g.msg(GRAPH_INPUT, value("x", tensor_type(1, &[Ok(2)])))
            .msg(GRAPH_OUTPUT, value("y", tensor_type(1, &[Ok(2)])))
    };
    let s = check_model(&model(graph(vec![
        random("RandomUniformLike", "a", false),
        random("RandomNormalLike", "b", true),
        random("RandomUniformLike", "c", false),
        random("Bernoulli", "y", false),
    ])))
    .unwrap();
    assert_eq!(
        s.unseeded_random_ops,
        vec!["RandomUniformLike", "Bernoulli"]
    );
    assert_eq!(s.seeded_random_ops, vec!["RandomNormalLike"]);
    assert!(s.uses_random_ops());
    let seeded = check_model(&model(graph(vec![random("RandomUniformLike", "y", true)]))).unwrap();
    assert_eq!(seeded.unseeded_random_ops, Vec::<&str>::new());
    assert_eq!(seeded.seeded_random_ops, vec!["RandomUniformLike"]);
    assert!(seeded.uses_random_ops());
    let plain = check_model(&model(identity_graph())).unwrap();
    assert!(plain.unseeded_random_ops.is_empty());
    assert!(!plain.uses_random_ops());
}

#[test]
fn undeclared_output_shape_is_reported() {
    let node = W::default().bytes(1, b"x").bytes(2, b"y");
    let g = W::default()
        .msg(GRAPH_NODE, node)
        .msg(GRAPH_INPUT, value("x", tensor_type(1, &[Ok(2)])))
        .msg(
            GRAPH_OUTPUT,
            value(
                "y",
                W::default().msg(TYPE_TENSOR, W::default().int(TYPE_TENSOR_ELEM_TYPE, 7)),
            ),
        );
    let s = check_model(&model(g)).unwrap();
    assert_eq!(s.undeclared_output_shapes, vec![0]);
    assert_eq!(s.info.outputs[0].dtype, DType::I64);
}

#[test]
fn refuses_external_data_anywhere() {
    let ext = W::default()
        .bytes(TENSOR_NAME, b"w")
        .int(TENSOR_DIMS, 4)
        .msg(
            TENSOR_EXTERNAL_DATA,
            W::default()
                .bytes(ENTRY_KEY, b"location")
                .bytes(ENTRY_VALUE, b"../../etc/passwd"),
        );
    // As an initializer.
    let err = check_model(&model(
        identity_graph().msg(GRAPH_INITIALIZER, W(ext.0.clone())),
    ))
    .unwrap_err();
    assert!(
        matches!(&err, BackendError::ExternalData(m) if m.contains("../../etc/passwd")),
        "{err:?}"
    );
    // Only data_location set.
    let loc = W::default()
        .bytes(TENSOR_NAME, b"w")
        .int(TENSOR_DATA_LOCATION, 1);
    assert!(matches!(
        check_model(&model(identity_graph().msg(GRAPH_INITIALIZER, loc))),
        Err(BackendError::ExternalData(_))
    ));
    // Inside a Constant node's attribute, inside an If branch subgraph.
    let inner_node = W::default().msg(
        NODE_ATTRIBUTE,
        W::default()
            .bytes(1, b"value")
            .msg(ATTR_T, W(ext.0.clone())),
    );
    let branch = W::default().msg(GRAPH_NODE, inner_node);
    let if_node = W::default()
        .bytes(4, b"If")
        .msg(NODE_ATTRIBUTE, W::default().msg(ATTR_G, branch));
    assert!(matches!(
        check_model(&model(identity_graph().msg(GRAPH_NODE, if_node))),
        Err(BackendError::ExternalData(_))
    ));
    // As the values of a sparse initializer.
    let sparse = W::default().msg(SPARSE_VALUES, ext);
    assert!(matches!(
        check_model(&model(
            identity_graph().msg(GRAPH_SPARSE_INITIALIZER, sparse)
        )),
        Err(BackendError::ExternalData(_))
    ));
}

#[test]
fn refuses_huge_shapes() {
    let huge = W::default()
        .bytes(TENSOR_NAME, b"w")
        .int(TENSOR_DIMS, 1 << 20)
        .int(TENSOR_DIMS, 1 << 20);
    let err = check_model(&model(identity_graph().msg(GRAPH_INITIALIZER, huge))).unwrap_err();
    assert!(matches!(err, BackendError::Load(_)), "{err:?}");
    let neg = W::default().bytes(TENSOR_NAME, b"w").int(TENSOR_DIMS, -3);
    assert!(matches!(
        check_model(&model(identity_graph().msg(GRAPH_INITIALIZER, neg))),
        Err(BackendError::Load(_))
    ));
    let g = identity_graph().msg(
        GRAPH_VALUE_INFO,
        value("t", tensor_type(1, &[Ok(1 << 17), Ok(1 << 17)])),
    );
    assert!(matches!(check_model(&model(g)), Err(BackendError::Load(_))));
}

/// An `INT64` initializer holding `values` (1-D), in `raw_data` or packed `int64_data`.
fn int64(name: &str, values: &[i64], raw: bool) -> W {
    let t = W::default()
        .int(TENSOR_DIMS, values.len() as i64)
        .int(TENSOR_DATA_TYPE, ONNX_INT64)
        .bytes(TENSOR_NAME, name.as_bytes());
    if raw {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        t.bytes(TENSOR_RAW_DATA, &bytes)
    } else {
        let mut packed = W::default();
        for v in values {
            packed.varint(*v as u64);
        }
        t.bytes(TENSOR_INT64_DATA, &packed.0)
    }
}

/// A node `op(inputs) -> output`.
fn node(op: &str, inputs: &[&str], output: &str) -> W {
    let mut n = W::default();
    for i in inputs {
        n = n.bytes(NODE_INPUT, i.as_bytes());
    }
    n.bytes(NODE_OUTPUT, output.as_bytes())
        .bytes(NODE_OP_TYPE, op.as_bytes())
}

#[test]
fn refuses_constant_shapes_that_make_huge_tensors() {
    let maker = |op: &str, inputs: &[&str]| node(op, inputs, "z");
    let big = [1i64 << 20, 1 << 20];
    let refused = |g: W| {
        let e = check_model(&model(g)).unwrap_err();
        assert!(
            matches!(&e, BackendError::Load(m) if m.contains("constant shape")),
            "{e:?}"
        );
    };
    // An initializer, raw or packed, as the operand of each tensor-making operator.
    for raw in [true, false] {
        refused(
            identity_graph()
                .msg(GRAPH_INITIALIZER, int64("s", &big, raw))
                .msg(GRAPH_NODE, maker("ConstantOfShape", &["s"])),
        );
    }
    // 65,536 × 65,536 (2³² elements, 16 GiB of f32: tract allocates it at load) is over
    // what a node holds (16,384 × 16,384, 2²⁸, 1 GiB, is accepted below).
    refused(
        identity_graph()
            .msg(GRAPH_INITIALIZER, int64("s", &[1 << 16, 1 << 16], true))
            .msg(GRAPH_NODE, maker("ConstantOfShape", &["s"])),
    );
    refused(
        identity_graph()
            .msg(GRAPH_INITIALIZER, int64("s", &big, true))
            .msg(GRAPH_NODE, maker("Expand", &["x", "s"])),
    );
    refused(
        identity_graph()
            .msg(GRAPH_INITIALIZER, int64("r", &[1 << 16, 1 << 17], true))
            .msg(GRAPH_NODE, maker("Tile", &["x", "r"])),
    );
    // A Constant node's value, as a tensor or as value_ints, used before it is defined.
    let constant = W::default()
        .bytes(NODE_OUTPUT, b"s")
        .bytes(NODE_OP_TYPE, b"Constant")
        .msg(
            NODE_ATTRIBUTE,
            W::default()
                .bytes(1, b"value")
                .msg(ATTR_T, int64("", &big, false)),
        );
    refused(
        identity_graph()
            .msg(GRAPH_NODE, maker("ConstantOfShape", &["s"]))
            .msg(GRAPH_NODE, constant),
    );
    let mut ints = W::default();
    for v in big {
        ints.varint(v as u64);
    }
    let constant_ints = W::default()
        .bytes(NODE_OUTPUT, b"s")
        .bytes(NODE_OP_TYPE, b"Constant")
        .msg(
            NODE_ATTRIBUTE,
            W::default()
                .bytes(1, b"value_ints")
                .bytes(ATTR_INTS, &ints.0),
        );
    refused(
        identity_graph()
            .msg(GRAPH_NODE, constant_ints)
            .msg(GRAPH_NODE, maker("ConstantOfShape", &["s"])),
    );
    // Within the limit, or big but not a shape operand: accepted.
    for g in [
        identity_graph()
            .msg(GRAPH_INITIALIZER, int64("s", &[1 << 14, 1 << 14], true))
            .msg(GRAPH_NODE, maker("ConstantOfShape", &["s"])),
        identity_graph()
            .msg(GRAPH_INITIALIZER, int64("s", &big, true))
            .msg(GRAPH_NODE, maker("Add", &["x", "s"])),
        identity_graph()
            .msg(GRAPH_INITIALIZER, int64("s", &big, true))
            .msg(GRAPH_NODE, maker("Expand", &["s", "x"])),
    ] {
        assert!(check_model(&model(g)).is_ok());
    }
}

/// A scalar initializer of ONNX element type `elem` (`INT64` or `FLOAT`).
fn scalar(name: &str, elem: i64, v: f64) -> W {
    let t = W::default()
        .int(TENSOR_DATA_TYPE, elem)
        .bytes(TENSOR_NAME, name.as_bytes());
    if elem == ONNX_FLOAT {
        t.bytes(TENSOR_RAW_DATA, &(v as f32).to_le_bytes())
    } else {
        t.bytes(TENSOR_RAW_DATA, &(v as i64).to_le_bytes())
    }
}

/// A 1-D `FLOAT` initializer.
fn floats(name: &str, values: &[f32]) -> W {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    W::default()
        .int(TENSOR_DIMS, values.len() as i64)
        .int(TENSOR_DATA_TYPE, ONNX_FLOAT)
        .bytes(TENSOR_NAME, name.as_bytes())
        .bytes(TENSOR_RAW_DATA, &bytes)
}

/// A graph taking `x: f32[1, 4]` and giving `y: f32[1, 4]` (12 + 4 bytes each declared),
/// with `extra` added.
fn small_graph(extra: impl FnOnce(W) -> W) -> Vec<u8> {
    model(extra(
        W::default()
            .msg(GRAPH_INPUT, value("x", tensor_type(1, &[Ok(1), Ok(4)])))
            .msg(GRAPH_OUTPUT, value("y", tensor_type(1, &[Ok(1), Ok(4)]))),
    ))
}

fn memory_of(m: &[u8]) -> MemoryEstimate {
    check_model(m).unwrap().memory
}

#[test]
fn estimates_weights_and_declared_tensors() {
    // Declared tensors only: x and y, 16 bytes each; no weights.
    let m = memory_of(&small_graph(|g| {
        g.msg(GRAPH_NODE, node("Identity", &["x"], "y"))
    }));
    assert_eq!(
        (m.weights_bytes, m.made_bytes, m.largest_tensor_bytes),
        (0, 0, 16)
    );
    assert_eq!(m.bytes, 32);
    assert!(m.is_complete());
    // Symbolic dimensions count as 1: [N, 3, ?] floats are 12 bytes.
    let m = memory_of(&model(identity_graph()));
    assert_eq!((m.largest_tensor_bytes, m.bytes), (12, 24));
    // An initializer of 1,000 × 1,000 floats, declared without data: 4 MB of weights;
    // the same as f64 weighs twice that.
    let w = |elem: i64| {
        W::default()
            .bytes(TENSOR_NAME, b"w")
            .int(TENSOR_DIMS, 1000)
            .int(TENSOR_DIMS, 1000)
            .int(TENSOR_DATA_TYPE, elem)
    };
    let m = memory_of(&small_graph(|g| g.msg(GRAPH_INITIALIZER, w(1))));
    assert_eq!(m.weights_bytes, 4_000_000);
    assert_eq!(m.bytes, 4_000_000 + 32);
    let m = memory_of(&small_graph(|g| g.msg(GRAPH_INITIALIZER, w(11))));
    assert_eq!(m.weights_bytes, 8_000_000);
    // A sparse initializer counts at its dense size.
    let sparse = W::default()
        .msg(
            SPARSE_VALUES,
            W::default()
                .bytes(TENSOR_NAME, b"s")
                .int(TENSOR_DIMS, 2)
                .int(TENSOR_DATA_TYPE, 1),
        )
        .int(SPARSE_DIMS, 1000)
        .int(SPARSE_DIMS, 1000);
    let m = memory_of(&small_graph(|g| g.msg(GRAPH_SPARSE_INITIALIZER, sparse)));
    assert_eq!(m.weights_bytes, 4_000_000 + 8);
}

#[test]
fn tensors_are_judged_by_bytes() {
    // 2^14 × 2^14 = 2^28 elements: 1 GiB of f32 is what a node holds, 2 GiB of f64 is not.
    let declared = |elem: i64| {
        small_graph(|g| {
            g.msg(
                GRAPH_VALUE_INFO,
                value("t", tensor_type(elem, &[Ok(1 << 14), Ok(1 << 14)])),
            )
        })
    };
    let m = memory_of(&declared(1));
    assert_eq!(
        (m.largest_tensor_bytes, m.largest_tensor.as_str()),
        (1 << 30, "t")
    );
    assert_eq!(m.bytes, 2 << 30);
    let e = check_model(&declared(11)).unwrap_err();
    assert!(
        matches!(&e, BackendError::Load(m) if m.contains("'t'") && m.contains("2.0 GiB")),
        "{e:?}"
    );
    // An initializer: 2^27 f64 (1 GiB) pass, 2^27 complex128 (2 GiB) do not.
    let w = |elem: i64| {
        small_graph(|g| {
            g.msg(
                GRAPH_INITIALIZER,
                W::default()
                    .bytes(TENSOR_NAME, b"w")
                    .int(TENSOR_DIMS, 1 << 27)
                    .int(TENSOR_DATA_TYPE, elem),
            )
        })
    };
    assert_eq!(memory_of(&w(11)).weights_bytes, 1 << 30);
    assert!(matches!(check_model(&w(15)), Err(BackendError::Load(_))));
    // ConstantOfShape of [2^14, 2^14]: 1 GiB of f32 zeros (the default) passes and is
    // counted; with an f64 `value` it is 2 GiB, refused.
    let fill = |elem: Option<i64>| {
        small_graph(|g| {
            let mut n = node("ConstantOfShape", &["s"], "z");
            if let Some(elem) = elem {
                let value = W::default().int(TENSOR_DIMS, 1).int(TENSOR_DATA_TYPE, elem);
                n = n.msg(
                    NODE_ATTRIBUTE,
                    W::default().bytes(ATTR_NAME, b"value").msg(ATTR_T, value),
                );
            }
            g.msg(GRAPH_INITIALIZER, int64("s", &[1 << 14, 1 << 14], true))
                .msg(GRAPH_NODE, n)
        })
    };
    let m = memory_of(&fill(None));
    assert_eq!(m.made_bytes, 1 << 30);
    assert_eq!(
        (m.largest_tensor_bytes, m.largest_tensor.as_str()),
        (1 << 30, "z")
    );
    // Weights: the shape (16 bytes); made 1 GiB; twice the largest, 2 GiB.
    assert_eq!(m.bytes, 16 + (3 << 30));
    assert_eq!(memory_of(&fill(Some(10))).made_bytes, 1 << 29);
    let e = check_model(&fill(Some(11))).unwrap_err();
    assert!(
        matches!(&e, BackendError::Load(m) if m.contains("ConstantOfShape") && m.contains("constant shape 's'")),
        "{e:?}"
    );
}

#[test]
fn estimates_what_each_operator_makes() {
    let made = |extra: fn(W) -> W| memory_of(&small_graph(extra)).made_bytes;
    // Expand x [1, 4] to [1024, 1]: [1024, 4] floats.
    assert_eq!(
        made(|g| g
            .msg(GRAPH_INITIALIZER, int64("s", &[1024, 1], false))
            .msg(GRAPH_NODE, node("Expand", &["x", "s"], "z"))),
        1024 * 4 * 4
    );
    // Tile x [1, 4] by [8, 2]: [8, 8] floats.
    assert_eq!(
        made(|g| g
            .msg(GRAPH_INITIALIZER, int64("r", &[8, 2], true))
            .msg(GRAPH_NODE, node("Tile", &["x", "r"], "z"))),
        64 * 4
    );
    // Range(0, 1000, 1) of int64 scalars: 1,000 int64.
    assert_eq!(
        made(|g| g
            .msg(GRAPH_INITIALIZER, scalar("a", ONNX_INT64, 0.0))
            .msg(GRAPH_INITIALIZER, scalar("b", ONNX_INT64, 1000.0))
            .msg(GRAPH_INITIALIZER, scalar("d", ONNX_INT64, 1.0))
            .msg(GRAPH_NODE, node("Range", &["a", "b", "d"], "z"))),
        8000
    );
    // Pad x [1, 4] by 2 on each side of the last axis: [1, 8] floats.
    assert_eq!(
        made(|g| g
            .msg(GRAPH_INITIALIZER, int64("p", &[0, 2, 0, 2], true))
            .msg(GRAPH_NODE, node("Pad", &["x", "p"], "z"))),
        32
    );
    // The same with the `pads` attribute of opset 2.
    assert_eq!(
        made(|g| {
            let mut ints = W::default();
            for v in [0u64, 2, 0, 2] {
                ints.varint(v);
            }
            let pad = node("Pad", &["x"], "z").msg(
                NODE_ATTRIBUTE,
                W::default()
                    .bytes(ATTR_NAME, b"pads")
                    .bytes(ATTR_INTS, &ints.0),
            );
            g.msg(GRAPH_NODE, pad)
        }),
        32
    );
    // Resize x [1, 4] with scales [1, 256]: [1, 1024] floats.
    assert_eq!(
        made(|g| g
            .msg(GRAPH_INITIALIZER, floats("sc", &[1.0, 256.0]))
            .msg(GRAPH_NODE, node("Resize", &["x", "", "sc"], "z"))),
        4096
    );
    // Reshape is followed: x [1, 4] as [2, 2], tiled by [4096, 4096], is [8192, 8192]
    // floats (256 MiB). Without Reshape's output known, only the repeats would count.
    assert_eq!(
        made(|g| g
            .msg(GRAPH_INITIALIZER, int64("s", &[2, -1], true))
            .msg(GRAPH_INITIALIZER, int64("r", &[4096, 4096], true))
            .msg(GRAPH_NODE, node("Reshape", &["x", "s"], "x2"))
            .msg(GRAPH_NODE, node("Tile", &["x2", "r"], "z"))),
        256 << 20
    );
    // A shape made by a Constant node (value_ints) defined after its use.
    let m = memory_of(&small_graph(|g| {
        let mut ints = W::default();
        for v in [512u64, 512] {
            ints.varint(v);
        }
        let constant = node("Constant", &[], "s").msg(
            NODE_ATTRIBUTE,
            W::default()
                .bytes(ATTR_NAME, b"value_ints")
                .bytes(ATTR_INTS, &ints.0),
        );
        g.msg(GRAPH_NODE, node("ConstantOfShape", &["s"], "z"))
            .msg(GRAPH_NODE, constant)
    }));
    assert_eq!(m.made_bytes, 1 << 20);
    assert!(m.is_complete());
    // A shape computed at run time: not followed, and said so.
    let m = memory_of(&small_graph(|g| {
        g.msg(GRAPH_NODE, node("Shape", &["x"], "s"))
            .msg(GRAPH_NODE, node("ConstantOfShape", &["s"], "z"))
            .msg(GRAPH_NODE, node("Expand", &["x", "s"], "e"))
    }));
    assert_eq!(m.made_bytes, 0);
    assert_eq!(m.not_followed, vec!["ConstantOfShape", "Expand"]);
    assert!(!m.is_complete());
    assert!(m.to_string().contains("not counted"), "{m}");
}

#[test]
fn refuses_what_operators_would_make_beyond_a_node() {
    let refused = |g: Vec<u8>, what: &str| {
        let e = check_model(&g).unwrap_err();
        assert!(
            matches!(&e, BackendError::Load(m) if m.contains(what)),
            "{e:?}"
        );
    };
    // Range(0, 2^40, 1): 2^40 int64, which tract would make at load.
    refused(
        small_graph(|g| {
            g.msg(GRAPH_INITIALIZER, scalar("a", ONNX_INT64, 0.0))
                .msg(
                    GRAPH_INITIALIZER,
                    scalar("b", ONNX_INT64, (1u64 << 40) as f64),
                )
                .msg(GRAPH_INITIALIZER, scalar("d", ONNX_INT64, 1.0))
                .msg(GRAPH_NODE, node("Range", &["a", "b", "d"], "z"))
        }),
        "constant bounds 'a'",
    );
    // A zero step never ends.
    refused(
        small_graph(|g| {
            g.msg(GRAPH_INITIALIZER, scalar("a", ONNX_FLOAT, 0.0))
                .msg(GRAPH_INITIALIZER, scalar("b", ONNX_FLOAT, 1.0))
                .msg(GRAPH_INITIALIZER, scalar("d", ONNX_FLOAT, 0.0))
                .msg(GRAPH_NODE, node("Range", &["a", "b", "d"], "z"))
        }),
        "Range",
    );
    // Pads of 2^20 on both axes.
    refused(
        small_graph(|g| {
            g.msg(
                GRAPH_INITIALIZER,
                int64("p", &[1 << 20, 1 << 20, 0, 0], true),
            )
            .msg(GRAPH_NODE, node("Pad", &["x", "p"], "z"))
        }),
        "Pad",
    );
    // Resize x [1, 4] by [65536, 65536]: 2^34 floats.
    refused(
        small_graph(|g| {
            g.msg(GRAPH_INITIALIZER, floats("sc", &[65536.0, 65536.0]))
                .msg(GRAPH_NODE, node("Resize", &["x", "", "sc"], "z"))
        }),
        "Resize",
    );
    // Tile x [1, 4] by [2^14, 2^13]: 2^29 floats, each tile small.
    refused(
        small_graph(|g| {
            g.msg(GRAPH_INITIALIZER, int64("r", &[1 << 14, 1 << 13], true))
                .msg(GRAPH_NODE, node("Tile", &["x", "r"], "z"))
        }),
        "Tile",
    );
    // A bomb inside an If branch is found too.
    let branch = W::default()
        .msg(GRAPH_INITIALIZER, int64("s", &[1 << 16, 1 << 16], true))
        .msg(GRAPH_NODE, node("ConstantOfShape", &["s"], "z"));
    refused(
        small_graph(|g| {
            g.msg(
                GRAPH_NODE,
                node("If", &["c"], "y").msg(
                    NODE_ATTRIBUTE,
                    W::default()
                        .bytes(ATTR_NAME, b"then_branch")
                        .msg(ATTR_G, branch),
                ),
            )
        }),
        "ConstantOfShape",
    );
}

/// The repository's real models: weights about their file size, the estimate complete
/// or naming what it did not follow, and far below any budget.
#[test]
fn real_models_are_estimated_sensibly() {
    for (name, bytes) in [
        (
            "tiny_cnn",
            &include_bytes!("../../models/tiny_cnn.onnx")[..],
        ),
        (
            "paddle_cls",
            &include_bytes!("../../models/ch_ppocr_mobile_v2.0_cls_infer.onnx")[..],
        ),
        ("challenge", &crate::challenge::matmul_model()[..]),
    ] {
        let m = check_model(bytes).unwrap().memory;
        let file = bytes.len() as u64;
        assert!(
            m.weights_bytes <= file && m.weights_bytes * 2 >= file.saturating_sub(4096),
            "{name}: {m} for a file of {file} bytes"
        );
        assert!(
            m.bytes >= m.weights_bytes && m.bytes < 64 << 20,
            "{name}: {m}"
        );
        println!("{name}: {file} bytes, {m}");
    }
}

#[test]
fn refuses_garbage_and_deep_nesting() {
    assert!(matches!(check_model(&[]), Err(BackendError::Load(_))));
    assert!(matches!(
        check_model(&[0xff; 64]),
        Err(BackendError::Load(_))
    ));
    let good = model(identity_graph());
    for cut in 1..good.len() {
        // Every truncation is either malformed or a model missing parts; never a panic.
        let _ = check_model(&good[..cut]);
    }
    // A graph nested in attributes deeper than the limit.
    let mut g = identity_graph();
    for _ in 0..NESTING_DEPTH_MAX {
        let node = W::default().msg(NODE_ATTRIBUTE, W::default().msg(ATTR_G, g));
        g = W::default().msg(GRAPH_NODE, node);
    }
    assert!(matches!(check_model(&model(g)), Err(BackendError::Load(_))));
    // Two graphs.
    let mut two = model(identity_graph());
    two.extend_from_slice(&W::default().msg(MODEL_GRAPH, identity_graph()).0);
    assert!(matches!(check_model(&two), Err(BackendError::Load(_))));
}

/// What the check keeps for the estimate is bounded whatever the model repeats: more
/// tensor-making nodes than [`MAKER_NODES_MAX`], or operands holding more than
/// `KEPT_BYTES_MAX` of constants, are refused (measured in a release build: a 30 MB model of
/// the second kind costs the check under 100 MB).
#[test]
fn what_the_estimate_keeps_is_bounded() {
    let mut g = W::default().msg(GRAPH_INITIALIZER, int64("s", &[1, 1], false));
    for i in 0..=MAKER_NODES_MAX {
        g = g.msg(GRAPH_NODE, node("Reshape", &["x", "s"], &format!("{i:x}")));
    }
    let e = check_model(&small_graph(|x| W([x.0, g.0].concat()))).unwrap_err();
    assert!(
        matches!(&e, BackendError::Load(m) if m.contains("tensor-making nodes")),
        "{e:?}"
    );
    // Each node its own 64-value shape: 64 MiB of kept values is reached before 2^17 nodes.
    let mut g = W::default();
    for i in 0..(1 << 17) {
        let s = format!("s{i:x}");
        g = g.msg(GRAPH_INITIALIZER, int64(&s, &[1; 64], false)).msg(
            GRAPH_NODE,
            node("ConstantOfShape", &[&s], &format!("{i:x}")),
        );
    }
    let e = check_model(&small_graph(|x| W([x.0, g.0].concat()))).unwrap_err();
    assert!(
        matches!(&e, BackendError::Load(m) if m.contains("64.0 MiB of constants")),
        "{e:?}"
    );
}
