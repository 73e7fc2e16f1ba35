//! Group commit: one-event appends, small batches and small saves over several streams that
//! arrive while a group is being written wait, and go together in the next statement: one
//! transaction, one disk flush for all of them.
//!
//! A group holds one-event appends, or batches and saves over several streams, never both.
//! Each member is still decided on its own. In a group of one-event appends, a row goes in
//! only if its stream is at its expected version when the statement starts, and the stream's
//! unique key leaves out a row whose version a concurrent writer (or another row of the group)
//! took first. A row left out is the append's conflict, found again on its own by the caller.
//!
//! A batch of several events, and a save over several streams, is all or nothing, which a row
//! left out would break. Their groups are therefore written by another statement: each
//! member's rows go in only if every stream of that member is at its expected version, and
//! no member shares a stream with another (a member that would waits for a group after), so
//! that only a writer outside the group can take one of its versions first. That fails the
//! whole statement, and with it the group: nothing of it is stored, and each member goes
//! alone.
//!
//! A statement that fails, or takes longer than the store's append timeout, fails no member:
//! each then goes alone, as without the group, within that timeout, and the members queued
//! meanwhile go on in the next group.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::sql::POSITION_SHIFT;
use super::PostgresEventStore;
use crate::event::EventEnvelope;
use crate::slice::mask::SliceMask;

/// Rows in one group statement at most; more wait for the next.
const MAX_GROUP: usize = 256;

/// The most events a batch, or a save over several streams, may hold to go with a group; a
/// larger one goes alone.
pub(super) const MAX_GROUPED_SAVE: usize = 32;

/// The appends waiting for the next group, and whether a writer is at work.
#[derive(Default)]
pub(super) struct Group {
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiting>,
    writing: bool,
}

/// How an append goes.
#[allow(clippy::large_enum_variant)] // returned once and taken apart at once, never stored
pub(super) enum Turn<T> {
    /// Nobody is writing: the member goes alone, now, given back, and the guard hands the
    /// members that queue meanwhile to a writer when it is dropped (also when the member is
    /// cancelled).
    Alone(Leading, T),
    /// A group is being written: the member waits for the next one.
    Grouped(Outcome),
}

/// Held while an append goes alone; see [`Turn::Alone`].
pub(super) struct Leading(PostgresEventStore);

impl Drop for Leading {
    fn drop(&mut self) {
        let store = &self.0;
        let mut queue = store.group.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.waiting.is_empty() {
            queue.writing = false;
            return;
        }
        drop(queue);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(write(store.clone()))),
            // No runtime left to write them on: each makes its append again alone.
            Err(_) => {
                let mut queue = store.group.queue.lock().unwrap_or_else(|p| p.into_inner());
                queue.writing = false;
                for waiting in queue.waiting.drain(..) {
                    let _ = waiting.reply.send(Outcome::Failed);
                }
            }
        }
    }
}

/// What became of a member sent with a group.
pub(super) enum Outcome {
    /// Stored, its rows at these feed positions, in order.
    Stored(Vec<i64>),
    /// Left out: a stream of it was not at its expected version, or a concurrent writer came
    /// first.
    LeftOut,
    /// The group's statement failed (or the writer went away): nothing is known of the
    /// member, which the caller makes again on its own.
    Failed,
}

/// What a group is made of: one-event appends, batches, and saves over several streams.
pub(super) enum Member {
    /// A one-event append.
    One(Row),
    /// A batch of several events, or a save over several streams without checks: its rows,
    /// batch after batch, all or nothing.
    Save(Vec<Row>),
}

impl From<Row> for Member {
    fn from(row: Row) -> Self {
        Member::One(row)
    }
}

impl Member {
    fn rows(&self) -> &[Row] {
        match self {
            Member::One(row) => std::slice::from_ref(row),
            Member::Save(rows) => rows,
        }
    }
}

struct Waiting {
    member: Member,
    reply: oneshot::Sender<Outcome>,
}

/// One append's row, owned, for the group's arrays.
pub(super) struct Row {
    pub(super) event_id: Uuid,
    pub(super) event_type: Arc<str>,
    pub(super) event_version: i64,
    pub(super) aggregate_id: Uuid,
    pub(super) aggregate_type: Arc<str>,
    /// The version its stream must be at when the statement starts.
    pub(super) expected: i64,
    /// The version it takes in its stream.
    pub(super) aggregate_version: i64,
    pub(super) occurred_at: DateTime<Utc>,
    pub(super) occurred_at_ns: i32,
    pub(super) correlation_id: Option<Uuid>,
    pub(super) causation_id: Option<Uuid>,
    pub(super) metadata: Option<String>,
    pub(super) payload: Arc<str>,
    pub(super) request_id: Option<String>,
}

