//! The QMP block commands, registered into a monitor's command table by the crate that
//! owns them: `query-block`, `query-named-block-nodes`, `blockdev-add`,
//! `blockdev-del`, `block_resize`. Replies and errors are QEMU 10's (every error a `GenericError`).

use qmp::{Commands, QmpError, no_arguments};
use serde_json::{Map, Value};

use crate::{BlockdevOptions, NodeRegistry};

/// Registers the five commands on `commands`, serving `registry`.
///
/// # Errors
///
/// A command name already registered.
pub fn register(commands: &Commands, registry: &NodeRegistry) -> qmp::Result<()> {
    let r = registry.clone();
    commands.register("query-block", move |args| {
        no_arguments(args)?;
        Ok(r.query_block())
    })?;
    let r = registry.clone();
    commands.register("query-named-block-nodes", move |args| {
        // `flat` only changes how backing images nest; our nodes have none.
        optional_flag(args, "flat")?;
        Ok(r.query_named_block_nodes())
    })?;
    let r = registry.clone();
    commands.register("blockdev-add", move |args| {
        let options = BlockdevOptions::from_json(args)?;
        r.add(&options)?;
        Ok(Value::Object(Map::new()))
    })?;
    let r = registry.clone();
    commands.register("blockdev-del", move |args| {
        let name = node_name_argument(args)?;
        r.del(&name)?;
        Ok(Value::Object(Map::new()))
    })?;
    let r = registry.clone();
    commands.register("block_resize", move |args| {
        let (device, node_name, size) = resize_arguments(args)?;
        r.resize(device.as_deref(), node_name.as_deref(), size)?;
        Ok(Value::Object(Map::new()))
    })?;
    Ok(())
}

/// `block_resize`'s `{"device"?: str, "node-name"?: str, "size": int}`, checked as
/// QEMU's QAPI visitor checks them (unknown keys, types, `size` present).
fn resize_arguments(
    args: &Map<String, Value>,
) -> Result<(Option<String>, Option<String>, i64), QmpError> {
    if let Some(k) = args
        .keys()
        .find(|k| !matches!(k.as_str(), "device" | "node-name" | "size"))
    {
        return Err(QmpError::generic(format!("Parameter '{k}' is unexpected")));
    }
    let string = |key: &str| match args.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(QmpError::generic(format!(
            "Invalid parameter type for '{key}', expected: string"
        ))),
    };
    let (device, node_name) = (string("device")?, string("node-name")?);
    let size = match args.get("size") {
        None => return Err(QmpError::generic("Parameter 'size' is missing")),
        Some(v) => v.as_i64().ok_or_else(|| {
            QmpError::generic("Invalid parameter type for 'size', expected: integer")
        })?,
    };
    Ok((device, node_name, size))
}

/// `{"node-name": "..."}` and nothing else, in QEMU's words.
fn node_name_argument(args: &Map<String, Value>) -> Result<String, QmpError> {
    if let Some(k) = args.keys().find(|k| *k != "node-name") {
        return Err(QmpError::generic(format!("Parameter '{k}' is unexpected")));
    }
    match args.get("node-name") {
        None => Err(QmpError::generic("Parameter 'node-name' is missing")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(QmpError::generic(
            "Invalid parameter type for 'node-name', expected: string",
        )),
    }
}

/// An optional boolean argument `key` and nothing else.
fn optional_flag(args: &Map<String, Value>, key: &str) -> Result<(), QmpError> {
    if let Some(k) = args.keys().find(|k| *k != key) {
        return Err(QmpError::generic(format!("Parameter '{k}' is unexpected")));
    }
    match args.get(key) {
        None | Some(Value::Bool(_)) => Ok(()),
        Some(_) => Err(QmpError::generic(format!(
            "Invalid parameter type for '{key}', expected: boolean"
        ))),
    }
}
