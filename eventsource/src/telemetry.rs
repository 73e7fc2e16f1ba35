//! The library's measurements through the [`metrics`](https://docs.rs/metrics) facade
//! (feature `metrics`), for Prometheus, OpenTelemetry or any other recorder a program
//! installs. Without the feature, or without a recorder, nothing is sent; the in-process
//! counters ([`Repository::metrics`](crate::Repository::metrics),
//! [`Subscription::metrics`](crate::subscription::Subscription::metrics)) count either way.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `eventsource_snapshot_hits_total` | counter | `aggregate_type` | loads that started from a snapshot |
//! | `eventsource_snapshot_migrated_total` | counter | `aggregate_type` | loads that started from a snapshot of an older schema, migrated |
//! | `eventsource_snapshot_misses_total` | counter | `aggregate_type`, `reason` | loads that replayed every event although a snapshot was due; `reason` is a [`MissReason`](crate::MissReason) (`missing`, `schema_mismatch`, ...) |
//! | `eventsource_snapshot_not_due_total` | counter | `aggregate_type` | loads of streams shorter than the threshold, which have no snapshot yet by design |
//! | `eventsource_snapshot_writes_total` | counter | `aggregate_type` | snapshots written |
//! | `eventsource_snapshot_write_failures_total` | counter | `aggregate_type` | snapshot writes that failed (the save succeeded) |
//! | `eventsource_load_seconds` | histogram | `aggregate_type`, `snapshot` (`used`, `none`) | time of a successful load |
//! | `eventsource_load_events_replayed` | histogram | `aggregate_type` | events a load applied |
//! | `eventsource_save_seconds` | histogram | `aggregate_type` | time of a successful save, its snapshot included in `sync` mode |
//! | `eventsource_snapshot_queue_depth` | gauge | `aggregate_type` | background snapshots waiting to be written (the last queue of the type to change sets it: one repository per type in `Background` mode reads true) |
//! | `eventsource_subscription_events_total` | counter | `subscription` | events handled (or committed, for a projection) |
//! | `eventsource_subscription_retries_total` | counter | `subscription` | failed batches tried again |
//! | `eventsource_subscription_failed_batches_total` | counter | `subscription` | batches that failed every attempt |
//! | `eventsource_subscription_dead_letters_total` | counter | `subscription` | events given up on |
//! | `eventsource_subscription_restarts_total` | counter | `subscription` | times a supervised subscription was started again after it stopped on an error |
//! | `eventsource_subscription_lag` | gauge | `subscription` | events after the last batch, shown by the feed or held back: measured at most once a second (a count query, made with the feature on whether or not a recorder is installed) |
//! | `eventsource_subscription_held_back` | gauge | `subscription` | events stored after the last batch that the feed does not show yet, because a transaction that may append below them runs (PostgreSQL; logged with the transaction's process, database and age) |
//!
//! [`describe`] gives the recorder each metric's description and unit. The metrics example
//! (`cargo run --example metrics --features metrics`) exports them to Prometheus and prints
//! a scrape.

use std::time::Duration;

/// Gives the installed recorder the description and unit of every metric above; call it once
/// after installing the recorder. Without the `metrics` feature it does nothing.
pub fn describe() {
    #[cfg(feature = "metrics")]
    facade::describe();
}

/// A snapshot counter of [`SnapshotMetrics`](crate::SnapshotMetrics), sent on.
///
/// `counter` is the metric's name, `reason` the value of its `reason` label if it has one.
pub(crate) fn snapshot(aggregate_type: &'static str, counter: &'static str, reason: Option<&'static str>) {
    #[cfg(feature = "metrics")]
    facade::snapshot(aggregate_type, counter, reason);
    #[cfg(not(feature = "metrics"))]
    let _ = (aggregate_type, counter, reason);
}

/// A successful load.
pub(crate) fn load(aggregate_type: &'static str, took: Duration, replayed: u64, snapshot_used: bool) {
    #[cfg(feature = "metrics")]
    facade::load(aggregate_type, took, replayed, snapshot_used);
    #[cfg(not(feature = "metrics"))]
    let _ = (aggregate_type, took, replayed, snapshot_used);
}

