//! A read model held in the process, with its checkpoint beside it.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use uuid::Uuid;

use super::verify::{Row, StreamKey, VerifiableReadModel};
use super::ReadModelStore;
use crate::backend::memory::InMemorySubscriptionStore;
use crate::error::Result;
use crate::event::StoredEvent;
use crate::subscription::{HandlerError, SubscriptionStore};

/// A projection whose read model is a value in the process: for tests and small programs.
///
/// `apply` works on a copy of the state, which replaces it only if the whole batch applied,
/// so a failing batch changes nothing and is tried again from the same state.
pub trait MemoryProjection: Clone + Send + Sync + 'static {
    /// Applies a batch of events to the state.
    fn apply(&mut self, events: &[StoredEvent]) -> Result<(), HandlerError>;

    /// The rows the events of `stream` made in the state, for
    /// [`Projection::verify`](super::Projection::verify) (which applies a stream's events to
    /// a copy of the initial state and compares its rows with the live state's); `None`, the
    /// default, if the projection cannot tell them, which makes `verify` refuse it. It must
    /// give `Some` for every stream, also one the state does not hold (no rows).
    fn stream_rows(&self, stream: &StreamKey) -> Option<Vec<Row>> {
        let _ = stream;
        None
    }
}

/// The state of a [`MemoryProjection`] and its checkpoint, under one lock. Cheap to clone;
/// clones share it, so the program keeps one to read while the projection writes another.
#[derive(Clone)]
pub struct InMemoryReadModel<P> {
    inner: Arc<Mutex<Kept<P>>>,
    initial: P,
    leases: InMemorySubscriptionStore,
    /// Whether the projection lists a stream's rows.
    verifiable: bool,
}

impl<P> std::fmt::Debug for InMemoryReadModel<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryReadModel")
            .field("projection", &std::any::type_name::<P>())
            .finish_non_exhaustive()
    }
}

struct Kept<P> {
    state: P,
}

impl<P: MemoryProjection> InMemoryReadModel<P> {
    /// A read model starting from `initial`, which a reset also goes back to.
    pub fn new(initial: P) -> Self {
        let verifiable = initial.stream_rows(&StreamKey::new("", Uuid::nil())).is_some();
        InMemoryReadModel {
            verifiable,
            inner: Arc::new(Mutex::new(Kept {
                state: initial.clone(),
            })),
            initial,
            leases: InMemorySubscriptionStore::new(),
        }
    }

    /// Reads the state.
    pub fn read<T>(&self, f: impl FnOnce(&P) -> T) -> T {
        f(&self.lock().state)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept<P>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl<P: MemoryProjection> ReadModelStore for InMemoryReadModel<P> {
    fn subscriptions(&self) -> Arc<dyn SubscriptionStore> {
        Arc::new(self.leases.clone())
    }

    async fn setup(&self) -> Result<(), HandlerError> {
        Ok(())
    }

    async fn commit(
        &self,
        name: &str,
        owner: Uuid,
        after: Option<u64>,
        events: &[StoredEvent],
        last: u64,
    ) -> Result<bool, HandlerError> {
        // The state and the checkpoint (of the projection, or of one range of its consumer
        // group) change together, under the state's lock; the lease and the stored
        // checkpoint fence the commit as a database's row would.
        let mut kept = self.lock();
        let mut next = kept.state.clone();
        next.apply(events)?;
        if !self.leases.commit_checkpoint(name, owner, after, last)? {
            return Ok(false);
        }
        kept.state = next;
        Ok(true)
    }

    async fn reset(&self, name: &str) -> Result<(), HandlerError> {
        let mut kept = self.lock();
        kept.state = self.initial.clone();
        self.leases.forget_checkpoint(name)?;
        Ok(())
    }

    async fn go_live(&self) -> Result<(), HandlerError> {
        Ok(())
    }

    fn verifier(&self) -> Option<&dyn VerifiableReadModel> {
        match self.verifiable {
            true => Some(self),
            false => None,
        }
    }
}

/// The rows `projection` lists for `stream`; an error if it lists none after all.
fn rows_of<P: MemoryProjection>(projection: &P, stream: &StreamKey) -> Result<Vec<Row>, HandlerError> {
    projection
        .stream_rows(stream)
        .ok_or_else(|| format!("the projection lists no rows for stream {stream}").into())
}

#[async_trait]
impl<P: MemoryProjection> VerifiableReadModel for InMemoryReadModel<P> {
    async fn stream_rows(&self, stream: &StreamKey) -> Result<Vec<Row>, HandlerError> {
        rows_of(&self.lock().state, stream)
    }

    async fn rebuilt_rows(
        &self,
        stream: &StreamKey,
        events: &[StoredEvent],
    ) -> Result<Vec<Row>, HandlerError> {
        let mut scratch = self.initial.clone();
        scratch.apply(events)?;
        rows_of(&scratch, stream)
    }
}
