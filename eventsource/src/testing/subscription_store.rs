//! The checks of the [`SubscriptionStore`] contract, one `async fn` per point.
//!
//! Each check uses subscription names of its own, so checks can run in parallel on one
//! database; see the [module docs](super) for how to run them.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use uuid::Uuid;

use super::{now, unique_type};
use crate::error::Error;
use crate::event::{EventEnvelope, StoredEvent};
use crate::subscription::SubscriptionStore;

/// The checks of this suite: the one list that both the test macro and [`run_all`] use.
#[doc(hidden)]
#[macro_export]
macro_rules! __subscription_store_checks {
    ($callback:ident($($args:tt)*)) => {
        $crate::$callback! { ($($args)*)
            a_lease_has_one_owner_at_a_time
            a_lease_that_ran_out_passes_to_another_owner
            racing_owners_get_one_lease
            checkpoints_are_fenced_by_the_lease
            dead_letters_read_back_in_order
            removing_dead_letters_removes_only_those
            a_redacted_dead_letter_keeps_its_place_and_time
            subscriptions_are_listed_with_their_state
            subscription_names_are_checked
            a_reset_forgets_the_state_of_the_group_too
        }
    };
}

crate::__subscription_store_checks!(__conformance_runner(dyn SubscriptionStore));

const LONG: Duration = Duration::from_secs(60);

/// While one owner holds a lease, no other gets it; the holder renews it; once released,
/// another owner takes it.
pub async fn a_lease_has_one_owner_at_a_time(store: &dyn SubscriptionStore) {
    let name = unique_type("Lease");
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    assert!(
        store.acquire(&name, a, LONG).await.unwrap(),
        "a free lease is taken"
    );
    assert!(
        !store.acquire(&name, b, LONG).await.unwrap(),
        "a held lease is refused to another"
    );
    assert!(
        store.acquire(&name, a, LONG).await.unwrap(),
        "the holder renews its lease"
    );
    store.release(&name, b).await.unwrap();
    assert!(
        !store.acquire(&name, b, LONG).await.unwrap(),
        "a release by a non-holder does nothing"
    );
    store.release(&name, a).await.unwrap();
    assert!(
        store.acquire(&name, b, LONG).await.unwrap(),
        "a released lease is taken"
    );
}

