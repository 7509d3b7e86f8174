//! [`ndarray`] conversions: arrays in, [`NamedTensor`]s out, and back.
//!
//! Every [`Element`] type converts (`f32`, `f64`, `i64`, `i32`, `i8`, `u8`, `bool`); `float16`
//! tensors have no element type here and are read with [`Tensor::bytes`]. Arrays in any memory
//! layout are accepted and copied in logical (row-major) order.
//!
//! ```
//! use crat_sdk::convert::{array, tensor};
//! use ndarray::{ArrayD, IxDyn};
//! let x = ArrayD::from_shape_fn(IxDyn(&[2, 3]), |i| (i[0] * 3 + i[1]) as f32);
//! let t = tensor("input", x.view())?;
//! assert_eq!(t.tensor.shape(), &[2, 3]);
//! assert_eq!(array::<f32>(&t.tensor)?, x);
//! // Reading it as another element type is a typed error.
//! assert!(array::<i64>(&t.tensor).is_err());
//! # Ok::<(), crat_sdk::Error>(())
//! ```

use crat_core::tensor::{Element, NamedTensor, Tensor};
use ndarray::{ArrayBase, ArrayD, Data, Dimension, IxDyn};

use crate::Error;

/// A tensor named `name` holding `array`'s elements and shape.
pub fn tensor<E, S, D>(
    name: impl Into<String>,
    array: ArrayBase<S, D>,
) -> Result<NamedTensor, Error>
where
    E: Element,
    S: Data<Elem = E>,
    D: Dimension,
{
    Ok(NamedTensor::new(name, to_tensor(&array)?))
}

/// The [`Tensor`] of `array` (elements in logical row-major order).
pub fn to_tensor<E, S, D>(array: &ArrayBase<S, D>) -> Result<Tensor, Error>
where
    E: Element,
    S: Data<Elem = E>,
    D: Dimension,
{
    let shape: Vec<u64> = array.shape().iter().map(|&d| d as u64).collect();
    let t = match array.as_slice() {
        Some(values) => Tensor::from_slice(&shape, values)?,
        None => {
            let values: Vec<E> = array.iter().copied().collect();
            Tensor::from_slice(&shape, &values)?
        }
    };
    Ok(t)
}

/// The elements of `t` as an array of its shape; `E` must be its dtype.
pub fn array<E: Element>(t: &Tensor) -> Result<ArrayD<E>, Error> {
    let values = t.to_vec::<E>()?;
    let shape = t
        .shape()
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| Error::Shape(format!("dimension {d} too large"))))
        .collect::<Result<Vec<usize>, Error>>()?;
    ArrayD::from_shape_vec(IxDyn(&shape), values).map_err(|e| Error::Shape(e.to_string()))
}

/// The tensor named `name` among `tensors` (e.g. a task's outputs), as an array.
pub fn named_array<E: Element>(tensors: &[NamedTensor], name: &str) -> Result<ArrayD<E>, Error> {
    let t = tensors
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| Error::NoSuchTensor(name.to_owned()))?;
    array(&t.tensor)
}
