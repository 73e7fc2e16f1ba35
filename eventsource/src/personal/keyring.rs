//! [`Keyring`]: a key store with a bounded cache, which seals and opens personal values.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use uuid::Uuid;

use super::cache::Expiring;
use super::key_store::{KeyState, KeyStore, SubjectKey};
use crate::error::{Error, Result};

/// How many subjects' keys a keyring keeps by default.
const DEFAULT_CAPACITY: usize = 10_000;
/// How long a keyring keeps a key by default.
const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// A [`KeyStore`] with a bounded cache of keys: what repositories and consumers seal and open
/// personal values with (see [`crate::personal`]). Cheap to clone; clones share the cache.
///
/// A key is kept for at most the cache's time to live (30 s by default) and for at most
/// 10,000 subjects at a time, the oldest making room. A subject forgotten by another process
/// is seen as forgotten here once its cached key expires.
#[derive(Clone)]
pub struct Keyring {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn KeyStore>,
    /// Subjects' states, as read.
    reading: Mutex<Expiring<String, KeyState>>,
    /// Keys handed out for writing to a stream, whose link to the subject is recorded.
    writing: Mutex<Expiring<(String, String, Uuid), SubjectKey>>,
    ttl: Duration,
    lookups: AtomicU64,
    /// Counts evictions: an answer of the store asked before the latest one is not cached,
    /// so that an eviction is never undone by a lookup that was under way.
    evictions: AtomicU64,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("ttl", &self.inner.ttl)
            .field("lookups", &self.lookups())
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// The keys of `store`, cached for 30 s, for at most 10,000 subjects.
    pub fn new(store: Arc<dyn KeyStore>) -> Self {
        Self::build(store, DEFAULT_CAPACITY, DEFAULT_TTL)
    }

    /// The keys of `store`, cached for `ttl`, for at most `subjects` subjects (no cache if
    /// either is zero: every read and write asks the store).
    pub fn with_cache(store: Arc<dyn KeyStore>, subjects: usize, ttl: Duration) -> Self {
        Self::build(store, subjects, ttl)
    }

    fn build(store: Arc<dyn KeyStore>, subjects: usize, ttl: Duration) -> Self {
        Keyring {
            inner: Arc::new(Inner {
                store,
                reading: Mutex::new(Expiring::new(subjects, ttl)),
                writing: Mutex::new(Expiring::new(subjects, ttl)),
                ttl,
                lookups: AtomicU64::new(0),
                evictions: AtomicU64::new(0),
            }),
        }
    }

    /// The key store.
    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.inner.store
    }

    /// How long a key is kept in the cache: how long another process may still read a
    /// subject forgotten here.
    pub fn cache_ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// How many calls this keyring made to its key store: what the cache did not answer.
    pub fn lookups(&self) -> u64 {
        self.inner.lookups.load(Ordering::Relaxed)
    }

    /// Drops what the cache holds of `subject`, so that the next use asks the store.
    pub fn evict(&self, subject: &str) {
        self.inner.evictions.fetch_add(1, Ordering::SeqCst);
        lock(&self.inner.reading).remove(subject);
        lock(&self.inner.writing).retain(|(s, _, _)| s != subject);
    }

    /// Whether no eviction happened since the count `asked` was read.
    fn unevicted_since(&self, asked: u64) -> bool {
        self.inner.evictions.load(Ordering::SeqCst) == asked
    }

    /// The key to seal `subject`'s values in the stream with, made if the subject has none:
    /// [`Error::SubjectForgotten`] if it is forgotten.
    pub(crate) async fn writing_key(
        &self,
        subject: &str,
        aggregate_type: &str,
        aggregate_id: Uuid,
    ) -> Result<SubjectKey> {
        let link = (subject.to_owned(), aggregate_type.to_owned(), aggregate_id);
        if let Some(key) = lock(&self.inner.writing).get(&link) {
            return Ok(key);
        }
        let new_key = super::cipher::new_key()?;
        self.inner.lookups.fetch_add(1, Ordering::Relaxed);
        let asked = self.inner.evictions.load(Ordering::SeqCst);
        let state = self
            .inner
            .store
            .key_for_writing(subject, aggregate_type, aggregate_id, &new_key)
            .await?;
        {
            // Checked under the lock that an eviction takes after counting itself.
            let mut reading = lock(&self.inner.reading);
            if self.unevicted_since(asked) {
                reading.put(subject.to_owned(), state.clone());
            }
        }
        match state {
            KeyState::Active(key) => {
                let mut writing = lock(&self.inner.writing);
                if self.unevicted_since(asked) {
                    writing.put(link, key.clone());
                }
                Ok(key)
            }
            KeyState::Forgotten => Err(Error::SubjectForgotten {
                subject: subject.to_owned(),
            }),
        }
    }

    /// The states of `subjects` for reading, in order: `None` for a subject with no key.
    pub(crate) async fn reading_keys(&self, subjects: &[&str]) -> Result<Vec<Option<KeyState>>> {
        let mut states: Vec<Option<KeyState>> = {
            let cache = lock(&self.inner.reading);
            subjects.iter().map(|s| cache.get(*s)).collect()
        };
        let missing: Vec<&str> = subjects
            .iter()
            .zip(&states)
            .filter(|(_, state)| state.is_none())
            .map(|(s, _)| *s)
            .collect();
        if missing.is_empty() {
            return Ok(states);
        }
        self.inner.lookups.fetch_add(1, Ordering::Relaxed);
        let asked = self.inner.evictions.load(Ordering::SeqCst);
        let found = self.inner.store.keys_for_reading(&missing).await?;

        if found.len() != missing.len() {
            return Err(Error::corrupt(
                "the key store",
                format!(
                    "asked for {} subjects, it answered for {}",
                    missing.len(),
                    found.len()
                ),
            ));
        }
        let mut found = missing.into_iter().zip(found);
        let mut cache = lock(&self.inner.reading);
        let current = self.unevicted_since(asked);
        for state in states.iter_mut().filter(|s| s.is_none()) {
            let (subject, answer) = found.next().expect("one answer per missing subject");
            if let (Some(answer), true) = (&answer, current) {
                cache.put(subject.to_owned(), answer.clone());
            }
            *state = answer;
        }
        Ok(states)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A cache left half-updated by a panic is still a cache: every entry is whole.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
