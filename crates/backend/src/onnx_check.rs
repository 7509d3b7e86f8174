//! The safety check every model passes before a backend sees it.
//!
//! [`check_model`] walks the ONNX protobuf (`ModelProto`) with a small, dependency-free wire
//! reader, so it runs the same whichever backend features are compiled in. It refuses:
//!
//! - tensors stored outside the model (`data_location = EXTERNAL` or a non-empty
//!   `external_data`, such as a `location` of `../../etc/passwd`) → [`BackendError::ExternalData`].
//!   This covers initializers, sparse initializers, `Constant` and other tensor attributes,
//!   subgraphs (`If`, `Loop`, `Scan` bodies), model-local functions and training graphs;
//! - any one tensor bigger than a node can hold: declared shapes (of tensors, graph inputs,
//!   outputs and `value_info`; symbolic dimensions counted as 1) of more than [`ELEMENTS_MAX`]
//!   elements or more than [`TENSOR_BYTES_MAX`] bytes (elements × the element type's size, so
//!   2²⁸ `f32` pass and 2²⁸ `f64` do not), negative tensor dimensions, and anything beyond the
//!   other limits below → [`BackendError::Load`];
//! - a tensor over the same limits that a node would *make* from constants (`ConstantOfShape`,
//!   `Expand`, `Tile`, `Resize`, `Upsample`, `Range`, `Pad` whose size operands are
//!   initializers or `Constant` values; see [`memory`]): no shape in the model is declared
//!   big, but a backend evaluating the node would allocate it (tract does so at load:
//!   `ConstantOfShape([65536, 65536])` made it allocate 16 GiB) → [`BackendError::Load`].
//!   Sizes *computed* from other values are not followed (a backend's allocation then fails
//!   with a typed error, or the host's memory is the limit; [`MemoryEstimate::not_followed`]
//!   names those operators);
//! - bytes that are not a well-formed `ModelProto` with exactly one graph, graph inputs or outputs
//!   of types the wire [`Tensor`](crat_core::tensor::Tensor) cannot carry (strings, bfloat16,
//!   sequences, …) → [`BackendError::Load`].
//!
//! It also reads what the graph declares — its inputs (initializers excluded) and outputs, with
//! names, dtypes and shapes — so both backends describe a model the same way
//! ([`ModelSummary::info`]), and estimates the memory the model needs before anything loads
//! it ([`ModelSummary::memory`], see [`memory`]): the dispatcher refuses a model whose
//! estimate is over what a node holds and does not canary one over what its reference
//! backends may hold; a node refuses to load one over its model memory.
//!
//! # Security
//! The walker reads only the fields it needs and skips the rest by their wire length; every
//! length is checked against the bytes left, nesting is bounded by [`NESTING_DEPTH_MAX`], the
//! number of nodes by [`GRAPH_NODES_MAX`] and the model by [`MODEL_BYTES_MAX`]. It allocates in
//! proportion to what it reports (names and shapes, the tensor-making nodes and their
//! operands), never to a size written in the model. A model with tensor-making nodes is walked
//! twice: the second pass keeps the values and types of those nodes' operands only (at most
//! 64 MiB of them), so what it keeps is bounded by the number of tensor-making nodes
//! ([`MAKER_NODES_MAX`]), whatever the number of constants.

use std::collections::HashSet;

use crat_core::tensor::DType;

use crate::{BackendError, Dim, ModelInfo, TensorSpec};

pub mod memory;

pub use memory::{Bytes, MemoryEstimate, element_bytes};

/// Largest model accepted, in bytes: 2 GiB, protobuf's own limit for one message. Models
/// larger than that need external data, which is refused anyway.
pub const MODEL_BYTES_MAX: usize = (1 << 31) - 1;

/// Most nodes in a model, counting every subgraph and function body.
pub const GRAPH_NODES_MAX: usize = 1 << 20;

