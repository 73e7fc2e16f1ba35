//! Projections: read models committed together with their checkpoint.
//!
//! A [subscription](crate::subscription) delivers each event at least once: after a crash it
//! hands over again the batch whose checkpoint it had not stored. A read model that counts
//! money must not count a deposit twice. A [`Projection`] makes the read model's change and
//! the checkpoint one transaction of the read model's own database: the batch is applied and
//! the checkpoint stored together or not at all, and the checkpoint moves only from the one
//! the batch was read after, so after a crash, a lost answer or a takeover at any point the
//! read model is what a full rebuild would give, never an event twice or one missing.
//!
//! The read model is written by a projection of the backend's kind, handed the transaction
//! the checkpoint is then stored in:
//!
//! - [`PostgresProjection`](crate::backend::postgres::PostgresProjection), given a sqlx
//!   transaction, in [`PostgresReadModel`](crate::backend::postgres::PostgresReadModel);
//! - [`SqliteProjection`](crate::backend::sqlite::SqliteProjection), given a rusqlite
//!   transaction, in [`SqliteReadModel`](crate::backend::sqlite::SqliteReadModel);
//! - [`SqlProjection`](crate::backend::SqlProjection), written once for both SQL backends as
//!   the statements each batch makes, in [`SqlReadModel`](crate::backend::SqlReadModel);
//! - [`MemoryProjection`], state held in the process with its checkpoint, in
//!   [`InMemoryReadModel`], for tests and small programs.
//!
//! Each projection has its own name, checkpoint and lease: several run side by side on one
//! feed, each at its own pace, one active consumer per name across processes (a second
//! instance waits as a standby). Events reach a projection as [`StoredEvent`]s; decode them
//! with the aggregate's event enum ([`AggregateEvent::decode`](crate::AggregateEvent::decode)),
//! which upcasts older event versions as loads do.
//!
//! - **Rebuild**: [`Projection::rebuild`] empties the read model and replays the whole feed
//!   into it, reporting [`Progress`]; interrupted, [`Projection::catch_up`] (or `run`) goes on
//!   from the last committed batch.
//! - **Blue/green**: build version 2 under a new name into new tables while version 1
//!   serves, [`catch_up`](Projection::catch_up) it, then [`go_live`](Projection::go_live)
//!   switches the queries over in one transaction (for instance by pointing a view at the new
//!   tables), so no query ever fails.
//! - **Read-your-writes**: a save tells where its events are in the feed
//!   ([`AggregateRoot::position`](crate::AggregateRoot::position),
//!   [`Executed::position`](crate::repository::Executed::position));
//!   [`Projection::wait_for`] waits, with a timeout, until the projection has committed that
//!   position, so the read model then shows the caller's own change.
//! - **Verify**: [`Projection::verify`] rebuilds a sample of streams into a scratch copy of
//!   the read model with today's code and compares their rows with the live ones: whether a
//!   changed projection must be rebuilt (see [`verify`] for what a projection provides).
//!
//! `docs/guides/projections.md` is the guide.
//!
//! ```
//! use eventsourcing_kit::prelude::*;
//! use eventsourcing_kit::projection::{InMemoryReadModel, MemoryProjection, Projection};
//! use eventsourcing_kit::subscription::HandlerError;
//!
//! #[event(aggregate = "Account")]
//! pub struct Deposited { pub amount: i64 }
//! # #[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
//! # #[aggregate(name = "Account", events(Deposited))]
//! # pub struct Account { pub balance: i64 }
//! # impl Apply<Deposited> for Account { fn apply(&mut self, e: &Deposited) { self.balance += e.amount } }
//!
//! /// The total of every deposit.
//! #[derive(Clone, Default)]
//! struct Total(i64);
//!
//! impl MemoryProjection for Total {
//!     fn apply(&mut self, events: &[StoredEvent]) -> Result<(), HandlerError> {
//!         for event in events {
//!             // A stream's closing (see eventsourcing_kit::lifecycle) is no event of the aggregate's.
//!             if eventsourcing_kit::lifecycle::is_system_event(&event.event_type) {
//!                 continue;
//!             }
//!             if let AccountEvent::Deposited(d) = AccountEvent::decode(&event.event_type, event.event_version, &event.payload)? {
//!                 self.0 += d.amount;
//!             }
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Error> {
//! let events = InMemoryEventStore::new();
//! let repo = Repository::<Account>::new(events.clone());
//! let total = InMemoryReadModel::new(Total::default());
//! let projection = Projection::new("total", events, total.clone())?.for_aggregate::<Account>();
//!
//! let done = repo.command(Uuid::new_v4()).run(|a| { a.record(Deposited { amount: 5 }); Ok::<_, Error>(()) }).await.unwrap();
//! projection.catch_up(|_| {}).await?;
//! assert!(projection.wait_for(done.position, std::time::Duration::from_secs(1)).await?);
//! assert_eq!(total.read(|t| t.0), 5);
//! # Ok(()) }
//! ```

mod group;
mod memory;
mod replay;
mod runner;
pub mod verify;

pub use memory::{InMemoryReadModel, MemoryProjection};
pub use runner::{Progress, Projection};
pub use verify::{Row, StreamKey, VerifiableReadModel};

use std::sync::Arc;

use async_trait::async_trait;
use uuid::Uuid;

use crate::error::Result;
use crate::event::StoredEvent;
use crate::subscription::{HandlerError, SubscriptionStore};

/// Where a projection's read model lives: its database, and how a batch is committed there
/// with its checkpoint. Implemented by the read models of each backend.
///
/// # Contract
///
/// - **One transaction.** [`commit`](Self::commit) applies the events and stores the
///   checkpoint together, or neither: after any failure or crash, the read model is the one
///   of the stored checkpoint.
/// - **Fenced.** It stores the checkpoint, and keeps the change, only if `owner` holds the
///   name's lease in [`subscriptions`](Self::subscriptions) and the stored checkpoint is still
///   `after`, the one the batch was read after: a consumer that lost its lease, a commit made
///   again after its first try did commit (a lost answer), and a batch that a reset or another
///   consumer overtook all change nothing.
#[async_trait]
pub trait ReadModelStore: Send + Sync {
    /// The store of leases (and, on the SQL backends, of the checkpoints), in the read
    /// model's database.
    fn subscriptions(&self) -> Arc<dyn SubscriptionStore>;

    /// Creates the read model's tables if missing.
    async fn setup(&self) -> std::result::Result<(), HandlerError>;

    /// The checkpoint of `name`, `None` if none is stored.
    async fn checkpoint(&self, name: &str) -> Result<Option<u64>> {
        self.subscriptions().checkpoint(name).await
    }

    /// Applies `events` (possibly none) and stores `last` as the checkpoint of `name`, in
    /// one transaction, if `owner` holds the lease and the stored checkpoint is `after`;
    /// whether it committed.
    async fn commit(
        &self,
        name: &str,
        owner: Uuid,
        after: Option<u64>,
        events: &[StoredEvent],
        last: u64,
    ) -> std::result::Result<bool, HandlerError>;

    /// Empties the read model and forgets the checkpoint of `name`, in one transaction.
    async fn reset(&self, name: &str) -> std::result::Result<(), HandlerError>;

    /// Makes this read model the one queries read, in one transaction (the projection's
    /// `go_live`).
    async fn go_live(&self) -> std::result::Result<(), HandlerError>;

    /// What [`Projection::verify`] needs, if this read model gives it: see [`verify`]. `None`
    /// makes `verify` refuse the projection.
    fn verifier(&self) -> Option<&dyn VerifiableReadModel>;
}
