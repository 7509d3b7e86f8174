//! Tensors as they travel on the wire: a dtype, a shape and little-endian bytes.
//!
//! A [`Tensor`] is always valid: `product(shape) × dtype.size() == bytes.len()`, the rank is at
//! most [`RANK_MAX`], every dimension at most [`DIM_MAX`] and the byte length at most
//! [`TENSOR_BYTES_MAX`]; `bool` tensors hold only 0 and 1. Constructors and the serde decoder both
//! check this, so a tensor that came off the network can be handed to a backend as it is.
//!
//! ```
//! use crat_core::tensor::{DType, Tensor};
//! let t = Tensor::from_slice(&[2, 3], &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0])?;
//! assert_eq!(t.dtype(), DType::F32);
//! assert_eq!(t.shape(), &[2, 3]);
//! assert_eq!(t.to_vec::<f32>()?, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
//! // Four f32 values do not fill a 2×3 shape:
//! assert!(Tensor::from_slice(&[2, 3], &[0.0f32; 4]).is_err());
//! # Ok::<(), crat_core::tensor::TensorError>(())
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

/// Most dimensions a tensor may have.
pub const RANK_MAX: usize = 8;
/// Largest single dimension.
pub const DIM_MAX: u64 = 1 << 31;
/// Largest tensor payload in bytes (1 GiB). Transports apply their own, smaller frame caps.
pub const TENSOR_BYTES_MAX: u64 = 1 << 30;

/// Element type of a tensor. The names follow ONNX.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum DType {
    /// 32-bit IEEE float.
    F32,
    /// 16-bit IEEE float (stored as its raw bits).
    F16,
    /// 64-bit IEEE float.
    F64,
    /// Signed 64-bit integer.
    I64,
    /// Signed 32-bit integer.
    I32,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 8-bit integer.
    U8,
    /// Boolean, one byte each, 0 or 1.
    Bool,
}

impl DType {
    /// Every dtype, for iteration in tests and tables.
    pub const ALL: [DType; 8] = [
        DType::F32,
        DType::F16,
        DType::F64,
        DType::I64,
        DType::I32,
        DType::I8,
        DType::U8,
        DType::Bool,
    ];

    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// The ONNX name of the type (`float`, `float16`, `int64`, …).
    pub const fn onnx_name(self) -> &'static str {
        match self {
            DType::F32 => "float",
            DType::F16 => "float16",
            DType::F64 => "double",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::Bool => "bool",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.onnx_name())
    }
}

/// Why a tensor is invalid or cannot be read as the requested type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TensorError {
    /// More than [`RANK_MAX`] dimensions.
    #[error("rank {rank} exceeds the maximum of {RANK_MAX}")]
    Rank {
        /// The rank given.
        rank: usize,
    },
    /// A dimension above [`DIM_MAX`].
    #[error("dimension {index} is {dim}, above the maximum of {DIM_MAX}")]
    Dim {
        /// Which dimension.
        index: usize,
        /// Its value.
        dim: u64,
    },
    /// The shape describes more than [`TENSOR_BYTES_MAX`] bytes.
    #[error("shape describes more than {TENSOR_BYTES_MAX} bytes")]
    TooLarge,
    /// The byte length does not match shape × element size.
    #[error("shape needs {expected} bytes of {dtype} but {actual} were given")]
    Length {
        /// The dtype.
        dtype: DType,
        /// Bytes the shape needs.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// A `bool` tensor holds a byte other than 0 or 1.
    #[error("bool tensor holds byte {byte} at index {index}")]
    Bool {
        /// Element index.
        index: usize,
        /// The offending byte.
        byte: u8,
    },
    /// The tensor was read as another element type.
    #[error("tensor holds {actual}, not {requested}")]
    DType {
        /// The type asked for.
        requested: DType,
        /// The type it holds.
        actual: DType,
    },
}

/// Element types that can be copied in and out of a [`Tensor`].
pub trait Element: Copy + sealed::Sealed {
    /// The tensor dtype of this element.
    const DTYPE: DType;
    /// Appends the little-endian bytes of `self`.
    fn write_le(self, out: &mut Vec<u8>);
    /// Reads one element from exactly `DTYPE.size()` little-endian bytes.
    fn read_le(bytes: &[u8]) -> Self;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! element {
    ($t:ty, $d:expr) => {
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: DType = $d;
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn read_le(bytes: &[u8]) -> Self {
                let mut raw = [0u8; std::mem::size_of::<$t>()];
                raw.copy_from_slice(bytes);
                <$t>::from_le_bytes(raw)
            }
        }
    };
}

