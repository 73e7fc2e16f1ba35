//! The stores of every backend for one check: in memory, on a SQLite file, and on PostgreSQL
//! in a schema of its own, and the macro that runs checks on each.

#[cfg(feature = "sqlite")]
pub async fn sqlite_stores() -> (tempfile::TempDir, eventsourcing_kit::backend::Stores) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("stores.db").display());
    let stores = eventsourcing_kit::backend::open(&url).await.unwrap();
    (dir, stores)
}

/// The stores in a new schema of the test server (dropped with the guard); `None` without a
/// server, as `postgres_url` says.
#[cfg(feature = "postgres")]
pub async fn postgres_stores(
    test: &str,
    label: &str,
) -> Option<(super::ScratchSchema, eventsourcing_kit::backend::Stores)> {
    let url = super::postgres_url(test)?;
    let scratch = super::ScratchSchema::new(&url, label);
    let separator = if url.contains('?') { '&' } else { '?' };
    let stores = eventsourcing_kit::backend::open(&format!("{url}{separator}schema={}", scratch.name))
        .await
        .unwrap();
    stores.migrate().await.unwrap();
    Some((scratch, stores))
}

/// One test per backend (modules `in_memory`, `on_sqlite`, `on_postgres`) for each
/// `name => check;`, where `check` is an `async fn(Stores)`; the PostgreSQL ones are ignored
/// without a test server.
#[macro_export]
macro_rules! on_every_backend {
    ($label:literal: $($name:ident => $check:ident;)*) => {
        mod in_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$check(eventsourcing_kit::backend::Stores::in_memory()).await;
                }
            )*
        }

        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (_dir, stores) = $crate::common::sqlite_stores().await;
                    super::$check(stores).await;
                }
            )*
        }

        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(
                    not(eventsource_postgres_tests),
                    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
                )]
                async fn $name() {
                    let Some((_schema, stores)) = $crate::common::postgres_stores(stringify!($name), $label).await else {
                        return;
                    };
                    super::$check(stores).await;
                }
            )*
        }
    };
}
