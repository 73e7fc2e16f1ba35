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
pub async fn postgres_pool(test: &str, connections: u32) -> Option<eventsource::backend::postgres::PgPool> {
    let url = postgres_url(test)?;
    let pool = eventsource::backend::postgres::pool_options()
        .max_connections(connections)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    Some(pool)
}
