//! Input validation against a model's declared inputs, before anything runs.
//!
//! Every request is checked for names (each declared input exactly once, nothing else),
//! dtypes, ranks, fixed dimensions, consistent symbolic dimensions (the same symbol has the
//! same size in every input) and total byte size. The result is the tensors in the model's
//! input order, ready for [`LoadedModel::run`](crate::LoadedModel::run).

use std::collections::HashMap;

use crat_core::tensor::{DType, NamedTensor, Tensor};

use crate::{Dim, ModelInfo};

/// Why a request's inputs do not fit the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// A declared input is missing.
    #[error("missing input {0:?}")]
    Missing(String),
    /// An input the model does not declare.
    #[error("unknown input {0:?}")]
    Unknown(String),
    /// The same input given twice.
    #[error("input {0:?} given twice")]
    Duplicate(String),
    /// Wrong element type.
    #[error("input {name:?} is {got}, the model wants {expected}")]
    DType {
        /// The input.
        name: String,
        /// What the model declares.
        expected: DType,
        /// What was sent.
        got: DType,
    },
    /// Wrong number of dimensions.
    #[error("input {name:?} has rank {got}, the model wants {expected}")]
    Rank {
        /// The input.
        name: String,
        /// Declared rank.
        expected: usize,
        /// Sent rank.
        got: usize,
    },
    /// A fixed dimension differs.
    #[error("input {name:?} dimension {index} is {got}, the model wants {expected}")]
    Dim {
        /// The input.
        name: String,
        /// Which dimension.
        index: usize,
        /// Declared size.
        expected: u64,
        /// Sent size.
        got: u64,
    },
    /// A symbolic dimension has different sizes in different places.
    #[error("dimension {symbol:?} is {first} in one place and {second} in another")]
    Symbol {
        /// The symbol.
        symbol: String,
        /// First size seen.
        first: u64,
        /// Conflicting size.
        second: u64,
    },
    /// The inputs together exceed the deployment's input limit.
    #[error("inputs total {bytes} bytes, above the limit of {max}")]
    TooLarge {
        /// Total input bytes.
        bytes: u64,
        /// The limit.
        max: u64,
    },
}

/// Checks `inputs` against `info` and returns them in the model's input order.
pub fn validate_inputs(
    info: &ModelInfo,
    inputs: Vec<NamedTensor>,
    input_bytes_max: u64,
) -> Result<Vec<Tensor>, InputError> {
    let bytes = crat_core::tensor::tensors_bytes(&inputs);
    if bytes > input_bytes_max {
        return Err(InputError::TooLarge {
            bytes,
            max: input_bytes_max,
        });
    }
    let mut by_name: HashMap<String, Tensor> = HashMap::with_capacity(inputs.len());
    for t in inputs {
        if !info.inputs.iter().any(|s| s.name == t.name) {
            return Err(InputError::Unknown(t.name));
        }
        if by_name.contains_key(&t.name) {
            return Err(InputError::Duplicate(t.name));
        }
        by_name.insert(t.name, t.tensor);
    }
    let mut symbols: HashMap<&str, u64> = HashMap::new();
    let mut ordered = Vec::with_capacity(info.inputs.len());
    for spec in &info.inputs {
        let t = by_name
            .remove(&spec.name)
            .ok_or_else(|| InputError::Missing(spec.name.clone()))?;
        if t.dtype() != spec.dtype {
            return Err(InputError::DType {
                name: spec.name.clone(),
                expected: spec.dtype,
                got: t.dtype(),
            });
        }
        if t.shape().len() != spec.shape.len() {
            return Err(InputError::Rank {
                name: spec.name.clone(),
                expected: spec.shape.len(),
                got: t.shape().len(),
            });
        }
        for (index, (dim, &got)) in spec.shape.iter().zip(t.shape()).enumerate() {
            match dim {
                Dim::Fixed(expected) if *expected != got => {
                    return Err(InputError::Dim {
                        name: spec.name.clone(),
                        index,
                        expected: *expected,
                        got,
                    });
                }
                Dim::Fixed(_) => {}
                // An unnamed unknown size constrains nothing across inputs.
                Dim::Symbolic(_) if !dim.is_named_symbol() => {}
                Dim::Symbolic(s) => {
                    let first = *symbols.entry(s.as_str()).or_insert(got);
                    if first != got {
                        return Err(InputError::Symbol {
                            symbol: s.clone(),
                            first,
                            second: got,
                        });
                    }
                }
            }
        }
        ordered.push(t);
    }
    Ok(ordered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TensorSpec;

    fn info() -> ModelInfo {
        ModelInfo {
            inputs: vec![
                TensorSpec {
                    name: "a".into(),
                    dtype: DType::F32,
                    shape: vec![Dim::Symbolic("N".into()), Dim::Fixed(2)],
                },
                TensorSpec {
                    name: "b".into(),
                    dtype: DType::I64,
                    shape: vec![Dim::Symbolic("N".into())],
                },
            ],
            outputs: vec![],
        }
    }

    fn a(n: u64) -> NamedTensor {
        NamedTensor::new("a", Tensor::zeros(DType::F32, &[n, 2]).unwrap())
    }

    fn b(n: u64) -> NamedTensor {
        NamedTensor::new("b", Tensor::zeros(DType::I64, &[n]).unwrap())
    }

    #[test]
    fn orders_and_accepts() {
        let out = validate_inputs(&info(), vec![b(3), a(3)], 1 << 20).unwrap();
        assert_eq!(out[0].shape(), &[3, 2]);
        assert_eq!(out[1].shape(), &[3]);
    }

    #[test]
    fn rejects_each_kind_of_mismatch() {
        let i = info();
        let v = |inputs| validate_inputs(&i, inputs, 1 << 20);
        assert_eq!(v(vec![a(1)]), Err(InputError::Missing("b".into())));
        assert!(matches!(
            v(vec![
                a(1),
                b(1),
                NamedTensor::new("c", Tensor::zeros(DType::U8, &[1]).unwrap())
            ]),
            Err(InputError::Unknown(_))
        ));
        assert_eq!(
            v(vec![a(1), a(1), b(1)]),
            Err(InputError::Duplicate("a".into()))
        );
        assert!(matches!(
            v(vec![
                NamedTensor::new("a", Tensor::zeros(DType::F64, &[1, 2]).unwrap()),
                b(1)
            ]),
            Err(InputError::DType { .. })
        ));
        assert!(matches!(
            v(vec![
                NamedTensor::new("a", Tensor::zeros(DType::F32, &[2]).unwrap()),
                b(1)
            ]),
            Err(InputError::Rank { .. })
        ));
        assert!(matches!(
            v(vec![
                NamedTensor::new("a", Tensor::zeros(DType::F32, &[1, 3]).unwrap()),
                b(1)
            ]),
            Err(InputError::Dim { index: 1, .. })
        ));
        assert!(matches!(
            v(vec![a(2), b(3)]),
            Err(InputError::Symbol { .. })
        ));
        assert!(matches!(
            validate_inputs(&i, vec![a(100), b(100)], 100),
            Err(InputError::TooLarge { .. })
        ));
    }
}
