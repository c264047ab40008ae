//! One client's protocol state and command dispatch (QEMU's `monitor_qmp_dispatch` and
//! `qmp_dispatch`): capabilities negotiation, the envelope checks, the table lookup, and
//! the reply line in QEMU's format.

use std::cell::RefCell;
use std::rc::Rc;

use serde_json::{Map, Value, json};

use crate::commands::{Commands, no_arguments};
use crate::json;
use crate::lexer::Frame;
use crate::protocol::{
    ErrorClass, QmpError, QmpResult, Version, check_request, take_id, write_error, write_return,
};

/// What a client has negotiated. Transport-free: feed it the [`Frame`]s of one
/// connection with [`Session::respond`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Session {
    negotiated: bool,
    oob: bool,
}

/// The answer to one frame.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Response {
    /// The reply line (`return` or `error`, `\r\n`-terminated).
    pub line: Vec<u8>,
    /// The connection must end once `line` is sent (the message was too long).
    pub disconnect: bool,
}

const NEGOTIATE_FIRST: &str = "Expecting capabilities negotiation with 'qmp_capabilities'";

impl Session {
    /// Whether `qmp_capabilities` succeeded: commands run and events are delivered.
    pub fn negotiated(&self) -> bool {
        self.negotiated
    }

    /// Whether the `oob` capability is enabled (`exec-oob` accepted).
    pub fn oob(&self) -> bool {
        self.oob
    }

    /// Answers one frame: parses it, runs the command it names (if any) from
    /// `commands`, and formats the reply with the request's `id`. The handler runs with
    /// no borrow held: it may poll an event loop or register commands.
    pub fn respond(&mut self, commands: &Commands, frame: Frame) -> Response {
        let (result, id) = match frame {
            Frame::Json(text) => match json::parse(&text) {
                Ok(mut request) => {
                    let id = take_id(&mut request);
                    (self.dispatch(commands, request), id)
                }
                Err(desc) => (
                    Err(QmpError::generic(format!("JSON parse error, {desc}"))),
                    None,
                ),
            },
            Frame::Error(desc) => (Err(QmpError::generic(desc)), None),
            Frame::TooLong { max_len } => {
                let desc = format!(
                    "JSON token size limit exceeded (a message may be at most {max_len} bytes); disconnecting"
                );
                let mut line = Vec::new();
                write_error(&mut line, &QmpError::generic(desc), None);
                return Response {
                    line,
                    disconnect: true,
                };
            }
        };
        let mut line = Vec::new();
        match &result {
            Ok(v) => write_return(&mut line, v, id.as_ref()),
            Err(e) => write_error(&mut line, e, id.as_ref()),
        }
        Response {
            line,
            disconnect: false,
        }
    }

    /// Runs one parsed request (its `id` already taken out).
    pub(crate) fn dispatch(&mut self, commands: &Commands, request: Value) -> QmpResult {
        let request = check_request(request, self.oob)?;
        if request.command == "qmp_capabilities" {
            if self.negotiated {
                return Err(QmpError::new(
                    ErrorClass::CommandNotFound,
                    "Capabilities negotiation is already complete, command ignored",
                ));
            }
            self.oob = capabilities(&request.arguments)?;
            self.negotiated = true;
            return Ok(json!({}));
        }
        if !self.negotiated {
            // QEMU rewrites every CommandNotFound in negotiation mode to this text.
            return Err(QmpError::new(ErrorClass::CommandNotFound, NEGOTIATE_FIRST));
        }
        let Some((handler, allow_oob)) = commands.get(&request.command) else {
            return Err(QmpError::command_not_found(&request.command));
        };
        if request.oob && !allow_oob {
            return Err(QmpError::generic(format!(
                "The command {} does not support OOB",
                request.command
            )));
        }
        handler(&request.arguments)
    }

    /// A session that has negotiated (tests and the fuzz entry point).
    pub(crate) fn negotiated_with_oob() -> Session {
        Session {
            negotiated: true,
            oob: true,
        }
    }
}

/// `qmp_capabilities`'s arguments: `{"enable": ["oob"]}` or nothing. Returns whether
/// OOB is enabled.
fn capabilities(args: &Map<String, Value>) -> std::result::Result<bool, QmpError> {
    let mut oob = false;
    for (key, value) in args {
        if key != "enable" {
            return Err(QmpError::generic(format!(
                "Parameter '{key}' is unexpected"
            )));
        }
        let Value::Array(caps) = value else {
            return Err(QmpError::generic(
                "Invalid parameter type for 'enable', expected: array",
            ));
        };
        for cap in caps {
            match cap.as_str() {
                Some("oob") => oob = true,
                Some(other) => {
                    return Err(QmpError::generic(format!(
                        "Parameter 'enable' does not accept value '{other}'"
                    )));
                }
                None => {
                    return Err(QmpError::generic(
                        "Invalid parameter type for 'enable[0]', expected: string",
                    ));
                }
            }
        }
    }
    Ok(oob)
}