impl Row {
    pub(super) fn of(
        event: &EventEnvelope,
        (expected, aggregate_version): (i64, i64),
        metadata: Option<String>,
        at: (DateTime<Utc>, i32),
    ) -> Self {
        Row {
            aggregate_version,
            event_id: event.event_id,
            event_type: event.event_type.clone(),
            event_version: event.event_version.into(),
            aggregate_id: event.aggregate_id,
            aggregate_type: event.aggregate_type.clone(),
            expected,
            occurred_at: at.0,
            occurred_at_ns: at.1,
            correlation_id: event.correlation_id,
            causation_id: event.causation_id,
            metadata,
            payload: event.payload.clone(),
            request_id: event.request_id.as_ref().map(|id| id.as_str().to_owned()),
        }
    }
}

impl Group {
    /// The member's turn. With nobody writing, it goes alone at once (a lone writer pays no
    /// hand-off). Otherwise it queues for the next group, which a writer task writes, so that
    /// a caller that goes away (a cancelled request) leaves the others' members to finish.
    pub(super) async fn join<T: Into<Member>>(store: &PostgresEventStore, member: T) -> Turn<T> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Turn::Grouped(Outcome::Failed);
        }
        let (reply, outcome) = oneshot::channel();
        {
            let mut queue = store.group.queue.lock().unwrap_or_else(|p| p.into_inner());
            if !queue.writing {
                queue.writing = true;
                return Turn::Alone(Leading(store.clone()), member);
            }
            queue.waiting.push(Waiting {
                member: member.into(),
                reply,
            });
        }
        Turn::Grouped(outcome.await.unwrap_or(Outcome::Failed))
    }
}

/// Writes groups until none is waiting.
async fn write(store: PostgresEventStore) {
    let writer = Writer(store, std::cell::Cell::new(false));
    let store = &writer.0;
    loop {
        let group: Vec<Waiting> = {
            let mut queue = store.group.queue.lock().unwrap_or_else(|p| p.into_inner());
            if queue.waiting.is_empty() {
                queue.writing = false;
                writer.1.set(true);
                return;
            }
            next_group(&mut queue.waiting)
        };
        // A statement that hangs is given up on, so that the appends queued behind it go on:
        // its own appends are then made again, each on its own.
        let stored = tokio::time::timeout(store.append_timeout, insert(store, &group))
            .await
            .unwrap_or_else(|elapsed| {
                Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    elapsed,
                )))
            });
        if stored.as_ref().is_ok_and(|s| !s.is_empty()) {
            // One hash per member: the rows of a batch share its stream.
            let streams = group.iter().flat_map(|waiting| {
                let rows = waiting.member.rows();
                let mut seen: Vec<(&str, Uuid)> = Vec::with_capacity(rows.len());
                for row in rows {
                    let stream = (&*row.aggregate_type, row.aggregate_id);
                    if !seen.contains(&stream) {
                        seen.push(stream);
                    }
                }
                seen
            });
            store
                .notifier
                .appended(&store.pool, &SliceMask::of_streams(streams));
        }
        // The position of each row stored, by the row's place in the group: a position is the
        // transaction's base plus that place (from 1), so each row is told its own, whatever
        // another row of the group holds.
        let rows = group.iter().map(|w| w.member.rows().len()).sum();
        let mut at: Vec<Option<i64>> = vec![None; rows];
        for position in stored.iter().flatten() {
            let place = (position & ((1 << POSITION_SHIFT) - 1)) as usize;
            if let Some(slot) = place.checked_sub(1).and_then(|i| at.get_mut(i)) {
                *slot = Some(*position);
            }
        }
        let mut places = at.into_iter();
        for waiting in group {
            // Every place of the member taken, whatever they hold, before the next member's.
            let its: Vec<Option<i64>> = places.by_ref().take(waiting.member.rows().len()).collect();
            let its: Option<Vec<i64>> = its.into_iter().collect();
            let outcome = match (&stored, its) {
                (Ok(_), Some(positions)) => Outcome::Stored(positions),
                (Ok(_), None) => Outcome::LeftOut,
                (Err(_), _) => Outcome::Failed,
            };
            // A caller that went away has nobody to tell.
            let _ = waiting.reply.send(outcome);
        }
    }
}

