//! numpy arrays ↔ wire tensors.
//!
//! | wire dtype | numpy dtype |
//! |---|---|
//! | `float` | `float32` |
//! | `float16` | `float16` |
//! | `double` | `float64` |
//! | `int64` | `int64` |
//! | `int32` | `int32` |
//! | `int8` | `int8` |
//! | `uint8` | `uint8` |
//! | `bool` | `bool` |
//!
//! Any array of these dtypes in native byte order converts, contiguous or not (a strided view
//! is copied in logical order). A value that is not an ndarray goes through `numpy.asarray`
//! first. Other dtypes raise `cryptorat.TensorError` naming the dtype: convert with
//! `astype` first. Outputs come back as fresh, C-contiguous, writable arrays.

use crat_core::tensor::{DType, Element, NamedTensor, Tensor};
use crat_core::wire::TENSORS_MAX;
use half::f16;
use ndarray::{ArrayD, IxDyn};
use numpy::{IntoPyArray, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyMapping};

use crate::errors::new_err;

/// The numpy names of the dtypes the network carries.
pub(crate) const DTYPE_NAMES: [&str; 8] = [
    "float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool",
];

/// The numpy name of a wire dtype.
pub(crate) fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::F64 => "float64",
        DType::I64 => "int64",
        DType::I32 => "int32",
        DType::I8 => "int8",
        DType::U8 => "uint8",
        DType::Bool => "bool",
        _ => "unknown",
    }
}

/// Element types numpy and the wire both carry, with the wire's little-endian encoding.
trait WireElement: numpy::Element + Copy {
    const DTYPE: DType;
    const SIZE: usize = Self::DTYPE.size();
    fn put(self, out: &mut Vec<u8>);
    fn get(bytes: &[u8]) -> Self;
}

/// The types `crat_core` reads and writes itself.
macro_rules! via_core {
    ($($t:ty),*) => {$(
        impl WireElement for $t {
            const DTYPE: DType = <$t as Element>::DTYPE;
            fn put(self, out: &mut Vec<u8>) {
                Element::write_le(self, out);
            }
            fn get(bytes: &[u8]) -> Self {
                Element::read_le(bytes)
            }
        }
    )*};
}

via_core!(f32, f64, i64, i32, i8, u8, bool);

/// `crat_core` carries float16 as raw bits.
impl WireElement for f16 {
    const DTYPE: DType = DType::F16;
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn get(bytes: &[u8]) -> Self {
        f16::from_le_bytes([bytes[0], bytes[1]])
    }
}

/// The tensor of `array` if its dtype is `T`'s, `None` if it is another.
fn try_encode<T: WireElement>(array: &Bound<'_, PyAny>) -> PyResult<Option<Tensor>> {
    let Ok(array) = array.cast::<PyArrayDyn<T>>() else {
        return Ok(None);
    };
    let array = array.try_readonly().map_err(|e| {
        new_err(
            "TensorError",
            format!("array is being written elsewhere: {e}"),
        )
    })?;
    let view = array.as_array();
    let shape: Vec<u64> = view.shape().iter().map(|&d| d as u64).collect();
    let mut bytes = Vec::with_capacity(view.len().saturating_mul(T::SIZE));
    // Row-major order. (numpy's `as_slice` also accepts Fortran-ordered memory, which is
    // not the logical order: only ndarray's standard-layout slice is taken as it is.)
    match view.as_slice() {
        Some(values) => values.iter().for_each(|v| v.put(&mut bytes)),
        None => view.iter().for_each(|v| v.put(&mut bytes)),
    }
    Tensor::new(T::DTYPE, shape, bytes)
        .map(Some)
        .map_err(|e| crate::errors::to_py(e.into()))
}

