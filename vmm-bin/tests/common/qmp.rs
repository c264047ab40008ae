//! A QMP client for the integration tests that keeps the events it reads.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A QMP client that keeps the events it reads.
pub(crate) struct Qmp {
    reader: BufReader<UnixStream>,
    /// The events read so far and not yet taken.
    pub(crate) events: Vec<Value>,
}

impl Qmp {
    pub(crate) fn connect(path: &Path) -> Qmp {
        let deadline = Instant::now() + Duration::from_secs(20);
        let stream = loop {
            if let Ok(s) = UnixStream::connect(path) {
                break s;
            }
            assert!(Instant::now() < deadline, "no QMP socket");
            std::thread::sleep(Duration::from_millis(20));
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut q = Qmp {
            reader: BufReader::new(stream),
            events: Vec::new(),
        };
        let greeting = q.next();
        assert!(greeting.get("QMP").is_some(), "{greeting}");
        assert_eq!(q.run("qmp_capabilities", json!({})), json!({"return": {}}));
        q
    }

    pub(crate) fn next(&mut self) -> Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }

    pub(crate) fn run(&mut self, command: &str, arguments: Value) -> Value {
        let request = json!({"execute": command, "arguments": arguments}).to_string();
        self.reader.get_mut().write_all(request.as_bytes()).unwrap();
        loop {
            let v = self.next();
            match v.get("event") {
                Some(_) => self.events.push(v),
                None => return v,
            }
        }
    }

    /// The tray movements seen since the last call: (device, open).
    pub(crate) fn trays(&mut self) -> Vec<(String, bool)> {
        std::mem::take(&mut self.events)
            .into_iter()
            .filter(|e| e["event"] == "DEVICE_TRAY_MOVED")
            .map(|e| {
                let d = &e["data"];
                (
                    d["device"].as_str().unwrap().to_owned(),
                    d["tray-open"] == true,
                )
            })
            .collect()
    }

    /// `query-block`'s entry for `device`.
    pub(crate) fn block(&mut self, device: &str) -> Value {
        let list = self.run("query-block", json!({}));
        list["return"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["device"] == device)
            .cloned()
            .unwrap_or_else(|| panic!("no {device} in {list}"))
    }
}

impl Qmp {
    /// Waits until an event named `name` has been read (keeping the others) and takes
    /// it; `None` at the deadline.
    pub(crate) fn wait_event(&mut self, name: &str, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
                return Some(self.events.remove(i));
            }
            if Instant::now() > deadline {
                return None;
            }
            let stream = self.reader.get_ref();
            let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
            let mut line = String::new();
            let mut got = self.reader.read_line(&mut line);
            let _ = self
                .reader
                .get_ref()
                .set_read_timeout(Some(Duration::from_secs(20)));
            if got.is_err() && !line.is_empty() {
                // Timed out inside a message: its first bytes are in `line`.
                got = self.reader.read_line(&mut line);
            }
            if let (Ok(n), Ok(v)) = (got, serde_json::from_str::<Value>(&line)) {
                if n > 0 && v.get("event").is_some() {
                    self.events.push(v);
                }
            }
        }
    }
}
