//! `crat_sdk::connect` over real loopback QUIC, against a dispatcher stand-in that answers
//! balance and key-status calls.
#![allow(clippy::unwrap_used)]

use crat_core::id::{KeyId, NodeId, SdkKey};
use crat_core::money::Credits;
use crat_core::wire::{ClientCall, ClientRequest, DispatcherResponse, ErrorCode, WireError};
use crat_transport::quic::{QuicConfig, QuicTransport};
use crat_transport::{Conversation, FrameLimits, Transport, serve};
use ed25519_dalek::SigningKey;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_over_loopback_quic() {
    let key = SigningKey::from_bytes(&[1; 32]);
    let id = NodeId::from_key(&key.verifying_key());
    let server =
        QuicTransport::bind("127.0.0.1:0".parse().unwrap(), &key, QuicConfig::default()).unwrap();
    let addr: std::net::SocketAddr = server.local_addr().as_str().parse().unwrap();
    tokio::spawn(async move {
        while let Ok(conn) = server.accept().await {
            tokio::spawn(serve(
                conn,
                Conversation::ClientDispatcher,
                FrameLimits::default(),
                16,
                |req: ClientRequest| async move {
                    match req.call {
                        ClientCall::Balance => DispatcherResponse::Balance(Credits::new(77)),
                        _ => DispatcherResponse::Error(WireError::new(
                            ErrorCode::KeyRevoked,
                            "revoked yesterday",
                        )),
                    }
                },
            ));
        }
    });
    let sdk_key = SdkKey {
        id: KeyId::from_bytes([7; 16]),
        secret: [8; 32],
    };
    let client = crat_sdk::connect(addr, id, sdk_key.clone()).await.unwrap();
    assert_eq!(client.balance().await.unwrap(), Credits::new(77));
    let err = client.key_status().await.unwrap_err();
    assert!(matches!(err, crat_sdk::Error::KeyRevoked(ref m) if m == "revoked yesterday"));

    // A dispatcher that proves another identity is refused.
    let wrong = NodeId::from_key(&SigningKey::from_bytes(&[2; 32]).verifying_key());
    let err = crat_sdk::connect(addr, wrong, sdk_key).await.unwrap_err();
    assert!(matches!(err, crat_sdk::Error::Transport(_)), "{err}");
}
