//! Envelope signatures: ingest signs what it publishes to `messages`, and the
//! store stage trusts an envelope's `sender_id` only when its signature
//! checks out. Anyone else who can publish to the broker (the management
//! console, a leaked broker password) posts system messages, never as a user.
//!
//! The signature is HMAC-SHA256 over the exact bytes of the body, keyed with
//! a key derived from `SECRET_KEY` (itself never used for two purposes), sent
//! as lowercase hex in the [`SIGNATURE_HEADER`].

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Header of a `messages` publish that carries the body's signature.
pub const SIGNATURE_HEADER: &str = "x-roomcast-signature";

/// What the envelope key is derived for, so it differs from the token key.
const PURPOSE: &[u8] = b"roomcast envelope signature v1";

/// The key that signs and checks envelopes; every node derives the same one
/// from the shared `SECRET_KEY`.
#[derive(Clone)]
pub struct EnvelopeKey([u8; 32]);

impl std::fmt::Debug for EnvelopeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnvelopeKey(***)")
    }
}

impl EnvelopeKey {
    /// HMAC-SHA256(secret, purpose): a key of its own for envelopes.
    pub fn derive(secret: &[u8]) -> Self {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(PURPOSE);
        Self(mac.finalize().into_bytes().into())
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length")
    }

    /// The signature of `body`, as sent in the header.
    pub fn sign(&self, body: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    /// True when `signature` is `body`'s (compared in constant time).
    pub fn verify(&self, body: &[u8], signature: &str) -> bool {
        let Ok(signature) = hex::decode(signature) else {
            return false;
        };
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_slice(&signature).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies_exact_bytes() {
        let key = EnvelopeKey::derive(b"a secret of at least thirty-two bytes");
        let body = br#"{"room_id":"r","content":"hi"}"#;
        let signature = key.sign(body);
        assert_eq!(signature.len(), 64);
        assert!(key.verify(body, &signature));
        assert!(!key.verify(br#"{"room_id":"r","content":"hI"}"#, &signature));
        assert!(!key.verify(body, &signature[..62]));
        assert!(!key.verify(body, "not hex"));
        assert!(!key.verify(body, ""));
        let other = EnvelopeKey::derive(b"another secret of thirty-two bytes!");
        assert!(!other.verify(body, &signature));
        // Not the secret itself: a token key does not sign envelopes.
        let mut direct =
            Hmac::<Sha256>::new_from_slice(b"a secret of at least thirty-two bytes").unwrap();
        direct.update(body);
        assert_ne!(hex::encode(direct.finalize().into_bytes()), signature);
    }
}
