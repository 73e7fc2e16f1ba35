//! The bank account and an order as an HTTP service with JSON bodies, on axum: every request
//! is one command (or a load) on the repository, and every refusal and failure is an HTTP
//! status chosen in one place (`command_error`).
//!
//! ```text
//! cargo run -p eventsourcing-kit --example bank_service --features example-service    # sqlite:bank.db
//! cargo run -p eventsourcing-kit --example bank_service --features example-service -- sqlite:other.db
//! cargo run -p eventsourcing-kit --example bank_service --features example-service,postgres -- \
//!     postgres://postgres@127.0.0.1:5432/test
//! ```
//!
//! The store URL is the first argument, else `BANK_STORE_URL`, else `sqlite:bank.db`. `admin`
//! as the first argument runs the admin command line on the service's stores instead
//! (`bank_service admin --url sqlite:bank.db stats`; see docs/guides/admin.md). The other
//! settings are environment variables; a value out of its bounds stops the service before it
//! opens anything, with a message that names it:
//!
//! | variable | default | what |
//! |---|---|---|
//! | `BANK_ADDR` | `127.0.0.1:3000` | the address to listen on (port 0 picks a free one) |
//! | `BANK_MAX_CONNECTIONS` | 512 | connections served at once, 1 to 100,000; more wait in the listen backlog until one closes |
//! | `BANK_READ_TIMEOUT_SECS` | 5 | how long a client has to send a request's head, and then its body, 0.1 to 300 |
//! | `BANK_SHUTDOWN_GRACE_SECS` | 10 | how long a shutdown waits for the requests in flight, and then for the read model, 0 to 3,600 |
//!
//! Keep `BANK_MAX_CONNECTIONS` below the process's limit of open files (`ulimit -n`, often
//! 1,024) less what the stores hold: each connection is a file. With the read timeout, a
//! connection that sends no complete request head in time is closed (an idle keep-alive
//! connection too), and a request whose body does not arrive in time is answered 408, so
//! clients that connect and send nothing cannot hold the connections for good.
//!
//! SIGTERM or SIGINT (Ctrl-C) shuts the service down: it stops accepting connections, lets
//! the requests in flight finish (up to the grace), then stops the read model, which finishes
//! its batch, stores its checkpoint and gives up its lease, so that another instance or an
//! admin rebuild takes it at once; then the process exits with status 0. A second signal
//! stops it at once, with status 1.
//!
//! Money is whole cents (`i64`), in the requests, the answers and the events; a deposit that
//! would take a balance past `i64::MAX` cents is refused with 422, as is an amount of 0 or less
//! (or not an integer), and a withdrawal of more than the balance with 409. Then:
//!
//! ```text
//! J='content-type: application/json'
//! curl -si localhost:3000/accounts -H "$J" -d '{"owner": "Ada", "initial_balance_cents": 10000}'
//! curl -si localhost:3000/accounts/ID/deposits -H "$J" -d '{"amount_cents": 500}'
//! curl -si localhost:3000/accounts/ID/withdrawals -H "$J" -d '{"amount_cents": 100000}'  # 409
//! curl -si localhost:3000/accounts/ID
//! curl -si localhost:3000/orders -H "$J" -d '{"account_id": "ID", "amount_cents": 2000}'
//! curl -si -X POST localhost:3000/orders/ORDER/pay
//! curl -si localhost:3000/orders/ORDER
//! curl -si localhost:3000/summary                      # from the read model
//! curl -si localhost:3000/orders/by-status/paid        # from the read model
//! ```
//!
//! The queries `/summary` and `/orders/by-status/...` read a projection in the stores' own
//! database (`service/read_model.rs`), committed with its checkpoint. Every command waits up
//! to two seconds for the projection to show its events before it answers (read-your-writes),
//! and says whether it did in `read_model_current`.

#[path = "service/account.rs"]
pub mod account;
#[path = "domain/order.rs"]
pub mod order;
#[path = "service/read_model.rs"]
pub mod read_model;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use account::{Account, AccountCommands};
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::header::{CONNECTION, CONTENT_TYPE};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use eventsourcing_kit::admin::Admin;
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::projection::Projection;
use eventsourcing_kit::request::{Fingerprint, RequestId};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use order::{Order, OrderCommands, OrderRefused, OrderStatus};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