/// The members of the next group, taken from the front of the queue in order, at most
/// [`MAX_GROUP`] rows of them: one-event appends, if the first member is one, or else batches
/// and saves over several streams, no two of them on one stream. A member that does not fit
/// stays queued, in its place, for a group after.
fn next_group(waiting: &mut Vec<Waiting>) -> Vec<Waiting> {
    let saves = waiting.iter().any(|w| matches!(w.member, Member::Save(_)));
    if !saves {
        let take = waiting.len().min(MAX_GROUP);
        return waiting.drain(..take).collect();
    }
    let of_saves = matches!(waiting[0].member, Member::Save(_));
    let (mut group, mut rest) = (Vec::new(), Vec::new());
    let mut streams: HashSet<(Uuid, Arc<str>)> = HashSet::new();
    let mut rows = 0;
    for member in waiting.drain(..) {
        let its = member.member.rows();
        let fits = rows + its.len() <= MAX_GROUP
            && match &member.member {
                Member::One(_) => !of_saves,
                Member::Save(rows) => {
                    of_saves
                        && !rows
                            .iter()
                            .any(|r| streams.contains(&(r.aggregate_id, r.aggregate_type.clone())))
                }
            };
        if !fits {
            rest.push(member);
            continue;
        }
        rows += its.len();
        if of_saves {
            streams.extend(its.iter().map(|r| (r.aggregate_id, r.aggregate_type.clone())));
        }
        group.push(member);
    }
    *waiting = rest;
    group
}

/// The writer task's hold on the queue. Dropped with appends still queued (the task was
/// cancelled with its runtime, or panicked), it lets the queue go, so that a later append is
/// not left waiting for a writer that is gone, and tells the queued appends to go alone.
struct Writer(PostgresEventStore, std::cell::Cell<bool>);

impl Drop for Writer {
    fn drop(&mut self) {
        // Finished: the queue was let go under its lock, and may be another writer's now.
        if self.1.get() {
            return;
        }
        let mut queue = self.0.group.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.writing = false;
        for waiting in queue.waiting.drain(..) {
            let _ = waiting.reply.send(Outcome::Failed);
        }
    }
}

/// The group's statement: the positions of the rows it stored.
async fn insert(store: &PostgresEventStore, group: &[Waiting]) -> Result<Vec<i64>, sqlx::Error> {
    let rows = || group.iter().flat_map(|w| w.member.rows());
    let saves = group.iter().any(|w| matches!(w.member, Member::Save(_)));
    let event_id: Vec<Uuid> = rows().map(|r| r.event_id).collect();
    let event_type: Vec<&str> = rows().map(|r| &*r.event_type).collect();
    let event_version: Vec<i64> = rows().map(|r| r.event_version).collect();
    let aggregate_id: Vec<Uuid> = rows().map(|r| r.aggregate_id).collect();
    let aggregate_type: Vec<&str> = rows().map(|r| &*r.aggregate_type).collect();
    let expected: Vec<i64> = rows().map(|r| r.expected).collect();
    let occurred_at: Vec<DateTime<Utc>> = rows().map(|r| r.occurred_at).collect();
    let occurred_at_ns: Vec<i32> = rows().map(|r| r.occurred_at_ns).collect();
    let correlation_id: Vec<Option<Uuid>> = rows().map(|r| r.correlation_id).collect();
    let causation_id: Vec<Option<Uuid>> = rows().map(|r| r.causation_id).collect();
    let metadata: Vec<Option<&str>> = rows().map(|r| r.metadata.as_deref()).collect();
    let payload: Vec<&str> = rows().map(|r| &*r.payload).collect();
    let request_id: Vec<Option<&str>> = rows().map(|r| r.request_id.as_deref()).collect();
    let sql = match saves {
        true => &store.sql.group_streams,
        false => &store.sql.group,
    };
    let query = sqlx::query_scalar(sql)
        .bind(event_id)
        .bind(event_type)
        .bind(event_version)
        .bind(aggregate_id)
        .bind(aggregate_type)
        .bind(expected)
        .bind(occurred_at)
        .bind(occurred_at_ns)
        .bind(correlation_id)
        .bind(causation_id)
        .bind(metadata)
        .bind(payload)
        .bind(request_id);
    let stored: Vec<i64> = match saves {
        // Each row's member, and the version the row takes.
        true => {
            let member: Vec<i32> = group
                .iter()
                .enumerate()
                .flat_map(|(i, w)| std::iter::repeat_n(i as i32, w.member.rows().len()))
                .collect();
            let version: Vec<i64> = rows().map(|r| r.aggregate_version).collect();
            query.bind(member).bind(version).fetch_all(&store.pool).await?
        }
        false => query.fetch_all(&store.pool).await?,
    };
    Ok(stored)
}
