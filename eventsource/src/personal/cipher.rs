//! Sealing one value with a subject's key: AES-256-GCM (RustCrypto's `aes-gcm`, with the
//! processor's AES and carry-less multiply instructions where it has them), an authenticated
//! cipher, with a random 12-byte nonce per value. One key seals only its subject's values, far
//! fewer than the 2^32 that random nonces allow a key. What is sealed is bound to where it is
//! stored (the event, the field, the subject) as associated data: a value copied elsewhere
//! does not open.

use crate::error::{Error, Result};
use crate::personal::key_store::SubjectKey;

/// Why a sealed value did not open.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unopened {
    /// Not base64, or shorter than a nonce and a tag.
    #[cfg_attr(not(feature = "personal-data"), allow(dead_code))]
    Malformed,
    /// Sealed with another key, or changed since it was sealed.
    #[cfg_attr(not(feature = "personal-data"), allow(dead_code))]
    Rejected,
    /// This build cannot open anything: it lacks the `personal-data` feature.
    #[cfg_attr(feature = "personal-data", allow(dead_code))]
    Disabled,
}

/// A subject's key made ready to seal and open (its key schedule computed once).
pub(crate) struct Cipher(imp::Inner);

impl Cipher {
    pub(crate) fn new(key: &SubjectKey) -> Self {
        Cipher(imp::Inner::new(key))
    }

    /// `plaintext` sealed, bound to `bound`: the nonce and the ciphertext, in base64.
    pub(crate) fn seal(&self, bound: &[u8], plaintext: &[u8]) -> Result<String> {
        self.0.seal(bound, plaintext)
    }

    /// Appends the plaintext of `sealed` to `out`, if it opens bound to `bound` (else leaves
    /// `out` as it was).
    pub(crate) fn open_into(
        &self,
        bound: &[u8],
        sealed: &str,
        out: &mut Vec<u8>,
    ) -> std::result::Result<(), Unopened> {
        self.0.open_into(bound, sealed, out)
    }
}

pub(crate) use imp::new_key;

#[cfg(feature = "personal-data")]
mod imp {
    use aes_gcm::aead::{Aead, AeadInOut, KeyInit, Payload};
    use aes_gcm::{Aes256Gcm, Nonce, Tag};
    use base64::Engine as _;

    use super::*;
    use crate::personal::key_store::KEY_LENGTH;

    const NONCE: usize = 12;
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

    pub(crate) struct Inner(Aes256Gcm);

    impl Inner {
        pub(crate) fn new(key: &SubjectKey) -> Self {
            Inner(Aes256Gcm::new(&(*key.as_bytes()).into()))
        }

        pub(crate) fn seal(&self, bound: &[u8], plaintext: &[u8]) -> Result<String> {
            let mut nonce = [0u8; NONCE];
            random(&mut nonce)?;
            let sealed = self
                .0
                .encrypt(
                    &Nonce::from(nonce),
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

        pub(crate) fn open_into(
            &self,
            bound: &[u8],
            sealed: &str,
            out: &mut Vec<u8>,
        ) -> std::result::Result<(), Unopened> {
            // Short values, the usual ones, are decoded and opened on the stack.
            let mut stack = [0u8; 512];
            let mut heap;
            let bytes: &mut [u8] = match BASE64.decode_slice(sealed, &mut stack) {
                Ok(len) => &mut stack[..len],
                Err(base64::DecodeSliceError::OutputSliceTooSmall) => {
                    heap = BASE64.decode(sealed).map_err(|_| Unopened::Malformed)?;
                    &mut heap
                }
                Err(_) => return Err(Unopened::Malformed),
            };
            if bytes.len() < NONCE + TAG {
                return Err(Unopened::Malformed);
            }
            let (nonce, rest) = bytes.split_at_mut(NONCE);
            let (message, tag) = rest.split_at_mut(rest.len() - TAG);
            let nonce: [u8; NONCE] = (&*nonce).try_into().map_err(|_| Unopened::Malformed)?;
            let tag: [u8; TAG] = (&*tag).try_into().map_err(|_| Unopened::Malformed)?;
            self.0
                .decrypt_inout_detached(
                    &Nonce::from(nonce),
                    bound,
                    (&mut *message).into(),
                    &Tag::from(tag),
                )
                .map_err(|_| Unopened::Rejected)?;
            out.extend_from_slice(message);
            Ok(())
        }
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

    pub(crate) struct Inner;

    impl Inner {
        pub(crate) fn new(_: &SubjectKey) -> Self {
            Inner
        }

        pub(crate) fn seal(&self, _: &[u8], _: &[u8]) -> Result<String> {
            Err(disabled())
        }

        pub(crate) fn open_into(
            &self,
            _: &[u8],
            _: &str,
            _: &mut Vec<u8>,
        ) -> std::result::Result<(), Unopened> {
            Err(Unopened::Disabled)
        }
    }
}

#[cfg(all(test, feature = "personal-data"))]
mod tests {
    use super::*;

    fn open(key: &Cipher, bound: &[u8], sealed: &str) -> std::result::Result<Vec<u8>, Unopened> {
        let mut out = Vec::new();
        key.open_into(bound, sealed, &mut out).map(|()| out)
    }

    #[test]
    fn a_long_value_opens_too() {
        let key = Cipher::new(&new_key().unwrap());
        let long = vec![b'x'; 2000];
        let sealed = key.seal(b"b", &long).unwrap();
        assert_eq!(open(&key, b"b", &sealed).unwrap(), long);
    }

    #[test]
    fn a_sealed_value_opens_with_its_key_and_binding_only() {
        let key = Cipher::new(&new_key().unwrap());
        let sealed = key.seal(b"event 1|email|c-1", b"\"ada@example.com\"").unwrap();
        assert_eq!(
            open(&key, b"event 1|email|c-1", &sealed).unwrap(),
            b"\"ada@example.com\""
        );
        assert_eq!(open(&key, b"event 2|email|c-1", &sealed), Err(Unopened::Rejected));
        let other = Cipher::new(&new_key().unwrap());
        assert_eq!(
            open(&other, b"event 1|email|c-1", &sealed),
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
        let key = Cipher::new(&new_key().unwrap());
        assert_ne!(key.seal(b"b", b"v").unwrap(), key.seal(b"b", b"v").unwrap());
    }
}
