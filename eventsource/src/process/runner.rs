//! Runs a process manager on a subscription: each event decided on for its instance, the
//! decision stored, then its commands sent; and the timeouts that come due.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use uuid::Uuid;

use super::record::{self, instance_type, Loaded, Pending, Record, Scheduled};
use super::{
    reply_cause, request_id, timeout_cause, validate_process_name, Decisions, ProcessManager, MAX_COMMANDS,
};
use crate::abilities::StreamListing;
use crate::error::{Error, Result};
use crate::event::{EventContext, StoredEvent};
use crate::event_store::EventStore;
use crate::group::ConsumerGroup;
use crate::request::RequestId;
use crate::subscription::{Handler, HandlerError, Subscription};

/// How often a runner looks for timeouts that came due, unless told otherwise.
const TICK: Duration = Duration::from_millis(250);

/// How often a runner reads every instance's record again, unless told otherwise.
const RESCAN: Duration = Duration::from_secs(60);

/// How many times a decision is made again after another runner stored one first.
const CONFLICTS: u32 = 20;

/// What an instance is decided on.
enum Cause<'a> {
    Event(&'a StoredEvent),
    Timeout { name: String, scheduled: Scheduled },
}

/// What a runner knows of an instance without reading its record, as of a version of it: its
/// timeouts, and whether it has commands to send.
#[derive(Clone, Debug, Default)]
struct Due {
    version: u64,
    timeouts: BTreeMap<String, Scheduled>,
    pending: bool,
}

/// A process manager on a subscription: see the [module docs](super).
pub struct ProcessRunner<P: ProcessManager> {
    inner: Arc<Inner<P>>,
    runs: Runs,
}

enum Runs {
    Single(Subscription),
    Group(ConsumerGroup<Subscription>),
}

impl<P: ProcessManager> std::fmt::Debug for ProcessRunner<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessRunner")
            .field("name", &self.inner.name)
            .field("group", &matches!(self.runs, Runs::Group(_)))
            .field("tick", &self.inner.tick)
            .field("rescan", &self.inner.rescan)
            .finish_non_exhaustive()
    }
}

struct Inner<P> {
    manager: P,
    name: String,
    /// The aggregate type of its records.
    ty: String,
    events: Arc<dyn EventStore>,
    listing: Option<Arc<dyn StreamListing>>,
    due: Mutex<HashMap<Uuid, Due>>,
    tick: Duration,
    rescan: Duration,
}

impl<P: ProcessManager> ProcessRunner<P> {
    /// The process manager `manager` on `subscription`, whose name becomes its own, with its
    /// records in `events` (the subscription's event store); `listing` (the store's listing
    /// of streams) finds every instance's timeouts at start, without it only the timeouts
    /// this runner stored fire. [`Stores::process`](crate::backend::Stores::process) builds
    /// one from a program's stores.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] if the subscription's name is longer than
    /// [`MAX_PROCESS_NAME_LEN`](super::MAX_PROCESS_NAME_LEN) bytes or holds a `/`.
    pub fn new(
        events: Arc<dyn EventStore>,
        listing: Option<Arc<dyn StreamListing>>,
        subscription: Subscription,
        manager: P,
    ) -> Result<Self> {
        let name = subscription.name().to_owned();
        validate_process_name(&name)?;
        Ok(ProcessRunner {
            inner: Arc::new(Inner {
                manager,
                ty: instance_type(&name),
                name,
                events,
                listing,
                due: Mutex::new(HashMap::new()),
                tick: TICK,
                rescan: RESCAN,
            }),
            runs: Runs::Single(subscription),
        })
    }

    /// Looks for timeouts that came due this often (250 ms by default).
    ///
    /// # Panics
    ///
    /// If the runner was shared already (it is not, until it runs).
    #[must_use]
    pub fn tick(mut self, every: Duration) -> Self {
        self.inner_mut().tick = every.max(Duration::from_millis(1));
        self
    }

    /// Reads every instance's record again this often (60 s by default), for the timeouts
    /// other processes scheduled.
    ///
    /// # Panics
    ///
    /// As [`tick`](Self::tick).
    #[must_use]
    pub fn rescan(mut self, every: Duration) -> Self {
        self.inner_mut().rescan = every.max(Duration::from_millis(1));
        self
    }

    fn inner_mut(&mut self) -> &mut Inner<P> {
        Arc::get_mut(&mut self.inner).expect("a runner is configured before it runs")
    }

