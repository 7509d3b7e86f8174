//! The Open Inference Protocol v2 inference request and response bodies: JSON tensors and
//! Triton's binary tensor data extension.
//!
//! A request body is a JSON object, optionally followed by raw tensor bytes: the
//! `Inference-Header-Content-Length` header then says how many bytes the JSON takes, and each
//! input whose `parameters.binary_data_size` is set takes that many bytes of what follows, in
//! input order (row-major, little-endian; booleans one byte each). JSON `data` is parsed
//! straight into the tensor's bytes (no intermediate JSON values) and may be flat or nested.
//! A response carries an output in binary form when the request asks for it (the output's
//! `parameters.binary_data`, else the request's `parameters.binary_data_output`).

use std::fmt;

use crat_core::tensor::{DType, NamedTensor, Tensor, byte_len};
use crat_core::wire::TENSORS_MAX;
use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::GatewayError;

/// The KServe v2 name of a dtype.
pub fn kserve_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "FP32",
        DType::F16 => "FP16",
        DType::F64 => "FP64",
        DType::I64 => "INT64",
        DType::I32 => "INT32",
        DType::I8 => "INT8",
        DType::U8 => "UINT8",
        DType::Bool => "BOOL",
        // A dtype added to the core later has no KServe name here yet.
        _ => "UNSUPPORTED",
    }
}

/// The dtype of a KServe v2 datatype name, if the network carries it.
pub fn dtype_of(name: &str) -> Option<DType> {
    Some(match name {
        "FP32" => DType::F32,
        "FP16" => DType::F16,
        "FP64" => DType::F64,
        "INT64" => DType::I64,
        "INT32" => DType::I32,
        "INT8" => DType::I8,
        "UINT8" => DType::U8,
        "BOOL" => DType::Bool,
        _ => return None,
    })
}

/// The Triton model-configuration name of a dtype (`TYPE_FP32`, …).
pub fn triton_name(dtype: DType) -> String {
    match dtype {
        DType::Bool => "TYPE_BOOL".to_owned(),
        d => format!("TYPE_{}", kserve_name(d)),
    }
}

/// Per-tensor and per-request `parameters` this gateway reads (others are ignored, as the
/// protocol allows).
#[derive(Debug, Default, Deserialize)]
struct Parameters {
    /// Input: the tensor's bytes follow the JSON header, this many.
    binary_data_size: Option<u64>,
    /// Requested output: return it in binary form.
    binary_data: Option<bool>,
    /// Request: the default of `binary_data` for every output.
    binary_data_output: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct InputJson<'a> {
    name: String,
    shape: Vec<u64>,
    datatype: String,
    #[serde(default)]
    parameters: Parameters,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Parameters,
}

#[derive(Debug, Deserialize)]
struct RequestJson<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(borrow)]
    inputs: Vec<InputJson<'a>>,
    #[serde(default)]
    outputs: Option<Vec<OutputJson>>,
    #[serde(default)]
    parameters: Parameters,
}

/// One output the client asked for, and whether it wants it in binary form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputRequest {
    /// The output's name.
    pub name: String,
    /// Return its bytes after the JSON header rather than as JSON numbers.
    pub binary: bool,
}

/// A decoded inference request.
#[derive(Debug)]
pub struct InferRequest {
    /// The request id to echo, if the client gave one.
    pub id: Option<String>,
    /// The inputs, as tensors.
    pub inputs: Vec<NamedTensor>,
    /// The outputs asked for (`None`: all of them, `binary_default` deciding the form).
    pub outputs: Option<Vec<OutputRequest>>,
    /// Whether outputs not named (or named without `binary_data`) are returned in binary.
    pub binary_default: bool,
}

pub(crate) fn invalid(message: impl Into<String>) -> GatewayError {
    GatewayError::InvalidRequest(message.into())
}

