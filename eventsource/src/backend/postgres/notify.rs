//! Wake-ups for consumers of the feed: `NOTIFY` after appends, `LISTEN` for them.
//!
//! A store raises its local signal after each append it makes, for the slices of the streams
//! it went to, and sends one `NOTIFY` for every run of appends (never more than one in flight,
//! and at most one every 5 ms, so a burst of appends costs one), so that the consumers in other
//! processes wake too. The notification carries the slices of the run's appends (a
//! [`SliceMask`] in its text form), so that there too only the consumers of those slices wake;
//! one without them (an empty payload, as older versions send) wakes every consumer. A consumer's store listens on a
//! connection of its own, started when the first consumer asks for the signal, and raises the
//! signal at each notification. Wake-ups are a hint only: consumers also poll, so a lost
//! notification or a listener that cannot connect delays an event, never loses it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;

use crate::abilities::AppendSignal;
use crate::slice::mask::SliceMask;

/// The least time between two `NOTIFY`s of one store: what a consumer in another process may
/// wake later than the append, at most (it polls besides).
const NOTIFY_GAP: Duration = Duration::from_millis(5);

pub(super) struct Notifier {
    channel: String,
    signal: AppendSignal,
    /// A listener task runs.
    listening: Arc<AtomicBool>,
    /// An append happened that no `NOTIFY` has told of yet.
    dirty: AtomicBool,
    /// The slices of the appends no `NOTIFY` has told of yet.
    pending: Mutex<SliceMask>,
    /// A `NOTIFY` is being sent.
    sending: AtomicBool,
}

impl Notifier {
    /// The notifier of the events table in `schema` (`None`: the search path's).
    pub(super) fn new(schema: Option<&str>) -> Self {
        let mut channel = format!("eventsource_appended_{}", schema.unwrap_or("default"));
        // Channel names are identifiers of at most 63 bytes; a clash only wakes consumers
        // of another schema for nothing.
        channel.truncate(63);
        Notifier {
            channel,
            signal: AppendSignal::new(),
            listening: Arc::new(AtomicBool::new(false)),
            dirty: AtomicBool::new(false),
            pending: Mutex::default(),
            sending: AtomicBool::new(false),
        }
    }

    /// The channel its `NOTIFY`s go on.
    pub(super) fn channel(&self) -> &str {
        &self.channel
    }

    /// Tells the consumers of the slices of `mask` that events were appended there.
    pub(super) fn appended(self: &Arc<Self>, pool: &PgPool, mask: &SliceMask) {
        self.signal.raise_slices(mask);
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).union(mask);
        self.dirty.store(true, Ordering::SeqCst);
        if self.sending.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.sending.store(false, Ordering::SeqCst);
            return;
        };
        let (notifier, pool) = (self.clone(), pool.clone());
        drop(runtime.spawn(async move {
            loop {
                while notifier.dirty.swap(false, Ordering::SeqCst) {
                    let slices = std::mem::take(&mut *notifier.pending.lock().unwrap_or_else(|p| p.into_inner()));
                    let sent = sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(&notifier.channel)
                        .bind(slices.to_hex())
                        .execute(&pool)
                        .await;
                    if let Err(e) = sent {
                        tracing::debug!(error = %e, "cannot notify consumers of an append; they poll instead");
                    }
                    // The appends of the next few milliseconds share the next NOTIFY: under
                    // many writers, one a NOTIFY per append would cost each a transaction.
                    tokio::time::sleep(NOTIFY_GAP).await;
                }
                notifier.sending.store(false, Ordering::SeqCst);
                // An append between the last swap and the store above found `sending` set and
                // left its notification to this task: send it, unless another task took over.
                if !notifier.dirty.load(Ordering::SeqCst) || notifier.sending.swap(true, Ordering::SeqCst) {
                    return;
                }
            }
        }));
    }

    /// The signal, listening for other processes' appends from now on (again, if the task
    /// that listened has stopped with its runtime).
    pub(super) fn signal(self: &Arc<Self>, pool: &PgPool) -> AppendSignal {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            if !self.listening.swap(true, Ordering::SeqCst) {
                let listening = Listening(self.listening.clone());
                let (channel, signal, pool) = (self.channel.clone(), self.signal.clone(), pool.clone());
                drop(runtime.spawn(async move {
                    let _listening = listening;
                    listen(channel, signal, pool).await;
                }));
            }
        }
        self.signal.clone()
    }
}

/// Marks the listener task as running; cleared when the task ends or is dropped.
struct Listening(Arc<AtomicBool>);

impl Drop for Listening {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Raises `signal` at each notification on `channel`, reconnecting after a failure, until
/// the pool is closed. The listener has a connection of its own, outside the stores' pool, so
/// it never takes one of the pool's connections from appends and reads.
async fn listen(channel: String, signal: AppendSignal, pool: PgPool) {
    while !pool.is_closed() {
        let own = PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with((*pool.connect_options()).clone());
        let listened = async {
            let mut listener = PgListener::connect_with(&own).await?;
            listener.listen(&channel).await?;
            // Appends made while the listener was away are found by the consumers' polls.
            signal.raise();
            loop {
                let notification = listener.recv().await?;
                match SliceMask::from_hex(notification.payload()) {
                    Some(slices) => signal.raise_slices(&slices),
                    None => signal.raise(),
                }
            }
        };
        let outcome: sqlx::Result<()> = listened.await;
        if let Err(e) = outcome {
            tracing::debug!(error = %e, "the listener for appends failed; consumers poll until it is back");
        }
        crate::deadline::sleep(Duration::from_secs(1)).await;
    }
}