#[tokio::main]
#[allow(dead_code)] // the integration test includes this file as a module and calls `serve` alone
async fn main() -> ExitCode {
    // `bank_service admin ...` is the admin command line on the same stores.
    if std::env::args().nth(1).as_deref() == Some("admin") {
        return admin().main_from(std::env::args_os().skip(1)).await;
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = match shutdown_signal() {
        Ok(shutdown) => shutdown,
        Err(e) => {
            eprintln!("error: cannot listen for signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served = serve(config, |bound| println!("listening on http://{bound}"), shutdown).await;
    match served {
        Ok(()) => {
            eprintln!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The admin command line of the service: every aggregate type it links, and its read model.
#[allow(dead_code)]
pub fn admin() -> Admin {
    Admin::new().projection(|stores| Ok(read_model::open(stores)?.0))
}

/// Completes on the first SIGTERM or SIGINT (Ctrl-C) and stops the process at once on the
/// second. The handlers are in place when this returns, so a signal that comes while the
/// stores open is kept for the first poll rather than lost.
#[allow(dead_code)]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        Ok(async move {
            let name = tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
            };
            eprintln!("{name}: shutting down (a second signal stops at once)");
            tokio::spawn(async move {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
                eprintln!("stopped at once by a second signal");
                std::process::exit(1);
            });
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("Ctrl-C: shutting down (a second one stops at once)");
            tokio::spawn(async {
                let _ = tokio::signal::ctrl_c().await;
                std::process::exit(1);
            });
        })
    }
}

/// The service's settings; see the module docs for their variables and bounds.
#[derive(Clone, Debug)]
pub struct Config {
    /// The stores' URL.
    pub url: String,
    /// The address to listen on.
    pub addr: String,
    /// How long a command waits for the read model to show its events.
    pub read_your_writes: Duration,
    /// Connections served at once; more wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// How long a client has to send a request's head, and then its body.
    pub read_timeout: Duration,
    /// How long a shutdown waits for the requests in flight, and then for the read model to
    /// finish its batch and give up its lease.
    pub shutdown_grace: Duration,
}

/// How long a command waits for the read model to show its events, by default.
const READ_YOUR_WRITES: Duration = Duration::from_secs(2);

/// A setting from the environment: its variable, its default and its bounds.
struct Setting<T> {
    var: &'static str,
    default: T,
    min: T,
    max: T,
}

const MAX_CONNECTIONS: Setting<usize> = Setting {
    var: "BANK_MAX_CONNECTIONS",
    default: 512,
    min: 1,
    max: 100_000,
};
const READ_TIMEOUT_SECS: Setting<f64> = Setting {
    var: "BANK_READ_TIMEOUT_SECS",
    default: 5.0,
    min: 0.1,
    max: 300.0,
};
const SHUTDOWN_GRACE_SECS: Setting<f64> = Setting {
    var: "BANK_SHUTDOWN_GRACE_SECS",
    default: 10.0,
    min: 0.0,
    max: 3600.0,
};

impl<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy> Setting<T> {
    /// The value of the variable as `var` finds it, `current` without one, or why the value
    /// is refused (`what` says what it must be).
    fn read(&self, var: &impl Fn(&str) -> Option<String>, current: T, what: &str) -> Result<T, String> {
        let Some(value) = var(self.var) else {
            return Ok(current);
        };
        value
            .trim()
            .parse::<T>()
            .ok()
            .filter(|v| (self.min..=self.max).contains(v))
            .ok_or_else(|| {
                format!(
                    "{}={value:?} is not {what} from {} to {}",
                    self.var, self.min, self.max
                )
            })
    }
}

impl Config {
    /// The defaults, on the stores of `url`, listening on `addr`.
    pub fn new(url: &str, addr: &str) -> Config {
        Config {
            url: url.into(),
            addr: addr.into(),
            read_your_writes: READ_YOUR_WRITES,
            max_connections: MAX_CONNECTIONS.default,
            read_timeout: Duration::from_secs_f64(READ_TIMEOUT_SECS.default),
            shutdown_grace: Duration::from_secs_f64(SHUTDOWN_GRACE_SECS.default),
        }
    }

    /// The settings of the command line and the environment.
    #[allow(dead_code)]
    pub fn from_env() -> Result<Config, String> {
        let url = std::env::args()
            .nth(1)
            .or_else(|| std::env::var("BANK_STORE_URL").ok())
            .unwrap_or_else(|| "sqlite:bank.db".into());
        let addr = std::env::var("BANK_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
        Config::new(&url, &addr).with_vars(|name| std::env::var(name).ok())
    }

    /// These settings, with the limits that the variables `var` finds say instead.
    pub fn with_vars(self, var: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
        let seconds = |setting: &Setting<f64>, current: Duration| {
            setting
                .read(&var, current.as_secs_f64(), "a number of seconds")
                .map(Duration::from_secs_f64)
        };
        Ok(Config {
            max_connections: MAX_CONNECTIONS.read(&var, self.max_connections, "a whole number")?,
            read_timeout: seconds(&READ_TIMEOUT_SECS, self.read_timeout)?,
            shutdown_grace: seconds(&SHUTDOWN_GRACE_SECS, self.shutdown_grace)?,
            ..self
        })
    }
}

/// Opens the stores, binds the address, tells `ready` the address it is bound to (the port
/// chosen when the address asks for port 0), then serves until `shutdown` completes; then
/// shuts down as the module docs say and returns `Ok`.
pub async fn serve(
    config: Config,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let stores = eventsourcing_kit::backend::open(&config.url).await?;
    stores.migrate().await?;
    let (read_model, queries) = read_model::open(&stores)?;
    read_model.setup().await?;
    let listener = TcpListener::bind(&config.addr).await?;
    // The read model follows the feed in the background until the requests are answered.
    let (stop_projecting, stop) = watch::channel(false);
    let projecting = tokio::spawn(project(read_model.clone(), stop));
    let policy = SnapshotPolicy::every(100)?;
    // The command queues make concurrent requests on one aggregate wait their turn instead of
    // losing conflicts and deciding again.
    let app = Arc::new(AppState {
        accounts: stores
            .repository_with_snapshots::<Account>(policy)
            .with_command_queue(),
        orders: stores
            .repository_with_snapshots::<Order>(policy)
            .with_command_queue(),
        read_model,
        queries,
        read_your_writes: config.read_your_writes,
    });
    ready(listener.local_addr()?);
    serve_http(listener, router(app), &config, shutdown).await;
    // Every request answered: the read model finishes its batch, stores its checkpoint and
    // gives up its lease.
    let _ = stop_projecting.send(true);
    match tokio::time::timeout(config.shutdown_grace, projecting).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("the read model failed: {e}").into()),
        Err(_) => Err(format!(
            "the read model did not stop within {:?}; its lease runs out by itself",
            config.shutdown_grace
        )
        .into()),
    }
}

/// Runs the read model until `stop` turns true (or its sender is gone).
async fn project(read_model: Arc<Projection>, stop: watch::Receiver<bool>) {
    let stopped = |mut stop: watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    // A batch that still fails after its retries (the database away for longer than they
    // last) stops the projection: start it again, from its checkpoint.
    while let Err(e) = read_model.run(stopped(stop.clone())).await {
        eprintln!("the read model stopped: {e}; starting it again in a second");
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stopped(stop.clone()) => return,
        }
    }
}

