//! The HTTP service example, served on a free loopback port and called with real HTTP/1.1
//! requests: statuses, bodies, refusals and failures, money in cents and its bounds, on SQLite
//! and, when configured, on PostgreSQL; its connection cap and read timeouts; its shutdown, in
//! process and as its binary on SIGTERM, which leaves the read model's lease free.

// The example's own code, so that the test serves exactly what `cargo run --example` does; its
// domain modules come along through their `#[path]` attributes.
#[path = "../examples/bank_service.rs"]
mod bank_service;
#[allow(dead_code)]
#[path = "common/database.rs"]
mod database;
#[cfg(unix)]
#[path = "common/service.rs"]
mod service;
#[cfg(unix)]
use service::service_binary;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use account::AccountEvent;
use bank_service::{account, order, read_model, Config};
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::EventEnvelope;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A service serving in this process until [`stop`](Self::stop).
struct Running {
    addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    served: JoinHandle<Result<(), String>>,
}

impl Running {
    /// Serves the stores of `config` on a free loopback port.
    async fn start(mut config: Config) -> Running {
        config.addr = "127.0.0.1:0".into();
        let (bound, address) = oneshot::channel();
        let (shutdown, signal) = oneshot::channel::<()>();
        let served = tokio::spawn(async move {
            let ready = move |addr| {
                let _ = bound.send(addr);
            };
            let signal = async {
                let _ = signal.await;
            };
            bank_service::serve(config, ready, signal)
                .await
                .map_err(|e| e.to_string())
        });
        let addr = match address.await {
            Ok(addr) => addr,
            Err(_) => panic!("the service failed before it was bound: {:?}", served.await),
        };
        Running {
            addr,
            shutdown,
            served,
        }
    }

    /// Shuts the service down as a signal does; it must return `Ok` within ten seconds.
    async fn stop(self) {
        let _ = self.shutdown.send(());
        let served = tokio::time::timeout(Duration::from_secs(10), self.served)
            .await
            .expect("the service stops within ten seconds of its shutdown");
        served.unwrap().expect("the service stops cleanly");
    }
}

/// The service's settings on the store `url`, waiting long enough for a PostgreSQL feed held
/// back by other tests' transactions on the server.
fn config(url: &str) -> Config {
    let mut config = Config::new(url, "127.0.0.1:0");
    config.read_your_writes = Duration::from_secs(30);
    config
}

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite:{}", dir.path().join("bank.db").display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_answers_over_http_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    exercise(&sqlite_url(&dir)).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn the_service_answers_over_http_on_postgres() {
    let Some(url) = database::postgres_url("the service over HTTP on PostgreSQL") else {
        return;
    };
    // In a schema of its own (the URL's `schema` parameter), dropped afterwards, also when
    // the test fails.
    let scratch = database::ScratchSchema::new(&url, "bank_service");
    let separator = if url.contains('?') { '&' } else { '?' };
    exercise(&format!("{url}{separator}schema={}", scratch.name)).await;
}

/// Serves the store `url`, runs every check against it, shuts the service down and checks
/// that the read model gave up its lease: another consumer takes it at once.
async fn exercise(url: &str) {
    let service = Running::start(config(url)).await;
    checks(service.addr).await;
    service.stop().await;
    let stores = eventsourcing_kit::backend::open(url).await.unwrap();
    let listed = stores.subscriptions.subscriptions().await.unwrap();
    let model = listed
        .iter()
        .find(|s| s.name == read_model::NAME)
        .expect("the read model took its lease");
    assert_eq!(
        model.owner, None,
        "the lease is free after the shutdown: {model:?}"
    );
    let standby = Uuid::new_v4();
    assert!(stores
        .subscriptions
        .acquire(read_model::NAME, standby, Duration::from_secs(10))
        .await
        .unwrap());
    assert_eq!(
        stores.subscriptions.checkpoint(read_model::NAME).await.unwrap(),
        Some(stores.events.head(0).await.unwrap().position),
        "the read model stored its checkpoint at the feed's head"
    );
}

