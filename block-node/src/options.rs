//! `-blockdev` / `--blockdev` / QMP `blockdev-add`: QEMU's `BlockdevOptions` for the
//! `file` and `raw` drivers, read from dotted `key=value` text or from JSON.
//!
//! Both forms become one JSON tree first (QEMU does the same: keyval text is turned
//! into a dictionary by splitting keys at dots), then one reader takes the members it
//! knows. The difference is the scalars: in dotted text every value is a string
//! (`read-only=on`), in JSON it has its own type (`"read-only": true`).

use std::path::PathBuf;

use qemu_opts::{Grammar, Opts};
use serde_json::{Map, Value};

use crate::{Error, Result};

/// `cache.direct` and `cache.no-flush`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cache {
    /// Bypass the host page cache (O_DIRECT).
    pub direct: bool,
    /// Ignore flush requests (QEMU's `cache=unsafe`).
    pub no_flush: bool,
}

/// A node's driver and its own options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Driver {
    /// `driver=file`: an image file or block device.
    File {
        /// `filename`.
        filename: PathBuf,
    },
    /// `driver=raw`: the raw format over a child node.
    Raw {
        /// `file`: the child.
        file: Child,
    },
}

impl Driver {
    /// QEMU's name of the driver (`drv` in `query-named-block-nodes`).
    pub fn name(&self) -> &'static str {
        match self {
            Driver::File { .. } => "file",
            Driver::Raw { .. } => "raw",
        }
    }
}

/// A reference to a child node (QAPI's `BlockdevRef`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Child {
    /// An existing node, by name (`file=file0`).
    Name(String),
    /// A node defined in place (`file.driver=file,file.filename=..`), owned by its
    /// parent.
    Inline(Box<BlockdevOptions>),
}

/// One node's options (QAPI's `BlockdevOptions`, the members this crate implements).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockdevOptions {
    /// `node-name` (required for a root node; inline children may omit it).
    pub node_name: Option<String>,
    /// `read-only`.
    pub read_only: bool,
    /// `discard=unmap` (`true`) or `ignore` (QEMU's default).
    pub discard: bool,
    /// `cache.*`.
    pub cache: Cache,
    /// `driver` and its members.
    pub driver: Driver,
}

impl BlockdevOptions {
    /// Parses an option argument: JSON when it starts with `{` (as QEMU decides),
    /// dotted `key=value,...` otherwise. `option` names the option in syntax errors.
    ///
    /// # Errors
    ///
    /// QEMU's words: `Parameter 'filename' is missing`, `Parameter 'x' is unexpected`,
    /// `Parameter 'driver' does not accept value 'qcow9'`, a JSON parse error, ...
    pub fn parse(option: &str, text: &str) -> Result<BlockdevOptions> {
        if text.trim_start().starts_with('{') {
            let value: Value =
                serde_json::from_str(text).map_err(|e| Error::Json(e.to_string()))?;
            let Value::Object(map) = value else {
                return Err(Error::Type {
                    key: "<root>".into(),
                    expected: "object",
                });
            };
            BlockdevOptions::from_json(&map)
        } else {
            BlockdevOptions::from_keyval(option, text)
        }
    }

    /// Parses dotted `key=value,...` text (QEMU's keyval: each key once).
    ///
    /// # Errors
    ///
    /// As [`BlockdevOptions::parse`].
    pub fn from_keyval(option: &str, text: &str) -> Result<BlockdevOptions> {
        // QEMU's -blockdev and qemu-storage-daemon's --blockdev imply `driver`.
        let opts = Opts::parse(option, text, Grammar::keyval().implied("driver"))?;
        let tree = nest(&opts)?;
        read(Reader::new(tree, "", false))
    }

    /// Reads a JSON object (QMP `blockdev-add`'s arguments, a `{...}` option).
    ///
    /// # Errors
    ///
    /// As [`BlockdevOptions::parse`], with `Invalid parameter type for 'x'` for a
    /// member of the wrong JSON type.
    pub fn from_json(map: &Map<String, Value>) -> Result<BlockdevOptions> {
        read(Reader::new(map.clone(), "", true))
    }
}