/// Most elements a declared shape may describe, and a tensor a node makes from constants
/// may have: 2²⁸, a 1 GiB tensor of `f32` (a `ConstantOfShape` of 2³² elements made tract
/// allocate 16 GiB at load). Tensors of wider types are held to [`TENSOR_BYTES_MAX`] too.
pub const ELEMENTS_MAX: u64 = 1 << 28;

/// Most bytes one tensor may take (elements × the size of its element type; an unknown type
/// counts [`memory::UNKNOWN_ELEMENT_BYTES`] per element): 1 GiB, what a node's model memory
/// can really hold of one tensor, whatever its type (2²⁸ `f32`, 2²⁷ `f64`).
pub const TENSOR_BYTES_MAX: u64 = 1 << 30;

/// Deepest nesting of messages followed (subgraphs inside attributes, nested types).
pub const NESTING_DEPTH_MAX: usize = 32;

/// Most graph inputs or outputs a model may declare.
pub const GRAPH_IO_MAX: usize = 4096;

/// Most tensor-making nodes (`ConstantOfShape`, `Expand`, `Tile`, `Resize`, `Upsample`,
/// `Range`, `Pad`, `Reshape`) a model may have: the memory estimate keeps a little of each.
pub const MAKER_NODES_MAX: usize = 1 << 18;

/// Most bytes the second pass keeps of the values and types of tensor-making nodes' operands
/// (each constant or declared type counted at its values and dimensions, 8 bytes each, plus
/// its name and 64 bytes): 64 MiB. A model over it is refused, so that the check's own memory
/// stays bounded whatever the model repeats.
const KEPT_BYTES_MAX: usize = 64 << 20;

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
    /// The memory the model needs, estimated from its graph (see [`memory`]).
    pub memory: MemoryEstimate,
}

impl ModelSummary {
    /// The model's signature as the wire carries it ([`crat_core::wire::ModelSignature`]):
    /// its declared inputs and outputs, open dimensions as `None`, an output declared without
    /// a shape with none. `None` when the declaration is beyond what the wire carries (more
    /// than 1,024 tensors, 64 dimensions or 1 KiB names).
    pub fn signature(&self) -> Option<crat_core::wire::ModelSignature> {
        use crat_core::wire::{ModelSignature, TensorSignature};
        let tensor = |spec: &TensorSpec, declared: bool| TensorSignature {
            name: spec.name.clone(),
            dtype: spec.dtype,
            shape: declared.then(|| {
                spec.shape
                    .iter()
                    .map(|d| match d {
                        Dim::Fixed(n) => Some(*n),
                        Dim::Symbolic(_) => None,
                    })
                    .collect()
            }),
        };
        let signature = ModelSignature {
            inputs: self.info.inputs.iter().map(|t| tensor(t, true)).collect(),
            outputs: self
                .info
                .outputs
                .iter()
                .enumerate()
                .map(|(i, t)| tensor(t, !self.undeclared_output_shapes.contains(&i)))
                .collect(),
        };
        signature.is_bounded().then_some(signature)
    }
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
    if !walker.facts.makers.is_empty() {
        // Second pass: the values and types of the tensor-making nodes' operands.
        let wanted: HashSet<String> = walker
            .facts
            .makers
            .iter()
            .flat_map(|m| m.inputs.iter().filter(|i| !i.is_empty()).cloned())
            .collect();
        let mut second = Walker {
            wanted: Some(wanted),
            ..Walker::default()
        };
        second.model(model)?;
        walker.facts.constants = second.facts.constants;
        walker.facts.declared = second.facts.declared;
    }
    let memory = memory::estimate(&walker.facts)?;
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
        memory,
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
    /// Random operators met without a `seed` attribute, each once (at most [`RANDOM_OPS`]).
    unseeded_random: Vec<&'static str>,
    /// Random operators met with a `seed` attribute, each once (at most [`RANDOM_OPS`]).
    seeded_random: Vec<&'static str>,
    /// Second pass only: the operands of the tensor-making nodes the first pass met, whose
    /// constant values and declared types are gathered (so what is kept is bounded by the
    /// number of nodes, never by the number of constants).
    wanted: Option<HashSet<String>>,
    /// Bytes the second pass keeps (at most [`KEPT_BYTES_MAX`]).
    kept_bytes: usize,
    /// What the memory estimate needs.
    facts: memory::Facts,
}

