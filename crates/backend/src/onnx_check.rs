//! The safety check every model passes before a backend sees it.
//!
//! [`check_model`] walks the ONNX protobuf (`ModelProto`) with a small, dependency-free wire
//! reader, so it runs the same whichever backend features are compiled in. It refuses:
//!
//! - tensors stored outside the model (`data_location = EXTERNAL` or a non-empty
//!   `external_data`, such as a `location` of `../../etc/passwd`) → [`BackendError::ExternalData`].
//!   This covers initializers, sparse initializers, `Constant` and other tensor attributes,
//!   subgraphs (`If`, `Loop`, `Scan` bodies), model-local functions and training graphs;
//! - declared shapes (of tensors, graph inputs, outputs and `value_info`) of more than
//!   [`ELEMENTS_MAX`] elements, negative tensor dimensions, and anything beyond the other limits
//!   below → [`BackendError::Load`];
//! - a constant shape of more than [`ELEMENTS_MAX`] elements fed to a node that makes a tensor
//!   of that shape (`ConstantOfShape`, `Expand`, `Tile` repeats, `Resize` sizes), as an `INT64`
//!   initializer or a `Constant` node's value: no shape in the model is declared big, but
//!   a backend evaluating the node would allocate it (tract does so at load)
//!   → [`BackendError::Load`]. Shapes *computed* from other values are not followed (a
//!   backend's allocation then fails with a typed error, or the host's memory is the limit);
//! - bytes that are not a well-formed `ModelProto` with exactly one graph, graph inputs or outputs
//!   of types the wire [`Tensor`](crat_core::tensor::Tensor) cannot carry (strings, bfloat16,
//!   sequences, …) → [`BackendError::Load`].
//!
//! It also reads what the graph declares — its inputs (initializers excluded) and outputs, with
//! names, dtypes and shapes — so both backends describe a model the same way
//! ([`ModelSummary::info`]).
//!
//! # Security
//! The walker reads only the fields it needs and skips the rest by their wire length; every
//! length is checked against the bytes left, nesting is bounded by [`NESTING_DEPTH_MAX`], the
//! number of nodes by [`GRAPH_NODES_MAX`] and the model by [`MODEL_BYTES_MAX`]. It allocates in
//! proportion to what it reports (names and shapes, and the names of suspect shape constants
//! and shape operands), never to a size written in the model.

use std::collections::HashSet;

use crat_core::tensor::DType;

use crate::{BackendError, Dim, ModelInfo, TensorSpec};

/// Largest model accepted, in bytes: 2 GiB, protobuf's own limit for one message. Models
/// larger than that need external data, which is refused anyway.
pub const MODEL_BYTES_MAX: usize = (1 << 31) - 1;

/// Most nodes in a model, counting every subgraph and function body.
pub const GRAPH_NODES_MAX: usize = 1 << 20;

/// Most elements a declared shape may describe, and a constant shape fed to a node that
/// makes a tensor of it: 2²⁸, a 1 GiB tensor of `f32`, what a node's model memory can really
/// hold (a `ConstantOfShape` of 2³² elements made tract allocate 16 GiB at load).
pub const ELEMENTS_MAX: u64 = 1 << 28;

/// Deepest nesting of messages followed (subgraphs inside attributes, nested types).
pub const NESTING_DEPTH_MAX: usize = 32;

/// Most graph inputs or outputs a model may declare.
pub const GRAPH_IO_MAX: usize = 4096;

/// What [`check_model`] learned about a model that passed it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ModelSummary {
    /// `ModelProto.ir_version`.
    pub ir_version: i64,
    /// Version of the default (`ai.onnx`) operator set, 0 when not declared.
    pub opset: i64,
    /// Nodes in the model, subgraphs and functions included.
    pub node_count: usize,
    /// The declared inputs and outputs. Outputs whose shape the model does not declare are
    /// listed in [`ModelSummary::undeclared_output_shapes`] with an empty shape here, for the
    /// backend to fill in.
    pub info: ModelInfo,
    /// Indices into `info.outputs` of outputs declared without a shape.
    pub undeclared_output_shapes: Vec<usize>,
    /// Random operators ([`RANDOM_OPS`]) used without a `seed` attribute, each named once, in
    /// the order first met: their outputs differ from run to run and from node to node, so
    /// two honest replicas disagree and the model's answers cannot be validated. (A seeded
    /// one repeats only within one session of one runtime: it is not flagged here, but it is
    /// not deterministic across nodes either.)
    pub unseeded_random_ops: Vec<&'static str>,
    /// Random operators ([`RANDOM_OPS`]) used with a `seed` attribute, each named once, in
    /// the order first met. A seed makes one session of one runtime repeat its stream, not
    /// two runtimes (tract and ONNX Runtime draw differently) nor two sessions that have
    /// served different numbers of tasks: honest replicas still disagree.
    pub seeded_random_ops: Vec<&'static str>,
}

