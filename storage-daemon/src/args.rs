//! One reader for an export's options, whether they come as `--export key=value,...`
//! (qemu-opts' keyval) or as `block-export-add`'s JSON arguments, so both are
//! checked by the same code; each source words its errors as QEMU does for it.

use qemu_opts::Opts;
use serde_json::{Map, Value};

/// Typed access to options by dotted key; every error is a message.
pub(crate) trait Args {
    /// An optional string.
    fn string(&mut self, key: &str) -> Result<Option<String>, String>;
    /// An optional boolean, `default` when absent.
    fn flag(&mut self, key: &str, default: bool) -> Result<bool, String>;
    /// An optional unsigned number that must fit `T`.
    fn number<T: TryFrom<u64>>(&mut self, key: &str) -> Result<Option<T>, String>;
    /// Refuses a key that was not taken.
    fn finish(&self) -> Result<(), String>;

    /// A string that must be there.
    fn required(&mut self, key: &str) -> Result<String, String> {
        self.string(key)?
            .ok_or_else(|| format!("Parameter '{key}' is missing"))
    }
}

/// `--export`'s keyval text.
pub(crate) struct Keyval(pub(crate) Opts);

impl Args for Keyval {
    fn string(&mut self, key: &str) -> Result<Option<String>, String> {
        Ok(self.0.string(key))
    }
    fn flag(&mut self, key: &str, default: bool) -> Result<bool, String> {
        self.0.flag(key, default).map_err(|e| e.to_string())
    }
    fn number<T: TryFrom<u64>>(&mut self, key: &str) -> Result<Option<T>, String> {
        self.0.number(key).map_err(|e| e.to_string())
    }
    fn finish(&self) -> Result<(), String> {
        self.0.finish().map_err(|e| e.to_string())
    }
}

/// QMP arguments, nested objects flattened to dotted keys (`addr.type`).
pub(crate) struct Json {
    pairs: Vec<(String, Value, bool)>,
}

impl Json {
    /// The arguments of a command.
    pub(crate) fn new(map: &Map<String, Value>) -> Json {
        let mut pairs = Vec::new();
        flatten("", map, &mut pairs);
        Json { pairs }
    }

    fn take(&mut self, key: &str) -> Option<&Value> {
        let (_, value, used) = self.pairs.iter_mut().find(|(k, _, _)| k == key)?;
        *used = true;
        Some(value)
    }
}

fn flatten(prefix: &str, map: &Map<String, Value>, out: &mut Vec<(String, Value, bool)>) {
    for (k, v) in map {
        let key = format!("{prefix}{k}");
        match v {
            Value::Object(inner) => flatten(&format!("{key}."), inner, out),
            _ => out.push((key, v.clone(), false)),
        }
    }
}

fn wrong_type(key: &str, expected: &str) -> String {
    format!("Invalid parameter type for '{key}', expected: {expected}")
}

impl Args for Json {
    fn string(&mut self, key: &str) -> Result<Option<String>, String> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(wrong_type(key, "string")),
        }
    }
    fn flag(&mut self, key: &str, default: bool) -> Result<bool, String> {
        match self.take(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(wrong_type(key, "boolean")),
        }
    }
    fn number<T: TryFrom<u64>>(&mut self, key: &str) -> Result<Option<T>, String> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| T::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| wrong_type(key, "integer")),
        }
    }
    fn required(&mut self, key: &str) -> Result<String, String> {
        // QEMU names the missing object, not its member (`addr`, not `addr.type`).
        let missing = match key.split_once('.') {
            Some((parent, _))
                if !self.pairs.iter().any(|(k, _, _)| {
                    k.strip_prefix(parent).is_some_and(|r| r.starts_with('.'))
                }) =>
            {
                parent
            }
            _ => key,
        };
        self.string(key)?
            .ok_or_else(|| format!("Parameter '{missing}' is missing"))
    }
    fn finish(&self) -> Result<(), String> {
        match self.pairs.iter().find(|(_, _, used)| !used) {
            Some((k, _, _)) => Err(format!("Parameter '{k}' is unexpected")),
            None => Ok(()),
        }
    }
}
