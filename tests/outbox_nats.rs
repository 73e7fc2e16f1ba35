//! The outbox relay to NATS JetStream (feature `nats`): events appended while the relay, a
//! process of its own, is killed (SIGKILL) and started again, and while the broker is killed
//! and started again on its store, reach the stream each exactly once, each aggregate's in
//! version order, counted on the broker's side.
//!
//! The test starts a NATS server of its own (`nats-server`, with JetStream, on a free port
//! and a directory of its own); without the binary it says it is skipped.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use eventsourcing_kit::backend;
use eventsourcing_kit::outbox::NatsRelay;
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::subscription::Consumer;

/// Set in a relay process: the stores' URL and the broker's.
const RELAY: &str = "EVENTSOURCE_TEST_RELAY_STORES";
const BROKER: &str = "EVENTSOURCE_TEST_RELAY_BROKER";
const STREAM: &str = "EVENTS";
const PREFIX: &str = "shop.events";

#[event(aggregate = "Cart")]
pub struct ItemAdded {
    pub n: u32,
}

#[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
#[aggregate(name = "Cart", events(ItemAdded))]
pub struct Cart {
    pub items: u32,
}

impl Apply<ItemAdded> for Cart {
    fn apply(&mut self, e: &ItemAdded) {
        self.items += e.n;
    }
}

/// A NATS server of the test's own, on `port`, keeping its streams in `dir`.
struct Broker {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Broker {
    fn start(dir: &Path) -> Option<Broker> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let mut broker = Broker {
            port,
            dir: dir.to_owned(),
            child: None,
        };
        broker.restart().then_some(broker)
    }

    /// Starts the server (again), on its port and directory; whether it listens.
    fn restart(&mut self) -> bool {
        let Ok(child) = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        else {
            return false;
        };
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A relay process: the relay until its standard input closes.
async fn relay(stores_url: &str, broker_url: &str) {
    let stores = backend::open(stores_url).await.unwrap();
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(broker_url)
        .await
        .unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let subscription = stores
        .subscription("shop-relay")
        .unwrap()
        .poll_interval(Duration::from_millis(20))
        .unwrap()
        .lease(Duration::from_millis(700))
        .unwrap()
        .retry(1_000, Duration::from_millis(50), Duration::from_millis(200))
        .unwrap();
    let relay = NatsRelay::new(subscription, jetstream, PREFIX).unwrap();
    let stop = common::stdin_closed();
    println!("READY");
    relay.run(stop).await.unwrap();
}

fn start_relay(test: &str, stores_url: &str, broker_url: &str) -> Child {
    common::spawn_worker(test, &[(RELAY, stores_url), (BROKER, broker_url)], |_| {})
}

/// Adds one item to each cart, `rounds` times.
async fn traffic(carts: &Repository<Cart>, ids: &[Uuid], rounds: u32) {
    for _ in 0..rounds {
        for id in ids {
            carts
                .command(*id)
                .run(|cart| {
                    cart.record(ItemAdded { n: 1 });
                    Ok::<_, Error>(())
                })
                .await
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_reaches_the_broker_once_through_relay_and_broker_restarts() {
    const TEST: &str = "each_event_reaches_the_broker_once_through_relay_and_broker_restarts";
    if let (Ok(stores), Ok(broker)) = (std::env::var(RELAY), std::env::var(BROKER)) {
        return relay(&stores, &broker).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(mut broker) = Broker::start(&dir.path().join("nats")) else {
        println!("skipped {TEST}: no nats-server to start");
        return;
    };
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(broker.url())
        .await
        .unwrap();
    let jetstream = async_nats::jetstream::new(client);
    NatsRelay::ensure_stream(&jetstream, STREAM, PREFIX, Duration::from_secs(120))
        .await
        .unwrap();

    let stores_url = format!("sqlite:{}", dir.path().join("shop.db").display());
    let stores = backend::open(&stores_url).await.unwrap();
    let carts = stores.repository::<Cart>();
    let ids: Vec<Uuid> = (0..12).map(|_| Uuid::new_v4()).collect();

    let mut relay = start_relay(TEST, &stores_url, &broker.url());
    traffic(&carts, &ids, 5).await;
    // The relay killed mid-traffic and started again.
    relay.kill().unwrap();
    relay.wait().unwrap();
    traffic(&carts, &ids, 5).await;
    let mut relay = start_relay(TEST, &stores_url, &broker.url());
    traffic(&carts, &ids, 5).await;
    // The broker killed and started again on its store, while the relay publishes.
    broker.kill();
    traffic(&carts, &ids, 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(broker.restart(), "the broker did not start again");
    traffic(&carts, &ids, 5).await;

    let events: Vec<StoredEvent> = stores.events.read_all(0).try_collect().await.unwrap();
    assert_eq!(events.len(), 12 * 25);
    let mut stream = jetstream.get_stream(STREAM).await.unwrap();
    let mut stored = 0;
    for _ in 0..600 {
        stored = stream.info().await.map(|i| i.state.messages).unwrap_or(0);
        if stored >= events.len() as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(relay.stdin.take());
    let _ = relay.wait();
    assert_eq!(stored, events.len() as u64, "every event once on the broker");

    let info = stream.info().await.unwrap().clone();
    let mut ids_seen = HashSet::new();
    let mut versions: HashMap<String, Vec<u64>> = HashMap::new();
    for sequence in info.state.first_sequence..=info.state.last_sequence {
        let message = stream.get_raw_message(sequence).await.unwrap();
        let header = |name: &str| message.headers.get(name).unwrap().as_str().to_owned();
        assert!(
            ids_seen.insert(header("Nats-Msg-Id")),
            "an event twice on the broker"
        );
        let version: u64 = header("Eventsource-Aggregate-Version").parse().unwrap();
        versions
            .entry(message.subject.to_string())
            .or_default()
            .push(version);
    }
    let expected: HashSet<String> = events.iter().map(|e| e.event_id.to_string()).collect();
    assert_eq!(ids_seen, expected, "the broker holds exactly the feed's events");
    assert_eq!(versions.len(), 12, "one subject per cart");
    for (subject, versions) in versions {
        assert!(subject.starts_with("shop.events.Cart."), "{subject}");
        assert_eq!(versions, (1..=25).collect::<Vec<u64>>(), "{subject} out of order");
    }
}
