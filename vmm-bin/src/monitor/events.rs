//! Events: emitted from any thread, delivered to negotiated clients on the monitor's
//! thread, in emission order.
//!
//! An emitter formats and timestamps the event line at once and appends it to a queue
//! under a mutex (the queue's order is the emission order), then sets an
//! `EventNotifier` that the monitor watches in its `AioContext`. The monitor also drains
//! the queue around every command, so an event caused by a command (STOP from `stop`)
//! precedes the command's reply, as in QEMU.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use aio_context::EventNotifier;
use serde_json::{Value, json};

use super::protocol::event_line;

/// Events kept while the monitor's thread is busy; older ones are dropped beyond this
/// (a stuck main loop must not grow memory without bound).
const MAX_QUEUED: usize = 4096;

#[derive(Default)]
struct Queue {
    lines: VecDeque<Vec<u8>>,
    dropped: u64,
    closed: bool,
}

pub(crate) struct Shared {
    queue: Mutex<Queue>,
    pub(crate) notifier: EventNotifier,
}

/// Emits QMP events from any thread (cheap to clone, `Send + Sync`). Events reach the
/// clients that have completed capabilities negotiation; with none, they are dropped,
/// as QEMU does.
#[derive(Clone)]
pub struct QmpEvents {
    shared: Arc<Shared>,
}

fn lock(m: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// QAPI's `IoOperationType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOperation {
    /// A read failed.
    Read,
    /// A write failed.
    Write,
}

/// QAPI's `BlockErrorAction`: what the error policy did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockErrorAction {
    /// The error was ignored.
    Ignore,
    /// The error was reported to the guest.
    Report,
    /// The VM was stopped.
    Stop,
}

/// The data of a `BLOCK_IO_ERROR` event (QEMU 10's members, in QEMU's order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockIoError {
    /// The QOM path of the device (`/machine/peripheral/<id>`).
    pub qom_path: String,
    /// The block backend's name (may be empty).
    pub device: String,
    /// The node name of the backend, if any.
    pub node_name: Option<String>,
    /// The failed operation.
    pub operation: IoOperation,
    /// What the error policy did.
    pub action: BlockErrorAction,
    /// Whether the error was ENOSPC (only reported when known).
    pub nospace: Option<bool>,
    /// The error message (`strerror` of the errno).
    pub reason: String,
}

impl BlockIoError {
    fn to_value(&self) -> Value {
        let mut map = serde_json::Map::new();
        map.insert("qom-path".into(), json!(self.qom_path));
        map.insert("device".into(), json!(self.device));
        if let Some(n) = &self.node_name {
            map.insert("node-name".into(), json!(n));
        }
        let op = match self.operation {
            IoOperation::Read => "read",
            IoOperation::Write => "write",
        };
        let action = match self.action {
            BlockErrorAction::Ignore => "ignore",
            BlockErrorAction::Report => "report",
            BlockErrorAction::Stop => "stop",
        };
        map.insert("operation".into(), json!(op));
        map.insert("action".into(), json!(action));
        if let Some(n) = self.nospace {
            map.insert("nospace".into(), json!(n));
        }
        map.insert("reason".into(), json!(self.reason));
        Value::Object(map)
    }
}