/// Serves `app` on `listener`, at most `config.max_connections` connections at once, each
/// closed when it sends no complete request head within `config.read_timeout`, until
/// `shutdown` completes. Then closes the listener and waits for the requests in flight (up
/// to `config.shutdown_grace`), closing each connection once its request is answered.
async fn serve_http(listener: TcpListener, app: Router, config: &Config, shutdown: impl Future<Output = ()>) {
    let app = app.layer(middleware::from_fn_with_state(
        config.read_timeout,
        read_body_in_time,
    ));
    let service = TowerToHyperService::new(app);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.read_timeout);
    let connections = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // At the cap, the next connection is not accepted (it waits in the listen backlog)
        // until one of those served closes.
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let connection = connections.watch(http.serve_connection(TokioIo::new(stream), service.clone()));
        tokio::spawn(async move {
            // An error here is the client's: gone, too slow, or not speaking HTTP/1.1.
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(config.shutdown_grace, connections.shutdown())
        .await
        .is_err()
    {
        eprintln!(
            "requests still in flight {:?} after the shutdown began: their connections are dropped",
            config.shutdown_grace
        );
    }
}

/// After a failed accept: a connection that failed before it was accepted concerns nobody;
/// anything else (no file descriptor left) is worth a line and a pause before the next try.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if !matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        eprintln!("accepting a connection failed: {error}; trying again in a second");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Reads a request's body (up to axum's default limit, 2 MB) within the read timeout, before
/// the handler runs: a client that sent a head and then stalls is answered 408 and its
/// connection closed, instead of holding it for as long as it likes.
async fn read_body_in_time(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(timeout, Bytes::from_request(Request::new(body), &())).await {
        Ok(Ok(body)) => next.run(Request::from_parts(parts, Body::from(body))).await,
        // Too large (413), or the client went away.
        Ok(Err(rejection)) => rejection.into_response(),
        Err(_) => {
            let mut response = ApiError {
                status: StatusCode::REQUEST_TIMEOUT,
                message: format!("the request's body did not arrive within {timeout:?}"),
            }
            .into_response();
            response
                .headers_mut()
                .insert(CONNECTION, axum::http::HeaderValue::from_static("close"));
            response
        }
    }
}

struct AppState {
    accounts: Repository<Account>,
    orders: Repository<Order>,
    read_model: Arc<Projection>,
    queries: read_model::Queries,
    read_your_writes: Duration,
}

impl AppState {
    /// A command's answer, once the read model shows the command's events (or the wait gave
    /// up): `read_model_current` says which.
    async fn answer(&self, status: StatusCode, mut body: Value, position: u64) -> ApiResult {
        let current = self
            .read_model
            .wait_for(position, self.read_your_writes)
            .await
            .unwrap_or(false);
        body["read_model_current"] = json!(current);
        Ok((status, Json(body)))
    }
}

fn router(app: Arc<AppState>) -> Router {
    Router::new()
        .route("/accounts", post(open_account))
        .route("/accounts/{id}", get(get_account))
        .route("/accounts/{id}/deposits", post(deposit))
        .route("/accounts/{id}/withdrawals", post(withdraw))
        .route("/orders", post(place_order))
        .route("/orders/{id}", get(get_order))
        .route("/orders/{id}/pay", post(pay_order))
        .route("/orders/{id}/cancel", post(cancel_order))
        .route("/orders/by-status/{status}", get(orders_by_status))
        .route("/summary", get(summary))
        .with_state(app)
}

/// An HTTP status and the message of a `{"error": ...}` body.
struct ApiError {
    status: StatusCode,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

type ApiResult = Result<(StatusCode, Json<Value>), ApiError>;

/// A refusal of the domain, and the status it is answered with.
trait Refusal: std::fmt::Display {
    /// 422 for a request no account or order takes (an amount of 0 or less, a deposit past
    /// the largest balance), 409 for one the state refuses (too little money, an order paid).
    fn status(&self) -> StatusCode;
}

impl Refusal for account::Refused {
    fn status(&self) -> StatusCode {
        if self.is_invalid_amount() {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::CONFLICT
        }
    }
}

impl Refusal for OrderRefused {
    fn status(&self) -> StatusCode {
        match self {
            OrderRefused::NotPositive(_) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::CONFLICT,
        }
    }
}

impl Refusal for Infallible {
    fn status(&self) -> StatusCode {
        match *self {}
    }
}

/// The one place where an outcome of the library becomes an HTTP status.
fn command_error<E: Refusal>(error: CommandError<E>) -> ApiError {
    let status = match &error {
        CommandError::Rejected(why) => why.status(),
        CommandError::AlreadyExists { .. } => StatusCode::CONFLICT,
        CommandError::RejectedEarlier { .. } => StatusCode::CONFLICT,
        // A key sent again with another body, as payment APIs answer it.
        CommandError::RequestMismatch { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        CommandError::Contended { .. } => StatusCode::SERVICE_UNAVAILABLE,
        CommandError::Failed(e) if e.is_not_found() => StatusCode::NOT_FOUND,
        CommandError::Failed(Error::InvalidInput(_) | Error::Serialization { .. }) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        // Another failure, of a kind a later version of the library may add.
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        // A store's message can name hosts, tables and files: it is for the operator's log,
        // not for the client.
        eprintln!("internal error: {error}");
        return ApiError {
            status,
            message: "internal error".into(),
        };
    }
    ApiError {
        status,
        message: error.to_string(),
    }
}

/// A load's error, through the same mapping as a command's.
fn load_error(error: Error) -> ApiError {
    command_error(CommandError::<Infallible>::Failed(error))
}

// Amounts are whole cents: a JSON number with a fraction or an exponent, or one past the
// bounds of an i64, is not one, and axum answers 422 before any command.

#[derive(Deserialize, Serialize)]
struct OpenAccount {
    owner: String,
    initial_balance_cents: i64,
}

#[derive(Deserialize, Serialize)]
struct Amount {
    amount_cents: i64,
}

#[derive(Deserialize, Serialize)]
struct PlaceOrder {
    account_id: Uuid,
    amount_cents: i64,
}

/// The command made idempotent by the request's `Idempotency-Key` header, if it has one: any
/// text of up to 255 bytes, recorded with a fingerprint of what the request asked (`target`
/// and `body`), so that the key sent again with another body is refused (422) rather than
/// answered with the first outcome.
fn idempotent<'r, A: Aggregate>(
    command: eventsourcing_kit::repository::Command<'r, A>,
    headers: &axum::http::HeaderMap,
    target: &str,
    body: &impl Serialize,
) -> Result<eventsourcing_kit::repository::Command<'r, A>, ApiError> {
    let Some(key) = headers.get("idempotency-key") else {
        return Ok(command);
    };
    let invalid = |why: String| ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        message: format!("the Idempotency-Key header {why}"),
    };
    let key = key
        .to_str()
        .map_err(|_| invalid("must be visible ASCII".into()))?;
    let key: RequestId = key.parse().map_err(|e: Error| invalid(e.to_string()))?;
    let fingerprint = Fingerprint::of(&(target, body)).map_err(|e| invalid(e.to_string()))?;
    Ok(command.request_id(key).fingerprint(fingerprint))
}

