//! What only some stores can do, handed out by the backend as values of their own rather than
//! found on the store traits: the append wake-up signal, the listings operators read, and the
//! index of request ids.
//! Reading and writing events with a snapshot in one statement is
//! [`JointSnapshots`](crate::snapshot::JointSnapshots), beside the snapshots it writes.
//!
//! [`backend::Stores`](crate::backend::Stores) carries the abilities its backend has, and
//! builds repositories and subscriptions that use them. A wrapper or router store has the
//! abilities its builder gives it: none is lost by forgetting to forward a method.

use std::sync::Arc;

use async_trait::async_trait;
use uuid::Uuid;

use crate::error::Result;
use crate::snapshot::SnapshotVersion;

/// Tells the consumers of a feed that events were appended. Cheap to clone; clones share it.
#[derive(Clone, Debug)]
pub struct AppendSignal(Arc<tokio::sync::watch::Sender<u64>>);

impl Default for AppendSignal {
    fn default() -> Self {
        AppendSignal(Arc::new(tokio::sync::watch::Sender::new(0)))
    }
}

impl AppendSignal {
    /// A new signal, not raised yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises the signal: every waiter wakes.
    pub fn raise(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A waiter that wakes at each raise from now on.
    pub fn waiter(&self) -> AppendWaiter {
        let mut receiver = self.0.subscribe();
        receiver.mark_unchanged();
        AppendWaiter(receiver)
    }
}

/// Waits for an [`AppendSignal`].
#[derive(Debug)]
pub struct AppendWaiter(tokio::sync::watch::Receiver<u64>);

impl AppendWaiter {
    /// Returns once the signal was raised since the last call (at once if it was meanwhile).
    pub async fn raised(&mut self) {
        if self.0.changed().await.is_err() {
            // The store is gone: nothing will ever be appended through it again.
            std::future::pending::<()>().await;
        }
    }
}

/// Lists the streams an event store holds, for operators (statistics, snapshot warming).
///
/// # Contract
///
/// The list is complete and exact at some moment during the call, in no particular order, and
/// costs what the store holds of the one aggregate type, read from an index: never a read of
/// the feed. The conformance suite checks it against what the feed shows.
#[async_trait]
pub trait StreamListing: Send + Sync {
    /// Every stream of one aggregate type with its version.
    async fn stream_versions(&self, aggregate_type: &str) -> Result<Vec<(Uuid, u64)>>;
}

/// Lists the snapshots a snapshot store holds, for operators (statistics, snapshot warming
/// and coverage).
///
/// # Contract
///
/// The list is complete and exact at some moment during the call, in no particular order, and
/// costs what the store holds of the one aggregate type. The conformance suite checks it
/// against what the store's reads return.
#[async_trait]
pub trait SnapshotListing: Send + Sync {
    /// Every stored snapshot of one aggregate type: its aggregate, schema version and version.
    async fn snapshot_versions(&self, aggregate_type: &str) -> Result<Vec<SnapshotVersion>>;
}

/// Finds the commands a stream's events were stored for, by request id, from an index.
///
/// # Contract
///
/// [`request_version`](Self::request_version) gives what reading the whole stream and keeping
/// the last event stored with the request id would give, without reading the stream. The
/// conformance suite checks it against that read.
#[async_trait]
pub trait RequestIndex: Send + Sync {
    /// The version of the last event of the stream stored with this request id (the
    /// idempotency key of the command that recorded it), `None` if the stream holds none.
    async fn request_version(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        request_id: Uuid,
    ) -> Result<Option<u64>>;
}
