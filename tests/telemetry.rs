//! The `metrics` feature: snapshot counters, load and save histograms and subscription
//! counters reach the installed recorder with their documented names and labels, and a load
//! of a stream shorter than the threshold is not a miss.

use eventsourcing_kit::prelude::*;
use eventsourcing_kit::projection::{InMemoryReadModel, MemoryProjection, Projection};
use eventsourcing_kit::subscription::HandlerError;
use eventsourcing_kit::MissReason;
use metrics_exporter_prometheus::PrometheusBuilder;

#[event(aggregate = "Meter")]
pub struct Ticked {
    pub by: u64,
}

#[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
#[aggregate(name = "Meter", events(Ticked))]
pub struct Meter {
    pub total: u64,
}

impl Apply<Ticked> for Meter {
    fn apply(&mut self, e: &Ticked) {
        self.total += e.by;
    }
}

#[derive(Clone, Default)]
struct Count(u64);

impl MemoryProjection for Count {
    fn apply(&mut self, events: &[StoredEvent]) -> Result<(), HandlerError> {
        self.0 += events.len() as u64;
        Ok(())
    }
}

async fn save_ticks(repo: &Repository<Meter>, id: Uuid, n: u64) {
    let mut meter = repo.load_or_create(id).await.unwrap();
    for _ in 0..n {
        meter.record(Ticked { by: 1 });
    }
    repo.save(&mut meter).await.unwrap();
}

#[test]
fn measurements_reach_the_recorder() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let scrape = recorder.handle();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The recorder is this thread's for the closure, and the runtime runs every task on it.
    let repo = metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let events = InMemoryEventStore::new();
            let snapshots = InMemorySnapshotStore::new();
            let repo = Repository::<Meter>::new(events.clone())
                .with_snapshots(snapshots.clone(), SnapshotPolicy::every(10).unwrap());
            let (short, long) = (Uuid::new_v4(), Uuid::new_v4());
            save_ticks(&repo, short, 3).await;
            save_ticks(&repo, long, 12).await; // crosses 10: a snapshot at 12
            repo.load(short).await.unwrap(); // none due yet
            repo.load(long).await.unwrap(); // a hit
            snapshots.clear();
            repo.load(long).await.unwrap(); // due, and gone: a miss
                                            // A conflict, then a command that outlasts it; and a command the aggregate refuses.
            let mut stale = repo.load(short).await.unwrap();
            save_ticks(&repo, short, 1).await;
            stale.record(Ticked { by: 1 });
            assert!(repo.save(&mut stale).await.unwrap_err().is_conflict());
            repo.command(short)
                .run(|m| {
                    m.record(Ticked { by: 1 });
                    Ok::<_, Error>(())
                })
                .await
                .unwrap();
            let refused = repo.command(short).run(|_| Err::<(), _>("no more ticks")).await;
            assert!(refused.is_err());
            let projection =
                Projection::new("meters", events, InMemoryReadModel::new(Count::default())).unwrap();
            projection.catch_up(|_| {}).await.unwrap();
            repo
        })
    });

    let metrics = repo.metrics();
    assert_eq!(
        metrics.not_due("Meter"),
        5,
        "the short stream's loads (one, and four by the conflict and the commands) are no miss"
    );
    assert_eq!(metrics.hits("Meter"), 1);
    assert_eq!(metrics.misses("Meter", MissReason::Missing), 1);
    assert_eq!(metrics.total_misses("Meter"), 1);

    let text = scrape.render();
    for line in [
        r#"eventsource_snapshot_not_due_total{aggregate_type="Meter"} 5"#,
        r#"eventsource_snapshot_hits_total{aggregate_type="Meter"} 1"#,
        r#"eventsource_snapshot_misses_total{aggregate_type="Meter",reason="missing"} 1"#,
        r#"eventsource_snapshot_writes_total{aggregate_type="Meter"} 1"#,
        r#"eventsource_subscription_events_total{subscription="meters"} 17"#,
        r#"eventsource_load_seconds_count{aggregate_type="Meter",snapshot="used"} 1"#,
        r#"eventsource_save_seconds_count{aggregate_type="Meter"} 4"#,
        r#"eventsource_events_written_total{aggregate_type="Meter"} 17"#,
        r#"eventsource_conflicts_total{aggregate_type="Meter"} 1"#,
        r#"eventsource_commands_total{aggregate_type="Meter",outcome="executed"} 1"#,
        r#"eventsource_commands_total{aggregate_type="Meter",outcome="rejected"} 1"#,
    ] {
        assert!(text.contains(line), "the scrape lacks `{line}`:\n{text}");
    }
    // The loads replayed 3 events, none after the snapshot at 12, then 12 without it; the
    // conflict's and the commands' loads of the short stream 3, 3, 4 and 5.
    assert!(
        text.contains(r#"eventsource_load_events_replayed_sum{aggregate_type="Meter"} 30"#),
        "{text}"
    );
}