/// One input tensor of a request, in either protocol: its datatype name checked, then its
/// elements from `data` (given the dtype and the byte length the shape takes, which `data`
/// must produce exactly; its error names what is wrong, the input's name is added here).
pub(crate) fn input_tensor(
    name: &str,
    datatype: &str,
    shape: Vec<u64>,
    data: impl FnOnce(DType, u64) -> Result<Vec<u8>, String>,
) -> Result<NamedTensor, GatewayError> {
    let dtype = dtype_of(datatype).ok_or_else(|| {
        invalid(format!(
            "input {name:?}: datatype {datatype:?} is not one of FP32 FP16 FP64 INT64 INT32 INT8 UINT8 BOOL"
        ))
    })?;
    let bytes = byte_len(dtype, &shape).map_err(|e| invalid(format!("input {name:?}: {e}")))?;
    let data = data(dtype, bytes).map_err(|e| invalid(format!("input {name:?}: {e}")))?;
    let tensor =
        Tensor::new(dtype, shape, data).map_err(|e| invalid(format!("input {name:?}: {e}")))?;
    Ok(NamedTensor::new(name, tensor))
}

/// The outputs `asked` for by name, in the order asked; every output, in the model's order,
/// when none are named. A name the model lacks is invalid input.
pub(crate) fn pick_outputs<'o, 'a>(
    outputs: &'o [NamedTensor],
    asked: Option<impl Iterator<Item = &'a str>>,
) -> Result<Vec<&'o NamedTensor>, GatewayError> {
    let Some(asked) = asked else {
        return Ok(outputs.iter().collect());
    };
    asked
        .map(|name| {
            outputs.iter().find(|o| o.name == name).ok_or_else(|| {
                let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
                invalid(format!(
                    "the model has no output {name:?} (it has {names:?})"
                ))
            })
        })
        .collect()
}

/// Decodes a request `body` whose JSON part is `header_len` bytes (`None`: all of it).
pub fn decode_request(
    body: &[u8],
    header_len: Option<usize>,
) -> Result<InferRequest, GatewayError> {
    let header_len = header_len.unwrap_or(body.len());
    if header_len > body.len() {
        return Err(invalid(format!(
            "Inference-Header-Content-Length is {header_len} but the body has {} bytes",
            body.len()
        )));
    }
    let (header, mut binary) = body.split_at(header_len);
    let request: RequestJson<'_> =
        serde_json::from_slice(header).map_err(|e| invalid(format!("the request JSON: {e}")))?;
    if request.inputs.len() > TENSORS_MAX {
        return Err(invalid(format!("more than {TENSORS_MAX} inputs")));
    }
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in &request.inputs {
        let tensor = input_tensor(
            &input.name,
            &input.datatype,
            input.shape.clone(),
            |dtype, bytes| match (input.parameters.binary_data_size, input.data) {
                (Some(_), Some(_)) => Err("it has both binary_data_size and data".to_owned()),
                (None, None) => Err("it has no data".to_owned()),
                (Some(size), None) => {
                    if size != bytes {
                        return Err(format!(
                            "binary_data_size is {size} but shape {:?} of {} takes {bytes} bytes",
                            input.shape, input.datatype
                        ));
                    }
                    let size = usize::try_from(size)
                        .ok()
                        .filter(|&s| s <= binary.len())
                        .ok_or_else(|| {
                            format!(
                                "binary_data_size {size} is more than the {} bytes left in the body",
                                binary.len()
                            )
                        })?;
                    let (mine, rest) = binary.split_at(size);
                    binary = rest;
                    Ok(mine.to_vec())
                }
                (None, Some(raw)) => json_data(raw, dtype, bytes),
            },
        )?;
        inputs.push(tensor);
    }
    if !binary.is_empty() {
        return Err(invalid(format!(
            "{} bytes after the JSON header belong to no input",
            binary.len()
        )));
    }
    let binary_default = request.parameters.binary_data_output.unwrap_or(false);
    let outputs = match request.outputs {
        None => None,
        Some(outputs) if outputs.len() > TENSORS_MAX => {
            return Err(invalid(format!("more than {TENSORS_MAX} outputs")));
        }
        Some(outputs) => Some(
            outputs
                .into_iter()
                .map(|o| OutputRequest {
                    binary: o.parameters.binary_data.unwrap_or(binary_default),
                    name: o.name,
                })
                .collect(),
        ),
    };
    Ok(InferRequest {
        id: request.id,
        inputs,
        outputs,
        binary_default,
    })
}