impl ModelSummary {
    /// Whether the model uses any random operator, seeded or not: its answers cannot be
    /// checked by recomputing them on another node.
    pub fn uses_random_ops(&self) -> bool {
        !self.unseeded_random_ops.is_empty() || !self.seeded_random_ops.is_empty()
    }
}

/// The ONNX operators that draw random numbers (each takes an optional `seed` attribute).
pub const RANDOM_OPS: [&str; 6] = [
    "RandomUniform",
    "RandomNormal",
    "RandomUniformLike",
    "RandomNormalLike",
    "Multinomial",
    "Bernoulli",
];

/// Checks that `model` is a self-contained ONNX model within limits and reads its declared
/// inputs and outputs. See the [module docs](self).
pub fn check_model(model: &[u8]) -> Result<ModelSummary, BackendError> {
    if model.len() > MODEL_BYTES_MAX {
        return Err(BackendError::Load(format!(
            "model is {} bytes, above the limit of {MODEL_BYTES_MAX}",
            model.len()
        )));
    }
    if model.is_empty() {
        return Err(BackendError::Load("model is empty".into()));
    }
    conforms(crate::onnx_schema::MODEL_PROTO, model, 0)?;
    let mut walker = Walker::default();
    walker.model(model)?;
    if let Some((op, name)) = walker
        .shape_operands
        .iter()
        .find(|(_, operand)| walker.huge_shapes.contains(operand))
    {
        return Err(BackendError::Load(format!(
            "{op} would make a tensor of more than {ELEMENTS_MAX} elements from the constant \
             shape '{}'",
            truncate(name)
        )));
    }
    let graph = walker
        .main_graph
        .take()
        .ok_or_else(|| BackendError::Load("not an ONNX model: no graph".into()))?;
    let initializers: HashSet<&str> = graph.initializers.iter().map(String::as_str).collect();
    let mut inputs = Vec::new();
    for io in &graph.inputs {
        if initializers.contains(io.name.as_str()) {
            continue;
        }
        let spec = io.to_spec("input")?;
        let shape = spec
            .1
            .ok_or_else(|| BackendError::Load(format!("input '{}' declares no shape", io.name)))?;
        inputs.push(TensorSpec {
            name: spec.0,
            dtype: io_dtype(io, "input")?,
            shape,
        });
    }
    if inputs.is_empty() {
        return Err(BackendError::Load("model has no inputs".into()));
    }
    let mut outputs = Vec::new();
    let mut undeclared = Vec::new();
    for io in &graph.outputs {
        let (name, shape) = io.to_spec("output")?;
        if shape.is_none() {
            undeclared.push(outputs.len());
        }
        outputs.push(TensorSpec {
            name,
            dtype: io_dtype(io, "output")?,
            shape: shape.unwrap_or_default(),
        });
    }
    if outputs.is_empty() {
        return Err(BackendError::Load("model has no outputs".into()));
    }
    Ok(ModelSummary {
        ir_version: walker.ir_version,
        opset: walker.opset,
        node_count: walker.nodes,
        info: ModelInfo { inputs, outputs },
        undeclared_output_shapes: undeclared,
        unseeded_random_ops: walker.unseeded_random,
        seeded_random_ops: walker.seeded_random,
    })
}

/// The crate dtype for an ONNX `TensorProto.DataType` code, `None` for types the wire format
/// does not carry.
pub fn dtype_from_onnx(code: i64) -> Option<DType> {
    Some(match code {
        1 => DType::F32,
        2 => DType::U8,
        3 => DType::I8,
        6 => DType::I32,
        7 => DType::I64,
        9 => DType::Bool,
        10 => DType::F16,
        11 => DType::F64,
        _ => return None,
    })
}

fn io_dtype(io: &ValueInfo, what: &str) -> Result<DType, BackendError> {
    match io.elem_type {
        Some(code) => dtype_from_onnx(code).ok_or_else(|| {
            BackendError::Load(format!(
                "{what} '{}' has ONNX element type {code}, which nodes do not serve",
                io.name
            ))
        }),
        None => Err(BackendError::Load(format!(
            "{what} '{}' is not a tensor (or declares no element type)",
            io.name
        ))),
    }
}

/// A graph input or output as declared.
#[derive(Default)]
struct ValueInfo {
    name: String,
    /// Set only for tensor types.
    elem_type: Option<i64>,
    /// `None`: no shape declared.
    shape: Option<Vec<Dim>>,
}