/// A successful save.
pub(crate) fn save(aggregate_type: &'static str, took: Duration) {
    #[cfg(feature = "metrics")]
    ::metrics::histogram!("eventsource_save_seconds", "aggregate_type" => aggregate_type).record(took);
    #[cfg(not(feature = "metrics"))]
    let _ = (aggregate_type, took);
}

/// The background snapshot queue's depth.
pub(crate) fn queue_depth(aggregate_type: &'static str, depth: usize) {
    #[cfg(feature = "metrics")]
    ::metrics::gauge!("eventsource_snapshot_queue_depth", "aggregate_type" => aggregate_type)
        .set(depth as f64);
    #[cfg(not(feature = "metrics"))]
    let _ = (aggregate_type, depth);
}

/// What a subscription did.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(feature = "metrics"), allow(dead_code))] // read by the facade only
pub(crate) enum SubscriptionEvent {
    Handled(u64),
    Retry,
    FailedBatch,
    DeadLetter,
    Restart,
    /// An event out of order, of this kind (`duplicate`, `gap`, `reorder`).
    Disorder(&'static str),
    Lag(u64),
    HeldBack(u64),
}

/// A subscription's counters and lag, sent on.
pub(crate) fn subscription(name: &str, event: SubscriptionEvent) {
    #[cfg(feature = "metrics")]
    facade::subscription(name, event);
    #[cfg(not(feature = "metrics"))]
    let _ = (name, event);
}

/// A command's outcome: `executed`, `repeated` (answered by its request id),
/// `rejected`, `exists`, `contended`, `mismatch` or `failed`.
pub(crate) fn command(aggregate_type: &'static str, outcome: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("eventsource_commands_total", "aggregate_type" => aggregate_type, "outcome" => outcome)
        .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (aggregate_type, outcome);
}

/// A save that met another writer's events (a conflict), of a stream of `aggregate_type`.
pub(crate) fn conflict(aggregate_type: &str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("eventsource_conflicts_total", "aggregate_type" => aggregate_type.to_owned())
        .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = aggregate_type;
}

/// `events` events saved to streams of `aggregate_type`.
pub(crate) fn events_written(aggregate_type: &'static str, events: u64) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("eventsource_events_written_total", "aggregate_type" => aggregate_type)
        .increment(events);
    #[cfg(not(feature = "metrics"))]
    let _ = (aggregate_type, events);
}

/// A load or save (`operation`) that failed on the store: counted by kind, `transient`,
/// `permanent` or `corrupt`, when `error` is one of those (a conflict or a refused input is
/// no store error).
pub(crate) fn store_error(operation: &'static str, error: &crate::error::Error) {
    use crate::error::Error;
    let kind = match error {
        Error::Store { transient: true, .. } => "transient",
        Error::Store { .. } => "permanent",
        Error::Corrupt { .. } => "corrupt",
        _ => return,
    };
    #[cfg(feature = "metrics")]
    ::metrics::counter!("eventsource_store_errors_total", "operation" => operation, "kind" => kind)
        .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (operation, kind);
}

/// An event the outbox relay `relay` published.
#[cfg(feature = "nats")]
pub(crate) fn outbox_published(relay: &str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("eventsource_outbox_published_total", "relay" => relay.to_owned()).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = relay;
}

/// A publish of the outbox relay `relay` that failed (it is tried again).
#[cfg(feature = "nats")]
pub(crate) fn outbox_failed(relay: &str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("eventsource_outbox_failures_total", "relay" => relay.to_owned()).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = relay;
}

/// Whether measurements are sent: with the `metrics` feature only, so that the work of
/// measuring (a lag query) is skipped without it.
pub(crate) const ENABLED: bool = cfg!(feature = "metrics");

#[cfg(feature = "metrics")]
mod facade {
    use std::time::Duration;

    use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit};

    use super::SubscriptionEvent;