/// Opens an account under a new id; with an `Idempotency-Key` header, a request sent again
/// answers with the account the first one opened.
async fn open_account(
    State(app): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    Json(body): Json<OpenAccount>,
) -> ApiResult {
    let command = app.accounts.command(Uuid::new_v4()).create_only();
    let done = idempotent(command, &headers, "open", &body)?
        .run(|account| account.open(&body.owner, body.initial_balance_cents))
        .await
        .map_err(command_error)?;
    let body = json!({ "id": done.aggregate_id, "version": done.version, "repeated": done.repeated });
    app.answer(StatusCode::CREATED, body, done.position).await
}

/// A deposit; with an `Idempotency-Key` header, a request sent again (a client that timed out
/// and retried) returns the first deposit's version instead of depositing twice.
async fn deposit(
    State(app): State<Arc<AppState>>,
    Path(id): Path<Uuid>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Amount>,
) -> ApiResult {
    let command = app.accounts.command(id).must_exist();
    let done = idempotent(command, &headers, &format!("deposit {id}"), &body)?
        .run(|account| account.deposit(body.amount_cents))
        .await
        .map_err(command_error)?;
    let body = json!({ "version": done.version, "repeated": done.repeated });
    app.answer(StatusCode::OK, body, done.position).await
}

/// A withdrawal; with an `Idempotency-Key` header, a request sent again returns the first
/// one's outcome, its refusal too (409), even if the account could pay it now.
async fn withdraw(
    State(app): State<Arc<AppState>>,
    Path(id): Path<Uuid>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Amount>,
) -> ApiResult {
    let command = app.accounts.command(id).must_exist();
    let done = idempotent(command, &headers, &format!("withdraw {id}"), &body)?
        .run(|account| account.withdraw(body.amount_cents))
        .await
        .map_err(command_error)?;
    let body = json!({ "version": done.version, "repeated": done.repeated });
    app.answer(StatusCode::OK, body, done.position).await
}

