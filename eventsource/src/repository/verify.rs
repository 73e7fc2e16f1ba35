//! Verification: an aggregate loaded as a load would (from its snapshot and the events after
//! it) against the same aggregate replayed from every event.
//!
//! A state's shape is what the schema lock sees; an `Apply` impl changed without a schema
//! bump keeps the shape and still changes what a replay gives, so snapshots taken before the
//! change no longer agree with their history. Only comparing the two loads shows it.

use std::collections::HashSet;

use futures_util::StreamExt;
use serde_json::Value;
use tracing::Instrument;
use uuid::Uuid;

use super::load::Start;
use super::Repository;
use crate::aggregate::Aggregate;
use crate::error::Result;
use crate::snapshot::MissReason;

/// The outcome of [`Repository::verify`] for one aggregate.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Verification {
    /// The aggregate verified.
    pub aggregate_id: Uuid,
    /// Its version.
    pub version: u64,
    /// The version of the snapshot the load started from; `None` when no usable snapshot
    /// was stored (the load replayed every event, so there is nothing to compare).
    pub snapshot_version: Option<u64>,
    /// Why a stored snapshot was not used, if one was stored and not used: of an older schema
    /// that does not migrate, a state that does not decode, or of another history or beyond
    /// the stream's head (which the load deleted, as every load does).
    pub unusable: Option<MissReason>,
    /// Where the state from the snapshot and the state from a full replay differ: empty
    /// when they agree.
    pub drift: Vec<Drift>,
}

impl Verification {
    /// Whether the state from the snapshot differs from the full replay.
    pub fn drifted(&self) -> bool {
        !self.drift.is_empty()
    }
}

/// One value that differs between the two loads.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Drift {
    /// Where, in the state's serde form: `balance`, `items[2].quantity`; empty for the
    /// whole state.
    pub path: String,
    /// The value loaded from the snapshot and the events after it (`None`: missing there).
    pub from_snapshot: Option<Value>,
    /// The value replayed from every event (`None`: missing there).
    pub from_replay: Option<Value>,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<Value>| v.as_ref().map_or("(missing)".to_owned(), Value::to_string);
        let path = if self.path.is_empty() {
            "the state"
        } else {
            &self.path
        };
        write!(
            f,
            "{path}: {} from the snapshot, {} from a full replay",
            show(&self.from_snapshot),
            show(&self.from_replay)
        )
    }
}

/// The outcome of verifying many aggregates of one type.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Aggregates verified.
    pub verified: u64,
    /// Of them, loaded from a snapshot (the others had none to compare).
    pub with_snapshot: u64,
    /// The aggregates whose snapshot drifted from their history, with where.
    pub drifted: Vec<Verification>,
    /// The aggregates whose stored snapshot was not used, and why.
    pub unusable: Vec<(Uuid, MissReason)>,
}