    /// The same runner as a consumer group of `ranges` ranges (see [`crate::group`]): run its
    /// workers with [`run_workers`](Self::run_workers), in any number of processes.
    ///
    /// # Errors
    ///
    /// As [`Subscription::group`].
    pub fn group(self, ranges: u32) -> Result<Self> {
        let runs = match self.runs {
            Runs::Single(subscription) => Runs::Group(subscription.group(ranges)?),
            Runs::Group(_) => {
                return Err(Error::InvalidConfiguration(format!(
                    "process manager `{}` runs as a consumer group already",
                    self.inner.name
                )))
            }
        };
        Ok(ProcessRunner {
            inner: self.inner,
            runs,
        })
    }

    /// Its name: its subscription's.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The process manager.
    pub fn manager(&self) -> &P {
        &self.inner.manager
    }

    /// Runs until `shutdown` completes: the subscription's events decided on, their commands
    /// sent, and the timeouts fired as they come due. One worker, for a consumer group.
    ///
    /// # Errors
    ///
    /// As [`Subscription::run`]: a batch that still fails after its attempts stops it, by
    /// default.
    ///
    /// # Cancel safety
    ///
    /// As [`Subscription::run`]: a decision stored and its commands not yet sent are sent by
    /// the next runner, with their request ids.
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        self.run_workers(1, shutdown).await
    }

    /// Runs `workers` workers of its consumer group (one consumer, for a runner that is no
    /// group) until `shutdown` completes, and the timeouts as they come due.
    ///
    /// # Errors
    ///
    /// As [`ConsumerGroup::<Subscription>::run`].
    ///
    /// # Cancel safety
    ///
    /// As [`run`](Self::run).
    pub async fn run_workers(&self, workers: usize, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let stop = shutdown.shared();
        self.inner.scan().await;
        // The timers stop with the events: at the shutdown, or when the subscription stops on
        // an error, which is then returned.
        let (ended, events_ended) = tokio::sync::oneshot::channel::<()>();
        let timers = self
            .inner
            .timers(futures_util::future::select(stop.clone(), events_ended).map(drop));
        let events = async {
            let outcome = match &self.runs {
                Runs::Single(subscription) => subscription.run(Steps(self.inner.clone()), stop.clone()).await,
                Runs::Group(group) => {
                    let inner = &self.inner;
                    group
                        .run(workers, |_range| Steps(inner.clone()), stop.clone())
                        .await
                }
            };
            drop(ended);
            outcome
        };
        let (events, ()) = tokio::join!(events, timers);
        events
    }

    /// Decides on the events of the feed not decided on yet and sends their commands, then
    /// returns how many events it handed over (for a single consumer: a consumer group's
    /// workers [`run`](Self::run)).
    ///
    /// # Errors
    ///
    /// As [`Subscription::catch_up`]; [`Error::InvalidConfiguration`] for a consumer group.
    ///
    /// # Cancel safety
    ///
    /// As [`run`](Self::run).
    pub async fn catch_up(&self) -> Result<u64> {
        match &self.runs {
            Runs::Single(subscription) => subscription.catch_up(Steps(self.inner.clone())).await,
            Runs::Group(_) => Err(Error::InvalidConfiguration(format!(
                "process manager `{}` runs as a consumer group: run its workers",
                self.inner.name
            ))),
        }
    }

    /// Fires the timeouts due now, and sends the commands its instances left unsent (after a
    /// crash), as the running runner does at each tick; how many instances it went through.
    ///
    /// # Errors
    ///
    /// [`Error::Process`] for the first error of the process manager's code or of a
    /// command, or a store error while reading the records.
    ///
    /// # Cancel safety
    ///
    /// As [`run`](Self::run).
    pub async fn fire_due(&self) -> Result<usize> {
        self.inner.scan().await;
        self.inner.fire_due().await.map_err(|e| Error::Process {
            process: self.inner.name.clone(),
            reason: e.to_string(),
        })
    }
}

/// The subscription's handler: each event routed to its instance and decided on.
struct Steps<P>(Arc<Inner<P>>);

#[async_trait]
impl<P: ProcessManager> Handler for Steps<P> {
    async fn handle(&mut self, events: &[StoredEvent]) -> std::result::Result<(), HandlerError> {
        for event in events {
            // Its own records, and the library's system events (a stream closed or deleted,
            // a subject forgotten), which no process manager's events are.
            if *event.aggregate_type == *self.0.ty || crate::lifecycle::is_system_event(&event.event_type) {
                continue;
            }
            if let Some(instance) = self.0.manager.route(event) {
                self.0.decide(instance, Cause::Event(event)).await?;
            }
        }
        Ok(())
    }
}

