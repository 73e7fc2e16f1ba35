//! Connecting to PostgreSQL from a URL: TLS (`sslmode=require` encrypts, the default `prefer`
//! does too where the server offers it, as the local test server with `ssl = on` does, and
//! `verify-full` refuses a certificate no trusted root signed), and the pool and statement
//! settings of the URL.

#[allow(dead_code)]
#[path = "common/database.rs"]
mod database;

use eventsource::backend::postgres::{self, sqlx};

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
    assert_eq!(options.get_acquire_timeout(), std::time::Duration::from_secs(2));
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
    assert!(
        matches!(err, eventsource::Error::InvalidConfiguration(_)),
        "{err}"
    );
}
