//! The keys of data subjects, kept by every backend beside its events.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::Result;

/// The length of a subject's key, in bytes: a 256-bit key.
pub const KEY_LENGTH: usize = 32;

/// The longest subject a key store keeps, in bytes.
pub const MAX_SUBJECT_LENGTH: usize = 512;

/// Checks a subject as key stores keep it: [`Error::InvalidInput`](crate::Error::InvalidInput)
/// if it is empty, longer than [`MAX_SUBJECT_LENGTH`] bytes, or holds a control character
/// (which would reach an operator's terminal in a report).
pub fn validate_subject(subject: &str) -> Result<()> {
    let why = if subject.is_empty() {
        "it is empty"
    } else if subject.len() > MAX_SUBJECT_LENGTH {
        "it is longer than 512 bytes"
    } else if subject.chars().any(crate::text::is_unsafe) {
        "it holds a control or formatting character"
    } else {
        return Ok(());
    };
    Err(crate::error::Error::InvalidInput(format!(
        "data subject {} is not one a key store keeps: {why}",
        crate::text::escape(&subject.chars().take(64).collect::<String>())
    )))
}

/// The key that seals a data subject's personal values. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct SubjectKey([u8; KEY_LENGTH]);

impl SubjectKey {
    /// The key of these bytes.
    pub fn from_bytes(bytes: [u8; KEY_LENGTH]) -> Self {
        SubjectKey(bytes)
    }

    /// The key of these bytes, as a store reads them back: [`Error::Corrupt`](crate::Error::Corrupt)
    /// naming `subject` if there are not [`KEY_LENGTH`] of them.
    pub fn from_stored(bytes: &[u8], subject: &str) -> Result<Self> {
        let bytes: [u8; KEY_LENGTH] = bytes.try_into().map_err(|_| {
            crate::error::Error::corrupt(
                format!("the key of subject {subject}"),
                format!("it is {} bytes long, not {KEY_LENGTH}", bytes.len()),
            )
        })?;
        Ok(SubjectKey(bytes))
    }

    /// Its bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LENGTH] {
        &self.0
    }
}

impl std::fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectKey(..)")
    }
}

/// What a key store holds for a data subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyState {
    /// The subject's key: its values can be sealed and read.
    Active(SubjectKey),
    /// The subject is forgotten, or being forgotten: its values read as
    /// [`Personal::Forgotten`](super::Personal::Forgotten) and none can be written.
    Forgotten,
}

/// Where the forgetting of a data subject stands (see [`KeyStore::begin_forgetting`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Forgetting {
    /// The subject's key, while it is kept (until [`KeyStore::finish_forgetting`]): what
    /// the forgetting reads the subject's values with, to look for them in every copy.
    /// `None` once finished, or if the subject never had a key.
    pub key: Option<SubjectKey>,
    /// When the forgetting began: from then on readers see the subject as forgotten.
    pub since: DateTime<Utc>,
    /// When it finished and the key was deleted, if it did.
    pub finished_at: Option<DateTime<Utc>>,
}

impl Forgetting {
    /// A forgetting that began at `since`, with the key while it is kept, finished at
    /// `finished_at` if it did.
    pub fn new(key: Option<SubjectKey>, since: DateTime<Utc>, finished_at: Option<DateTime<Utc>>) -> Self {
        Forgetting {
            key,
            since,
            finished_at,
        }
    }
}

/// Everything a key store keeps of one data subject: what a copy of the store (resharding)
/// carries from one key store to another.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubjectRecord {
    /// The data subject.
    pub subject: String,
    /// Its key, while it is kept.
    pub key: Option<SubjectKey>,
    /// When its forgetting began, if it did.
    pub forgetting_since: Option<DateTime<Utc>>,
    /// When its forgetting finished, if it did.
    pub forgotten_at: Option<DateTime<Utc>>,
    /// The streams that hold its values: aggregate type and id.
    pub streams: Vec<(String, Uuid)>,
}

impl SubjectRecord {
    /// The record of `subject`.
    pub fn new(
        subject: impl Into<String>,
        key: Option<SubjectKey>,
        forgetting_since: Option<DateTime<Utc>>,
        forgotten_at: Option<DateTime<Utc>>,
        streams: Vec<(String, Uuid)>,
    ) -> Self {
        SubjectRecord {
            subject: subject.into(),
            key,
            forgetting_since,
            forgotten_at,
            streams,
        }
    }
}