element!(f32, DType::F32);
element!(f64, DType::F64);
element!(i64, DType::I64);
element!(i32, DType::I32);
element!(i8, DType::I8);
element!(u8, DType::U8);

impl sealed::Sealed for bool {}
impl Element for bool {
    const DTYPE: DType = DType::Bool;
    fn write_le(self, out: &mut Vec<u8>) {
        out.push(u8::from(self));
    }
    fn read_le(bytes: &[u8]) -> Self {
        bytes[0] != 0
    }
}

/// A dense tensor: dtype, shape and little-endian element bytes, always valid.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawTensor")]
pub struct Tensor {
    dtype: DType,
    shape: Vec<u64>,
    data: Vec<u8>,
}

/// The unchecked serde form of a [`Tensor`].
#[derive(Serialize, Deserialize)]
struct RawTensor {
    dtype: DType,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, RANK_MAX>")]
    shape: Vec<u64>,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

impl TryFrom<RawTensor> for Tensor {
    type Error = TensorError;
    fn try_from(raw: RawTensor) -> Result<Self, TensorError> {
        Tensor::new(raw.dtype, raw.shape, raw.data)
    }
}

/// [`RawTensor`] borrowed from a [`Tensor`]: the same serde form, written without copying
/// the data (serde's `into` would clone the whole tensor on every encode, and a frame is
/// encoded twice, once to size it).
#[derive(Serialize)]
#[serde(rename = "RawTensor")]
struct RawTensorRef<'a> {
    dtype: DType,
    shape: &'a [u64],
    #[serde(with = "serde_bytes")]
    data: &'a [u8],
}

impl Serialize for Tensor {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        RawTensorRef {
            dtype: self.dtype,
            shape: &self.shape,
            data: &self.data,
        }
        .serialize(serializer)
    }
}

/// Number of bytes a tensor of `dtype` and `shape` needs, after checking rank and dims.
pub fn byte_len(dtype: DType, shape: &[u64]) -> Result<u64, TensorError> {
    if shape.len() > RANK_MAX {
        return Err(TensorError::Rank { rank: shape.len() });
    }
    let mut bytes = dtype.size() as u64;
    for (index, &dim) in shape.iter().enumerate() {
        if dim > DIM_MAX {
            return Err(TensorError::Dim { index, dim });
        }
        // Both factors are below 2^31 × 2^30, so the product fits in u64 before the check.
        bytes = bytes.saturating_mul(dim);
        if bytes > TENSOR_BYTES_MAX {
            // A zero dimension later would make it empty, but a shape whose prefix is
            // already this large is rejected anyway: no legitimate model needs it.
            return Err(TensorError::TooLarge);
        }
    }
    Ok(bytes)
}

impl Tensor {
    /// A tensor from raw little-endian bytes, validated.
    pub fn new(dtype: DType, shape: Vec<u64>, data: Vec<u8>) -> Result<Self, TensorError> {
        let expected = byte_len(dtype, &shape)?;
        if expected != data.len() as u64 {
            return Err(TensorError::Length {
                dtype,
                expected,
                actual: data.len() as u64,
            });
        }
        if dtype == DType::Bool
            && let Some(index) = data.iter().position(|&b| b > 1)
        {
            return Err(TensorError::Bool {
                index,
                byte: data[index],
            });
        }
        Ok(Self { dtype, shape, data })
    }

    /// A tensor holding `values` in row-major order.
    pub fn from_slice<T: Element>(shape: &[u64], values: &[T]) -> Result<Self, TensorError> {
        let mut data = Vec::with_capacity(values.len().saturating_mul(T::DTYPE.size()));
        for &v in values {
            v.write_le(&mut data);
        }
        Self::new(T::DTYPE, shape.to_vec(), data)
    }

    /// An all-zero tensor.
    pub fn zeros(dtype: DType, shape: &[u64]) -> Result<Self, TensorError> {
        let len = byte_len(dtype, shape)?;
        // `len` ≤ TENSOR_BYTES_MAX (1 GiB), which fits in usize on every supported target.
        Self::new(dtype, shape.to_vec(), vec![0; len as usize])
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The shape, outermost dimension first.
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// The raw little-endian element bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len() / self.dtype.size()
    }

    /// True for a tensor with no elements (some dimension is 0).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Takes the dtype, shape and bytes apart.
    pub fn into_parts(self) -> (DType, Vec<u64>, Vec<u8>) {
        (self.dtype, self.shape, self.data)
    }

