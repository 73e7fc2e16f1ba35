//! Tells the crate's own tests whether they have a PostgreSQL database: with
//! `EVENTSOURCE_TEST_POSTGRES_URL` (or `EVENTSOURCE_REQUIRE_POSTGRES=1`, which makes them fail
//! without one) the PostgreSQL tests run; without, they are reported as ignored, not as passed.
//! Nothing else of the crate depends on it.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=EVENTSOURCE_TEST_POSTGRES_URL");
    println!("cargo::rerun-if-env-changed=EVENTSOURCE_REQUIRE_POSTGRES");
    println!("cargo::rustc-check-cfg=cfg(eventsource_postgres_tests)");
    let url = std::env::var("EVENTSOURCE_TEST_POSTGRES_URL").is_ok_and(|url| !url.trim().is_empty());
    let required = std::env::var("EVENTSOURCE_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
    if url || required {
        println!("cargo::rustc-cfg=eventsource_postgres_tests");
    }
}
