//! The properties the fuzz targets check, one function per target, so that each target in
//! `fuzz_targets/` is one line and the checks can be read (and replayed) in one place.
//!
//! Every check has the same shape: decoding arbitrary bytes must not panic; when a decode
//! succeeds, the value must encode back to exactly the input (binary formats, which are
//! canonical) or reach a fixpoint after one round trip (JSON). A violated property panics,
//! which libFuzzer reports as a crash and saves the input under `fuzz/artifacts/<target>/`.

use std::fmt::Debug;

use crate::frame::{
    CONTROL_BYTES_MAX, Conversation, Frame, FrameError, FrameLimits, LEN_PREFIX_BYTES, check_prefix,
};
use crat_core::gpu_table::GpuTable;
use crat_core::id::{DeploymentId, KeyId, ModelId, NodeId, PeerAddr, SdkKey, TaskId};
use crat_core::sign::{
    REGISTRATION_AGE_S_MAX, Registration, RegistrationError, Signed, Ticket, TicketError,
    TicketVerifier,
};
use crat_core::tensor::{self, DType, NamedTensor, RANK_MAX, Tensor};
use crat_core::wire::{
    self, ClientRequest, ClientToNode, DispatcherPush, DispatcherReply, DispatcherResponse,
    Message, NodeAck, NodeRequest, NodeToClient,
};
use crat_rewards::{RoundInputs, RoundOutcome};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// `crat_transport::frame`, compiled from its source file: the framing code needs only
/// `crat-core`, while depending on `crat-transport` would build quinn, rustls, ring and tokio
/// with fuzzing instrumentation (minutes of CI time) for nothing the targets reach.
#[allow(dead_code, unreachable_pub)]
#[path = "../../crates/transport/src/frame.rs"]
pub mod frame;

// ---------------------------------------------------------------------------------------------
// wire messages

/// `wire::decode::<M>`: never panics; what it accepts re-encodes to exactly `data`.
pub fn wire_message<M: Message + PartialEq + Debug>(data: &[u8]) -> Option<M> {
    let msg = wire::decode::<M>(data).ok()?;
    let again = wire::encode(&msg).expect("a decoded message encodes");
    assert_eq!(
        again, data,
        "wire::decode accepted a non-canonical encoding of {msg:?}"
    );
    assert_eq!(wire::encoded_len(&msg).ok(), Some(data.len()));
    Some(msg)
}

/// Decodes `data` as every message type of the three conversations (each must hold the
/// canonical round-trip property); returns how many types accepted it.
pub fn wire_all(data: &[u8]) -> usize {
    [
        wire_message::<NodeRequest>(data).is_some(),
        wire_message::<DispatcherReply>(data).is_some(),
        wire_message::<DispatcherPush>(data).is_some(),
        wire_message::<NodeAck>(data).is_some(),
        wire_message::<ClientRequest>(data).is_some(),
        wire_message::<DispatcherResponse>(data).is_some(),
        wire_message::<ClientToNode>(data).is_some(),
        wire_message::<NodeToClient>(data).is_some(),
    ]
    .into_iter()
    .filter(|&ok| ok)
    .count()
}

/// The `wire` target: every message enum, with the version header.
pub fn wire(data: &[u8]) {
    wire_all(data);
}

// ---------------------------------------------------------------------------------------------
// frames

/// A frame body decoded as `M` re-frames to exactly `frame`, under `max` and no smaller cap.
fn reframe<M: Message + PartialEq + Debug>(frame: &Frame, max: u32) {
    let Ok(msg) = frame.decode::<M>() else {
        return;
    };
    let again = Frame::encode(&msg, max).expect("a decoded frame body re-encodes under its cap");
    assert_eq!(
        again.as_bytes(),
        frame.as_bytes(),
        "{msg:?} re-framed differently"
    );
    let len = frame.body_len() as u32;
    if len > 0 {
        assert_eq!(
            Frame::encode(&msg, len - 1),
            Err(FrameError::TooLarge {
                len: u64::from(len),
                max: len - 1
            })
        );
    }
}

