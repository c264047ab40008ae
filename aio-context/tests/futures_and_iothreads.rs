//! Futures on a context, IoThreads, timers from other threads, io_uring operations.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aio_context::{AioContext, IoThread};

fn on_thread<R: Send + 'static>(f: impl FnOnce(&AioContext) -> R + Send + 'static) -> R {
    std::thread::spawn(move || f(&AioContext::new().unwrap()))
        .join()
        .unwrap()
}

#[test]
fn spawned_futures_run_and_join() {
    on_thread(|ctx| {
        let log = Rc::new(RefCell::new(Vec::new()));
        let l = log.clone();
        let a = ctx.spawn(async move {
            l.borrow_mut().push("a");
            1
        });
        let l = log.clone();
        let b = ctx.spawn(async move {
            let x = a.await;
            l.borrow_mut().push("b");
            x + 1
        });
        assert_eq!(ctx.block_on(b), 2);
        assert_eq!(*log.borrow(), ["a", "b"]);
    });
}

#[test]
fn a_future_waits_for_a_timer_armed_from_another_thread() {
    on_thread(|ctx| {
        let (tx, rx) = std::sync::mpsc::channel::<std::task::Waker>();
        let fired = Arc::new(AtomicUsize::new(0));
        let f = fired.clone();
        let timer = ctx.new_timer(move || {
            f.fetch_add(1, Ordering::SeqCst);
            if let Ok(w) = rx.try_recv() {
                w.wake();
            }
        });
        let t = timer.clone();
        std::thread::spawn(move || t.arm_in(Duration::from_millis(20)))
            .join()
            .unwrap();
        let start = Instant::now();
        let f = fired.clone();
        ctx.block_on(std::future::poll_fn(move |cx| {
            if f.load(Ordering::SeqCst) > 0 {
                std::task::Poll::Ready(())
            } else {
                tx.send(cx.waker().clone()).unwrap();
                std::task::Poll::Pending
            }
        }));
        assert!(start.elapsed() >= Duration::from_millis(15));
        assert_eq!(fired.load(Ordering::SeqCst), 1);
        timer.delete();
    });
}

#[test]
fn timers_fire_in_deadline_order_and_disarm() {
    on_thread(|ctx| {
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let now = Instant::now();
        let mk = |name: &'static str| {
            let o = order.clone();
            ctx.new_timer(move || o.lock().unwrap().push(name))
        };
        let (a, b, c) = (mk("a"), mk("b"), mk("c"));
        c.arm(now + Duration::from_millis(3));
        a.arm(now + Duration::from_millis(1));
        b.arm(now + Duration::from_millis(2));
        b.disarm();
        assert!(!b.is_armed());
        while a.is_armed() || c.is_armed() {
            ctx.poll(true);
        }
        assert_eq!(*order.lock().unwrap(), ["a", "c"]);
    });
}

#[test]
fn a_timer_rearmed_in_the_past_runs_once_per_poll() {
    on_thread(|ctx| {
        let runs = Arc::new(AtomicUsize::new(0));
        let me: Arc<std::sync::Mutex<Option<aio_context::Timer>>> = Arc::default();
        let (r, m) = (runs.clone(), me.clone());
        let t = ctx.new_timer(move || {
            r.fetch_add(1, Ordering::SeqCst);
            m.lock()
                .unwrap()
                .as_ref()
                .unwrap()
                .arm(Instant::now() - Duration::from_secs(1));
        });
        *me.lock().unwrap() = Some(t.clone());
        t.arm(Instant::now());
        assert!(ctx.poll(false));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(ctx.poll(false));
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        me.lock().unwrap().take();
        t.delete();
    });
}

#[test]
fn io_uring_nop_completes_in_the_submitting_context() {
    on_thread(|ctx| {
        if !ctx.supports_io_uring_ops() {
            eprintln!("SKIP: io_uring operations are not available on this kernel");
            return;
        }
        let done = Rc::new(RefCell::new(None));
        let d = done.clone();
        let home = std::thread::current().id();
        // SAFETY: a NOP references no memory.
        unsafe {
            ctx.submit(io_uring::opcode::Nop::new().build(), move |res| {
                assert_eq!(std::thread::current().id(), home);
                *d.borrow_mut() = Some(res);
            })
        }
        .unwrap();
        while done.borrow().is_none() {
            ctx.poll(true);
        }
        assert_eq!(*done.borrow(), Some(0));
    });
}

#[test]
fn one_context_per_thread() {
    on_thread(|_ctx| {
        assert!(matches!(
            AioContext::new(),
            Err(aio_context::Error::ContextExists)
        ));
    });
}

#[test]
fn iothread_runs_closures_and_stops_cleanly() {
    let t = IoThread::spawn("worker").unwrap();
    assert_eq!(t.run(|| 40 + 2), 42);
    let counter = Arc::new(AtomicUsize::new(0));
    for _ in 0..100 {
        let c = counter.clone();
        t.handle().schedule_oneshot(move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
    }
    t.run(|| ());
    assert_eq!(counter.load(Ordering::SeqCst), 100);
    t.stop();
}

#[test]
fn rcu_reads_in_a_context_cost_nothing_and_grace_periods_pass() {
    let cell = Arc::new(rcu::RcuCell::new(1u32));
    let t = IoThread::spawn("rcu-reader").unwrap();
    let c = cell.clone();
    assert_eq!(
        t.run(move || AioContext::current()
            .unwrap()
            .rcu_read(|g| *c.load(g).unwrap())),
        1
    );
    // The iothread sleeps (offline) or polls (quiescent states): grace periods end.
    cell.replace(2);
    rcu::synchronize();
    rcu::barrier();
    let c = cell.clone();
    assert_eq!(
        t.run(move || AioContext::current()
            .unwrap()
            .rcu_read(|g| *c.load(g).unwrap())),
        2
    );
    t.stop();
}

#[test]
fn an_iothread_can_be_stopped_from_inside_its_own_loop() {
    let t = IoThread::spawn("self-stopper").unwrap();
    let id = t.run(|| std::thread::current().id());
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = t.handle().clone();
    // Hand the IoThread to its own loop and drop it there: no self-join deadlock.
    handle.schedule_oneshot(move || {
        assert_eq!(std::thread::current().id(), id);
        drop(t);
        tx.send(()).unwrap();
    });
    rx.recv_timeout(std::time::Duration::from_secs(5))
        .expect("the iothread stopped itself");
}
