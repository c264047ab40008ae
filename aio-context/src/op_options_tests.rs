//! `OpOptions::force_async` reaches the kernel as `IOSQE_ASYNC`, on both fd monitor backends.
//!
//! Observable without tracing: a READ of an empty (blocking) pipe is, by default, tried
//! inline, finds no data and waits on a poll, with no worker thread; forced async, it
//! goes to an io-wq worker, which the kernel names `iou-wrk-<submitting tid>` and which
//! blocks in the read until data comes.

use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use io_uring::{opcode, types};
use nix::fcntl::OFlag;

use crate::refill_tests::{context_with_ops, poll_until};
use crate::{Backend, OpOptions, thread_has_io_worker};

/// Submits a one-byte READ of an empty pipe with `opts`; returns whether an io-wq worker
/// of this thread showed up within `wait` (`None`: skipped). Then completes the read.
fn read_empty_pipe(backend: Backend, opts: OpOptions, wait: Duration) -> Option<bool> {
    let ctx = context_with_ops(backend, "force_async")?;
    assert!(
        !thread_has_io_worker(),
        "a fresh thread has no io-wq worker"
    );
    // Blocking: in a worker the read waits in the pipe, not on a poll.
    let (rd, wr): (OwnedFd, OwnedFd) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
    let rd = Rc::new(rd);
    let mut buf = Box::new([0u8; 1]);
    let entry = opcode::Read::new(types::Fd(rd.as_raw_fd()), buf.as_mut_ptr(), 1).build();
    let done = Rc::new(std::cell::Cell::new(None));
    let (d, keep) = (done.clone(), rd.clone());
    // SAFETY: the callback owns the buffer and the read end until the CQE.
    let submitted = unsafe {
        ctx.submit_with_opts(entry, opts, (buf, keep, d), |(_, _, d), res| {
            d.set(Some(res))
        })
    };
    assert!(submitted.is_ok());
    ctx.poll(false); // hands the SQE to the kernel
    let start = Instant::now();
    let mut worker = thread_has_io_worker();
    while !worker && start.elapsed() < wait {
        std::thread::sleep(Duration::from_millis(10));
        ctx.poll(false);
        worker = thread_has_io_worker();
    }
    nix::unistd::write(&wr, b"x").unwrap();
    poll_until(&ctx, "read", || done.get().is_some());
    assert_eq!(done.get(), Some(1));
    Some(worker)
}

fn check(backend: Backend) {
    // Each in a fresh thread: no context yet, and no io-wq worker left by another test.
    let run = |opts, wait| {
        std::thread::spawn(move || read_empty_pipe(backend, opts, wait))
            .join()
            .unwrap()
    };
    let forced = OpOptions {
        force_async: true,
        ..OpOptions::default()
    };
    if let Some(worker) = run(forced, Duration::from_secs(10)) {
        assert!(
            worker,
            "{backend:?}: force_async did not reach an io-wq worker"
        );
    }
    if let Some(worker) = run(OpOptions::default(), Duration::from_millis(200)) {
        assert!(!worker, "{backend:?}: a default op went to an io-wq worker");
    }
}

#[test]
fn force_async_runs_in_an_io_worker_io_uring() {
    check(Backend::IoUring);
}

#[test]
fn force_async_runs_in_an_io_worker_epoll() {
    check(Backend::Epoll);
}
