//! ndarray ↔ tensor conversions for every element type.
#![allow(clippy::unwrap_used)]

use crat_core::tensor::{DType, Element, Tensor};
use crat_sdk::Error;
use crat_sdk::convert::{array, named_array, tensor, to_tensor};
use ndarray::{Array, ArrayD, IxDyn, array};

fn round_trip<E: Element + PartialEq + std::fmt::Debug>(values: Vec<E>, shape: &[usize]) {
    let a = ArrayD::from_shape_vec(IxDyn(shape), values).unwrap();
    let t = tensor("t", a.view()).unwrap();
    assert_eq!(t.name, "t");
    assert_eq!(t.tensor.dtype(), E::DTYPE);
    let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    assert_eq!(t.tensor.shape(), dims.as_slice());
    assert_eq!(array::<E>(&t.tensor).unwrap(), a);
}

#[test]
fn every_element_type_round_trips() {
    round_trip(vec![1.5f32, -2.0, 3.25, 0.0, 1e-3, 7.0], &[2, 3]);
    round_trip(vec![1.5f64, -2.0, f64::MAX, 0.0], &[4]);
    round_trip(vec![i64::MIN, -1, 0, i64::MAX], &[2, 1, 2]);
    round_trip(vec![i32::MIN, 5, 6, i32::MAX, 0, 0], &[3, 2]);
    round_trip(vec![-128i8, 0, 127], &[3]);
    round_trip(vec![0u8, 128, 255, 1], &[1, 4]);
    round_trip(vec![true, false, false, true], &[2, 2]);
    round_trip(vec![42.0f32], &[]);
    round_trip(Vec::<f32>::new(), &[0, 5]);
}

#[test]
fn non_standard_layouts_are_copied_in_logical_order() {
    let a = array![[1i32, 2, 3], [4, 5, 6]];
    let t = to_tensor(&a.t()).unwrap();
    assert_eq!(t.shape(), &[3, 2]);
    assert_eq!(t.to_vec::<i32>().unwrap(), vec![1, 4, 2, 5, 3, 6]);
    let stepped = Array::from_iter(0u8..10);
    let t = to_tensor(&stepped.slice(ndarray::s![..;3])).unwrap();
    assert_eq!(t.to_vec::<u8>().unwrap(), vec![0, 3, 6, 9]);
}

#[test]
fn dtype_mismatch_and_missing_names_are_typed_errors() {
    let t = Tensor::from_slice(&[2], &[1.0f32, 2.0]).unwrap();
    let err = array::<i64>(&t).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Tensor(crat_core::tensor::TensorError::DType {
                requested: DType::I64,
                actual: DType::F32
            })
        ),
        "{err}"
    );
    let outs = vec![crat_core::tensor::NamedTensor::new("y", t)];
    assert_eq!(named_array::<f32>(&outs, "y").unwrap().len(), 2);
    assert!(matches!(
        named_array::<f32>(&outs, "z").unwrap_err(),
        Error::NoSuchTensor(_)
    ));
}
