//! Slices, order, nesting, one-shots, idle BHs and teardown, as users see them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bottom_half::{Bh, BhList, IDLE_TIMEOUT};

fn list() -> BhList {
    BhList::new(|| {})
}

type Log = Arc<Mutex<Vec<&'static str>>>;

/// A shared log, and a maker of callbacks that append their name to it.
fn recorder() -> (Log, impl Fn(&'static str) -> Box<dyn FnMut() + Send>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    (log, move |name| {
        let l = l.clone();
        Box::new(move || l.lock().unwrap().push(name))
    })
}

#[test]
fn a_slice_runs_in_first_scheduled_order() {
    let list = list();
    let (log, cb) = recorder();
    let s = list.scheduler();
    let (a, b, c) = (s.new_bh(cb("a")), s.new_bh(cb("b")), s.new_bh(cb("c")));
    c.schedule();
    a.schedule();
    b.schedule();
    a.schedule(); // already pending: keeps its place
    assert!(list.poll());
    assert_eq!(*log.lock().unwrap(), ["c", "a", "b"]);
}

#[test]
fn a_bh_scheduled_during_a_poll_runs_in_the_next_one() {
    let list = list();
    let (log, cb) = recorder();
    let s = list.scheduler();
    let later = s.new_bh(cb("later"));
    let mut first_cb = cb("first");
    let first = s.new_bh(move || {
        first_cb();
        later.schedule();
    });
    first.schedule();
    assert!(list.poll());
    assert_eq!(*log.lock().unwrap(), ["first"]);
    assert!(list.poll());
    assert_eq!(*log.lock().unwrap(), ["first", "later"]);
}

#[test]
fn a_nested_poll_runs_the_rest_of_the_slice_and_newer_bhs() {
    let list = Box::new(list());
    let (log, cb) = recorder();
    let s = list.scheduler();
    let newer = s.new_bh(cb("newer"));
    let second = s.new_bh(cb("second"));
    let mut nesting_cb = cb("nesting");
    // The BH list is not Sync; the test's callbacks run on this thread only, so a raw
    // pointer stands in for the reference an event loop's callbacks would have.
    let list_ptr = std::ptr::from_ref::<BhList>(&*list) as usize;
    let nesting = s.new_bh(move || {
        nesting_cb();
        newer.schedule();
        // SAFETY: the list outlives the poll that runs this callback, on this thread.
        let list = unsafe { &*(list_ptr as *const BhList) };
        assert!(list.poll(), "the nested poll runs `second` and `newer`");
    });
    nesting.schedule();
    second.schedule();
    assert!(list.poll());
    assert_eq!(*log.lock().unwrap(), ["nesting", "second", "newer"]);
    assert!(!list.poll());
}

#[test]
fn a_bh_is_never_reentered_by_a_nested_poll() {
    let list = Box::new(list());
    let depth = Arc::new(AtomicUsize::new(0));
    let runs = Arc::new(AtomicUsize::new(0));
    let me: Arc<Mutex<Option<Bh>>> = Arc::default();
    let list_ptr = std::ptr::from_ref::<BhList>(&*list) as usize;
    let (d, r, m) = (depth.clone(), runs.clone(), me.clone());
    let bh = list.scheduler().new_bh(move || {
        assert_eq!(d.fetch_add(1, Ordering::SeqCst), 0, "re-entered");
        if r.fetch_add(1, Ordering::SeqCst) == 0 {
            m.lock().unwrap().as_ref().unwrap().schedule();
            // SAFETY: as in the previous test.
            let list = unsafe { &*(list_ptr as *const BhList) };
            list.poll(); // must not run this BH again now
        }
        d.fetch_sub(1, Ordering::SeqCst);
    });
    *me.lock().unwrap() = Some(bh.clone());
    bh.schedule();
    list.poll();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    list.poll();
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "the deferred run happens in a later poll"
    );
    me.lock().unwrap().take();
    bh.delete();
    list.poll();
}

#[test]
fn deleting_a_bh_from_its_own_callback_inside_a_nested_poll() {
    let list = Box::new(list());
    let list_ptr = std::ptr::from_ref::<BhList>(&*list) as usize;
    let victim_runs = Arc::new(AtomicUsize::new(0));
    let vr = victim_runs.clone();
    let s = list.scheduler();
    let victim = s.new_bh(move || {
        vr.fetch_add(1, Ordering::SeqCst);
    });
    let v = victim.clone();
    let outer = s.new_bh(move || {
        v.schedule();
        v.delete(); // deleted while pending: the nested poll must skip it
        // SAFETY: as above.
        let list = unsafe { &*(list_ptr as *const BhList) };
        assert!(!list.poll());
    });
    outer.schedule();
    assert!(list.poll());
    assert_eq!(victim_runs.load(Ordering::SeqCst), 0);
    assert!(victim.is_deleted());
    victim.schedule();
    assert!(!list.poll());
    assert_eq!(victim_runs.load(Ordering::SeqCst), 0);
}

