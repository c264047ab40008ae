//! A QMP client that sends several commands and then half-closes its socket (what
//! `socat`, `nc -N` and `shutdown(SHUT_WR)` do) gets every reply and every event, in
//! order, before the monitor closes the connection: QEMU 10 does the same.
//!
//! Regression test for issue 14, item 5: the monitor closed the connection when it read
//! end of input, dropping the replies it had queued but not yet sent, so such a client
//! saw the greeting and at most the first reply, although every command ran.
//!
//! The monitor runs in-process (no KVM needed). The client writes and half-closes
//! before the monitor accepts, so the monitor reads every command and the end of input
//! in one go: the interleaving that lost the replies, made deterministic.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aio_context::AioContext;
use pc_devices::monitor::{MachineHooks, Monitor, QmpOption};
use runstate::RunStateMachine;
use serde_json::Value;

/// The commands: negotiation, then replies with and without ids, an error, and a
/// stop/cont pair whose events must come before their replies.
const COMMANDS: &str = concat!(
    r#"{"execute":"qmp_capabilities"}"#,
    r#"{"execute":"query-status","id":1}"#,
    r#"{"execute":"query-status"}"#,
    r#"{"execute":"stop","id":"s"}"#,
    r#"{"execute":"nonexistent","id":"x"}"#,
    r#"{"execute":"query-status","id":2}"#,
    r#"{"execute":"cont","id":"c"}"#,
);

/// What the client reads, message by message (timestamps left out of events).
fn expected() -> Vec<String> {
    [
        r#"{"return": {}}"#,
        r#"{"return": {"status": "running", "running": true}, "id": 1}"#,
        r#"{"return": {"status": "running", "running": true}}"#,
        r#"event STOP"#,
        r#"{"return": {}, "id": "s"}"#,
        r#"{"id": "x", "error": {"class": "CommandNotFound", "desc": "The command nonexistent has not been found"}}"#,
        r#"{"return": {"status": "paused", "running": false}, "id": 2}"#,
        r#"event RESUME"#,
        r#"{"return": {}, "id": "c"}"#,
    ]
    .map(String::from)
    .to_vec()
}

/// Reduces the transcript to comparable lines: the greeting is checked and dropped,
/// events become `event NAME`.
fn messages(transcript: &str) -> Vec<String> {
    let mut lines = transcript.split_terminator("\r\n");
    let greeting: Value = serde_json::from_str(lines.next().expect("a greeting")).unwrap();
    assert!(greeting.get("QMP").is_some(), "greeting: {greeting}");
    lines
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            match v.get("event") {
                Some(name) => format!("event {}", name.as_str().unwrap()),
                None => line.to_owned(),
            }
        })
        .collect()
}

/// A monitor listening on a fresh socket `name`, on this thread's new context.
fn monitor(name: &str) -> (AioContext, RunStateMachine, Monitor, PathBuf) {
    let path = std::env::temp_dir().join(format!("qmp-{name}-{}.sock", std::process::id()));
    let ctx = AioContext::new().unwrap();
    let vm = RunStateMachine::new(ctx.handle().bh_scheduler());
    let hooks = MachineHooks::new(|| {}, || {});
    let monitor = Monitor::new(&ctx, &vm, Rc::new(hooks)).unwrap();
    let option: QmpOption = format!("unix:{},server=on,wait=off", path.display())
        .parse()
        .unwrap();
    monitor.listen(&option).unwrap();
    (ctx, vm, monitor, path)
}

#[test]
fn a_half_closing_client_gets_every_reply_in_order() {
    let (ctx, vm, monitor, path) = monitor("halfclose");
    vm.start().unwrap();

    // Connect, send everything and half-close before the monitor even accepts.
    let mut client = UnixStream::connect(&path).unwrap();
    client.write_all(COMMANDS.as_bytes()).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let (d, handle) = (done.clone(), ctx.handle());
    let reader = std::thread::spawn(move || {
        let mut transcript = String::new();
        let read = client.read_to_string(&mut transcript);
        d.store(true, Ordering::SeqCst);
        handle.notify();
        read.map(|_| transcript)
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done.load(Ordering::SeqCst) && Instant::now() < deadline {
        ctx.poll(true);
    }
    let transcript = reader
        .join()
        .unwrap()
        .expect("the monitor closes the connection after the last reply");
    assert_eq!(
        messages(&transcript),
        expected(),
        "transcript:\n{transcript}"
    );
    assert_eq!(monitor.client_count(), 0, "the client was closed");
    // Every command ran: the VM is running again after stop/cont.
    assert!(vm.is_running());
    drop(monitor);
    assert!(
        !path.exists(),
        "the socket file is removed with the monitor"
    );
}

#[test]
fn the_monitor_keeps_serving_after_a_half_closed_client() {
    let (ctx, _vm, monitor, path) = monitor("halfclose2");
    for round in 0..3 {
        let mut client = UnixStream::connect(&path).unwrap();
        client
            .write_all(br#"{"execute":"qmp_capabilities"}{"execute":"query-status","id":7}"#)
            .unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        client.set_nonblocking(true).unwrap();
        let mut transcript = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut buf = [0u8; 4096];
            match client.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => transcript.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "round {round}: no EOF");
                    ctx.poll(false);
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        let transcript = String::from_utf8(transcript).unwrap();
        assert_eq!(
            messages(&transcript),
            [
                r#"{"return": {}}"#,
                r#"{"return": {"status": "prelaunch", "running": false}, "id": 7}"#
            ],
            "round {round}"
        );
        assert_eq!(monitor.client_count(), 0, "round {round}");
    }
}
