//! Sealing one value with a subject's key: XChaCha20-Poly1305, an authenticated cipher with
//! a random 24-byte nonce per value, so values sealed with one key never share a nonce in
//! practice. What is sealed is bound to where it is stored (the event, the field, the
//! subject) as associated data: a value copied elsewhere does not open.

use crate::error::{Error, Result};
use crate::personal::key_store::SubjectKey;

/// Why a sealed value did not open.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unopened {
    /// Not base64, or shorter than a nonce and a tag.
    #[cfg_attr(not(feature = "personal-data"), allow(dead_code))]
    Malformed,
    /// Sealed with another key, or changed since it was sealed.
    Rejected,
}

#[cfg(feature = "personal-data")]
mod imp {
    use base64::Engine as _;
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    use chacha20poly1305::{XChaCha20Poly1305, XNonce};

    use super::*;
    use crate::personal::key_store::KEY_LENGTH;

    const NONCE: usize = 24;
    const TAG: usize = 16;
    const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    /// A new random key.
    pub(crate) fn new_key() -> Result<SubjectKey> {
        let mut bytes = [0u8; KEY_LENGTH];
        random(&mut bytes)?;
        Ok(SubjectKey::from_bytes(bytes))
    }

    fn random(bytes: &mut [u8]) -> Result<()> {
        getrandom::fill(bytes).map_err(|e| {
            Error::InvalidConfiguration(format!("the operating system gave no random bytes: {e}"))
        })
    }

    fn cipher(key: &SubjectKey) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&(*key.as_bytes()).into())
    }

    /// `plaintext` sealed with `key`, bound to `bound`: the nonce and the ciphertext, in base64.
    pub(crate) fn seal(key: &SubjectKey, bound: &[u8], plaintext: &[u8]) -> Result<String> {
        let mut nonce = [0u8; NONCE];
        random(&mut nonce)?;
        let sealed = cipher(key)
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: bound,
                },
            )
            .map_err(|_| Error::InvalidInput("a personal value is too long to seal".into()))?;
        let mut out = Vec::with_capacity(NONCE + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(BASE64.encode(out))
    }

    /// The plaintext of `sealed`, if `key` opens it bound to `bound`.
    pub(crate) fn open(
        key: &SubjectKey,
        bound: &[u8],
        sealed: &str,
    ) -> std::result::Result<Vec<u8>, Unopened> {
        let bytes = BASE64.decode(sealed).map_err(|_| Unopened::Malformed)?;
        if bytes.len() < NONCE + TAG {
            return Err(Unopened::Malformed);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE);
        let nonce: [u8; NONCE] = nonce.try_into().map_err(|_| Unopened::Malformed)?;
        cipher(key)
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: bound,
                },
            )
            .map_err(|_| Unopened::Rejected)
    }
}

#[cfg(not(feature = "personal-data"))]
mod imp {
    use super::*;

    fn disabled() -> Error {
        Error::InvalidConfiguration(
            "personal fields are sealed by the `personal-data` feature of eventsourcing-kit, \
             which this build does not have"
                .into(),
        )
    }

    pub(crate) fn new_key() -> Result<SubjectKey> {
        Err(disabled())
    }

    pub(crate) fn seal(_: &SubjectKey, _: &[u8], _: &[u8]) -> Result<String> {
        Err(disabled())
    }

    pub(crate) fn open(_: &SubjectKey, _: &[u8], _: &str) -> std::result::Result<Vec<u8>, Unopened> {
        Err(Unopened::Rejected)
    }
}

pub(crate) use imp::{new_key, open, seal};

#[cfg(all(test, feature = "personal-data"))]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_with_its_key_and_binding_only() {
        let key = new_key().unwrap();
        let sealed = seal(&key, b"event 1|email|c-1", b"\"ada@example.com\"").unwrap();
        assert_eq!(
            open(&key, b"event 1|email|c-1", &sealed).unwrap(),
            b"\"ada@example.com\""
        );
        assert_eq!(open(&key, b"event 2|email|c-1", &sealed), Err(Unopened::Rejected));
        assert_eq!(
            open(&new_key().unwrap(), b"event 1|email|c-1", &sealed),
            Err(Unopened::Rejected)
        );
        let mut tampered = sealed.into_bytes();
        let last = tampered.len() - 3;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(
            open(&key, b"event 1|email|c-1", &tampered),
            Err(Unopened::Rejected)
        );
        assert_eq!(
            open(&key, b"event 1|email|c-1", "not base64!"),
            Err(Unopened::Malformed)
        );
        assert_eq!(open(&key, b"event 1|email|c-1", "AAAA"), Err(Unopened::Malformed));
    }

    #[test]
    fn two_seals_of_one_value_differ() {
        let key = new_key().unwrap();
        assert_ne!(seal(&key, b"b", b"v").unwrap(), seal(&key, b"b", b"v").unwrap());
    }
}
