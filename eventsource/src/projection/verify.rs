//! A read model checked against today's code: each stream verified is rebuilt from its
//! history into an empty scratch copy of the read model, and the rows it gives there are
//! compared with the rows the live read model holds for it.
//!
//! A projection's code changes (a fixed bug, a new column, an upcast of an old event); the
//! rows it wrote before do not. [`Projection::verify`] answers "must this projection be
//! rebuilt?" before a wrong answer goes out: it takes a sample of streams (or the streams
//! of a range of the feed, [`Projection::streams_between`]), and for each reads
//!
//! - the **live rows**: what the read model holds for the stream now, and the position up to
//!   which the projection had applied the stream's slice (its checkpoint, or its consumer
//!   group's range's);
//! - the **rebuilt rows**: what today's code makes of the stream's events up to that
//!   position, applied in order to a scratch copy of the read model that is thrown away
//!   afterwards (on SQLite and PostgreSQL, temporary tables in a transaction that is rolled
//!   back, so nothing is ever committed; in memory, a copy of the initial state).
//!
//! Rows are compared as sets; a stream whose rows differ is a [`Drift`], with the rows only
//! one side has. The projection may keep running: a stream whose events were applied while
//! its rows were read is read again, and reported as [moving](VerifyReport::moving) if it
//! never held still.
//!
//! # What a projection must provide
//!
//! Verifying compares rows **per stream**, so it fits read models whose rows each follow
//! from the events of one stream (an account's balance row, an order's row), the common
//! shape. A row that sums over many streams (a total of all accounts) cannot be rebuilt
//! from one stream and is left out of the rows a stream lists. The projection gives two
//! things a rebuild does not need:
//!
//! - a **scratch copy of itself**: the same code writing to tables elsewhere
//!   ([`SqlProjection::scratch`](crate::backend::SqlProjection::scratch), given the schema of
//!   the temporary tables; a [`MemoryProjection`](super::MemoryProjection) is copied from its
//!   initial state, with nothing to write);
//! - **the rows of one stream**: the queries that read them
//!   ([`SqlProjection::stream_rows`](crate::backend::SqlProjection::stream_rows)), or the rows
//!   themselves ([`MemoryProjection::stream_rows`](super::MemoryProjection::stream_rows)).
//!
//! Projections written with a backend's own trait
//! ([`PostgresProjection`](crate::backend::postgres::PostgresProjection),
//! [`SqliteProjection`](crate::backend::sqlite::SqliteProjection)) cannot be verified:
//! [`verify`](Projection::verify) refuses them with [`Error::InvalidInput`].

use std::collections::BTreeSet;

use async_trait::async_trait;
use futures_util::TryStreamExt;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::Projection;
use crate::error::{Error, Result};
use crate::event::StoredEvent;
use crate::subscription::HandlerError;

/// How many times a stream whose events the projection applied while it was read is read
/// again before it is reported as moving.
const READS_PER_STREAM: usize = 3;

/// One stream: its aggregate type and id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct StreamKey {
    /// The aggregate type.
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: Uuid,
}

impl StreamKey {
    /// The stream of aggregate `aggregate_id` of type `aggregate_type`.
    pub fn new(aggregate_type: impl Into<String>, aggregate_id: Uuid) -> Self {
        StreamKey {
            aggregate_type: aggregate_type.into(),
            aggregate_id,
        }
    }
}

impl std::fmt::Display for StreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.aggregate_type, self.aggregate_id)
    }
}

/// One row of a read model as verifying compares and shows it: the table (or any name the
/// projection gives the place) and its values, a JSON object of column names to values.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Row {
    /// Where the row is.
    pub table: String,
    /// Its values.
    pub values: Value,
}

impl Row {
    /// A row of `table` with `values`.
    pub fn new(table: impl Into<String>, values: Value) -> Self {
        Row {
            table: table.into(),
            values,
        }
    }

    /// The row as one line of text, which also orders rows.
    fn text(&self) -> String {
        format!("{} {}", self.table, self.values)
    }
}

/// What [`Projection::verify`] needs of a read model: the rows of one stream, live and
/// rebuilt. A [`ReadModelStore`](super::ReadModelStore) hands it out with
/// [`verifier`](super::ReadModelStore::verifier) when its projection provides what the
/// [module docs](self) list.
///
/// # Contract
///
/// - [`stream_rows`](Self::stream_rows) reads the rows the events of `stream` made in the
///   live read model, as committed, in any order.
/// - [`rebuilt_rows`](Self::rebuilt_rows) applies `events` (the stream's history, in order,
///   as the projection takes it) to an empty scratch copy of the read model with the
///   projection's code, and reads the same rows there. It commits nothing and changes
///   nothing that the live read model or its queries see. A failure of the projection's code
///   on an event is its `Err`.
#[async_trait]
pub trait VerifiableReadModel: Send + Sync {
    /// The rows the events of `stream` made in the read model.
    async fn stream_rows(&self, stream: &StreamKey) -> std::result::Result<Vec<Row>, HandlerError>;

