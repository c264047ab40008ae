//! The command table: the owners of commands (a VMM's run state, its block layer, a
//! storage daemon's exports) register them here; the server looks them up.
//!
//! A handler takes the request's `arguments` object and returns the `return` value or a
//! [`QmpError`]. [`Commands::register_typed`] deserializes the arguments into a type of
//! the caller's (use `#[serde(deny_unknown_fields, rename_all = "kebab-case")]`), with
//! QEMU's words for missing, unexpected and mistyped parameters.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::{Rc, Weak};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::protocol::{QmpError, QmpResult};
use crate::{Error, Result};

/// A command handler: the `arguments` object in, the `return` value out.
pub type CommandFn = Rc<dyn Fn(&Map<String, Value>) -> QmpResult>;

#[derive(Clone)]
struct Entry {
    handler: CommandFn,
    allow_oob: bool,
}

/// The monitor's commands (cheap to clone; all clones share one table). Handlers run on
/// the monitor's (main) thread, with no monitor borrow held: a handler may register
/// commands, emit events, or run a nested `AioContext::poll`.
#[derive(Clone, Default)]
pub struct Commands {
    table: Rc<RefCell<BTreeMap<String, Entry>>>,
}

impl Commands {
    /// An empty table.
    pub fn new() -> Commands {
        Commands::default()
    }

    /// Adds `name`, handled by `handler`.
    ///
    /// # Errors
    ///
    /// [`Error::DuplicateCommand`] if `name` is taken (unregister it first to
    /// replace it).
    pub fn register(
        &self,
        name: &str,
        handler: impl Fn(&Map<String, Value>) -> QmpResult + 'static,
    ) -> Result<()> {
        self.insert(name, Rc::new(handler), false)
    }

    /// Adds `name` with arguments deserialized into `A`; a deserialization failure is
    /// answered with QEMU's message ("Parameter 'id' is missing", "Parameter 'x' is
    /// unexpected", "Invalid parameter type for 'id', expected: string").
    ///
    /// # Errors
    ///
    /// [`Error::DuplicateCommand`] if `name` is taken.
    pub fn register_typed<A: DeserializeOwned + 'static>(
        &self,
        name: &str,
        handler: impl Fn(A) -> QmpResult + 'static,
    ) -> Result<()> {
        self.register(name, move |args| handler(parse_args::<A>(args)?))
    }

    /// Like [`Commands::register`], for a command that may also run as `exec-oob`.
    ///
    /// # Errors
    ///
    /// [`Error::DuplicateCommand`] if `name` is taken.
    pub fn register_oob(
        &self,
        name: &str,
        handler: impl Fn(&Map<String, Value>) -> QmpResult + 'static,
    ) -> Result<()> {
        self.insert(name, Rc::new(handler), true)
    }

    fn insert(&self, name: &str, handler: CommandFn, allow_oob: bool) -> Result<()> {
        let mut table = self.table.borrow_mut();
        if table.contains_key(name) || name == "qmp_capabilities" {
            return Err(Error::DuplicateCommand(name.to_owned()));
        }
        table.insert(name.to_owned(), Entry { handler, allow_oob });
        Ok(())
    }

    /// Removes `name`; returns whether it existed.
    pub fn unregister(&self, name: &str) -> bool {
        self.table.borrow_mut().remove(name).is_some()
    }

    /// The registered names, sorted (`qmp_capabilities` is built in and not listed).
    pub fn names(&self) -> Vec<String> {
        self.table.borrow().keys().cloned().collect()
    }

    /// Runs the command `name` with `arguments`, as a client's `execute` would after
    /// negotiation (no borrow of the table is held while it runs).
    ///
    /// # Errors
    ///
    /// The handler's error; `CommandNotFound` if `name` is not registered.
    pub fn call(&self, name: &str, arguments: &Map<String, Value>) -> QmpResult {
        match self.get(name) {
            Some((handler, _)) => handler(arguments),
            None => Err(QmpError::command_not_found(name)),
        }
    }

    /// A handle that does not keep the table alive (for handlers stored in it).
    pub(crate) fn downgrade(&self) -> WeakCommands {
        WeakCommands(Rc::downgrade(&self.table))
    }

    /// The handler of `name` and whether it allows OOB (cloned out: no borrow is held
    /// while it runs).
    pub(crate) fn get(&self, name: &str) -> Option<(CommandFn, bool)> {
        self.table
            .borrow()
            .get(name)
            .map(|e| (e.handler.clone(), e.allow_oob))
    }
}

/// A weak [`Commands`] (no reference cycle through a handler of the table).
pub(crate) struct WeakCommands(Weak<RefCell<BTreeMap<String, Entry>>>);

impl WeakCommands {
    /// The registered names, or none once the table is gone.
    pub(crate) fn names(&self) -> Vec<String> {
        self.0
            .upgrade()
            .map(|t| t.borrow().keys().cloned().collect())
            .unwrap_or_default()
    }
}