/// A lease that ran out goes to the next owner that asks, and the old owner can no longer
/// store a checkpoint.
pub async fn a_lease_that_ran_out_passes_to_another_owner(store: &dyn SubscriptionStore) {
    let name = unique_type("Expiry");
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    assert!(store.acquire(&name, a, Duration::from_millis(50)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        !store.save_checkpoint(&name, a, 1).await.unwrap(),
        "a checkpoint after the lease ran out"
    );
    assert!(
        store.acquire(&name, b, LONG).await.unwrap(),
        "the lease that ran out is taken"
    );
    assert!(
        !store.acquire(&name, a, LONG).await.unwrap(),
        "the old owner cannot take it back"
    );
    assert!(store.save_checkpoint(&name, b, 2).await.unwrap());
    assert_eq!(store.checkpoint(&name).await.unwrap(), Some(2));
}

/// Owners racing for a free lease: exactly one gets it.
pub async fn racing_owners_get_one_lease(store: &dyn SubscriptionStore) {
    let name = unique_type("Race");
    let owners: Vec<Uuid> = (0..8).map(|_| Uuid::new_v4()).collect();
    let taken = join_all(owners.iter().map(|owner| store.acquire(&name, *owner, LONG))).await;
    let winners = taken.into_iter().map(|t| t.unwrap()).filter(|t| *t).count();
    assert_eq!(winners, 1, "owners racing for one lease: {winners} got it");
}

/// A checkpoint is stored only by the lease's holder, reads back, and is forgotten by a reset.
pub async fn checkpoints_are_fenced_by_the_lease(store: &dyn SubscriptionStore) {
    let name = unique_type("Checkpoint");
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    assert_eq!(
        store.checkpoint(&name).await.unwrap(),
        None,
        "a new subscription has no checkpoint"
    );
    assert!(
        !store.save_checkpoint(&name, a, 5).await.unwrap(),
        "a checkpoint without the lease"
    );
    assert_eq!(store.checkpoint(&name).await.unwrap(), None);
    assert!(store.acquire(&name, a, LONG).await.unwrap());
    assert!(store.save_checkpoint(&name, a, 0).await.unwrap());
    assert_eq!(
        store.checkpoint(&name).await.unwrap(),
        Some(0),
        "checkpoint 0 is a checkpoint"
    );
    assert!(store.save_checkpoint(&name, a, i64::MAX as u64).await.unwrap());
    assert_eq!(store.checkpoint(&name).await.unwrap(), Some(i64::MAX as u64));
    assert!(
        !store.save_checkpoint(&name, b, 7).await.unwrap(),
        "a checkpoint by another owner"
    );
    assert_eq!(store.checkpoint(&name).await.unwrap(), Some(i64::MAX as u64));
    store.reset(&name).await.unwrap();
    assert_eq!(
        store.checkpoint(&name).await.unwrap(),
        None,
        "a reset forgets the checkpoint"
    );
    let other = unique_type("Checkpoint");
    assert_eq!(
        store.checkpoint(&other).await.unwrap(),
        None,
        "names are kept apart"
    );
}

/// An event at `position` that a handler gave up on.
fn poisoned(position: u64) -> StoredEvent {
    StoredEvent {
        position,
        envelope: EventEnvelope {
            event_id: Uuid::new_v4(),
            event_type: Arc::from("Poisoned"),
            event_version: 1,
            aggregate_id: Uuid::new_v4(),
            aggregate_type: Arc::from("Thing"),
            aggregate_version: 1,
            occurred_at: now(),
            correlation_id: None,
            causation_id: None,
            request_id: None,
            metadata: None,
            payload: Arc::from("{}"),
        },
    }
}

/// Dead letters read back field for field, in the order they were recorded, by name.
pub async fn dead_letters_read_back_in_order(store: &dyn SubscriptionStore) {
    let name = unique_type("DeadLetters");
    assert!(store.dead_letters(&name, 0, usize::MAX).await.unwrap().is_empty());
    let events = [poisoned(9), poisoned(3)];
    for (event, error) in events.iter().zip(["first failure", "second: ünïcödé"]) {
        store.dead_letter(&name, event, error).await.unwrap();
    }
    let letters = store.dead_letters(&name, 0, usize::MAX).await.unwrap();
    assert_eq!(letters.len(), 2);
    // A page at a time: the first letters left out, at most the limit.
    let first = store.dead_letters(&name, 0, 1).await.unwrap();
    assert_eq!(first, letters[..1], "the first page");
    let second = store.dead_letters(&name, 1, 5).await.unwrap();
    assert_eq!(second, letters[1..], "the page after the first letter");
    assert!(
        store.dead_letters(&name, 2, 5).await.unwrap().is_empty(),
        "past the last"
    );
    assert!(
        store.dead_letters(&name, 0, 0).await.unwrap().is_empty(),
        "a limit of none"
    );
    for ((letter, event), error) in letters
        .iter()
        .zip(&events)
        .zip(["first failure", "second: ünïcödé"])
    {
        assert_eq!(letter.subscription, name);
        assert_eq!(letter.position, event.position);
        assert_eq!(letter.event_id, event.event_id);
        assert_eq!(letter.event_type, "Poisoned");
        assert_eq!(letter.error, error);
    }
    assert!(store
        .dead_letters(&unique_type("DeadLetters"), 0, usize::MAX)
        .await
        .unwrap()
        .is_empty());
}

/// [`SubscriptionStore::remove_dead_letters`] removes the letters of the name for the events
/// given, and says how many; those of other events and other names stay.
pub async fn removing_dead_letters_removes_only_those(store: &dyn SubscriptionStore) {
    let (name, other) = (unique_type("Replayed"), unique_type("Replayed"));
    let events = [poisoned(4), poisoned(5), poisoned(6)];
    for event in &events {
        store.dead_letter(&name, event, "failed").await.unwrap();
        store.dead_letter(&other, event, "failed").await.unwrap();
    }
    let removed = store
        .remove_dead_letters(&name, &[events[0].event_id, events[2].event_id, Uuid::new_v4()])
        .await
        .unwrap();
    assert_eq!(removed, 2);
    let left: Vec<Uuid> = store
        .dead_letters(&name, 0, usize::MAX)
        .await
        .unwrap()
        .iter()
        .map(|l| l.event_id)
        .collect();
    assert_eq!(left, [events[1].event_id]);
    assert_eq!(
        store.dead_letters(&other, 0, usize::MAX).await.unwrap().len(),
        3,
        "another name's stay"
    );
    assert_eq!(store.remove_dead_letters(&name, &[]).await.unwrap(), 0);
    assert_eq!(
        store
            .remove_dead_letters(&name, &[events[0].event_id])
            .await
            .unwrap(),
        0,
        "removed already"
    );
}

/// [`SubscriptionStore::redact_dead_letter`] replaces the error of the letters of one name
/// for one event that have that error, and nothing else: their order, times and the other
/// letters stay.
pub async fn a_redacted_dead_letter_keeps_its_place_and_time(store: &dyn SubscriptionStore) {
    let (name, other) = (unique_type("Redacted"), unique_type("Redacted"));
    let events = [poisoned(7), poisoned(8)];
    for event in &events {
        store
            .dead_letter(&name, event, "failed for ada@example.com")
            .await
            .unwrap();
        store
            .dead_letter(&other, event, "failed for ada@example.com")
            .await
            .unwrap();
    }
    // The same event given up on twice, with another error.
    store.dead_letter(&name, &events[0], "timed out").await.unwrap();
    let before = store.dead_letters(&name, 0, usize::MAX).await.unwrap();
    let changed = store
        .redact_dead_letter(
            &name,
            events[0].event_id,
            "failed for ada@example.com",
            "failed for [forgotten]",
        )
        .await
        .unwrap();
    assert_eq!(changed, 1);
    let after = store.dead_letters(&name, 0, usize::MAX).await.unwrap();
    assert_eq!(
        after
            .iter()
            .map(|l| (l.event_id, l.failed_at, l.error.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (events[0].event_id, before[0].failed_at, "failed for [forgotten]"),
            (
                events[1].event_id,
                before[1].failed_at,
                "failed for ada@example.com"
            ),
            (events[0].event_id, before[2].failed_at, "timed out"),
        ],
        "only the letter of that event and error changed, in its place"
    );
    assert!(
        store
            .dead_letters(&other, 0, usize::MAX)
            .await
            .unwrap()
            .iter()
            .all(|l| l.error == "failed for ada@example.com"),
        "another name's stay"
    );
    assert_eq!(
        store
            .redact_dead_letter(&name, Uuid::new_v4(), "x", "y")
            .await
            .unwrap(),
        0
    );
}

/// [`SubscriptionStore::subscriptions`] lists every subscription that took a lease, with its
/// checkpoint, its active owner (none once the lease is given up or ran out), its dead
/// letters, and whether its last lease ran out without being given up.
pub async fn subscriptions_are_listed_with_their_state(store: &dyn SubscriptionStore) {
    let (active, idle, dead) = (unique_type("Active"), unique_type("Idle"), unique_type("Dead"));
    let (owner, other, gone) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    assert!(store.acquire(&active, owner, LONG).await.unwrap());
    assert!(store.save_checkpoint(&active, owner, 42).await.unwrap());
    assert!(store.acquire(&idle, other, LONG).await.unwrap());
    store.release(&idle, other).await.unwrap();
    // A consumer that died: its lease runs out without being given up.
    assert!(store
        .acquire(&dead, gone, Duration::from_millis(50))
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(120)).await;
    let listed = store.subscriptions().await.unwrap();
    let find = |name: &str| {
        listed
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("subscription {name} is not listed"))
    };
    let (a, i, d) = (find(&active), find(&idle), find(&dead));
    assert_eq!(
        (a.checkpoint, a.owner, a.dead_letters, a.abandoned),
        (Some(42), Some(owner), 0, false)
    );
    assert_eq!(
        (i.checkpoint, i.owner, i.dead_letters, i.abandoned),
        (None, None, 0, false)
    );
    assert_eq!((d.owner, d.abandoned), (None, true), "a lease that ran out");
    let names: Vec<&str> = listed.iter().map(|s| s.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "listed by name");
    store.release(&active, owner).await.unwrap();
}

/// An empty subscription name, or one with a NUL character, is [`Error::InvalidInput`]
/// everywhere. A name longer than [`MAX_NAME_LEN`](crate::subscription::MAX_NAME_LEN) bytes,
/// or with a control character, is refused where it would enter the store (a lease, a dead
/// letter) and stores nothing; a store still reads and resets one it holds.
pub async fn subscription_names_are_checked(store: &dyn SubscriptionStore) {
    for name in ["", "a\0b"] {
        match store.acquire(name, Uuid::new_v4(), LONG).await {
            Err(Error::InvalidInput(_)) => {}
            other => panic!("taking the lease of {name:?}: expected Error::InvalidInput, got {other:?}"),
        }
        match store.checkpoint(name).await {
            Err(Error::InvalidInput(_)) => {}
            other => {
                panic!("reading the checkpoint of {name:?}: expected Error::InvalidInput, got {other:?}")
            }
        }
    }
    let longest = format!("{}-", unique_type("Longest"));
    let longest = format!(
        "{longest}{}",
        "x".repeat(crate::subscription::MAX_NAME_LEN - longest.len())
    );
    let owner = Uuid::new_v4();
    assert!(
        store.acquire(&longest, owner, LONG).await.unwrap(),
        "a name of the longest length is taken"
    );
    store.release(&longest, owner).await.unwrap();
    let refused = [
        format!("{longest}y"),
        format!("{}\nforged\t0", unique_type("Newline")),
        format!("{}\u{1b}[2J", unique_type("Escape")),
        format!("{}\u{202e}", unique_type("Override")),
    ];
    for name in &refused {
        match store.acquire(name, owner, LONG).await {
            Err(Error::InvalidInput(_)) => {}
            other => panic!("taking the lease of {name:?}: expected Error::InvalidInput, got {other:?}"),
        }
        match store.dead_letter(name, &poisoned(1), "failed").await {
            Err(Error::InvalidInput(_)) => {}
            other => {
                panic!("recording a dead letter of {name:?}: expected Error::InvalidInput, got {other:?}")
            }
        }
        // Looked up, such a name (one stored before the rules, or by another program) is
        // taken: here it is not stored.
        assert_eq!(store.checkpoint(name).await.unwrap(), None);
        assert!(store.dead_letters(name, 0, usize::MAX).await.unwrap().is_empty());
        store.reset(name).await.unwrap();
        store.release(name, owner).await.unwrap();
    }
    if let Ok(listed) = store.subscriptions().await {
        for name in &refused {
            assert!(
                listed.iter().all(|s| s.name != *name || s.owner.is_none()),
                "a refused name holds no lease: {name:?}"
            );
        }
    }
}

/// A reset forgets the checkpoint of the name and of its consumer group's state (`NAME#...`),
/// and no other: not a name that merely starts the same.
pub async fn a_reset_forgets_the_state_of_the_group_too(store: &dyn SubscriptionStore) {
    let (name, owner) = (unique_type("group"), Uuid::new_v4());
    let neighbour = format!("{name}x");
    let names = [
        name.clone(),
        format!("{name}#layout:1"),
        format!("{name}#1:0-511"),
        neighbour.clone(),
    ];
    for held in &names {
        assert!(store.acquire(held, owner, LONG).await.unwrap());
        assert!(store.save_checkpoint(held, owner, 7).await.unwrap());
    }
    store.reset(&name).await.unwrap();
    for held in &names[..3] {
        assert_eq!(store.checkpoint(held).await.unwrap(), None, "{held} forgotten");
    }
    assert_eq!(
        store.checkpoint(&neighbour).await.unwrap(),
        Some(7),
        "another name kept"
    );
}