/// What [`Frame::parse`] must answer for `data` under `max`, worked out independently.
fn expected_parse(data: &[u8], max: u32) -> Result<(), FrameError> {
    let Some(prefix) = data.first_chunk::<LEN_PREFIX_BYTES>() else {
        return Err(FrameError::Truncated {
            expected: LEN_PREFIX_BYTES as u64,
            got: data.len() as u64,
        });
    };
    let len = u64::from(u32::from_le_bytes(*prefix));
    let got = (data.len() - LEN_PREFIX_BYTES) as u64;
    if len > u64::from(max) {
        Err(FrameError::TooLarge { len, max })
    } else if got < len {
        Err(FrameError::Truncated {
            expected: LEN_PREFIX_BYTES as u64 + len,
            got: data.len() as u64,
        })
    } else if got > len {
        Err(FrameError::Trailing(got - len))
    } else {
        Ok(())
    }
}

/// The `frame` target: the length-prefixed frame parser with its caps, then the body as
/// every message type.
///
/// - [`Frame::parse`] gives exactly the answer the framing rules give (checked against
///   [`expected_parse`]) under the control cap, the client↔node cap, and caps just at and
///   just below the prefix's length; [`check_prefix`] agrees with it.
/// - An accepted frame is the input, byte for byte; a body that decodes as a message
///   re-frames to the same bytes and is refused by a cap one byte smaller.
pub fn frame(data: &[u8]) {
    let limits = FrameLimits::default();
    let mut caps = vec![
        CONTROL_BYTES_MAX,
        limits.frame_bytes_max(Conversation::ClientNode),
        limits.frame_bytes_max(Conversation::NodeDispatcher),
        0,
    ];
    if let Some(prefix) = data.first_chunk::<LEN_PREFIX_BYTES>() {
        let len = u32::from_le_bytes(*prefix);
        caps.push(len);
        caps.push(len.saturating_sub(1));
        for &max in &caps {
            match check_prefix(*prefix, max) {
                Ok(n) => assert!(len <= max && n == len as usize),
                Err(e) => assert_eq!(
                    e,
                    FrameError::TooLarge {
                        len: u64::from(len),
                        max
                    }
                ),
            }
        }
    }
    for max in caps {
        let parsed = Frame::parse(data.to_vec(), max);
        let verdict = parsed.as_ref().map(|_| ()).map_err(Clone::clone);
        assert_eq!(verdict, expected_parse(data, max), "cap {max}");
        let Ok(frame) = parsed else { continue };
        assert_eq!(frame.as_bytes(), data);
        assert_eq!(frame.body(), &data[LEN_PREFIX_BYTES..]);
        assert!(frame.body_len() <= max as usize);
        reframe::<NodeRequest>(&frame, max);
        reframe::<DispatcherReply>(&frame, max);
        reframe::<DispatcherPush>(&frame, max);
        reframe::<NodeAck>(&frame, max);
        reframe::<ClientRequest>(&frame, max);
        reframe::<DispatcherResponse>(&frame, max);
        reframe::<ClientToNode>(&frame, max);
        reframe::<NodeToClient>(&frame, max);
    }
}

// ---------------------------------------------------------------------------------------------
// postcard values carried inside messages (tickets, registrations, tensors)

/// Decodes exactly one postcard `T` from `data` (no trailing bytes), the way [`wire::decode`]
/// decodes a message body. If re-encoding takes as many bytes as the input, it must *be* the
/// input: [`wire::decode`] relies on this (it rejects only encodings whose re-encoding is
/// shorter), so a violation here is a non-canonical encoding the wire would accept.
pub fn postcard_value<T: Serialize + DeserializeOwned + PartialEq + Debug>(
    data: &[u8],
) -> Option<T> {
    let (value, rest) = postcard::take_from_bytes::<T>(data).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let again = postcard::to_stdvec(&value).expect("a decoded value encodes");
    assert!(again.len() <= data.len(), "re-encoding {value:?} grew");
    if again.len() != data.len() {
        // Over-long varints: wire::decode refuses these (NonCanonical).
        return None;
    }
    assert_eq!(
        again, data,
        "same-length non-canonical encoding of {value:?}"
    );
    let back: T = postcard::from_bytes(&again).expect("a re-encoded value decodes");
    assert_eq!(back, value);
    Some(value)
}

/// The key the seed tickets are signed with (see `examples/gen_seeds.rs`).
pub const SEED_DISPATCHER_SECRET: [u8; 32] = [0xd1; 32];

