#![doc = include_str!("../README.md")]
#![warn(missing_docs, missing_debug_implementations, clippy::return_self_not_must_use)]
// docs.rs builds with `--cfg docsrs` on nightly: each item shows the feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod abilities;
#[cfg(feature = "admin")]
pub mod admin;
pub mod aggregate;
pub mod backend;
mod codec;
mod deadline;
pub mod erasure;
pub mod error;
pub mod event;
pub mod event_store;
pub mod evolution;
pub mod group;
pub mod lifecycle;
pub mod multi_stream;
#[cfg(feature = "nats")]
pub mod outbox;
pub mod personal;
pub mod process;
pub mod projection;
pub mod registry;
pub mod repository;
pub mod request;
mod request_id;
pub mod root;
pub mod slice;
pub mod snapshot;
pub mod subscription;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
mod text;

/// The repository's README, compiled and run as doc tests so its examples cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct Readme;

/// The schema evolution guide, compiled and run as doc tests so its examples cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../../docs/guides/schema-evolution.md")]
pub struct SchemaEvolutionGuide;

/// The snapshotting guide, compiled and run as doc tests so its examples cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../../docs/guides/snapshotting.md")]
pub struct SnapshottingGuide;

/// The guide to adding snapshots to an existing system, compiled and run as doc tests so its
/// examples cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../../docs/guides/adding-snapshots.md")]
pub struct AddingSnapshotsGuide;

/// The testing guide, compiled and run as doc tests so its examples cannot drift.
#[cfg(all(doctest, feature = "testing", feature = "sqlite"))]
#[doc = include_str!("../../docs/guides/testing.md")]
pub struct TestingGuide;

/// The admin guide, compiled as doc tests so its examples cannot drift.
#[cfg(all(doctest, feature = "admin"))]
#[doc = include_str!("../../docs/guides/admin.md")]
pub struct AdminGuide;

/// The projections guide, compiled as doc tests so its examples cannot drift.
#[cfg(all(doctest, feature = "postgres", feature = "sqlite"))]
#[doc = include_str!("../../docs/guides/projections.md")]
pub struct ProjectionsGuide;

/// The guide to rules across aggregates, compiled and run as doc tests so its examples
/// cannot drift.
#[cfg(all(doctest, feature = "sqlite"))]
#[doc = include_str!("../../docs/guides/multi-stream.md")]
pub struct MultiStreamGuide;

/// The process managers guide, compiled and run as doc tests so its examples cannot drift.
#[cfg(all(doctest, feature = "testing"))]
#[doc = include_str!("../../docs/guides/process-managers.md")]
pub struct ProcessManagersGuide;

/// The personal data guide, compiled and run as doc tests so its examples cannot drift.
#[cfg(all(doctest, feature = "personal-data"))]
#[doc = include_str!("../../docs/guides/personal-data.md")]
pub struct PersonalDataGuide;

/// The stream lifecycle guide, compiled and run as doc tests so its examples cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../../docs/guides/stream-lifecycle.md")]
pub struct StreamLifecycleGuide;

/// The sharding guide, compiled and run as doc tests so its examples cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../../docs/guides/sharding.md")]
pub struct ShardingGuide;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use abilities::{AppendSignal, AppendWaiter, RequestIndex, SliceFeed, SnapshotListing, StreamListing};
pub use aggregate::{Aggregate, AggregateEvent, Apply};
pub use backend::memory::{
    InMemoryEventStore, InMemoryKeyStore, InMemorySnapshotStore, InMemorySubscriptionStore,
};
pub use error::{Error, Result};
pub use event::{Event, EventContext, EventEnvelope, StoredEvent};
pub use event_store::{Appended, Batch, EventStore, EventStream, FeedHead, FeedHolder};
pub use eventsourcing_kit_derive::{event, Aggregate};
pub use repository::Repository;
pub use root::AggregateRoot;
pub use snapshot::{
    JointSnapshotRead, JointSnapshotWrite, MissReason, Snapshot, SnapshotAndEvents, SnapshotMetrics,
    SnapshotMode, SnapshotPolicy, SnapshotStore, SnapshotVersion,
};

/// Everything a program that uses the library usually needs, and serde's derives.
pub mod prelude {
    pub use crate::personal::Personal;
    pub use crate::repository::{CommandError, Executed};
    pub use crate::subscription::{
        Consumer, Handler, HandlerError, OnFailure, Subscription, SubscriptionStore, Typed,
    };
    pub use crate::{
        event, Aggregate, AggregateEvent, AggregateRoot, Apply, Error, Event, EventContext, EventStore,
        InMemoryEventStore, InMemorySnapshotStore, InMemorySubscriptionStore, Repository, SnapshotMode,
        SnapshotPolicy, SnapshotStore, StoredEvent,
    };
    pub use futures_util::{StreamExt as _, TryStreamExt as _};
    pub use serde::{Deserialize, Serialize};
    pub use uuid::Uuid;
}

pub use uuid::Uuid;

/// The attribute that store implementations use for their async trait methods.
pub use async_trait::async_trait;
