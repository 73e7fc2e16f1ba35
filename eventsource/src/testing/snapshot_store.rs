//! The checks of the [`SnapshotStore`] contract, one `async fn` per point.
//!
//! Each check writes under fresh ids and a type name of its own, and deletes what it wrote;
//! see the [module docs](super) for how to run them.

use chrono::Duration;
use futures_util::future::join_all;
use uuid::Uuid;

use super::{now, unique_type};
use crate::error::Error;
use crate::snapshot::{Snapshot, SnapshotStore};

/// The checks of this suite: the one list that both the test macro and [`run_all`] use.
#[doc(hidden)]
#[macro_export]
macro_rules! __snapshot_store_checks {
    ($callback:ident($($args:tt)*)) => {
        $crate::$callback! { ($($args)*)
            absent_snapshot_reads_as_none
            saved_snapshot_round_trips_every_field
            same_or_newer_version_replaces_older_never_does
            racing_saves_keep_the_newest
            delete_snapshot_says_whether_one_existed
            snapshot_exists_follows_saves_and_deletes
            delete_by_type_deletes_strictly_below_the_bound
            same_id_under_two_types_is_two_snapshots
            each_schema_version_keeps_its_own_snapshot
            names_a_store_cannot_keep_are_refused
        }
    };
}

crate::__snapshot_store_checks!(__conformance_runner(dyn SnapshotStore));