    pub(super) fn describe() {
        describe_counter!(
            "eventsource_snapshot_hits_total",
            "Loads that started from a snapshot"
        );
        describe_counter!(
            "eventsource_snapshot_migrated_total",
            "Loads that started from a snapshot of an older schema version, migrated"
        );
        describe_counter!(
            "eventsource_snapshot_misses_total",
            "Loads that replayed every event although a snapshot was due, by reason"
        );
        describe_counter!(
            "eventsource_snapshot_not_due_total",
            "Loads of streams shorter than the snapshot threshold"
        );
        describe_counter!("eventsource_snapshot_writes_total", "Snapshots written");
        describe_counter!(
            "eventsource_snapshot_write_failures_total",
            "Snapshot writes that failed"
        );
        describe_histogram!(
            "eventsource_load_seconds",
            Unit::Seconds,
            "Time of a successful load"
        );
        describe_histogram!(
            "eventsource_load_events_replayed",
            Unit::Count,
            "Events a load applied"
        );
        describe_histogram!(
            "eventsource_save_seconds",
            Unit::Seconds,
            "Time of a successful save"
        );
        describe_gauge!(
            "eventsource_snapshot_queue_depth",
            Unit::Count,
            "Background snapshots waiting to be written"
        );
        describe_counter!("eventsource_commands_total", "Commands run, by outcome");
        describe_counter!(
            "eventsource_conflicts_total",
            "Saves that found another writer's events first"
        );
        describe_counter!("eventsource_events_written_total", "Events saved");
        describe_counter!(
            "eventsource_store_errors_total",
            "Loads and saves that failed on the store, by kind"
        );
        describe_counter!(
            "eventsource_outbox_published_total",
            "Events the outbox relay published to the broker"
        );
        describe_counter!(
            "eventsource_outbox_failures_total",
            "Publishes of the outbox relay that failed and are tried again"
        );
        describe_counter!(
            "eventsource_subscription_events_total",
            "Events a subscription handled"
        );
        describe_counter!(
            "eventsource_subscription_retries_total",
            "Failed batches tried again"
        );
        describe_counter!(
            "eventsource_subscription_failed_batches_total",
            "Batches that failed every attempt"
        );
        describe_counter!(
            "eventsource_subscription_dead_letters_total",
            "Events given up on"
        );
        describe_counter!(
            "eventsource_subscription_restarts_total",
            "Times a supervised subscription was started again after it stopped on an error"
        );
        describe_counter!(
            "eventsource_subscription_disorder_total",
            "Events handed over out of their aggregate's version order, by kind"
        );
        describe_gauge!(
            "eventsource_subscription_lag",
            Unit::Count,
            "Events after a subscription's last batch, shown by the feed or held back"
        );
        describe_gauge!(
            "eventsource_subscription_held_back",
            Unit::Count,
            "Events stored after a subscription's last batch that the feed does not show yet"
        );
    }

    pub(super) fn snapshot(aggregate_type: &'static str, name: &'static str, reason: Option<&'static str>) {
        match reason {
            Some(reason) => {
                counter!(name, "aggregate_type" => aggregate_type, "reason" => reason).increment(1)
            }
            None => counter!(name, "aggregate_type" => aggregate_type).increment(1),
        }
    }

    pub(super) fn load(aggregate_type: &'static str, took: Duration, replayed: u64, snapshot_used: bool) {
        let snapshot = if snapshot_used { "used" } else { "none" };
        histogram!("eventsource_load_seconds", "aggregate_type" => aggregate_type, "snapshot" => snapshot)
            .record(took);
        histogram!("eventsource_load_events_replayed", "aggregate_type" => aggregate_type)
            .record(replayed as f64);
    }

    pub(super) fn subscription(name: &str, event: SubscriptionEvent) {
        let label = [("subscription", name.to_owned())];
        match event {
            SubscriptionEvent::Handled(n) => {
                counter!("eventsource_subscription_events_total", &label).increment(n)
            }
            SubscriptionEvent::Retry => {
                counter!("eventsource_subscription_retries_total", &label).increment(1)
            }
            SubscriptionEvent::FailedBatch => {
                counter!("eventsource_subscription_failed_batches_total", &label).increment(1)
            }
            SubscriptionEvent::DeadLetter => {
                counter!("eventsource_subscription_dead_letters_total", &label).increment(1)
            }
            SubscriptionEvent::Restart => {
                counter!("eventsource_subscription_restarts_total", &label).increment(1)
            }
            SubscriptionEvent::Disorder(kind) => counter!(
                "eventsource_subscription_disorder_total",
                "subscription" => name.to_owned(),
                "kind" => kind
            )
            .increment(1),
            SubscriptionEvent::Lag(lag) => gauge!("eventsource_subscription_lag", &label).set(lag as f64),
            SubscriptionEvent::HeldBack(held) => {
                gauge!("eventsource_subscription_held_back", &label).set(held as f64)
            }
        }
    }
}
