//! Choosing the stores from a URL at run time.

use std::sync::Arc;

use crate::backend::memory::{InMemoryEventStore, InMemorySnapshotStore, InMemorySubscriptionStore};
use crate::error::{Error, Result};
use crate::event_store::EventStore;
use crate::snapshot::SnapshotStore;
use crate::subscription::SubscriptionStore;

/// An event store, a snapshot store and a subscription store on one backend.
///
/// On PostgreSQL and on `sqlite::memory:` the two share one connection pool; on a SQLite file
/// each has its own, so snapshot writes skip the per-commit sync that appends wait for (they
/// still take the file's one write lock in turn with appends).
#[derive(Clone)]
pub struct Stores {
    /// The event store.
    pub events: Arc<dyn EventStore>,
    /// The snapshot store.
    pub snapshots: Arc<dyn SnapshotStore>,
    /// The subscription store (checkpoints, leases, dead letters), beside the events.
    pub subscriptions: Arc<dyn SubscriptionStore>,
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Memory,
    #[cfg(feature = "sqlite")]
    Sqlite(crate::backend::sqlite::SqliteSubscriptionStore),
    #[cfg(feature = "postgres")]
    Postgres(crate::backend::postgres::PostgresEventStore),
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("backend", &self.backend_name())
            .finish_non_exhaustive()
    }
}

impl Stores {
    /// The backend's name: `memory`, `sqlite` or `postgres`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Memory => "memory",
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres")]
            Backend::Postgres(_) => "postgres",
        }
    }

    /// The SQLite subscription store, on the events' database, when the stores are SQLite:
    /// the home of a [`SqliteReadModel`](crate::backend::sqlite::SqliteReadModel).
    #[cfg(feature = "sqlite")]
    pub fn sqlite(&self) -> Option<&crate::backend::sqlite::SqliteSubscriptionStore> {
        match &self.backend {
            Backend::Sqlite(subscriptions) => Some(subscriptions),
            _ => None,
        }
    }

    /// The PostgreSQL event store, when the stores are PostgreSQL: its
    /// [`subscription_store`](crate::backend::postgres::PostgresEventStore::subscription_store)
    /// is the home of a [`PostgresReadModel`](crate::backend::postgres::PostgresReadModel),
    /// its [`pool`](crate::backend::postgres::PostgresEventStore::pool) reads it.
    #[cfg(feature = "postgres")]
    pub fn postgres(&self) -> Option<&crate::backend::postgres::PostgresEventStore> {
        match &self.backend {
            Backend::Postgres(events) => Some(events),
            _ => None,
        }
    }

    /// Creates the backend's tables if they are missing. SQLite and in-memory stores need no
    /// call (they create what they need on open); PostgreSQL does, once at start-up.
    pub async fn migrate(&self) -> Result<()> {
        match &self.backend {
            #[cfg(feature = "postgres")]
            Backend::Postgres(events) => events.migrate().await,
            _ => Ok(()),
        }
    }
}

/// Opens the stores a URL names:
///
/// - `memory:`: new in-memory stores;
/// - `sqlite::memory:`: a private in-memory SQLite database;
/// - `sqlite:PATH` or `sqlite://PATH`: a SQLite file, created if missing (feature `sqlite`);
///   `?prefix=NAME` puts the three stores' tables under a prefix of their own (see
///   [`sqlite::open_url`](crate::backend::sqlite::open_url));
/// - `postgres://...` or `postgresql://...`: a PostgreSQL database (feature `postgres`);
///   call [`Stores::migrate`] once before use.
///
/// A malformed URL, or one for a backend not compiled in, is
/// [`Error::InvalidConfiguration`].
pub async fn open(url: &str) -> Result<Stores> {
    let scheme = url.split_once(':').map(|(scheme, _)| scheme).unwrap_or_default();
    match scheme {
        "memory" if url == "memory:" => Ok(Stores {
            events: Arc::new(InMemoryEventStore::new()),
            snapshots: Arc::new(InMemorySnapshotStore::new()),
            subscriptions: Arc::new(InMemorySubscriptionStore::new()),
            backend: Backend::Memory,
        }),
        #[cfg(feature = "sqlite")]
        "sqlite" => {
            let (events, snapshots) = crate::backend::sqlite::open_url(url).await?;
            let subscriptions = crate::backend::sqlite::SqliteSubscriptionStore::on(events.database().clone()).await?;
            Ok(Stores {
                events: Arc::new(events),
                snapshots: Arc::new(snapshots),
                subscriptions: Arc::new(subscriptions.clone()),
                backend: Backend::Sqlite(subscriptions),
            })
        }
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => {
            let (events, snapshots) = crate::backend::postgres::connect_url(url).await?;
            Ok(Stores {
                events: Arc::new(events.clone()),
                snapshots: Arc::new(snapshots),
                subscriptions: Arc::new(events.subscription_store()),
                backend: Backend::Postgres(events),
            })
        }
        #[cfg(not(feature = "sqlite"))]
        "sqlite" => Err(not_compiled_in("sqlite")),
        #[cfg(not(feature = "postgres"))]
        "postgres" | "postgresql" => Err(not_compiled_in("postgres")),
        _ => Err(Error::InvalidConfiguration(format!(
            "unsupported store URL scheme `{scheme}`: expected memory:, sqlite::memory:, sqlite:PATH or postgres://..."
        ))),
    }
}

#[cfg(not(all(feature = "sqlite", feature = "postgres")))]
fn not_compiled_in(feature: &str) -> Error {
    Error::InvalidConfiguration(format!(
        "{feature} stores are not compiled in; enable the `{feature}` feature of eventsource"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn malformed_and_unsupported_urls_are_configuration_errors() {
        for url in [
            "",
            "memory",
            "memory:extra",
            "mysql://root@localhost/db",
            "postgres",
            "file.db",
        ] {
            let err = open(url).await.unwrap_err();
            assert!(matches!(err, Error::InvalidConfiguration(_)), "{url}: {err}");
        }
        let err = open("redis://user:secret@host").await.unwrap_err().to_string();
        assert!(!err.contains("secret"), "a URL's password is never echoed: {err}");
    }

    #[tokio::test]
    async fn memory_urls_open_fresh_stores() {
        let stores = open("memory:").await.unwrap();
        assert_eq!(stores.backend_name(), "memory");
        stores.migrate().await.unwrap();
    }
}
