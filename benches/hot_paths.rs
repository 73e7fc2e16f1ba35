//! The per-event and per-load costs behind the load-time table: event decoding, apply
//! dispatch, snapshot serialization and restore, and a snapshot load on the in-memory stores.
//!
//! ```text
//! cargo bench -p eventsourcing-kit --bench hot_paths
//! ```

#[path = "../examples/domain/account.rs"]
#[allow(dead_code)]
mod account;

use account::{Account, AccountEvent, AccountOpened, MoneyDeposited};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::AggregateEvent;

fn events(c: &mut Criterion) {
    let mut group = c.benchmark_group("event");
    group.throughput(Throughput::Elements(1));
    let payload = AccountEvent::from(MoneyDeposited { amount: 1_250 })
        .to_json()
        .unwrap();
    group.bench_function("decode MoneyDeposited", |b| {
        b.iter(|| {
            AccountEvent::from_json(
                std::hint::black_box("MoneyDeposited"),
                std::hint::black_box(&payload),
            )
            .unwrap()
        })
    });
    let event = AccountEvent::from(MoneyDeposited { amount: 1_250 });
    group.bench_function("apply dispatch", |b| {
        let mut state = Account::default();
        b.iter(|| state.apply_event(std::hint::black_box(&event)))
    });
    group.bench_function("encode MoneyDeposited", |b| {
        b.iter(|| std::hint::black_box(&event).to_json().unwrap())
    });
    group.finish();
}

fn snapshots(c: &mut Criterion) {
    let state = Account {
        owner_name: "Ada Lovelace".into(),
        balance: 123_456_789,
        transaction_count: 99_999,
    };
    let json = serde_json::to_string(&state).unwrap();
    let mut group = c.benchmark_group("snapshot state");
    group.bench_function("serialize", |b| {
        b.iter(|| serde_json::to_string(std::hint::black_box(&state)).unwrap())
    });
    group.bench_function("restore", |b| {
        b.iter(|| serde_json::from_str::<Account>(std::hint::black_box(&json)).unwrap())
    });
    group.finish();
}

fn repository(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let events = InMemoryEventStore::new();
    let snapshots = InMemorySnapshotStore::new();
    let repo = Repository::<Account>::new(events.clone())
        .with_snapshots(snapshots.clone(), SnapshotPolicy::manual());
    let id = Uuid::new_v4();
    runtime.block_on(async {
        let mut root = repo.create_new(id);
        root.record(AccountOpened {
            owner_name: "Ada".into(),
            initial_balance: 0,
        });
        for _ in 0..9_999 {
            root.record(MoneyDeposited { amount: 100 });
        }
        repo.save(&mut root).await.unwrap();
        repo.create_snapshot(&root).await.unwrap();
    });
    let plain = Repository::<Account>::new(events.clone());
    let mut group = c.benchmark_group("in-memory load, 10,000 events");
    group.bench_function("snapshot at head", |b| {
        b.iter(|| runtime.block_on(repo.load(id)).unwrap())
    });
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("full replay", |b| {
        b.iter(|| runtime.block_on(plain.load(id)).unwrap())
    });
    group.finish();

    let mut group = c.benchmark_group("in-memory save");
    group.bench_function("1 event", |b| {
        b.iter_batched(
            || {
                let mut root = AggregateRoot::<Account>::new(Uuid::new_v4());
                root.record(AccountOpened {
                    owner_name: "Ada".into(),
                    initial_balance: 0,
                });
                root
            },
            |mut root| runtime.block_on(plain.save(&mut root)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, events, snapshots, repository);
criterion_main!(benches);
