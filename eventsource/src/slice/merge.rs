//! The feed of a range of slices read from an index by slice: each slice read in position
//! order from its own cursor, the slices merged. A read costs what the range holds after its
//! start (plus one probe per slice), however much the store holds, where one query ordered
//! by position over the whole range would sort everything the range holds on every page.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::future::Future;

use futures_util::future::BoxFuture;
use futures_util::{stream, StreamExt};

use super::SliceRange;
use crate::error::{Error, Result};
use crate::event::StoredEvent;
use crate::event_store::EventStream;

/// Events handed over between two turns given back to the runtime.
const PAGE: usize = 256;

/// The events a backend holds of some slices, each after its own position: at most `limit`
/// of each slice, each slice's in position order, all below a bound the backend fixed when
/// the read started, so that a slice that gives fewer than `limit` has no more to give. Each
/// comes with the slice it was read from.
pub(crate) type Fetch =
    Box<dyn FnMut(Vec<(u32, u64)>, usize) -> BoxFuture<'static, Result<Vec<(u32, StoredEvent)>>> + Send>;

/// The events of the slices of `range` after `after`, in position order: what
/// [`SliceFeed::read_slices`](crate::SliceFeed::read_slices) yields. The read first awaits
/// `bound` (what the backend fixes when the read starts: the feed's bound, its last
/// position), then reads through the fetch `pages` makes of it. `what` names the store in the
/// error of a row in a slice the read did not ask for.
pub(crate) fn merged<B: Send + 'static>(
    range: SliceRange,
    after: u64,
    what: String,
    bound: impl Future<Output = Result<B>> + Send + 'static,
    pages: impl FnOnce(B) -> Fetch + Send + 'static,
) -> EventStream<'static> {
    let mut pages = Some(pages);
    let read = stream::once(bound).flat_map(move |bound| match (bound, pages.take()) {
        (Ok(bound), Some(pages)) => merge(range, after, what.clone(), pages(bound)),
        (Err(e), _) => Box::pin(stream::iter([Err(e)])),
        (Ok(_), None) => Box::pin(stream::empty()),
    });
    Box::pin(read)
}

fn merge(range: SliceRange, after: u64, what: String, fetch: Fetch) -> EventStream<'static> {
    // A cursor's events are held until every slice has one to compare: a wide range keeps
    // fewer of each, so a read holds some thousands of events at most.
    let limit = (8192 / range.len() as usize).clamp(8, 256);
    let merge = Merge {
        range,
        slices: (range.first()..=range.last())
            .map(|_| Cursor {
                after,
                buffer: VecDeque::new(),
                exhausted: false,
            })
            .collect(),
        next: BinaryHeap::new(),
        limit,
        fetch,
        what,
    };
    let pages = stream::unfold(Some(merge), |merge| async move {
        let mut merge = merge?;
        loop {
            let waiting: Vec<(u32, u64)> = merge.waiting();
            if !waiting.is_empty() {
                if let Err(e) = merge.refill(waiting).await {
                    return Some((vec![Err(e)], None));
                }
            }
            let page = merge.page();
            if !page.is_empty() {
                return Some((page, Some(merge)));
            }
            if merge.waiting().is_empty() {
                return None;
            }
        }
    });
    Box::pin(pages.flat_map(stream::iter))
}

/// One slice's read: where it is, what it fetched and has not handed over yet, and whether
/// it has nothing more below the bound.
struct Cursor {
    after: u64,
    buffer: VecDeque<StoredEvent>,
    exhausted: bool,
}

struct Merge {
    range: SliceRange,
    slices: Vec<Cursor>,
    /// The first buffered event of each slice that has one: its position and slice index.
    next: BinaryHeap<Reverse<(u64, usize)>>,
    limit: usize,
    fetch: Fetch,
    what: String,
}

impl Merge {
    /// The slices to fetch more of before the merge can go on: those with nothing buffered
    /// that may have more.
    fn waiting(&self) -> Vec<(u32, u64)> {
        self.slices
            .iter()
            .enumerate()
            .filter(|(_, cursor)| cursor.buffer.is_empty() && !cursor.exhausted)
            .map(|(i, cursor)| (self.range.first() + i as u32, cursor.after))
            .collect()
    }

    async fn refill(&mut self, waiting: Vec<(u32, u64)>) -> Result<()> {
        let events = (self.fetch)(waiting.clone(), self.limit).await?;
        let mut counts = vec![0usize; self.slices.len()];
        for (slice, event) in events {
            let index = slice.wrapping_sub(self.range.first()) as usize;
            let asked = waiting.iter().any(|(s, _)| *s == slice);
            let Some(cursor) = self.slices.get_mut(index).filter(|_| asked) else {
                return Err(Error::corrupt(
                    self.what.clone(),
                    format!(
                        "event {} of {} {} at position {} was read from slice {slice}, which the read did not ask for",
                        event.event_id, event.aggregate_type, event.aggregate_id, event.position
                    ),
                ));
            };
            let last = cursor.buffer.back().map_or(cursor.after, |e| e.position);
            if event.position <= last {
                return Err(Error::corrupt(
                    self.what.clone(),
                    format!(
                        "the read of slice {slice} gave position {} after {last}",
                        event.position
                    ),
                ));
            }
            counts[index] += 1;
            cursor.buffer.push_back(event);
        }
        for (slice, _) in waiting {
            let index = (slice - self.range.first()) as usize;
            let cursor = &mut self.slices[index];
            cursor.exhausted = counts[index] < self.limit;
            if let Some(first) = cursor.buffer.front() {
                self.next.push(Reverse((first.position, index)));
            }
        }
        Ok(())
    }

