//! One worker of a consumer group: it holds a member slot, takes its share of the current
//! layout's ranges, runs each range it holds as a subscription of its own, and lets ranges go
//! when more workers join.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::state::{parts, GroupState};
use crate::deadline::sleep;
use crate::error::Result;
use crate::slice::{SliceParts, SliceRange};
use crate::subscription::names;
use crate::subscription::range::RangeScope;
use crate::subscription::{Subscription, SubscriptionStore};

/// The most worker slots a group has.
const MAX_MEMBERS: u32 = 4096;

/// A range being run: its subscription's end, with the range it was.
type Running<'a> = Pin<Box<dyn Future<Output = ((u32, SliceRange), Result<()>)> + Send + 'a>>;

/// Runs one range: the range's subscription (its name and scope set), the signal to stop it,
/// and the lease owner it runs as.
pub(crate) type RunRange<'a> = dyn Fn(
        Subscription,
        Pin<Box<dyn Future<Output = ()> + Send>>,
        Uuid,
    ) -> Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>
    + Send
    + Sync
    + 'a;

pub(crate) struct Worker<'a> {
    group: &'a str,
    template: &'a Subscription,
    /// The number of ranges of the first layout, if the group has none yet.
    ranges: u32,
    /// The slices of the store whose feed the group reads, and their parts.
    slices: SliceParts,
    /// This worker's identity: the owner of its slot, and of the leases it takes to freeze
    /// the ranges a new one replaces.
    owner: Uuid,
    slot: Option<u32>,
    running: HashMap<(u32, SliceRange), oneshot::Sender<()>>,
}

impl<'a> Worker<'a> {
    pub(crate) fn new(group: &'a str, template: &'a Subscription, ranges: u32, slices: SliceParts) -> Self {
        Worker {
            group,
            template,
            ranges,
            slices,
            owner: Uuid::new_v4(),
            slot: None,
            running: HashMap::new(),
        }
    }