/// One scalar of a request's data (a JSON number or boolean, an element of gRPC typed
/// contents).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Scalar {
    Float(f64),
    Int(i64),
    UInt(u64),
    Bool(bool),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Int(x) => write!(f, "{x}"),
            Scalar::UInt(x) => write!(f, "{x}"),
            Scalar::Bool(x) => write!(f, "{x}"),
        }
    }
}

/// Appends `value` as one element of `dtype`, little-endian; `None` if it does not fit.
pub(crate) fn push_scalar(out: &mut Vec<u8>, dtype: DType, value: Scalar) -> Option<()> {
    fn int(value: Scalar) -> Option<i128> {
        match value {
            Scalar::Int(i) => Some(i.into()),
            Scalar::UInt(u) => Some(u.into()),
            _ => None,
        }
    }
    fn float(value: Scalar) -> Option<f64> {
        match value {
            Scalar::Float(x) => Some(x),
            // Integers written without a decimal point are numbers too.
            Scalar::Int(i) => Some(i as f64),
            Scalar::UInt(u) => Some(u as f64),
            Scalar::Bool(_) => None,
        }
    }
    match dtype {
        DType::F32 => out.extend_from_slice(&(float(value)? as f32).to_le_bytes()),
        DType::F64 => out.extend_from_slice(&float(value)?.to_le_bytes()),
        DType::F16 => out.extend_from_slice(&half::f16::from_f64(float(value)?).to_le_bytes()),
        DType::I64 => out.extend_from_slice(&i64::try_from(int(value)?).ok()?.to_le_bytes()),
        DType::I32 => out.extend_from_slice(&i32::try_from(int(value)?).ok()?.to_le_bytes()),
        DType::I8 => out.extend_from_slice(&i8::try_from(int(value)?).ok()?.to_le_bytes()),
        DType::U8 => out.push(u8::try_from(int(value)?).ok()?),
        DType::Bool => match value {
            Scalar::Bool(b) => out.push(u8::from(b)),
            _ => return None,
        },
        _ => return None,
    }
    Some(())
}

/// Parses JSON `data` (flat or nested arrays, or one scalar) into exactly `bytes` bytes of
/// `dtype` elements; never holds more than that.
fn json_data(raw: &RawValue, dtype: DType, bytes: u64) -> Result<Vec<u8>, String> {
    let bytes = usize::try_from(bytes).map_err(|_| "too large for this machine".to_owned())?;
    let mut out = Vec::with_capacity(bytes);
    let mut de = serde_json::Deserializer::from_str(raw.get());
    Flatten {
        out: &mut out,
        dtype,
        bytes_max: bytes,
    }
    .deserialize(&mut de)
    .map_err(|e| e.to_string())?;
    if out.len() != bytes {
        return Err(format!(
            "data has {} elements, the shape takes {}",
            out.len() / dtype.size(),
            bytes / dtype.size()
        ));
    }
    Ok(out)
}

/// Deserializes nested arrays of scalars into `out`, element by element.
struct Flatten<'o> {
    out: &'o mut Vec<u8>,
    dtype: DType,
    bytes_max: usize,
}

