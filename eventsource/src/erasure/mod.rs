//! Erasure: forgetting a data subject in every copy of its personal values, and proving it.
//!
//! Personal fields are stored sealed with a key per data subject (see [`crate::personal`]),
//! so deleting the key erases them from every event at once. But the values are copied
//! elsewhere in the clear: into snapshots (an aggregate's state), into the errors of dead
//! letters, into read models. [`Erasure::forget`] reaches each of them, and the key last:
//!
//! 1. **The subject reads as forgotten from now on** ([`KeyStore::begin_forgetting`](crate::personal::KeyStore::begin_forgetting)): loads,
//!    replays and consumers read its values as [`Personal::Forgotten`](crate::personal::Personal),
//!    and new values of it are refused. The key is kept for now, to read the values once.
//! 2. **It waits for other processes' caches** ([`Erasure::settle`], by default a
//!    [`Keyring`]'s time to live, 30 s, counted from when the forgetting began): until then a
//!    process that had the key cached may still read the values, and write them into a
//!    snapshot. Then it reads the subject's values with the key: they are what it looks for
//!    in every copy (each string or number of four characters or more).
//! 3. **Writers that loaded the values before are stopped**: each stream that holds them gets
//!    the system event [`SUBJECT_FORGOTTEN`](crate::lifecycle::SUBJECT_FORGOTTEN), so that a
//!    process holding an aggregate loaded before the forgetting meets a conflict when it
//!    saves, and loads it again with the values forgotten: it cannot write them back into a
//!    snapshot. Then **snapshots** of every such stream are deleted, and written
//!    again from a replay, which reads the values as forgotten (for aggregate types
//!    registered in this program; the others' are deleted only).
//! 4. **Dead letters** whose error quotes a value have it replaced by `[forgotten]`.
//! 5. **Registered holders** ([`PersonalDataHolder`]: read models, caches, indexes) are told
//!    to erase or anonymise what they hold of the subject.
//! 6. **Every place is read again**: the key store must read the subject as forgotten (then
//!    no event reads a value), each stream's snapshot must be the one step 3 wrote or hold no
//!    value as a whole string or number of its state, no dead letter may quote a value, and
//!    each holder must say it holds nothing. What still holds a value is a finding in the
//!    [`ErasureReport`]; with none, the key is deleted
//!    ([`KeyStore::finish_forgetting`](crate::personal::KeyStore::finish_forgetting)) and the forgetting is finished.
//!
//! A forgetting killed half way is run again and finishes: each step is safe to repeat, the
//! key stays until the report is clean, and [`Erasure::unfinished`] lists the subjects whose
//! forgetting began and did not finish. `admin forget SUBJECT` runs it and exits non-zero
//! when the report has findings.
//!
//! What it does not reach: backups of the database (a restored backup holds the key: forget
//! again after a restore), logs, the outbox's messages already published to other services
//! (they carry the values sealed, and other services cannot open them), the state of process
//! managers (keep subject ids there, not values), and copies the application made elsewhere
//! that it did not register as a holder. The guide `docs/guides/personal-data.md` says how to
//! design events so that personal values sit only in declared fields.

mod holder;
mod report;
mod values;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use uuid::Uuid;

pub use holder::PersonalDataHolder;
pub use report::ErasureReport;

use crate::backend::Stores;
use crate::error::{Error, Result};
use crate::personal::{open, validate_subject, Keyring};
use crate::repository::operations_of;
use values::Sought;

/// How often the marking of one stream tries again after another writer appended first.
const MARK_ATTEMPTS: usize = 10;

/// Dead letters read at a time.
const LETTERS_PAGE: usize = 500;

/// Forgets data subjects in every copy of their personal values: see the [module docs](self).
#[derive(Clone)]
pub struct Erasure {
    stores: Stores,
    keys: Keyring,
    holders: Vec<Arc<dyn PersonalDataHolder>>,
    settle: Duration,
}

impl std::fmt::Debug for Erasure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Erasure")
            .field("backend", &self.stores.backend_name())
            .field(
                "holders",
                &self.holders.iter().map(|h| h.name()).collect::<Vec<_>>(),
            )
            .field("settle", &self.settle)
            .finish()
    }
}

impl Erasure {
    /// The erasure of subjects from `stores`, with their keys;
    /// [`Error::InvalidConfiguration`] for stores that keep none, or in a build without the
    /// `personal-data` feature.
    pub fn new(stores: &Stores) -> Result<Self> {
        if !cfg!(feature = "personal-data") {
            return Err(Error::InvalidConfiguration(
                "erasure reads the subjects' values with the `personal-data` feature of \
                 eventsourcing-kit, which this build lacks"
                    .into(),
            ));
        }
        let keys = stores.keys.clone().ok_or_else(|| {
            Error::InvalidConfiguration(format!(
                "the {} stores keep no keys of data subjects: give them a keyring (`Stores::with_keys`)",
                stores.backend_name()
            ))
        })?;
        Ok(Erasure {
            stores: stores.clone(),
            settle: keys.cache_ttl(),
            keys,
            holders: Vec::new(),
        })
    }