impl ValueInfo {
    fn to_spec(&self, what: &str) -> Result<(String, Option<Vec<Dim>>), BackendError> {
        if self.name.is_empty() {
            return Err(BackendError::Load(format!("an {what} has no name")));
        }
        Ok((self.name.clone(), self.shape.clone()))
    }
}

#[derive(Default)]
struct GraphIo {
    inputs: Vec<ValueInfo>,
    outputs: Vec<ValueInfo>,
    initializers: Vec<String>,
}

#[derive(Default)]
struct Walker {
    ir_version: i64,
    opset: i64,
    nodes: usize,
    graphs: usize,
    main_graph: Option<GraphIo>,
    /// Names of small `INT64` constants (initializers, `Constant` outputs) whose values
    /// multiply to more than [`ELEMENTS_MAX`]: as a shape, a tensor too big to make.
    huge_shapes: HashSet<String>,
    /// The shape operand of every tensor-making node: (operator, operand name).
    shape_operands: Vec<(&'static str, String)>,
    /// Random operators met without a `seed` attribute, each once (at most [`RANDOM_OPS`]).
    unseeded_random: Vec<&'static str>,
    /// Random operators met with a `seed` attribute, each once (at most [`RANDOM_OPS`]).
    seeded_random: Vec<&'static str>,
}

/// Most values a constant may hold to be looked at as a shape (shapes have few dimensions).
const SHAPE_VALUES_MAX: u64 = 64;

/// Operators that make a tensor whose size their operand `.1` sets, and that operand.
const SHAPE_MAKERS: [(&str, usize); 4] = [
    ("ConstantOfShape", 0),
    ("Expand", 1),
    ("Tile", 1),
    ("Resize", 3),
];

/// Elements of a tensor of these dimensions (negative ones count as 0), saturating.
fn shape_elements(dims: &[i64]) -> u64 {
    dims.iter().fold(1u64, |n, &d| {
        n.saturating_mul(u64::try_from(d).unwrap_or(0))
    })
}

// ModelProto / GraphProto / … field numbers, from onnx.proto3.
const MODEL_IR_VERSION: u32 = 1;
const MODEL_GRAPH: u32 = 7;
const MODEL_OPSET_IMPORT: u32 = 8;
const MODEL_TRAINING_INFO: u32 = 20;
const MODEL_FUNCTIONS: u32 = 25;
const OPSET_DOMAIN: u32 = 1;
const OPSET_VERSION: u32 = 2;
const TRAINING_INITIALIZATION: u32 = 1;
const TRAINING_ALGORITHM: u32 = 2;
const FUNCTION_NODE: u32 = 7;
const FUNCTION_ATTRIBUTE_PROTO: u32 = 11;
const GRAPH_NODE: u32 = 1;
const GRAPH_INITIALIZER: u32 = 5;
const GRAPH_INPUT: u32 = 11;
const GRAPH_OUTPUT: u32 = 12;
const GRAPH_VALUE_INFO: u32 = 13;
const GRAPH_SPARSE_INITIALIZER: u32 = 15;
const NODE_INPUT: u32 = 1;
const NODE_OUTPUT: u32 = 2;
const NODE_OP_TYPE: u32 = 4;
const NODE_ATTRIBUTE: u32 = 5;
const ATTR_NAME: u32 = 1;
const ATTR_INTS: u32 = 8;
const ATTR_T: u32 = 5;
const ATTR_G: u32 = 6;
const ATTR_TENSORS: u32 = 10;
const ATTR_GRAPHS: u32 = 11;
const ATTR_SPARSE_TENSOR: u32 = 22;
const ATTR_SPARSE_TENSORS: u32 = 23;
const TENSOR_DIMS: u32 = 1;
const TENSOR_DATA_TYPE: u32 = 2;
const TENSOR_INT64_DATA: u32 = 7;
const TENSOR_NAME: u32 = 8;
const TENSOR_RAW_DATA: u32 = 9;
const ONNX_INT64: u64 = 7;
const TENSOR_EXTERNAL_DATA: u32 = 13;
const TENSOR_DATA_LOCATION: u32 = 14;
const TENSOR_LOCATION_EXTERNAL: u64 = 1;
const ENTRY_KEY: u32 = 1;
const ENTRY_VALUE: u32 = 2;
const SPARSE_VALUES: u32 = 1;
const SPARSE_INDICES: u32 = 2;
const SPARSE_DIMS: u32 = 3;
const VALUE_INFO_NAME: u32 = 1;
const VALUE_INFO_TYPE: u32 = 2;
const TYPE_TENSOR: u32 = 1;
const TYPE_SEQUENCE: u32 = 4;
const TYPE_MAP: u32 = 5;
const TYPE_SPARSE_TENSOR: u32 = 8;
const TYPE_OPTIONAL: u32 = 9;
const TYPE_TENSOR_ELEM_TYPE: u32 = 1;
const TYPE_TENSOR_SHAPE: u32 = 2;
const TYPE_SEQUENCE_ELEM: u32 = 1;
const TYPE_MAP_VALUE: u32 = 2;
const SHAPE_DIM: u32 = 1;
const DIM_VALUE: u32 = 1;
const DIM_PARAM: u32 = 2;

fn malformed(what: &str) -> BackendError {
    BackendError::Load(format!("not a valid ONNX model: {what}"))
}

impl Walker {
    fn model(&mut self, buf: &[u8]) -> Result<(), BackendError> {
        let mut r = Reader::new(buf);
        while let Some((field, value)) = r.next()? {
            match (field, value) {
                (MODEL_IR_VERSION, Value::Varint(v)) => self.ir_version = v as i64,
                (MODEL_OPSET_IMPORT, Value::Bytes(b)) => {
                    let (mut domain, mut version) = (String::new(), 0i64);
                    let mut r = Reader::new(b);
                    while let Some((f, v)) = r.next()? {
                        match (f, v) {
                            (OPSET_DOMAIN, Value::Bytes(s)) => domain = utf8(s, "opset domain")?,
                            (OPSET_VERSION, Value::Varint(v)) => version = v as i64,
                            _ => {}
                        }
                    }
                    if domain.is_empty() || domain == "ai.onnx" {
                        self.opset = version;
                    }
                }
                (MODEL_GRAPH, Value::Bytes(b)) => {
                    if self.main_graph.is_some() {
                        return Err(malformed("more than one graph"));
                    }
                    let mut io = GraphIo::default();
                    self.graph(b, 1, Some(&mut io))?;
                    self.main_graph = Some(io);
                }
                (MODEL_TRAINING_INFO, Value::Bytes(b)) => {
                    let mut r = Reader::new(b);
                    while let Some((f, v)) = r.next()? {
                        if let (TRAINING_INITIALIZATION | TRAINING_ALGORITHM, Value::Bytes(g)) =
                            (f, v)
                        {
                            self.graph(g, 2, None)?;
                        }
                    }
                }
                (MODEL_FUNCTIONS, Value::Bytes(b)) => {
                    let mut r = Reader::new(b);
                    while let Some((f, v)) = r.next()? {
                        match (f, v) {
                            (FUNCTION_NODE, Value::Bytes(n)) => self.node(n, 2)?,
                            (FUNCTION_ATTRIBUTE_PROTO, Value::Bytes(a)) => {
                                self.attribute(a, 2)?;
                            }
                            _ => {}
                        }
                    }
                }
                (MODEL_GRAPH | MODEL_OPSET_IMPORT | MODEL_TRAINING_INFO | MODEL_FUNCTIONS, _)
                | (MODEL_IR_VERSION, _) => return Err(malformed("unexpected wire type")),
                _ => {}
            }
        }
        Ok(())
    }