impl Flatten<'_> {
    fn push<E: serde::de::Error>(&mut self, value: Scalar) -> Result<(), E> {
        if self.out.len() + self.dtype.size() > self.bytes_max {
            return Err(E::custom(format!(
                "data has more elements than the shape takes ({})",
                self.bytes_max / self.dtype.size()
            )));
        }
        push_scalar(self.out, self.dtype, value).ok_or_else(|| {
            E::custom(format!(
                "{value} is not a value of {}",
                kserve_name(self.dtype)
            ))
        })
    }
}

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("numbers or booleans, in (nested) arrays")
    }
    fn visit_bool<E: serde::de::Error>(mut self, v: bool) -> Result<(), E> {
        self.push(Scalar::Bool(v))
    }
    fn visit_i64<E: serde::de::Error>(mut self, v: i64) -> Result<(), E> {
        self.push(Scalar::Int(v))
    }
    fn visit_u64<E: serde::de::Error>(mut self, v: u64) -> Result<(), E> {
        self.push(Scalar::UInt(v))
    }
    fn visit_f64<E: serde::de::Error>(mut self, v: f64) -> Result<(), E> {
        self.push(Scalar::Float(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        // Nesting depth is bounded by serde_json's recursion limit (128).
        while seq
            .next_element_seed(Flatten {
                out: &mut *self.out,
                dtype: self.dtype,
                bytes_max: self.bytes_max,
            })?
            .is_some()
        {}
        Ok(())
    }
}

/// One output of a response: metadata, and where its data goes.
#[derive(Serialize)]
struct OutputMeta<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [u64],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinarySize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData<'a>>,
}

#[derive(Serialize)]
struct BinarySize {
    binary_data_size: usize,
}

#[derive(Serialize)]
struct ResponseJson<'a> {
    model_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    model_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputMeta<'a>>,
}

/// A tensor's elements as a flat JSON array, written straight from its bytes.
struct JsonData<'a>(&'a Tensor);

impl Serialize for JsonData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let tensor = self.0;
        let size = tensor.dtype().size();
        let bytes = tensor.bytes();
        let mut seq = s.serialize_seq(Some(bytes.len() / size))?;
        for chunk in bytes.chunks_exact(size) {
            match tensor.dtype() {
                DType::F32 => seq.serialize_element(&f32::from_le_bytes(le(chunk)))?,
                DType::F64 => seq.serialize_element(&f64::from_le_bytes(le(chunk)))?,
                DType::F16 => {
                    seq.serialize_element(&half::f16::from_le_bytes(le(chunk)).to_f32())?
                }
                DType::I64 => seq.serialize_element(&i64::from_le_bytes(le(chunk)))?,
                DType::I32 => seq.serialize_element(&i32::from_le_bytes(le(chunk)))?,
                DType::I8 => seq.serialize_element(&i8::from_le_bytes(le(chunk)))?,
                DType::U8 => seq.serialize_element(&chunk[0])?,
                DType::Bool => seq.serialize_element(&(chunk[0] != 0))?,
                _ => {
                    return Err(serde::ser::Error::custom(format!(
                        "no JSON form for {}",
                        tensor.dtype()
                    )));
                }
            }
        }
        seq.end()
    }
}

/// `chunk` as an array of its length (`chunks_exact` of the dtype's size guarantees it).
fn le<const N: usize>(chunk: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&chunk[..N]);
    a
}

/// An encoded response: the body, and the length of its JSON part when binary data follows.
#[derive(Debug)]
pub struct EncodedResponse {
    /// The whole body.
    pub body: Vec<u8>,
    /// `Some(json bytes)` when binary output data follows the JSON.
    pub header_len: Option<usize>,
}