impl<A: Aggregate> Repository<A> {
    /// Loads the aggregate as [`load`](Self::load) does, from its snapshot and the events
    /// after it, and again from every event, and compares the two states field by field.
    ///
    /// A drift means the snapshot does not stand for its history: most often an `Apply`
    /// impl changed without a schema version bump, which no shape check can see. Bump
    /// `schema_version` (the old snapshots are then ignored) or delete the type's snapshots.
    /// The load counts in [`metrics`](Self::metrics) as any load does. A stream with no
    /// events is [`Error::NotFound`](crate::Error::NotFound).
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load).
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future loses nothing, and nothing is left half done.
    pub async fn verify(&self, id: Uuid) -> Result<Verification> {
        let span = tracing::debug_span!("eventsource.repository.verify", aggregate.id = %id, aggregate.type = A::TYPE_NAME);
        let (loaded, start) = self.load_in(id, &span).instrument(span.clone()).await?;
        let snapshot_version = start.snapshot_version();
        let unusable = match start {
            Start::Replayed(reason) => reason,
            Start::Snapshot(_) => None,
        };
        // Up to the loaded version only: events appended meanwhile are no drift.
        let replayed = self.replay_until(id, loaded.version()).await?;
        let drift = match snapshot_version {
            None => Vec::new(),
            Some(_) => {
                let as_json = |state: &A| serde_json::to_value(state).unwrap_or(Value::Null);
                let mut drift = Vec::new();
                differences(
                    String::new(),
                    &as_json(loaded.state()),
                    &as_json(replayed.state()),
                    &mut drift,
                );
                if loaded.version() != replayed.version() {
                    drift.push(Drift {
                        path: "(version)".into(),
                        from_snapshot: Some(loaded.version().into()),
                        from_replay: Some(replayed.version().into()),
                    });
                }
                drift
            }
        };
        if !drift.is_empty() {
            tracing::warn!(aggregate.id = %id, aggregate.type = A::TYPE_NAME, drift = drift.len(), "snapshot drifted from its history");
        }
        Ok(Verification {
            aggregate_id: id,
            version: replayed.version(),
            snapshot_version,
            unusable,
            drift,
        })
    }

    /// Verifies each aggregate of `ids` ([`verify`](Self::verify)); one that has no events is
    /// skipped.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load), for the first aggregate that cannot be loaded.
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future loses nothing, and nothing is left half done.
    pub async fn verify_each(&self, ids: impl IntoIterator<Item = Uuid>) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        for id in ids {
            let verification = match self.verify(id).await {
                Ok(verification) => verification,
                Err(e) if e.is_not_found() || matches!(e, crate::error::Error::StreamDeleted { .. }) => {
                    continue
                }
                Err(e) => return Err(e),
            };
            report.verified += 1;
            report.with_snapshot += u64::from(verification.snapshot_version.is_some());
            if let Some(reason) = verification.unusable {
                report.unusable.push((verification.aggregate_id, reason));
            }
            if verification.drifted() {
                report.drifted.push(verification);
            }
        }
        Ok(report)
    }

    /// Verifies up to `sample` aggregates of this type, chosen evenly at random among the
    /// streams of the global feed, which it reads once to find them.
    ///
    /// # Errors
    ///
    /// [`Error::Store`](crate::Error::Store) if the store failed (transient for a lost
    /// connection or a timeout: see [`Error::is_transient`](crate::Error::is_transient)), and
    /// as [`load`](Self::load).
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future loses nothing, and nothing is left half done.
    pub async fn verify_sample(&self, sample: usize) -> Result<VerifyReport> {
        let ids = self.sample_ids(sample).await?;
        self.verify_each(ids).await
    }

    /// Up to `sample` distinct ids of this type's streams, by reservoir sampling the feed.
    async fn sample_ids(&self, sample: usize) -> Result<Vec<Uuid>> {
        let mut seen = HashSet::new();
        let mut chosen = Vec::with_capacity(sample);
        let mut feed = self.events.read_all(0);
        while let Some(event) = feed.next().await {
            let event = event?;
            if *event.aggregate_type != *A::TYPE_NAME || !seen.insert(event.aggregate_id) {
                continue;
            }
            let n = seen.len();
            if chosen.len() < sample {
                chosen.push(event.aggregate_id);
            } else {
                let slot = (Uuid::new_v4().as_u128() % n as u128) as usize;
                if slot < sample {
                    chosen[slot] = event.aggregate_id;
                }
            }
        }
        Ok(chosen)
    }
}

/// Appends where `a` (from the snapshot) and `b` (from the replay) differ, by path.
fn differences(path: String, a: &Value, b: &Value, out: &mut Vec<Drift>) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let at = join(&path, key);
                match b.get(key) {
                    Some(other) => differences(at, value, other, out),
                    None => out.push(Drift {
                        path: at,
                        from_snapshot: Some(value.clone()),
                        from_replay: None,
                    }),
                }
            }
            for (key, value) in b.iter().filter(|(key, _)| !a.contains_key(*key)) {
                out.push(Drift {
                    path: join(&path, key),
                    from_snapshot: None,
                    from_replay: Some(value.clone()),
                });
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                differences(format!("{path}[{i}]"), x, y, out);
            }
        }
        _ if a == b => {}
        _ => out.push(Drift {
            path,
            from_snapshot: Some(a.clone()),
            from_replay: Some(b.clone()),
        }),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn differences_are_named_by_path() {
        let mut out = Vec::new();
        differences(
            String::new(),
            &json!({"balance": 10, "items": [{"q": 1}, {"q": 2}], "gone": true, "same": "x"}),
            &json!({"balance": 12, "items": [{"q": 1}, {"q": 3}], "new": 1, "same": "x"}),
            &mut out,
        );
        let paths: Vec<String> = out.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            paths,
            [
                "balance: 10 from the snapshot, 12 from a full replay",
                "gone: true from the snapshot, (missing) from a full replay",
                "items[1].q: 2 from the snapshot, 3 from a full replay",
                "new: (missing) from the snapshot, 1 from a full replay",
            ]
        );
    }
}