    fn graph(
        &mut self,
        buf: &[u8],
        depth: usize,
        mut io: Option<&mut GraphIo>,
    ) -> Result<(), BackendError> {
        depth_check(depth)?;
        self.graphs += 1;
        if self.graphs > GRAPH_NODES_MAX {
            return Err(BackendError::Load(format!(
                "more than {GRAPH_NODES_MAX} graphs"
            )));
        }
        let mut r = Reader::new(buf);
        while let Some((field, value)) = r.next()? {
            let Value::Bytes(b) = value else {
                if matches!(
                    field,
                    GRAPH_NODE
                        | GRAPH_INITIALIZER
                        | GRAPH_INPUT
                        | GRAPH_OUTPUT
                        | GRAPH_VALUE_INFO
                        | GRAPH_SPARSE_INITIALIZER
                ) {
                    return Err(malformed("graph field with the wrong wire type"));
                }
                continue;
            };
            match field {
                GRAPH_NODE => self.node(b, depth + 1)?,
                GRAPH_INITIALIZER => {
                    let (name, huge_shape) = self.tensor(b)?;
                    if huge_shape {
                        self.huge_shapes.insert(name.clone());
                    }
                    if let Some(io) = io.as_deref_mut() {
                        io.initializers.push(name);
                    }
                }
                GRAPH_SPARSE_INITIALIZER => {
                    let name = self.sparse_tensor(b)?;
                    if let Some(io) = io.as_deref_mut() {
                        io.initializers.push(name);
                    }
                }
                GRAPH_INPUT | GRAPH_OUTPUT | GRAPH_VALUE_INFO => {
                    let info = value_info(b, depth + 1)?;
                    if let Some(io) = io.as_deref_mut() {
                        let list = match field {
                            GRAPH_INPUT => &mut io.inputs,
                            GRAPH_OUTPUT => &mut io.outputs,
                            _ => continue,
                        };
                        if list.len() >= GRAPH_IO_MAX {
                            return Err(BackendError::Load(format!(
                                "more than {GRAPH_IO_MAX} graph inputs or outputs"
                            )));
                        }
                        list.push(info);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn node(&mut self, buf: &[u8], depth: usize) -> Result<(), BackendError> {
        depth_check(depth)?;
        self.nodes += 1;
        if self.nodes > GRAPH_NODES_MAX {
            return Err(BackendError::Load(format!(
                "more than {GRAPH_NODES_MAX} nodes"
            )));
        }
        let mut op: &[u8] = b"";
        let (mut inputs, mut outputs) = (Vec::new(), Vec::new());
        let (mut huge_attribute, mut seeded) = (false, false);
        let mut r = Reader::new(buf);
        while let Some((field, value)) = r.next()? {
            match (field, value) {
                (NODE_ATTRIBUTE, Value::Bytes(b)) => {
                    let (huge, seed) = self.attribute(b, depth + 1)?;
                    huge_attribute |= huge;
                    seeded |= seed;
                }
                (NODE_ATTRIBUTE, _) => return Err(malformed("node attribute wire type")),
                (NODE_INPUT, Value::Bytes(s)) => inputs.push(s),
                (NODE_OUTPUT, Value::Bytes(s)) => outputs.push(s),
                (NODE_OP_TYPE, Value::Bytes(s)) => op = s,
                _ => {}
            }
        }
        if let Some(random) = RANDOM_OPS.iter().find(|r| r.as_bytes() == op) {
            let met = if seeded {
                &mut self.seeded_random
            } else {
                &mut self.unseeded_random
            };
            if !met.contains(random) {
                met.push(random);
            }
        }
        if op == b"Constant" && huge_attribute {
            self.huge_shapes.extend(outputs.iter().map(|o| lossy(o)));
        }
        if let Some((name, i)) = SHAPE_MAKERS.iter().find(|(name, _)| name.as_bytes() == op)
            && let Some(operand) = inputs.get(*i)
        {
            self.shape_operands.push((name, lossy(operand)));
        }
        Ok(())
    }

    /// Checks one `AttributeProto`; returns whether it holds an `INT64` tensor or an integer
    /// list that, as a shape, has more than [`ELEMENTS_MAX`] elements (what matters for
    /// `Constant`), and whether it is named `seed`.
    fn attribute(&mut self, buf: &[u8], depth: usize) -> Result<(bool, bool), BackendError> {
        depth_check(depth)?;
        let mut huge_shape = false;
        let mut seed = false;
        let mut ints = Vec::new();
        let mut r = Reader::new(buf);
        while let Some((field, value)) = r.next()? {
            match (field, &value) {
                (ATTR_NAME, Value::Bytes(name)) => seed = *name == b"seed",
                (ATTR_INTS, Value::Varint(v)) if ints.len() as u64 <= SHAPE_VALUES_MAX => {
                    ints.push(*v as i64);
                }
                (ATTR_INTS, Value::Bytes(packed)) => {
                    let mut p = Reader::new(packed);
                    while !p.is_empty() && ints.len() as u64 <= SHAPE_VALUES_MAX {
                        ints.push(p.varint()? as i64);
                    }
                }
                _ => {}
            }
            let b = match value {
                Value::Bytes(b) => b,
                _ if matches!(
                    field,
                    ATTR_T
                        | ATTR_G
                        | ATTR_TENSORS
                        | ATTR_GRAPHS
                        | ATTR_SPARSE_TENSOR
                        | ATTR_SPARSE_TENSORS
                ) =>
                {
                    return Err(malformed("attribute field with the wrong wire type"));
                }
                _ => continue,
            };
            match field {
                ATTR_T | ATTR_TENSORS => huge_shape |= self.tensor(b)?.1,
                ATTR_SPARSE_TENSOR | ATTR_SPARSE_TENSORS => {
                    self.sparse_tensor(b)?;
                }
                ATTR_G | ATTR_GRAPHS => self.graph(b, depth + 1, None)?,
                _ => {}
            }
        }
        let ints_huge =
            ints.len() as u64 <= SHAPE_VALUES_MAX && shape_elements(&ints) > ELEMENTS_MAX;
        Ok((huge_shape || ints_huge, seed))
    }

    /// Checks one `TensorProto` and returns its name, and whether it is a small `INT64`
    /// tensor whose values, as a shape, have more than [`ELEMENTS_MAX`] elements.
    fn tensor(&mut self, buf: &[u8]) -> Result<(String, bool), BackendError> {
        let mut name = String::new();
        let mut external: Option<String> = None;
        let mut location_external = false;
        let mut elements: u64 = 1;
        let mut data_type = 0;
        let mut raw: Option<&[u8]> = None;
        let mut ints = Vec::new();
        let mut r = Reader::new(buf);
        while let Some((field, value)) = r.next()? {
            match (field, value) {
                (TENSOR_DATA_TYPE, Value::Varint(v)) => data_type = v,
                (TENSOR_RAW_DATA, Value::Bytes(b)) => raw = Some(b),
                (TENSOR_INT64_DATA, Value::Varint(v)) if ints.len() as u64 <= SHAPE_VALUES_MAX => {
                    ints.push(v as i64);
                }
                (TENSOR_INT64_DATA, Value::Varint(_)) => {}
                (TENSOR_INT64_DATA, Value::Bytes(packed)) => {
                    let mut p = Reader::new(packed);
                    while !p.is_empty() && ints.len() as u64 <= SHAPE_VALUES_MAX {
                        ints.push(p.varint()? as i64);
                    }
                }
                (TENSOR_NAME, Value::Bytes(s)) => name = utf8(s, "tensor name")?,
                (TENSOR_DIMS, Value::Varint(d)) => elements = tensor_dim(elements, d, &name)?,
                (TENSOR_DIMS, Value::Bytes(packed)) => {
                    let mut p = Reader::new(packed);
                    while !p.is_empty() {
                        elements = tensor_dim(elements, p.varint()?, &name)?;
                    }
                }
                (TENSOR_DATA_LOCATION, Value::Varint(v)) => {
                    location_external = v == TENSOR_LOCATION_EXTERNAL;
                }
                (TENSOR_EXTERNAL_DATA, Value::Bytes(entry)) => {
                    let (mut key, mut val) = (String::new(), String::new());
                    let mut e = Reader::new(entry);
                    while let Some((f, v)) = e.next()? {
                        match (f, v) {
                            (ENTRY_KEY, Value::Bytes(s)) => key = lossy(s),
                            (ENTRY_VALUE, Value::Bytes(s)) => val = lossy(s),
                            _ => {}
                        }
                    }
                    if external.is_none() || key == "location" {
                        external = Some(format!("{key}={val}"));
                    }
                }
                (TENSOR_DIMS | TENSOR_NAME | TENSOR_EXTERNAL_DATA | TENSOR_DATA_LOCATION, _) => {
                    return Err(malformed("tensor field with the wrong wire type"));
                }
                _ => {}
            }
        }
        if location_external || external.is_some() {
            let detail = external.unwrap_or_else(|| "data_location = EXTERNAL".into());
            return Err(BackendError::ExternalData(format!(
                "tensor '{}' → {detail}",
                truncate(&name)
            )));
        }
        let huge_shape = data_type == ONNX_INT64 && elements <= SHAPE_VALUES_MAX && {
            let values: Vec<i64> = match raw {
                Some(raw) => raw
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect(),
                None => ints,
            };
            shape_elements(&values) > ELEMENTS_MAX
        };
        Ok((name, huge_shape))
    }

    fn sparse_tensor(&mut self, buf: &[u8]) -> Result<String, BackendError> {
        let mut name = String::new();
        let mut elements: u64 = 1;
        let mut r = Reader::new(buf);
        while let Some((field, value)) = r.next()? {
            match (field, value) {
                (SPARSE_VALUES, Value::Bytes(b)) => name = self.tensor(b)?.0,
                (SPARSE_INDICES, Value::Bytes(b)) => {
                    self.tensor(b)?;
                }
                (SPARSE_DIMS, Value::Varint(d)) => elements = tensor_dim(elements, d, &name)?,
                (SPARSE_DIMS, Value::Bytes(packed)) => {
                    let mut p = Reader::new(packed);
                    while !p.is_empty() {
                        elements = tensor_dim(elements, p.varint()?, &name)?;
                    }
                }
                (SPARSE_VALUES | SPARSE_INDICES | SPARSE_DIMS, _) => {
                    return Err(malformed("sparse tensor field with the wrong wire type"));
                }
                _ => {}
            }
        }
        Ok(name)
    }
}

fn depth_check(depth: usize) -> Result<(), BackendError> {
    if depth > NESTING_DEPTH_MAX {
        return Err(BackendError::Load(format!(
            "messages nested deeper than {NESTING_DEPTH_MAX}"
        )));
    }
    Ok(())
}

/// Multiplies a tensor's element count by one more dimension, within limits.
fn tensor_dim(elements: u64, dim: u64, name: &str) -> Result<u64, BackendError> {
    let dim = dim as i64;
    if dim < 0 {
        return Err(BackendError::Load(format!(
            "tensor '{}' has negative dimension {dim}",
            truncate(name)
        )));
    }
    declared_elements(elements, dim as u64, name)
}

fn declared_elements(elements: u64, dim: u64, name: &str) -> Result<u64, BackendError> {
    match elements.checked_mul(dim) {
        Some(n) if n <= ELEMENTS_MAX => Ok(n),
        _ => Err(BackendError::Load(format!(
            "'{}' declares a shape of more than {ELEMENTS_MAX} elements",
            truncate(name)
        ))),
    }
}

fn value_info(buf: &[u8], depth: usize) -> Result<ValueInfo, BackendError> {
    let mut info = ValueInfo::default();
    let mut r = Reader::new(buf);
    let mut ty = None;
    while let Some((field, value)) = r.next()? {
        match (field, value) {
            (VALUE_INFO_NAME, Value::Bytes(s)) => info.name = utf8(s, "value name")?,
            (VALUE_INFO_TYPE, Value::Bytes(b)) => ty = Some(b),
            (VALUE_INFO_NAME | VALUE_INFO_TYPE, _) => {
                return Err(malformed("value info field with the wrong wire type"));
            }
            _ => {}
        }
    }
    if let Some(ty) = ty {
        type_proto(ty, depth + 1, &mut info, true)?;
    }
    Ok(info)
}

/// Reads a `TypeProto`. `top`: whether this is the value's own type (recorded in `info`) or a
/// nested element type (only checked).
fn type_proto(
    buf: &[u8],
    depth: usize,
    info: &mut ValueInfo,
    top: bool,
) -> Result<(), BackendError> {
    depth_check(depth)?;
    let mut r = Reader::new(buf);
    while let Some((field, value)) = r.next()? {
        let Value::Bytes(b) = value else { continue };
        match field {
            TYPE_TENSOR | TYPE_SPARSE_TENSOR => {
                let (elem, shape) = tensor_type(b, &info.name)?;
                if top && field == TYPE_TENSOR {
                    info.elem_type = elem;
                    info.shape = shape;
                }
            }
            TYPE_SEQUENCE | TYPE_OPTIONAL | TYPE_MAP => {
                let inner_field = if field == TYPE_MAP {
                    TYPE_MAP_VALUE
                } else {
                    TYPE_SEQUENCE_ELEM
                };
                let mut inner = Reader::new(b);
                while let Some((f, v)) = inner.next()? {
                    if let (true, Value::Bytes(t)) = (f == inner_field, v) {
                        type_proto(t, depth + 1, info, false)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn tensor_type(buf: &[u8], name: &str) -> Result<(Option<i64>, Option<Vec<Dim>>), BackendError> {
    let mut elem = None;
    let mut shape = None;
    let mut r = Reader::new(buf);
    while let Some((field, value)) = r.next()? {
        match (field, value) {
            (TYPE_TENSOR_ELEM_TYPE, Value::Varint(v)) => elem = Some(v as i64),
            (TYPE_TENSOR_SHAPE, Value::Bytes(b)) => {
                let mut dims = Vec::new();
                let mut elements: u64 = 1;
                let mut s = Reader::new(b);
                while let Some((f, v)) = s.next()? {
                    let (SHAPE_DIM, Value::Bytes(d)) = (f, v) else {
                        continue;
                    };
                    if dims.len() >= crat_core::tensor::RANK_MAX * 8 {
                        return Err(BackendError::Load(format!(
                            "'{}' declares too many dimensions",
                            truncate(name)
                        )));
                    }
                    let dim = dimension(d)?;
                    if let Dim::Fixed(n) = dim {
                        elements = declared_elements(elements, n, name)?;
                    }
                    dims.push(dim);
                }
                shape = Some(dims);
            }
            (TYPE_TENSOR_ELEM_TYPE | TYPE_TENSOR_SHAPE, _) => {
                return Err(malformed("tensor type field with the wrong wire type"));
            }
            _ => {}
        }
    }
    Ok((elem, shape))
}

fn dimension(buf: &[u8]) -> Result<Dim, BackendError> {
    let mut dim = Dim::Symbolic(String::new());
    let mut r = Reader::new(buf);
    while let Some((field, value)) = r.next()? {
        match (field, value) {
            // Negative values (PaddlePaddle writes -1) mean "unknown", like an unset dimension.
            (DIM_VALUE, Value::Varint(v)) if (v as i64) >= 0 => dim = Dim::Fixed(v),
            (DIM_VALUE, Value::Varint(_)) => dim = Dim::Symbolic(String::new()),
            (DIM_PARAM, Value::Bytes(s)) => dim = Dim::Symbolic(truncate(&lossy(s))),
            _ => {}
        }
    }
    Ok(dim)
}

/// Longest name kept in error messages and symbolic dimensions.
const NAME_CHARS_MAX: usize = 256;

fn truncate(s: &str) -> String {
    if s.chars().count() <= NAME_CHARS_MAX {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(NAME_CHARS_MAX).collect();
        t.push('…');
        t
    }
}

fn utf8(bytes: &[u8], what: &str) -> Result<String, BackendError> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| malformed(&format!("{what} is not UTF-8")))
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Checks `buf` against message `msg` of the ONNX schema as a protobuf decoder would
/// (prost, which tract uses): every known field has its wire type (a repeated scalar may be
/// packed), strings are UTF-8, nested messages conform. Unknown fields are skipped.
fn conforms(msg: usize, buf: &[u8], depth: usize) -> Result<(), BackendError> {
    use crate::onnx_schema::{Kind, MESSAGES};
    depth_check(depth)?;
    let (name, fields) = MESSAGES
        .get(msg)
        .ok_or_else(|| malformed("unknown schema message"))?;
    let mut reader = Reader::new(buf);
    while let Some((tag, value)) = reader.next()? {
        let Some(field) = fields.iter().find(|f| f.tag == tag) else {
            continue;
        };
        let ok = match (field.kind, value) {
            (Kind::Varint, Value::Varint(_))
            | (Kind::Fixed32, Value::Fixed32)
            | (Kind::Fixed64, Value::Fixed64)
            | (Kind::Bytes, Value::Bytes(_)) => true,
            (Kind::Str, Value::Bytes(b)) => std::str::from_utf8(b).is_ok(),
            (Kind::Msg(inner), Value::Bytes(b)) => {
                conforms(inner, b, depth + 1)?;
                true
            }
            // Packed repeated scalars.
            (Kind::Varint, Value::Bytes(b)) if field.repeated => {
                let mut packed = Reader::new(b);
                while !packed.is_empty() {
                    packed.varint()?;
                }
                true
            }
            (Kind::Fixed32, Value::Bytes(b)) if field.repeated => b.len() % 4 == 0,
            (Kind::Fixed64, Value::Bytes(b)) if field.repeated => b.len() % 8 == 0,
            _ => false,
        };
        if !ok {
            return Err(malformed(&format!(
                "field {tag} of {name} has the wrong wire type or is not UTF-8"
            )));
        }
    }
    Ok(())
}

/// One protobuf field value.
enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32,
}

/// A protobuf wire-format reader over a byte slice; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
}

/// Longest varint: 10 bytes carry 64 bits.
const VARINT_BYTES_MAX: usize = 10;

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn varint(&mut self) -> Result<u64, BackendError> {
        let mut value: u64 = 0;
        for (i, &byte) in self.buf.iter().enumerate().take(VARINT_BYTES_MAX) {
            // The tenth byte carries bit 63 only: anything more does not fit 64 bits (prost
            // refuses it as well; found by the onnx_check fuzz target's differential).
            if i == VARINT_BYTES_MAX - 1 && byte > 1 {
                return Err(malformed("varint beyond 64 bits"));
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.buf = &self.buf[i + 1..];
                return Ok(value);
            }
        }
        Err(malformed("truncated or overlong varint"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], BackendError> {
        if n > self.buf.len() {
            return Err(malformed("field longer than the bytes left (truncated?)"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// The next field, or `None` at the end of the message.
    fn next(&mut self) -> Result<Option<(u32, Value<'a>)>, BackendError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(malformed("invalid field number"));
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let len = self.varint()?;
                let len = usize::try_from(len).map_err(|_| malformed("length overflows"))?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Fixed32
            }
            _ => {
                return Err(malformed(
                    "unsupported wire type (groups are not used by ONNX)",
                ));
            }
        };
        Ok(Some((field as u32, value)))
    }
}

#[cfg(test)]
mod tests {
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
        let seeded =
            check_model(&model(graph(vec![random("RandomUniformLike", "y", true)]))).unwrap();
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

    #[test]
    fn refuses_constant_shapes_that_make_huge_tensors() {
        let int64 = |name: &str, values: &[i64], raw: bool| {
            let t = W::default()
                .int(TENSOR_DIMS, values.len() as i64)
                .int(TENSOR_DATA_TYPE, ONNX_INT64 as i64)
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
        };
        let maker = |op: &str, inputs: &[&str]| {
            let mut n = W::default();
            for i in inputs {
                n = n.bytes(NODE_INPUT, i.as_bytes());
            }
            n.bytes(NODE_OUTPUT, b"z")
                .bytes(NODE_OP_TYPE, op.as_bytes())
        };
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
}
