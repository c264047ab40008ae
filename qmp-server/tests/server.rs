//! A `qmp::Server` on a real unix socket, served on the test thread's `AioContext`,
//! with a client on another thread: the greeting, negotiation, a command registered by
//! its owner, an event emitted from another thread while the command runs (it precedes
//! the reply), an `AfterReply` action (it runs once the reply is out), and a client that
//! half-closes (it gets every reply, then the server closes it).

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aio_context::AioContext;
use qmp::{Server, Version, no_arguments};
use serde_json::{Value, json};

fn socket_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("qmp-crate-{name}-{}.sock", std::process::id()))
}

/// A server with `emit` (emits `FROM_THREAD` on another thread, waits for it, returns)
/// and `finish` (returns, then sets the flag that ends the test's loop).
fn server(ctx: &AioContext, finished: &Rc<AtomicBool>) -> Server {
    let server = Server::new(ctx).unwrap();
    server.set_version(Version {
        package: "test".into(),
        ..Version::default()
    });
    let events = server.events();
    server
        .commands()
        .register("emit", move |args| {
            no_arguments(args)?;
            let events = events.clone();
            std::thread::spawn(move || events.emit("FROM_THREAD", Some(json!({"n": 1}))))
                .join()
                .unwrap();
            Ok(json!({}))
        })
        .unwrap();
    let (after, f) = (server.after_reply(), finished.clone());
    server
        .commands()
        .register("finish", move |_| {
            let f = f.clone();
            after.push(move || f.store(true, Ordering::SeqCst));
            Ok(json!({}))
        })
        .unwrap();
    server
}

/// Serves until the client thread says it has read to the end.
fn serve_until(ctx: &AioContext, done: &AtomicBool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the exchange hung");
        ctx.poll(true);
    }
}

/// The lines of a transcript, events as `event NAME`, timestamps left out.
fn lines(transcript: &str) -> Vec<String> {
    transcript
        .split_inclusive("\r\n")
        .map(|line| {
            assert!(line.ends_with("\r\n"), "{line:?}");
            let v: Value = serde_json::from_str(line).unwrap();
            match v.get("event") {
                Some(name) => format!("event {}", name.as_str().unwrap()),
                None => line.trim_end().to_owned(),
            }
        })
        .collect()
}

#[test]
fn a_half_closing_client_gets_events_and_replies_in_order() {
    let path = socket_path("halfclose");
    let ctx = AioContext::new().unwrap();
    let finished = Rc::new(AtomicBool::new(false));
    let server = server(&ctx, &finished);
    server.listen(&path).unwrap();
    assert_eq!(server.socket_path().as_deref(), Some(path.as_path()));

    // Everything is written and the socket half-closed before the server accepts, so
    // it reads the commands and the end of input in one go; the replies after
    // `finish` are still queued, unsent, when it reads the end of input.
    let mut c = UnixStream::connect(&path).unwrap();
    c.write_all(
        concat!(
            r#"{"execute":"emit"}{"execute":"qmp_capabilities"}{"execute":"emit","id":1}"#,
            r#"{"execute":"finish","id":2}{"execute":"query-version","id":3}"#,
            r#"{"execute":"nope","id":4}"#
        )
        .as_bytes(),
    )
    .unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let (d, handle) = (done.clone(), ctx.handle());
    let client = std::thread::spawn(move || {
        let mut transcript = String::new();
        let read = c.read_to_string(&mut transcript);
        d.store(true, Ordering::SeqCst);
        handle.notify();
        read.map(|_| transcript)
    });
    serve_until(&ctx, &done);
    let transcript = client.join().unwrap().expect("closed after the last reply");
    assert_eq!(
        lines(&transcript),
        [
            "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 10}, \"package\": \"test\"}, \"capabilities\": [\"oob\"]}}",
            "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Expecting capabilities negotiation with 'qmp_capabilities'\"}}",
            "{\"return\": {}}",
            "event FROM_THREAD",
            "{\"return\": {}, \"id\": 1}",
            "{\"return\": {}, \"id\": 2}",
            "{\"return\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 10}, \"package\": \"test\"}, \"id\": 3}",
            "{\"id\": 4, \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command nope has not been found\"}}",
        ],
        "{transcript}"
    );
    assert!(
        finished.load(Ordering::SeqCst),
        "the after-reply action ran"
    );
    assert_eq!(server.client_count(), 0);
    drop(server);
    assert!(!path.exists(), "the socket file is removed");
}

#[test]
fn events_reach_idle_negotiated_clients_and_bounds_hold() {
    let path = socket_path("events");
    let ctx = AioContext::new().unwrap();
    let server = server(&ctx, &Rc::new(AtomicBool::new(false)));
    server.set_max_message_len(64);
    server.listen(&path).unwrap();
    assert!(matches!(
        server.listen(&path),
        Err(qmp::Error::AlreadyListening(_))
    ));
    let events = server.events();

    let done = Arc::new(AtomicBool::new(false));
    let (d, handle, p) = (done.clone(), ctx.handle(), path.clone());
    let client = std::thread::spawn(move || {
        let mut c = UnixStream::connect(&p).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c.write_all(br#"{"execute":"qmp_capabilities","id":"n"}"#)
            .unwrap();
        let mut buf = vec![0; 4096];
        let mut got = String::new();
        // Greeting and the negotiation's reply, then an event emitted while idle.
        while got.matches("\r\n").count() < 3 {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "closed early: {got}");
            got.push_str(std::str::from_utf8(&buf[..n]).unwrap());
            if got.matches("\r\n").count() == 2 {
                events.emit("IDLE", None);
            }
        }
        // A message over the bound: an error reply, then the server closes.
        c.write_all(format!("[\"{}\"]", "x".repeat(100)).as_bytes())
            .unwrap();
        c.read_to_string(&mut got).unwrap();
        d.store(true, Ordering::SeqCst);
        handle.notify();
        got
    });
    serve_until(&ctx, &done);
    let got = lines(&client.join().unwrap());
    assert_eq!(got[1..3], ["{\"return\": {}, \"id\": \"n\"}", "event IDLE"]);
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got[3].contains("at most 64 bytes"), "{got:?}");
}
