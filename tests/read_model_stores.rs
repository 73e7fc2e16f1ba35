//! The read model store suite on every kind of read model: in memory, SQLite, PostgreSQL, and
//! the SQL read model on both. The PostgreSQL cases need `EVENTSOURCE_TEST_POSTGRES_URL` (see
//! tests/postgres_store.rs).

mod common;

use eventsourcing_kit::async_trait;
use eventsourcing_kit::backend::postgres::{PgTransaction, PostgresProjection, PostgresReadModel};
use eventsourcing_kit::backend::sqlite::{
    rusqlite, SqliteProjection, SqliteReadModel, SqliteSubscriptionStore,
};
use eventsourcing_kit::backend::{SqlProjection, SqlReadModel, SqlWrites};
use eventsourcing_kit::projection::{InMemoryReadModel, MemoryProjection};
use eventsourcing_kit::subscription::HandlerError;
use eventsourcing_kit::StoredEvent;

/// A projection that keeps nothing: the suite checks what the read model does around it.
#[derive(Clone, Default)]
struct Nothing;

impl MemoryProjection for Nothing {
    fn apply(&mut self, _: &[StoredEvent]) -> Result<(), HandlerError> {
        Ok(())
    }
}

impl SqliteProjection for Nothing {
    fn apply(&mut self, _: &rusqlite::Transaction<'_>, _: &[StoredEvent]) -> Result<(), HandlerError> {
        Ok(())
    }
    fn reset(&mut self, _: &rusqlite::Transaction<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
}

#[async_trait]
impl PostgresProjection for Nothing {
    async fn apply(&mut self, _: &mut PgTransaction, _: &[StoredEvent]) -> Result<(), HandlerError> {
        Ok(())
    }
    async fn reset(&mut self, _: &mut PgTransaction) -> Result<(), HandlerError> {
        Ok(())
    }
}

impl SqlProjection for Nothing {
    fn apply(&mut self, _: &mut SqlWrites, _: &[StoredEvent]) -> Result<(), HandlerError> {
        Ok(())
    }
    fn reset(&mut self, _: &mut SqlWrites) -> Result<(), HandlerError> {
        Ok(())
    }
}

async fn sqlite_subscriptions() -> SqliteSubscriptionStore {
    SqliteSubscriptionStore::open(":memory:").await.unwrap()
}

/// The PostgreSQL subscription store of the tests' database (the checks use names of their
/// own), or `None` when the PostgreSQL tests are skipped.
async fn postgres_subscriptions(
    test: &str,
) -> Option<eventsourcing_kit::backend::postgres::PostgresSubscriptionStore> {
    let pool = common::postgres_pool(test, 2).await?;
    let events = eventsourcing_kit::backend::postgres::PostgresEventStore::new(pool);
    events.migrate().await.unwrap();
    Some(events.subscription_store())
}

mod in_memory {
    use super::*;

    eventsourcing_kit::read_model_store_conformance!(async { InMemoryReadModel::new(Nothing) });
}

mod on_sqlite {
    use super::*;

    eventsourcing_kit::read_model_store_conformance!(async {
        SqliteReadModel::new(sqlite_subscriptions().await, Nothing)
    });
}

mod on_postgres {
    use super::*;

    eventsourcing_kit::read_model_store_conformance!(
        #[cfg_attr(not(eventsource_postgres_tests), ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests")]
        optional: async {
        let subscriptions = postgres_subscriptions(module_path!()).await?;
        Some(PostgresReadModel::new(subscriptions, Nothing))
    });
}

mod sql_read_model_on_sqlite {
    use super::*;

    eventsourcing_kit::read_model_store_conformance!(async {
        SqlReadModel::sqlite(sqlite_subscriptions().await, Nothing)
    });
}

mod sql_read_model_on_postgres {
    use super::*;

    eventsourcing_kit::read_model_store_conformance!(
        #[cfg_attr(not(eventsource_postgres_tests), ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests")]
        optional: async {
        let subscriptions = postgres_subscriptions(module_path!()).await?;
        Some(SqlReadModel::postgres(subscriptions, Nothing))
    });
}
