//! Timers: callbacks run by the owning context once their deadline passes, kept in
//! deadline order.
//!
//! The list is a `BTreeMap` keyed by `(deadline, id)` behind a mutex, because timers may
//! be armed from any thread (QEMU's `timer_mod` from vCPU threads): an ordered map gives
//! the earliest deadline in O(log n) and removal by key without intrusive links or
//! unsafe code (DESIGN.md says why `intrusive-collections` does not fit). Arming a timer
//! earlier than the current head notifies the owner, so a sleeping loop shortens its
//! timeout.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A timer's callback.
type TimerCallback = Box<dyn FnMut() + Send>;

struct TimerInner {
    id: u64,
    /// Taken out while it runs; `None` after `delete`.
    callback: Mutex<Option<TimerCallback>>,
    deleted: AtomicBool,
    list: Arc<TimerList>,
}

/// Armed timers. Keys are `(deadline, arm sequence)`: unique per arming, so a run of
/// expired timers can tell a timer that was re-armed or disarmed meanwhile.
#[derive(Default)]
struct Armed {
    by_deadline: BTreeMap<(Instant, u64), Arc<TimerInner>>,
    key_of: HashMap<u64, (Instant, u64)>,
    next_seq: u64,
}

/// The timers of one context.
pub(crate) struct TimerList {
    armed: Mutex<Armed>,
    /// How many timers are armed, readable without the lock: a poll with no timer armed
    /// skips the clock read and the lock. Updated under the lock; a poll that reads a
    /// stale zero is woken by the arming's notification and looks again.
    armed_count: AtomicUsize,
    next_id: AtomicU64,
    /// Wakes the owner when the earliest deadline moves earlier.
    wake: Box<dyn Fn() + Send + Sync>,
}

