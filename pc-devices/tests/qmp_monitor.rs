//! The QMP monitor in-process on a real unix socket, with a fake machine whose "vCPU"
//! thread counts while the VM runs and parks while it is paused. Driven by a raw socket
//! client (QEMU's exact bytes, malformed input, split writes, a huge message, two
//! clients) and by the real `qemu.qmp` Python client (tests/qmp/qmp_smoke.py).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use aio_context::{AioContext, AioHandle};
use pc_devices::monitor::{MachineHooks, Monitor, QmpOption};
use runstate::RunStateMachine;
use serde_json::{Value, json};

/// A VM on its own "main" thread: the monitor, runstate, and a counting vCPU.
struct TestVm {
    path: PathBuf,
    handle: AioHandle,
    stop: Arc<AtomicBool>,
    counter: Arc<AtomicU64>,
    resets: Arc<AtomicU32>,
    quit: Arc<AtomicBool>,
    main: Option<JoinHandle<()>>,
}

impl TestVm {
    fn start(name: &str) -> TestVm {
        let path = std::env::temp_dir().join(format!("qmp-{}-{name}.sock", std::process::id()));
        let (stop, counter) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (resets, quit) = (
            Arc::new(AtomicU32::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (tx, rx) = mpsc::channel();
        let (p, s, c, r, q) = (
            path.clone(),
            stop.clone(),
            counter.clone(),
            resets.clone(),
            quit.clone(),
        );
        let main = thread::spawn(move || {
            let ctx = AioContext::new().unwrap();
            let vm = RunStateMachine::new(ctx.handle().bh_scheduler());
            // The fake vCPU: counts while running, parks while paused.
            let running = Arc::new(AtomicBool::new(false));
            let (run, cnt, done) = (running.clone(), c.clone(), s.clone());
            let vcpu = thread::spawn(move || {
                while !done.load(Ordering::Acquire) {
                    if run.load(Ordering::Acquire) {
                        cnt.fetch_add(1, Ordering::Relaxed);
                        thread::yield_now();
                    } else {
                        thread::park_timeout(Duration::from_millis(50));
                    }
                }
            });
            let vcpu_thread = vcpu.thread().clone();
            vm.add_handler(0, move |is_running, _| {
                running.store(is_running, Ordering::Release);
                vcpu_thread.unpark();
            });
            let q2 = q.clone();
            let hooks = MachineHooks::new(
                move || {
                    r.fetch_add(1, Ordering::SeqCst);
                },
                move || q2.store(true, Ordering::SeqCst),
            );
            let monitor = Monitor::new(&ctx, &vm, Rc::new(hooks)).unwrap();
            monitor
                .commands()
                .register("query-iothreads", |_| Ok(json!([])))
                .unwrap();
            monitor.set_max_message_len(1 << 20);
            // What vmm-bin reports (the monitor's default is the qmp crate's).
            monitor.set_version(qmp::Version {
                package: format!("vmm-bin {}", env!("CARGO_PKG_VERSION")),
                ..qmp::Version::default()
            });
            let option: QmpOption = format!("unix:{},server=on,wait=off", p.display())
                .parse()
                .unwrap();
            monitor.listen(&option).unwrap();
            vm.start().unwrap();
            tx.send(ctx.handle()).unwrap();
            while !s.load(Ordering::Acquire) && !q.load(Ordering::SeqCst) {
                ctx.poll(true);
            }
            drop(monitor);
            s.store(true, Ordering::Release);
            vcpu.join().unwrap();
        });
        let handle = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("monitor started");
        TestVm {
            path,
            handle,
            stop,
            counter,
            resets,
            quit,
            main: Some(main),
        }
    }

    /// Whether the vCPU counter advances over 100 ms.
    fn advancing(&self) -> bool {
        let before = self.counter.load(Ordering::Relaxed);
        thread::sleep(Duration::from_millis(100));
        self.counter.load(Ordering::Relaxed) > before
    }

    fn join(mut self) {
        self.stop.store(true, Ordering::Release);
        self.handle.notify();
        if let Some(m) = self.main.take() {
            m.join().unwrap();
        }
    }
}

/// A raw QMP client that reads `\r\n`-terminated lines.
struct Raw {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    events: Vec<Value>,
}

impl Raw {
    fn connect(path: &Path) -> Raw {
        let stream = UnixStream::connect(path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Raw {
            stream,
            reader,
            events: Vec::new(),
        }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        assert!(line.ends_with("\r\n"), "QMP lines end with CRLF: {line:?}");
        line
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next reply line (events before it are kept in `events`), as text.
    fn reply_text(&mut self) -> String {
        loop {
            let line = self.line();
            let v: Value = serde_json::from_str(&line).unwrap();
            if v.get("event").is_some() {
                self.events.push(v);
            } else {
                return line;
            }
        }
    }

    fn reply(&mut self) -> Value {
        serde_json::from_str(&self.reply_text()).unwrap()
    }

    fn cmd(&mut self, text: &str) -> Value {
        self.send(text.as_bytes());
        self.reply()
    }

    fn negotiate(path: &Path) -> Raw {
        let mut c = Raw::connect(path);
        c.line();
        assert_eq!(
            c.cmd(r#"{"execute":"qmp_capabilities"}"#),
            json!({"return": {}})
        );
        c
    }

    fn event_names(&mut self) -> Vec<String> {
        self.events
            .drain(..)
            .map(|e| e["event"].as_str().unwrap_or("").to_owned())
            .collect()
    }
}

fn error_desc(v: &Value) -> String {
    format!(
        "{}: {}",
        v["error"]["class"].as_str().unwrap_or("?"),
        v["error"]["desc"].as_str().unwrap_or("?")
    )
}

#[test]
fn raw_client_speaks_qemus_wire_format() {
    let vm = TestVm::start("raw");
    let mut c = Raw::connect(&vm.path);
    assert_eq!(
        c.line(),
        format!(
            "{{\"QMP\": {{\"version\": {{\"qemu\": {{\"micro\": 0, \"minor\": 2, \"major\": 10}}, \
             \"package\": \"vmm-bin {}\"}}, \"capabilities\": [\"oob\"]}}}}\r\n",
            env!("CARGO_PKG_VERSION")
        )
    );
    // Before negotiation: QEMU's rewritten CommandNotFound.
    assert_eq!(
        c.reply_text_of(r#"{"execute":"query-status","id":7}"#),
        "{\"id\": 7, \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Expecting capabilities negotiation with 'qmp_capabilities'\"}}\r\n"
    );
    // A command split across writes, no newline (as qemu.qmp sends).
    for part in [
        &b"{\"exec"[..],
        b"ute\": \"qmp_capa",
        b"bilities\", \"id\": {\"a\": [1",
        b"]}}",
    ] {
        c.send(part);
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(c.reply_text(), "{\"return\": {}, \"id\": {\"a\": [1]}}\r\n");
    assert_eq!(
        error_desc(&c.cmd(r#"{"execute":"qmp_capabilities"}"#)),
        "CommandNotFound: Capabilities negotiation is already complete, command ignored"
    );
    // Malformed input: an error each, and the monitor keeps serving.
    assert_eq!(
        error_desc(&c.cmd(r#"{"execute" "x"}"#)),
        "GenericError: JSON parse error, missing : in object pair"
    );
    assert_eq!(
        error_desc(&c.cmd("@\n")),
        "GenericError: JSON parse error, stray '@'"
    );
    assert_eq!(
        error_desc(&c.cmd("[1]")),
        "GenericError: QMP input must be a JSON object"
    );
    assert_eq!(
        error_desc(&c.cmd(r#"{"execute":"stop","bogus":1}"#)),
        "GenericError: QMP input member 'bogus' is unexpected"
    );
    assert_eq!(
        error_desc(&c.cmd(r#"{"execute":"stop","arguments":{"x":1}}"#)),
        "GenericError: Parameter 'x' is unexpected"
    );
    assert_eq!(
        error_desc(&c.cmd(r#"{"id":1}"#)),
        "GenericError: QMP input lacks member 'execute'"
    );
    assert_eq!(
        error_desc(&c.cmd(r#"{"execute":"nope"}"#)),
        "CommandNotFound: The command nope has not been found"
    );
    assert_eq!(
        c.reply_text_of("{'execute':'query-status','id':'q'}"),
        "{\"return\": {\"status\": \"running\", \"running\": true}, \"id\": \"q\"}\r\n"
    );
    assert!(vm.advancing(), "the vCPU runs while the VM runs");

    // stop: STOP precedes the reply, the vCPU halts. Two commands in one write.
    c.send(br#"{"execute":"stop","id":1}{"execute":"query-status","id":2}"#);
    assert_eq!(c.reply(), json!({"return": {}, "id": 1}));
    assert_eq!(c.event_names(), ["STOP"]);
    assert_eq!(
        c.reply(),
        json!({"return": {"status": "paused", "running": false}, "id": 2})
    );
    assert!(!vm.advancing(), "the vCPU halts while paused");
    assert_eq!(c.cmd(r#"{"execute":"cont"}"#), json!({"return": {}}));
    assert_eq!(c.event_names(), ["RESUME"]);
    assert!(vm.advancing(), "the vCPU runs again after cont");

    assert_eq!(
        c.cmd(r#"{"execute":"system_reset"}"#),
        json!({"return": {}})
    );
    let reset = c.events.pop().unwrap();
    assert_eq!(
        reset["data"],
        json!({"guest": false, "reason": "host-qmp-system-reset"})
    );
    assert!(reset["timestamp"]["seconds"].is_u64() && reset["timestamp"]["microseconds"].is_u64());
    assert_eq!(vm.resets.load(Ordering::SeqCst), 1);
    assert_eq!(
        c.cmd(r#"{"execute":"query-iothreads"}"#),
        json!({"return": []})
    );

    assert_eq!(c.cmd(r#"{"execute":"quit"}"#), json!({"return": {}}));
    assert_eq!(c.event_names(), ["SHUTDOWN"]);
    let mut rest = String::new();
    let _ = c.reader.read_line(&mut rest);
    assert_eq!(
        rest, "",
        "the monitor closes the connection as the VMM exits"
    );
    assert!(vm.quit.load(Ordering::SeqCst));
    vm.join();
}

impl Raw {
    fn reply_text_of(&mut self, text: &str) -> String {
        self.send(text.as_bytes());
        self.reply_text()
    }
}

#[test]
fn huge_message_is_refused_and_the_client_disconnected() {
    let vm = TestVm::start("huge");
    let mut other = Raw::negotiate(&vm.path);
    let mut c = Raw::connect(&vm.path);
    c.line();
    let mut writer = c.stream.try_clone().unwrap();
    // 100 MiB inside one string, no newline; the writer fails once we are cut off.
    let flood = thread::spawn(move || {
        let _ = writer.write_all(b"{\"execute\": \"");
        let chunk = vec![b'a'; 1 << 20];
        for _ in 0..100 {
            if writer.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let reply = c.reply();
    assert!(
        error_desc(&reply).starts_with("GenericError: JSON token size limit exceeded"),
        "{reply}"
    );
    let mut rest = String::new();
    let _ = c.reader.read_line(&mut rest);
    assert_eq!(rest, "", "disconnected after the error");
    flood.join().unwrap();
    // The other client, and new ones, are still served.
    assert_eq!(
        other.cmd(r#"{"execute":"query-status"}"#)["return"]["running"],
        json!(true)
    );
    let mut again = Raw::negotiate(&vm.path);
    assert_eq!(
        again.cmd(r#"{"execute":"query-version"}"#)["return"]["qemu"]["major"],
        json!(10)
    );
    vm.join();
}

#[test]
fn a_second_client_does_not_break_the_first() {
    let vm = TestVm::start("two");
    let mut a = Raw::negotiate(&vm.path);
    let mut b = Raw::negotiate(&vm.path);
    // Half a command from A, a whole one from B, then A's other half.
    a.send(br#"{"execute":"st"#);
    assert_eq!(b.cmd(r#"{"execute":"stop"}"#), json!({"return": {}}));
    a.send(br#"op"}"#);
    assert_eq!(
        a.reply(),
        json!({"return": {}}),
        "stop of a stopped VM is fine"
    );
    assert_eq!(
        a.event_names(),
        ["STOP"],
        "events go to every negotiated client"
    );
    assert_eq!(b.event_names(), ["STOP"]);
    drop(b);
    assert_eq!(a.cmd(r#"{"execute":"cont"}"#), json!({"return": {}}));
    assert_eq!(a.event_names(), ["RESUME"]);
    // Not negotiated yet: no events.
    let mut c = Raw::connect(&vm.path);
    c.line();
    assert_eq!(a.cmd(r#"{"execute":"stop"}"#), json!({"return": {}}));
    assert_eq!(
        c.cmd(r#"{"execute":"qmp_capabilities"}"#),
        json!({"return": {}})
    );
    assert!(c.events.is_empty(), "{:?}", c.events);
    vm.join();
}

fn qemu_qmp_available() -> bool {
    Command::new("python3")
        .args(["-c", "import qemu.qmp"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn the_qemu_qmp_python_client_works_unchanged() {
    if !qemu_qmp_available() {
        eprintln!("\n!!!!!!!! SKIPPED: qemu.qmp not installed (pip install qemu.qmp) !!!!!!!!\n");
        return;
    }
    let vm = TestVm::start("py");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/qmp/qmp_smoke.py");
    let start = Instant::now();
    let out = Command::new("python3")
        .arg(&script)
        .arg(&vm.path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "qmp_smoke.py failed");
    assert!(stdout.contains("QMP SMOKE OK"));
    assert!(start.elapsed() < Duration::from_secs(30));
    assert_eq!(vm.resets.load(Ordering::SeqCst), 1);
    assert!(vm.quit.load(Ordering::SeqCst), "quit reached the machine");
    vm.join();
}

#[test]
fn wait_on_blocks_until_the_first_client_connects() {
    let path = std::env::temp_dir().join(format!("qmp-{}-wait.sock", std::process::id()));
    let listening = Arc::new(AtomicBool::new(false));
    let (p, l) = (path.clone(), listening.clone());
    let main = thread::spawn(move || {
        let ctx = AioContext::new().unwrap();
        let vm = RunStateMachine::new(ctx.handle().bh_scheduler());
        let monitor = Monitor::new(&ctx, &vm, Rc::new(MachineHooks::new(|| {}, || {}))).unwrap();
        let option: QmpOption = format!("unix:{},server=on,wait=on", p.display())
            .parse()
            .unwrap();
        monitor.listen(&option).unwrap(); // blocks until the client below connects
        l.store(true, Ordering::SeqCst);
        while monitor.client_count() > 0 {
            ctx.poll(true);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = loop {
        if let Ok(stream) = UnixStream::connect(&path) {
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let reader = BufReader::new(stream.try_clone().unwrap());
            break Raw {
                stream,
                reader,
                events: Vec::new(),
            };
        }
        assert!(!listening.load(Ordering::SeqCst) && Instant::now() < deadline);
        thread::sleep(Duration::from_millis(10));
    };
    assert!(c.line().starts_with("{\"QMP\": "));
    assert_eq!(
        c.cmd(r#"{"execute":"qmp_capabilities"}"#),
        json!({"return": {}})
    );
    assert_eq!(
        c.cmd(r#"{"execute":"query-status"}"#),
        json!({"return": {"status": "prelaunch", "running": false}})
    );
    drop(c); // the monitor's loop above ends when its only client leaves
    main.join().unwrap();
    assert!(
        !path.exists(),
        "the socket file is removed with the monitor"
    );
}
