//! The tests' PostgreSQL database, from the environment.

/// The PostgreSQL URL of the tests (`EVENTSOURCE_TEST_POSTGRES_URL`), or `None` after saying
/// that `test` is skipped. Fails the test instead when `EVENTSOURCE_REQUIRE_POSTGRES=1`.
pub fn postgres_url(test: &str) -> Option<String> {
    const URL_VAR: &str = "EVENTSOURCE_TEST_POSTGRES_URL";
    const REQUIRE_VAR: &str = "EVENTSOURCE_REQUIRE_POSTGRES";
    match std::env::var(URL_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1") => panic!(
            "{REQUIRE_VAR}=1 but {URL_VAR} is not set: the PostgreSQL test `{test}` cannot run \
             (set it to a database URL such as postgres://postgres@127.0.0.1:5432/test)"
        ),
        _ => {
            println!("skipped {test}: set {URL_VAR} to run the PostgreSQL tests");
            None
        }
    }
}

/// A pool of `connections` on the tests' PostgreSQL database, or `None` if the PostgreSQL
/// tests are skipped (see [`postgres_url`]).
#[cfg(feature = "postgres")]
pub async fn postgres_pool(
    test: &str,
    connections: u32,
) -> Option<eventsourcing_kit::backend::postgres::PgPool> {
    let url = postgres_url(test)?;
    let pool = eventsourcing_kit::backend::postgres::pool_options()
        .max_connections(connections)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    Some(pool)
}

/// A PostgreSQL schema of a test's own, dropped (with everything in it) when the guard is,
/// also when the test fails: a failed run leaves nothing behind on the shared server.
#[cfg(feature = "postgres")]
pub struct ScratchSchema {
    url: String,
    /// The schema's name: `es_<label>_<random>`.
    pub name: String,
}

#[cfg(feature = "postgres")]
impl ScratchSchema {
    /// A new schema name for `label` on the server of `url`; the schema itself is created by
    /// the stores' `migrate` (or by the test).
    pub fn new(url: &str, label: &str) -> Self {
        ScratchSchema {
            url: url.to_owned(),
            name: format!("es_{label}_{}", uuid::Uuid::new_v4().simple()),
        }
    }
}

#[cfg(feature = "postgres")]
impl Drop for ScratchSchema {
    fn drop(&mut self) {
        use eventsourcing_kit::backend::postgres::sqlx::{Connection, Executor, PgConnection};

        let (url, name) = (self.url.clone(), self.name.clone());
        // A thread and runtime of its own: the test's runtime may be the one unwinding.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut connection = PgConnection::connect(&url).await?;
                connection
                    .execute(format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE").as_str())
                    .await
                    .map(drop)
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("cannot drop the test schema {}: {e}", self.name);
        }
    }
}
