//! Tensors of the gRPC messages: a `ModelInferRequest`'s inputs (typed `contents` or
//! `raw_input_contents`) to the network's tensors, and its outputs back into a
//! `ModelInferResponse`.
//!
//! A response carries its outputs in the form the request used: raw bytes
//! (`raw_output_contents`, what `tritonclient` sends and reads) for a request with
//! `raw_input_contents` or with no inputs, typed `contents` otherwise, except that an output
//! with no typed field (FP16) makes the whole response raw (the protocol forbids mixing).

use crat_core::tensor::{DType, NamedTensor, Tensor};
use crat_core::wire::TENSORS_MAX;

use super::inference::model_infer_request::InferInputTensor;
use super::inference::model_infer_response::InferOutputTensor;
use super::inference::{InferTensorContents, ModelInferRequest, ModelInferResponse};
use crate::codec::{Scalar, input_tensor, invalid, kserve_name, pick_outputs, push_scalar};
use crate::error::GatewayError;

/// The tensors of a decoded request.
#[derive(Debug)]
pub(crate) struct Decoded {
    /// The inputs.
    pub(crate) inputs: Vec<NamedTensor>,
    /// The outputs asked for by name (`None`: every output).
    pub(crate) outputs: Option<Vec<String>>,
    /// Whether the request's tensors were raw bytes, and so the response's are.
    pub(crate) raw: bool,
}

/// Takes the tensors out of `request` (its inputs' data is moved, not copied).
pub(crate) fn decode(request: &mut ModelInferRequest) -> Result<Decoded, GatewayError> {
    if request.inputs.len() > TENSORS_MAX {
        return Err(invalid(format!("more than {TENSORS_MAX} inputs")));
    }
    if request.outputs.len() > TENSORS_MAX {
        return Err(invalid(format!("more than {TENSORS_MAX} outputs")));
    }
    let raw = !request.raw_input_contents.is_empty();
    if raw && request.raw_input_contents.len() != request.inputs.len() {
        return Err(invalid(format!(
            "{} raw_input_contents for {} inputs: one per input, in order",
            request.raw_input_contents.len(),
            request.inputs.len()
        )));
    }
    let mut raw_contents = std::mem::take(&mut request.raw_input_contents).into_iter();
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in &request.inputs {
        let shape = shape_of(input)?;
        let bytes = raw_contents.next();
        inputs.push(input_tensor(
            &input.name,
            &input.datatype,
            shape,
            |dtype, len| match (bytes, &input.contents) {
                (Some(_), Some(_)) => Err(
                    "it sets contents while the request has raw_input_contents (one or the other)"
                        .to_owned(),
                ),
                (Some(bytes), None) if bytes.len() as u64 == len => Ok(bytes),
                (Some(bytes), None) => Err(format!(
                    "its raw_input_contents has {} bytes, the shape takes {len}",
                    bytes.len()
                )),
                (None, Some(contents)) => typed_bytes(dtype, contents, len),
                (None, None) => Err("it has no contents".to_owned()),
            },
        )?);
    }
    let outputs = (!request.outputs.is_empty()).then(|| {
        request
            .outputs
            .iter_mut()
            .map(|o| std::mem::take(&mut o.name))
            .collect()
    });
    Ok(Decoded {
        inputs,
        outputs,
        raw: raw || request.inputs.is_empty(),
    })
}

/// An input's shape; a negative dimension is invalid.
fn shape_of(input: &InferInputTensor) -> Result<Vec<u64>, GatewayError> {
    input
        .shape
        .iter()
        .map(|&d| u64::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| {
            invalid(format!(
                "input {:?}: shape {:?} has a negative dimension",
                input.name, input.shape
            ))
        })
}

/// The name of the typed field that holds elements of `dtype`, and its length in `c`; `None`
/// for FP16, which has none.
fn typed_field(dtype: DType, c: &InferTensorContents) -> Option<(&'static str, usize)> {
    Some(match dtype {
        DType::F32 => ("fp32_contents", c.fp32_contents.len()),
        DType::F64 => ("fp64_contents", c.fp64_contents.len()),
        DType::I64 => ("int64_contents", c.int64_contents.len()),
        DType::I32 | DType::I8 => ("int_contents", c.int_contents.len()),
        DType::U8 => ("uint_contents", c.uint_contents.len()),
        DType::Bool => ("bool_contents", c.bool_contents.len()),
        _ => return None,
    })
}