/// The `ticket` target: `Signed<Ticket>` as it travels inside a lease or a task.
///
/// - Decoding is canonical ([`postcard_value`]).
/// - Verification never panics, and its parts agree (the presenting peer is the ticket's
///   client; another is refused): `verify_ticket` is `verify` by the
///   expected signer followed by `check_claims`; a [`TicketVerifier`] (which caches
///   signatures) gives the same answer as a fresh check, the first and the second time.
/// - A ticket that verifies stops verifying (or decoding) when any of several bytes of its
///   encoding is changed: one ticket, one encoding, no malleability.
pub fn ticket(data: &[u8]) {
    let Some(signed) = postcard_value::<Signed<Ticket>>(data) else {
        return;
    };
    let t = &signed.body;
    let node = t.audience.first().copied().unwrap_or(signed.signer);
    // The claims are checked at a few instants around the validity window.
    let instants = [
        t.issued_at_s,
        t.issued_at_s.saturating_sub(1),
        t.expires_at_s.saturating_sub(1),
        t.expires_at_s,
    ];
    let mut verifier = TicketVerifier::new(signed.signer, 4);
    let seed_dispatcher = seed_dispatcher_id();
    let signature_ok = signed.verify(None).is_ok();
    assert_eq!(signed.verify(Some(&signed.signer)).is_ok(), signature_ok);
    for now_s in instants {
        let fresh = signed.verify_ticket(&signed.signer, now_s, &t.deployment, &node, &t.client);
        let composed = signed
            .verify(Some(&signed.signer))
            .map_err(TicketError::from)
            .and_then(|_| t.check_claims(now_s, &t.deployment, &node, &t.client));
        assert_eq!(fresh.as_ref().map(|_| ()), composed.as_ref().map(|&()| ()));
        for _ in 0..2 {
            let cached = verifier.verify(&signed, now_s, &t.deployment, &node, &t.client);
            assert_eq!(cached, fresh, "the ticket cache changed the verdict");
        }
        if fresh.is_ok() {
            assert!(signature_ok);
            assert!(now_s >= t.issued_at_s && now_s < t.expires_at_s);
            assert!(t.audience.contains(&node));
        }
        // Another dispatcher's view, and another deployment's.
        let other = signed.verify_ticket(&seed_dispatcher, now_s, &t.deployment, &node, &t.client);
        if signed.signer != seed_dispatcher {
            assert!(matches!(other, Err(TicketError::Signature(_))));
        }
        let mut dep = *t.deployment.as_bytes();
        dep[0] ^= 1;
        let dep = DeploymentId::from_bytes(dep);
        assert!(
            signed
                .verify_ticket(&signed.signer, now_s, &dep, &node, &t.client)
                .is_err()
        );
        // Presented by another peer than its client, it is refused.
        if node != t.client {
            assert!(
                signed
                    .verify_ticket(&signed.signer, now_s, &t.deployment, &node, &node)
                    .is_err()
            );
        }
    }
    if signature_ok {
        assert_tamper_evident::<Ticket>(data, |s| s.verify(None).is_ok());
    }
}

/// The seed dispatcher's id.
pub fn seed_dispatcher_id() -> NodeId {
    let key = ed25519_dalek::SigningKey::from_bytes(&SEED_DISPATCHER_SECRET);
    NodeId::from_key(&key.verifying_key())
}

/// Changing a byte of a verifying `Signed<T>` encoding makes it fail to decode or to verify.
/// Checks up to 16 positions spread over the encoding (verification costs ~50 µs).
fn assert_tamper_evident<T>(data: &[u8], verifies: impl Fn(&Signed<T>) -> bool)
where
    Signed<T>: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let step = data.len().div_ceil(16).max(1);
    for i in (0..data.len()).step_by(step) {
        let mut tampered = data.to_vec();
        tampered[i] ^= 0x01;
        if let Some(s) = postcard_value::<Signed<T>>(&tampered) {
            assert!(!verifies(&s), "flipping byte {i} left a valid signature");
        }
    }
}

