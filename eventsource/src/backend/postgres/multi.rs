//! Saves over several streams in one statement (see [`crate::multi_stream`]).
//!
//! The statement reads the version of every stream the save writes or checks, and inserts
//! the events of every batch only if each is the one expected; the unique key on (stream,
//! version) fails it if a concurrent writer commits one of those versions first, as for a
//! one-stream append. A checked stream is not written, so the key would not guard it: the
//! statement also inserts, for each checked stream at version `v`, a placeholder row at
//! version `v + 1`, which the same transaction deletes before it commits. A concurrent
//! append of that version waits on the placeholder until the save commits (and then goes
//! in, the placeholder gone), and a save whose placeholder meets a version already
//! committed fails: either way the check held when the save committed. No reader ever sees
//! a placeholder.
//!
//! A save without checks of at most [`MAX_GROUPED_SAVE`] events that meets other appends
//! being written goes in a group statement with other such saves and batches (see
//! [`super::group`]): all or nothing still, and saved again alone if the group leaves it out
//! or fails.

use async_trait::async_trait;
use sqlx::error::ErrorKind;
use uuid::Uuid;

use super::append::{group_row, Columns};
use super::group::{Group, Member, Outcome, Turn, MAX_GROUPED_SAVE};
use super::sql::{EVENT_ID_KEY, MAX_BATCH};
use super::{query_error, to_bigint, PostgresEventStore};
use crate::error::{Error, Result};
use crate::event_store::Appended;
use crate::multi_stream::{MultiStreamAppend, StreamBatches};
use crate::slice::mask::SliceMask;

/// A save's arguments as the statement's arrays.
struct Arrays<'a> {
    stream_id: Vec<Uuid>,
    stream_type: Vec<&'a str>,
    expected: Vec<i64>,
    columns: Columns<'a>,
    aggregate_id: Vec<Uuid>,
    aggregate_type: Vec<&'a str>,
    check_id: Vec<Uuid>,
    check_type: Vec<&'a str>,
    check_version: Vec<i64>,
    placeholder: Vec<Uuid>,
}

impl<'a> Arrays<'a> {
    fn of(save: &StreamBatches<'a>) -> Result<Self> {
        let mut arrays = Arrays {
            stream_id: Vec::new(),
            stream_type: Vec::new(),
            expected: Vec::new(),
            columns: Columns::default(),
            aggregate_id: Vec::new(),
            aggregate_type: Vec::new(),
            check_id: Vec::new(),
            check_type: Vec::new(),
            check_version: Vec::new(),
            placeholder: Vec::new(),
        };
        for batch in save.writes() {
            arrays.stream_id.push(batch.aggregate_id);
            arrays.stream_type.push(batch.aggregate_type);
            arrays
                .expected
                .push(to_bigint(batch.expected_version, "expected version")?);
            let columns = Columns::of(batch.events)?;
            arrays.columns.extend(columns);
            for _ in batch.events {
                arrays.aggregate_id.push(batch.aggregate_id);
                arrays.aggregate_type.push(batch.aggregate_type);
            }
        }
        for check in save.checks() {
            let version = to_bigint(check.version, "checked version")?;
            arrays.stream_id.push(check.aggregate_id);
            arrays.stream_type.push(&check.aggregate_type);
            arrays.expected.push(version);
            arrays.check_id.push(check.aggregate_id);
            arrays.check_type.push(&check.aggregate_type);
            arrays.check_version.push(version);
            arrays.placeholder.push(Uuid::new_v4());
        }
        Ok(arrays)
    }
}

#[async_trait]
impl MultiStreamAppend for PostgresEventStore {
    async fn append_streams(&self, save: StreamBatches<'_>) -> Result<Vec<Appended>> {
        let rows = save.event_count() + save.checks().len();
        if rows > MAX_BATCH {
            return Err(Error::InvalidInput(format!(
                "a PostgreSQL save over several streams stores at most {MAX_BATCH} events and checks, not {rows}"
            )));
        }
        if save.checks().is_empty() && save.event_count() <= MAX_GROUPED_SAVE {
            let rows = save
                .writes()
                .iter()
                .flat_map(|batch| batch.events.iter().map(|e| group_row(e, batch.expected_version)))
                .collect::<Result<Vec<_>>>()?;
            let what = || "a save over several streams".to_owned();
            return match Group::join(self, Member::Save(rows)).await {
                Turn::Grouped(Outcome::Stored(positions)) => self.saved(&save, &positions),
                // Alone while the appends that arrive queue for the next group (the turn holds
                // them until the save ends), or again after the group left it out (a stream not
                // at its version: alone finds the conflict) or failed (alone finds the save
                // stored, if a statement given up on stored it); bounded either way, so that a
                // hanging statement holds nobody for long.
                _turn => self.bounded(what, self.append_streams_alone(save)).await,
            };
        }
        self.append_streams_alone(save).await
    }
}

