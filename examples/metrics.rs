//! The library's metrics exported to Prometheus and its spans to OpenTelemetry: a few saves
//! and loads of the bank account, a projection catching up, then what a Prometheus scrape
//! returns and the spans the OpenTelemetry exporter received.
//!
//! ```text
//! cargo run -p eventsourcing-kit --example metrics --features metrics
//! ```

#[path = "domain/account.rs"]
mod account;

use account::{Account, AccountCommands};
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::projection::{InMemoryReadModel, MemoryProjection, Projection};
use eventsourcing_kit::subscription::HandlerError;
use metrics_exporter_prometheus::PrometheusBuilder;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt as _;

/// Events seen, the read model of the projection.
#[derive(Clone, Default)]
struct Seen(u64);

impl MemoryProjection for Seen {
    fn apply(&mut self, events: &[StoredEvent]) -> Result<(), HandlerError> {
        self.0 += events.len() as u64;
        Ok(())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Metrics: the Prometheus recorder, rendered below as a scrape would see it.
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    eventsourcing_kit::telemetry::describe();
    // Spans: through tracing-opentelemetry into an in-memory OpenTelemetry exporter.
    let spans = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("bank"));
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))?;

    let events = InMemoryEventStore::new();
    let accounts = Repository::<Account>::new(events.clone())
        .with_snapshots(InMemorySnapshotStore::new(), SnapshotPolicy::every(10)?);
    // One long-lived account (snapshots due) and one short one (none due yet).
    let (long, short) = (Uuid::new_v4(), Uuid::new_v4());
    for (id, deposits) in [(long, 24), (short, 3)] {
        let mut account = accounts.create_new(id);
        account.open("Ada", 10_000)?;
        accounts.save(&mut account).await?;
        for _ in 0..deposits {
            account.deposit(500)?;
            accounts.save(&mut account).await?;
        }
    }
    for _ in 0..3 {
        accounts.load(long).await?;
        accounts.load(short).await?;
    }
    let projection = Projection::new("seen", events, InMemoryReadModel::new(Seen::default()))?;
    projection.catch_up(|_| {}).await?;

    println!("A Prometheus scrape:\n");
    for line in prometheus.render().lines().filter(|l| l.contains("eventsource_")) {
        println!("{line}");
    }
    provider.force_flush()?;
    let finished = spans.get_finished_spans()?;
    println!(
        "\nSpans received by the OpenTelemetry exporter: {}",
        finished.len()
    );
    let mut names: Vec<&str> = finished.iter().map(|s| s.name.as_ref()).collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        let count = finished.iter().filter(|s| s.name == name).count();
        println!("  {name}: {count}");
    }
    Ok(())
}
