//! QMP's envelope: request checks (QEMU's `qmp_dispatch_check_obj`), replies, events and
//! the greeting, in QEMU's exact wire format (`\r\n` line ends, QEMU's key order).

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::json;

/// QMP's error classes (QEMU's `QapiErrorClass`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Most errors.
    GenericError,
    /// The command does not exist (or is not allowed yet).
    CommandNotFound,
    /// A device exists but is not active.
    DeviceNotActive,
    /// The named device does not exist.
    DeviceNotFound,
    /// KVM lacks a capability.
    KVMMissingCap,
}

impl ErrorClass {
    /// The class's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::DeviceNotActive => "DeviceNotActive",
            ErrorClass::DeviceNotFound => "DeviceNotFound",
            ErrorClass::KVMMissingCap => "KVMMissingCap",
        }
    }
}

/// A command's failure: QMP's `{"error": {"class": .., "desc": ..}}`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{desc}")]
pub struct QmpError {
    /// The error class.
    pub class: ErrorClass,
    /// The human-readable description.
    pub desc: String,
}

impl QmpError {
    /// A `GenericError` (QEMU's `error_setg`).
    pub fn generic(desc: impl Into<String>) -> QmpError {
        QmpError::new(ErrorClass::GenericError, desc)
    }

    /// An error of the given class.
    pub fn new(class: ErrorClass, desc: impl Into<String>) -> QmpError {
        QmpError {
            class,
            desc: desc.into(),
        }
    }

    /// `CommandNotFound`, with QEMU's message for an unknown command.
    pub fn command_not_found(name: &str) -> QmpError {
        QmpError::new(
            ErrorClass::CommandNotFound,
            format!("The command {name} has not been found"),
        )
    }

    /// `DeviceNotFound`, with QEMU's message for a missing device id.
    pub fn device_not_found(id: &str) -> QmpError {
        QmpError::new(
            ErrorClass::DeviceNotFound,
            format!("Device '{id}' not found"),
        )
    }
}

/// `Result` of a QMP command.
pub type QmpResult = std::result::Result<Value, QmpError>;

/// A request that passed the envelope checks.
#[derive(Debug, PartialEq)]
pub(crate) struct Request {
    pub(crate) command: String,
    pub(crate) arguments: Map<String, Value>,
    pub(crate) oob: bool,
}

/// Takes the `id` out of a request (echoed on the reply, whatever the outcome).
pub(crate) fn take_id(request: &mut Value) -> Option<Value> {
    request.as_object_mut()?.remove("id")
}

/// QEMU's `qmp_dispatch_check_obj`, in QEMU's order and words. `allow_oob`: the client
/// negotiated the `oob` capability, so `exec-oob` is a command key.
pub(crate) fn check_request(request: Value, allow_oob: bool) -> Result<Request, QmpError> {
    let Value::Object(dict) = request else {
        return Err(QmpError::generic("QMP input must be a JSON object"));
    };
    let mut exec_key: Option<&'static str> = None;
    for (name, value) in &dict {
        if name == "execute" || (name == "exec-oob" && allow_oob) {
            if !value.is_string() {
                return Err(QmpError::generic(format!(
                    "QMP input member '{name}' must be a string"
                )));
            }
            if let Some(other) = exec_key {
                return Err(QmpError::generic(format!(
                    "QMP input member '{name}' clashes with '{other}'"
                )));
            }
            exec_key = Some(if name == "execute" {
                "execute"
            } else {
                "exec-oob"
            });
        } else if name == "arguments" {
            if !value.is_object() {
                return Err(QmpError::generic(
                    "QMP input member 'arguments' must be an object",
                ));
            }
        } else {
            return Err(QmpError::generic(format!(
                "QMP input member '{name}' is unexpected"
            )));
        }
    }
    let Some(exec_key) = exec_key else {
        return Err(QmpError::generic("QMP input lacks member 'execute'"));
    };
    let oob = exec_key == "exec-oob";
    let mut dict = dict;
    let command = match dict.remove(exec_key) {
        Some(Value::String(s)) => s,
        _ => String::new(), // checked above
    };
    let arguments = match dict.remove("arguments") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    Ok(Request {
        command,
        arguments,
        oob,
    })
}