#[test]
fn oneshots_run_once_and_free_their_closure() {
    let list = list();
    let witness = Arc::new(());
    let w = witness.clone();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    list.scheduler().schedule_oneshot(move || {
        let _keep = &w;
        r.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(Arc::strong_count(&witness), 2);
    assert!(list.poll());
    assert!(!list.poll());
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(
        Arc::strong_count(&witness),
        1,
        "the one-shot closure was freed"
    );
}

/// One-shots take their own path through `poll` (no handle, no flag updates): they
/// must still keep FIFO order with BHs that have handles, run what they schedule in
/// the next slice, and may run a nested poll.
#[test]
fn oneshots_keep_order_slices_and_nested_polls() {
    let list = Box::new(list());
    let (log, cb) = recorder();
    let bh = list.scheduler().new_bh(cb("bh"));
    list.schedule_oneshot(cb("first"));
    bh.schedule();
    let scheduler = list.scheduler();
    let later = cb("scheduled from a one-shot");
    list.schedule_oneshot(move || scheduler.schedule_oneshot(later));
    list.scheduler().schedule_oneshot(cb("last"));
    assert!(list.poll());
    assert_eq!(*log.lock().unwrap(), ["first", "bh", "last"]);
    assert!(
        list.poll(),
        "what a one-shot schedules runs in the next poll"
    );
    assert_eq!(log.lock().unwrap()[3], "scheduled from a one-shot");
    assert!(!list.poll());

    // As in a_nested_poll_runs_the_rest_of_the_slice_and_newer_bhs: callbacks run on
    // this thread only, so a raw pointer stands in for an event loop's reference.
    let list_ptr = std::ptr::from_ref::<BhList>(&*list) as usize;
    let nested = cb("nested");
    let mut after = cb("after the nested poll");
    list.schedule_oneshot(move || {
        // SAFETY: the list outlives the poll that runs this callback, on this thread.
        let list = unsafe { &*(list_ptr as *const BhList) };
        list.schedule_oneshot(nested);
        assert!(list.poll(), "the nested poll runs the new one-shot");
        after();
    });
    assert!(list.poll());
    assert_eq!(
        log.lock().unwrap()[4..],
        ["nested", "after the nested poll"]
    );
    assert!(!list.poll());
    bh.delete();
}

#[test]
fn idle_bhs_are_not_progress_and_bound_the_sleep() {
    let list = list();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let bh = list.scheduler().new_bh(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(list.timeout(), None);
    bh.schedule_idle();
    assert_eq!(list.timeout(), Some(IDLE_TIMEOUT));
    assert!(!list.poll(), "an idle BH is not progress");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    bh.schedule();
    assert_eq!(list.timeout(), Some(Duration::ZERO));
    assert!(list.poll());
}

#[test]
fn deleting_frees_the_callback_at_the_next_poll() {
    let list = list();
    let witness = Arc::new(());
    let w = witness.clone();
    let bh = list.scheduler().new_bh(move || {
        let _keep = &w;
    });
    bh.delete();
    assert_eq!(
        list.timeout(),
        Some(Duration::ZERO),
        "the deletion is work to do"
    );
    assert_eq!(Arc::strong_count(&witness), 2);
    list.poll();
    assert_eq!(Arc::strong_count(&witness), 1);
    bh.schedule(); // harmless
    assert!(!list.poll());
}

#[test]
fn dropping_the_list_releases_pending_bhs_and_later_schedules() {
    let witness = Arc::new(());
    let list = list();
    let w = witness.clone();
    let bh = list.scheduler().new_bh(move || {
        let _keep = &w;
    });
    bh.schedule();
    let scheduler = list.scheduler();
    drop(list);
    bh.schedule();
    bh.delete();
    let w = witness.clone();
    scheduler.schedule_oneshot(move || drop(w)); // never runs; must not leak
    drop(bh);
    drop(scheduler);
    assert_eq!(Arc::strong_count(&witness), 1, "every closure was freed");
}

#[test]
fn notify_is_called_when_a_bh_becomes_pending() {
    let wakeups = Arc::new(AtomicUsize::new(0));
    let w = wakeups.clone();
    let list = BhList::new(move || {
        w.fetch_add(1, Ordering::SeqCst);
    });
    let bh = list.scheduler().new_bh(|| {});
    bh.schedule();
    bh.schedule();
    assert_eq!(
        wakeups.load(Ordering::SeqCst),
        1,
        "a coalesced schedule does not wake"
    );
    bh.cancel();
    bh.schedule();
    assert_eq!(
        wakeups.load(Ordering::SeqCst),
        2,
        "rescheduling a cancelled BH wakes"
    );
    list.poll();
    bh.schedule();
    assert_eq!(wakeups.load(Ordering::SeqCst), 3);
}

#[test]
fn a_panicking_callback_keeps_its_bh_usable() {
    let list = list();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let bh = list.scheduler().new_bh(move || {
        if r.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("deliberate panic in a BH (test)");
        }
    });
    bh.schedule();
    assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| list.poll())).is_err());
    bh.schedule();
    assert!(list.poll());
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}