    /// The rows `events`, the history of `stream`, make in an empty scratch copy of the
    /// read model, which is then thrown away.
    async fn rebuilt_rows(
        &self,
        stream: &StreamKey,
        events: &[StoredEvent],
    ) -> std::result::Result<Vec<Row>, HandlerError>;
}

/// A stream whose live rows differ from what today's code makes of its events.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Drift {
    /// The stream.
    pub stream: StreamKey,
    /// The position up to which the projection had applied the stream's events: the
    /// rebuild applied those up to it.
    pub applied_up_to: u64,
    /// How many of the stream's events the rebuild applied.
    pub events: usize,
    /// Rows the live read model holds and the rebuild does not make.
    pub live_only: Vec<Row>,
    /// Rows the rebuild makes and the live read model does not hold.
    pub rebuilt_only: Vec<Row>,
    /// The error of the projection's code on the stream's events, if the rebuild failed.
    pub failed: Option<String>,
}

/// What [`Projection::verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Streams compared.
    pub verified: usize,
    /// Rows compared, live and rebuilt together.
    pub rows: usize,
    /// The streams whose rows differ, in the order they were given.
    pub drifted: Vec<Drift>,
    /// Streams not compared: the projection applied their events each time they were read.
    pub moving: Vec<StreamKey>,
}

impl VerifyReport {
    /// Whether every stream compared matched.
    pub fn is_clean(&self) -> bool {
        self.drifted.is_empty()
    }
}

impl Projection {
    /// Compares the live rows of each of `streams` with those its events make with today's
    /// code in a scratch copy of the read model; see the [module docs](self). The projection
    /// may be running meanwhile.
    ///
    /// A stream's events are its whole history, archived ones too (see [`crate::lifecycle`]):
    /// a projection built or rebuilt after a stream was archived never saw those in the feed,
    /// and verify finds that stream drifted. Restore it, or leave it out.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] if the read model cannot be verified (its projection does not
    /// give what the module docs list); [`Error::ReadModel`] if the live rows cannot be read; a
    /// store error as the store gives it. A projection whose code fails on a stream's events
    /// is no error: that stream is a [`Drift`] with [`failed`](Drift::failed) set.
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future loses nothing, and nothing is left half done.
    pub async fn verify(&self, streams: &[StreamKey]) -> Result<VerifyReport> {
        let Some(verifier) = self.model().verifier() else {
            return Err(Error::InvalidInput(format!(
                "the read model of projection `{}` cannot be verified: its projection gives no scratch copy of itself \
                 and no rows per stream (see eventsourcing_kit::projection::verify)",
                self.name()
            )));
        };
        let slices = self.subscription().slices().await?;
        let mut report = VerifyReport::default();
        for stream in streams {
            let slice = slices
                .count()
                .slice_of(&stream.aggregate_type, stream.aggregate_id);
            let mut compared = None;
            for _ in 0..READS_PER_STREAM {
                let before = self.handled(&slices, slice).await?;
                let live = verifier.stream_rows(stream).await.map_err(|e| Error::ReadModel {
                    projection: self.name().to_owned(),
                    action: "read the rows of a stream in",
                    reason: e.to_string(),
                })?;
                let after = self.handled(&slices, slice).await?;
                let history = self.history(stream).await?;
                if history.iter().any(|e| e.position > before && e.position <= after) {
                    continue;
                }
                let applied: Vec<StoredEvent> =
                    history.into_iter().filter(|e| e.position <= before).collect();
                // As the projection's handler sees them: personal fields open.
                let applied = self.subscription().open(&applied).await?;
                let rebuilt = verifier.rebuilt_rows(stream, &applied).await;
                compared = Some(compare(stream, before, applied.len(), live, rebuilt));
                break;
            }
            match compared {
                None => report.moving.push(stream.clone()),
                Some((rows, drift)) => {
                    report.verified += 1;
                    report.rows += rows;
                    report.drifted.extend(drift);
                }
            }
        }
        Ok(report)
    }