fn push_line(out: &mut Vec<u8>, parts: &[&[u8]]) {
    for p in parts {
        out.extend_from_slice(p);
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `{"return": value, "id": id}` (QEMU's key order).
pub(crate) fn write_return(out: &mut Vec<u8>, value: &Value, id: Option<&Value>) {
    let value = json::to_string(value);
    match id {
        Some(id) => push_line(
            out,
            &[
                b"{\"return\": ",
                value.as_bytes(),
                b", \"id\": ",
                json::to_string(id).as_bytes(),
                b"}",
            ],
        ),
        None => push_line(out, &[b"{\"return\": ", value.as_bytes(), b"}"]),
    }
}

/// Appends `{"id": id, "error": {"class": .., "desc": ..}}` (QEMU puts `id` first here).
pub(crate) fn write_error(out: &mut Vec<u8>, err: &QmpError, id: Option<&Value>) {
    let body = json::to_string(&serde_json::json!({
        "class": err.class.as_str(),
        "desc": err.desc,
    }));
    match id {
        Some(id) => push_line(
            out,
            &[
                b"{\"id\": ",
                json::to_string(id).as_bytes(),
                b", \"error\": ",
                body.as_bytes(),
                b"}",
            ],
        ),
        None => push_line(out, &[b"{\"error\": ", body.as_bytes(), b"}"]),
    }
}

/// One event line, timestamped now: `{"timestamp": {"seconds": .., "microseconds": ..},
/// "event": NAME, "data": {..}}` (no `data` when `None`, as QEMU's STOP and RESUME).
pub(crate) fn event_line(name: &str, data: Option<&Value>) -> Vec<u8> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let stamp = format!(
        "{{\"timestamp\": {{\"seconds\": {}, \"microseconds\": {}}}, \"event\": {}",
        now.as_secs(),
        now.subsec_micros(),
        json::to_string(&Value::String(name.to_owned()))
    );
    let mut out = Vec::new();
    match data {
        Some(data) => push_line(
            &mut out,
            &[
                stamp.as_bytes(),
                b", \"data\": ",
                json::to_string(data).as_bytes(),
                b"}",
            ],
        ),
        None => push_line(&mut out, &[stamp.as_bytes(), b"}"]),
    }
    out
}

/// The version this monitor reports (greeting and `query-version`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    /// QEMU major version that tools should assume.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Micro version.
    pub micro: u32,
    /// Free-form package string.
    pub package: String,
}

impl Default for Version {
    /// QEMU 10.2.0's command set, an empty package string (as upstream QEMU builds
    /// report); a VMM sets its own with [`Server::set_version`](crate::Server::set_version).
    fn default() -> Version {
        Version {
            major: 10,
            minor: 2,
            micro: 0,
            package: String::new(),
        }
    }
}

impl Version {
    /// `query-version`'s return value, in QEMU's key order.
    pub fn to_value(&self) -> Value {
        serde_json::json!({
            "qemu": {"micro": self.micro, "minor": self.minor, "major": self.major},
            "package": self.package,
        })
    }
}

/// The greeting line a server sends first: `{"QMP": {"version": .., "capabilities":
/// ["oob"]}}`, `\r\n`-terminated.
pub fn greeting(version: &Version) -> Vec<u8> {
    let mut out = Vec::new();
    let v = serde_json::json!({"QMP": {"version": version.to_value(), "capabilities": ["oob"]}});
    json::write(&mut out, &v);
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(v: Value) -> Result<Request, String> {
        check_request(v, false).map_err(|e| e.desc)
    }

    #[test]
    fn envelope_errors_match_qemu() {
        assert_eq!(
            check(json!(42)).unwrap_err(),
            "QMP input must be a JSON object"
        );
        assert_eq!(
            check(json!({"foo": 1})).unwrap_err(),
            "QMP input member 'foo' is unexpected"
        );
        assert_eq!(
            check(json!({"execute": 1})).unwrap_err(),
            "QMP input member 'execute' must be a string"
        );
        assert_eq!(
            check(json!({"execute": "x", "arguments": []})).unwrap_err(),
            "QMP input member 'arguments' must be an object"
        );
        assert_eq!(
            check(json!({})).unwrap_err(),
            "QMP input lacks member 'execute'"
        );
        assert_eq!(
            check(json!({"exec-oob": "x"})).unwrap_err(),
            "QMP input member 'exec-oob' is unexpected"
        );
        let e = check_request(json!({"execute": "a", "exec-oob": "b"}), true).unwrap_err();
        assert_eq!(e.desc, "QMP input member 'exec-oob' clashes with 'execute'");
        let r = check_request(json!({"exec-oob": "b"}), true).unwrap();
        assert!(r.oob && r.command == "b");
    }

    #[test]
    fn replies_are_byte_identical_to_qemu() {
        let mut out = Vec::new();
        write_return(&mut out, &json!({}), Some(&json!(1)));
        write_error(
            &mut out,
            &QmpError::new(
                ErrorClass::CommandNotFound,
                "The command nope has not been found",
            ),
            Some(&json!([1, 2])),
        );
        write_return(
            &mut out,
            &json!({"status": "paused", "running": false}),
            None,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"return\": {}, \"id\": 1}\r\n\
             {\"id\": [1, 2], \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command nope has not been found\"}}\r\n\
             {\"return\": {\"status\": \"paused\", \"running\": false}}\r\n"
        );
        let g = greeting(&Version {
            package: "vmm-bin 0.1.0".into(),
            ..Version::default()
        });
        assert_eq!(
            String::from_utf8(g).unwrap(),
            "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 10}, \
             \"package\": \"vmm-bin 0.1.0\"}, \"capabilities\": [\"oob\"]}}\r\n"
        );
        let e = String::from_utf8(event_line("RESET", Some(&json!({"guest": false})))).unwrap();
        assert!(e.starts_with("{\"timestamp\": {\"seconds\": "), "{e}");
        assert!(
            e.ends_with(", \"event\": \"RESET\", \"data\": {\"guest\": false}}\r\n"),
            "{e}"
        );
    }
}