/// A timer owned by one context: [`Timer::arm`] it from any thread; its callback runs on
/// the context's thread once the deadline has passed (QEMU's `QEMUTimer`).
///
/// Handles are references: clones refer to the same timer; dropping them does not
/// disarm it. [`Timer::delete`] disarms it for good and drops its callback.
#[derive(Clone)]
pub struct Timer {
    inner: Arc<TimerInner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl TimerList {
    pub(crate) fn new(wake: impl Fn() + Send + Sync + 'static) -> Arc<TimerList> {
        Arc::new(TimerList {
            armed: Mutex::default(),
            armed_count: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            wake: Box::new(wake),
        })
    }

    /// A new, disarmed timer.
    pub(crate) fn new_timer(self: &Arc<Self>, callback: impl FnMut() + Send + 'static) -> Timer {
        Timer {
            inner: Arc::new(TimerInner {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                callback: Mutex::new(Some(Box::new(callback))),
                deleted: AtomicBool::new(false),
                list: self.clone(),
            }),
        }
    }

    /// Whether any timer is armed (a hint; see `armed_count`).
    pub(crate) fn any_armed(&self) -> bool {
        self.armed_count.load(Ordering::Acquire) > 0
    }

    fn update_count(&self, armed: &Armed) {
        self.armed_count
            .store(armed.by_deadline.len(), Ordering::Release);
    }

    /// Time until the earliest deadline (zero if passed), or `None` if nothing is armed.
    pub(crate) fn timeout(&self, now: Instant) -> Option<Duration> {
        let armed = lock(&self.armed);
        armed
            .by_deadline
            .keys()
            .next()
            .map(|(deadline, _)| deadline.saturating_duration_since(now))
    }

    /// Runs the timers whose deadline is at or before `now`, in deadline order, each at
    /// most once per call (a callback that re-arms its timer in the past runs again in
    /// the next call, not in a loop here). A timer disarmed by an earlier callback of
    /// the same call does not run. A timer whose callback is running (a nested poll
    /// inside it) is not re-entered and stays armed. Returns whether any ran.
    pub(crate) fn run_expired(&self, now: Instant) -> bool {
        let expired: Vec<(Instant, u64)> = {
            let armed = lock(&self.armed);
            armed
                .by_deadline
                .range(..=(now, u64::MAX))
                .map(|(k, _)| *k)
                .collect()
        };
        let mut ran = false;
        for key in expired {
            let (timer, mut callback) = {
                let mut armed = lock(&self.armed);
                let Some(timer) = armed.by_deadline.get(&key) else {
                    continue; // disarmed or re-armed since the list was taken
                };
                // Taken out for the call: `arm`, `disarm` and `delete` from the callback
                // (or from other threads) do not wait for it. Lock order: list, then
                // callback (nothing takes them the other way round).
                let Some(callback) = lock(&timer.callback).take() else {
                    // Its callback is running: this is a nested poll inside that very
                    // callback, which re-armed its timer. It stays armed, and fires when
                    // the outer call has returned its callback; disarming it here would
                    // lose that firing (issue 14 section 7).
                    continue;
                };
                let timer = armed.by_deadline.remove(&key).expect("looked up above");
                armed.key_of.remove(&timer.id);
                self.update_count(&armed);
                (timer, callback)
            };
            callback();
            ran = true;
            // `deleted` is set before `delete` takes the callback lock, so either it sees
            // the callback we put back (and drops it) or we see `deleted` here.
            let mut slot = lock(&timer.callback);
            if !timer.deleted.load(Ordering::Acquire) {
                *slot = Some(callback);
            } else {
                drop(slot);
                drop(callback);
            }
        }
        ran
    }

    /// Drops every armed timer's callback (the context is going away).
    pub(crate) fn clear(&self) {
        let armed = std::mem::take(&mut *lock(&self.armed));
        self.armed_count.store(0, Ordering::Release);
        for timer in armed.by_deadline.into_values() {
            let callback = lock(&timer.callback).take();
            drop(callback);
        }
    }
}

impl Timer {
    /// Arms (or re-arms) the timer to fire at `deadline`. Safe from any thread; a
    /// deleted timer stays disarmed.
    pub fn arm(&self, deadline: Instant) {
        let inner = &self.inner;
        let list = &inner.list;
        let now_first = {
            let mut armed = lock(&list.armed);
            // Checked under the list lock, which `delete` holds while setting it: a
            // deleted timer is never re-armed.
            if inner.deleted.load(Ordering::Acquire) {
                return;
            }
            let key = (deadline, armed.next_seq);
            armed.next_seq += 1;
            if let Some(old) = armed.key_of.insert(inner.id, key) {
                armed.by_deadline.remove(&old);
            }
            armed.by_deadline.insert(key, inner.clone());
            list.update_count(&armed);
            armed.by_deadline.keys().next() == Some(&key)
        };
        if now_first {
            (list.wake)();
        }
    }

    /// Arms the timer to fire `delay` from now.
    pub fn arm_in(&self, delay: Duration) {
        self.arm(Instant::now() + delay);
    }

    /// Disarms the timer if it is armed.
    pub fn disarm(&self) {
        let list = &self.inner.list;
        let mut armed = lock(&list.armed);
        if let Some(old) = armed.key_of.remove(&self.inner.id) {
            armed.by_deadline.remove(&old);
            list.update_count(&armed);
        }
    }

    /// Whether the timer is armed.
    pub fn is_armed(&self) -> bool {
        lock(&self.inner.list.armed)
            .key_of
            .contains_key(&self.inner.id)
    }

    /// The deadline the timer is armed for.
    pub fn deadline(&self) -> Option<Instant> {
        lock(&self.inner.list.armed)
            .key_of
            .get(&self.inner.id)
            .map(|k| k.0)
    }

    /// Disarms the timer for good and drops its callback (at once, or when a call in
    /// progress returns).
    pub fn delete(&self) {
        {
            let list = &self.inner.list;
            let mut armed = lock(&list.armed);
            self.inner.deleted.store(true, Ordering::Release);
            if let Some(old) = armed.key_of.remove(&self.inner.id) {
                armed.by_deadline.remove(&old);
                list.update_count(&armed);
            }
        }
        let callback = lock(&self.inner.callback).take();
        drop(callback);
    }
}

impl fmt::Debug for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timer")
            .field("deadline", &self.deadline())
            .finish_non_exhaustive()
    }
}