async fn checks(addr: SocketAddr) {
    let (status, before) = get(addr, "/summary").await;
    assert_eq!(status, 200, "{before}");
    // A fresh database shows exact totals.
    let fresh = before["accounts"] == 0;
    assert!(fresh, "{before}");
    let (status, opened) = post(
        addr,
        "/accounts",
        json!({"owner": "Ada", "initial_balance_cents": 10_000}),
    )
    .await;
    assert_eq!(status, 201, "{opened}");
    assert_eq!(opened["read_model_current"], true, "{opened}");
    assert_eq!(opened["version"], 1, "{opened}");
    let account = opened["id"].as_str().expect("the new account's id").to_owned();
    assert!(account.parse::<Uuid>().is_ok(), "the id is a UUID: {account}");

    let (status, body) = post(
        addr,
        &format!("/accounts/{account}/deposits"),
        json!({"amount_cents": 500}),
    )
    .await;
    assert_eq!((status, &body["version"]), (200, &json!(2)), "{body}");

    let (status, body) = post(
        addr,
        &format!("/accounts/{account}/withdrawals"),
        json!({"amount_cents": 100_000}),
    )
    .await;
    assert_eq!(status, 409, "an overdraft is refused: {body}");
    assert_eq!(
        body["error"],
        "insufficient funds: balance 10500 cents, requested 100000 cents"
    );

    let (status, body) = post(
        addr,
        &format!("/accounts/{account}/withdrawals"),
        json!({"amount_cents": 500}),
    )
    .await;
    assert_eq!((status, &body["version"]), (200, &json!(3)), "{body}");

    let (status, body) = get(addr, &format!("/accounts/{account}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"id": account, "owner": "Ada", "balance_cents": 10_000, "version": 3}),
        "the refused withdrawal left no trace"
    );

    let unknown = Uuid::new_v4();
    let (status, body) = get(addr, &format!("/accounts/{unknown}")).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = post(
        addr,
        &format!("/accounts/{unknown}/deposits"),
        json!({"amount_cents": 100}),
    )
    .await;
    assert_eq!(status, 404, "a command on an account that does not exist: {body}");
    let (status, body) = get(addr, &format!("/accounts/{account}")).await;
    assert_eq!((status, &body["version"]), (200, &json!(3)), "{body}");

    // An order paid: the money leaves the account, once.
    let (status, placed) = post(
        addr,
        "/orders",
        json!({"account_id": account, "amount_cents": 2_000}),
    )
    .await;
    assert_eq!((status, &placed["version"]), (201, &json!(1)), "{placed}");
    let order = placed["id"].as_str().expect("the new order's id").to_owned();
    let (status, body) = get(addr, &format!("/orders/{order}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"id": order, "account_id": account, "amount_cents": 2_000, "status": "Placed", "version": 1})
    );
    let (status, body) = post_empty(addr, &format!("/orders/{order}/pay")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["version"], &body["account_version"]),
        (&json!(2), &json!(4))
    );
    assert_eq!(balance(addr, &account).await, 8_000);
    assert_eq!(get(addr, &format!("/orders/{order}")).await.1["status"], "Paid");
    // The read model already shows the payment: the command waited for it.
    assert_eq!(body["read_model_current"], true, "{body}");
    let (status, paid) = get(addr, "/orders/by-status/paid").await;
    assert_eq!(status, 200, "{paid}");
    assert!(
        paid["orders"]
            .as_array()
            .unwrap()
            .contains(&json!({"id": order, "account_id": account, "amount_cents": 2_000})),
        "{paid}"
    );
    let (_, summary) = get(addr, "/summary").await;
    assert_eq!(summary, json!({"accounts": 1, "total_balance_cents": 8_000}));
    let (status, _) = get(addr, "/orders/by-status/lost").await;
    assert_eq!(status, 404);

    let (status, body) = post_empty(addr, &format!("/orders/{order}/pay")).await;
    assert_eq!(status, 409, "an order is paid once: {body}");
    assert_eq!(body["error"], "the order is already paid");
    assert_eq!(
        balance(addr, &account).await,
        8_000,
        "a refused payment moves no money"
    );
    let (status, body) = post_empty(addr, &format!("/orders/{order}/cancel")).await;
    assert_eq!(status, 409, "a paid order stays paid: {body}");

    // An order the account cannot pay for: refused, still placed, then cancelled.
    let (status, placed) = post(
        addr,
        "/orders",
        json!({"account_id": account, "amount_cents": 100_000}),
    )
    .await;
    assert_eq!(status, 201, "{placed}");
    let big = placed["id"].as_str().expect("the new order's id").to_owned();
    let (status, body) = post_empty(addr, &format!("/orders/{big}/pay")).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body["error"],
        "insufficient funds: balance 8000 cents, requested 100000 cents"
    );
    assert_eq!(get(addr, &format!("/orders/{big}")).await.1["status"], "Placed");
    let (status, body) = post_empty(addr, &format!("/orders/{big}/cancel")).await;
    assert_eq!((status, &body["version"]), (200, &json!(2)), "{body}");
    assert_eq!(
        get(addr, &format!("/orders/{big}")).await.1["status"],
        "Cancelled"
    );
    let (_, cancelled) = get(addr, "/orders/by-status/cancelled").await;
    assert!(
        cancelled["orders"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["id"] == big.as_str()),
        "{cancelled}"
    );
    let (_, placed) = get(addr, "/orders/by-status/placed").await;
    assert!(
        !placed["orders"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["id"] == big.as_str()),
        "{placed}"
    );
    let (status, body) = post_empty(addr, &format!("/orders/{big}/pay")).await;
    assert_eq!(status, 409, "a cancelled order cannot be paid: {body}");
    assert_eq!(balance(addr, &account).await, 8_000);

    // Orders and order ids that name nothing.
    let (status, body) = post(
        addr,
        "/orders",
        json!({"account_id": unknown, "amount_cents": 100}),
    )
    .await;
    assert_eq!(status, 422, "an order on an account that does not exist: {body}");
    let (status, body) = get(addr, &format!("/orders/{unknown}")).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = post_empty(addr, &format!("/orders/{unknown}/pay")).await;
    assert_eq!(status, 404, "{body}");

    // Bodies that are not what the endpoint takes are axum's to refuse, before any command.
    for bad in [
        r#"{"owner": "#,
        r#"{"owner": "Ada"}"#,
        r#"{"owner": 7, "initial_balance_cents": 1}"#,
    ] {
        let (status, body) = request(addr, "POST", "/accounts", bad).await;
        assert!((400..500).contains(&status), "{bad} answered {status}: {body}");
    }
    let (status, body) = request(addr, "POST", &format!("/accounts/{account}/deposits"), "[]").await;
    assert!((400..500).contains(&status), "answered {status}: {body}");
    assert_eq!(balance(addr, &account).await, 8_000);
    // A retried request with its idempotency key deposits once.
    let key = format!("Idempotency-Key: {}\r\n", Uuid::new_v4());
    let (_, opened) = post(
        addr,
        "/accounts",
        json!({"owner": "Bo", "initial_balance_cents": 100}),
    )
    .await;
    let path = format!("/accounts/{}/deposits", opened["id"].as_str().unwrap());
    let deposit = json!({"amount_cents": 100}).to_string();
    let (status, first) = request_with(addr, "POST", &path, &deposit, &key).await;
    assert_eq!((status, &first["repeated"]), (200, &json!(false)), "{first}");
    let (status, again) = request_with(addr, "POST", &path, &deposit, &key).await;
    assert_eq!((status, &again["repeated"]), (200, &json!(true)), "{again}");
    assert_eq!(again["version"], first["version"], "the first deposit's version");
    // The key sent again with another body is refused, and deposits nothing.
    let more = json!({"amount_cents": 200}).to_string();
    let (status, body) = request_with(addr, "POST", &path, &more, &key).await;
    assert_eq!(status, 422, "{body}");
    let bo = opened["id"].as_str().unwrap();
    assert_eq!(balance(addr, bo).await, 200, "one deposit of 100");
    // A create sent again with its key answers with the account the first one opened.
    let create = json!({"owner": "Cy", "initial_balance_cents": 5}).to_string();
    let create_key = format!("Idempotency-Key: open Cy {}\r\n", Uuid::new_v4());
    let (status, first) = request_with(addr, "POST", "/accounts", &create, &create_key).await;
    assert_eq!(status, 201, "{first}");
    let (status, again) = request_with(addr, "POST", "/accounts", &create, &create_key).await;
    assert_eq!((status, &again["repeated"]), (201, &json!(true)), "{again}");
    assert_eq!(again["id"], first["id"], "the first account, not a second one");
    // A refused withdrawal sent again is refused again, even once the money is there.
    let cy = first["id"].as_str().unwrap();
    let withdrawal = json!({"amount_cents": 50}).to_string();
    let withdraw_key = format!("Idempotency-Key: {}\r\n", Uuid::new_v4());
    let withdraw_path = format!("/accounts/{cy}/withdrawals");
    let (status, refused) = request_with(addr, "POST", &withdraw_path, &withdrawal, &withdraw_key).await;
    assert_eq!(status, 409, "{refused}");
    post(
        addr,
        &format!("/accounts/{cy}/deposits"),
        json!({"amount_cents": 100}),
    )
    .await;
    let (status, again) = request_with(addr, "POST", &withdraw_path, &withdrawal, &withdraw_key).await;
    assert_eq!(status, 409, "the first refusal: {again}");
    assert_eq!(balance(addr, cy).await, 105);
    // A key that is no request id: too long.
    let long = format!("Idempotency-Key: {}\r\n", "k".repeat(256));
    let (status, _) = request_with(addr, "POST", &path, &deposit, &long).await;
    assert_eq!(status, 422);

    money(addr, &account).await;
}

