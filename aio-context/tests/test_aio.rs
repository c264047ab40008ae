//! QEMU's tests/unit/test-aio.c, the cases that apply, with the same expected poll
//! results: BHs through the context, event notifiers, and timers.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aio_context::{AioContext, Bh, EventNotifier};

/// Runs each test on a fresh thread: one context per thread.
fn with_ctx(f: impl FnOnce(&AioContext) + Send + 'static) {
    std::thread::spawn(move || {
        let ctx = AioContext::new().expect("create context");
        f(&ctx);
    })
    .join()
    .unwrap();
}

fn drain(ctx: &AioContext) {
    while ctx.poll(false) {}
}

#[test]
fn aio_notify() {
    with_ctx(|ctx| {
        assert!(!ctx.poll(false));
        ctx.notify();
        assert!(!ctx.poll(true), "a notify alone is not progress");
        assert!(!ctx.poll(false));
    });
}

#[test]
fn bh_schedule_through_the_context() {
    with_ctx(|ctx| {
        let n = Arc::new(AtomicUsize::new(0));
        let c = n.clone();
        let bh = ctx.new_bh(move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        bh.schedule();
        assert_eq!(n.load(Ordering::SeqCst), 0);
        assert!(ctx.poll(true));
        assert_eq!(n.load(Ordering::SeqCst), 1);
        assert!(!ctx.poll(false));
        bh.delete();
    });
}

#[test]
fn bh_schedule10() {
    with_ctx(|ctx| {
        let n = Arc::new(AtomicUsize::new(0));
        let me: Arc<Mutex<Option<Bh>>> = Arc::default();
        let (c, m) = (n.clone(), me.clone());
        let bh = ctx.new_bh(move || {
            if c.fetch_add(1, Ordering::SeqCst) + 1 < 10 {
                m.lock().unwrap().as_ref().unwrap().schedule();
            }
        });
        *me.lock().unwrap() = Some(bh.clone());
        bh.schedule();
        assert!(ctx.poll(false));
        assert_eq!(n.load(Ordering::SeqCst), 1);
        assert!(ctx.poll(true));
        assert_eq!(n.load(Ordering::SeqCst), 2);
        while n.load(Ordering::SeqCst) < 10 {
            ctx.poll(true);
        }
        assert!(!ctx.poll(false));
        me.lock().unwrap().take();
        bh.delete();
    });
}

/// QEMU's `EventNotifierTestData` and `event_ready_cb`.
struct EventData {
    e: EventNotifier,
    n: Cell<u32>,
    active: Cell<u32>,
    auto_set: bool,
}

fn event_data(active: u32, auto_set: bool) -> Rc<EventData> {
    Rc::new(EventData {
        e: EventNotifier::new(false).unwrap(),
        n: Cell::new(0),
        active: Cell::new(active),
        auto_set,
    })
}

fn set_event_notifier(ctx: &AioContext, data: &Rc<EventData>, with_cb: bool) {
    let d = data.clone();
    let cb: Option<Box<dyn FnMut()>> = with_cb.then(|| {
        Box::new(move || {
            assert!(d.e.test_and_clear());
            d.n.set(d.n.get() + 1);
            if d.active.get() > 0 {
                d.active.set(d.active.get() - 1);
            }
            if d.auto_set && d.active.get() > 0 {
                d.e.set().unwrap();
            }
        }) as Box<dyn FnMut()>
    });
    ctx.set_event_notifier(&data.e, cb).unwrap();
}

#[test]
fn set_event_notifier_add_remove() {
    with_ctx(|ctx| {
        let data = event_data(0, false);
        set_event_notifier(ctx, &data, true);
        assert!(!ctx.poll(false));
        assert_eq!(data.n.get(), 0);
        set_event_notifier(ctx, &data, false);
        assert!(!ctx.poll(false));
        assert_eq!(data.n.get(), 0);
        data.e.set().unwrap();
        assert!(!ctx.poll(false), "a removed handler does not run");
        assert_eq!(data.n.get(), 0);
    });
}

#[test]
fn wait_event_notifier() {
    with_ctx(|ctx| {
        let data = event_data(1, false);
        set_event_notifier(ctx, &data, true);
        drain(ctx);
        assert_eq!(data.n.get(), 0);
        assert_eq!(data.active.get(), 1);
        data.e.set().unwrap();
        assert!(ctx.poll(false));
        assert_eq!(data.n.get(), 1);
        assert_eq!(data.active.get(), 0);
        assert!(!ctx.poll(false));
        assert_eq!(data.n.get(), 1);
        set_event_notifier(ctx, &data, false);
        drain(ctx);
        assert_eq!(data.n.get(), 1);
    });
}

#[test]
fn flush_event_notifier() {
    with_ctx(|ctx| {
        let data = event_data(10, true);
        set_event_notifier(ctx, &data, true);
        drain(ctx);
        assert_eq!(data.n.get(), 0);
        assert_eq!(data.active.get(), 10);
        data.e.set().unwrap();
        assert!(ctx.poll(false));
        assert_eq!(data.n.get(), 1);
        assert_eq!(data.active.get(), 9);
        assert!(ctx.poll(false));
        drain(ctx);
        assert_eq!(data.n.get(), 10);
        assert_eq!(data.active.get(), 0);
        assert!(!ctx.poll(false));
        set_event_notifier(ctx, &data, false);
        drain(ctx);
    });
}

#[test]
fn wait_event_notifier_noflush() {
    with_ctx(|ctx| {
        let data = event_data(0, false);
        let dummy = event_data(1, false);
        set_event_notifier(ctx, &data, true);
        assert!(!ctx.poll(false));
        assert_eq!(data.n.get(), 0);
        // Until there is an active descriptor, aio_poll may or may not call
        // event_ready_cb. Still, it must not block.
        data.e.set().unwrap();
        assert!(ctx.poll(true));
        data.n.set(0);
        // An active event notifier forces aio_poll to look at EventNotifiers.
        set_event_notifier(ctx, &dummy, true);
        data.e.set().unwrap();
        assert!(ctx.poll(false));
        assert_eq!(data.n.get(), 1);
        assert!(!ctx.poll(false));
        assert_eq!(data.n.get(), 1);
        data.e.set().unwrap();
        assert!(ctx.poll(false));
        assert_eq!(data.n.get(), 2);
        assert!(!ctx.poll(false));
        assert_eq!(data.n.get(), 2);
        dummy.e.set().unwrap();
        while dummy.active.get() > 0 {
            ctx.poll(true);
        }
        assert_eq!(data.n.get(), 2);
        assert_eq!(dummy.n.get(), 1);
        set_event_notifier(ctx, &dummy, false);
        set_event_notifier(ctx, &data, false);
        assert!(!ctx.poll(false));
        assert_eq!(data.n.get(), 2);
    });
}

#[test]
fn timer_schedule() {
    with_ctx(|ctx| {
        let e = event_data(0, false);
        set_event_notifier(ctx, &e, true);
        drain(ctx);
        let n = Arc::new(AtomicUsize::new(0));
        let me: Arc<Mutex<Option<aio_context::Timer>>> = Arc::default();
        let period = Duration::from_millis(750);
        let (c, m) = (n.clone(), me.clone());
        let timer = ctx.new_timer(move || {
            // timer_test_cb: count, and re-arm until max (2).
            if c.fetch_add(1, Ordering::SeqCst) + 1 < 2 {
                m.lock().unwrap().as_ref().unwrap().arm_in(period);
            }
        });
        *me.lock().unwrap() = Some(timer.clone());
        timer.arm_in(period);
        assert_eq!(n.load(Ordering::SeqCst), 0);
        drain(ctx);
        assert!(!ctx.poll(false));
        assert_eq!(n.load(Ordering::SeqCst), 0);
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(n.load(Ordering::SeqCst), 0);
        assert!(ctx.poll(false));
        assert_eq!(n.load(Ordering::SeqCst), 1);
        drain(ctx);
        assert!(!ctx.poll(false));
        assert_eq!(n.load(Ordering::SeqCst), 1);
        let before = Instant::now();
        assert!(
            ctx.poll(true),
            "the blocking poll sleeps until the re-armed timer fires"
        );
        assert!(before.elapsed() >= Duration::from_millis(500));
        assert_eq!(n.load(Ordering::SeqCst), 2);
        assert!(!ctx.poll(false));
        assert_eq!(n.load(Ordering::SeqCst), 2);
        set_event_notifier(ctx, &e, false);
        me.lock().unwrap().take();
        timer.delete();
    });
}
