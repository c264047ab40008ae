//! `AioContext::cancel_op` and `supports_opcode`: a cancelled operation completes once,
//! with `-ECANCELED`, in its own context; a stale id is ignored.

use std::cell::RefCell;
use std::rc::Rc;

use aio_context::AioContext;
use io_uring::{opcode, types};

#[test]
fn cancel_in_flight_op_completes_once_with_ecanceled() {
    let ctx = AioContext::new().unwrap();
    if !ctx.supports_io_uring_ops() {
        eprintln!("SKIPPED: io_uring operations are not available on this kernel");
        return;
    }
    assert!(ctx.supports_opcode(opcode::Timeout::CODE));
    assert!(ctx.supports_opcode(opcode::Readv::CODE));
    // A 60 s timeout: only the cancel ends it early.
    let ts = Box::new(types::Timespec::new().sec(60));
    let results = Rc::new(RefCell::new(Vec::new()));
    let r = results.clone();
    let entry = opcode::Timeout::new(&*ts).build();
    // SAFETY: the timespec lives in `ts`, which the callback owns until the op completes.
    let id = unsafe {
        ctx.submit(entry, move |res| {
            drop(ts);
            r.borrow_mut().push(res);
        })
    }
    .unwrap();
    ctx.poll(false);
    assert!(results.borrow().is_empty());
    assert!(ctx.cancel_op(id).unwrap());
    let start = std::time::Instant::now();
    while results.borrow().is_empty() {
        ctx.poll(true);
        assert!(start.elapsed().as_secs() < 10, "cancel did not take effect");
    }
    assert_eq!(*results.borrow(), vec![-libc::ECANCELED]);
    // Completed: the id is stale now, and a cancel does nothing.
    assert!(!ctx.cancel_op(id).unwrap());
    assert_eq!(ctx.io_uring_ops_in_flight(), 0);
}

#[test]
fn cancel_after_completion_is_a_no_op() {
    let ctx = AioContext::new().unwrap();
    if !ctx.supports_io_uring_ops() {
        eprintln!("SKIPPED: io_uring operations are not available on this kernel");
        return;
    }
    let done = Rc::new(RefCell::new(Vec::new()));
    let d = done.clone();
    // SAFETY: a NOP references no memory.
    let id = unsafe {
        ctx.submit(opcode::Nop::new().build(), move |res| {
            d.borrow_mut().push(res)
        })
    }
    .unwrap();
    while done.borrow().is_empty() {
        ctx.poll(true);
    }
    assert!(!ctx.cancel_op(id).unwrap());
    ctx.poll(false);
    assert_eq!(*done.borrow(), vec![0]);
}
