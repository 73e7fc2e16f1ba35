//! Personal data in events: fields sealed with a key per data subject, so that forgetting
//! the subject (deleting the key) erases them from every event at once.
//!
//! An `#[event]` field marked `#[personal(subject = field)]` holds a [`Personal`] value that
//! belongs to the data subject named by another field of the event (a customer id, say):
//!
//! ```
//! use eventsourcing_kit::prelude::*;
//! use eventsourcing_kit::personal::Personal;
//!
//! #[event(aggregate = "Customer")]
//! pub struct Registered {
//!     pub customer_id: String,
//!     #[personal(subject = customer_id)]
//!     pub email: Personal<String>,
//! }
//! # fn main() {}
//! ```
//!
//! - **Sealed when saved.** A [`Repository`](crate::Repository) with a [`Keyring`] (every
//!   repository built from [`Stores`](crate::backend::Stores), whose backend keeps the keys)
//!   seals each personal value with AES-256-GCM under its subject's key, made the first
//!   time the subject is written, and bound to the event, the field and the subject: the
//!   stored payload holds `{"$personal": {"subject": "...", "sealed": "..."}}` in its place.
//!   The subject field itself stays in the clear: it names the key. Saving personal fields
//!   without a keyring is [`Error::InvalidConfiguration`](crate::Error::InvalidConfiguration),
//!   never plaintext.
//! - **Opened when read.** Loads, subscriptions, projections and process managers with a
//!   keyring open the fields before decoding, and upcasts see them open: a field reads as
//!   [`Personal::Known`], or as [`Personal::Forgotten`] once its subject is forgotten, while
//!   the rest of the event reads as before. A key store that cannot be reached fails the read
//!   with a transient [`Error::Store`](crate::Error::Store); a sealed value that does not open
//!   (another key, another event, changed since) is [`Error::Corrupt`](crate::Error::Corrupt)
//!   naming the event and the field. A sealed value is never read as forgotten by mistake,
//!   and never shown sealed to a decoder: without a keyring it fails to decode, saying why.
//! - **Forgotten for good.** A subject being forgotten reads as forgotten at once and its
//!   values can no longer be written ([`Error::SubjectForgotten`](crate::Error::SubjectForgotten));
//!   the key is deleted when every copy of its values is erased.
//!
//! The keys are kept by the backend's [`KeyStore`], cached by a [`Keyring`] for a bounded
//! time and number of subjects. This module needs the `personal-data` feature to seal and
//! open; [`Personal`] and the attribute are there without it, and an event with personal
//! fields does not compile without it.

mod cache;
mod cipher;
mod fields;
mod key_store;
mod keyring;
pub(crate) mod open;
pub(crate) mod seal;
mod value;

pub use crate::aggregate::PersonalField;
pub(crate) use key_store::other_key;
pub use key_store::{
    validate_subject, Forgetting, KeyState, KeyStore, SubjectKey, SubjectRecord, KEY_LENGTH,
    MAX_SUBJECT_LENGTH,
};
pub use keyring::Keyring;
pub use value::Personal;
pub(crate) use value::NEWTYPE;