/// Registers the protocol's own commands: `query-version` and `query-commands`
/// (`qmp_capabilities` is handled by [`Session`] itself).
pub(crate) fn register_builtins(
    commands: &Commands,
    version: &Rc<RefCell<Version>>,
) -> crate::Result<()> {
    let ver = version.clone();
    commands.register("query-version", move |args| {
        no_arguments(args)?;
        Ok(ver.borrow().to_value())
    })?;
    let table = commands.downgrade();
    commands.register("query-commands", move |args| {
        no_arguments(args)?;
        let mut names = table.names();
        names.push("qmp_capabilities".into());
        Ok(Value::Array(
            names.into_iter().map(|n| json!({"name": n})).collect(),
        ))
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> Commands {
        let c = Commands::new();
        register_builtins(&c, &Rc::new(RefCell::new(Version::default()))).unwrap();
        c.register("stop", |args| {
            no_arguments(args)?;
            Ok(json!({}))
        })
        .unwrap();
        c
    }

    fn run(c: &Commands, s: &mut Session, v: Value) -> std::result::Result<Value, String> {
        s.dispatch(c, v)
            .map_err(|e| format!("{}: {}", e.class.as_str(), e.desc))
    }

    #[test]
    fn negotiation() {
        let c = setup();
        let mut s = Session::default();
        let err = run(&c, &mut s, json!({"execute": "stop"})).unwrap_err();
        assert_eq!(err, format!("CommandNotFound: {NEGOTIATE_FIRST}"));
        // Envelope errors are reported as they are.
        let err = run(&c, &mut s, json!({"execute": 1})).unwrap_err();
        assert!(err.starts_with("GenericError: QMP input member 'execute'"));
        let err = run(
            &c,
            &mut s,
            json!({"execute": "qmp_capabilities", "arguments": {"enable": ["foo"]}}),
        )
        .unwrap_err();
        assert_eq!(
            err,
            "GenericError: Parameter 'enable' does not accept value 'foo'"
        );
        run(
            &c,
            &mut s,
            json!({"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}),
        )
        .unwrap();
        assert_eq!(s, Session::negotiated_with_oob());
        assert!(s.negotiated() && s.oob());
        let err = run(&c, &mut s, json!({"execute": "qmp_capabilities"})).unwrap_err();
        assert_eq!(
            err,
            "CommandNotFound: Capabilities negotiation is already complete, command ignored"
        );
        let err = run(&c, &mut s, json!({"exec-oob": "stop"})).unwrap_err();
        assert_eq!(err, "GenericError: The command stop does not support OOB");
        let err = run(&c, &mut s, json!({"execute": "nope"})).unwrap_err();
        assert_eq!(err, "CommandNotFound: The command nope has not been found");
        let err = run(
            &c,
            &mut s,
            json!({"execute": "stop", "arguments": {"x": 1}}),
        )
        .unwrap_err();
        assert_eq!(err, "GenericError: Parameter 'x' is unexpected");
    }

    #[test]
    fn protocol_commands() {
        let c = setup();
        let mut s = Session::negotiated_with_oob();
        let names = run(&c, &mut s, json!({"execute": "query-commands"})).unwrap();
        let names = names.as_array().unwrap();
        assert!(names.contains(&json!({"name": "qmp_capabilities"})));
        assert!(names.contains(&json!({"name": "stop"})));
        assert_eq!(
            run(&c, &mut s, json!({"execute": "query-version"})).unwrap(),
            json!({"qemu": {"micro": 0, "minor": 2, "major": 10}, "package": ""})
        );
    }

    #[test]
    fn responses_carry_the_id_and_the_disconnect() {
        let c = setup();
        let mut s = Session::default();
        let r = s.respond(&c, Frame::Json(br#"{"execute":"stop","id":"a"}"#.to_vec()));
        assert_eq!(
            String::from_utf8(r.line).unwrap(),
            format!(
                "{{\"id\": \"a\", \"error\": {{\"class\": \"CommandNotFound\", \"desc\": \"{NEGOTIATE_FIRST}\"}}}}\r\n"
            )
        );
        let r = s.respond(&c, Frame::Json(b"{\"a\":1 2}".to_vec()));
        assert!(!r.disconnect);
        assert_eq!(
            String::from_utf8(r.line).unwrap(),
            "{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expected separator in dict\"}}\r\n"
        );
        let r = s.respond(&c, Frame::TooLong { max_len: 64 });
        assert!(r.disconnect);
        assert!(
            String::from_utf8(r.line)
                .unwrap()
                .contains("at most 64 bytes")
        );
    }
}