/// Most values a constant may hold to be looked at as a shape (shapes have few dimensions).
const SHAPE_VALUES_MAX: usize = 64;

/// Most dimensions of a tensor kept for the estimate (a tensor with more is left out of it:
/// no backend takes one).
const DIMS_KEPT_MAX: usize = 64;

/// What [`Walker::tensor`] reads of a `TensorProto`.
struct TensorFacts {
    name: String,
    /// `TensorProto.data_type` (0 when not set).
    elem_type: i64,
    /// Its dimensions; `None` when it has more than [`DIMS_KEPT_MAX`].
    dims: Option<Vec<u64>>,
    /// Its values, for a numeric tensor of at most [`SHAPE_VALUES_MAX`] elements.
    values: Option<Vec<f64>>,
}

/// What [`Walker::attribute`] reads of an `AttributeProto`.
#[derive(Default)]
struct AttributeFacts {
    name: Vec<u8>,
    /// `t`, a tensor.
    tensor: Option<TensorFacts>,
    /// `i`.
    int: Option<i64>,
    /// `f`.
    float: Option<f32>,
    /// `ints`, at most [`SHAPE_VALUES_MAX`] + 1 of them (`None`: none, or more than that).
    ints: Option<Vec<f64>>,
    /// `floats`, likewise.
    floats: Option<Vec<f64>>,
}

impl AttributeFacts {
    /// As a `Constant` node's value (unnamed), when it is one.
    fn constant(self) -> Option<TensorFacts> {
        let (dims, elem_type, values) = match &self.name[..] {
            b"value" => return self.tensor,
            b"value_int" => (vec![], ONNX_INT64, self.int.map(|i| vec![i as f64])),
            b"value_float" => (vec![], ONNX_FLOAT, self.float.map(|f| vec![f64::from(f)])),
            b"value_ints" => {
                let v = self.ints?;
                (vec![v.len() as u64], ONNX_INT64, Some(v))
            }
            b"value_floats" => {
                let v = self.floats?;
                (vec![v.len() as u64], ONNX_FLOAT, Some(v))
            }
            _ => return None,
        };
        Some(TensorFacts {
            name: String::new(),
            elem_type,
            dims: Some(dims),
            values,
        })
    }
}

/// Pushes a value onto a list kept only while it has at most [`SHAPE_VALUES_MAX`] values
/// (one more marks it too long).
fn keep(list: &mut Vec<f64>, v: f64) {
    if list.len() <= SHAPE_VALUES_MAX {
        list.push(v);
    }
}

