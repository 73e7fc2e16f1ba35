//! A store created with another number of slices than the default: its feed by slice, its
//! consumer groups and its record of the number, on every backend; and the number fixed once
//! the store exists.
//!
//! The PostgreSQL check runs against `EVENTSOURCE_TEST_POSTGRES_URL`, in a schema of its own;
//! without it it says it is skipped, or fails under `EVENTSOURCE_REQUIRE_POSTGRES=1`.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use eventsourcing_kit::backend::{self, Stores};
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::slice::{SliceCount, SliceRange};
use eventsourcing_kit::subscription::{Handler, HandlerError};

#[event(aggregate = "Crate")]
pub struct Packed {}

#[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
#[aggregate(name = "Crate", events(Packed))]
pub struct Crate {
    pub packed: u32,
}

impl Apply<Packed> for Crate {
    fn apply(&mut self, _: &Packed) {
        self.packed += 1;
    }
}

/// Each aggregate's versions as handed over, with the range that handed each.
type Handed = HashMap<Uuid, Vec<(SliceRange, u64)>>;

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Handed>>);

struct Recording(Seen, SliceRange);

#[async_trait]
impl Handler for Recording {
    async fn handle(&mut self, events: &[StoredEvent]) -> Result<(), HandlerError> {
        let mut seen = self.0 .0.lock().unwrap();
        for event in events {
            seen.entry(event.aggregate_id)
                .or_default()
                .push((self.1, event.aggregate_version));
        }
        Ok(())
    }
}

const SLICES: u32 = 16;

