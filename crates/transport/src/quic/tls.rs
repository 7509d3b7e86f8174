//! TLS identity: a self-signed certificate around the node's ed25519 key, and verifiers that
//! accept exactly that kind of certificate, with no CA and nothing trusted on sight.
//!
//! The peer's identity is the ed25519 key in its certificate's SubjectPublicKeyInfo, parsed by
//! webpki. The TLS 1.3 handshake signature is verified with that same key, so a peer can only
//! present an identity whose private key it holds. The dialling side additionally pins the
//! identity it expects; the accepting side records whatever identity the peer proved.

use std::sync::Arc;

use crat_core::id::NodeId;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use parking_lot::Mutex;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer,
    UnixTime,
};

use crate::SetupError;

/// DER of an ed25519 SubjectPublicKeyInfo up to the 32 key bytes (RFC 8410).
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The certificate and private key that present `key` in TLS.
pub(crate) fn self_signed(
    key: &SigningKey,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), SetupError> {
    let pkcs8 = key.to_pkcs8_der().map_err(SetupError::KeyEncoding)?;
    let pkcs8 = PrivatePkcs8KeyDer::from(pkcs8.as_bytes().to_vec());
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)
        .map_err(SetupError::Certificate)?;
    let params =
        rcgen::CertificateParams::new(vec!["crat".to_owned()]).map_err(SetupError::Certificate)?;
    let cert = params
        .self_signed(&key_pair)
        .map_err(SetupError::Certificate)?;
    Ok((cert.der().clone(), PrivateKeyDer::Pkcs8(pkcs8)))
}

/// The ed25519 SPKI of `cert`, parsed by webpki; refuses any other key type.
fn ed25519_spki(
    cert: &CertificateDer<'_>,
) -> Result<SubjectPublicKeyInfoDer<'static>, rustls::Error> {
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let spki = parsed.subject_public_key_info();
    let der: &[u8] = spki.as_ref();
    if der.len() != ED25519_SPKI_PREFIX.len() + 32 || der[..12] != ED25519_SPKI_PREFIX {
        // Not an ed25519 key: this protocol has no other kind of identity.
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::BadEncoding,
        ));
    }
    Ok(spki)
}

/// The identity a certificate carries.
pub(crate) fn peer_id(cert: &CertificateDer<'_>) -> Result<NodeId, rustls::Error> {
    let spki = ed25519_spki(cert)?;
    let mut key = [0u8; 32];
    key.copy_from_slice(&spki.as_ref()[12..]);
    Ok(NodeId::from_bytes(key))
}

fn verify_tls13(
    algorithms: &WebPkiSupportedAlgorithms,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(rustls::Error::PeerMisbehaved(
            rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
        ));
    }
    let spki = ed25519_spki(cert)?;
    rustls::crypto::verify_tls13_signature_with_raw_key(message, &spki, dss, algorithms)
}

fn no_tls12() -> rustls::Error {
    rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered)
}

/// Client side: accepts the server only if its certificate carries `expected`.
#[derive(Debug)]
pub(crate) struct PinnedServer {
    pub(crate) expected: NodeId,
    /// The identity the server actually presented, for a precise error on mismatch.
    pub(crate) seen: Mutex<Option<NodeId>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedServer {
    pub(crate) fn new(expected: NodeId, provider: &CryptoProvider) -> Self {
        Self {
            expected,
            seen: Mutex::new(None),
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::BadEncoding,
            ));
        }
        let id = peer_id(end_entity)?;
        *self.seen.lock() = Some(id);
        if id != self.expected {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(&self.algorithms, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Server side: requires a client certificate carrying some ed25519 identity and records it
/// (the application decides what that identity may do).
#[derive(Debug)]
pub(crate) struct AnyPeer {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AnyPeer {
    pub(crate) fn new(provider: &CryptoProvider) -> Arc<Self> {
        Arc::new(Self {
            algorithms: provider.signature_verification_algorithms,
        })
    }
}

impl ClientCertVerifier for AnyPeer {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::BadEncoding,
            ));
        }
        peer_id(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(&self.algorithms, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_carries_the_identity() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let (cert, _) = self_signed(&key).unwrap();
        assert_eq!(
            peer_id(&cert).unwrap(),
            NodeId::from_key(&key.verifying_key())
        );
    }

    #[test]
    fn garbage_certificate_is_refused() {
        assert!(peer_id(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])).is_err());
    }
}
