//! QEMU's tests/unit/test-nested-aio-poll.c: a nested poll from a handler's busy-poll
//! ready callback must not re-enter the busy-poll callbacks; and nested polls run BHs.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

use aio_context::{AioContext, EventNotifier, FdHandler, PollParams};

#[test]
fn nested_poll_does_not_reenter_busy_poll_callbacks() {
    std::thread::spawn(|| {
        let ctx = AioContext::new().unwrap();
        ctx.set_poll_params(PollParams {
            max_ns: 1_000_000,
            grow: 2,
            shrink: 2,
        });
        let e = Rc::new(EventNotifier::new(false).unwrap());
        let in_poll = Rc::new(Cell::new(false));
        let polls = Rc::new(Cell::new(0u32));
        let readies = Rc::new(Cell::new(0u32));
        let (ip, pc) = (in_poll.clone(), polls.clone());
        let poll = move || {
            assert!(!ip.get(), "the busy-poll callback was re-entered");
            ip.set(true);
            pc.set(pc.get() + 1);
            ip.set(false);
            true // always has work: the ready callback runs, and polls again nested
        };
        let (r, c) = (readies.clone(), ctx.clone());
        let ready: Box<dyn FnMut()> = Box::new(move || {
            r.set(r.get() + 1);
            if r.get() < 3 {
                // Nested: must not busy-poll (which would call `poll` again).
                let polls_before = c.poll(false);
                let _ = polls_before;
            }
        });
        let e2 = e.clone();
        ctx.set_fd_handler(
            std::os::fd::AsRawFd::as_raw_fd(&*e),
            FdHandler::new()
                .on_read(move || {
                    e2.test_and_clear();
                })
                .on_poll(poll, Some(ready)),
        )
        .unwrap();
        // Grow the window, then poll with busy polling active.
        for _ in 0..3 {
            ctx.poll(true);
        }
        assert!(polls.get() > 0, "busy polling never ran");
        assert!(readies.get() > 0);
        ctx.remove_fd_handler(std::os::fd::AsRawFd::as_raw_fd(&*e));
    })
    .join()
    .unwrap();
}

#[test]
fn a_nested_poll_runs_bhs_scheduled_by_its_caller() {
    std::thread::spawn(|| {
        let ctx = AioContext::new().unwrap();
        let inner_ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ir = inner_ran.clone();
        let inner = ctx.new_bh(move || ir.store(true, std::sync::atomic::Ordering::SeqCst));
        let ir = inner_ran.clone();
        ctx.schedule_oneshot(move || {
            inner.schedule();
            let ctx = AioContext::current().unwrap();
            assert!(ctx.poll(false));
            assert!(ir.load(std::sync::atomic::Ordering::SeqCst));
        });
        assert!(ctx.poll(false));
        assert!(inner_ran.load(std::sync::atomic::Ordering::SeqCst));
    })
    .join()
    .unwrap();
}

/// Runs `body` on a thread of its own with a fresh context, and fails the test if it has
/// not returned within `limit` (a wedged nested poll sleeps forever; the hung thread is
/// left behind, the test reports the wedge).
fn within(limit: std::time::Duration, what: &str, body: impl FnOnce() + Send + 'static) {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        body();
        let _ = done_tx.send(());
    });
    match done_rx.recv_timeout(limit) {
        Ok(()) => thread.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            // The body panicked: report its panic.
            thread.join().unwrap();
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("wedged: {what} did not finish within {limit:?}")
        }
    }
}

/// Submits a NOP whose completion sets the returned flag.
fn submit_nop(ctx: &AioContext) -> Rc<Cell<bool>> {
    let done = Rc::new(Cell::new(false));
    let d = done.clone();
    // SAFETY: a NOP references no memory.
    unsafe { ctx.submit(io_uring::opcode::Nop::new().build(), move |_| d.set(true)) }.unwrap();
    done
}

const WEDGE: std::time::Duration = std::time::Duration::from_secs(10);