impl<P: ProcessManager> Inner<P> {
    /// Decides on `cause` for `instance` unless it was decided on, stores the decision, then
    /// sends the instance's commands.
    async fn decide(&self, instance: Uuid, cause: Cause<'_>) -> std::result::Result<(), HandlerError> {
        let cause_id = match &cause {
            Cause::Event(event) => event.event_id,
            Cause::Timeout { name, scheduled } => timeout_cause(instance, name, scheduled.by),
        };
        let mut conflicts = 0;
        let loaded = loop {
            let mut loaded: Loaded<P::State, P::Command> =
                record::load(&*self.events, &self.ty, instance).await?;
            let record = &mut loaded.record;
            if record.done || record.decided(cause_id) {
                break loaded;
            }
            let mut decisions = Decisions::default();
            let correlation = match &cause {
                Cause::Event(event) => {
                    let correlation = event.correlation_id.unwrap_or(event.event_id);
                    record.correlation.get_or_insert(correlation);
                    self.manager.handle(&mut record.state, event, &mut decisions)?;
                    correlation
                }
                Cause::Timeout { name, scheduled } => {
                    // Cancelled, scheduled again or fired meanwhile: nothing is due.
                    if record.timeouts.get(name) != Some(scheduled) {
                        return Ok(());
                    }
                    record.timeouts.remove(name);
                    self.manager.on_timeout(&mut record.state, name, &mut decisions)?;
                    record.correlation.unwrap_or(cause_id)
                }
            };
            self.apply(record, cause_id, correlation, decisions)?;
            match record::store(
                &*self.events,
                &self.ty,
                instance,
                loaded.version,
                record,
                cause_id,
            )
            .await
            {
                Ok(appended) => {
                    loaded.version = appended.version;
                    self.index(instance, &loaded);
                    break loaded;
                }
                Err(e) if e.is_conflict() && conflicts < CONFLICTS => conflicts += 1,
                Err(e) => return Err(e.into()),
            }
        };
        self.send(instance, loaded).await
    }