impl QmpEvents {
    pub(crate) fn new() -> std::io::Result<QmpEvents> {
        Ok(QmpEvents {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                notifier: EventNotifier::new(false)?,
            }),
        })
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Emits `name` with optional `data` (an object), timestamped now.
    pub fn emit(&self, name: &str, data: Option<Value>) {
        let line = event_line(name, data.as_ref());
        {
            let mut q = lock(&self.shared.queue);
            if q.closed {
                return;
            }
            if q.lines.len() >= MAX_QUEUED {
                q.lines.pop_front();
                q.dropped += 1;
            }
            q.lines.push_back(line);
        }
        // Cannot fail on our own eventfd (a saturated counter still reads as set).
        let _ = self.shared.notifier.set();
    }

    /// Emits `BLOCK_IO_ERROR`. To order it before the STOP of a `werror=stop` policy,
    /// call this inside `RunStateMachine::request_stop_with`'s `before`.
    pub fn block_io_error(&self, error: &BlockIoError) {
        self.emit("BLOCK_IO_ERROR", Some(error.to_value()));
    }

    /// Emits `DEVICE_DELETED` for a device with the given id (if it had one) and QOM
    /// path; call it after the device's grace period (design.md, invariant 4).
    pub fn device_deleted(&self, id: Option<&str>, path: &str) {
        let data = match id {
            Some(id) => json!({"device": id, "path": path}),
            None => json!({"path": path}),
        };
        self.emit("DEVICE_DELETED", Some(data));
    }

    /// Emits the QMP event for a run state event: `STOP`, `RESUME`, `SHUTDOWN`, `RESET`;
    /// `Event::Other(text)` is emitted as the event `{"event": .., "data": ..}` that
    /// `text` holds as JSON, or as an event named `text` when it is not JSON.
    pub fn runstate_event(&self, event: &runstate::Event) {
        use runstate::Event;
        match event {
            Event::Stop => self.emit("STOP", None),
            Event::Resume => self.emit("RESUME", None),
            Event::Shutdown { guest, reason } => {
                self.emit("SHUTDOWN", Some(json!({"guest": guest, "reason": reason})))
            }
            Event::Reset { guest } => {
                let reason = if *guest {
                    "guest-reset"
                } else {
                    "host-qmp-system-reset"
                };
                self.emit("RESET", Some(json!({"guest": guest, "reason": reason})));
            }
            Event::Other(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(mut m)) => {
                    let name = m
                        .remove("event")
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    self.emit(&name, m.remove("data"));
                }
                _ => self.emit(text, None),
            },
            _ => {}
        }
    }

    /// Takes the queued lines (the monitor's thread).
    pub(crate) fn drain(&self) -> (Vec<Vec<u8>>, u64) {
        self.shared.notifier.test_and_clear();
        let mut q = lock(&self.shared.queue);
        let dropped = std::mem::take(&mut q.dropped);
        (q.lines.drain(..).collect(), dropped)
    }

    /// Stops accepting events (the monitor is gone).
    pub(crate) fn close(&self) {
        let mut q = lock(&self.shared.queue);
        q.closed = true;
        q.lines.clear();
    }
}

impl std::fmt::Debug for QmpEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QmpEvents").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(e: &QmpEvents) -> Vec<String> {
        e.drain()
            .0
            .into_iter()
            .map(|l| {
                let s = String::from_utf8(l).unwrap();
                s[s.find("\"event\"").unwrap()..].to_string()
            })
            .collect()
    }

    #[test]
    fn formats_and_order() {
        let e = QmpEvents::new().unwrap();
        e.runstate_event(&runstate::Event::Stop);
        e.runstate_event(&runstate::Event::Reset { guest: false });
        e.device_deleted(Some("d0"), "/machine/peripheral/d0");
        e.block_io_error(&BlockIoError {
            qom_path: "/machine/peripheral/vd0".into(),
            device: "drive0".into(),
            node_name: None,
            operation: IoOperation::Write,
            action: BlockErrorAction::Stop,
            nospace: Some(false),
            reason: "Input/output error".into(),
        });
        assert_eq!(
            lines(&e),
            [
                "\"event\": \"STOP\"}\r\n",
                "\"event\": \"RESET\", \"data\": {\"guest\": false, \"reason\": \"host-qmp-system-reset\"}}\r\n",
                "\"event\": \"DEVICE_DELETED\", \"data\": {\"device\": \"d0\", \"path\": \"/machine/peripheral/d0\"}}\r\n",
                "\"event\": \"BLOCK_IO_ERROR\", \"data\": {\"qom-path\": \"/machine/peripheral/vd0\", \"device\": \"drive0\", \
                 \"operation\": \"write\", \"action\": \"stop\", \"nospace\": false, \"reason\": \"Input/output error\"}}\r\n",
            ]
        );
        e.close();
        e.emit("X", None);
        assert!(lines(&e).is_empty());
    }

    #[test]
    fn queue_is_bounded() {
        let e = QmpEvents::new().unwrap();
        for _ in 0..MAX_QUEUED + 10 {
            e.emit("X", None);
        }
        let (lines, dropped) = e.drain();
        assert_eq!((lines.len(), dropped), (MAX_QUEUED, 10));
    }
}