/// Typed contents as exactly `len` bytes of `dtype` elements.
fn typed_bytes(dtype: DType, c: &InferTensorContents, len: u64) -> Result<Vec<u8>, String> {
    let Some((field, n)) = typed_field(dtype, c) else {
        return Err(format!(
            "{} has no typed contents: send it as raw_input_contents",
            kserve_name(dtype)
        ));
    };
    let set = c.bool_contents.len()
        + c.int_contents.len()
        + c.int64_contents.len()
        + c.uint_contents.len()
        + c.uint64_contents.len()
        + c.fp32_contents.len()
        + c.fp64_contents.len()
        + c.bytes_contents.len();
    if set != n {
        return Err(format!(
            "{} elements go in {field} and no other field of contents",
            kserve_name(dtype)
        ));
    }
    let elements = len / dtype.size() as u64;
    if n as u64 != elements {
        return Err(format!(
            "{field} has {n} elements, the shape takes {elements}"
        ));
    }
    let mut out = Vec::with_capacity(n * dtype.size());
    let mut push = |value: Scalar| {
        push_scalar(&mut out, dtype, value)
            .ok_or_else(|| format!("{value} is not a value of {}", kserve_name(dtype)))
    };
    match dtype {
        DType::F32 => c
            .fp32_contents
            .iter()
            .try_for_each(|&x| push(Scalar::Float(x.into())))?,
        DType::F64 => c
            .fp64_contents
            .iter()
            .try_for_each(|&x| push(Scalar::Float(x)))?,
        DType::I64 => c
            .int64_contents
            .iter()
            .try_for_each(|&x| push(Scalar::Int(x)))?,
        DType::I32 | DType::I8 => c
            .int_contents
            .iter()
            .try_for_each(|&x| push(Scalar::Int(x.into())))?,
        DType::U8 => c
            .uint_contents
            .iter()
            .try_for_each(|&x| push(Scalar::UInt(x.into())))?,
        DType::Bool => c
            .bool_contents
            .iter()
            .try_for_each(|&x| push(Scalar::Bool(x)))?,
        _ => return Err(format!("{dtype} has no typed contents")),
    }
    Ok(out)
}

/// A tensor's elements in the typed field of its dtype; `None` for FP16.
fn typed_contents(t: &Tensor) -> Option<InferTensorContents> {
    let mut c = InferTensorContents::default();
    match t.dtype() {
        DType::F32 => c.fp32_contents = t.to_vec::<f32>().ok()?,
        DType::F64 => c.fp64_contents = t.to_vec::<f64>().ok()?,
        DType::I64 => c.int64_contents = t.to_vec::<i64>().ok()?,
        DType::I32 => c.int_contents = t.to_vec::<i32>().ok()?,
        DType::I8 => {
            c.int_contents = t.bytes().iter().map(|&b| i32::from(b as i8)).collect();
        }
        DType::U8 => c.uint_contents = t.bytes().iter().map(|&b| u32::from(b)).collect(),
        DType::Bool => c.bool_contents = t.bytes().iter().map(|&b| b != 0).collect(),
        _ => return None,
    }
    Some(c)
}