/// Splits dotted keys into nested objects (`file.driver=file` -> `{"file":
/// {"driver": "file"}}`); every leaf is a string.
fn nest(opts: &Opts) -> Result<Map<String, Value>> {
    let mut root = Map::new();
    for (key, value) in opts.iter() {
        let parts: Vec<&str> = key.split('.').collect();
        let mut map = &mut root;
        for (depth, part) in parts.iter().enumerate() {
            let path = parts[..=depth].join(".");
            if part.is_empty() {
                return Err(Error::InvalidKey(key.to_owned()));
            }
            if depth + 1 == parts.len() {
                if map.contains_key(*part) {
                    return Err(Error::Inconsistent(path));
                }
                map.insert((*part).to_owned(), Value::String(value.to_owned()));
                break;
            }
            let slot = map
                .entry((*part).to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            map = match slot {
                Value::Object(m) => m,
                _ => return Err(Error::Inconsistent(path)),
            };
        }
    }
    Ok(root)
}

/// Takes members out of one JSON object, naming them by their full dotted path.
struct Reader {
    map: Map<String, Value>,
    prefix: String,
    /// JSON (typed scalars) rather than dotted text (string scalars).
    typed: bool,
}

impl Reader {
    fn new(map: Map<String, Value>, prefix: &str, typed: bool) -> Reader {
        Reader {
            map,
            prefix: prefix.to_owned(),
            typed,
        }
    }

    fn path(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn string(&mut self, key: &str) -> Result<Option<String>> {
        match self.map.remove(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.wrong_type(key, "string")),
        }
    }

    fn required(&mut self, key: &str) -> Result<String> {
        self.string(key)?
            .ok_or_else(|| Error::Missing(self.path(key)))
    }

    fn wrong_type(&self, key: &str, expected: &'static str) -> Error {
        Error::Type {
            key: self.path(key),
            expected,
        }
    }

    fn flag(&mut self, key: &str) -> Result<Option<bool>> {
        match self.map.remove(key) {
            None => Ok(None),
            Some(Value::Bool(b)) if self.typed => Ok(Some(b)),
            Some(Value::String(s)) if !self.typed => qemu_opts::parse_bool(&s)
                .map(Some)
                .ok_or_else(|| Error::NotBool(self.path(key))),
            Some(_) => Err(self.wrong_type(key, "boolean")),
        }
    }

    /// An enumeration member: `None` when absent, else the index in `allowed`.
    fn choice(&mut self, key: &str, allowed: &[&str]) -> Result<Option<usize>> {
        let Some(value) = self.string(key)? else {
            return Ok(None);
        };
        allowed
            .iter()
            .position(|a| *a == value)
            .map(Some)
            .ok_or_else(|| Error::BadValue {
                key: self.path(key),
                value,
            })
    }

    /// A nested object (`cache`), or `None`.
    fn object(&mut self, key: &str) -> Result<Option<Reader>> {
        match self.map.remove(key) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(Reader::new(
                m,
                &self.path(&format!("{key}.")),
                self.typed,
            ))),
            Some(_) => Err(self.wrong_type(key, "object")),
        }
    }

    /// Refuses what nobody took (QEMU's "Parameter 'x' is unexpected").
    fn finish(self) -> Result<()> {
        match self.map.keys().next() {
            Some(k) => Err(Error::Unexpected(format!("{}{k}", self.prefix))),
            None => Ok(()),
        }
    }
}

/// QEMU's `id_wellformed`: a letter, then letters, digits, `-`, `.` or `_`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// The drivers this crate implements, in QEMU's spelling.
const DRIVERS: &[&str] = &["file", "raw"];

