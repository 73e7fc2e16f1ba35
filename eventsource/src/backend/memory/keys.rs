//! The in-memory key store: the reference implementation of the key store contract.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::personal::{
    other_key, validate_subject, Forgetting, KeyState, KeyStore, SubjectKey, SubjectRecord,
};

/// Keys of data subjects in memory (see [`crate::personal`]). Cheap to clone: clones share
/// the keys.
#[derive(Clone, Default)]
pub struct InMemoryKeyStore {
    inner: Arc<Mutex<Keys>>,
}

impl std::fmt::Debug for InMemoryKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryKeyStore")
            .field("subjects", &self.lock().subjects.len())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Keys {
    subjects: HashMap<String, Subject>,
    streams: HashMap<String, BTreeSet<(String, Uuid)>>,
}

struct Subject {
    key: Option<SubjectKey>,
    forgetting_since: Option<DateTime<Utc>>,
    forgotten_at: Option<DateTime<Utc>>,
}

impl Subject {
    fn state(&self) -> KeyState {
        match (&self.key, self.forgetting_since) {
            (Some(key), None) => KeyState::Active(key.clone()),
            _ => KeyState::Forgotten,
        }
    }
}

impl InMemoryKeyStore {
    /// A new, empty key store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Keys> {
        // Every change below is made whole before the lock is released.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl KeyStore for InMemoryKeyStore {
    async fn key_for_writing(
        &self,
        subject: &str,
        aggregate_type: &str,
        aggregate_id: Uuid,
        new_key: &SubjectKey,
    ) -> Result<KeyState> {
        validate_subject(subject)?;
        let mut keys = self.lock();
        keys.streams
            .entry(subject.to_owned())
            .or_default()
            .insert((aggregate_type.to_owned(), aggregate_id));
        let entry = keys
            .subjects
            .entry(subject.to_owned())
            .or_insert_with(|| Subject {
                key: Some(new_key.clone()),
                forgetting_since: None,
                forgotten_at: None,
            });
        Ok(entry.state())
    }

    async fn keys_for_reading(&self, subjects: &[&str]) -> Result<Vec<Option<KeyState>>> {
        let keys = self.lock();
        Ok(subjects
            .iter()
            .map(|s| keys.subjects.get(*s).map(Subject::state))
            .collect())
    }

    async fn begin_forgetting(&self, subject: &str) -> Result<Forgetting> {
        validate_subject(subject)?;
        let mut keys = self.lock();
        let entry = keys
            .subjects
            .entry(subject.to_owned())
            .or_insert_with(|| Subject {
                key: None,
                forgetting_since: None,
                forgotten_at: None,
            });
        let since = *entry.forgetting_since.get_or_insert_with(Utc::now);
        Ok(Forgetting::new(entry.key.clone(), since, entry.forgotten_at))
    }

    async fn streams_of(&self, subject: &str) -> Result<Vec<(String, Uuid)>> {
        let keys = self.lock();
        Ok(keys
            .streams
            .get(subject)
            .map(|streams| streams.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn finish_forgetting(&self, subject: &str) -> Result<()> {
        let mut keys = self.lock();
        match keys.subjects.get_mut(subject) {
            Some(entry) if entry.forgetting_since.is_some() => {
                entry.key = None;
                entry.forgotten_at.get_or_insert_with(Utc::now);
                Ok(())
            }
            _ => Err(not_forgetting(subject)),
        }
    }

    async fn export(&self, after: Option<&str>, limit: usize) -> Result<Vec<SubjectRecord>> {
        let keys = self.lock();
        let mut names: Vec<&String> = keys
            .subjects
            .keys()
            .filter(|name| after.is_none_or(|after| name.as_str() > after))
            .collect();
        names.sort();
        Ok(names
            .into_iter()
            .take(limit)
            .map(|name| {
                let subject = &keys.subjects[name];
                SubjectRecord::new(
                    name.clone(),
                    subject.key.clone(),
                    subject.forgetting_since,
                    subject.forgotten_at,
                    keys.streams
                        .get(name)
                        .map(|streams| streams.iter().cloned().collect())
                        .unwrap_or_default(),
                )
            })
            .collect())
    }

    async fn import(&self, record: &SubjectRecord) -> Result<()> {
        validate_subject(&record.subject)?;
        let mut keys = self.lock();
        let entry = keys
            .subjects
            .entry(record.subject.clone())
            .or_insert_with(|| Subject {
                key: record.key.clone(),
                forgetting_since: None,
                forgotten_at: None,
            });
        if let (Some(here), Some(there)) = (&entry.key, &record.key) {
            if here != there {
                return Err(other_key(&record.subject));
            }
        }
        entry.forgetting_since = entry.forgetting_since.or(record.forgetting_since);
        if record.forgotten_at.is_some() && entry.forgotten_at.is_none() {
            entry.key = None;
            entry.forgotten_at = record.forgotten_at;
        }
        keys.streams
            .entry(record.subject.clone())
            .or_default()
            .extend(record.streams.iter().cloned());
        Ok(())
    }

    async fn unfinished(&self) -> Result<Vec<String>> {
        let keys = self.lock();
        let mut subjects: Vec<String> = keys
            .subjects
            .iter()
            .filter(|(_, s)| s.forgetting_since.is_some() && s.forgotten_at.is_none())
            .map(|(name, _)| name.clone())
            .collect();
        subjects.sort();
        Ok(subjects)
    }
}

/// The error of finishing a forgetting that did not begin.
pub(crate) fn not_forgetting(subject: &str) -> Error {
    Error::InvalidInput(format!(
        "the forgetting of subject {} did not begin: begin it before finishing it",
        crate::text::escape(subject)
    ))
}