    /// Also tells `holder` (a read model, a cache) to forget each subject, and reads it again.
    #[must_use]
    pub fn holder(mut self, holder: Arc<dyn PersonalDataHolder>) -> Self {
        self.holders.push(holder);
        self
    }

    /// How long after a forgetting begins it waits before it rewrites snapshots and looks
    /// for copies: at least as long as any process keeps a key in its cache (a [`Keyring`]'s
    /// time to live). Zero where one process uses the stores, as in tests.
    #[must_use]
    pub fn settle(mut self, wait: Duration) -> Self {
        self.settle = wait;
        self
    }

    /// The subjects whose forgetting began and did not finish (killed half way, or with
    /// findings): run [`forget`](Self::forget) again for each.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the key store failed.
    pub async fn unfinished(&self) -> Result<Vec<String>> {
        self.keys.store().unfinished().await
    }

    /// Forgets `subject` in every copy of its values, reads every place again, and deletes
    /// its key if none holds a value any more: see the [module docs](self). Runs again after
    /// a crash, or after findings were fixed, to finish.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a subject no key store keeps; [`Error::Store`] if a store
    /// failed (run it again); [`Error::Corrupt`] for a stored value of the subject that does
    /// not open with its key. Findings are no error: see [`ErasureReport::is_clean`].
    ///
    /// # Cancel safety
    ///
    /// Each step commits on its own and is safe to repeat: dropped, the subject stays
    /// forgotten for readers, and running it again finishes.
    pub async fn forget(&self, subject: &str) -> Result<ErasureReport> {
        validate_subject(subject)?;
        let store = self.keys.store();
        let forgetting = store.begin_forgetting(subject).await?;
        self.keys.evict(subject);
        tracing::info!(subject, "forgetting a data subject");
        let streams = store.streams_of(subject).await?;
        let mut report = ErasureReport {
            subject: subject.to_owned(),
            streams: streams.len(),
            ..ErasureReport::default()
        };
        if forgetting.finished_at.is_none() {
            let waited = (chrono::Utc::now() - forgetting.since)
                .to_std()
                .unwrap_or_default();
            if let Some(left) = self.settle.checked_sub(waited).filter(|left| !left.is_zero()) {
                tracing::info!(subject, wait = ?left, "waiting for other processes' cached keys to expire");
                crate::deadline::sleep(left).await;
            }
        }
        // After the wait: values written meanwhile by a process that had the key are sought too.
        let mut sought = Sought::default();
        if let Some(key) = &forgetting.key {
            for (aggregate_type, id) in &streams {
                let mut events = self.stores.events.read_stream(*id, aggregate_type, 0);
                while let Some(event) = events.next().await {
                    for value in open::values_of(&event?.envelope, subject, key)? {
                        sought.add(&value);
                    }
                }
            }
            report.values_known = true;
        }
        report.values_sought = sought.texts().len();
        if forgetting.finished_at.is_none() {
            report.streams_marked = self.mark_streams(&streams).await?;
        }
        // Reads the store every time: the subject is forgotten there, whatever a cache holds.
        let reader = Keyring::with_cache(store.clone(), 0, Duration::ZERO);
        let written = self.rewrite_snapshots(&streams, &reader, &mut report).await?;
        if report.values_known {
            report.letters_redacted = self.redact_letters(&sought).await?;
        }
        for holder in &self.holders {
            holder.forget(subject).await?;
            report.holders.push(holder.name());
        }
        report.findings = self
            .findings(subject, &streams, &sought, &reader, &written)
            .await?;
        if report.is_clean() {
            if forgetting.finished_at.is_none() {
                store.finish_forgetting(subject).await?;
            }
            report.key_deleted = true;
            tracing::info!(subject, "data subject forgotten");
        } else {
            tracing::warn!(
                subject,
                findings = report.findings.len(),
                "data subject forgotten for readers, but copies remain; the key is kept"
            );
        }
        Ok(report)
    }

