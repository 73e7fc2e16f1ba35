//! The snapshotting tutorial's exercise: add snapshotting to a counter and measure the improvement.
//!
//! ```text
//! cargo run --release --example snapshotting_exercise
//! ```

use std::time::Instant;

use eventsourcing_kit::prelude::*;

#[event(aggregate = "Counter")]
pub struct CounterIncremented {}

#[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
#[aggregate(name = "Counter", schema_version = 1, events(CounterIncremented))]
pub struct Counter {
    pub value: u64,
}

impl Apply<CounterIncremented> for Counter {
    fn apply(&mut self, _: &CounterIncremented) {
        self.value += 1;
    }
}

/// The average time of `iterations` loads, in milliseconds.
async fn average_load_ms(repo: &Repository<Counter>, id: Uuid, iterations: u32) -> Result<f64, Error> {
    let start = Instant::now();
    for _ in 0..iterations {
        let counter = repo.load(id).await?;
        assert_eq!(counter.state().value, 500);
    }
    Ok(start.elapsed().as_secs_f64() * 1000.0 / f64::from(iterations))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    println!("=== Exercise: Add Snapshotting ===\n");
    let event_store = InMemoryEventStore::new();
    let snapshot_store = InMemorySnapshotStore::new();

    // Step 1: a repository without snapshots.
    let repo_no_snap = Repository::<Counter>::new(event_store.clone());

    // Step 2: a counter with 500 increments.
    let counter_id = Uuid::new_v4();
    let mut counter = repo_no_snap.create_new(counter_id);
    for _ in 0..500 {
        counter.record(CounterIncremented {});
    }
    repo_no_snap.save(&mut counter).await?;
    println!(
        "Counter at version {} with value {}",
        counter.version(),
        counter.state().value
    );

    // Step 3: the average of 20 loads without a snapshot.
    let without = average_load_ms(&repo_no_snap, counter_id, 20).await?;
    println!("Average load WITHOUT snapshot: {without:.4}ms");

    // Step 4: a repository with snapshots.
    let repo_with_snap = Repository::<Counter>::new(event_store.clone())
        .with_snapshots(snapshot_store.clone(), SnapshotPolicy::every(100)?);

    // Step 5: a snapshot of the loaded counter.
    let loaded = repo_with_snap.load(counter_id).await?;
    let snapshot = repo_with_snap.create_snapshot(&loaded).await?;
    println!("Snapshot created at version {}", snapshot.version);

    // Step 6: the average of 20 loads with the snapshot, and the improvement.
    let with = average_load_ms(&repo_with_snap, counter_id, 20).await?;
    println!("Average load WITH snapshot: {with:.4}ms");
    println!("Improvement: {:.1}x faster", without / with);
    Ok(())
}