    /// Sends the instance's commands one by one, each reply decided on and stored before the
    /// next is sent.
    async fn send(
        &self,
        instance: Uuid,
        mut loaded: Loaded<P::State, P::Command>,
    ) -> std::result::Result<(), HandlerError> {
        let mut conflicts = 0;
        while let Some(pending) = loaded.record.pending.front().cloned() {
            let request = RequestId::new(&pending.request_id)?;
            let context = EventContext {
                correlation_id: Some(pending.correlation),
                causation_id: Some(pending.cause),
                metadata: None,
                request_id: Some(request.clone()),
            };
            let reply = self.manager.execute(&pending.command, context).await?;
            let cause = reply_cause(&request);
            let record = &mut loaded.record;
            record.pending.pop_front();
            let mut decisions = Decisions::default();
            self.manager
                .on_reply(&mut record.state, &pending.command, &reply, &mut decisions)?;
            self.apply(record, cause, pending.correlation, decisions)?;
            match record::store(&*self.events, &self.ty, instance, loaded.version, record, cause).await {
                Ok(appended) => {
                    loaded.version = appended.version;
                    self.index(instance, &loaded);
                }
                // Another runner sent or decided meanwhile: go on from its record (the
                // command sent again is answered by its request id).
                Err(e) if e.is_conflict() && conflicts < CONFLICTS => {
                    conflicts += 1;
                    loaded = record::load(&*self.events, &self.ty, instance).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Adds `decisions` on `cause` to `record`: its commands with their request ids, its
    /// timeouts, its end, and the cause as decided on.
    fn apply(
        &self,
        record: &mut Record<P::State, P::Command>,
        cause: Uuid,
        correlation: Uuid,
        decisions: Decisions<P::Command>,
    ) -> Result<()> {
        if decisions.commands.len() > MAX_COMMANDS {
            return Err(Error::InvalidInput(format!(
                "process manager `{}` decided {} commands on one cause, above the limit of {MAX_COMMANDS}",
                self.name,
                decisions.commands.len()
            )));
        }
        for (i, command) in decisions.commands.into_iter().enumerate() {
            record.pending.push_back(Pending {
                request_id: request_id(&self.name, cause, i + 1)?.as_str().to_owned(),
                cause,
                correlation,
                command,
            });
        }
        for name in &decisions.cancel {
            record.timeouts.remove(name);
        }
        let now = Utc::now();
        for (name, after) in decisions.schedule {
            let after = chrono::TimeDelta::from_std(after).map_err(|_| {
                Error::InvalidInput(format!("timeout `{name}` is due too far ahead: {after:?}"))
            })?;
            // Kept to the microsecond, as every store keeps times.
            let due = DateTime::from_timestamp_micros((now + after).timestamp_micros()).unwrap_or(now);
            record.timeouts.insert(name, Scheduled { due, by: cause });
        }
        if decisions.complete {
            record.done = true;
            record.timeouts.clear();
        }
        record.remember(cause);
        Ok(())
    }

    /// Remembers what the record holds of timeouts and commands to send, unless a newer
    /// version of it is remembered already (read or stored meanwhile by another task).
    fn index(&self, instance: Uuid, loaded: &Loaded<P::State, P::Command>) {
        let record = &loaded.record;
        let mut due = self.due.lock().unwrap_or_else(|p| p.into_inner());
        if due
            .get(&instance)
            .is_some_and(|known| known.version > loaded.version)
        {
            return;
        }
        due.insert(
            instance,
            Due {
                version: loaded.version,
                timeouts: if record.done {
                    BTreeMap::new()
                } else {
                    record.timeouts.clone()
                },
                pending: !record.pending.is_empty(),
            },
        );
    }

    /// Reads every instance's record, for its timeouts and its commands left unsent; a
    /// record that cannot be read is logged and skipped.
    async fn scan(&self) {
        let Some(listing) = &self.listing else {
            return;
        };
        let instances = match listing.stream_versions(&self.ty).await {
            Ok(instances) => instances,
            Err(e) => {
                tracing::warn!(process = %self.name, error = %e, "cannot list the process's instances");
                return;
            }
        };
        for (instance, _) in instances {
            match record::load::<P::State, P::Command>(&*self.events, &self.ty, instance).await {
                Ok(loaded) => self.index(instance, &loaded),
                Err(e) => {
                    tracing::warn!(process = %self.name, %instance, error = %e, "cannot read an instance's record; its timeouts wait")
                }
            }
        }
    }

    /// Fires the timeouts due now and sends what instances left unsent, each instance on its
    /// own (one that fails does not hold the others back); how many instances it went
    /// through, or the first failure.
    async fn fire_due(&self) -> std::result::Result<usize, HandlerError> {
        let now = Utc::now();
        let due: Vec<(Uuid, Due)> = {
            let index = self.due.lock().unwrap_or_else(|p| p.into_inner());
            index
                .iter()
                .filter(|(_, d)| d.pending || d.timeouts.values().any(|t| t.due <= now))
                .map(|(id, d)| (*id, d.clone()))
                .collect()
        };
        let mut first_failure = None;
        for (instance, d) in &due {
            if let Err(e) = self.fire_instance(*instance, d, now).await {
                tracing::warn!(process = %self.name, %instance, error = %e, "a timeout or a command failed; it is tried again");
                first_failure.get_or_insert(e);
            }
        }
        match first_failure {
            Some(e) => Err(e),
            None => Ok(due.len()),
        }
    }

    /// Sends what `instance` left unsent and fires its timeouts due at `now`.
    async fn fire_instance(
        &self,
        instance: Uuid,
        d: &Due,
        now: DateTime<Utc>,
    ) -> std::result::Result<(), HandlerError> {
        if d.pending {
            let loaded = record::load(&*self.events, &self.ty, instance).await?;
            self.index(instance, &loaded);
            self.send(instance, loaded).await?;
        }
        for (name, scheduled) in d.timeouts.iter().filter(|(_, t)| t.due <= now) {
            let cause = Cause::Timeout {
                name: name.clone(),
                scheduled: *scheduled,
            };
            self.decide(instance, cause).await?;
        }
        // Fired, cancelled or scheduled again: the record says which.
        let loaded: Loaded<P::State, P::Command> = record::load(&*self.events, &self.ty, instance).await?;
        self.index(instance, &loaded);
        Ok(())
    }

    /// Fires timeouts as they come due until `stop`, reading every record again now and then.
    async fn timers(&self, stop: impl Future<Output = ()> + Send) {
        let work = async {
            let mut scanned = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(self.tick).await;
                if scanned.elapsed() >= self.rescan {
                    self.scan().await;
                    scanned = tokio::time::Instant::now();
                }
                // Failures are logged by instance, and tried again at the next tick.
                let _ = self.fire_due().await;
            }
        };
        tokio::select! {
            () = work => {}
            () = stop => {}
        }
    }
}
