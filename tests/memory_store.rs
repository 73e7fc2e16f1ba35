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

/// The abilities the in-memory stores hand out, each against its plain equivalent; and the
/// same abilities beside an event store wrapped in a wrapper of the required methods.
mod abilities {
    use eventsource::backend::Stores;
    use eventsource::testing::stores::{assert_abilities, Abilities};
    use eventsource::testing::RequiredOnly;

    use super::*;

    eventsource::stores_conformance!(async { Stores::in_memory() });

    mod beside_a_wrapper {
        use super::*;

        eventsource::stores_conformance!(async {
            let (events, snapshots) = (InMemoryEventStore::new(), InMemorySnapshotStore::new());
            Stores::new(
                RequiredOnly(events.clone()),
                snapshots.clone(),
                InMemorySubscriptionStore::new(),
            )
            .with_append_signal(events.append_signal())
            .with_stream_listing(std::sync::Arc::new(events.clone()))
            .with_request_index(std::sync::Arc::new(events))
            .with_snapshot_listing(std::sync::Arc::new(snapshots))
        });
    }

    #[test]
    fn in_memory_stores_hand_out_every_ability_but_joint_statements() {
        let every_but_joint = Abilities {
            append_signal: true,
            stream_listing: true,
            snapshot_listing: true,
            request_index: true,
            joint_snapshots: false,
        };
        assert_abilities(&Stores::in_memory(), every_but_joint);
        let bare = Stores::new(
            InMemoryEventStore::new(),
            InMemorySnapshotStore::new(),
            InMemorySubscriptionStore::new(),
        );
        assert_abilities(&bare, Abilities::default());
    }
}

/// The `optional:` form, as a backend whose database may be absent uses it.
mod optional_store {
    use super::*;

    eventsource::event_store_conformance!(optional: async { Some(InMemoryEventStore::new()) });
    eventsource::snapshot_store_conformance!(optional: async { Some(InMemorySnapshotStore::new()) });
}

#[tokio::test]
async fn run_all_runs_every_check_on_one_store() {
    assert_eq!(eventsource::testing::event_store::NAMES.len(), 18);
    assert_eq!(eventsource::testing::snapshot_store::NAMES.len(), 10);
    assert_eq!(eventsource::testing::stores::NAMES.len(), 8);
    eventsource::testing::stores::run_all(&eventsource::backend::Stores::in_memory()).await;
    eventsource::testing::event_store::run_all(&InMemoryEventStore::new()).await;
    eventsource::testing::snapshot_store::run_all(&InMemorySnapshotStore::new()).await;
    assert_eq!(eventsource::testing::subscription_store::NAMES.len(), 7);
    eventsource::testing::subscription_store::run_all(&InMemorySubscriptionStore::new()).await;
}
