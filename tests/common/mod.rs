//! The bank account and store doubles shared by the behaviour tests.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use eventsourcing_kit::prelude::*;
use eventsourcing_kit::{async_trait, Snapshot};
use tokio::sync::Notify;

#[path = "../../examples/domain/account.rs"]
mod account;
pub use account::*;

/// An opened account (10_000 cents) with `deposits` deposits of 100 cents recorded and not
/// saved.
pub fn opened(id: Uuid, deposits: usize) -> AggregateRoot<Account> {
    let mut root = AggregateRoot::new(id);
    root.record(AccountOpened {
        owner_name: "Ada".into(),
        initial_balance: 10_000,
    });
    for _ in 0..deposits {
        root.record(MoneyDeposited { amount: 100 });
    }
    root
}

/// The state that replaying every stored event gives, without any snapshot.
pub async fn replayed(events: &InMemoryEventStore, id: Uuid) -> AggregateRoot<Account> {
    Repository::<Account>::new(events.clone()).load(id).await.unwrap()
}

/// A snapshot store that fails every call.
#[derive(Clone, Debug, Default)]
pub struct FailingSnapshotStore;

fn broken() -> Error {
    Error::Store {
        backend: "test",
        message: "snapshot store is down".into(),
        transient: true,
        source: None,
    }
}

#[async_trait]
impl SnapshotStore for FailingSnapshotStore {
    async fn get_snapshot(&self, _: Uuid, _: &str, _: u32) -> eventsourcing_kit::Result<Option<Snapshot>> {
        Err(broken())
    }
    async fn save_snapshot(&self, _: &Snapshot) -> eventsourcing_kit::Result<bool> {
        Err(broken())
    }
    async fn delete_snapshot(&self, _: Uuid, _: &str) -> eventsourcing_kit::Result<bool> {
        Err(broken())
    }
    async fn snapshot_exists(&self, _: Uuid, _: &str) -> eventsourcing_kit::Result<bool> {
        Err(broken())
    }
    async fn delete_snapshots_by_type(&self, _: &str, _: Option<u32>) -> eventsourcing_kit::Result<u64> {
        Err(broken())
    }
}

/// An in-memory snapshot store that records every saved version and can hold saves at a gate.
#[derive(Clone, Default)]
pub struct ObservedSnapshotStore {
    pub inner: InMemorySnapshotStore,
    pub saved: Arc<Mutex<Vec<u64>>>,
    closed: Arc<AtomicBool>,
    opened: Arc<Notify>,
}

impl ObservedSnapshotStore {
    pub fn saved_versions(&self) -> Vec<u64> {
        self.saved.lock().unwrap().clone()
    }

