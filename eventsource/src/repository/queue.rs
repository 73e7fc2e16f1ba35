//! The per-aggregate command queue: commands on one aggregate in this process run one after
//! another, first come first served, instead of racing each other into conflicts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;
use uuid::Uuid;

/// A turn lock per aggregate with commands waiting or running; an entry lives as long as one
/// of them does.
#[derive(Debug, Default)]
pub(crate) struct CommandQueue {
    turns: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
}

/// This command's turn on its aggregate; the next command's starts when it is dropped.
pub(crate) struct Turn {
    queue: Arc<CommandQueue>,
    id: Uuid,
    lock: Option<Arc<tokio::sync::Mutex<()>>>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl CommandQueue {
    /// Waits for the aggregate's turn (tokio's mutex hands it over in the order asked).
    pub(crate) async fn enter(self: &Arc<Self>, id: Uuid) -> Turn {
        let lock = self
            .turns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_default()
            .clone();
        let mut turn = Turn {
            queue: self.clone(),
            id,
            lock: Some(lock.clone()),
            guard: None,
        };
        turn.guard = Some(lock.lock_owned().await);
        turn
    }

    /// How many aggregates have commands waiting or running.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.turns.lock().unwrap().len()
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        drop(self.guard.take());
        let lock = self.lock.take().expect("set until dropped");
        let mut turns = self.queue.turns.lock().unwrap_or_else(|p| p.into_inner());
        // Ours and the map's: nobody else waits, so the entry goes.
        if Arc::strong_count(&lock) == 2 {
            turns.remove(&self.id);
        }
        // Let go of ours while the map is locked: a waiter that leaves next counts truly.
        drop(lock);
        drop(turns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn turns_on_one_aggregate_come_in_order_and_leave_nothing_behind() {
        let queue = Arc::new(CommandQueue::default());
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
}
