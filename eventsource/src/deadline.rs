//! Time limits on store calls that work on any async runtime, with or without its timers.
//!
//! tokio's timers panic on a runtime built without `enable_time`, and a library cannot ask
//! whether they are enabled. So the limits here are kept by one thread of this library's,
//! started at the first limited call: a call registers its deadline (a map insert under a
//! lock, no system call unless it is the earliest deadline), and unregisters it when it ends.
//! The thread sleeps until the earliest deadline and wakes the calls whose time is up.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::future::{self, Either};

/// The outcome of `call`, or `None` if it did not finish within `limit`.
pub(crate) async fn within<T>(limit: Duration, call: impl Future<Output = T>) -> Option<T> {
    let call = std::pin::pin!(call);
    match future::select(call, Deadline::after(limit)).await {
        Either::Left((done, _)) => Some(done),
        Either::Right(((), _)) => None,
    }
}

/// Waits for `duration`, on any runtime.
pub(crate) async fn sleep(duration: Duration) {
    Deadline::after(duration).await
}

/// `wait` less a random part of up to half of it, so that callers retrying together spread.
pub(crate) fn jittered(wait: Duration) -> Duration {
    let half = wait.as_nanos() as u64 / 2;
    if half == 0 {
        return wait;
    }
    wait - Duration::from_nanos(uuid::Uuid::new_v4().as_u128() as u64 % half)
}

/// A future that is ready once its instant has passed.
struct Deadline {
    at: Instant,
    /// The key it is registered under, once polled.
    key: Option<Key>,
}

type Key = (Instant, u64);

impl Deadline {
    fn after(limit: Duration) -> Self {
        // A limit too far to represent never expires.
        let at = Instant::now()
            .checked_add(limit)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(u32::MAX.into()));
        Deadline { at, key: None }
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let timer = Timer::get();
        let mut state = timer.lock();
        match self.key {
            Some(key) => match state.waiting.get_mut(&key) {
                Some(waker) => {
                    waker.clone_from(cx.waker());
                    Poll::Pending
                }
                // The thread removed it: the time is up.
                None => Poll::Ready(()),
            },
            None => {
                if Instant::now() >= self.at {
                    return Poll::Ready(());
                }
                state.next_id += 1;
                let key = (self.at, state.next_id);
                let earliest = state
                    .waiting
                    .first_key_value()
                    .is_none_or(|(first, _)| key < *first);
                state.waiting.insert(key, cx.waker().clone());
                self.key = Some(key);
                drop(state);
                if earliest {
                    timer.changed.notify_one();
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            Timer::get().lock().waiting.remove(&key);
        }
    }
}

/// The deadlines waited for, and the thread that keeps them.
struct Timer {
    state: Mutex<TimerState>,
    /// Signalled when a deadline earlier than every other is registered.
    changed: Condvar,
}

#[derive(Default)]
struct TimerState {
    waiting: BTreeMap<Key, Waker>,
    next_id: u64,
}

impl Timer {
    fn get() -> &'static Timer {
        static TIMER: OnceLock<&'static Timer> = OnceLock::new();
        TIMER.get_or_init(|| {
            let timer: &'static Timer = Box::leak(Box::new(Timer {
                state: Mutex::default(),
                changed: Condvar::new(),
            }));
            std::thread::Builder::new()
                .name("eventsource-deadlines".into())
                .spawn(move || timer.run())
                .expect("cannot start the thread that keeps store call time limits");
            timer
        })
    }

    fn lock(&self) -> MutexGuard<'_, TimerState> {
        // Nothing panics while holding the lock; a poisoned map is still whole.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self) {
        let mut state = self.lock();
        loop {
            let now = Instant::now();
            let mut expired = Vec::new();
            while let Some(entry) = state.waiting.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                expired.push(entry.remove());
            }
            if !expired.is_empty() {
                drop(state);
                expired.into_iter().for_each(Waker::wake);
                state = self.lock();
                continue;
            }
            state = match state.waiting.first_key_value() {
                None => self.changed.wait(state).unwrap_or_else(|p| p.into_inner()),
                Some((&(at, _), _)) => {
                    let (state, _) = self
                        .changed
                        .wait_timeout(state, at.saturating_duration_since(now))
                        .unwrap_or_else(|p| p.into_inner());
                    state
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_that_finishes_in_time_gives_its_outcome() {
        // A limit no other test uses: the timer is shared by the tests running meanwhile.
        const LIMIT: Duration = Duration::from_secs(4321);
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let outcome = runtime.block_on(within(LIMIT, async { 7 }));
        assert_eq!(outcome, Some(7));
        let far = Instant::now() + LIMIT / 2;
        assert!(
            !Timer::get().lock().waiting.keys().any(|(at, _)| *at > far),
            "its deadline is unregistered"
        );
    }

    #[test]
    fn a_call_that_hangs_is_given_up_on_a_runtime_without_timers() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let outcome = runtime.block_on(within(Duration::from_millis(20), future::pending::<()>()));
        assert_eq!(outcome, None);
    }

    #[test]
    fn an_earlier_deadline_registered_later_still_fires_first() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        runtime.block_on(async {
            let long = tokio::spawn(within(Duration::from_secs(30), future::pending::<()>()));
            tokio::task::yield_now().await;
            let short = within(Duration::from_millis(20), future::pending::<()>()).await;
            assert_eq!(short, None);
            long.abort();
        });
    }
}
