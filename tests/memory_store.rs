//! The in-memory stores, the reference implementations, pass the whole conformance suite.

mod common;

use eventsourcing_kit::{InMemoryEventStore, InMemorySnapshotStore, InMemorySubscriptionStore};

mod one_store_per_test {
    use super::*;

    eventsourcing_kit::event_store_conformance!(async { InMemoryEventStore::new() });
    eventsourcing_kit::snapshot_store_conformance!(async { InMemorySnapshotStore::new() });
    eventsourcing_kit::subscription_store_conformance!(async { InMemorySubscriptionStore::new() });
    eventsourcing_kit::key_store_conformance!(async { eventsourcing_kit::InMemoryKeyStore::new() });
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

    eventsourcing_kit::event_store_conformance!(async { events() });
    eventsourcing_kit::snapshot_store_conformance!(async { snapshots() });
    eventsourcing_kit::subscription_store_conformance!(async { InMemorySubscriptionStore::new() });
}

/// The suite through a wrapper that forwards only the required methods: every default of the
/// trait gives what the store's own methods give.
mod through_a_wrapper_of_the_required_methods {
    use super::*;

    eventsourcing_kit::event_store_conformance!(async {
        eventsourcing_kit::testing::RequiredOnly(InMemoryEventStore::new())
    });
}

/// The abilities the in-memory stores hand out, each against its plain equivalent; and the
/// same abilities beside an event store wrapped in a wrapper of the required methods.
mod abilities {
    use eventsourcing_kit::backend::Stores;
    use eventsourcing_kit::testing::stores::{assert_abilities, Abilities};
    use eventsourcing_kit::testing::RequiredOnly;

    use super::*;

    eventsourcing_kit::stores_conformance!(async { Stores::in_memory() });
    eventsourcing_kit::stream_lifecycle_conformance!(async { Stores::in_memory() });

    mod beside_a_wrapper {
        use super::*;

        fn stores() -> Stores {
            let (events, snapshots) = (InMemoryEventStore::new(), InMemorySnapshotStore::new());
            Stores::new(
                RequiredOnly(events.clone()),
                snapshots.clone(),
                InMemorySubscriptionStore::new(),
            )
            .with_append_signal(events.append_signal())
            .with_stream_listing(std::sync::Arc::new(events.clone()))
            .with_slice_feed(std::sync::Arc::new(events.clone()))
            .with_stream_lifecycle(std::sync::Arc::new(events.clone()))
            .with_request_index(std::sync::Arc::new(events))
            .with_snapshot_listing(std::sync::Arc::new(snapshots))
        }

        eventsourcing_kit::stores_conformance!(async { stores() });
        eventsourcing_kit::stream_lifecycle_conformance!(async { stores() });
    }

    #[test]
    fn in_memory_stores_hand_out_every_ability_but_joint_statements() {
        let every_but_joint = Abilities {
            append_signal: true,
            stream_listing: true,
            snapshot_listing: true,
            request_index: true,
            slice_feed: true,
            joint_snapshots: false,
            multi_stream: true,
            stream_lifecycle: true,
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

    eventsourcing_kit::event_store_conformance!(optional: async { Some(InMemoryEventStore::new()) });
    eventsourcing_kit::snapshot_store_conformance!(optional: async { Some(InMemorySnapshotStore::new()) });
}

#[tokio::test]
async fn run_all_runs_every_check_on_one_store() {
    assert_eq!(eventsourcing_kit::testing::event_store::NAMES.len(), 18);
    assert_eq!(eventsourcing_kit::testing::snapshot_store::NAMES.len(), 10);
    assert_eq!(eventsourcing_kit::testing::stores::NAMES.len(), 15);
    assert_eq!(eventsourcing_kit::testing::stream_lifecycle::NAMES.len(), 8);
    eventsourcing_kit::testing::stream_lifecycle::run_all(&eventsourcing_kit::backend::Stores::in_memory())
        .await;
    eventsourcing_kit::testing::stores::run_all(&eventsourcing_kit::backend::Stores::in_memory()).await;
    eventsourcing_kit::testing::event_store::run_all(&InMemoryEventStore::new()).await;
    eventsourcing_kit::testing::snapshot_store::run_all(&InMemorySnapshotStore::new()).await;
    assert_eq!(eventsourcing_kit::testing::subscription_store::NAMES.len(), 10);
    eventsourcing_kit::testing::subscription_store::run_all(&InMemorySubscriptionStore::new()).await;
    assert_eq!(eventsourcing_kit::testing::key_store::NAMES.len(), 8);
    eventsourcing_kit::testing::key_store::run_all(&eventsourcing_kit::InMemoryKeyStore::new()).await;
}

/// The repository's behaviour through a wrapper of the required methods, with the backend's
/// abilities handed out beside it: saves, snapshots, loads, conflicts and repeated requests
/// give what the plain stores give.
mod repository_through_a_wrapper {
    use std::sync::Arc;

    use eventsourcing_kit::backend::Stores;
    use eventsourcing_kit::prelude::*;
    use eventsourcing_kit::testing::RequiredOnly;

    use crate::common::{Account, AccountCommands};

    #[tokio::test]
    async fn every_outcome_is_the_plain_stores() {
        let (events, snapshots) = (InMemoryEventStore::new(), InMemorySnapshotStore::new());
        let wrapped = Stores::new(
            RequiredOnly(events.clone()),
            snapshots.clone(),
            InMemorySubscriptionStore::new(),
        )
        .with_request_index(Arc::new(events.clone()));
        let through = wrapped.repository_with_snapshots::<Account>(SnapshotPolicy::every(10).unwrap());
        let plain = Repository::<Account>::new(events.clone())
            .with_snapshots(snapshots.clone(), SnapshotPolicy::every(10).unwrap());

        let id = Uuid::new_v4();
        through.execute(id, |a| a.open("Ada", 100)).await.unwrap();
        for _ in 0..24 {
            through.execute(id, |a| a.deposit(100)).await.unwrap();
        }
        let hits = through.metrics().hits("Account");
        let (a, b) = (through.load(id).await.unwrap(), plain.load(id).await.unwrap());
        assert_eq!((a.version(), a.state()), (b.version(), b.state()));
        assert_eq!(a.version(), 25);
        assert_eq!(
            through.metrics().hits("Account"),
            hits + 1,
            "the snapshot at 20 is used"
        );
        assert!(snapshots.snapshot_exists(id, "Account").await.unwrap());

        let mut stale = through.load(id).await.unwrap();
        through.execute(id, |a| a.deposit(100)).await.unwrap();
        stale.deposit(100).unwrap();
        assert!(through.save(&mut stale).await.unwrap_err().is_conflict());

        let request = eventsourcing_kit::request::RequestId::new("wrapped deposit").unwrap();
        let first = through
            .command(id)
            .request_id(request.clone())
            .run(|a| a.deposit(200))
            .await
            .unwrap();
        let again = plain
            .clone()
            .with_request_index(Arc::new(events.clone()))
            .command(id)
            .request_id(request)
            .run(|a| a.deposit(200))
            .await
            .unwrap();
        assert_eq!((again.version, again.repeated), (first.version, true));
    }
}
