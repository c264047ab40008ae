//! QEMU's tests/unit/test-nested-aio-poll.c: a nested poll from a handler's busy-poll
//! ready callback must not re-enter the busy-poll callbacks; and nested polls run BHs.

use std::cell::Cell;
use std::rc::Rc;

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