impl std::fmt::Debug for Commands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commands")
            .field("names", &self.names())
            .finish()
    }
}

/// Refuses any argument (QEMU's "Parameter 'x' is unexpected"), for commands that take
/// none.
pub fn no_arguments(args: &Map<String, Value>) -> std::result::Result<(), QmpError> {
    match args.keys().next() {
        Some(k) => Err(QmpError::generic(format!("Parameter '{k}' is unexpected"))),
        None => Ok(()),
    }
}

/// Deserializes `arguments` into `A`, with QEMU's error messages.
pub fn parse_args<A: DeserializeOwned>(
    args: &Map<String, Value>,
) -> std::result::Result<A, QmpError> {
    let err = match serde_json::from_value::<A>(Value::Object(args.clone())) {
        Ok(a) => return Ok(a),
        Err(e) => e.to_string(),
    };
    Err(QmpError::generic(qemu_words(&err, || {
        culprit::<A>(args, &err)
    })))
}

/// Translates serde's words; `culprit` names the mistyped member when needed.
fn qemu_words(err: &str, culprit: impl FnOnce() -> Option<String>) -> String {
    let quoted = |s: &str| s.split('`').nth(1).map(str::to_owned);
    if let Some(rest) = err.strip_prefix("missing field ") {
        return format!(
            "Parameter '{}' is missing",
            quoted(rest).unwrap_or_default()
        );
    }
    if let Some(rest) = err.strip_prefix("unknown field ") {
        return format!(
            "Parameter '{}' is unexpected",
            quoted(rest).unwrap_or_default()
        );
    }
    if err.starts_with("invalid type") || err.starts_with("invalid value") {
        let expected = err.rsplit("expected ").next().unwrap_or("");
        let expected = qapi_type(expected);
        return match culprit() {
            Some(name) => format!("Invalid parameter type for '{name}', expected: {expected}"),
            None => format!("Invalid parameter type, expected: {expected}"),
        };
    }
    err.to_owned()
}

/// Which member makes deserialization fail: the first one whose removal changes the
/// error (only run on the error path; arguments are small).
fn culprit<A: DeserializeOwned>(args: &Map<String, Value>, err: &str) -> Option<String> {
    args.keys().find_map(|k| {
        let mut without = args.clone();
        without.remove(k);
        match serde_json::from_value::<A>(Value::Object(without)) {
            Err(e) if e.to_string() == err => None,
            _ => Some(k.clone()),
        }
    })
}

/// Whether `e` is a Rust numeric type name such as `u32` with a prefix in `prefixes`.
fn numeric(e: &str, prefixes: &[char]) -> bool {
    let mut chars = e.chars();
    chars.next().is_some_and(|c| prefixes.contains(&c))
        && e.len() > 1
        && chars.all(|c| c.is_ascii_digit())
}

/// serde's "expected ..." in QAPI's type names.
fn qapi_type(expected: &str) -> &str {
    let e = expected.trim_start_matches("a ").trim_start_matches("an ");
    if e.contains("string") || e.starts_with("variant identifier") {
        "string"
    } else if numeric(e, &['i', 'u']) {
        "integer"
    } else if numeric(e, &['f']) {
        "number"
    } else if e.contains("bool") {
        "boolean"
    } else if e.contains("sequence") {
        "array"
    } else if e.contains("map") || e.starts_with("struct") {
        "object"
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct DeviceDel {
        id: String,
        force: Option<bool>,
    }

    fn err_of(v: Value) -> String {
        let Value::Object(m) = v else { unreachable!() };
        parse_args::<DeviceDel>(&m).unwrap_err().desc
    }

    #[test]
    fn typed_arguments_use_qemu_words() {
        assert_eq!(err_of(json!({})), "Parameter 'id' is missing");
        assert_eq!(
            err_of(json!({"id": "a", "x": 1})),
            "Parameter 'x' is unexpected"
        );
        assert_eq!(
            err_of(json!({"id": 5})),
            "Invalid parameter type for 'id', expected: string"
        );
        assert_eq!(
            err_of(json!({"id": "a", "force": "yes"})),
            "Invalid parameter type for 'force', expected: boolean"
        );
    }

    #[test]
    fn registry() {
        let c = Commands::new();
        c.register("a", |_| Ok(json!(1))).unwrap();
        assert!(matches!(
            c.register("a", |_| Ok(json!(2))),
            Err(Error::DuplicateCommand(_))
        ));
        c.register_typed("b", |d: DeviceDel| Ok(json!(d.id)))
            .unwrap();
        let (b, oob) = c.get("b").unwrap();
        assert!(!oob);
        assert_eq!(
            b(json!({"id": "x"}).as_object().unwrap()).unwrap(),
            json!("x")
        );
        assert_eq!(c.names(), ["a", "b"]);
        assert!(c.unregister("a") && !c.unregister("a"));
        assert_eq!(
            no_arguments(json!({"k": 1}).as_object().unwrap())
                .unwrap_err()
                .desc,
            "Parameter 'k' is unexpected"
        );
    }
}