/// Encodes the response to `request` for `outputs` of model `model_name`.
pub fn encode_response(
    model_name: &str,
    model_version: Option<&str>,
    request: &InferRequest,
    outputs: &[NamedTensor],
) -> Result<EncodedResponse, GatewayError> {
    let picked = pick_outputs(
        outputs,
        request
            .outputs
            .as_ref()
            .map(|asked| asked.iter().map(|a| a.name.as_str())),
    )?;
    let binary = |i: usize| {
        request
            .outputs
            .as_ref()
            .map_or(request.binary_default, |asked| asked[i].binary)
    };
    let wanted: Vec<(&NamedTensor, bool)> = picked
        .into_iter()
        .enumerate()
        .map(|(i, o)| (o, binary(i)))
        .collect();
    let metas = wanted
        .iter()
        .map(|(o, binary)| OutputMeta {
            name: &o.name,
            datatype: kserve_name(o.tensor.dtype()),
            shape: o.tensor.shape(),
            parameters: binary.then(|| BinarySize {
                binary_data_size: o.tensor.bytes().len(),
            }),
            data: (!binary).then_some(JsonData(&o.tensor)),
        })
        .collect();
    let json = ResponseJson {
        model_name,
        model_version,
        id: request.id.as_deref(),
        outputs: metas,
    };
    let mut body = serde_json::to_vec(&json).map_err(|e| GatewayError::Internal(e.to_string()))?;
    let header_len = body.len();
    let mut any_binary = false;
    for (o, binary) in &wanted {
        if *binary {
            any_binary = true;
            body.extend_from_slice(o.tensor.bytes());
        }
    }
    Ok(EncodedResponse {
        body,
        header_len: any_binary.then_some(header_len),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn json_inputs_flat_or_nested_become_tensors() {
        let body = br#"{"id":"7","inputs":[
            {"name":"a","shape":[2,2],"datatype":"FP32","data":[[1,2.5],[-3,4]]},
            {"name":"b","shape":[3],"datatype":"INT8","data":[-128,0,127]},
            {"name":"c","shape":[2],"datatype":"BOOL","data":[true,false]},
            {"name":"d","shape":[1],"datatype":"FP16","data":[0.5]}]}"#;
        let r = decode_request(body, None).unwrap();
        assert_eq!(r.id.as_deref(), Some("7"));
        assert_eq!(
            r.inputs[0].tensor.to_vec::<f32>().unwrap(),
            [1.0, 2.5, -3.0, 4.0]
        );
        assert_eq!(r.inputs[0].tensor.shape(), [2, 2]);
        assert_eq!(r.inputs[1].tensor.bytes(), [0x80, 0, 0x7f]);
        assert_eq!(r.inputs[2].tensor.bytes(), [1, 0]);
        assert_eq!(
            r.inputs[3].tensor.bytes(),
            half::f16::from_f32(0.5).to_le_bytes()
        );
        assert!(r.outputs.is_none());
        assert!(!r.binary_default);
    }

    #[test]
    fn wrong_json_data_is_refused_with_the_reason() {
        let cases: [(&[u8], &str); 7] = [
            (
                br#"{"inputs":[{"name":"a","shape":[3],"datatype":"FP32","data":[1,2]}]}"#,
                "2 elements",
            ),
            (
                br#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1,2]}]}"#,
                "more elements",
            ),
            (
                br#"{"inputs":[{"name":"a","shape":[1],"datatype":"INT8","data":[300]}]}"#,
                "300 is not a value of INT8",
            ),
            (
                br#"{"inputs":[{"name":"a","shape":[1],"datatype":"INT32","data":[1.5]}]}"#,
                "not a value of INT32",
            ),
            (
                br#"{"inputs":[{"name":"a","shape":[1],"datatype":"BYTES","data":["x"]}]}"#,
                "datatype \"BYTES\"",
            ),
            (
                br#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32"}]}"#,
                "no data",
            ),
            (
                br#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":["x"]}]}"#,
                "numbers or booleans",
            ),
        ];
        for (body, why) in cases {
            let e = decode_request(body, None).unwrap_err();
            assert!(matches!(e, GatewayError::InvalidRequest(_)), "{e}");
            assert!(e.to_string().contains(why), "{e} lacks {why}");
        }
    }

    #[test]
    fn binary_inputs_are_cut_from_the_body_in_order() {
        let header = br#"{"inputs":[
            {"name":"a","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}},
            {"name":"b","shape":[1],"datatype":"INT64","data":[5]},
            {"name":"c","shape":[2],"datatype":"UINT8","parameters":{"binary_data_size":2}}],
            "outputs":[{"name":"x","parameters":{"binary_data":true}},{"name":"y"}],
            "parameters":{"binary_data_output":false}}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&1.5f32.to_le_bytes());
        body.extend_from_slice(&(-2f32).to_le_bytes());
        body.extend_from_slice(&[7, 9]);
        let r = decode_request(&body, Some(header.len())).unwrap();
        assert_eq!(r.inputs[0].tensor.to_vec::<f32>().unwrap(), [1.5, -2.0]);
        assert_eq!(r.inputs[1].tensor.to_vec::<i64>().unwrap(), [5]);
        assert_eq!(r.inputs[2].tensor.bytes(), [7, 9]);
        assert_eq!(
            r.outputs.unwrap(),
            [
                OutputRequest {
                    name: "x".into(),
                    binary: true
                },
                OutputRequest {
                    name: "y".into(),
                    binary: false
                }
            ]
        );
        // A byte too many, a byte too few, a size that disagrees with the shape.
        let mut long = body.clone();
        long.push(0);
        assert!(
            decode_request(&long, Some(header.len()))
                .unwrap_err()
                .to_string()
                .contains("belong to no input")
        );
        assert!(
            decode_request(&body[..body.len() - 1], Some(header.len()))
                .unwrap_err()
                .to_string()
                .contains("left in the body")
        );
        assert!(decode_request(&body, Some(body.len() + 1)).is_err());
        let wrong = br#"{"inputs":[{"name":"a","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#;
        let mut body = wrong.to_vec();
        body.extend_from_slice(&[0; 4]);
        assert!(
            decode_request(&body, Some(wrong.len()))
                .unwrap_err()
                .to_string()
                .contains("takes 8 bytes")
        );
    }

    #[test]
    fn responses_put_binary_outputs_after_the_json() {
        let request = decode_request(
            br#"{"id":"q","inputs":[],"outputs":[{"name":"p","parameters":{"binary_data":true}},{"name":"n"}]}"#,
            None,
        )
        .unwrap();
        let outputs = vec![
            NamedTensor::new("n", Tensor::from_slice(&[2], &[1i64, -2]).unwrap()),
            NamedTensor::new("p", Tensor::from_slice(&[1, 2], &[0.25f32, 4.0]).unwrap()),
        ];
        let r = encode_response("m", Some("v"), &request, &outputs).unwrap();
        let header_len = r.header_len.unwrap();
        let json: serde_json::Value = serde_json::from_slice(&r.body[..header_len]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"model_name":"m","model_version":"v","id":"q","outputs":[
                {"name":"p","datatype":"FP32","shape":[1,2],"parameters":{"binary_data_size":8}},
                {"name":"n","datatype":"INT64","shape":[2],"data":[1,-2]}]})
        );
        assert_eq!(&r.body[header_len..], outputs[1].tensor.bytes());

        // No outputs named: all of them, in JSON, and no binary part.
        let all = decode_request(br#"{"inputs":[]}"#, None).unwrap();
        let r = encode_response("m", None, &all, &outputs).unwrap();
        assert!(r.header_len.is_none());
        let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(json["outputs"][1]["data"], serde_json::json!([0.25, 4.0]));

        let unknown = decode_request(br#"{"inputs":[],"outputs":[{"name":"zz"}]}"#, None).unwrap();
        assert!(encode_response("m", None, &unknown, &outputs).is_err());
    }

    #[test]
    fn datatype_names_round_trip() {
        for d in DType::ALL {
            assert_eq!(dtype_of(kserve_name(d)), Some(d));
            assert!(triton_name(d).starts_with("TYPE_"));
        }
    }
}