/// The stores of `url`, created with 16 slices: the number is theirs, the feed by slice and
/// the conformance suite of the stores hold with it, and a consumer group splits those 16.
async fn a_store_of_sixteen_slices(url: &str) -> Stores {
    let stores = backend::open(url).await.unwrap();
    stores.migrate().await.unwrap();
    let sixteen = SliceCount::new(SLICES).unwrap();
    assert_eq!(stores.slice_count().await.unwrap(), sixteen, "{url}");
    eventsourcing_kit::testing::stores::run_all(&stores).await;

    // Every stream in one of the 16 slices, read from it and from no other.
    let repo = stores.repository::<Crate>();
    let ids: Vec<Uuid> = (0..40).map(|_| Uuid::new_v4()).collect();
    for id in &ids {
        for _ in 0..3 {
            repo.execute(*id, |c| {
                c.record(Packed {});
                Ok::<_, Error>(())
            })
            .await
            .unwrap();
        }
    }
    let feed = stores.slice_feed.as_ref().expect("every backend reads by slice");
    for slice in 0..SLICES {
        let range = SliceRange::new(slice, slice).unwrap();
        let read: Vec<StoredEvent> = feed.read_slices(range, 0).try_collect().await.unwrap();
        assert!(
            read.iter()
                .all(|e| sixteen.slice_of(&e.aggregate_type, e.aggregate_id) == slice),
            "slice {slice} holds only its own streams"
        );
    }
    let beyond = feed
        .read_slices(SliceRange::new(0, SLICES).unwrap(), 0)
        .try_collect::<Vec<_>>()
        .await;
    assert!(matches!(beyond, Err(Error::InvalidInput(_))), "{beyond:?}");

    // A group of four ranges of four slices each hands every event over once, in order.
    let name = format!("crates-{}", Uuid::new_v4().simple());
    let subscription = || {
        stores
            .subscription(&name)
            .unwrap()
            .for_aggregate::<Crate>()
            .poll_interval(Duration::from_millis(20))
            .unwrap()
    };
    let group = subscription().group(4).unwrap();
    let seen = Seen::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = {
        let seen = seen.clone();
        async move {
            group
                .run(2, move |range| Recording(seen.clone(), range), async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            group
        }
    };
    let watch = async {
        for _ in 0..3000 {
            let count: usize = seen.0.lock().unwrap().values().map(Vec::len).sum();
            if count >= ids.len() * 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = stop.send(());
    };
    let (group, ()) = tokio::join!(run, watch);
    let seen = seen.0.lock().unwrap().clone();
    for id in &ids {
        let slice = sixteen.slice_of("Crate", *id);
        let expected: Vec<(SliceRange, u64)> = (1..=3)
            .map(|v| {
                let range = SliceRange::new(slice / 4 * 4, slice / 4 * 4 + 3).unwrap();
                (range, v)
            })
            .collect();
        assert_eq!(
            seen[id], expected,
            "{id} in slice {slice}, by the range that holds it"
        );
    }
    let status = group.status().await.unwrap().unwrap();
    let ranges: Vec<SliceRange> = status.ranges.iter().map(|r| r.range).collect();
    assert_eq!(ranges, sixteen.split(4).unwrap());

    // No more ranges than slices.
    let refused = group.rescale(SLICES + 1).await.unwrap_err();
    assert!(matches!(refused, Error::InvalidConfiguration(_)), "{refused}");
    let too_many = subscription().group(SLICES + 1).unwrap();
    let refused = too_many
        .run(
            1,
            |range| Recording(Seen::default(), range),
            std::future::pending(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, Error::InvalidConfiguration(m) if m.contains("16 slices")),
        "{refused}"
    );
    stores
}

/// Opening a store with another number than it was created with is refused, naming both;
/// without a number, or with its own, it opens with its own.
async fn the_number_is_fixed_once_created(url: &str, with: impl Fn(&str) -> String) {
    for configured in [None, Some("16")] {
        let url = match configured {
            Some(n) => with(&format!("slices={n}")),
            None => url.to_owned(),
        };
        let stores = backend::open(&url).await.unwrap();
        stores.migrate().await.unwrap();
        assert_eq!(stores.slice_count().await.unwrap().get(), SLICES, "{url}");
    }
    let other = with("slices=1024");
    let refused = async {
        let stores = backend::open(&other).await?;
        stores.migrate().await?;
        stores.slice_count().await
    }
    .await
    .unwrap_err();
    match &refused {
        Error::InvalidConfiguration(message) => assert!(
            message.contains("16 slices") && message.contains("1024 slices"),
            "{message}"
        ),
        refused => panic!("{other}: expected InvalidConfiguration, got {refused:?}"),
    }
}

fn with_param(url: &str, param: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{param}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_other_slices_in_memory() {
    a_store_of_sixteen_slices("memory:?slices=16").await;
    let stores = backend::open("memory:").await.unwrap();
    assert_eq!(stores.slice_count().await.unwrap(), SliceCount::DEFAULT);
    for bad in [
        "memory:?slices=17",
        "memory:?slices=",
        "memory:?size=16",
        "memory:x",
    ] {
        let Err(refused) = backend::open(bad).await else {
            panic!("{bad} opened");
        };
        assert!(
            matches!(refused, Error::InvalidConfiguration(_)),
            "{bad}: {refused}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_other_slices_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("sixteen.db").display());
    drop(a_store_of_sixteen_slices(&with_param(&url, "slices=16")).await);
    the_number_is_fixed_once_created(&url, |param| with_param(&url, param)).await;
    // Tables under another prefix in the same file are another store, of the default number.
    let other = backend::open(&with_param(&url, "prefix=other_")).await.unwrap();
    assert_eq!(other.slice_count().await.unwrap(), SliceCount::DEFAULT);
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn a_store_of_other_slices_on_postgres() {
    use eventsourcing_kit::backend::postgres::sqlx;

    let Some(url) = common::postgres_url("a_store_of_other_slices_on_postgres") else {
        return;
    };
    let scratch = common::ScratchSchema::new(&url, "slices");
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let url = with_param(&url, &format!("schema={}", scratch.name));
    let stores = a_store_of_sixteen_slices(&with_param(&url, "slices=16")).await;
    // The database computes each row's slice, with the store's number.
    let rows: Vec<(String, Uuid, i32)> = sqlx::query_as(&format!(
        "SELECT aggregate_type, aggregate_id, slice FROM \"{}\".eventsource_events",
        scratch.name
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(!rows.is_empty());
    let sixteen = SliceCount::new(SLICES).unwrap();
    for (aggregate_type, id, slice) in rows {
        assert_eq!(
            slice as u32,
            sixteen.slice_of(&aggregate_type, id),
            "{aggregate_type} {id}"
        );
    }
    drop(stores);
    the_number_is_fixed_once_created(&url, |param| with_param(&url, param)).await;
}
