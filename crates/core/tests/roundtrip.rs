//! Codec round-trips for every message type and for `Tensor`: decode(encode(m)) == m, and the
//! decoded message re-encodes to the very same bytes.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use crat_core::strategies as s;
use crat_core::tensor::Tensor;
use crat_core::wire::{self, Message};
use proptest::prelude::*;

fn round_trip<M: Message + PartialEq + std::fmt::Debug>(msg: &M) -> Result<(), TestCaseError> {
    let bytes = wire::encode(msg).expect("encode");
    prop_assert_eq!(bytes.len(), wire::encoded_len(msg).expect("len"));
    let back: M = wire::decode(&bytes).expect("decode");
    prop_assert_eq!(&back, msg);
    prop_assert_eq!(wire::encode(&back).expect("re-encode"), bytes.clone());
    // Any strict prefix is rejected with an error, not a panic.
    for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
        prop_assert!(wire::decode::<M>(&bytes[..cut]).is_err());
    }
    // And so is one trailing byte.
    let mut longer = bytes.clone();
    longer.push(0);
    prop_assert!(wire::decode::<M>(&longer).is_err());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn node_request(m in s::node_request()) { round_trip(&m)?; }
    #[test]
    fn dispatcher_reply(m in s::dispatcher_reply()) { round_trip(&m)?; }
    #[test]
    fn dispatcher_push(m in s::dispatcher_push()) { round_trip(&m)?; }
    #[test]
    fn node_ack(m in s::node_ack()) { round_trip(&m)?; }
    #[test]
    fn client_request(m in s::client_request()) { round_trip(&m)?; }
    #[test]
    fn dispatcher_response(m in s::dispatcher_response()) { round_trip(&m)?; }
    #[test]
    fn client_to_node(m in s::client_to_node()) { round_trip(&m)?; }
    #[test]
    fn node_to_client(m in s::node_to_client()) { round_trip(&m)?; }

    #[test]
    fn tensor(t in s::tensor()) {
        let bytes = postcard::to_stdvec(&t).expect("encode");
        let back: Tensor = postcard::from_bytes(&bytes).expect("decode");
        prop_assert_eq!(&back, &t);
        prop_assert_eq!(postcard::to_stdvec(&back).expect("re-encode"), bytes);
    }

    /// Arbitrary bytes never panic the decoder, and whatever decodes re-encodes identically.
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut framed = wire::PROTOCOL_VERSION.to_le_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        if let Ok(m) = wire::decode::<crat_core::wire::ClientToNode>(&framed) {
            prop_assert_eq!(wire::encode(&m).expect("re-encode"), framed.clone());
        }
        if let Ok(m) = wire::decode::<crat_core::wire::NodeRequest>(&framed) {
            prop_assert_eq!(wire::encode(&m).expect("re-encode"), framed.clone());
        }
        if let Ok(m) = wire::decode::<crat_core::wire::DispatcherResponse>(&framed) {
            prop_assert_eq!(wire::encode(&m).expect("re-encode"), framed);
        }
    }
}
