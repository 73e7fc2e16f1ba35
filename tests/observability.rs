//! Spans and their fields, as a tracing subscriber sees them.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::*;
use eventsourcing_kit::prelude::*;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Every span opened, in order: its name and the fields recorded on it, and where the span
/// that holds each id (ids are reused once a span closes) sits in that list.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Recorded>>);

#[derive(Default)]
struct Recorded {
    opened: Vec<(String, HashMap<String, String>)>,
    live: HashMap<u64, usize>,
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut spans = self.0.lock().unwrap();
        let at = spans.opened.len();
        spans.live.insert(id.into_u64(), at);
        spans.opened.push((attrs.metadata().name().to_owned(), fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut spans = self.0.lock().unwrap();
        let at = spans.live[&id.into_u64()];
        values.record(&mut Fields(&mut spans.opened[at].1));
    }
}

impl Spans {
    fn named(&self, name: &str) -> Vec<HashMap<String, String>> {
        let spans = self.0.lock().unwrap();
        spans
            .opened
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
            .collect()
    }
}

#[test]
fn loads_saves_and_snapshots_are_spans_with_their_fields() {
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let snapshots = InMemorySnapshotStore::new();
            let repo = Repository::<Account>::new(InMemoryEventStore::new())
                .with_snapshots(snapshots.clone(), SnapshotPolicy::every(10).unwrap());
            let id = Uuid::new_v4();
            let mut account = opened(id, 11);
            repo.save(&mut account).await.unwrap();
            account.record(MoneyDeposited { amount: 100 });
            repo.save(&mut account).await.unwrap();
            repo.load(id).await.unwrap();
            repo.create_snapshot(&account).await.unwrap();
            assert!(repo.delete_snapshot(id).await.unwrap());
            repo.invalidate_snapshots(Some(1)).await.unwrap();
        });
    });

    let load = &spans.named("eventsource.repository.load")[0];
    assert_eq!(load["aggregate.type"], "\"Account\"");
    assert_eq!(load["snapshot.used"], "true");
    assert_eq!(load["snapshot.version"], "12");
    assert_eq!(load["events.replayed"], "1");
    assert_eq!(load["version"], "13");
    let saves = spans.named("eventsource.repository.save");
    assert_eq!(saves.len(), 2);
    assert_eq!(saves[0]["events.saved"], "12");
    for name in [
        "eventsource.repository.create_snapshot",
        "eventsource.snapshot.get",
        "eventsource.snapshot.save",
        "eventsource.snapshot.delete",
        "eventsource.snapshot.delete_by_type",
    ] {
        let found = spans.named(name);
        assert!(!found.is_empty(), "no {name} span");
        assert!(
            found[0].contains_key("aggregate.type"),
            "{name} has no aggregate.type"
        );
    }
}

#[test]
fn commands_and_batches_are_spans_with_their_outcome_and_error() {
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let events = InMemoryEventStore::new();
            let repo = Repository::<Account>::new(events.clone());
            let id = Uuid::new_v4();
            repo.command(id)
                .request_id("open-1".parse::<eventsourcing_kit::request::RequestId>().unwrap())
                .run(|a| a.open("Ada", 1_000))
                .await
                .unwrap();
            let refused = repo.command(id).run(|a| a.withdraw(100_000)).await;
            assert!(refused.is_err());
            let subscription = eventsourcing_kit::subscription::Subscription::new(
                "failing",
                Arc::new(events),
                Arc::new(eventsourcing_kit::InMemorySubscriptionStore::new()),
            )
            .unwrap()
            .retry(1, std::time::Duration::ZERO, std::time::Duration::ZERO)
            .unwrap();
            let failed = subscription
                .catch_up(|_: &[StoredEvent]| Err::<(), _>("the handler is broken".into()))
                .await;
            assert!(failed.is_err());
        });
    });
    let commands = spans.named("eventsource.command");
    assert_eq!(commands.len(), 2);
    assert_eq!(commands[0]["outcome"], "\"executed\"");
    assert_eq!(commands[0]["request.id"], "\"open-1\"");
    assert_eq!(commands[0]["attempts"], "1");
    assert_eq!(commands[1]["outcome"], "\"rejected\"");
    let batches = spans.named("eventsource.subscription.batch");
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0]["subscription"], "failing");
    assert_eq!(batches[0]["events"], "1");
    assert_eq!(batches[0]["error"], "the handler is broken");
}