fn read(mut r: Reader) -> Result<BlockdevOptions> {
    // QEMU checks the union's discriminator first.
    let driver = r.required("driver")?;
    if !DRIVERS.contains(&driver.as_str()) {
        return Err(Error::BadValue {
            key: r.path("driver"),
            value: driver,
        });
    }
    let node_name = r.string("node-name")?;
    if let Some(name) = &node_name {
        if !valid_name(name) {
            return Err(Error::InvalidNodeName(name.clone()));
        }
    }
    let read_only = r.flag("read-only")?.unwrap_or(false);
    let discard = r.choice("discard", &["ignore", "unmap"])? == Some(1);
    if r.choice("detect-zeroes", &["off", "on", "unmap"])?
        .is_some_and(|i| i != 0)
    {
        return Err(Error::Unsupported(format!(
            "{}detect-zeroes: only 'off' is supported",
            r.prefix
        )));
    }
    let mut cache = Cache::default();
    if let Some(mut c) = r.object("cache")? {
        cache.direct = c.flag("direct")?.unwrap_or(false);
        cache.no_flush = c.flag("no-flush")?.unwrap_or(false);
        c.finish()?;
    }
    let driver = match driver.as_str() {
        "file" => {
            let filename = PathBuf::from(r.required("filename")?);
            match r.choice("aio", &["threads", "native", "io_uring"])? {
                None | Some(2) => {}
                Some(i) => {
                    let name = ["threads", "native"][i];
                    return Err(Error::Unsupported(format!(
                        "{}aio={name} is not supported: block I/O always uses io_uring",
                        r.prefix
                    )));
                }
            }
            Driver::File { filename }
        }
        _ => {
            let file = match r.map.remove("file") {
                None => return Err(Error::Missing(r.path("file"))),
                Some(Value::String(name)) => Child::Name(name),
                Some(Value::Object(m)) => {
                    let child = read(Reader::new(m, &r.path("file."), r.typed))?;
                    Child::Inline(Box::new(child))
                }
                Some(_) => return Err(r.wrong_type("file", "string")),
            };
            Driver::Raw { file }
        }
    };
    r.finish()?;
    Ok(BlockdevOptions {
        node_name,
        read_only,
        discard,
        cache,
        driver,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(text: &str) -> Result<BlockdevOptions> {
        BlockdevOptions::parse("-blockdev", text)
    }

    fn err(text: &str) -> String {
        kv(text).unwrap_err().to_string()
    }

    #[test]
    fn dotted_and_json_forms_agree() {
        let dotted = kv("driver=raw,node-name=d0,read-only=on,file.driver=file,\
                         file.filename=/img,,x,file.cache.direct=on,file.aio=io_uring,\
                         file.discard=unmap")
        .unwrap();
        let json = kv(r#"{"driver":"raw","node-name":"d0","read-only":true,
                          "file":{"driver":"file","filename":"/img,x",
                                  "cache":{"direct":true},"aio":"io_uring",
                                  "discard":"unmap"}}"#)
        .unwrap();
        assert_eq!(dotted, json);
        assert!(dotted.read_only);
        let Driver::Raw {
            file: Child::Inline(child),
        } = &dotted.driver
        else {
            panic!("an inline child: {dotted:?}");
        };
        assert_eq!(child.node_name, None);
        assert!(child.cache.direct && child.discard);
        assert_eq!(
            child.driver,
            Driver::File {
                filename: "/img,x".into()
            }
        );
        let by_name = kv("driver=raw,node-name=d0,file=f0").unwrap();
        assert_eq!(
            by_name.driver,
            Driver::Raw {
                file: Child::Name("f0".into())
            }
        );
    }

    #[test]
    fn hostile_input_gets_qemus_words() {
        for (text, want) in [
            (
                "driver=file,node-name=f0",
                "Parameter 'filename' is missing",
            ),
            ("node-name=x", "Parameter 'driver' is missing"),
            (
                "driver=file,node-name=f0,filename=a,bogus=1",
                "Parameter 'bogus' is unexpected",
            ),
            (
                "driver=qcow9,node-name=f0",
                "Parameter 'driver' does not accept value 'qcow9'",
            ),
            (
                "driver=file,node-name=f0,filename=a,discard=bogus",
                "Parameter 'discard' does not accept value 'bogus'",
            ),
            (
                "driver=file,node-name=f0,filename=a,aio=bogus",
                "Parameter 'aio' does not accept value 'bogus'",
            ),
            (
                "driver=raw,node-name=d0,file.driver=file,file.filename=a,read-only=maybe",
                "Parameter 'read-only' expects 'on' or 'off'",
            ),
            (
                "driver=raw,node-name=d0,file.driver=file",
                "Parameter 'file.filename' is missing",
            ),
            (
                "driver=raw,node-name=d0,file.driver=file,file.filename=a,file.x=1",
                "Parameter 'file.x' is unexpected",
            ),
            (
                "driver=raw,node-name=d0,file=f0,file.driver=file",
                "Parameters 'file.*' used inconsistently",
            ),
            (
                "driver=file,node-name=1bad,filename=a",
                "Invalid node-name: '1bad'",
            ),
            (
                "driver=file,node-name=f0,filename=a,driver=raw",
                "parameter 'driver' given twice",
            ),
            ("driver=raw,node-name=d0", "Parameter 'file' is missing"),
            (
                "driver=file,node-name=f0,filename=a,aio=threads",
                "aio=threads is not supported",
            ),
            (
                "driver=file,node-name=f0,filename=a,cache.direct=on,cache.x=1",
                "Parameter 'cache.x' is unexpected",
            ),
            (
                "driver=file,node-name=f0,filename=a,.x=1",
                "Invalid parameter '.x'",
            ),
            (r#"{"driver":"file","#, "JSON parse error"),
            ("[1]", "Parameter 'driver' does not accept value '[1]'"),
            (
                "driver",
                "Parameter 'driver' does not accept value 'driver'",
            ),
            (
                "{\"driver\":1}",
                "Invalid parameter type for 'driver', expected: string",
            ),
            (
                r#"{"driver":"raw","node-name":"d0","file":{"driver":"file","filename":"a.img"},"read-only":"on"}"#,
                "Invalid parameter type for 'read-only', expected: boolean",
            ),
            (
                r#"{"driver":"raw","node-name":"d0","file":5}"#,
                "Invalid parameter type for 'file', expected: string",
            ),
            (
                r#"{"driver":"file","node-name":"f","filename":"a","cache":true}"#,
                "Invalid parameter type for 'cache', expected: object",
            ),
        ] {
            assert!(
                err(text).contains(want),
                "{text}: {} (want {want})",
                err(text)
            );
        }
    }

    #[test]
    fn names_are_identifiers() {
        for good in ["a", "disk0", "a-b.c_d"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "0a", "#block1", "a b", "é"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