/// The response to a request `decoded` as asked, with the model's `outputs`.
pub(crate) fn encode(
    model_name: String,
    model_version: String,
    id: String,
    decoded: &Decoded,
    outputs: &[NamedTensor],
) -> Result<ModelInferResponse, GatewayError> {
    let picked = pick_outputs(
        outputs,
        decoded
            .outputs
            .as_ref()
            .map(|names| names.iter().map(String::as_str)),
    )?;
    let typed: Option<Vec<InferTensorContents>> = if decoded.raw {
        None
    } else {
        picked.iter().map(|o| typed_contents(&o.tensor)).collect()
    };
    let mut response = ModelInferResponse {
        model_name,
        model_version,
        id,
        ..Default::default()
    };
    let mut typed = typed.map(Vec::into_iter);
    for o in &picked {
        let shape = o
            .tensor
            .shape()
            .iter()
            .map(|&d| i64::try_from(d))
            .collect::<Result<_, _>>()
            .map_err(|_| {
                GatewayError::Internal(format!("output {:?}: a dimension over i64", o.name))
            })?;
        let contents = typed.as_mut().and_then(Iterator::next);
        if contents.is_none() {
            response.raw_output_contents.push(o.tensor.bytes().to_vec());
        }
        response.outputs.push(InferOutputTensor {
            name: o.name.clone(),
            datatype: kserve_name(o.tensor.dtype()).to_owned(),
            shape,
            parameters: Default::default(),
            contents,
        });
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn input(
        name: &str,
        datatype: &str,
        shape: &[i64],
        contents: Option<InferTensorContents>,
    ) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            parameters: Default::default(),
            contents,
        }
    }

    #[test]
    fn typed_contents_become_tensors_and_come_back_typed() {
        let mut request = ModelInferRequest {
            inputs: vec![
                input(
                    "a",
                    "FP32",
                    &[2],
                    Some(InferTensorContents {
                        fp32_contents: vec![1.5, -2.0],
                        ..Default::default()
                    }),
                ),
                input(
                    "b",
                    "INT8",
                    &[3],
                    Some(InferTensorContents {
                        int_contents: vec![-128, 0, 127],
                        ..Default::default()
                    }),
                ),
                input(
                    "c",
                    "BOOL",
                    &[2],
                    Some(InferTensorContents {
                        bool_contents: vec![true, false],
                        ..Default::default()
                    }),
                ),
                input(
                    "d",
                    "UINT8",
                    &[1],
                    Some(InferTensorContents {
                        uint_contents: vec![255],
                        ..Default::default()
                    }),
                ),
            ],
            ..Default::default()
        };
        let d = decode(&mut request).unwrap();
        assert!(!d.raw);
        assert_eq!(d.inputs[0].tensor.to_vec::<f32>().unwrap(), [1.5, -2.0]);
        assert_eq!(d.inputs[1].tensor.bytes(), [0x80, 0, 0x7f]);
        assert_eq!(d.inputs[2].tensor.bytes(), [1, 0]);
        assert_eq!(d.inputs[3].tensor.bytes(), [255]);
        let r = encode("m".into(), String::new(), "7".into(), &d, &d.inputs).unwrap();
        assert!(r.raw_output_contents.is_empty());
        assert_eq!(
            r.outputs[1].contents.as_ref().unwrap().int_contents,
            [-128, 0, 127]
        );
        assert_eq!(
            r.outputs[2].contents.as_ref().unwrap().bool_contents,
            [true, false]
        );
        assert_eq!(r.outputs[0].shape, [2]);
        assert_eq!(r.id, "7");
    }

    #[test]
    fn raw_contents_become_tensors_and_come_back_raw_in_the_order_asked() {
        let mut request = ModelInferRequest {
            inputs: vec![
                input("a", "FP16", &[2], None),
                input("b", "INT64", &[1], None),
            ],
            outputs: vec![Default::default(), Default::default()],
            raw_input_contents: vec![vec![0, 0x3c, 0, 0xc0], 5i64.to_le_bytes().to_vec()],
            ..Default::default()
        };
        request.outputs[0].name = "b".into();
        request.outputs[1].name = "a".into();
        let d = decode(&mut request).unwrap();
        assert!(d.raw);
        let r = encode("m".into(), String::new(), String::new(), &d, &d.inputs).unwrap();
        assert_eq!(r.outputs[0].name, "b");
        assert!(r.outputs.iter().all(|o| o.contents.is_none()));
        assert_eq!(
            r.raw_output_contents,
            [5i64.to_le_bytes().to_vec(), vec![0, 0x3c, 0, 0xc0]]
        );
    }

    #[test]
    fn an_fp16_output_makes_a_typed_response_raw() {
        let outputs = [
            NamedTensor::new(
                "h",
                Tensor::new(DType::F16, vec![1], vec![0, 0x3c]).unwrap(),
            ),
            NamedTensor::new("f", Tensor::from_slice(&[1], &[1.0f32]).unwrap()),
        ];
        let d = Decoded {
            inputs: vec![],
            outputs: None,
            raw: false,
        };
        let r = encode("m".into(), String::new(), String::new(), &d, &outputs).unwrap();
        assert_eq!(r.raw_output_contents.len(), 2);
        assert!(r.outputs.iter().all(|o| o.contents.is_none()));
    }

    #[test]
    fn wrong_tensors_are_refused_with_the_reason() {
        let fp32 = |v: Vec<f32>| {
            Some(InferTensorContents {
                fp32_contents: v,
                ..Default::default()
            })
        };
        let cases: Vec<(ModelInferRequest, &str)> = vec![
            (
                ModelInferRequest {
                    inputs: vec![input("a", "FP32", &[3], fp32(vec![1.0]))],
                    ..Default::default()
                },
                "fp32_contents has 1 elements, the shape takes 3",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input("a", "FP32", &[-1], fp32(vec![1.0]))],
                    ..Default::default()
                },
                "negative dimension",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input(
                        "a",
                        "INT8",
                        &[1],
                        Some(InferTensorContents {
                            int_contents: vec![300],
                            ..Default::default()
                        }),
                    )],
                    ..Default::default()
                },
                "300 is not a value of INT8",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input("a", "INT32", &[1], fp32(vec![1.0]))],
                    ..Default::default()
                },
                "go in int_contents",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input("a", "FP16", &[1], fp32(vec![1.0]))],
                    ..Default::default()
                },
                "raw_input_contents",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input("a", "BYTES", &[1], None)],
                    ..Default::default()
                },
                "datatype \"BYTES\"",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input("a", "FP32", &[1], None)],
                    ..Default::default()
                },
                "no contents",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input("a", "FP32", &[1], fp32(vec![1.0]))],
                    raw_input_contents: vec![vec![0; 4]],
                    ..Default::default()
                },
                "one or the other",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input("a", "FP32", &[2], None)],
                    raw_input_contents: vec![vec![0; 4]],
                    ..Default::default()
                },
                "has 4 bytes, the shape takes 8",
            ),
            (
                ModelInferRequest {
                    inputs: vec![
                        input("a", "FP32", &[1], None),
                        input("b", "FP32", &[1], None),
                    ],
                    raw_input_contents: vec![vec![0; 4]],
                    ..Default::default()
                },
                "1 raw_input_contents for 2 inputs",
            ),
        ];
        for (mut request, why) in cases {
            let e = decode(&mut request).unwrap_err();
            assert!(matches!(e, GatewayError::InvalidRequest(_)), "{e}");
            assert!(e.to_string().contains(why), "{e} lacks {why}");
        }
        let d = Decoded {
            inputs: vec![],
            outputs: Some(vec!["zz".into()]),
            raw: true,
        };
        assert!(encode(String::new(), String::new(), String::new(), &d, &[]).is_err());
    }
}
