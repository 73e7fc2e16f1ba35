//! The sharded snapshot store: each aggregate's snapshots live on the shard that holds its
//! events.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::join_all;
use uuid::Uuid;

use super::map::ShardMap;
use crate::abilities::SnapshotListing;
use crate::backend::Stores;
use crate::error::{Error, Result};
use crate::snapshot::{Snapshot, SnapshotStore, SnapshotVersion};

/// A snapshot store split by slice over the snapshot stores of several shards: see
/// [`crate::backend::sharded`]. Cheap to clone; clones share the shards.
#[derive(Clone)]
pub struct ShardedSnapshotStore {
    map: Arc<ShardMap>,
    shards: Arc<[Stores]>,
}

impl std::fmt::Debug for ShardedSnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedSnapshotStore")
            .field("map", &self.map)
            .finish_non_exhaustive()
    }
}

impl ShardedSnapshotStore {
    pub(super) fn new(map: Arc<ShardMap>, shards: Arc<[Stores]>) -> Self {
        ShardedSnapshotStore { map, shards }
    }

    fn shard(&self, aggregate_type: &str, aggregate_id: Uuid) -> &dyn SnapshotStore {
        &*self.shards[self.map.shard_of(aggregate_type, aggregate_id)].snapshots
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl SnapshotStore for ShardedSnapshotStore {
    async fn get_snapshot(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        schema_version: u32,
    ) -> Result<Option<Snapshot>> {
        self.shard(aggregate_type, aggregate_id)
            .get_snapshot(aggregate_id, aggregate_type, schema_version)
            .await
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<bool> {
        self.shard(&snapshot.aggregate_type, snapshot.aggregate_id)
            .save_snapshot(snapshot)
            .await
    }

    async fn delete_snapshot(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<bool> {
        self.shard(aggregate_type, aggregate_id)
            .delete_snapshot(aggregate_id, aggregate_type)
            .await
    }

    async fn snapshot_exists(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<bool> {
        self.shard(aggregate_type, aggregate_id)
            .snapshot_exists(aggregate_id, aggregate_type)
            .await
    }

    /// Deletes them on every shard; the first shard that fails fails the call (the others
    /// have deleted theirs: calling again deletes the rest).
    async fn delete_snapshots_by_type(
        &self,
        aggregate_type: &str,
        schema_version_below: Option<u32>,
    ) -> Result<u64> {
        let deleted = join_all(self.shards.iter().map(|stores| {
            stores
                .snapshots
                .delete_snapshots_by_type(aggregate_type, schema_version_below)
        }))
        .await;
        deleted.into_iter().sum()
    }
}

/// Lists every shard's snapshots: all of them, or the first error.
#[async_trait]
impl SnapshotListing for ShardedSnapshotStore {
    async fn snapshot_versions(&self, aggregate_type: &str) -> Result<Vec<SnapshotVersion>> {
        let lists = join_all(self.shards.iter().map(|stores| async move {
            let listing = stores.snapshot_listing.as_ref().ok_or_else(|| {
                Error::InvalidConfiguration(format!(
                    "a shard's {} stores have no listing of snapshots",
                    stores.backend_name()
                ))
            })?;
            listing.snapshot_versions(aggregate_type).await
        }))
        .await;
        let lists: Result<Vec<_>> = lists.into_iter().collect();
        Ok(lists?.into_iter().flatten().collect())
    }
}