async fn get_account(State(app): State<Arc<AppState>>, Path(id): Path<Uuid>) -> ApiResult {
    let account = app.accounts.load(id).await.map_err(load_error)?;
    let state = account.state();
    Ok((
        StatusCode::OK,
        Json(json!({
            "id": id,
            "owner": state.owner_name,
            "balance_cents": state.balance_cents,
            "version": account.version()
        })),
    ))
}

/// Places an order under a new id; with an `Idempotency-Key` header, a request sent again
/// answers with the order the first one placed.
async fn place_order(
    State(app): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    Json(body): Json<PlaceOrder>,
) -> ApiResult {
    // An order on an account that does not exist could never be paid: refuse it now.
    if !app.accounts.exists(body.account_id).await.map_err(load_error)? {
        let missing = format!("account {} does not exist", body.account_id);
        return Err(load_error(Error::InvalidInput(missing)));
    }
    let command = app.orders.command(Uuid::new_v4()).create_only();
    let done = idempotent(command, &headers, "place", &body)?
        .run(|order| order.place(body.account_id, body.amount_cents))
        .await
        .map_err(command_error)?;
    let body = json!({ "id": done.aggregate_id, "version": done.version, "repeated": done.repeated });
    app.answer(StatusCode::CREATED, body, done.position).await
}

