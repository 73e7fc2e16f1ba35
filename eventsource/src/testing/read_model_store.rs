//! The checks of the [`ReadModelStore`] contract that hold for any projection: a commit is
//! fenced by the lease and by the checkpoint it moves from, and a reset forgets the
//! checkpoint. Each check commits empty batches (the projection applies nothing), under
//! names of its own, so checks can run in parallel on one database.

use std::time::Duration;

use uuid::Uuid;

use super::unique_type;
use crate::projection::ReadModelStore;

/// The checks of this suite: the one list that both the test macro and [`run_all`] use.
#[doc(hidden)]
#[macro_export]
macro_rules! __read_model_store_checks {
    ($callback:ident($($args:tt)*)) => {
        $crate::$callback! { ($($args)*)
            a_commit_without_the_lease_changes_nothing
            the_checkpoint_moves_only_from_where_it_was
            a_consumer_that_lost_its_lease_commits_nothing
            a_reset_forgets_the_checkpoint
        }
    };
}

crate::__read_model_store_checks!(__conformance_runner(dyn ReadModelStore));

const LONG: Duration = Duration::from_secs(60);

async fn commit(store: &dyn ReadModelStore, name: &str, owner: Uuid, after: Option<u64>, last: u64) -> bool {
    store
        .commit(name, owner, after, &[], last)
        .await
        .unwrap_or_else(|e| panic!("the commit of {name} up to {last} failed: {e}"))
}

async fn checkpoint(store: &dyn ReadModelStore, name: &str) -> Option<u64> {
    store.checkpoint(name).await.unwrap()
}

async fn lease(store: &dyn ReadModelStore, name: &str, owner: Uuid, ttl: Duration) -> bool {
    store.subscriptions().acquire(name, owner, ttl).await.unwrap()
}

/// A consumer that never took the lease stores no checkpoint.
pub async fn a_commit_without_the_lease_changes_nothing(store: &dyn ReadModelStore) {
    store.setup().await.unwrap();
    let name = unique_type("unleased");
    assert!(
        !commit(store, &name, Uuid::new_v4(), None, 5).await,
        "a commit without the lease is refused"
    );
    assert_eq!(checkpoint(store, &name).await, None);
}

/// The checkpoint moves only from the one the batch was read after: a commit made again
/// after it committed, or one that another commit overtook, changes nothing.
pub async fn the_checkpoint_moves_only_from_where_it_was(store: &dyn ReadModelStore) {
    store.setup().await.unwrap();
    let (name, owner) = (unique_type("moving"), Uuid::new_v4());
    assert!(lease(store, &name, owner, LONG).await);
    assert!(commit(store, &name, owner, None, 5).await, "the first commit");
    assert_eq!(checkpoint(store, &name).await, Some(5));
    assert!(
        !commit(store, &name, owner, None, 5).await,
        "the same commit made again"
    );
    assert!(
        !commit(store, &name, owner, Some(3), 7).await,
        "a commit from a checkpoint that is not the stored one"
    );
    assert_eq!(checkpoint(store, &name).await, Some(5));
    assert!(commit(store, &name, owner, Some(5), 9).await, "the next commit");
    assert_eq!(checkpoint(store, &name).await, Some(9));
}

/// Once another consumer took the lease over, the one that lost it commits nothing.
pub async fn a_consumer_that_lost_its_lease_commits_nothing(store: &dyn ReadModelStore) {
    store.setup().await.unwrap();
    let (name, first, second) = (unique_type("taken-over"), Uuid::new_v4(), Uuid::new_v4());
    assert!(lease(store, &name, first, Duration::from_millis(50)).await);
    assert!(commit(store, &name, first, None, 2).await);
    let mut taken = false;
    for _ in 0..200 {
        if lease(store, &name, second, LONG).await {
            taken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(taken, "the lease passes on once it ran out");
    assert!(
        !commit(store, &name, first, Some(2), 4).await,
        "the consumer that lost the lease is fenced"
    );
    assert_eq!(checkpoint(store, &name).await, Some(2));
    assert!(
        commit(store, &name, second, Some(2), 4).await,
        "the new owner goes on"
    );
    assert_eq!(checkpoint(store, &name).await, Some(4));
}

/// A reset forgets the checkpoint, and those of the ranges of its consumer group, in the
/// transaction that empties the read model; the next commit starts from none.
pub async fn a_reset_forgets_the_checkpoint(store: &dyn ReadModelStore) {
    store.setup().await.unwrap();
    let (name, owner) = (unique_type("reset"), Uuid::new_v4());
    let range = format!("{name}#1:0-1023");
    assert!(lease(store, &name, owner, LONG).await);
    assert!(commit(store, &name, owner, None, 6).await);
    assert!(lease(store, &range, owner, LONG).await);
    assert!(commit(store, &range, owner, None, 9).await);
    store.reset(&name).await.unwrap();
    assert_eq!(checkpoint(store, &name).await, None);
    assert_eq!(
        checkpoint(store, &range).await,
        None,
        "the range's checkpoint forgotten"
    );
    assert!(commit(store, &name, owner, None, 3).await, "a commit from none");
    assert_eq!(checkpoint(store, &name).await, Some(3));
}