/// The `registration` target: `Signed<Registration>` as a node sends it in
/// `NodeRequest::Register`.
///
/// - Decoding is canonical ([`postcard_value`]).
/// - `verify_registration` never panics; it is the node's self-signature plus the freshness
///   rule, worked out independently here at instants around `issued_at_s ± REGISTRATION_AGE_S_MAX`
///   (including the edges of `u64`).
/// - A registration that verifies is tamper-evident (as tickets are).
pub fn registration(data: &[u8]) {
    let Some(signed) = postcard_value::<Signed<Registration>>(data) else {
        return;
    };
    let issued = signed.body.issued_at_s;
    let signature = signed.verify(Some(&signed.body.node)).map(|_| ());
    let age = REGISTRATION_AGE_S_MAX;
    for now_s in [
        issued,
        issued.saturating_add(age),
        issued.saturating_add(age + 1),
        issued.saturating_sub(age),
        issued.saturating_sub(age + 1),
        0,
        u64::MAX,
    ] {
        let got = signed.verify_registration(now_s);
        let fresh = now_s.abs_diff(issued) <= age;
        match (&signature, fresh) {
            (Err(e), _) => assert_eq!(got, Err(RegistrationError::Signature(e.clone()))),
            (Ok(()), true) => assert_eq!(got, Ok(&signed.body)),
            (Ok(()), false) => assert!(
                matches!(got, Err(RegistrationError::Stale { .. })),
                "issued {issued}, now {now_s}: {got:?}"
            ),
        }
    }
    if signature.is_ok() {
        assert_tamper_evident::<Registration>(data, |s| s.verify(Some(&s.body.node)).is_ok());
    }
}

/// The `tensor` target: a [`Tensor`] (and a [`NamedTensor`]) as they travel inside task
/// messages.
///
/// - Decoding is canonical ([`postcard_value`]).
/// - A decoded tensor is valid: rank ≤ [`RANK_MAX`], bytes = shape × dtype size (within
///   [`tensor::TENSOR_BYTES_MAX`]), bool bytes are 0 or 1; rebuilding it from its parts gives
///   the same tensor, and it reads out as its own element type.
pub fn tensor(data: &[u8]) {
    if let Some(t) = postcard_value::<Tensor>(data) {
        check_tensor(&t);
    }
    if let Some(n) = postcard_value::<NamedTensor>(data) {
        check_tensor(&n.tensor);
    }
}

fn check_tensor(t: &Tensor) {
    assert!(t.shape().len() <= RANK_MAX);
    let len = tensor::byte_len(t.dtype(), t.shape()).expect("a decoded tensor's shape is valid");
    assert_eq!(len, t.bytes().len() as u64);
    assert_eq!(t.len() * t.dtype().size(), t.bytes().len());
    let rebuilt = Tensor::new(t.dtype(), t.shape().to_vec(), t.bytes().to_vec());
    assert_eq!(rebuilt.as_ref(), Ok(t));
    let n = match t.dtype() {
        DType::F32 => t.to_vec::<f32>().map(|v| v.len()),
        DType::F64 => t.to_vec::<f64>().map(|v| v.len()),
        DType::I64 => t.to_vec::<i64>().map(|v| v.len()),
        DType::I32 => t.to_vec::<i32>().map(|v| v.len()),
        DType::I8 => t.to_vec::<i8>().map(|v| v.len()),
        DType::U8 => t.to_vec::<u8>().map(|v| v.len()),
        DType::Bool => {
            assert!(t.bytes().iter().all(|&b| b <= 1));
            t.to_vec::<bool>().map(|v| v.len())
        }
        // F16 has no element type; any other dtype is new and not covered here.
        _ => Ok(t.len()),
    };
    assert_eq!(n, Ok(t.len()));
}

// ---------------------------------------------------------------------------------------------
// ONNX models

/// The `onnx_check` target: `crat_backend::onnx_check::check_model`, which every upload
/// reaches before anything else reads the model (crat-backend without backends: the check is
/// dependency-free).
///
/// - It never panics, and gives the same verdict twice (it is a pure function of the bytes).
/// - A model it accepts declares at least one input and one output, every input with a shape
///   and a dtype the wire format carries, every shape within the element and byte limits, and
///   the indices of outputs without a declared shape point at outputs; its memory estimate
///   is at least its weights plus what its operators make, plus twice its largest tensor.
///
/// That what it accepts is a model a real protobuf decoder (tract's prost) decodes the same
/// is a property test of crat-backend (`tests/onnx_differential.rs`), not checked here:
/// tract under fuzzing instrumentation would cost minutes of every CI run.
pub fn onnx_check(data: &[u8]) {
    use crat_backend::onnx_check::{ELEMENTS_MAX, TENSOR_BYTES_MAX, check_model};
    let first = check_model(data);
    let again = check_model(data);
    assert_eq!(
        first.as_ref().map_err(ToString::to_string),
        again.as_ref().map_err(ToString::to_string),
        "the check is not deterministic"
    );
    let Ok(summary) = first else { return };
    assert!(!summary.info.inputs.is_empty() && !summary.info.outputs.is_empty());
    for spec in summary.info.inputs.iter().chain(&summary.info.outputs) {
        let elements = spec.shape.iter().try_fold(1u64, |n, d| match d {
            crat_backend::Dim::Fixed(v) => n.checked_mul(*v),
            crat_backend::Dim::Symbolic(_) => Some(n),
        });
        assert!(
            elements.is_some_and(|e| e <= ELEMENTS_MAX),
            "an accepted shape is beyond the limit"
        );
        let bytes = elements.map(|e| e.saturating_mul(spec.dtype.size() as u64));
        assert!(
            bytes.is_some_and(|b| b <= TENSOR_BYTES_MAX),
            "an accepted shape is beyond the byte limit"
        );
    }
    let m = &summary.memory;
    assert_eq!(
        m.bytes,
        m.weights_bytes
            .saturating_add(m.made_bytes)
            .saturating_add(m.largest_tensor_bytes.saturating_mul(2)),
        "the estimate is not its parts"
    );
    assert!(
        summary
            .undeclared_output_shapes
            .iter()
            .all(|i| *i < summary.info.outputs.len())
    );
}