    /// Saves wait from now until `open_gate`.
    pub fn close_gate(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    pub fn open_gate(&self) {
        self.closed.store(false, Ordering::SeqCst);
        self.opened.notify_waiters();
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl SnapshotStore for ObservedSnapshotStore {
    async fn get_snapshot(
        &self,
        id: Uuid,
        t: &str,
        schema: u32,
    ) -> eventsourcing_kit::Result<Option<Snapshot>> {
        self.inner.get_snapshot(id, t, schema).await
    }
    async fn save_snapshot(&self, snapshot: &Snapshot) -> eventsourcing_kit::Result<bool> {
        loop {
            let opened = self.opened.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            if !self.closed.load(Ordering::SeqCst) {
                break;
            }
            opened.await;
        }
        self.saved.lock().unwrap().push(snapshot.version);
        self.inner.save_snapshot(snapshot).await
    }
    async fn delete_snapshot(&self, id: Uuid, t: &str) -> eventsourcing_kit::Result<bool> {
        self.inner.delete_snapshot(id, t).await
    }
    async fn snapshot_exists(&self, id: Uuid, t: &str) -> eventsourcing_kit::Result<bool> {
        self.inner.snapshot_exists(id, t).await
    }
    async fn delete_snapshots_by_type(&self, t: &str, below: Option<u32>) -> eventsourcing_kit::Result<u64> {
        self.inner.delete_snapshots_by_type(t, below).await
    }
}

/// A snapshot store whose every call hangs forever.
#[derive(Clone, Debug, Default)]
pub struct HangingSnapshotStore;

#[async_trait]
impl SnapshotStore for HangingSnapshotStore {
    async fn get_snapshot(&self, _: Uuid, _: &str, _: u32) -> eventsourcing_kit::Result<Option<Snapshot>> {
        std::future::pending().await
    }
    async fn save_snapshot(&self, _: &Snapshot) -> eventsourcing_kit::Result<bool> {
        std::future::pending().await
    }
    async fn delete_snapshot(&self, _: Uuid, _: &str) -> eventsourcing_kit::Result<bool> {
        std::future::pending().await
    }
    async fn snapshot_exists(&self, _: Uuid, _: &str) -> eventsourcing_kit::Result<bool> {
        std::future::pending().await
    }
    async fn delete_snapshots_by_type(&self, _: &str, _: Option<u32>) -> eventsourcing_kit::Result<u64> {
        std::future::pending().await
    }
}

/// An in-memory snapshot store whose saves take a little while, like a remote database.
#[derive(Clone, Debug, Default)]
pub struct SlowSnapshotStore(pub InMemorySnapshotStore);

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl SnapshotStore for SlowSnapshotStore {
    async fn get_snapshot(
        &self,
        id: Uuid,
        t: &str,
        schema: u32,
    ) -> eventsourcing_kit::Result<Option<Snapshot>> {
        self.0.get_snapshot(id, t, schema).await
    }
    async fn save_snapshot(&self, snapshot: &Snapshot) -> eventsourcing_kit::Result<bool> {
        tokio::time::sleep(std::time::Duration::from_micros(200)).await;
        self.0.save_snapshot(snapshot).await
    }
    async fn delete_snapshot(&self, id: Uuid, t: &str) -> eventsourcing_kit::Result<bool> {
        self.0.delete_snapshot(id, t).await
    }
    async fn snapshot_exists(&self, id: Uuid, t: &str) -> eventsourcing_kit::Result<bool> {
        self.0.snapshot_exists(id, t).await
    }
    async fn delete_snapshots_by_type(&self, t: &str, below: Option<u32>) -> eventsourcing_kit::Result<u64> {
        self.0.delete_snapshots_by_type(t, below).await
    }
}

/// The aggregate versions of the stored events of an account, in stream order.
pub async fn stream_versions(events: &dyn EventStore, id: Uuid) -> Vec<u64> {
    use futures_util::TryStreamExt;
    events
        .read_stream(id, "Account", 0)
        .map_ok(|e| e.aggregate_version)
        .try_collect()
        .await
        .unwrap()
}

/// An account event envelope with any type name and payload, as a hostile store could hold.
pub fn envelope(id: Uuid, version: u64, event_type: &str, payload: &str) -> eventsourcing_kit::EventEnvelope {
    eventsourcing_kit::EventEnvelope::from_json(id, "Account", version, event_type, 1, payload)
}

/// The head of a feed that holds `events`, as `EventStore::head` counts it after `after`.
pub fn head_of<'a>(
    events: impl IntoIterator<Item = &'a StoredEvent>,
    after: u64,
) -> eventsourcing_kit::FeedHead {
    let shown = events.into_iter().filter(|e| e.position > after);
    let (last, count) = shown.fold((after, 0), |(last, n), e| (last.max(e.position), n + 1));
    eventsourcing_kit::FeedHead::new(last, count)
}

mod backends;
mod child;
mod cluster;
mod database;
#[allow(unused_imports)]
pub use backends::*;
#[allow(unused_imports)]
pub use child::*;
#[allow(unused_imports)]
pub use cluster::*;
#[allow(unused_imports)]
pub use database::*;

/// Runs `subscription` with `handler` until `done()` holds, 10 s at most, then stops it
/// gracefully; panics if it failed.
pub async fn run_until<H: Handler + 'static>(
    subscription: eventsourcing_kit::subscription::Subscription,
    handler: H,
    done: impl Fn() -> bool,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        subscription
            .run(handler, async {
                let _ = stopped.await;
            })
            .await
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}