    fn store(&self) -> &'a dyn SubscriptionStore {
        &**self.template.store()
    }

    async fn state(&self) -> Result<GroupState> {
        GroupState::read(self.store(), self.group, &self.slices).await
    }

    fn lease(&self) -> Duration {
        self.template.options().lease
    }

    /// Runs until `shutdown` completes or a range stops on an error that another try cannot
    /// cure: then stops every range it runs (each finishes its batch), gives its slot up and
    /// returns.
    pub(crate) async fn run(
        mut self,
        run_range: &'a RunRange<'a>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()> {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut ranges: FuturesUnordered<Running<'a>> = FuturesUnordered::new();
        let mut outcome = Ok(());
        // The ranges are polled all along, during a look at the group too: one suspended in
        // a store call (holding a connection or the write turn) must be able to finish it.
        // A look is finished even after the shutdown, so that no lease it took is left held
        // by nobody.
        'running: loop {
            let mut ended = Vec::new();
            let looked = {
                let mut rebalance = std::pin::pin!(self.rebalance(run_range));
                loop {
                    tokio::select! {
                        looked = &mut rebalance => break looked,
                        Some(end) = ranges.next(), if !ranges.is_empty() => ended.push(end),
                    }
                }
            };
            let stopping = shutdown.as_mut().now_or_never().is_some();
            for (key, result) in ended {
                if let Err(e) = self.ended(key, result) {
                    outcome = Err(e);
                    break 'running;
                }
            }
            match looked {
                Ok(started) => ranges.extend(started),
                Err(e) if e.is_transient() => {
                    tracing::warn!(group = %self.group, error = %e, "cannot rebalance the consumer group; trying again");
                }
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
            if stopping {
                break;
            }
            let tick = sleep(self.lease() / 3);
            tokio::pin!(tick);
            // Until the next look at the group: ranges that end are taken off the list.
            loop {
                tokio::select! {
                    () = &mut shutdown => break 'running,
                    () = &mut tick => break,
                    Some((key, result)) = ranges.next(), if !ranges.is_empty() => {
                        if let Err(e) = self.ended(key, result) {
                            outcome = Err(e);
                            break 'running;
                        }
                    }
                }
            }
        }
        for (_, stop) in self.running.drain() {
            let _ = stop.send(());
        }
        while let Some((_, ended)) = ranges.next().await {
            if let (Err(e), Ok(())) = (ended, &outcome) {
                if !e.is_transient() {
                    outcome = Err(e);
                }
            }
        }
        if let Some(slot) = self.slot {
            let _ = self
                .store()
                .release(&names::member(self.group, slot), self.owner)
                .await;
        }
        outcome
    }

    /// Takes a range that ended off the list; the error that stops the worker, if it ended
    /// on one another try cannot cure.
    fn ended(&mut self, key: (u32, SliceRange), result: Result<()>) -> Result<()> {
        self.running.remove(&key);
        match result {
            Err(e) if !e.is_transient() => Err(e),
            Err(e) => {
                tracing::warn!(group = %self.group, range = %key.1, error = %e, "a range stopped on a store error; it is taken again");
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    /// One look at the group: keeps this worker's slot, records the first layout if there is
    /// none, lets ranges go above this worker's fair share and takes free ones below it;
    /// the ranges it took, to run.
    async fn rebalance(&mut self, run_range: &'a RunRange<'a>) -> Result<Vec<Running<'a>>> {
        let mut started = Vec::new();
        let mut state = self.state().await?;
        if !self.keep_slot(&state).await? {
            tracing::warn!(group = %self.group, "no free worker slot in the consumer group; looking again later");
            return Ok(started);
        }
        if state.current().is_none() {
            if !super::record_first_layout(self.template, self.group, self.ranges, self.owner).await? {
                tracing::info!(group = %self.group, "waiting for the single consumer of this name to stop");
                return Ok(started);
            }
            state = self.state().await?;
        }
        let Some((generation, _)) = state.current() else {
            return Ok(started);
        };
        // The layout's ranges, as many as it records or more where the store's feeds cut
        // them (see `SliceParts::split`): the shares are of these.
        let all = state.ranges_of(generation);
        let (members, share) = self.share(&state, all.len());
        let mut mine: Vec<(u32, SliceRange)> = self
            .running
            .keys()
            .filter(|(g, _)| *g == generation)
            .copied()
            .collect();
        mine.sort();
        if mine.len() > share {
            // The highest above the share: each finishes its batch and lets its lease go, and
            // the workers short of their share take them at their next look.
            for key in &mine[share..] {
                if let Some(stop) = self.running.remove(key) {
                    let _ = stop.send(());
                }
            }
            return Ok(started);
        }
        // Each worker starts looking at its own place, so that joiners do not all race for
        // the same free range.
        let start = self.slot.unwrap_or(0) as usize * all.len() / members;
        let mut wanted = share - mine.len();
        for i in 0..all.len() {
            if wanted == 0 {
                break;
            }
            let range = all[(start + i) % all.len()];
            if self.running.contains_key(&(generation, range))
                || state.range(generation, range).owner.is_some()
            {
                continue;
            }
            if let Some(run) = self.take(&state, generation, range, run_range).await? {
                started.push(run);
                wanted -= 1;
            }
        }
        Ok(started)
    }

    /// Takes `range` of layout `generation`, if the consumers it replaces have stopped; its
    /// run, if it did.
    async fn take(
        &mut self,
        state: &GroupState,
        generation: u32,
        range: SliceRange,
        run_range: &'a RunRange<'a>,
    ) -> Result<Option<Running<'a>>> {
        let store = self.store();
        // The checkpoints of the consumers this range replaces are final once each was let go
        // after the layout was recorded (they look for it at least every sixth of their
        // lease): taking their leases waits for that, and fences out one that was paused.
        let replaced = state.replaced(self.group, generation, range);
        let mut frozen = Vec::new();
        let mut all_frozen = true;
        for name in &replaced {
            if store.acquire(name, self.owner, self.lease()).await? {
                frozen.push(name);
            } else {
                tracing::debug!(group = %self.group, range = %range, waits_for = %name, "a consumer this range replaces still runs");
                all_frozen = false;
                break;
            }
        }
        let taken = if all_frozen {
            let fresh = self.state().await?;
            let done = parts(&fresh.handled_before(generation), range);
            let name = names::range(self.group, generation, range);
            let owner = Uuid::new_v4();
            if store.acquire(&name, owner, self.lease()).await? {
                let scope = RangeScope {
                    range,
                    feed: self.template.options().slice_feed.clone(),
                    slices: self.slices.count(),
                    done,
                    successor: names::layout(self.group, generation + 1),
                };
                let subscription = self.template.in_range(name, scope);
                let (stop, stopped) = oneshot::channel::<()>();
                let stopped: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
                    let _ = stopped.await;
                });
                let run = run_range(subscription, stopped, owner);
                self.running.insert((generation, range), stop);
                tracing::info!(group = %self.group, range = %range, layout = generation, "took a range");
                Some(Box::pin(async move { ((generation, range), run.await) }) as Running<'a>)
            } else {
                None
            }
        } else {
            None
        };
        for name in frozen {
            let _ = store.release(name, self.owner).await;
        }
        Ok(taken)
    }

    /// The number of live workers, and how many of the `count` ranges are this worker's fair
    /// share: an equal part each, the ranges left over going one each to the workers of the
    /// lowest slots.
    fn share(&self, state: &GroupState, count: usize) -> (usize, usize) {
        let mut live: Vec<u32> = state
            .members
            .iter()
            .filter(|(_, owner)| owner.is_some())
            .map(|(slot, _)| *slot)
            .collect();
        if let Some(slot) = self.slot.filter(|slot| !live.contains(slot)) {
            live.push(slot);
        }
        live.sort_unstable();
        let members = live.len().max(1);
        let rank = self
            .slot
            .and_then(|slot| live.iter().position(|s| *s == slot))
            .unwrap_or(0);
        (members, count / members + usize::from(rank < count % members))
    }

    /// Holds this worker's slot (a lease whose count of live holders is the number of
    /// workers), taking a free one first if it has none; whether it holds one.
    async fn keep_slot(&mut self, state: &GroupState) -> Result<bool> {
        let store = self.store();
        if let Some(slot) = self.slot {
            if store
                .acquire(&names::member(self.group, slot), self.owner, self.lease())
                .await?
            {
                return Ok(true);
            }
            self.slot = None;
        }
        let free = (0..MAX_MEMBERS).filter(|slot| state.members.get(slot).is_none_or(Option::is_none));
        for slot in free.take(8) {
            if store
                .acquire(&names::member(self.group, slot), self.owner, self.lease())
                .await?
            {
                self.slot = Some(slot);
                return Ok(true);
            }
        }
        Ok(false)
    }
}