/// `list` if it has at most [`SHAPE_VALUES_MAX`] values.
fn kept(list: Vec<f64>) -> Option<Vec<f64>> {
    (list.len() <= SHAPE_VALUES_MAX).then_some(list)
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
const ATTR_F: u32 = 2;
const ATTR_I: u32 = 3;
const ATTR_FLOATS: u32 = 7;
const ATTR_INTS: u32 = 8;
const ATTR_T: u32 = 5;
const ATTR_G: u32 = 6;
const ATTR_TENSORS: u32 = 10;
const ATTR_GRAPHS: u32 = 11;
const ATTR_SPARSE_TENSOR: u32 = 22;
const ATTR_SPARSE_TENSORS: u32 = 23;
const TENSOR_DIMS: u32 = 1;
const TENSOR_DATA_TYPE: u32 = 2;
const TENSOR_FLOAT_DATA: u32 = 4;
const TENSOR_INT32_DATA: u32 = 5;
const TENSOR_INT64_DATA: u32 = 7;
const TENSOR_NAME: u32 = 8;
const TENSOR_RAW_DATA: u32 = 9;
const TENSOR_DOUBLE_DATA: u32 = 10;
const ONNX_FLOAT: i64 = 1;
const ONNX_INT32: i64 = 6;
const ONNX_INT64: i64 = 7;
const ONNX_DOUBLE: i64 = 11;
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
                    let t = self.tensor(b)?;
                    self.constant(&t.name, t.dims, t.elem_type, t.values)?;
                    if let Some(io) = io.as_deref_mut() {
                        io.initializers.push(t.name);
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
                    self.declared(&info)?;
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

    /// Notes a declared tensor (graph input, output or `value_info`): refuses one of more
    /// than [`TENSOR_BYTES_MAX`] bytes (symbolic dimensions counted as 1), keeps the largest
    /// for the estimate, and its type when it is wanted.
    fn declared(&mut self, info: &ValueInfo) -> Result<(), BackendError> {
        let Some(shape) = &info.shape else {
            return Ok(());
        };
        let dims: Vec<u64> = shape
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => *n,
                Dim::Symbolic(_) => 1,
            })
            .collect();
        let bytes =
            memory::elements(&dims).saturating_mul(memory::element_bytes_or_wide(info.elem_type));
        if bytes > TENSOR_BYTES_MAX {
            return Err(BackendError::Load(format!(
                "'{}' declares a tensor of {}, more than a node holds ({} per tensor)",
                truncate(&info.name),
                Bytes(bytes),
                Bytes(TENSOR_BYTES_MAX)
            )));
        }
        if bytes > self.facts.largest_declared.0 {
            self.facts.largest_declared = (bytes, truncate(&info.name));
        }
        if self.is_wanted(&info.name) {
            self.keep(&info.name, dims.len())?;
            self.facts.declared.insert(
                info.name.clone(),
                memory::Declared {
                    dims,
                    elem_type: info.elem_type,
                },
            );
        }
        Ok(())
    }

    fn is_wanted(&self, name: &str) -> bool {
        self.wanted.as_ref().is_some_and(|w| w.contains(name))
    }

    /// Counts what keeping `numbers` numbers under `name` costs, within [`KEPT_BYTES_MAX`].
    fn keep(&mut self, name: &str, numbers: usize) -> Result<(), BackendError> {
        self.kept_bytes = self
            .kept_bytes
            .saturating_add(name.len() + 64 + 8 * numbers);
        if self.kept_bytes > KEPT_BYTES_MAX {
            return Err(BackendError::Load(format!(
                "the operands of tensor-making nodes hold more than {} of constants and \
                 shapes",
                Bytes(KEPT_BYTES_MAX as u64)
            )));
        }
        Ok(())
    }

    /// Notes a named constant (an initializer or a `Constant` output): its type, and its
    /// values when it is small and numeric, if it is wanted.
    fn constant(
        &mut self,
        name: &str,
        dims: Option<Vec<u64>>,
        elem_type: i64,
        values: Option<Vec<f64>>,
    ) -> Result<(), BackendError> {
        if !self.is_wanted(name) {
            return Ok(());
        }
        let numbers = dims.as_ref().map_or(0, Vec::len) + values.as_ref().map_or(0, Vec::len);
        self.keep(name, numbers)?;
        if let Some(dims) = dims {
            self.facts.declared.insert(
                name.to_owned(),
                memory::Declared {
                    dims,
                    elem_type: Some(elem_type),
                },
            );
        }
        if let Some(values) = values {
            self.facts
                .constants
                .insert(name.to_owned(), memory::Constant { elem_type, values });
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
        let mut attributes = Vec::new();
        let mut seeded = false;
        let mut r = Reader::new(buf);
        while let Some((field, value)) = r.next()? {
            match (field, value) {
                (NODE_ATTRIBUTE, Value::Bytes(b)) => {
                    let a = self.attribute(b, depth + 1)?;
                    seeded |= a.name == b"seed";
                    // Only the few a Constant or a tensor-making node reads are kept, the
                    // first of each name.
                    if matches!(
                        &a.name[..],
                        b"value"
                            | b"value_int"
                            | b"value_ints"
                            | b"value_float"
                            | b"value_floats"
                            | b"pads"
                    ) && !attributes.iter().any(|k: &AttributeFacts| k.name == a.name)
                    {
                        attributes.push(a);
                    }
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
        if op == b"Constant" {
            if let Some(t) = attributes.into_iter().find_map(AttributeFacts::constant) {
                for o in &outputs {
                    self.constant(&lossy(o), t.dims.clone(), t.elem_type, t.values.clone())?;
                }
            }
        } else if let Some(maker) = memory::MakerOp::from_op(op)
            && let Some(output) = outputs.first()
            && self.wanted.is_none()
        {
            let value_type = attributes
                .iter()
                .find(|a| a.name == b"value")
                .and_then(|a| a.tensor.as_ref())
                .map(|t| t.elem_type);
            let pads = attributes
                .into_iter()
                .find(|a| a.name == b"pads")
                .and_then(|a| a.ints);
            if self.facts.makers.len() >= MAKER_NODES_MAX {
                return Err(BackendError::Load(format!(
                    "more than {MAKER_NODES_MAX} tensor-making nodes (ConstantOfShape, Expand, \
                     Tile, Resize, Upsample, Range, Pad, Reshape)"
                )));
            }
            self.facts.makers.push(memory::Maker {
                op: maker,
                // Operands past the fourth set no size (Resize's `sizes` is the fourth).
                inputs: inputs.iter().take(4).map(|i| lossy(i)).collect(),
                output: lossy(output),
                value_type,
                pads,
            });
        }
        Ok(())
    }

    /// Checks one `AttributeProto` (its tensors, graphs) and reads what a `Constant` or a
    /// tensor-making node may need of it.
    fn attribute(&mut self, buf: &[u8], depth: usize) -> Result<AttributeFacts, BackendError> {
        depth_check(depth)?;
        let mut a = AttributeFacts::default();
        let (mut ints, mut floats) = (Vec::new(), Vec::new());
        let mut r = Reader::new(buf);
        while let Some((field, value)) = r.next()? {
            match (field, &value) {
                (ATTR_NAME, Value::Bytes(name)) => a.name = name.to_vec(),
                (ATTR_I, Value::Varint(v)) => a.int = Some(*v as i64),
                (ATTR_F, Value::Fixed32(v)) => a.float = Some(f32::from_bits(*v)),
                (ATTR_INTS, Value::Varint(v)) => keep(&mut ints, *v as i64 as f64),
                (ATTR_INTS, Value::Bytes(packed)) => {
                    let mut p = Reader::new(packed);
                    while !p.is_empty() && ints.len() <= SHAPE_VALUES_MAX {
                        keep(&mut ints, p.varint()? as i64 as f64);
                    }
                }
                (ATTR_FLOATS, Value::Fixed32(v)) => {
                    keep(&mut floats, f64::from(f32::from_bits(*v)))
                }
                (ATTR_FLOATS, Value::Bytes(packed)) => {
                    for c in packed.chunks_exact(4).take(SHAPE_VALUES_MAX + 1) {
                        keep(&mut floats, f64::from(f32_le(c)));
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
                ATTR_T => a.tensor = Some(self.tensor(b)?),
                ATTR_TENSORS => {
                    self.tensor(b)?;
                }
                ATTR_SPARSE_TENSOR | ATTR_SPARSE_TENSORS => {
                    self.sparse_tensor(b)?;
                }
                ATTR_G | ATTR_GRAPHS => self.graph(b, depth + 1, None)?,
                _ => {}
            }
        }
        a.ints = (!ints.is_empty()).then_some(ints).and_then(kept);
        a.floats = (!floats.is_empty()).then_some(floats).and_then(kept);
        Ok(a)
    }

    /// Checks one `TensorProto` (no external data, dimensions within limits, at most
    /// [`TENSOR_BYTES_MAX`] bytes), counts it in the weights, and reads its name, type,
    /// dimensions and, when it is small and numeric, its values.
    fn tensor(&mut self, buf: &[u8]) -> Result<TensorFacts, BackendError> {
        let mut name = String::new();
        let mut external: Option<String> = None;
        let mut location_external = false;
        let mut elements: u64 = 1;
        let mut dims = Some(Vec::new());
        let mut elem_type = 0;
        let mut raw: Option<&[u8]> = None;
        // The typed value fields, as f64 (each kept up to SHAPE_VALUES_MAX + 1 values).
        let (mut ints, mut floats) = (Vec::new(), Vec::new());
        let mut r = Reader::new(buf);
        while let Some((field, value)) = r.next()? {
            match (field, value) {
                (TENSOR_DATA_TYPE, Value::Varint(v)) => elem_type = v as i64,
                (TENSOR_RAW_DATA, Value::Bytes(b)) => raw = Some(b),
                (TENSOR_INT64_DATA | TENSOR_INT32_DATA, Value::Varint(v)) => {
                    let v = if field == TENSOR_INT32_DATA {
                        f64::from(v as i32)
                    } else {
                        v as i64 as f64
                    };
                    keep(&mut ints, v);
                }
                (TENSOR_INT64_DATA | TENSOR_INT32_DATA, Value::Bytes(packed)) => {
                    let mut p = Reader::new(packed);
                    while !p.is_empty() && ints.len() <= SHAPE_VALUES_MAX {
                        let v = p.varint()?;
                        let v = if field == TENSOR_INT32_DATA {
                            f64::from(v as i32)
                        } else {
                            v as i64 as f64
                        };
                        keep(&mut ints, v);
                    }
                }
                (TENSOR_FLOAT_DATA, Value::Fixed32(v)) => {
                    keep(&mut floats, f64::from(f32::from_bits(v)));
                }
                (TENSOR_FLOAT_DATA, Value::Bytes(packed)) => {
                    for c in packed.chunks_exact(4).take(SHAPE_VALUES_MAX + 1) {
                        keep(&mut floats, f64::from(f32_le(c)));
                    }
                }
                (TENSOR_DOUBLE_DATA, Value::Fixed64(v)) => keep(&mut floats, f64::from_bits(v)),
                (TENSOR_DOUBLE_DATA, Value::Bytes(packed)) => {
                    for c in packed.chunks_exact(8).take(SHAPE_VALUES_MAX + 1) {
                        keep(&mut floats, f64_le(c));
                    }
                }
                (TENSOR_NAME, Value::Bytes(s)) => name = utf8(s, "tensor name")?,
                (TENSOR_DIMS, Value::Varint(d)) => {
                    elements = tensor_dim(elements, d, &name)?;
                    push_dim(&mut dims, d);
                }
                (TENSOR_DIMS, Value::Bytes(packed)) => {
                    let mut p = Reader::new(packed);
                    while !p.is_empty() {
                        let d = p.varint()?;
                        elements = tensor_dim(elements, d, &name)?;
                        push_dim(&mut dims, d);
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
        let bytes = elements.saturating_mul(memory::element_bytes_or_wide(Some(elem_type)));
        self.weights(bytes, &name)?;
        let values = (elements <= SHAPE_VALUES_MAX as u64)
            .then(|| match (elem_type, raw) {
                (ONNX_FLOAT, Some(raw)) => Some(
                    raw.chunks_exact(4)
                        .take(SHAPE_VALUES_MAX + 1)
                        .map(|c| f64::from(f32_le(c)))
                        .collect(),
                ),
                (ONNX_DOUBLE, Some(raw)) => Some(
                    raw.chunks_exact(8)
                        .take(SHAPE_VALUES_MAX + 1)
                        .map(f64_le)
                        .collect(),
                ),
                (ONNX_INT32, Some(raw)) => Some(
                    raw.chunks_exact(4)
                        .take(SHAPE_VALUES_MAX + 1)
                        .map(|c| f64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                        .collect(),
                ),
                (ONNX_INT64, Some(raw)) => Some(
                    raw.chunks_exact(8)
                        .take(SHAPE_VALUES_MAX + 1)
                        .map(|c| i64_le(c) as f64)
                        .collect(),
                ),
                (ONNX_FLOAT | ONNX_DOUBLE, None) => kept(floats),
                (ONNX_INT32 | ONNX_INT64, None) => kept(ints),
                _ => None,
            })
            .flatten()
            .filter(|v: &Vec<f64>| v.len() <= SHAPE_VALUES_MAX);
        Ok(TensorFacts {
            name,
            elem_type,
            dims,
            values,
        })
    }

    /// Counts a tensor of `bytes` in the weights, refusing one over [`TENSOR_BYTES_MAX`].
    fn weights(&mut self, bytes: u64, name: &str) -> Result<(), BackendError> {
        if bytes > TENSOR_BYTES_MAX {
            return Err(BackendError::Load(format!(
                "tensor '{}' declares {}, more than a node holds ({} per tensor)",
                truncate(name),
                Bytes(bytes),
                Bytes(TENSOR_BYTES_MAX)
            )));
        }
        self.facts.weights_bytes = self.facts.weights_bytes.saturating_add(bytes);
        Ok(())
    }

    /// Checks one `SparseTensorProto` and counts it in the weights at its dense size (what a
    /// backend that densifies it holds).
    fn sparse_tensor(&mut self, buf: &[u8]) -> Result<String, BackendError> {
        let mut name = String::new();
        let mut elem_type = None;
        let mut elements: u64 = 1;
        let mut r = Reader::new(buf);
        while let Some((field, value)) = r.next()? {
            match (field, value) {
                (SPARSE_VALUES, Value::Bytes(b)) => {
                    let values = self.tensor(b)?;
                    name = values.name;
                    elem_type = Some(values.elem_type);
                }
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
        self.weights(
            elements.saturating_mul(memory::element_bytes_or_wide(elem_type)),
            &name,
        )?;
        Ok(name)
    }
}

/// Appends a dimension to a tensor's kept dimensions (`None` once past [`DIMS_KEPT_MAX`]).
fn push_dim(dims: &mut Option<Vec<u64>>, d: u64) {
    if let Some(list) = dims {
        if list.len() < DIMS_KEPT_MAX {
            list.push(d);
        } else {
            *dims = None;
        }
    }
}

fn f32_le(c: &[u8]) -> f32 {
    f32::from_le_bytes([c[0], c[1], c[2], c[3]])
}

fn f64_le(c: &[u8]) -> f64 {
    f64::from_bits(i64_le(c) as u64)
}

fn i64_le(c: &[u8]) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&c[..8]);
    i64::from_le_bytes(b)
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
            | (Kind::Fixed32, Value::Fixed32(_))
            | (Kind::Fixed64, Value::Fixed64(_))
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
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
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

    /// The next `N` bytes, as a fixed-width field's value.
    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], BackendError> {
        let mut b = [0u8; N];
        b.copy_from_slice(self.take(N)?);
        Ok(b)
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
            1 => Value::Fixed64(u64::from_le_bytes(self.fixed()?)),
            2 => {
                let len = self.varint()?;
                let len = usize::try_from(len).map_err(|_| malformed("length overflows"))?;
                Value::Bytes(self.take(len)?)
            }
            5 => Value::Fixed32(u32::from_le_bytes(self.fixed()?)),
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
mod tests;