/// Issue 14 section 1 (design.md invariant 6): the outer poll reaps a request's CQE, then
/// runs a BH that drains (polls nested, blocking, until the request has completed). The
/// nested poll must run the completion the outer poll reaped; before the fix it was in
/// the outer poll's local batch, to be run only after the BHs, and the nested poll slept
/// in `io_uring_enter` forever (the vhost-user export's GET_VRING_BASE wedge).
#[test]
fn a_drain_in_a_bh_sees_completions_the_outer_poll_reaped() {
    within(WEDGE, "a nested drain in a BH", || {
        let ctx = AioContext::new().unwrap();
        if !ctx.supports_io_uring_ops() {
            eprintln!("SKIPPED a_drain_in_a_bh_sees_completions...: no io_uring operations");
            return;
        }
        let done = submit_nop(&ctx);
        let done_flag = std::sync::Arc::new(AtomicBool::new(false));
        let drained = std::sync::Arc::new(AtomicBool::new(false));
        // The BH (which must be Send) watches an atomic copy of the NOP's flag, set by a
        // NOP callback of its own queued behind the first in the same batch.
        let df = done_flag.clone();
        // SAFETY: a NOP references no memory.
        unsafe {
            ctx.submit(io_uring::opcode::Nop::new().build(), move |_| {
                df.store(true, SeqCst)
            })
        }
        .unwrap();
        let (d, dr) = (done_flag.clone(), drained.clone());
        let bh = ctx.new_bh(move || {
            let c = AioContext::current().unwrap();
            // The interleaving of the bug: the CQEs are already off the ring (no operation
            // in flight) but their callbacks have not run.
            assert_eq!(c.io_uring_ops_in_flight(), 0, "the outer poll did not reap");
            assert!(!d.load(SeqCst), "the completion ran before the BH");
            while !d.load(SeqCst) {
                c.poll(true);
            }
            dr.store(true, SeqCst);
        });
        bh.schedule();
        // One outer poll: submits the NOPs, reaps their CQEs, runs the BH.
        ctx.poll(true);
        assert!(drained.load(SeqCst) && done.get() && done_flag.load(SeqCst));
    });
}

/// The same with the drain in a completion callback: the outer poll reaped two CQEs in
/// one batch and the first one's callback waits for the second.
#[test]
fn a_drain_in_a_completion_sees_the_rest_of_its_batch() {
    within(WEDGE, "a nested drain in a completion callback", || {
        let ctx = AioContext::new().unwrap();
        if !ctx.supports_io_uring_ops() {
            eprintln!("SKIPPED a_drain_in_a_completion_sees_the_rest...: no io_uring operations");
            return;
        }
        let second: Rc<RefCell<Option<Rc<Cell<bool>>>>> = Rc::default();
        let drained = Rc::new(Cell::new(false));
        let (c, s, dr) = (ctx.clone(), second.clone(), drained.clone());
        // SAFETY: a NOP references no memory.
        unsafe {
            ctx.submit(io_uring::opcode::Nop::new().build(), move |_| {
                let second = s.borrow().clone().unwrap();
                while !second.get() {
                    c.poll(true);
                }
                dr.set(true);
            })
        }
        .unwrap();
        *second.borrow_mut() = Some(submit_nop(&ctx));
        while !drained.get() {
            ctx.poll(true);
        }
    });
}

/// Issue 14 section 7: a timer re-armed (already expired) inside its own callback, which
/// then runs a nested poll, must fire again once the callback returns. Before the fix the
/// nested poll's expiry pass took the timer off the armed list, found its callback slot
/// empty (running) and dropped it: that firing was lost and the timer stayed disarmed.
#[test]
fn a_timer_rearmed_in_its_callback_survives_a_nested_poll() {
    within(WEDGE, "the re-armed timer", || {
        let ctx = AioContext::new().unwrap();
        let fired = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let timer_slot: std::sync::Arc<std::sync::Mutex<Option<aio_context::Timer>>> =
            std::sync::Arc::default();
        let (f, slot) = (fired.clone(), timer_slot.clone());
        let timer = ctx.new_timer(move || {
            let n = f.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            if n == 1 {
                let timer = slot.lock().unwrap().clone().unwrap();
                timer.arm(std::time::Instant::now()); // due at once
                let ctx = AioContext::current().unwrap();
                for _ in 0..3 {
                    ctx.poll(false); // nested: must neither run nor drop the timer
                }
                assert_eq!(f.load(std::sync::atomic::Ordering::SeqCst), 1, "re-entered");
                assert!(
                    timer.is_armed(),
                    "the nested poll disarmed the re-armed timer"
                );
            }
        });
        *timer_slot.lock().unwrap() = Some(timer.clone());
        timer.arm(std::time::Instant::now());
        let start = std::time::Instant::now();
        while fired.load(std::sync::atomic::Ordering::SeqCst) < 2 {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(5),
                "lost firing"
            );
            ctx.poll(true);
        }
        assert!(!timer.is_armed());
        timer.delete();
    });
}
