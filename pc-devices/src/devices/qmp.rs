//! QMP `device_add` and `device_del` on the device registry (hotplug).

use std::rc::Rc;

use qdev_bus::registry::{DeviceError, Phase};
use qemu_opts::Opts;
use qmp::{Commands, ErrorClass, QmpError};
use serde_json::{Map, Value, json};

use super::Devices;

/// A registry refusal as QMP's error (`DeviceNotFound` for `device_del` of an unknown
/// id, `GenericError` otherwise).
fn qmp_error(e: &DeviceError) -> QmpError {
    let class = match e.qmp_class() {
        "DeviceNotFound" => ErrorClass::DeviceNotFound,
        _ => ErrorClass::GenericError,
    };
    QmpError::new(class, e.to_string())
}

/// `device_add`'s arguments as `-device` properties: strings as they are, numbers and
/// booleans in their text form (QEMU's keyval visitor accepts both); what the registry
/// hands to a factory.
///
/// # Errors
///
/// An argument that is not a scalar (QEMU's words).
pub fn device_opts(args: &Map<String, Value>) -> Result<Opts, QmpError> {
    let mut pairs = Vec::with_capacity(args.len());
    for (key, value) in args {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => if *b { "on" } else { "off" }.to_owned(),
            _ => {
                return Err(QmpError::generic(format!(
                    "Parameter '{key}' expects a scalar value"
                )));
            }
        };
        pairs.push((key.clone(), text));
    }
    Ok(Opts::from_pairs("device_add", pairs))
}

/// Registers `device_add` and `device_del` for `devices`.
///
/// # Errors
///
/// A command of the same name is already registered.
pub(crate) fn register(commands: &Commands, devices: &Rc<Devices>) -> qmp::Result<()> {
    let d = devices.clone();
    commands.register("device_add", move |args| {
        let opts = device_opts(args)?;
        d.add(opts, Phase::HotPlug).map_err(|e| qmp_error(&e))?;
        Ok(json!({}))
    })?;
    let d = devices.clone();
    commands.register("device_del", move |args| {
        let id = match args.get("id") {
            Some(Value::String(id)) => id.clone(),
            Some(_) => {
                return Err(QmpError::generic(
                    "Invalid parameter type for 'id', expected: string",
                ));
            }
            None => return Err(QmpError::generic("Parameter 'id' is missing")),
        };
        if let Some(k) = args.keys().find(|k| *k != "id") {
            return Err(QmpError::generic(format!("Parameter '{k}' is unexpected")));
        }
        d.del(&id).map_err(|e| qmp_error(&e))?;
        Ok(json!({}))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_arguments_become_properties() {
        let args = json!({"driver": "scsi-hd", "scsi-id": 3, "write-cache": false, "id": "d1"});
        let opts = device_opts(args.as_object().unwrap()).unwrap();
        let pairs: Vec<_> = opts.iter().collect();
        assert_eq!(
            pairs,
            [
                ("driver", "scsi-hd"),
                ("scsi-id", "3"),
                ("write-cache", "off"),
                ("id", "d1")
            ]
        );
        let nested = json!({"driver": "scsi-hd", "x": {"a": 1}});
        assert!(device_opts(nested.as_object().unwrap()).is_err());
        let e = qmp_error(&DeviceError::DeviceNotFound("x".into()));
        assert_eq!(e.class, ErrorClass::DeviceNotFound);
        assert_eq!(e.desc, "Device 'x' not found");
    }
}
