//! Connecting to PostgreSQL from a URL: TLS (`sslmode=require` encrypts, the default `prefer`
//! does too where the server offers it, as the local test server with `ssl = on` does, and
//! `verify-full` refuses a certificate no trusted root signed), and the pool and statement
//! settings of the URL: each value is bounded and checked before anything is allocated or
//! connected, and durations reach the server in the unit the docs state.

#[allow(dead_code)]
#[path = "common/database.rs"]
mod database;

use std::time::Duration;

use eventsourcing_kit::backend::postgres::{self, sqlx};
use eventsourcing_kit::Error;

async fn encrypted(url: &str) -> bool {
    let (events, _) = postgres::connect_url(url).await.unwrap();
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(events.pool())
        .await
        .unwrap()
}

fn with(url: &str, parameter: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{parameter}")
}

#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn sslmode_require_and_the_default_connect_with_tls() {
    let Some(url) = database::postgres_url("sslmode_require_and_the_default_connect_with_tls") else {
        return;
    };
    assert!(
        encrypted(&with(&url, "sslmode=require")).await,
        "sslmode=require connected in clear text"
    );
    assert!(
        encrypted(&url).await,
        "the default (prefer) connected in clear text to a server with TLS"
    );
    assert!(!encrypted(&with(&url, "sslmode=disable")).await);
}

#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn verify_full_refuses_a_certificate_no_trusted_root_signed() {
    let Some(url) = database::postgres_url("verify_full_refuses_a_certificate_no_trusted_root_signed") else {
        return;
    };
    // The local server's certificate is self-signed ("snakeoil"): not in the webpki roots.
    let err = postgres::connect_url(&with(&url, "sslmode=verify-full"))
        .await
        .unwrap_err();
    let message = err.to_string().to_lowercase();
    assert!(
        message.contains("cert") || message.contains("tls") || message.contains("unknown issuer"),
        "{message}"
    );
}

#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn the_url_sizes_the_pool_and_bounds_statements() {
    let Some(url) = database::postgres_url("the_url_sizes_the_pool_and_bounds_statements") else {
        return;
    };
    let configured = with(
        &url,
        "max_connections=3&min_connections=1&acquire_timeout=2s&statement_timeout=200ms",
    );
    let (events, _) = postgres::connect_url(&configured).await.unwrap();
    let options = events.pool().options();
    assert_eq!(
        (options.get_max_connections(), options.get_min_connections()),
        (3, 1)
    );
    assert_eq!(options.get_acquire_timeout(), Duration::from_secs(2));
    let shown: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(events.pool())
        .await
        .unwrap();
    assert_eq!(shown, "200ms");
    let slow = sqlx::query("SELECT pg_sleep(2)")
        .execute(events.pool())
        .await
        .unwrap_err();
    assert!(slow.to_string().contains("statement timeout"), "{slow}");
    // A value the parameter does not take is refused before any connection.
    let err = postgres::connect_url(&with(&url, "max_connections=lots"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfiguration(_)), "{err}");
}

#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn a_statement_timeout_without_a_unit_is_seconds_on_the_server() {
    let Some(url) = database::postgres_url("a_statement_timeout_without_a_unit_is_seconds_on_the_server")
    else {
        return;
    };
    for (value, shown) in [("5", "5s"), ("1.5", "1500ms"), ("2min", "2min")] {
        let (events, _) = postgres::connect_url(&with(&url, &format!("statement_timeout={value}")))
            .await
            .unwrap();
        let on_the_server: String = sqlx::query_scalar("SHOW statement_timeout")
            .fetch_one(events.pool())
            .await
            .unwrap();
        assert_eq!(on_the_server, shown, "statement_timeout={value}");
        events.pool().close().await;
    }
}

/// Nothing listens on port 1 of the loopback: a call that tried to connect would retry for
/// the pool's acquire timeout (30 s) and end in a connection error.
const UNREACHABLE: &str = "postgres://postgres@127.0.0.1:1/test";

/// Asserts that each of `parameters` on a URL of an unreachable server is refused at once,
/// by `connect_url` and by `backend::open`, as [`Error::InvalidConfiguration`] whose message
/// names the parameter and holds `bounds`.
async fn refused_before_connecting(parameters: &[&str], bounds: &str) {
    for parameter in parameters {
        let url = with(UNREACHABLE, parameter);
        let key = parameter.split('=').next().unwrap();
        let calls = [
            tokio::time::timeout(Duration::from_secs(5), postgres::connect_url(&url))
                .await
                .map(|result| result.map(drop)),
            tokio::time::timeout(Duration::from_secs(5), eventsourcing_kit::backend::open(&url))
                .await
                .map(|result| result.map(drop)),
        ];
        for call in calls {
            match call {
                Ok(Err(Error::InvalidConfiguration(message))) => assert!(
                    message.contains(&format!("`{key}`")) && message.contains(bounds),
                    "{parameter}: {message}"
                ),
                Ok(other) => panic!("{parameter}: expected InvalidConfiguration, got {other:?}"),
                Err(_) => panic!("{parameter}: not refused within 5 s: a connection was attempted"),
            }
        }
    }
}

#[tokio::test]
async fn pool_sizes_out_of_bounds_are_refused_before_anything_is_allocated() {
    // 4294967295 slots would abort the process (a 206 GB allocation), 100000000 take 4.7 GB.
    refused_before_connecting(
        &[
            "max_connections=4294967295",
            "max_connections=100000000",
            "max_connections=10001",
            "max_connections=0",
            "max_connections=-1",
            "min_connections=4294967295",
        ],
        "from 1 to 10000",
    )
    .await;
    refused_before_connecting(
        &["min_connections=11", "min_connections=5&max_connections=4"],
        "max_connections",
    )
    .await;
}

#[tokio::test]
async fn durations_out_of_bounds_or_finer_than_a_millisecond_are_refused_before_connecting() {
    refused_before_connecting(
        &[
            // Too large for a clock: these panicked.
            "acquire_timeout=100000000000000000000",
            "statement_timeout=100000000000000000000",
            "acquire_timeout=1e20",
            "statement_timeout=1e20",
            // Beyond a day.
            "acquire_timeout=25h",
            "statement_timeout=86401",
            // Zero, or finer than the server's millisecond: `0.0001ms` turned the bound off,
            // `1.5ms` became 2 ms.
            "statement_timeout=0",
            "statement_timeout=0.0001ms",
            "statement_timeout=1.5ms",
            "acquire_timeout=0s",
            "acquire_timeout=0.5ms",
        ],
        "from 1ms to 24h",
    )
    .await;
}

#[tokio::test]
async fn system_schemas_and_malformed_names_are_refused_before_connecting() {
    refused_before_connecting(
        &[
            "schema=information_schema",
            "schema=pg_catalog",
            "schema=pg_toast",
            "schema=pg_mine",
            "schema=PG_CATALOG",
        ],
        "system schemas",
    )
    .await;
    refused_before_connecting(
        &["schema=bad-name", "schema=9lives", "schema=a.b"],
        "plain identifier",
    )
    .await;
}
