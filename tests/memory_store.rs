//! The in-memory stores, the reference implementations, pass the whole conformance suite.

use eventsource::{InMemoryEventStore, InMemorySnapshotStore, InMemorySubscriptionStore};

mod one_store_per_test {
    use super::*;

    eventsource::event_store_conformance!(async { InMemoryEventStore::new() });
    eventsource::snapshot_store_conformance!(async { InMemorySnapshotStore::new() });
    eventsource::subscription_store_conformance!(async { InMemorySubscriptionStore::new() });
}

/// Every check against one shared store, as a database shared by many writers would be.
mod one_shared_store {
    use std::sync::{Arc, OnceLock};

    use super::*;

    fn events() -> Arc<InMemoryEventStore> {
        static STORE: OnceLock<Arc<InMemoryEventStore>> = OnceLock::new();
        STORE.get_or_init(Default::default).clone()
    }

    fn snapshots() -> Arc<InMemorySnapshotStore> {
        static STORE: OnceLock<Arc<InMemorySnapshotStore>> = OnceLock::new();
        STORE.get_or_init(Default::default).clone()
    }

    eventsource::event_store_conformance!(async { events() });
    eventsource::snapshot_store_conformance!(async { snapshots() });
    eventsource::subscription_store_conformance!(async { InMemorySubscriptionStore::new() });
}

/// The suite through a wrapper that forwards only the required methods: every default of the
/// trait gives what the store's own methods give.
mod through_a_wrapper_of_the_required_methods {
    use super::*;

    eventsource::event_store_conformance!(async {
        eventsource::testing::RequiredOnly(InMemoryEventStore::new())
    });
}

/// The `optional:` form, as a backend whose database may be absent uses it.
mod optional_store {
    use super::*;

    eventsource::event_store_conformance!(optional: async { Some(InMemoryEventStore::new()) });
    eventsource::snapshot_store_conformance!(optional: async { Some(InMemorySnapshotStore::new()) });
}

#[tokio::test]
async fn run_all_runs_every_check_on_one_store() {
    assert_eq!(eventsource::testing::event_store::NAMES.len(), 21);
    assert_eq!(eventsource::testing::snapshot_store::NAMES.len(), 11);
    eventsource::testing::event_store::run_all(&InMemoryEventStore::new()).await;
    eventsource::testing::snapshot_store::run_all(&InMemorySnapshotStore::new()).await;
    assert_eq!(eventsource::testing::subscription_store::NAMES.len(), 7);
    eventsource::testing::subscription_store::run_all(&InMemorySubscriptionStore::new()).await;
}