    /// The next events in position order, up to a page, as far as every slice that may have
    /// more has one buffered to compare.
    fn page(&mut self) -> Vec<Result<StoredEvent>> {
        let mut page = Vec::new();
        while page.len() < PAGE {
            let Some(Reverse((_, index))) = self.next.pop() else {
                break;
            };
            let cursor = &mut self.slices[index];
            let event = cursor
                .buffer
                .pop_front()
                .expect("a slice in the heap has an event buffered");
            cursor.after = event.position;
            page.push(Ok(event));
            match cursor.buffer.front() {
                Some(following) => self.next.push(Reverse((following.position, index))),
                None if !cursor.exhausted => break,
                None => {}
            }
        }
        page
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures_util::TryStreamExt;
    use uuid::Uuid;

    use super::*;
    use crate::event::EventEnvelope;
    use crate::slice::SliceCount;

    fn slice_of(aggregate_type: &str, id: Uuid) -> u32 {
        SliceCount::DEFAULT.slice_of(aggregate_type, id)
    }

    /// A store of `events` read through the merge, with how many events each fetch gave.
    fn feed(events: Arc<Vec<StoredEvent>>, fetched: Arc<std::sync::Mutex<Vec<usize>>>) -> Fetch {
        let mut by_slice = vec![Vec::new(); SliceCount::DEFAULT.get() as usize];
        for event in events.iter() {
            by_slice[slice_of(&event.aggregate_type, event.aggregate_id) as usize].push(event.clone());
        }
        let by_slice = Arc::new(by_slice);
        Box::new(move |cursors, limit| {
            let (by_slice, fetched) = (by_slice.clone(), fetched.clone());
            Box::pin(async move {
                let mut out = Vec::new();
                for (slice, after) in cursors {
                    out.extend(
                        by_slice[slice as usize]
                            .iter()
                            .filter(|e| e.position > after)
                            .take(limit)
                            .map(|e| (slice, e.clone())),
                    );
                }
                fetched.lock().unwrap().push(out.len());
                Ok(out)
            })
        })
    }

    fn stored(count: usize) -> Vec<StoredEvent> {
        let streams: Vec<Uuid> = (0..50).map(|_| Uuid::new_v4()).collect();
        (0..count)
            .map(|i| StoredEvent {
                position: 3 * i as u64 + 1,
                envelope: EventEnvelope::noted(
                    streams[i % streams.len()],
                    "Merged",
                    (i / streams.len()) as u64 + 1,
                ),
            })
            .collect()
    }

    #[tokio::test]
    async fn merges_the_slices_of_a_range_in_position_order_from_any_start() {
        let events = Arc::new(stored(3000));
        for range in [
            SliceCount::DEFAULT.all(),
            SliceRange::new(100, 611).unwrap(),
            SliceRange::new(7, 7).unwrap(),
        ] {
            for after in [0, 1, 2000, 9000] {
                let fetched = Arc::default();
                let merged: Vec<StoredEvent> = merged(range, after, "test".into(), async { Ok(()) }, {
                    let fetch = feed(events.clone(), fetched);
                    move |()| fetch
                })
                .try_collect()
                .await
                .unwrap();
                let expected: Vec<u64> = events
                    .iter()
                    .filter(|e| {
                        e.position > after && range.contains(slice_of(&e.aggregate_type, e.aggregate_id))
                    })
                    .map(|e| e.position)
                    .collect();
                let got: Vec<u64> = merged.iter().map(|e| e.position).collect();
                assert_eq!(got, expected, "{range} after {after}");
            }
        }
    }

    #[tokio::test]
    async fn reads_each_event_about_once() {
        let events = Arc::new(stored(20_000));
        let fetched: Arc<std::sync::Mutex<Vec<usize>>> = Arc::default();
        let range = SliceRange::new(0, 255).unwrap();
        let count = merged(range, 0, "test".into(), async { Ok(()) }, {
            let fetch = feed(events.clone(), fetched.clone());
            move |()| fetch
        })
        .try_fold(0usize, |n, _| async move { Ok(n + 1) })
        .await
        .unwrap();
        let total: usize = fetched.lock().unwrap().iter().sum();
        assert_eq!(total, count, "every event fetched once");
    }

    #[tokio::test]
    async fn an_event_of_a_slice_not_asked_for_is_corrupt() {
        let own = Uuid::new_v4();
        let slice = slice_of("Merged", own);
        let stranger = std::iter::repeat_with(Uuid::new_v4)
            .find(|id| slice_of("Merged", *id) != slice)
            .unwrap();
        let stray = StoredEvent {
            position: 1,
            envelope: EventEnvelope::noted(stranger, "Merged", 1),
        };
        let stray_slice = slice_of("Merged", stranger);
        let fetch: Fetch = Box::new(move |_, _| {
            let stray = stray.clone();
            Box::pin(async move { Ok(vec![(stray_slice, stray)]) })
        });
        let range = SliceRange::new(slice, slice).unwrap();
        let read = merged(range, 0, "test".into(), async { Ok(()) }, |()| fetch)
            .try_collect::<Vec<_>>()
            .await;
        assert!(matches!(read, Err(Error::Corrupt { .. })), "{read:?}");
    }
}