/// Money is whole cents: amounts that are not, or that no account takes, are refused with 422
/// and change nothing; a balance reaches `i64::MAX` cents exactly and goes no further; the
/// summary adds balances past `i64::MAX` exactly.
async fn money(addr: SocketAddr, account: &str) {
    let deposits = format!("/accounts/{account}/deposits");
    let withdrawals = format!("/accounts/{account}/withdrawals");
    for (path, amount) in [
        (&deposits, "0"),
        (&deposits, "-100"),
        (&deposits, "2.5"),
        (&deposits, "1e3"),
        (&deposits, "\"100\""),
        (&deposits, "9223372036854775808"),
        (&deposits, "null"),
        (&withdrawals, "0"),
        (&withdrawals, "-9223372036854775808"),
        (&withdrawals, "0.01"),
    ] {
        let body = format!(r#"{{"amount_cents": {amount}}}"#);
        let (status, answer) = request(addr, "POST", path, &body).await;
        assert_eq!(status, 422, "{path} {body}: {answer}");
    }
    for bad in ["-1", "100.0", "1e2"] {
        let body = format!(r#"{{"owner": "Cy", "initial_balance_cents": {bad}}}"#);
        let (status, answer) = request(addr, "POST", "/accounts", &body).await;
        assert_eq!(status, 422, "{body}: {answer}");
    }
    let (status, answer) = post(addr, "/orders", json!({"account_id": account, "amount_cents": 0})).await;
    assert_eq!(status, 422, "{answer}");
    let (status, answer) = request(
        addr,
        "POST",
        "/orders",
        &format!(r#"{{"account_id": "{account}", "amount_cents": 20.5}}"#),
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    let (_, body) = get(addr, &format!("/accounts/{account}")).await;
    assert_eq!(
        (&body["balance_cents"], &body["version"]),
        (&json!(8_000), &json!(4)),
        "refused amounts leave no trace: {body}"
    );

    // A balance one short of i64::MAX cents: a deposit past the bound is refused, one up to
    // it is taken, and the balance is then exact.
    let max = i64::MAX;
    let (status, rich) = post(
        addr,
        "/accounts",
        json!({"owner": "Di", "initial_balance_cents": max - 1}),
    )
    .await;
    assert_eq!(status, 201, "an opening balance up to i64::MAX cents: {rich}");
    let rich = rich["id"].as_str().unwrap().to_owned();
    let deposits = format!("/accounts/{rich}/deposits");
    for amount in [2, max] {
        let (status, body) = post(addr, &deposits, json!({ "amount_cents": amount })).await;
        assert_eq!(status, 422, "a deposit of {amount} cents past i64::MAX: {body}");
        assert_eq!(
            body["error"],
            format!(
                "a deposit of {amount} cents would take the balance of {} cents past the \
                 largest an account holds, {max} cents",
                max - 1
            )
        );
    }
    assert_eq!(
        balance(addr, &rich).await,
        json!(max - 1),
        "the balance is unchanged"
    );
    let (status, body) = post(addr, &deposits, json!({"amount_cents": 1})).await;
    assert_eq!((status, &body["version"]), (200, &json!(2)), "{body}");
    assert_eq!(balance(addr, &rich).await, json!(max));
    let (status, body) = post(addr, &deposits, json!({"amount_cents": 1})).await;
    assert_eq!(status, 422, "not one cent more: {body}");
    // The whole balance can leave, and no more.
    let withdrawals = format!("/accounts/{rich}/withdrawals");
    let (status, body) = post(addr, &withdrawals, json!({ "amount_cents": max })).await;
    assert_eq!((status, &body["version"]), (200, &json!(3)), "{body}");
    assert_eq!(balance(addr, &rich).await, json!(0));
    let (status, body) = post(addr, &withdrawals, json!({"amount_cents": 1})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body["error"],
        "insufficient funds: balance 0 cents, requested 1 cents"
    );

    // Two accounts at i64::MAX cents: the read model's total passes what an i64 holds, exact.
    let (_, before) = get(addr, "/summary").await;
    let accounts = before["accounts"].as_i64().unwrap();
    let total = i128::from(before["total_balance_cents"].as_i64().unwrap());
    for owner in ["Ed", "Flo"] {
        let (status, body) = post(
            addr,
            "/accounts",
            json!({"owner": owner, "initial_balance_cents": max}),
        )
        .await;
        assert_eq!(
            (status, &body["read_model_current"]),
            (201, &json!(true)),
            "{body}"
        );
    }
    let (status, text) = exchange_text(addr, "GET", "/summary", "", "").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        text,
        format!(
            r#"{{"accounts":{},"total_balance_cents":{}}}"#,
            accounts + 2,
            total + 2 * i128::from(max)
        )
    );
}

async fn balance(addr: SocketAddr, account: &str) -> Value {
    let (status, body) = get(addr, &format!("/accounts/{account}")).await;
    assert_eq!(status, 200, "{body}");
    body["balance_cents"].clone()
}

/// The event `event` of aggregate `id` at `version`, stored as version 1 with `payload`.
fn version_1<A: AggregateEvent>(id: Uuid, version: u64, event: A, payload: Value) -> EventEnvelope {
    let aggregate_type = if event.event_type() == "OrderPlaced" {
        "Order"
    } else {
        "Account"
    };
    let mut envelope = EventEnvelope::new(id, aggregate_type, version, &event).unwrap();
    envelope.event_version = 1;
    envelope.payload = payload.to_string().into();
    envelope
}

/// A database written by the service when its amounts were floating-point units (events of
/// version 1) is served in cents: its events are upcast, and the read model of cents is built
/// from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_floating_point_amounts_is_served_in_cents() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let stores = eventsourcing_kit::backend::open(&url).await.unwrap();
    stores.migrate().await.unwrap();
    let (account, order) = (Uuid::new_v4(), Uuid::new_v4());
    let opened = account::AccountOpened {
        owner_name: String::new(),
        initial_balance_cents: 0,
    };
    let deposited = || AccountEvent::from(account::MoneyDeposited { amount_cents: 0 });
    let withdrawn = AccountEvent::from(account::MoneyWithdrawn { amount_cents: 0 });
    let events = [
        version_1(
            account,
            1,
            AccountEvent::from(opened),
            json!({"owner_name": "Ada", "initial_balance": 100.5}),
        ),
        // 0.1 + 0.2 is 0.30000000000000004 in floating point; in cents, 30.
        version_1(account, 2, deposited(), json!({"amount": 0.1})),
        version_1(account, 3, deposited(), json!({"amount": 0.2})),
        version_1(account, 4, withdrawn, json!({"amount": 0.3})),
    ];
    stores
        .events
        .append(account, "Account", 0, &events)
        .await
        .unwrap();
    let placed = order::OrderPlaced {
        account_id: account,
        amount_cents: 0,
    };
    let placed = version_1(
        order,
        1,
        order::OrderEvent::from(placed),
        json!({"account_id": account, "amount": 20.25}),
    );
    stores.events.append(order, "Order", 0, &[placed]).await.unwrap();
    drop(stores);

    let service = Running::start(config(&url)).await;
    let addr = service.addr;
    assert_eq!(balance(addr, &account.to_string()).await, json!(10_050));
    let (_, body) = get(addr, &format!("/orders/{order}")).await;
    assert_eq!(body["amount_cents"], 2_025, "{body}");
    let (status, body) = post_empty(addr, &format!("/orders/{order}/pay")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["read_model_current"], true, "{body}");
    assert_eq!(balance(addr, &account.to_string()).await, json!(8_025));
    let (_, summary) = get(addr, "/summary").await;
    assert_eq!(summary, json!({"accounts": 1, "total_balance_cents": 8_025}));
    let (_, paid) = get(addr, "/orders/by-status/paid").await;
    assert_eq!(
        paid["orders"],
        json!([{"id": order, "account_id": account, "amount_cents": 2_025}])
    );
    service.stop().await;
}

#[test]
fn version_1_amounts_are_upcast_to_cents_or_refused() {
    let decoded = account::AccountEvent::decode("MoneyWithdrawn", 1, r#"{"amount": 19.99}"#).unwrap();
    assert!(
        matches!(
            decoded,
            account::AccountEvent::MoneyWithdrawn(account::MoneyWithdrawn { amount_cents: 1999 })
        ),
        "{decoded:?}"
    );
    let decoded = order::OrderEvent::decode(
        "OrderPlaced",
        1,
        &json!({"account_id": Uuid::nil(), "amount": 0.07}).to_string(),
    )
    .unwrap();
    assert!(
        matches!(&decoded, order::OrderEvent::OrderPlaced(o) if o.amount_cents == 7),
        "{decoded:?}"
    );
    // What the floating-point account let a balance grow to is not a number of cents.
    for amount in ["1e300", "92233720368547758.08", "-0.5"] {
        let payload = format!(r#"{{"amount": {amount}}}"#);
        let refused = account::AccountEvent::decode("MoneyDeposited", 1, &payload).unwrap_err();
        assert!(matches!(refused, Error::Upcast { .. }), "{amount}: {refused}");
    }
}

/// The service's events and states against their schema lock, `examples/service/schema.lock`.
/// After a deliberate change: `EVENTSOURCE_SCHEMA_LOCK=overwrite cargo test --test
/// bank_service --features example-service,testing`, and review the lock's diff.
#[cfg(feature = "testing")]
#[test]
fn the_service_matches_its_schema_lock() {
    eventsourcing_kit::testing::check_schema_lock(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/service/schema.lock"
    ));
}

#[test]
fn settings_out_of_their_bounds_are_refused_by_name() {
    let with = |pairs: &[(&str, &str)]| {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::new("sqlite::memory:", "127.0.0.1:0")
            .with_vars(move |name| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    };
    let defaults = with(&[]).unwrap();
    assert_eq!(
        (
            defaults.max_connections,
            defaults.read_timeout,
            defaults.shutdown_grace
        ),
        (512, Duration::from_secs(5), Duration::from_secs(10))
    );
    let set = with(&[
        ("BANK_MAX_CONNECTIONS", "64"),
        ("BANK_READ_TIMEOUT_SECS", "0.5"),
        ("BANK_SHUTDOWN_GRACE_SECS", "0"),
    ])
    .unwrap();
    assert_eq!(
        (set.max_connections, set.read_timeout, set.shutdown_grace),
        (64, Duration::from_millis(500), Duration::ZERO)
    );
    for (name, value, bounds) in [
        ("BANK_MAX_CONNECTIONS", "0", "a whole number from 1 to 100000"),
        (
            "BANK_MAX_CONNECTIONS",
            "100001",
            "a whole number from 1 to 100000",
        ),
        (
            "BANK_MAX_CONNECTIONS",
            "4294967296",
            "a whole number from 1 to 100000",
        ),
        ("BANK_MAX_CONNECTIONS", "ten", "a whole number from 1 to 100000"),
        (
            "BANK_READ_TIMEOUT_SECS",
            "0",
            "a number of seconds from 0.1 to 300",
        ),
        (
            "BANK_READ_TIMEOUT_SECS",
            "1e20",
            "a number of seconds from 0.1 to 300",
        ),
        (
            "BANK_READ_TIMEOUT_SECS",
            "NaN",
            "a number of seconds from 0.1 to 300",
        ),
        (
            "BANK_READ_TIMEOUT_SECS",
            "5s",
            "a number of seconds from 0.1 to 300",
        ),
        (
            "BANK_SHUTDOWN_GRACE_SECS",
            "-1",
            "a number of seconds from 0 to 3600",
        ),
        (
            "BANK_SHUTDOWN_GRACE_SECS",
            "inf",
            "a number of seconds from 0 to 3600",
        ),
    ] {
        let refused = with(&[(name, value)]).unwrap_err();
        assert_eq!(refused, format!("{name}={value:?} is not {bounds}"));
    }
}

/// The connections a test keeps open without sending anything.
async fn idle_connections(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut idle = Vec::new();
    for _ in 0..count {
        idle.push(
            TcpStream::connect(addr)
                .await
                .expect("connected (or in the backlog)"),
        );
    }
    idle
}

/// Reads from `stream` until the server closes it, for at most `bound`; what it sent, and
/// when it closed (`None` if it did not within the bound).
async fn read_until_closed(stream: &TcpStream, bound: Duration) -> (Vec<u8>, Option<Instant>) {
    let mut received = Vec::new();
    let reading = async {
        let mut buffer = [0; 4096];
        loop {
            if stream.readable().await.is_err() {
                return;
            }
            match stream.try_read(&mut buffer) {
                Ok(0) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                // Closed with unread data on the server's side: a reset.
                Err(_) => return,
            }
        }
    };
    let closed = tokio::time::timeout(bound, reading)
        .await
        .ok()
        .map(|()| Instant::now());
    (received, closed)
}

/// A connection that sends nothing is closed after the read timeout, as is one that sends a
/// request's head and not its body (answered 408) and an idle keep-alive connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_send_no_request_in_time_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&sqlite_url(&dir));
    config.read_timeout = Duration::from_secs(1);
    let service = Running::start(config).await;
    let addr = service.addr;

    let start = Instant::now();
    let silent = TcpStream::connect(addr).await.unwrap();
    let (sent, closed) = read_until_closed(&silent, Duration::from_secs(10)).await;
    let closed = closed.expect("a silent connection is closed within 10 s");
    assert!(sent.is_empty(), "{}", String::from_utf8_lossy(&sent));
    assert!(
        closed - start >= Duration::from_millis(900),
        "closed after the read timeout, not before: {:?}",
        closed - start
    );

    // A head that promises a body that never comes.
    let start = Instant::now();
    let stalled = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /accounts HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{{\"owner\""
    );
    write_all(&stalled, head.as_bytes()).await;
    let (sent, closed) = read_until_closed(&stalled, Duration::from_secs(10)).await;
    assert!(
        closed.is_some(),
        "a stalled body's connection is closed within 10 s"
    );
    let sent = String::from_utf8(sent).unwrap();
    assert!(sent.starts_with("HTTP/1.1 408 "), "{sent}");
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );

    // A head sent a byte at a time, each in time, the whole too late.
    let start = Instant::now();
    let dribbling = TcpStream::connect(addr).await.unwrap();
    let head = b"GET /summary HTTP/1.1\r\nHost: x\r\nX-Slow: yes\r\n\r\n";
    let mut dribbled = 0;
    for byte in head.chunks(1) {
        if dribbling.writable().await.is_err() || dribbling.try_write(byte).is_err() {
            break;
        }
        dribbled += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        dribbled < head.len(),
        "the connection was closed before the head was complete"
    );
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());

    // A keep-alive connection: answered, then closed after the read timeout without another
    // request.
    let kept = TcpStream::connect(addr).await.unwrap();
    write_all(
        &kept,
        format!("GET /summary HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    )
    .await;
    let (sent, closed) = read_until_closed(&kept, Duration::from_secs(10)).await;
    assert!(
        closed.is_some(),
        "an idle keep-alive connection is closed within 10 s"
    );
    assert!(String::from_utf8(sent).unwrap().starts_with("HTTP/1.1 200 "));
    service.stop().await;
}

/// More silent connections than the cap: those beyond it wait, unaccepted, and a real request
/// behind them is answered once the silent ones time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_a_free_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&sqlite_url(&dir));
    config.max_connections = 4;
    config.read_timeout = Duration::from_secs(1);
    let service = Running::start(config).await;
    let addr = service.addr;

    let start = Instant::now();
    let silent = idle_connections(addr, 12).await;
    let (status, body) = get(addr, "/summary").await;
    let answered = start.elapsed();
    assert_eq!(status, 200, "{body}");
    // Four connections at a time, each held for the read timeout: the request, 13th in line,
    // is accepted after three rounds.
    assert!(
        answered >= Duration::from_millis(2_700),
        "the request waited for the silent connections ahead of it: {answered:?}"
    );
    for (i, stream) in silent.iter().enumerate() {
        let (sent, closed) = read_until_closed(stream, Duration::from_secs(10)).await;
        assert!(closed.is_some(), "silent connection {i} was closed");
        assert!(sent.is_empty(), "{}", String::from_utf8_lossy(&sent));
    }
    // With the silent ones gone, requests are served as ever.
    assert_eq!(get(addr, "/summary").await.0, 200);
    service.stop().await;
}

/// `bank_service admin --url URL --json ARGS...`: its exit status and its JSON report.
#[cfg(unix)]
fn admin(url: &str, args: &[&str]) -> (Option<i32>, Value, String) {
    let out = std::process::Command::new(service_binary())
        .args(["admin", "--url", url, "--json"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.code(),
        report,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The binary on SIGTERM: it stops accepting connections at once, answers the request in
/// flight, stops the read model (its checkpoint at the head, its lease given up) and exits
/// with status 0, so that an admin rebuild right after is not refused for the lease.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_the_requests_in_flight_and_frees_the_lease() {
    use tokio::io::AsyncBufReadExt;

    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let mut child = tokio::process::Command::new(service_binary())
        .arg(&url)
        .env("BANK_ADDR", "127.0.0.1:0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), stdout.next_line())
        .await
        .expect("the service starts within 30 s")
        .unwrap()
        .expect("the service prints its address");
    let addr: SocketAddr = line
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("{line}"))
        .parse()
        .unwrap();

    let (status, opened) = post(
        addr,
        "/accounts",
        json!({"owner": "Ada", "initial_balance_cents": 100}),
    )
    .await;
    assert_eq!(
        (status, &opened["read_model_current"]),
        (201, &json!(true)),
        "{opened}"
    );
    let account = opened["id"].as_str().unwrap().to_owned();
    let (_, status_before, _) = admin(&url, &["projections", "status", read_model::NAME]);
    assert!(
        status_before["owner"].is_string(),
        "the running read model holds its lease: {status_before}"
    );
    let (code, _, stderr) = admin(&url, &["projections", "rebuild", read_model::NAME, "--yes"]);
    assert_eq!(
        code,
        Some(2),
        "a rebuild is refused while the lease is held: {stderr}"
    );

    // A request in flight: its head and half its body sent.
    let body = json!({"amount_cents": 250}).to_string();
    let (first, rest) = body.split_at(body.len() / 2);
    let in_flight = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /accounts/{account}/deposits HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{first}",
        body.len()
    );
    write_all(&in_flight, head.as_bytes()).await;
    // Read by the server by then: a connection that sent nothing yet would be closed at once.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let terminated = Instant::now();
    let pid = child.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    // The listener closes at once: new connections are refused while the request is still
    // in flight.
    loop {
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => break,
            // Taken into the listen backlog as the listener closed.
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("connecting failed otherwise: {e}"),
            Ok(_) => {}
        }
        assert!(
            terminated.elapsed() < Duration::from_secs(5),
            "the service still accepts connections 5 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    write_all(&in_flight, rest.as_bytes()).await;
    let (sent, closed) = read_until_closed(&in_flight, Duration::from_secs(10)).await;
    assert!(closed.is_some(), "the connection closes after its answer");
    let answer = String::from_utf8(sent).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200 "),
        "the request in flight is answered: {answer}"
    );
    assert!(answer.contains(r#""version":2"#), "{answer}");

    let exited = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("the service exits within 15 s of SIGTERM")
        .unwrap();
    assert_eq!(
        exited.code(),
        Some(0),
        "a clean shutdown exits with 0: {exited:?}"
    );

    let (code, status_after, stderr) = admin(&url, &["projections", "status", read_model::NAME]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        status_after["owner"],
        Value::Null,
        "the lease is free: {status_after}"
    );
    assert_eq!(
        status_after["lag"], 0,
        "the read model holds every event: {status_after}"
    );
    let (code, rebuilt, stderr) = admin(&url, &["projections", "rebuild", read_model::NAME, "--yes"]);
    assert_eq!(code, Some(0), "a rebuild right after the shutdown: {stderr}");
    assert_eq!(rebuilt["events"], 2, "{rebuilt}");
}

async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    request(addr, "GET", path, "").await
}

async fn post(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    request(addr, "POST", path, &body.to_string()).await
}

async fn post_empty(addr: SocketAddr, path: &str) -> (u16, Value) {
    request(addr, "POST", path, "").await
}

/// One HTTP/1.1 exchange on a connection of its own: the status, and the body as JSON (or as
/// a JSON string when it is not JSON, as axum's own refusals are not).
async fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    request_with(addr, method, path, body, "").await
}

/// As [`request`], with more header lines (each ending in `\r\n`).
async fn request_with(addr: SocketAddr, method: &str, path: &str, body: &str, headers: &str) -> (u16, Value) {
    let (status, body) = exchange_text(addr, method, path, body, headers).await;
    let body = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, body)
}

/// As [`request_with`], the body as the text it is.
async fn exchange_text(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    headers: &str,
) -> (u16, String) {
    let answer = exchange(addr, method, path, body, headers);
    let response = tokio::time::timeout(Duration::from_secs(30), answer)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer in 30 s"));
    let text = String::from_utf8(response).expect("a UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no status line in {head:?}"));
    (status, body.to_owned())
}

async fn write_all(stream: &TcpStream, mut unsent: &[u8]) {
    while !unsent.is_empty() {
        stream.writable().await.unwrap();
        match stream.try_write(unsent) {
            Ok(n) => unsent = &unsent[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("sending failed: {e}"),
        }
    }
}

/// Writes the request and reads until the server closes, which `Connection: close` asks for.
async fn exchange(addr: SocketAddr, method: &str, path: &str, body: &str, headers: &str) -> Vec<u8> {
    let stream = TcpStream::connect(addr)
        .await
        .expect("the service accepts connections");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
        body.len()
    );
    write_all(&stream, request.as_bytes()).await;
    let mut response = Vec::new();
    let mut buffer = [0; 4096];
    loop {
        stream.readable().await.unwrap();
        match stream.try_read(&mut buffer) {
            Ok(0) => return response,
            Ok(n) => response.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("{method} {path}: receiving failed: {e}"),
        }
    }
}