// ---------------------------------------------------------------------------------------------
// text forms

/// The `text` target: the text decoders: ids (`FromStr`), SDK keys, peer addresses and the
/// GPU table CSV.
///
/// - An id or SDK key that parses prints back as the input with its hex lowercased (the one
///   spelling `Display` writes), and that text parses to the same value.
/// - A peer address that parses is the input.
/// - A GPU table that parses has its rows sorted by key with no duplicates, and looking up
///   each row's name finds that row.
pub fn text(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    text_id::<NodeId>(s);
    text_id::<ModelId>(s);
    text_id::<DeploymentId>(s);
    text_id::<TaskId>(s);
    text_id::<KeyId>(s);
    text_id::<SdkKey>(s);
    if let Ok(a) = s.parse::<PeerAddr>() {
        assert_eq!(a.as_str(), s);
    }
    if let Ok(table) = GpuTable::parse(s) {
        let entries = table.entries();
        for pair in entries.windows(2) {
            assert!(pair[0].key < pair[1].key, "rows not sorted or duplicated");
        }
        for e in entries {
            assert!(!e.key.is_empty());
            let found = table.lookup(&e.name).expect("a row's own name finds it");
            assert_eq!(found, e);
        }
    }
}

fn text_id<T>(s: &str)
where
    T: std::str::FromStr + std::fmt::Display + PartialEq + Debug,
{
    if let Ok(v) = s.parse::<T>() {
        let printed = v.to_string();
        assert_eq!(printed, s.to_ascii_lowercase(), "{v:?}");
        assert_eq!(printed.parse::<T>().ok(), Some(v));
    }
}

// ---------------------------------------------------------------------------------------------
// rewards interchange JSON

/// The `rewards_inputs_json` target: [`RoundInputs::from_json`].
///
/// - Never panics. When it parses: `y = to_json(v)` parses to `v`, and writes `y` again
///   (a fixpoint after one round trip).
/// - Beyond decoding: computing and explaining the round never panics (ranges are checked
///   there, on any document the parser accepts), and a computed outcome's JSON parses back
///   to the outcome ([`rewards_outcome_json`]'s property on real outcomes).
pub fn rewards_inputs_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(v) = RoundInputs::from_json(text) else {
        return;
    };
    let y = v.to_json();
    let w = RoundInputs::from_json(&y).expect("to_json output parses");
    assert_eq!(w, v);
    assert_eq!(w.to_json(), y);
    if let Ok(out) = crat_rewards::compute(&v) {
        let json = out.to_json();
        let back = RoundOutcome::from_json(&json).expect("an outcome's JSON parses");
        assert_eq!(back, out);
        if let Some(node) = v.nodes.first() {
            let _ = crat_rewards::explain(&v, &node.id);
        }
    }
}

/// The `rewards_outcome_json` target: [`RoundOutcome::from_json`]: never panics; when it
/// parses, `y = to_json(v)` parses to `v` and writes `y` again.
pub fn rewards_outcome_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(v) = RoundOutcome::from_json(text) else {
        return;
    };
    let y = v.to_json();
    let w = RoundOutcome::from_json(&y).expect("to_json output parses");
    assert_eq!(w, v);
    assert_eq!(w.to_json(), y);
}
