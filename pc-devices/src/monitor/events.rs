//! The VMM's QMP events: QAPI's `BLOCK_IO_ERROR`, `DEVICE_DELETED` and the run state
//! events (`STOP`, `RESUME`, `SHUTDOWN`, `RESET`), formatted with QEMU's members in
//! QEMU's order and emitted through the [`qmp`] crate's event queue.

use qmp::QmpEvents;
use serde_json::{Value, json};

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

/// The VMM's events on [`QmpEvents`] (emitted from any thread, like any event).
pub trait VmEvents {
    /// Emits `BLOCK_IO_ERROR`. To order it before the STOP of a `werror=stop` policy,
    /// call this inside `RunStateMachine::request_stop_with`'s `before`.
    fn block_io_error(&self, error: &BlockIoError);
    /// Emits `DEVICE_DELETED` for a device with the given id (if it had one) and QOM
    /// path; call it after the device's grace period (design.md, invariant 4).
    fn device_deleted(&self, id: Option<&str>, path: &str);
    /// Emits the QMP event for a run state event: `STOP`, `RESUME`, `SHUTDOWN`, `RESET`;
    /// `Event::Other(text)` is emitted as the event `{"event": .., "data": ..}` that
    /// `text` holds as JSON, or as an event named `text` when it is not JSON.
    fn runstate_event(&self, event: &runstate::Event);
}

impl VmEvents for QmpEvents {
    fn block_io_error(&self, error: &BlockIoError) {
        self.emit("BLOCK_IO_ERROR", Some(error.to_value()));
    }

    fn device_deleted(&self, id: Option<&str>, path: &str) {
        self.emit("DEVICE_DELETED", Some(device_deleted_data(id, path)));
    }

    fn runstate_event(&self, event: &runstate::Event) {
        if let Some((name, data)) = runstate_event_data(event) {
            self.emit(&name, data);
        }
    }
}

/// `DEVICE_DELETED`'s data.
fn device_deleted_data(id: Option<&str>, path: &str) -> Value {
    match id {
        Some(id) => json!({"device": id, "path": path}),
        None => json!({"path": path}),
    }
}

/// The name and data of a run state event's QMP event (none for events QMP lacks).
fn runstate_event_data(event: &runstate::Event) -> Option<(String, Option<Value>)> {
    use runstate::Event;
    Some(match event {
        Event::Stop => ("STOP".into(), None),
        Event::Resume => ("RESUME".into(), None),
        Event::Shutdown { guest, reason } => (
            "SHUTDOWN".into(),
            Some(json!({"guest": guest, "reason": reason})),
        ),
        Event::Reset { guest } => {
            let reason = if *guest {
                "guest-reset"
            } else {
                "host-qmp-system-reset"
            };
            (
                "RESET".into(),
                Some(json!({"guest": guest, "reason": reason})),
            )
        }
        Event::Other(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(mut m)) => {
                let name = m
                    .remove("event")
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                (name, m.remove("data"))
            }
            _ => (text.clone(), None),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(name_data: Option<(String, Option<Value>)>) -> String {
        let (name, data) = name_data.unwrap();
        format!("{name} {}", serde_json::to_string(&data).unwrap())
    }

    #[test]
    fn qapi_members_in_qemu_order() {
        use runstate::Event;
        assert_eq!(text(runstate_event_data(&Event::Stop)), "STOP null");
        assert_eq!(
            text(runstate_event_data(&Event::Reset { guest: false })),
            r#"RESET {"guest":false,"reason":"host-qmp-system-reset"}"#
        );
        assert_eq!(
            text(runstate_event_data(&Event::Other(
                r#"{"event": "X", "data": {"b": 1, "a": 2}}"#.into()
            ))),
            r#"X {"b":1,"a":2}"#
        );
        assert_eq!(
            serde_json::to_string(&device_deleted_data(Some("d0"), "/machine/peripheral/d0"))
                .unwrap(),
            r#"{"device":"d0","path":"/machine/peripheral/d0"}"#
        );
        let e = BlockIoError {
            qom_path: "/machine/peripheral/vd0".into(),
            device: "drive0".into(),
            node_name: None,
            operation: IoOperation::Write,
            action: BlockErrorAction::Stop,
            nospace: Some(false),
            reason: "Input/output error".into(),
        };
        assert_eq!(
            serde_json::to_string(&e.to_value()).unwrap(),
            r#"{"qom-path":"/machine/peripheral/vd0","device":"drive0","operation":"write","action":"stop","nospace":false,"reason":"Input/output error"}"#
        );
    }
}
