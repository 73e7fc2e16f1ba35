//! The HTTP service example, served on a free loopback port and called with real HTTP/1.1
//! requests: statuses, bodies, refusals and failures, on SQLite and, when configured, on
//! PostgreSQL.

// The example's own code, so that the test serves exactly what `cargo run --example` does; its
// domain modules come along through their `#[path]` attributes.
#[path = "../examples/bank_service.rs"]
mod bank_service;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use eventsource::Uuid;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_answers_over_http_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("bank.db").display());
    exercise(&url).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_answers_over_http_on_postgres() {
    const URL_VAR: &str = "EVENTSOURCE_TEST_POSTGRES_URL";
    const REQUIRE_VAR: &str = "EVENTSOURCE_REQUIRE_POSTGRES";
    match std::env::var(URL_VAR) {
        // In a schema of its own (the URL's `schema` parameter), dropped afterwards.
        Ok(url) if !url.trim().is_empty() => {
            let schema = format!("bank_service_{}", Uuid::new_v4().simple());
            let separator = if url.contains('?') { '&' } else { '?' };
            exercise(&format!("{url}{separator}schema={schema}")).await;
            let pool = eventsource::backend::postgres::pool_options()
                .connect(&url)
                .await
                .unwrap();
            eventsource::backend::postgres::sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
                .execute(&pool)
                .await
                .unwrap();
        }
        _ if std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1") => {
            panic!("{REQUIRE_VAR}=1 but {URL_VAR} is not set: the PostgreSQL service test cannot run")
        }
        _ => println!("skipped the PostgreSQL service test: set {URL_VAR} to run it"),
    }
}