impl PostgresEventStore {
    /// What a save stored by a group tells its caller, from its rows' positions.
    fn saved(&self, save: &StreamBatches<'_>, positions: &[i64]) -> Result<Vec<Appended>> {
        let mut rest = positions;
        let mut appended = Vec::with_capacity(save.writes().len());
        for batch in save.writes() {
            let (its, after) = rest.split_at(batch.events.len().min(rest.len()));
            let last = its.last().ok_or_else(|| {
                Error::corrupt(
                    self.sql.table.clone(),
                    format!(
                        "a group stored no event of {} {}",
                        batch.aggregate_type, batch.aggregate_id
                    ),
                )
            })?;
            appended.push(Appended {
                version: batch.version_after(),
                position: super::read::version_of(*last, &self.sql.table)?,
            });
            rest = after;
        }
        Ok(appended)
    }

    /// The save in a statement of its own (and a transaction, with checks).
    async fn append_streams_alone(&self, save: StreamBatches<'_>) -> Result<Vec<Appended>> {
        let a = Arrays::of(&save)?;
        let c = &a.columns;
        let what = "cannot save over several streams";
        let query = c
            .bind(
                sqlx::query_as::<_, (i64, Option<i64>)>(&self.sql.append_streams)
                    .bind(&a.stream_id)
                    .bind(&a.stream_type)
                    .bind(&a.expected),
            )
            .bind(&a.aggregate_id)
            .bind(&a.aggregate_type)
            .bind(&a.check_id)
            .bind(&a.check_type)
            .bind(&a.check_version)
            .bind(&a.placeholder);
        // Without checks the statement is the whole save, committed on its own; with them, the
        // transaction goes on to delete their placeholders.
        let mut tx = match a.placeholder.is_empty() {
            true => None,
            false => Some(self.pool.begin().await.map_err(|e| query_error(what, e))?),
        };
        let found = match &mut tx {
            None => query.fetch_all(&self.pool).await,
            Some(tx) => query.fetch_all(&mut **tx).await,
        };
        let found = match found {
            Ok(found) => found,
            Err(e) => {
                if let Some(tx) = tx {
                    let _ = tx.rollback().await;
                }
                return self.refused_streams(&save, e).await;
            }
        };
        let mut actual = Vec::with_capacity(found.len());
        for (version, _) in &found {
            actual.push(super::read::version_of(*version, &self.sql.table)?);
        }
        if let Some(conflict) = save.conflicts(&actual) {
            if let Some(tx) = tx {
                let _ = tx.rollback().await;
            }
            return save.acknowledge_stored(self, conflict).await;
        }
        if let Some(mut tx) = tx {
            sqlx::query(&self.sql.delete_placeholders)
                .bind(&a.placeholder)
                .execute(&mut *tx)
                .await
                .map_err(|e| query_error(what, e))?;
            tx.commit().await.map_err(|e| query_error(what, e))?;
        }
        let slices = SliceMask::of_streams(save.writes().iter().map(|b| (b.aggregate_type, b.aggregate_id)));
        self.notifier.appended(&self.pool, &slices);
        save.writes()
            .iter()
            .zip(&found)
            .map(|(batch, (_, last))| {
                let last = last.ok_or_else(|| {
                    Error::corrupt(
                        self.sql.table.clone(),
                        format!(
                            "a save over several streams stored no event of {} {}",
                            batch.aggregate_type, batch.aggregate_id
                        ),
                    )
                })?;
                Ok(Appended {
                    version: batch.version_after(),
                    position: super::read::version_of(last, &self.sql.table)?,
                })
            })
            .collect()
    }
}

impl PostgresEventStore {
    /// The outcome of a save whose statement failed: a unique key taken by a transaction
    /// that committed while it ran is a version of a stream it writes or checks (another
    /// writer came first: the conflict, read again) or an event id (the save itself, made
    /// again after a lost answer, or a reused id).
    async fn refused_streams(&self, save: &StreamBatches<'_>, error: sqlx::Error) -> Result<Vec<Appended>> {
        let what = "cannot save over several streams";
        let db = match error {
            sqlx::Error::Database(db) if db.kind() == ErrorKind::UniqueViolation => db,
            e => return Err(query_error(what, e)),
        };
        let otherwise = match db.constraint() == Some(EVENT_ID_KEY) {
            true => Error::InvalidInput(format!("{what}: an event id of the save is already stored")),
            false => query_error(what, sqlx::Error::Database(db)),
        };
        save.refused(self, otherwise).await
    }
}
