//! Waits that keep to tokio's clock wherever they can, and time limits on store calls in real
//! time, on any async runtime, with or without its timers.
//!
//! A wait ([`sleep`]: retries, polls, lease renewals) is a `tokio::time::Sleep` where a tokio
//! runtime with its timers is running: it follows the runtime's clock, so that a program's
//! `tokio::time::pause()` test fast-forwards it. tokio's timers panic on a runtime built
//! without `enable_time`, and tokio cannot be asked whether they are enabled; so a wait tries
//! to make one, and where that panics (or no tokio runtime is running, or the program aborts on
//! panic, where a panic cannot be caught), it is kept by one thread of this library's instead.
//! The panic caught that way is kept out of the program's panic hook.
//!
//! A time limit ([`within`]) guards a call to a database, which takes real time: it is always
//! kept by that thread, since a paused tokio clock jumps ahead while the runtime waits for a
//! socket, and would give up on every call at once. The thread starts at the first such
//! deadline: a deadline registers its instant (a map insert under a lock, no system call
//! unless it is the earliest), and unregisters it when it ends; the thread sleeps until the
//! earliest instant and wakes the deadlines whose time is up.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::future::Future;
use std::panic::{self, PanicHookInfo};
use std::pin::Pin;
use std::sync::{Condvar, Mutex, MutexGuard, Once, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::future::{self, Either};

/// The outcome of `call`, or `None` if it did not finish within `limit` of real time.
pub(crate) async fn within<T>(limit: Duration, call: impl Future<Output = T>) -> Option<T> {
    let call = std::pin::pin!(call);
    match future::select(call, ThreadDeadline::after(limit)).await {
        Either::Left((done, _)) => Some(done),
        Either::Right(((), _)) => None,
    }
}

/// Waits for `duration`, on any runtime: on tokio's clock where it can.
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

/// A future that is ready once its time is up: on tokio's clock where it can be, on this
/// module's thread elsewhere.
enum Deadline {
    Tokio(Pin<Box<tokio::time::Sleep>>),
    Thread(ThreadDeadline),
}

impl Deadline {
    fn after(limit: Duration) -> Self {
        match tokio_sleep(limit) {
            Some(sleep) => Deadline::Tokio(Box::pin(sleep)),
            None => Deadline::Thread(ThreadDeadline::after(limit)),
        }
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.get_mut() {
            Deadline::Tokio(sleep) => sleep.as_mut().poll(cx),
            Deadline::Thread(deadline) => Pin::new(deadline).poll(cx),
        }
    }
}

/// A tokio sleep of `limit`, if a tokio runtime with timers is running here.
fn tokio_sleep(limit: Duration) -> Option<tokio::time::Sleep> {
    // A panic cannot be caught where the program aborts on one, and a hook cannot be set
    // while this thread unwinds.
    if !cfg!(panic = "unwind") || std::thread::panicking() {
        return None;
    }
    tokio::runtime::Handle::try_current().ok()?;
    QUIET.with(|quiet| quiet.set(true));
    keep_quiet_panics_out_of_the_hook();
    let sleep = panic::catch_unwind(|| tokio::time::sleep(limit));
    QUIET.with(|quiet| quiet.set(false));
    sleep.ok()
}

thread_local! {
    /// Set while this thread tries to make a tokio sleep: a panic then is the answer "no
    /// timers here", not a failure to report.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Puts a hook in front of the program's panic hook (once) that passes every panic on to it,
/// except those of a thread that is trying to make a tokio sleep.
fn keep_quiet_panics_out_of_the_hook() {
    static WRAPPED: Once = Once::new();
    WRAPPED.call_once(|| {
        let hook = panic::take_hook();
        panic::set_hook(Box::new(move |info: &PanicHookInfo<'_>| {
            if !QUIET.with(Cell::get) {
                hook(info)
            }
        }));
    });
}

/// A future that is ready once its instant has passed, kept by this module's thread.
struct ThreadDeadline {
    at: Instant,
    /// The key it is registered under, once polled.
    key: Option<Key>,
}

type Key = (Instant, u64);

impl ThreadDeadline {
    fn after(limit: Duration) -> Self {
        // A limit too far to represent never expires.
        let at = Instant::now()
            .checked_add(limit)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(u32::MAX.into()));
        ThreadDeadline { at, key: None }
    }
}

impl Future for ThreadDeadline {
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

impl Drop for ThreadDeadline {
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
                .name("eventsourcing-kit-deadlines".into())
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

    /// A runtime with timers, its clock paused: it jumps to the next timer when idle.
    fn paused() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    #[test]
    fn a_wait_follows_tokios_paused_clock() {
        paused().block_on(async {
            let started = tokio::time::Instant::now();
            // On this module's thread, this would take an hour.
            sleep(Duration::from_secs(3600)).await;
            assert!(started.elapsed() >= Duration::from_secs(3600));
        });
    }

    #[test]
    fn a_time_limit_keeps_real_time_under_tokios_paused_clock() {
        paused().block_on(async {
            // The paused clock jumps an hour ahead for the call's wait; a limit on tokio's
            // clock would have given up after sixty seconds of that clock.
            let outcome = within(Duration::from_secs(60), async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                7
            })
            .await;
            assert_eq!(outcome, Some(7));
        });
    }

    #[test]
    fn a_runtime_without_timers_is_found_out_on_every_try() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            for _ in 0..3 {
                assert!(tokio_sleep(Duration::from_millis(1)).is_none());
            }
            sleep(Duration::from_millis(1)).await;
        });
        assert!(!QUIET.with(Cell::get), "the thread is no longer marked");
    }

    #[test]
    fn outside_any_runtime_a_deadline_is_kept_by_the_thread() {
        assert!(tokio_sleep(Duration::from_millis(1)).is_none());
        let given_up = within(Duration::ZERO, future::pending::<()>());
        assert_eq!(futures_util::FutureExt::now_or_never(given_up), Some(None));
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
