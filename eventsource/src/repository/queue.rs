//! The per-aggregate command queue: commands on one aggregate in this process run one after
//! another, first come first served, instead of racing each other into conflicts; and the
//! commands waiting their turn are decided together, on one load, and saved in one append
//! (see [`super::batch`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, OwnedMutexGuard};
use uuid::Uuid;

/// A turn lock per aggregate with commands waiting or running, each guarding the batch open
/// on it, if any; an entry lives as long as one of them does.
pub(crate) struct CommandQueue<A> {
    turns: Mutex<HashMap<Uuid, Lane<A>>>,
}

/// One aggregate's turn lock, with the batch open on it, and how many commands that must run
/// alone wait for a turn without a batch.
struct Lane<A> {
    turn: Arc<tokio::sync::Mutex<Option<Open<A>>>>,
    alone: Arc<AtomicU32>,
}

impl<A> Clone for Lane<A> {
    fn clone(&self) -> Self {
        Lane {
            turn: self.turn.clone(),
            alone: self.alone.clone(),
        }
    }
}

impl<A> Default for Lane<A> {
    fn default() -> Self {
        Lane {
            turn: Arc::default(),
            alone: Arc::default(),
        }
    }
}

impl<A> Default for CommandQueue<A> {
    fn default() -> Self {
        CommandQueue {
            turns: Mutex::default(),
        }
    }
}

impl<A> std::fmt::Debug for CommandQueue<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandQueue").finish_non_exhaustive()
    }
}

/// A batch of commands open on an aggregate: the root they decided on (an
/// [`AggregateRoot`](crate::AggregateRoot)), with every one's events recorded, and where its
/// saving command tells them how the save went.
pub(crate) struct Open<A> {
    pub(crate) root: A,
    /// How many commands decided in it: its saver and those that joined.
    pub(crate) members: usize,
    outcome: watch::Receiver<Option<BatchOutcome>>,
}

/// How a batch's save went, as its commands learn it.
#[derive(Clone, Debug)]
pub(crate) enum BatchOutcome {
    /// Stored: the position of its last event (`None` when the batch had no event).
    Saved { position: Option<u64> },
    /// Another writer saved first: nothing is stored, and each command decides again.
    Conflict,
    /// Nothing is stored, for a reason of some command's own (an event that cannot be
    /// stored, a closed stream): each decides again alone, and meets its own error.
    Unsaved,
    /// The save failed, and the batch may or may not be stored.
    Failed { message: String, transient: bool },
}

/// The command that saves a batch: it tells the others how the save went.
pub(crate) struct Saver(watch::Sender<Option<BatchOutcome>>);

impl Saver {
    pub(crate) fn tell(self, outcome: BatchOutcome) {
        // Nobody may be listening: every other command of the batch was dropped.
        let _ = self.0.send(Some(outcome));
    }
}

impl<A> Open<A> {
    /// A batch on `root`, and its saver.
    pub(crate) fn new(root: A) -> (Self, Saver) {
        let (tx, outcome) = watch::channel(None);
        (
            Open {
                root,
                members: 1,
                outcome,
            },
            Saver(tx),
        )
    }

    /// Whether its saver is still there to save it (a dropped command leaves it behind).
    fn is_live(&self) -> bool {
        self.outcome.has_changed().is_ok()
    }

    /// Where a command that joined the batch waits for its outcome.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<BatchOutcome>> {
        self.outcome.clone()
    }
}

/// Waits for the outcome of a batch; `None` if its saver was dropped without telling.
pub(crate) async fn outcome_of(mut outcome: watch::Receiver<Option<BatchOutcome>>) -> Option<BatchOutcome> {
    outcome
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|told| told.clone())
}

/// This command's turn on its aggregate, with the batch open there; the next command's turn
/// starts when it is dropped.
pub(crate) struct Turn<A> {
    queue: Arc<CommandQueue<A>>,
    id: Uuid,
    lane: Option<Lane<A>>,
    guard: Option<OwnedMutexGuard<Option<Open<A>>>>,
}

impl<A> CommandQueue<A> {
    /// Waits for the aggregate's turn (tokio's mutex hands it over in the order asked). A
    /// batch left behind by a dropped command is cleared.
    pub(crate) async fn enter(self: &Arc<Self>, id: Uuid) -> Turn<A> {
        let lane = self
            .turns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_default()
            .clone();
        let mut turn = Turn {
            queue: self.clone(),
            id,
            lane: Some(lane.clone()),
            guard: None,
        };
        let mut guard = lane.turn.lock_owned().await;
        if guard.as_ref().is_some_and(|open| !open.is_live()) {
            *guard = None;
        }
        turn.guard = Some(guard);
        turn
    }