/// [`try_encode`] for one element type.
type Encoder = fn(&Bound<'_, PyAny>) -> PyResult<Option<Tensor>>;

/// The wire tensor of a numpy array (or of what `numpy.asarray` makes of `value`).
pub(crate) fn to_tensor(py: Python<'_>, name: &str, value: &Bound<'_, PyAny>) -> PyResult<Tensor> {
    let array = if value.cast::<PyUntypedArray>().is_ok() {
        value.clone()
    } else {
        py.import("numpy")?.call_method1("asarray", (value,))?
    };
    let encoders: [Encoder; 8] = [
        try_encode::<f32>,
        try_encode::<f16>,
        try_encode::<f64>,
        try_encode::<i64>,
        try_encode::<i32>,
        try_encode::<i8>,
        try_encode::<u8>,
        try_encode::<bool>,
    ];
    for encode in encoders {
        if let Some(tensor) = encode(&array)? {
            return Ok(tensor);
        }
    }
    Err({
        let dtype = array
            .cast::<PyUntypedArray>()
            .map(|a| a.dtype().to_string())
            .unwrap_or_else(|_| "?".into());
        new_err(
            "TensorError",
            format!(
                "input {name:?} has dtype {dtype}, which the network does not carry \
                 (one of {}, native byte order): convert it with astype",
                DTYPE_NAMES.join(", ")
            ),
        )
    })
}

/// The named tensors of a mapping `{name: array}`, in the mapping's order.
pub(crate) fn to_named(py: Python<'_>, inputs: &Bound<'_, PyAny>) -> PyResult<Vec<NamedTensor>> {
    let mapping = inputs.cast::<PyMapping>().map_err(|_| {
        pyo3::exceptions::PyTypeError::new_err(
            "inputs must be a mapping of input names to numpy arrays",
        )
    })?;
    let len = mapping.len()?;
    if len > TENSORS_MAX {
        return Err(new_err(
            "TooLargeError",
            format!("{len} input tensors, more than the {TENSORS_MAX} a task may carry"),
        ));
    }
    let mut out = Vec::with_capacity(len);
    for item in mapping.items()?.iter() {
        let (name, value): (String, Bound<'_, PyAny>) = item.extract()?;
        let tensor = to_tensor(py, &name, &value)?;
        out.push(NamedTensor::new(name, tensor));
    }
    Ok(out)
}

fn decode<'py, T: WireElement>(
    py: Python<'py>,
    shape: &[usize],
    bytes: &[u8],
) -> PyResult<Bound<'py, PyAny>> {
    let values: Vec<T> = bytes.chunks_exact(T::SIZE).map(T::get).collect();
    let array = ArrayD::from_shape_vec(IxDyn(shape), values)
        .map_err(|e| new_err("TensorError", format!("output shape: {e}")))?;
    Ok(array.into_pyarray(py).into_any())
}

/// A numpy array holding `tensor`'s values.
pub(crate) fn to_array<'py>(py: Python<'py>, tensor: Tensor) -> PyResult<Bound<'py, PyAny>> {
    let (dtype, shape, bytes) = tensor.into_parts();
    // A valid tensor's dimensions are at most DIM_MAX (2^31), so they fit in usize.
    let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    match dtype {
        DType::F32 => decode::<f32>(py, &shape, &bytes),
        DType::F16 => decode::<f16>(py, &shape, &bytes),
        DType::F64 => decode::<f64>(py, &shape, &bytes),
        DType::I64 => decode::<i64>(py, &shape, &bytes),
        DType::I32 => decode::<i32>(py, &shape, &bytes),
        DType::I8 => decode::<i8>(py, &shape, &bytes),
        DType::U8 => decode::<u8>(py, &shape, &bytes),
        DType::Bool => decode::<bool>(py, &shape, &bytes),
        other => Err(new_err(
            "TensorError",
            format!("output dtype {other} has no numpy equivalent here"),
        )),
    }
}

/// `{name: array}` of a task's outputs, in the order the node returned them.
pub(crate) fn to_dict<'py>(
    py: Python<'py>,
    outputs: Vec<NamedTensor>,
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for NamedTensor { name, tensor } in outputs {
        dict.set_item(name, to_array(py, tensor)?)?;
    }
    Ok(dict)
}