/// Serves the store `url` on a free port and runs every check against it.
async fn exercise(url: &str) {
    let (bound, address) = oneshot::channel();
    // Long enough for a PostgreSQL feed held back by other tests' transactions on the server.
    let read_your_writes = Duration::from_secs(30);
    let service = bank_service::serve(url, "127.0.0.1:0", read_your_writes, move |addr| {
        let _ = bound.send(addr);
    });
    let client = async {
        let addr = address.await.expect("the service failed before it was bound");
        checks(addr).await;
    };
    // The service never ends by itself: the checks finishing ends the test.
    tokio::select! {
        outcome = service => panic!("the service stopped: {outcome:?}"),
        () = client => {}
    }
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
        json!({"owner": "Ada", "initial_balance": 100.0}),
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
        json!({"amount": 5.0}),
    )
    .await;
    assert_eq!((status, &body["version"]), (200, &json!(2)), "{body}");

    let (status, body) = post(
        addr,
        &format!("/accounts/{account}/withdrawals"),
        json!({"amount": 1000.0}),
    )
    .await;
    assert_eq!(status, 409, "an overdraft is refused: {body}");
    assert_eq!(
        body["error"],
        "insufficient funds: balance 105.00, requested 1000.00"
    );

    let (status, body) = post(
        addr,
        &format!("/accounts/{account}/withdrawals"),
        json!({"amount": 5.0}),
    )
    .await;
    assert_eq!((status, &body["version"]), (200, &json!(3)), "{body}");

    let (status, body) = get(addr, &format!("/accounts/{account}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"id": account, "owner": "Ada", "balance": 100.0, "version": 3}),
        "the refused withdrawal left no trace"
    );

    let unknown = Uuid::new_v4();
    let (status, body) = get(addr, &format!("/accounts/{unknown}")).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = post(
        addr,
        &format!("/accounts/{unknown}/deposits"),
        json!({"amount": 1.0}),
    )
    .await;
    assert_eq!(status, 404, "a command on an account that does not exist: {body}");
    let (status, body) = get(addr, &format!("/accounts/{account}")).await;
    assert_eq!((status, &body["version"]), (200, &json!(3)), "{body}");

    // An order paid: the money leaves the account, once.
    let (status, placed) = post(addr, "/orders", json!({"account_id": account, "amount": 20.0})).await;
    assert_eq!((status, &placed["version"]), (201, &json!(1)), "{placed}");
    let order = placed["id"].as_str().expect("the new order's id").to_owned();
    let (status, body) = get(addr, &format!("/orders/{order}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"id": order, "account_id": account, "amount": 20.0, "status": "Placed", "version": 1})
    );
    let (status, body) = post_empty(addr, &format!("/orders/{order}/pay")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["version"], &body["account_version"]),
        (&json!(2), &json!(4))
    );
    assert_eq!(balance(addr, &account).await, 80.0);
    assert_eq!(get(addr, &format!("/orders/{order}")).await.1["status"], "Paid");
    // The read model already shows the payment: the command waited for it.
    assert_eq!(body["read_model_current"], true, "{body}");
    let (status, paid) = get(addr, "/orders/by-status/paid").await;
    assert_eq!(status, 200, "{paid}");
    assert!(
        paid["orders"]
            .as_array()
            .unwrap()
            .contains(&json!({"id": order, "account_id": account, "amount": 20.0})),
        "{paid}"
    );
    let (_, summary) = get(addr, "/summary").await;
    if fresh {
        assert_eq!(summary, json!({"accounts": 1, "total_balance": 80.0}));
    } else {
        assert!(
            summary["accounts"].as_i64() > before["accounts"].as_i64(),
            "{summary}"
        );
    }
    let (status, _) = get(addr, "/orders/by-status/lost").await;
    assert_eq!(status, 404);

    let (status, body) = post_empty(addr, &format!("/orders/{order}/pay")).await;
    assert_eq!(status, 409, "an order is paid once: {body}");
    assert_eq!(body["error"], "the order is already paid");
    assert_eq!(
        balance(addr, &account).await,
        80.0,
        "a refused payment moves no money"
    );
    let (status, body) = post_empty(addr, &format!("/orders/{order}/cancel")).await;
    assert_eq!(status, 409, "a paid order stays paid: {body}");

    // An order the account cannot pay for: refused, still placed, then cancelled.
    let (status, placed) = post(addr, "/orders", json!({"account_id": account, "amount": 1000.0})).await;
    assert_eq!(status, 201, "{placed}");
    let big = placed["id"].as_str().expect("the new order's id").to_owned();
    let (status, body) = post_empty(addr, &format!("/orders/{big}/pay")).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body["error"],
        "insufficient funds: balance 80.00, requested 1000.00"
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
    assert_eq!(balance(addr, &account).await, 80.0);

    // Orders and order ids that name nothing.
    let (status, body) = post(addr, "/orders", json!({"account_id": unknown, "amount": 1.0})).await;
    assert_eq!(status, 422, "an order on an account that does not exist: {body}");
    let (status, body) = get(addr, &format!("/orders/{unknown}")).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = post_empty(addr, &format!("/orders/{unknown}/pay")).await;
    assert_eq!(status, 404, "{body}");

    // Bodies that are not what the endpoint takes are axum's to refuse, before any command.
    for bad in [
        r#"{"owner": "#,
        r#"{"owner": "Ada"}"#,
        r#"{"owner": 7, "initial_balance": 1}"#,
    ] {
        let (status, body) = request(addr, "POST", "/accounts", bad).await;
        assert!((400..500).contains(&status), "{bad} answered {status}: {body}");
    }
    let (status, body) = request(addr, "POST", &format!("/accounts/{account}/deposits"), "[]").await;
    assert!((400..500).contains(&status), "answered {status}: {body}");
    assert_eq!(balance(addr, &account).await, 80.0);
    // A retried request with its idempotency key deposits once.
    let key = format!("Idempotency-Key: {}\r\n", Uuid::new_v4());
    let (_, opened) = post(addr, "/accounts", json!({"owner": "Bo", "initial_balance": 1.0})).await;
    let path = format!("/accounts/{}/deposits", opened["id"].as_str().unwrap());
    let deposit = json!({"amount": 1.0}).to_string();
    let (status, first) = request_with(addr, "POST", &path, &deposit, &key).await;
    assert_eq!((status, &first["repeated"]), (200, &json!(false)), "{first}");
    let (status, again) = request_with(addr, "POST", &path, &deposit, &key).await;
    assert_eq!((status, &again["repeated"]), (200, &json!(true)), "{again}");
    assert_eq!(again["version"], first["version"], "the first deposit's version");
    let (status, _) = request_with(addr, "POST", &path, &deposit, "Idempotency-Key: nope\r\n").await;
    assert_eq!(status, 422);
}

async fn balance(addr: SocketAddr, account: &str) -> Value {
    let (status, body) = get(addr, &format!("/accounts/{account}")).await;
    assert_eq!(status, 200, "{body}");
    body["balance"].clone()
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
    let body = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()));
    (status, body)
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
    let mut unsent = request.as_bytes();
    while !unsent.is_empty() {
        stream.writable().await.unwrap();
        match stream.try_write(unsent) {
            Ok(n) => unsent = &unsent[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("{method} {path}: sending failed: {e}"),
        }
    }
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