/// Two commands, the account's first: the money moves only if the account has it, and the
/// order is marked paid only once it has moved.
async fn pay_order(State(app): State<Arc<AppState>>, Path(id): Path<Uuid>) -> ApiResult {
    let mut order = app.orders.load(id).await.map_err(load_error)?;
    let (account_id, amount) = (order.state().account_id, order.state().amount_cents);
    // Decided on the loaded order, which is never saved, so that an order already paid or
    // cancelled is refused before any money moves.
    order
        .pay()
        .map_err(|why| command_error(CommandError::Rejected(why)))?;
    let withdrawn = app
        .accounts
        .command(account_id)
        .must_exist()
        .run(|account| account.withdraw(amount))
        .await
        .map_err(command_error)?;
    match app.orders.command(id).must_exist().run(|order| order.pay()).await {
        Ok(paid) => {
            let body = json!({ "version": paid.version, "account_version": withdrawn.version });
            app.answer(StatusCode::OK, body, paid.position.max(withdrawn.position))
                .await
        }
        // A store failure may have come after the order's events were written: whether it
        // is paid is not known, so the money stays where it is for someone to look at.
        Err(error @ CommandError::Failed(_)) => {
            eprintln!(
                "order {id}: {amount} cents taken from account {account_id}, marking it paid failed: {error}"
            );
            Err(command_error(error))
        }
        // Another request paid or cancelled the order since the check above (nothing of ours
        // was written): the money goes back, or the account would pay for nothing.
        Err(error) => {
            let refund = app
                .accounts
                .command(account_id)
                .must_exist()
                .run(|account| account.deposit(amount))
                .await;
            if let Err(refund) = refund {
                eprintln!("order {id}: refunding {amount} cents to account {account_id} failed: {refund}");
            }
            Err(command_error(error))
        }
    }
}

async fn cancel_order(State(app): State<Arc<AppState>>, Path(id): Path<Uuid>) -> ApiResult {
    let done = app
        .orders
        .command(id)
        .must_exist()
        .run(|order| order.cancel())
        .await
        .map_err(command_error)?;
    let body = json!({ "version": done.version });
    app.answer(StatusCode::OK, body, done.position).await
}

async fn get_order(State(app): State<Arc<AppState>>, Path(id): Path<Uuid>) -> ApiResult {
    let order = app.orders.load(id).await.map_err(load_error)?;
    let state = order.state();
    Ok((
        StatusCode::OK,
        Json(json!({
            "id": id,
            "account_id": state.account_id,
            "amount_cents": state.amount_cents,
            "status": state.status,
            "version": order.version()
        })),
    ))
}

/// The number of accounts and their total balance, from the read model.
async fn summary(State(app): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let summary = app.queries.summary().await.map_err(load_error)?;
    // The total can pass i64::MAX cents, beyond the numbers of `serde_json::Value`: written
    // out as digits, it is a JSON number all the same, exact.
    let body = format!(
        r#"{{"accounts":{},"total_balance_cents":{}}}"#,
        summary.accounts, summary.total_balance_cents
    );
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
}

/// The orders of one status (`placed`, `paid`, `cancelled`), from the read model.
async fn orders_by_status(State(app): State<Arc<AppState>>, Path(status): Path<String>) -> ApiResult {
    let status = match status.as_str() {
        "placed" => OrderStatus::Placed,
        "paid" => OrderStatus::Paid,
        "cancelled" => OrderStatus::Cancelled,
        other => {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!("no order status `{other}`: placed, paid or cancelled"),
            })
        }
    };
    let orders = app.queries.orders(status).await.map_err(load_error)?;
    Ok((StatusCode::OK, Json(orders)))
}