    /// Copies the elements out as `T`, which must be the tensor's dtype.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>, TensorError> {
        if T::DTYPE != self.dtype {
            return Err(TensorError::DType {
                requested: T::DTYPE,
                actual: self.dtype,
            });
        }
        // A constant chunk size (every `Element` is its dtype's size) lets the loop be
        // vectorized: a large input tensor is copied at memory speed on its way into a
        // backend, not element by element.
        debug_assert_eq!(std::mem::size_of::<T>(), self.dtype.size());
        Ok(self
            .data
            .chunks_exact(std::mem::size_of::<T>())
            .map(T::read_le)
            .collect())
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Tensor({} {:?}, {} bytes)",
            self.dtype,
            self.shape,
            self.data.len()
        )
    }
}

/// A tensor with the name of the model input or output it belongs to.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct NamedTensor {
    /// Input or output name as the model declares it.
    pub name: String,
    /// The values.
    pub tensor: Tensor,
}

impl NamedTensor {
    /// Pairs a name with a tensor.
    pub fn new(name: impl Into<String>, tensor: Tensor) -> Self {
        Self {
            name: name.into(),
            tensor,
        }
    }
}

/// The data bytes of `tensors` together: a task's input size, which the plan limits and a
/// per-request price is computed from (by the client, the node and the dispatcher alike).
pub fn tensors_bytes(tensors: &[NamedTensor]) -> u64 {
    tensors.iter().map(|t| t.tensor.bytes().len() as u64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_as_its_raw_form_and_back() {
        let t = Tensor::from_slice(&[2, 3], &[1.5f32, -2.0, 0.0, 4.25, 8.0, 9.5]).unwrap();
        let raw = RawTensor {
            dtype: t.dtype,
            shape: t.shape.clone(),
            data: t.data.clone(),
        };
        // Byte for byte what the derived form wrote, in postcard and in JSON.
        let bytes = postcard::to_allocvec(&t).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&raw).unwrap());
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            serde_json::to_string(&raw).unwrap()
        );
        assert_eq!(postcard::from_bytes::<Tensor>(&bytes).unwrap(), t);
    }

    #[test]
    fn validates_length() {
        assert!(Tensor::new(DType::F32, vec![2, 2], vec![0; 16]).is_ok());
        assert_eq!(
            Tensor::new(DType::F32, vec![2, 2], vec![0; 15]),
            Err(TensorError::Length {
                dtype: DType::F32,
                expected: 16,
                actual: 15
            })
        );
        // Scalar: empty shape, one element.
        assert!(Tensor::new(DType::I64, vec![], vec![0; 8]).is_ok());
        // Zero-sized dimension: no bytes.
        assert!(Tensor::new(DType::F32, vec![0, 5], vec![]).is_ok());
    }

    #[test]
    fn validates_bounds() {
        assert_eq!(
            Tensor::new(DType::U8, vec![1; 9], vec![0]),
            Err(TensorError::Rank { rank: 9 })
        );
        assert_eq!(
            Tensor::new(DType::U8, vec![DIM_MAX + 1], vec![]),
            Err(TensorError::Dim {
                index: 0,
                dim: DIM_MAX + 1
            })
        );
        assert_eq!(
            Tensor::new(DType::F64, vec![1 << 20, 1 << 20], vec![]),
            Err(TensorError::TooLarge)
        );
        assert_eq!(
            Tensor::new(DType::Bool, vec![3], vec![0, 1, 2]),
            Err(TensorError::Bool { index: 2, byte: 2 })
        );
    }

    #[test]
    fn typed_access() {
        let t = Tensor::from_slice(&[3], &[1i64, -2, 3]).unwrap();
        assert_eq!(t.to_vec::<i64>().unwrap(), vec![1, -2, 3]);
        assert_eq!(t.bytes()[..8], 1i64.to_le_bytes());
        assert!(matches!(t.to_vec::<f32>(), Err(TensorError::DType { .. })));
        let b = Tensor::from_slice(&[2], &[true, false]).unwrap();
        assert_eq!(b.to_vec::<bool>().unwrap(), vec![true, false]);
        assert_eq!(Tensor::zeros(DType::F16, &[2, 2]).unwrap().bytes().len(), 8);
    }

    #[test]
    fn decoder_validates() {
        let raw = RawTensor {
            dtype: DType::F32,
            shape: vec![4],
            data: vec![0; 3],
        };
        let bytes = postcard::to_stdvec(&raw).unwrap();
        assert!(postcard::from_bytes::<Tensor>(&bytes).is_err());
    }
}
