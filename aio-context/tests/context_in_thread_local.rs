//! Regression (found by review): an AioContext kept in a thread-local used to abort the
//! process at thread exit (its Drop touched the already-destroyed CURRENT thread-local).
use aio_context::AioContext;
use std::cell::RefCell;

thread_local! {
    static CTX: RefCell<Option<AioContext>> = const { RefCell::new(None) };
}

#[test]
fn context_in_thread_local_survives_thread_exit() {
    if std::env::var_os("AIO_TLS_CHILD").is_some() {
        std::thread::spawn(|| {
            CTX.with(|c| *c.borrow_mut() = Some(AioContext::new().unwrap()));
            CTX.with(|c| c.borrow().as_ref().unwrap().poll(false));
        })
        .join()
        .unwrap();
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "context_in_thread_local_survives_thread_exit",
            "--nocapture",
        ])
        .env("AIO_TLS_CHILD", "1")
        .output()
        .unwrap();
    eprintln!(
        "child status: {:?}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child died: {:?}", out.status);
}