    /// Appends [`SUBJECT_FORGOTTEN`](crate::lifecycle::SUBJECT_FORGOTTEN) to each of
    /// `streams` that takes writes and does not end with it already; how many it appended to.
    async fn mark_streams(&self, streams: &[(String, Uuid)]) -> Result<u64> {
        use crate::lifecycle::{last_event, system_event, CLOSED, DELETED, SUBJECT_FORGOTTEN};

        let events = &*self.stores.events;
        let mut marked = 0;
        for (aggregate_type, id) in streams {
            let mut attempts = 0;
            loop {
                let version = events.stream_version(*id, aggregate_type).await?;
                let last = last_event(events, *id, aggregate_type, version).await?;
                if last.is_none_or(|(last, _)| [CLOSED, DELETED, SUBJECT_FORGOTTEN].contains(&last.as_str()))
                {
                    break;
                }
                let marker = system_event(*id, aggregate_type, version + 1, SUBJECT_FORGOTTEN);
                match events.append(*id, aggregate_type, version, &[marker]).await {
                    Ok(_) => {
                        marked += 1;
                        break;
                    }
                    // Another writer appended first: it had the forgotten values or not;
                    // either way the marker goes after it.
                    Err(e) if e.is_conflict() && attempts < MARK_ATTEMPTS => attempts += 1,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(marked)
    }

    /// Deletes the snapshots of `streams` and writes them again from a replay through
    /// `reader`, which reads the subject's values as forgotten; the states written, by stream.
    async fn rewrite_snapshots(
        &self,
        streams: &[(String, Uuid)],
        reader: &Keyring,
        report: &mut ErasureReport,
    ) -> Result<Written> {
        let mut written = Written::new();
        for (aggregate_type, id) in streams {
            if !self.stores.snapshots.delete_snapshot(*id, aggregate_type).await? {
                continue;
            }
            report.snapshots_deleted += 1;
            let Some(operations) = operations_of(aggregate_type) else {
                continue;
            };
            let warmed = operations
                .warm_snapshot(
                    self.stores.events.clone(),
                    self.stores.snapshots.clone(),
                    Some(reader.clone()),
                    *id,
                )
                .await?;
            if warmed.is_some() {
                report.snapshots_rewritten += 1;
                let snapshot = self
                    .stores
                    .snapshots
                    .get_snapshot(*id, aggregate_type, u32::MAX)
                    .await?;
                if let Some(snapshot) = snapshot {
                    written.insert((aggregate_type.clone(), *id), snapshot.state);
                }
            }
        }
        Ok(written)
    }

    /// Every dead letter of every subscription, a page at a time, to `each`.
    async fn each_letter(
        &self,
        mut each: impl FnMut(&crate::subscription::DeadLetter) -> Option<String>,
    ) -> Result<Vec<(String, Uuid, String)>> {
        let mut chosen = Vec::new();
        for status in self.stores.subscriptions.subscriptions().await? {
            if status.dead_letters == 0 {
                continue;
            }
            let mut skip = 0;
            loop {
                let page = self
                    .stores
                    .subscriptions
                    .dead_letters(&status.name, skip, LETTERS_PAGE)
                    .await?;
                for letter in &page {
                    if let Some(text) = each(letter) {
                        chosen.push((status.name.clone(), letter.event_id, text));
                    }
                }
                if page.len() < LETTERS_PAGE {
                    break;
                }
                skip += page.len();
            }
        }
        Ok(chosen)
    }

    /// Redacts the values from the errors of dead letters; how many letters it changed.
    async fn redact_letters(&self, sought: &Sought) -> Result<u64> {
        let quoting = self
            .each_letter(|letter| sought.found_in(&letter.error).then(|| letter.error.clone()))
            .await?;
        let mut redacted = 0;
        for (name, event_id, error) in quoting {
            redacted += self
                .stores
                .subscriptions
                .redact_dead_letter(&name, event_id, &error, &sought.redact(&error))
                .await?;
        }
        Ok(redacted)
    }

    /// Every place that, read again, still holds one of the values: the key store, if it
    /// still gives the key (the events then read open); a snapshot other than the one this
    /// forgetting wrote from a replay that read the values forgotten, if a string or number of
    /// its state is one of them; a dead letter whose error quotes one; a holder that says so.
    async fn findings(
        &self,
        subject: &str,
        streams: &[(String, Uuid)],
        sought: &Sought,
        reader: &Keyring,
        written: &Written,
    ) -> Result<Vec<String>> {
        let mut findings = Vec::new();
        let state = reader.reading_keys(&[subject]).await?;
        if matches!(state.first(), Some(Some(crate::personal::KeyState::Active(_)))) {
            findings.push("the key store still gives the subject's key: its events read open".to_owned());
        }
        if !sought.texts().is_empty() {
            for (aggregate_type, id) in streams {
                let snapshot = self
                    .stores
                    .snapshots
                    .get_snapshot(*id, aggregate_type, u32::MAX)
                    .await?;
                let Some(snapshot) = snapshot else {
                    continue;
                };
                if written.get(&(aggregate_type.clone(), *id)) == Some(&snapshot.state) {
                    continue;
                }
                let held = match serde_json::from_str::<serde_json::Value>(&snapshot.state) {
                    Ok(state) => sought.found_whole_in(&state),
                    Err(_) => sought.found_in(&snapshot.state),
                };
                if held {
                    findings.push(format!("the snapshot of {aggregate_type} {id} holds a value"));
                }
            }
            let letters = self
                .each_letter(|letter| sought.found_in(&letter.error).then(String::new))
                .await?;
            for (name, event_id, _) in letters {
                findings.push(format!(
                    "the dead letter of {name} for event {event_id} quotes a value"
                ));
            }
        }
        for holder in &self.holders {
            if holder.holds(subject, sought.texts()).await? {
                findings.push(format!("{} still holds the subject's data", holder.name()));
            }
        }
        Ok(findings)
    }
}

/// The snapshot states a forgetting wrote, by stream.
type Written = std::collections::HashMap<(String, Uuid), String>;