/// The keys of data subjects, one per subject, and the streams that hold each subject's
/// personal values (see [`crate::personal`]).
///
/// A backend of this crate keeps them in its own tables (`eventsource_subject_keys` and
/// `eventsource_subject_streams` on SQLite and PostgreSQL), so a backup of the database holds
/// the keys with the events they seal: see the guide for what that means for erasure.
///
/// # Contract
///
/// The conformance suite (`testing::key_store`, feature `testing`) checks:
///
/// - **One key per subject, made once.** [`key_for_writing`](Self::key_for_writing) stores
///   `new_key` as the subject's key if the subject has none, and returns the key stored:
///   of writers racing on a new subject, all get the one key that won. It also records, in
///   the same call, that the stream holds values of the subject.
/// - **Forgetting is one way.** After [`begin_forgetting`](Self::begin_forgetting), the
///   subject reads as [`KeyState::Forgotten`] for readers and writers, for good, while
///   `begin_forgetting` (called again, by a forgetting run again after a crash) still hands
///   over the key, until [`finish_forgetting`](Self::finish_forgetting) deletes it. A subject
///   that never had a key can be forgotten: it reads as forgotten from then on, and no key is
///   ever made for it.
/// - **Nothing is lost to a crash.** [`unfinished`](Self::unfinished) lists every subject
///   whose forgetting began and did not finish.
/// - [`keys_for_reading`](Self::keys_for_reading) answers for each subject asked, in order:
///   its state, or `None` if it never had a key.
/// - **Copies carry everything.** [`export`](Self::export) lists every subject in the order
///   of their names, a page at a time, with all the store keeps of it;
///   [`import`](Self::import) stores such a record so that the subject reads in this store as
///   in the other (a record imported again changes nothing, a forgetting that went further in
///   the record goes as far here), and refuses a subject that has another key here.
///
/// # Wrappers
///
/// A key store that wraps another (a cache, a key held elsewhere, keys wrapped by a master
/// key) forwards every method; each is required.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// The subject's key, made from `new_key` if it has none; [`KeyState::Forgotten`] if it is
    /// forgotten or being forgotten. Records that the stream of `aggregate_type` and
    /// `aggregate_id` holds values of the subject.
    async fn key_for_writing(
        &self,
        subject: &str,
        aggregate_type: &str,
        aggregate_id: Uuid,
        new_key: &SubjectKey,
    ) -> Result<KeyState>;

    /// The state of each of `subjects`, in order: `None` for a subject that never had a key.
    async fn keys_for_reading(&self, subjects: &[&str]) -> Result<Vec<Option<KeyState>>>;

    /// Begins forgetting the subject (again, after a crash): from now on it reads as
    /// forgotten. Returns where the forgetting stands, with the key while it is kept.
    async fn begin_forgetting(&self, subject: &str) -> Result<Forgetting>;

    /// Every stream recorded as holding values of the subject: aggregate type and id.
    async fn streams_of(&self, subject: &str) -> Result<Vec<(String, Uuid)>>;

    /// Deletes the key of a subject whose forgetting began, and records the forgetting as
    /// finished; [`Error::InvalidInput`](crate::Error::InvalidInput) if it did not begin.
    async fn finish_forgetting(&self, subject: &str) -> Result<()>;

    /// Every subject whose forgetting began and did not finish.
    async fn unfinished(&self) -> Result<Vec<String>>;

    /// The subjects after `after` (all from the first when `None`), in the order of their
    /// names, at most `limit` of them, each with all the store keeps of it.
    async fn export(&self, after: Option<&str>, limit: usize) -> Result<Vec<SubjectRecord>>;

    /// Stores `record` (of another key store), so that its subject reads here as there;
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) if the subject has another key here.
    async fn import(&self, record: &SubjectRecord) -> Result<()>;
}

/// The [`Error::InvalidInput`](crate::Error::InvalidInput) of a record whose subject has
/// another key in the store it is imported into.
pub(crate) fn other_key(subject: &str) -> crate::error::Error {
    crate::error::Error::InvalidInput(format!(
        "subject {} has another key in this key store: it is not a copy of the other",
        crate::text::escape(subject)
    ))
}