    /// The streams with events this projection takes in the feed after `after` up to
    /// `until`, in the order of their first event there: what
    /// [`verify`](Self::verify) checks for a range of the feed.
    ///
    /// # Errors
    ///
    /// A store error as the store gives it; [`Error::InvalidConfiguration`] on a
    /// [sharded store](crate::backend::sharded), whose feeds have no common positions.
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future loses nothing, and nothing is left half done.
    pub async fn streams_between(&self, after: u64, until: u64) -> Result<Vec<StreamKey>> {
        self.subscription()
            .one_feed("list the streams of a range of the whole feed")
            .await?;
        let options = self.subscription().options();
        let mut seen = BTreeSet::new();
        let mut streams = Vec::new();
        let mut feed = self.subscription().events().read_all(after);
        while let Some(event) = feed.try_next().await? {
            if event.position > until {
                break;
            }
            if options.takes(&event.aggregate_type, &event.event_type) {
                let stream = StreamKey::new(&*event.aggregate_type, event.aggregate_id);
                if seen.insert(stream.clone()) {
                    streams.push(stream);
                }
            }
        }
        Ok(streams)
    }

    /// The position up to which this projection applied the events of `slice`.
    async fn handled(&self, slices: &crate::slice::SliceParts, slice: u32) -> Result<u64> {
        let store = self.model().subscriptions();
        crate::group::handled_slice(&*store, slices, self.name(), slice).await
    }

    /// The events of `stream` that this projection takes, in order.
    async fn history(&self, stream: &StreamKey) -> Result<Vec<StoredEvent>> {
        let options = self.subscription().options();
        let events = self.subscription().events();
        let all: Vec<StoredEvent> = events
            .read_stream(stream.aggregate_id, &stream.aggregate_type, 0)
            .try_collect()
            .await?;
        Ok(all
            .into_iter()
            .filter(|e| options.takes(&e.aggregate_type, &e.event_type))
            .collect())
    }
}

/// The rows compared and the drift, if any, of one stream.
fn compare(
    stream: &StreamKey,
    applied_up_to: u64,
    events: usize,
    live: Vec<Row>,
    rebuilt: std::result::Result<Vec<Row>, HandlerError>,
) -> (usize, Option<Drift>) {
    let rebuilt = match rebuilt {
        Ok(rows) => rows,
        Err(e) => {
            let rows = live.len();
            let drift = Drift {
                stream: stream.clone(),
                applied_up_to,
                events,
                live_only: sorted(live),
                rebuilt_only: Vec::new(),
                failed: Some(e.to_string()),
            };
            return (rows, Some(drift));
        }
    };
    let rows = live.len() + rebuilt.len();
    let (live, rebuilt) = (sorted(live), sorted(rebuilt));
    let only = |a: &[Row], b: &[Row]| -> Vec<Row> {
        let mut b: Vec<String> = b.iter().map(Row::text).collect();
        a.iter()
            .filter(|row| {
                // As multisets: each row of `b` matches one row of `a` at most.
                match b.iter().position(|t| *t == row.text()) {
                    Some(i) => {
                        b.swap_remove(i);
                        false
                    }
                    None => true,
                }
            })
            .cloned()
            .collect()
    };
    let (live_only, rebuilt_only) = (only(&live, &rebuilt), only(&rebuilt, &live));
    if live_only.is_empty() && rebuilt_only.is_empty() {
        return (rows, None);
    }
    let drift = Drift {
        stream: stream.clone(),
        applied_up_to,
        events,
        live_only,
        rebuilt_only,
        failed: None,
    };
    (rows, Some(drift))
}

fn sorted(mut rows: Vec<Row>) -> Vec<Row> {
    rows.sort_by_cached_key(Row::text);
    rows
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key() -> StreamKey {
        StreamKey::new("Account", Uuid::nil())
    }

    #[test]
    fn equal_rows_in_any_order_are_no_drift() {
        let a = vec![Row::new("t", json!({"id": 1})), Row::new("t", json!({"id": 2}))];
        let b = vec![Row::new("t", json!({"id": 2})), Row::new("t", json!({"id": 1}))];
        assert_eq!(compare(&key(), 5, 2, a, Ok(b)), (4, None));
    }

    #[test]
    fn rows_are_compared_as_multisets() {
        let one = Row::new("t", json!({"n": 1}));
        let (_, drift) = compare(
            &key(),
            5,
            2,
            vec![one.clone(), one.clone()],
            Ok(vec![one.clone()]),
        );
        let drift = drift.expect("a duplicated row is a drift");
        assert_eq!(drift.live_only, vec![one]);
        assert!(drift.rebuilt_only.is_empty());
    }

    #[test]
    fn a_failed_rebuild_is_a_drift_naming_the_error() {
        let live = vec![Row::new("t", json!({"n": 1}))];
        let (_, drift) = compare(&key(), 5, 2, live, Err("no such event".into()));
        let drift = drift.expect("a failure is a drift");
        assert_eq!(drift.failed.as_deref(), Some("no such event"));
    }
}