    /// Waits for a turn with no batch open: a batch open now is saved first (its saver is
    /// behind in the queue, and this command goes behind it), and no new one opens while
    /// this command waits (see [`Turn::alone_waiting`]).
    pub(crate) async fn enter_alone(self: &Arc<Self>, id: Uuid) -> Turn<A> {
        let mut waiting: Option<Waiting> = None;
        loop {
            let turn = self.enter(id).await;
            if turn.batch().is_none() {
                return turn;
            }
            if waiting.is_none() {
                let alone = turn.lane.as_ref().expect("set until dropped").alone.clone();
                alone.fetch_add(1, Ordering::SeqCst);
                waiting = Some(Waiting(alone));
            }
        }
    }

    /// How many aggregates have commands waiting or running.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.turns.lock().unwrap().len()
    }
}

/// A command that must run alone, waiting: counted while it lives.
struct Waiting(Arc<AtomicU32>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<A> Turn<A> {
    /// Whether a command that must run alone waits for a turn without a batch: then no
    /// batch opens, so that it gets one.
    pub(crate) fn alone_waiting(&self) -> bool {
        self.lane
            .as_ref()
            .expect("set until dropped")
            .alone
            .load(Ordering::SeqCst)
            > 0
    }

    /// The batch open on the aggregate, if any.
    pub(crate) fn batch(&self) -> Option<&Open<A>> {
        self.guard.as_ref().expect("held until dropped").as_ref()
    }

    /// The slot of the batch open on the aggregate.
    pub(crate) fn slot(&mut self) -> &mut Option<Open<A>> {
        self.guard.as_mut().expect("held until dropped")
    }

    /// Lets the commands waiting now take their turns, and waits for the next one after
    /// theirs. The aggregate's entry stays meanwhile, with the batch open on it.
    pub(crate) async fn after_the_waiting(mut self) -> Turn<A> {
        drop(self.guard.take());
        let lane = self.lane.clone().expect("set until dropped");
        self.guard = Some(lane.turn.lock_owned().await);
        self
    }
}

impl<A> Drop for Turn<A> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let lane = self.lane.take().expect("set until dropped");
        let mut turns = self.queue.turns.lock().unwrap_or_else(|p| p.into_inner());
        // Ours and the map's: nobody else waits, so the entry goes (an open batch has its
        // saver waiting, so it never goes with it).
        if Arc::strong_count(&lane.turn) == 2 {
            turns.remove(&self.id);
        }
        // Let go of ours while the map is locked: a waiter that leaves next counts truly.
        drop(lane);
        drop(turns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The roots of these tests: numbers.
    type Nothing = u32;

    #[tokio::test]
    async fn turns_on_one_aggregate_come_in_order_and_leave_nothing_behind() {
        let queue = Arc::new(CommandQueue::<Nothing>::default());
        let id = Uuid::new_v4();
        let first = queue.enter(id).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let waiting: Vec<_> = (0..3)
            .map(|n| {
                let (queue, order) = (queue.clone(), order.clone());
                tokio::spawn(async move {
                    let _turn = queue.enter(id).await;
                    order.lock().unwrap().push(n);
                })
            })
            .collect();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            order.lock().unwrap().is_empty(),
            "nobody runs while the first holds its turn"
        );
        let other = queue.enter(Uuid::new_v4()).await;
        drop(other);
        drop(first);
        for task in waiting {
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2]);
        assert_eq!(queue.len(), 0);
    }

    #[tokio::test]
    async fn the_waiting_join_a_batch_and_its_saver_takes_it_back() {
        let queue = Arc::new(CommandQueue::<Nothing>::default());
        let id = Uuid::new_v4();
        let mut turn = queue.enter(id).await;
        let (open, saver) = Open::new(0);
        *turn.slot() = Some(open);
        let joiner = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.enter(id).await.batch().map(Open::subscribe) })
        };
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let mut turn = turn.after_the_waiting().await;
        let joined = joiner
            .await
            .unwrap()
            .expect("the waiting command found the batch");
        assert!(turn.slot().take().is_some(), "the batch waits for its saver");
        saver.tell(BatchOutcome::Conflict);
        assert!(matches!(outcome_of(joined).await, Some(BatchOutcome::Conflict)));
        drop(turn);
        assert_eq!(queue.len(), 0);
    }

    #[test]
    fn a_batch_whose_saver_is_gone_is_not_live() {
        let (open, saver) = Open::<Nothing>::new(0);
        assert!(open.is_live());
        drop(saver);
        assert!(!open.is_live());
    }
}