pub(super) fn snapshot(id: Uuid, ty: &str, version: u64, schema_version: u32) -> Snapshot {
    Snapshot {
        aggregate_id: id,
        aggregate_type: ty.to_owned(),
        version,
        event_id: Some(Uuid::new_v4()),
        state: format!(r#"{{"version":{version},"writer":"{}"}}"#, Uuid::new_v4()),
        schema_version,
        created_at: now(),
    }
}

pub(super) async fn save(store: &dyn SnapshotStore, snapshot: &Snapshot) -> bool {
    store.save_snapshot(snapshot).await.unwrap_or_else(|e| {
        panic!(
            "saving the snapshot of {} {} at version {} failed: {e}",
            snapshot.aggregate_type, snapshot.aggregate_id, snapshot.version
        )
    })
}

async fn get(store: &dyn SnapshotStore, id: Uuid, ty: &str) -> Option<Snapshot> {
    store
        .get_snapshot(id, ty, u32::MAX)
        .await
        .unwrap_or_else(|e| panic!("reading the snapshot of {ty} {id} failed: {e}"))
}

async fn exists(store: &dyn SnapshotStore, id: Uuid, ty: &str) -> bool {
    store
        .snapshot_exists(id, ty)
        .await
        .unwrap_or_else(|e| panic!("snapshot_exists of {ty} {id} failed: {e}"))
}

async fn delete(store: &dyn SnapshotStore, id: Uuid, ty: &str) -> bool {
    store
        .delete_snapshot(id, ty)
        .await
        .unwrap_or_else(|e| panic!("deleting the snapshot of {ty} {id} failed: {e}"))
}

pub(super) async fn delete_by_type(store: &dyn SnapshotStore, ty: &str, below: Option<u32>) -> u64 {
    store
        .delete_snapshots_by_type(ty, below)
        .await
        .unwrap_or_else(|e| panic!("deleting the snapshots of {ty} below {below:?} failed: {e}"))
}

/// Deletes every snapshot of the check's own types.
async fn clean_up(store: &dyn SnapshotStore, types: &[&str]) {
    for ty in types {
        delete_by_type(store, ty, None).await;
    }
}

fn assert_same(got: Option<Snapshot>, want: &Snapshot, context: &str) {
    let Some(got) = got else {
        panic!(
            "{context}: no snapshot stored, expected the one at version {}",
            want.version
        )
    };
    assert_eq!(got.aggregate_id, want.aggregate_id, "{context}: aggregate_id");
    assert_eq!(
        got.aggregate_type, want.aggregate_type,
        "{context}: aggregate_type"
    );
    assert_eq!(got.version, want.version, "{context}: version");
    assert_eq!(got.event_id, want.event_id, "{context}: event_id");
    assert_eq!(got.state, want.state, "{context}: state, byte for byte");
    assert_eq!(
        got.schema_version, want.schema_version,
        "{context}: schema_version"
    );
    assert_eq!(got.created_at, want.created_at, "{context}: created_at");
}

/// With nothing stored, `get_snapshot` is `None`, `snapshot_exists` false, and the deletes
/// delete nothing.
pub async fn absent_snapshot_reads_as_none(store: &dyn SnapshotStore) {
    let (id, ty) = (Uuid::new_v4(), unique_type("Absent"));
    assert_eq!(
        get(store, id, &ty).await,
        None,
        "get_snapshot with nothing stored"
    );
    assert!(
        !exists(store, id, &ty).await,
        "snapshot_exists with nothing stored"
    );
    assert!(
        !delete(store, id, &ty).await,
        "delete_snapshot with nothing stored"
    );
    assert_eq!(
        delete_by_type(store, &ty, None).await,
        0,
        "delete_snapshots_by_type(None) with nothing stored"
    );
    assert_eq!(
        delete_by_type(store, &ty, Some(u32::MAX)).await,
        0,
        "delete_snapshots_by_type with nothing stored"
    );
}

/// A snapshot reads back field for field, at the extremes of its ranges too.
pub async fn saved_snapshot_round_trips_every_field(store: &dyn SnapshotStore) {
    let ty = unique_type("RoundTrip");
    let mut large = snapshot(Uuid::new_v4(), &ty, i64::MAX as u64, u32::MAX);
    large.state =
        r#"{"balance":-12.75,"name":"Ünïcödé ✓ \"quoted\" \\ \n","tags":["a",null],"n":{"deep":[1,2]}}"#
            .into();
    large.created_at = now() - Duration::days(400);
    let mut small = snapshot(Uuid::new_v4(), &ty, 1, 0);
    small.state = "null".into();
    // Text a normalizing store would change: key order, spacing, a negative zero, a NUL
    // escape, a repeated key, a trailing zero.
    let mut exact = snapshot(Uuid::new_v4(), &ty, 7, 3);
    exact.state = r#"{ "z": -0.0, "a": "nul \u0000 here",  "a": 2, "n": 1.50 }"#.into();
    // Stored before snapshots named their event.
    let mut unbound = snapshot(Uuid::new_v4(), &ty, 2, 1);
    unbound.event_id = None;
    for snap in [&large, &small, &exact, &unbound] {
        assert!(
            save(store, snap).await,
            "saving a first snapshot at version {} reported it not stored",
            snap.version
        );
        assert_same(
            get(store, snap.aggregate_id, &ty).await,
            snap,
            &format!("the snapshot at version {}", snap.version),
        );
        assert!(
            exists(store, snap.aggregate_id, &ty).await,
            "snapshot_exists after saving"
        );
    }
    clean_up(store, &[&ty]).await;
}

/// A save replaces the stored snapshot with one of the same or a higher version and reports
/// it stored; one of a lower version is refused, reported as not stored, and changes nothing.
pub async fn same_or_newer_version_replaces_older_never_does(store: &dyn SnapshotStore) {
    let (id, ty) = (Uuid::new_v4(), unique_type("VersionGuard"));
    assert!(
        save(store, &snapshot(id, &ty, 5, 1)).await,
        "saving at version 5 reported it not stored"
    );
    let newer = snapshot(id, &ty, 7, 1);
    assert!(
        save(store, &newer).await,
        "saving version 7 over 5 reported it not stored"
    );
    assert_same(get(store, id, &ty).await, &newer, "after saving version 7 over 5");
    let mut equal = snapshot(id, &ty, 7, 1);
    equal.created_at = now() + Duration::seconds(1);
    assert!(
        save(store, &equal).await,
        "saving version 7 over 7 reported it not stored"
    );
    assert_same(get(store, id, &ty).await, &equal, "after saving version 7 over 7");
    for older in [6, 0] {
        assert!(
            !save(store, &snapshot(id, &ty, older, 1)).await,
            "saving version {older} over 7 reports it stored"
        );
        assert_same(
            get(store, id, &ty).await,
            &equal,
            &format!("after saving version {older} over 7"),
        );
    }
    clean_up(store, &[&ty]).await;
}

/// Saves of many versions racing: the highest is stored, whatever the order they land in;
/// saves of one version racing: one of them is stored, and each is reported stored.
pub async fn racing_saves_keep_the_newest(store: &dyn SnapshotStore) {
    let (id, ty) = (Uuid::new_v4(), unique_type("RacingSaves"));
    let mut versions: Vec<u64> = (1..=20).collect();
    // A random order, so that no store passes by always applying the last one it was given.
    versions.sort_by_key(|_| Uuid::new_v4());
    let snapshots: Vec<_> = versions.iter().map(|&v| snapshot(id, &ty, v, 1)).collect();
    let results = join_all(snapshots.iter().map(|s| store.save_snapshot(s))).await;
    for (snap, result) in snapshots.iter().zip(results) {
        let stored =
            result.unwrap_or_else(|e| panic!("saving version {} in a race failed: {e}", snap.version));
        if snap.version == 20 {
            assert!(
                stored,
                "the save of the highest version in a race reports it not stored"
            );
        }
    }
    let newest = snapshots
        .iter()
        .find(|s| s.version == 20)
        .expect("version 20 is saved");
    assert_same(
        get(store, id, &ty).await,
        newest,
        "after racing saves of versions 1 to 20",
    );

    let same: Vec<_> = (0..8).map(|_| snapshot(id, &ty, 30, 1)).collect();
    let results = join_all(same.iter().map(|s| store.save_snapshot(s))).await;
    for result in results {
        assert!(
            result.expect("a racing save of version 30"),
            "a racing save of version 30 over 30 reported it not stored"
        );
    }
    let stored = get(store, id, &ty)
        .await
        .expect("a snapshot after racing saves of version 30");
    assert!(
        same.iter()
            .any(|s| s.state == stored.state && s.version == stored.version),
        "after racing saves of version 30 the store holds {stored:?}, none of them"
    );
    clean_up(store, &[&ty]).await;
}

/// `delete_snapshot` removes the snapshot and says whether there was one.
pub async fn delete_snapshot_says_whether_one_existed(store: &dyn SnapshotStore) {
    let (id, ty) = (Uuid::new_v4(), unique_type("Delete"));
    let other = Uuid::new_v4();
    save(store, &snapshot(id, &ty, 3, 1)).await;
    let kept = snapshot(other, &ty, 4, 1);
    save(store, &kept).await;
    assert!(
        delete(store, id, &ty).await,
        "deleting a stored snapshot reports none existed"
    );
    assert_eq!(get(store, id, &ty).await, None, "get_snapshot after deleting it");
    assert!(
        !delete(store, id, &ty).await,
        "deleting a deleted snapshot reports one existed"
    );
    assert_same(
        get(store, other, &ty).await,
        &kept,
        "another aggregate's snapshot after a delete",
    );
    let again = snapshot(id, &ty, 1, 1);
    assert!(
        save(store, &again).await,
        "saving an older version after a delete reported it not stored"
    );
    assert_same(
        get(store, id, &ty).await,
        &again,
        "a snapshot saved after a delete",
    );
    clean_up(store, &[&ty]).await;
}

/// `snapshot_exists` is true exactly while a snapshot of that id and type is stored.
pub async fn snapshot_exists_follows_saves_and_deletes(store: &dyn SnapshotStore) {
    let (id, ty) = (Uuid::new_v4(), unique_type("Exists"));
    assert!(!exists(store, id, &ty).await, "snapshot_exists before any save");
    save(store, &snapshot(id, &ty, 1, 1)).await;
    assert!(exists(store, id, &ty).await, "snapshot_exists after a save");
    assert!(
        !exists(store, Uuid::new_v4(), &ty).await,
        "snapshot_exists of another id"
    );
    assert!(
        !exists(store, id, &format!("{ty}-other")).await,
        "snapshot_exists of the id under another type"
    );
    delete(store, id, &ty).await;
    assert!(!exists(store, id, &ty).await, "snapshot_exists after the delete");
    clean_up(store, &[&ty]).await;
}

/// `delete_snapshots_by_type` deletes the snapshots of its type with a schema version
/// strictly below the bound, every one of them with `None`, none of other types, and counts
/// what it deleted.
pub async fn delete_by_type_deletes_strictly_below_the_bound(store: &dyn SnapshotStore) {
    let (ty, other_ty) = (unique_type("Invalidate"), unique_type("Untouched"));
    let schemas = [1, 1, 2, 3, 3];
    let ids: Vec<Uuid> = schemas.iter().map(|_| Uuid::new_v4()).collect();
    for (id, schema) in ids.iter().zip(schemas) {
        save(store, &snapshot(*id, &ty, 10, schema)).await;
    }
    // The same id as one of the deleted, under another type, at schema version 1.
    let untouched = snapshot(ids[0], &other_ty, 10, 1);
    save(store, &untouched).await;
    let remaining = |ids: &[Uuid]| {
        let ids = ids.to_vec();
        let ty = ty.clone();
        async move {
            let mut left = Vec::new();
            for id in ids {
                left.push(exists(store, id, &ty).await);
            }
            left
        }
    };

    assert_eq!(
        delete_by_type(store, &ty, Some(1)).await,
        0,
        "deleting below schema version 1"
    );
    assert_eq!(
        delete_by_type(store, &ty, Some(0)).await,
        0,
        "deleting below schema version 0"
    );
    assert_eq!(
        remaining(&ids).await,
        [true; 5],
        "snapshots left after deleting below 1"
    );
    assert_eq!(
        delete_by_type(store, &ty, Some(2)).await,
        2,
        "deleting below schema version 2"
    );
    assert_eq!(
        remaining(&ids).await,
        [false, false, true, true, true],
        "snapshots left after deleting below 2"
    );
    assert_eq!(
        delete_by_type(store, &ty, Some(3)).await,
        1,
        "deleting below schema version 3"
    );
    assert_eq!(
        remaining(&ids).await,
        [false, false, false, true, true],
        "snapshots left after deleting below 3"
    );
    assert_same(
        get(store, ids[0], &other_ty).await,
        &untouched,
        "another type's snapshot after deleting by type",
    );
    assert_eq!(
        delete_by_type(store, &ty, None).await,
        2,
        "deleting every snapshot of the type"
    );
    assert_eq!(
        remaining(&ids).await,
        [false; 5],
        "snapshots left after deleting all"
    );
    assert_eq!(
        delete_by_type(store, &ty, None).await,
        0,
        "deleting every snapshot of the type again"
    );
    assert_same(
        get(store, ids[0], &other_ty).await,
        &untouched,
        "another type's snapshot after deleting all",
    );
    assert_eq!(
        delete_by_type(store, &other_ty, Some(u32::MAX)).await,
        1,
        "deleting the other type's below u32::MAX"
    );
}

/// Each schema version of an aggregate keeps its own snapshot with its own version guard (two
/// program versions running side by side never replace each other's); a read gets the
/// highest schema version not above the one asked for; a delete removes every one.
pub async fn each_schema_version_keeps_its_own_snapshot(store: &dyn SnapshotStore) {
    let (id, ty) = (Uuid::new_v4(), unique_type("RollingDeploy"));
    let old = snapshot(id, &ty, 10, 1);
    let new = snapshot(id, &ty, 5, 2);
    assert!(save(store, &old).await, "saving schema 1 reported it not stored");
    assert!(
        save(store, &new).await,
        "saving schema 2 at a lower version than schema 1's reported it not stored"
    );
    let ty_ref = ty.as_str();
    let read = |schema: u32| async move {
        store.get_snapshot(id, ty_ref, schema).await.unwrap_or_else(|e| {
            panic!("reading the snapshot of {ty_ref} {id} up to schema {schema} failed: {e}")
        })
    };
    assert_same(read(1).await, &old, "reading up to schema 1");
    assert_same(read(2).await, &new, "reading up to schema 2");
    assert_same(read(9).await, &new, "reading up to schema 9");
    assert_eq!(read(0).await, None, "reading up to schema 0");
    assert!(
        !save(store, &snapshot(id, &ty, 8, 1)).await,
        "an older version of schema 1 is stored"
    );
    let newer_old = snapshot(id, &ty, 12, 1);
    assert!(
        save(store, &newer_old).await,
        "a newer version of schema 1 reported not stored"
    );
    assert_same(read(1).await, &newer_old, "schema 1 after it grew");
    assert_same(read(2).await, &new, "schema 2 after schema 1 grew");
    assert_eq!(
        delete_by_type(store, &ty, Some(2)).await,
        1,
        "deleting below schema 2"
    );
    assert_eq!(read(1).await, None, "schema 1 after deleting below 2");
    assert!(save(store, &newer_old).await, "saving schema 1 again");
    assert!(delete(store, id, &ty).await, "deleting the aggregate's snapshots");
    assert_eq!(
        read(9).await,
        None,
        "any schema after deleting the aggregate's snapshots"
    );
    assert!(
        !exists(store, id, &ty).await,
        "exists after deleting the aggregate's snapshots"
    );
    clean_up(store, &[&ty]).await;
}

/// The same id under two aggregate types is two snapshots, each with its own version guard.
pub async fn same_id_under_two_types_is_two_snapshots(store: &dyn SnapshotStore) {
    let id = Uuid::new_v4();
    let (one, two) = (unique_type("TypeOne"), unique_type("TypeTwo"));
    let first = snapshot(id, &one, 3, 1);
    let second = snapshot(id, &two, 9, 2);
    assert!(
        save(store, &first).await,
        "saving under the first type reported it not stored"
    );
    assert!(
        save(store, &second).await,
        "saving under the second type reported it not stored"
    );
    assert_same(get(store, id, &one).await, &first, "the first type's snapshot");
    assert_same(get(store, id, &two).await, &second, "the second type's snapshot");
    assert!(
        !save(store, &snapshot(id, &one, 2, 1)).await,
        "an older version under the first type is stored"
    );
    let newer = snapshot(id, &one, 5, 1);
    assert!(
        save(store, &newer).await,
        "version 5 under the first type, below the other type's 9, reported not stored"
    );
    assert_same(
        get(store, id, &one).await,
        &newer,
        "the first type's snapshot after it grew",
    );
    assert!(
        delete(store, id, &one).await,
        "deleting the first type's snapshot reported none existed"
    );
    assert_same(
        get(store, id, &two).await,
        &second,
        "the second type's snapshot after the first was deleted",
    );
    clean_up(store, &[&one, &two]).await;
}

/// A snapshot whose aggregate type name is empty or holds a NUL character is
/// [`Error::InvalidInput`], and nothing is stored.
pub async fn names_a_store_cannot_keep_are_refused(store: &dyn SnapshotStore) {
    let ty = unique_type("BadName");
    for name in [String::new(), format!("{ty}\0")] {
        let snap = snapshot(Uuid::new_v4(), &name, 1, 1);
        match store.save_snapshot(&snap).await {
            Err(Error::InvalidInput(_)) => {}
            other => {
                panic!("saving a snapshot of type {name:?}: expected Error::InvalidInput, got {other:?}")
            }
        }
    }
    assert!(
        !exists(store, Uuid::new_v4(), &ty).await,
        "nothing of the refused snapshots is stored"
    );
}
