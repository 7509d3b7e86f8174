//! The protobuf schema of ONNX as tract decodes it, so that the model check refuses every
//! byte string a real decoder refuses (`onnx_check::conforms`): a field the schema knows must
//! have its wire type (scalars of a repeated field may also come packed), its strings must be
//! UTF-8 and its messages must conform in turn; fields it does not know are skipped.
//! The property is tested against prost itself (`tests/onnx_differential.rs`).

/// What a known field holds.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    /// int32, int64, uint64, enumerations, bool: varints.
    Varint,
    /// float: 4 bytes.
    Fixed32,
    /// double: 8 bytes.
    Fixed64,
    /// A UTF-8 string.
    Str,
    /// Raw bytes.
    Bytes,
    /// A message: the index of its schema in [`MESSAGES`].
    Msg(usize),
}

/// One known field of a message.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Field {
    pub(crate) tag: u32,
    pub(crate) kind: Kind,
    pub(crate) repeated: bool,
}

// Generated from tract-onnx 0.23.9's prost schema (src/prost/onnx.rs): every field
// prost knows, by message. Regenerate when tract's schema changes.
pub(crate) const MESSAGES: &[(&str, &[Field])] = &[
    (
        "AttributeProto",
        &[
            Field {
                tag: 1,
                kind: Kind::Str,
                repeated: false,
            },
            Field {
                tag: 2,
                kind: Kind::Fixed32,
                repeated: false,
            },
            Field {
                tag: 3,
                kind: Kind::Varint,
                repeated: false,
            },
            Field {
                tag: 4,
                kind: Kind::Bytes,
                repeated: false,
            },
            Field {
                tag: 5,
                kind: Kind::Msg(8),
                repeated: false,
            },
            Field {
                tag: 6,
                kind: Kind::Msg(6),
                repeated: false,
            },
            Field {
                tag: 7,
                kind: Kind::Fixed32,
                repeated: true,
            },
            Field {
                tag: 8,
                kind: Kind::Varint,
                repeated: true,
            },
            Field {
                tag: 9,
                kind: Kind::Bytes,
                repeated: true,
            },
            Field {
                tag: 10,
                kind: Kind::Msg(8),
                repeated: true,
            },
            Field {
                tag: 11,
                kind: Kind::Msg(6),
                repeated: true,
            },
            Field {
                tag: 13,
                kind: Kind::Str,
                repeated: false,
            },
            Field {
                tag: 15,
                kind: Kind::Msg(13),
                repeated: true,
            },
            Field {
                tag: 20,
                kind: Kind::Varint,
                repeated: false,
            },
            Field {
                tag: 21,
                kind: Kind::Str,
                repeated: false,
            },
            Field {
                tag: 22,
                kind: Kind::Msg(10),
                repeated: false,
            },
            Field {
                tag: 23,
                kind: Kind::Msg(10),
                repeated: true,
            },
        ],
    ),
    (
        "ValueInfoProto",
        &[
            Field {
                tag: 1,
                kind: Kind::Str,
                repeated: false,
            },
            Field {
                tag: 2,
                kind: Kind::Msg(13),
                repeated: false,
            },
            Field {
                tag: 3,
                kind: Kind::Str,
                repeated: false,
            },
        ],
    ),
    (
        "NodeProto",
        &[
            Field {
                tag: 1,
                kind: Kind::Str,
                repeated: true,
            },
            Field {
                tag: 2,
                kind: Kind::Str,
                repeated: true,
            },
            Field {
                tag: 3,
                kind: Kind::Str,
                repeated: false,
            },
            Field {
                tag: 4,
                kind: Kind::Str,
                repeated: false,
            },
            Field {
                tag: 5,
                kind: Kind::Msg(0),
                repeated: true,
            },
            Field {
                tag: 6,
                kind: Kind::Str,
                repeated: false,
            },
            Field {
                tag: 7,
                kind: Kind::Str,
                repeated: false,
            },
        ],
    ),
    (
        "ModelProto",
        &[
            Field {
                tag: 1,
                kind: Kind::Varint,
                repeated: false,
            },
            Field {
                tag: 2,
                kind: Kind::Str,
                repeated: false,
            },
            Field {
                tag: 3,
                kind: Kind::Str,
                repeated: false,
            },
            Field {
                tag: 4,
                kind: Kind::Str,
                repeated: false,
            },
            Field {
                tag: 5,
                kind: Kind::Varint,
                repeated: false,
            },
            Field {
                tag: 6,
                kind: Kind::Str,
                repeated: false,
            },
            Field {
                tag: 7,
                kind: Kind::Msg(6),
                repeated: false,
            },
            Field {
                tag: 8,
                kind: Kind::Msg(15),
                repeated: true,
            },
            Field {
                tag: 14,
                kind: Kind::Msg(4),
                repeated: true,
            },
            Field {
                tag: 20,
                kind: Kind::Msg(7),
                repeated: true,
            },
            Field {
                tag: 25,
                kind: Kind::Msg(16),
                repeated: true,
            },
        ],
    ),
    (
        "StringStringEntryProto",
        &[
            Field {
                tag: 1,
                kind: Kind::Str,
                repeated: false,
            },
            Field {
                tag: 2,
                kind: Kind::Str,
                repeated: false,
            },
        ],
    ),
    (
        "TensorAnnotation",
        &[
            Field {
                tag: 1,
                kind: Kind::Str,
                repeated: false,
            },
            Field {
                tag: 2,
                kind: Kind::Msg(4),
                repeated: true,
            },
        ],
    ),
    (
        "GraphProto",
        &[
            Field {
                tag: 1,
                kind: Kind::Msg(2),
                repeated: true,
            },
            Field {
                tag: 2,
                kind: Kind::Str,
                repeated: false,
            },
            Field {
                tag: 5,
                kind: Kind::Msg(8),
                repeated: true,
            },
            Field {
                tag: 10,
                kind: Kind::Str,
                repeated: false,
            },
            Field {
                tag: 11,
                kind: Kind::Msg(1),
                repeated: true,
            },
            Field {
                tag: 12,
                kind: Kind::Msg(1),
                repeated: true,
            },
            Field {
                tag: 13,
                kind: Kind::Msg(1),
                repeated: true,
            },
            Field {
                tag: 14,
                kind: Kind::Msg(5),
                repeated: true,
            },
            Field {
                tag: 15,
                kind: Kind::Msg(10),
                repeated: true,
            },
        ],
    ),
    (
        "TrainingInfoProto",
        &[
            Field {
                tag: 1,
                kind: Kind::Msg(6),
                repeated: false,
            },
            Field {
                tag: 2,
                kind: Kind::Msg(6),
                repeated: false,
            },
            Field {
                tag: 3,
                kind: Kind::Msg(4),
                repeated: true,
            },
            Field {
                tag: 4,
                kind: Kind::Msg(4),
                repeated: true,
            },
        ],
    ),
    (
        "TensorProto",
        &[
            Field {
                tag: 1,
                kind: Kind::Varint,
                repeated: true,
            },
            Field {
                tag: 2,
                kind: Kind::Varint,
                repeated: false,
            },
            Field {
                tag: 3,
                kind: Kind::Msg(9),
                repeated: false,
            },
            Field {
                tag: 4,
                kind: Kind::Fixed32,
                repeated: true,
            },
            Field {
                tag: 5,
                kind: Kind::Varint,
                repeated: true,
            },
            Field {
                tag: 6,
                kind: Kind::Bytes,
                repeated: true,
            },
            Field {
                tag: 7,
                kind: Kind::Varint,
                repeated: true,
            },
            Field {
                tag: 8,
                kind: Kind::Str,
                repeated: false,
            },
            Field {
                tag: 9,
                kind: Kind::Bytes,
                repeated: false,
            },
            Field {
                tag: 10,
                kind: Kind::Fixed64,
                repeated: true,
            },
            Field {
                tag: 11,
                kind: Kind::Varint,
                repeated: true,
            },
            Field {
                tag: 12,
                kind: Kind::Str,
                repeated: false,
            },
            Field {
                tag: 13,
                kind: Kind::Msg(4),
                repeated: true,
            },
            Field {
                tag: 14,
                kind: Kind::Varint,
                repeated: false,
            },
        ],
    ),
    (
        "tensor_proto::Segment",
        &[
            Field {
                tag: 1,
                kind: Kind::Varint,
                repeated: false,
            },
            Field {
                tag: 2,
                kind: Kind::Varint,
                repeated: false,
            },
        ],
    ),
    (
        "SparseTensorProto",
        &[
            Field {
                tag: 1,
                kind: Kind::Msg(8),
                repeated: false,
            },
            Field {
                tag: 2,
                kind: Kind::Msg(8),
                repeated: false,
            },
            Field {
                tag: 3,
                kind: Kind::Varint,
                repeated: true,
            },
        ],
    ),
    (
        "TensorShapeProto",
        &[Field {
            tag: 1,
            kind: Kind::Msg(12),
            repeated: true,
        }],
    ),
    (
        "tensor_shape_proto::Dimension",
        &[
            Field {
                tag: 1,
                kind: Kind::Varint,
                repeated: false,
            },
            Field {
                tag: 2,
                kind: Kind::Str,
                repeated: false,
            },
            Field {
                tag: 3,
                kind: Kind::Str,
                repeated: false,
            },
        ],
    ),
    (
        "TypeProto",
        &[
            Field {
                tag: 1,
                kind: Kind::Msg(14),
                repeated: false,
            },
            Field {
                tag: 6,
                kind: Kind::Str,
                repeated: false,
            },
        ],
    ),
    (
        "type_proto::Tensor",
        &[
            Field {
                tag: 1,
                kind: Kind::Varint,
                repeated: false,
            },
            Field {
                tag: 2,
                kind: Kind::Msg(11),
                repeated: false,
            },
        ],
    ),
    (
        "OperatorSetIdProto",
        &[
            Field {
                tag: 1,
                kind: Kind::Str,
                repeated: false,
            },
            Field {
                tag: 2,
                kind: Kind::Varint,
                repeated: false,
            },
        ],
    ),
    (
        "FunctionProto",
        &[
            Field {
                tag: 1,
                kind: Kind::Str,
                repeated: false,
            },
            Field {
                tag: 4,
                kind: Kind::Str,
                repeated: true,
            },
            Field {
                tag: 5,
                kind: Kind::Str,
                repeated: true,
            },
            Field {
                tag: 6,
                kind: Kind::Str,
                repeated: true,
            },
            Field {
                tag: 7,
                kind: Kind::Msg(2),
                repeated: true,
            },
            Field {
                tag: 8,
                kind: Kind::Str,
                repeated: false,
            },
            Field {
                tag: 9,
                kind: Kind::Msg(15),
                repeated: true,
            },
            Field {
                tag: 10,
                kind: Kind::Str,
                repeated: false,
            },
        ],
    ),
];
pub(crate) const MODEL_PROTO: usize = 3;
