//! A completion callback's submissions reach the kernel before the next callback of the
//! same round runs (`AioContext::run_completions`), on both fd monitor backends.

use std::cell::Cell;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use io_uring::{opcode, types};
use nix::fcntl::OFlag;

use crate::fdmon::FdMonitor;
use crate::{AioContext, Backend, OpOptions};

/// This thread's context on `backend`, if it can run io_uring operations (else a
/// SKIPPED line naming `test`).
pub(crate) fn context_with_ops(backend: Backend, test: &str) -> Option<AioContext> {
    let fdmon = match FdMonitor::with_backend(backend) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("SKIPPED {test} test on {backend:?}: {e}");
            return None;
        }
    };
    let ctx = AioContext::with_fdmon(fdmon).unwrap();
    if !ctx.supports_io_uring_ops() {
        eprintln!("SKIPPED {test} test on {backend:?}: no io_uring operations");
        return None;
    }
    Some(ctx)
}

/// Runs `ctx` (blocking polls) until `done()`; fails the test after 10 s, naming `what`.
pub(crate) fn poll_until(ctx: &AioContext, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what} never completed"
        );
        ctx.poll(true);
    }
}

/// Submits `entry` with `opts` and runs the context until its result (10 s limit).
///
/// # Safety
///
/// What `entry` references (buffers, the fd or registered slot) stays valid until this
/// returns.
pub(crate) unsafe fn run_op(
    ctx: &AioContext,
    entry: io_uring::squeue::Entry,
    opts: OpOptions,
) -> i32 {
    let done = Rc::new(Cell::new(None));
    // SAFETY: the caller keeps what `entry` references valid until we return, and we
    // return only after the op's completion.
    let submitted =
        unsafe { ctx.submit_with_opts(entry, opts, done.clone(), |d, res| d.set(Some(res))) };
    assert!(submitted.is_ok(), "submit");
    poll_until(ctx, "op", || done.get().is_some());
    done.get().unwrap()
}

/// What the second callback of a round saw in the pipe: `Some(true)` if the write that the
/// first callback submitted had already happened.
fn second_callback_sees_first_refill(backend: Backend) -> Option<bool> {
    let ctx = context_with_ops(backend, "refill")?;
    let (rd, wr): (OwnedFd, OwnedFd) =
        nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).unwrap();
    let wr = Rc::new(wr);
    let seen = Rc::new(Cell::new(None));
    static BYTE: [u8; 1] = [b'x'];

    // A: its callback queues a one-byte write to the pipe (the "refill").
    let (c, w) = (ctx.clone(), wr.clone());
    let first = move |res: i32| {
        assert_eq!(res, 0);
        let write = opcode::Write::new(types::Fd(w.as_raw_fd()), BYTE.as_ptr(), 1).build();
        // SAFETY: the buffer is a static; the fd lives in `w`, which the callback owns
        // until the write completes.
        let submitted = unsafe {
            c.submit(write, move |res| {
                assert_eq!((res, w.as_raw_fd() >= 0), (1, true))
            })
        };
        submitted.unwrap();
    };
    // B: completes in the same round; its callback looks into the pipe.
    let (s, rd) = (seen.clone(), Rc::new(rd));
    let reader = rd.clone();
    let second = move |res: i32| {
        assert_eq!(res, 0);
        let mut buf = [0u8; 1];
        s.set(Some(nix::unistd::read(&*reader, &mut buf) == Ok(1)));
    };
    // SAFETY: NOPs reference no memory.
    unsafe {
        ctx.submit(opcode::Nop::new().build(), first).unwrap();
        ctx.submit(opcode::Nop::new().build(), second).unwrap();
    }
    let start = Instant::now();
    while seen.get().is_none() || ctx.io_uring_ops_in_flight() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "ops never completed"
        );
        ctx.poll(true);
    }
    drop(rd);
    seen.get()
}

fn check(backend: Backend) {
    // Each context in a thread of its own (one context per thread).
    let seen = std::thread::spawn(move || second_callback_sees_first_refill(backend))
        .join()
        .unwrap();
    if let Some(seen) = seen {
        assert!(
            seen,
            "{backend:?}: a completion callback's submission waited for the next poll"
        );
    }
}

#[test]
fn refill_from_a_completion_is_submitted_at_once_io_uring() {
    check(Backend::IoUring);
}

#[test]
fn refill_from_a_completion_is_submitted_at_once_epoll() {
    check(Backend::Epoll);
}
