//! `AIO_URING_SQPOLL`: the epoll monitor's operations ring with a kernel submission
//! thread. Operations complete (also more of them than the SQ holds, which exercises the
//! push retry against a thread that empties the SQ behind our back), and fd readiness
//! keeps epoll's semantics: a non-blocking poll runs the handler of an fd that is ready
//! now, whatever the submission thread is doing.

use std::cell::Cell;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

use io_uring::{opcode, types};
use nix::fcntl::OFlag;
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::fdmon::{FdMonitor, sqpoll_from_env};
use crate::refill_tests::{poll_until, run_op};
use crate::{AioContext, Backend, FdHandler, OpOptions, thread_has_submission_thread};

/// This thread's context with a submission thread (asleep after `idle_ms` without work)
/// on its operations ring, or `None` (with a SKIPPED line) where the kernel gives none.
fn sqpoll_context(test: &str, idle_ms: u32) -> Option<AioContext> {
    let fdmon = match FdMonitor::choose(Some(Backend::Epoll), Some(idle_ms)) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("SKIPPED {test}: no epoll monitor: {e}");
            return None;
        }
    };
    let ctx = AioContext::with_fdmon(fdmon).unwrap();
    if !ctx.supports_io_uring_ops() || !thread_has_submission_thread() {
        eprintln!("SKIPPED {test}: the kernel gave no io_uring with a submission thread");
        return None;
    }
    Some(ctx)
}

fn in_fresh_thread(f: impl FnOnce() + Send + 'static) {
    // One context per thread, and `thread_has_submission_thread` looks for this thread's.
    std::thread::spawn(f).join().unwrap();
}

#[test]
fn ops_complete_through_the_submission_thread() {
    in_fresh_thread(|| {
        // A thread that sleeps as soon as the SQ is empty: the SQ fills up while it
        // sleeps, and each wake-up races our pushes.
        let Some(ctx) = sqpoll_context("ops_complete_through_the_submission_thread", 0) else {
            return;
        };
        // More than the side ring's 64 SQ entries, queued before the loop runs, in
        // rounds: each round's pushes race the thread that empties the SQ (without the
        // push retry, a push found the SQ full, then `submit` found it emptied and took
        // nothing, and the push failed with EBUSY).
        const N: usize = 300;
        for round in 0..200 {
            let done = Rc::new(Cell::new(0));
            for _ in 0..N {
                let done = done.clone();
                // SAFETY: a NOP references no memory.
                let submitted = unsafe {
                    ctx.submit(opcode::Nop::new().build(), move |res| {
                        assert_eq!(res, 0);
                        done.set(done.get() + 1);
                    })
                };
                assert!(submitted.is_ok(), "round {round}: {:?}", submitted.err());
            }
            poll_until(&ctx, &format!("round {round}: {N} NOPs"), || {
                done.get() == N
            });
        }

        // A write and a read of a file, checked by content.
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[0u8; 4096]).unwrap();
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let fd = types::Fd(file.as_raw_fd());
        let write = opcode::Write::new(fd, data.as_ptr(), 4096).build();
        // SAFETY: `data` and `file` outlive the op (run_op returns after its completion).
        assert_eq!(unsafe { run_op(&ctx, write, OpOptions::default()) }, 4096);
        let mut back = vec![0u8; 4096];
        let read = opcode::Read::new(fd, back.as_mut_ptr(), 4096).build();
        // SAFETY: as above, for `back`.
        assert_eq!(unsafe { run_op(&ctx, read, OpOptions::default()) }, 4096);
        assert_eq!(back, data);
        drop::<File>(file);
    });
}

#[test]
fn ready_fds_are_reported_at_once_while_ops_wait() {
    in_fresh_thread(|| {
        let Some(ctx) = sqpoll_context("ready_fds_are_reported_at_once_while_ops_wait", 50) else {
            return;
        };
        // An op that stays in flight: a read of an empty pipe.
        let (rd, wr): (OwnedFd, OwnedFd) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let mut buf = Box::new([0u8; 1]);
        let read = opcode::Read::new(types::Fd(rd.as_raw_fd()), buf.as_mut_ptr(), 1).build();
        let done = Rc::new(Cell::new(None));
        // SAFETY: the callback owns the buffer; `rd` outlives the op (we wait for it below).
        let submitted = unsafe {
            ctx.submit(read, {
                let d = done.clone();
                move |res| {
                    drop(buf);
                    d.set(Some(res))
                }
            })
        };
        assert!(submitted.is_ok());

        let efd =
            Rc::new(EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).unwrap());
        let runs = Rc::new(Cell::new(0));
        let (e, r) = (efd.clone(), runs.clone());
        ctx.set_fd_handler(
            efd.as_raw_fd(),
            FdHandler::new().on_read(move || {
                let _ = e.read();
                r.set(r.get() + 1);
            }),
        )
        .unwrap();
        for round in 1..=3 {
            efd.write(1).unwrap();
            assert!(ctx.poll(false), "round {round}: a ready fd is progress");
            assert_eq!(runs.get(), round, "round {round}: the handler ran at once");
            assert!(!ctx.poll(false), "round {round}: nothing else is ready");
        }
        assert_eq!(done.get(), None, "the pipe read is still waiting");

        nix::unistd::write(&wr, b"x").unwrap();
        poll_until(&ctx, "read", || done.get().is_some());
        assert_eq!(done.get(), Some(1));
        ctx.set_fd_handler(efd.as_raw_fd(), FdHandler::new())
            .unwrap();
    });
}

#[test]
fn the_setting_is_parsed_and_refused_with_the_io_uring_monitor() {
    use std::ffi::OsStr;
    let parse = |v: &str| sqpoll_from_env(Some(OsStr::new(v)));
    assert_eq!(sqpoll_from_env(None).unwrap(), None);
    assert_eq!(parse("").unwrap(), None);
    assert_eq!(parse("off").unwrap(), None);
    assert_eq!(parse("0").unwrap(), Some(0));
    assert_eq!(parse("2000").unwrap(), Some(2000));
    for bad in ["-1", "1.5", "on", "4294967296"] {
        let err = parse(bad).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{bad}");
    }
    let err = FdMonitor::choose(Some(Backend::IoUring), Some(10))
        .err()
        .unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("AIO_URING_SQPOLL"), "{err}");
}
