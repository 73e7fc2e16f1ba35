//! Closing an aggregate's stream (see [`crate::lifecycle`]).

use uuid::Uuid;

use super::Repository;
use crate::aggregate::Aggregate;
use crate::error::Result;
use crate::registry;

impl<A: Aggregate> Repository<A> {
    /// Closes the aggregate's stream for good (see [`crate::lifecycle`]): later saves of new
    /// events on it are [`Error::StreamClosed`](crate::Error::StreamClosed). Returns its
    /// version after the closing event; a stream closed already is left as it is.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`](crate::Error::NotFound) for an aggregate without events;
    /// [`Error::Conflict`](crate::Error::Conflict) if other writers kept appending through
    /// every attempt; [`Error::Store`](crate::Error::Store) if the store failed.
    ///
    /// # Cancel safety
    ///
    /// Dropped, the stream is closed or not: closing it again finds out, and closes it once.
    pub async fn close(&self, id: Uuid) -> Result<u64> {
        registry::check()?;
        crate::lifecycle::close(&*self.events, id, A::TYPE_NAME).await
    }
}
