//! Any UTF-8 string through `-blockdev` (dotted and JSON) and `-drive`
//! (`block_node::fuzz_parse`: values or errors, never a panic), and these invariants:
//! - the two forms agree: options read from either form, written back as dotted text
//!   and as JSON, read back as the same options from both (QEMU's keyval and
//!   QMP `blockdev-add` are two spellings of one `BlockdevOptions`);
//! - `parse` picks the form as QEMU does: text not starting with `{` reads as dotted;
//! - errors are the typed `block_node::Error` with a message (QEMU's words).
#![no_main]

use block_node::{BlockdevOptions, Child, Driver};
use libfuzzer_sys::fuzz_target;
use qemu_opts::Opts;
use serde_json::{Map, Value, json};

/// `o` as QMP `blockdev-add` arguments (typed scalars, nested objects).
fn to_json(o: &BlockdevOptions) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("driver".into(), json!(o.driver.name()));
    if let Some(name) = &o.node_name {
        m.insert("node-name".into(), json!(name));
    }
    m.insert("read-only".into(), json!(o.read_only));
    let discard = if o.discard { "unmap" } else { "ignore" };
    m.insert("discard".into(), json!(discard));
    m.insert(
        "cache".into(),
        json!({"direct": o.cache.direct, "no-flush": o.cache.no_flush}),
    );
    match &o.driver {
        Driver::File { filename } => {
            let name = filename.to_str().expect("read from a string");
            m.insert("filename".into(), json!(name));
        }
        Driver::Raw {
            file: Child::Name(n),
        } => {
            m.insert("file".into(), json!(n));
        }
        Driver::Raw {
            file: Child::Inline(c),
        } => {
            m.insert("file".into(), Value::Object(to_json(c)));
        }
    }
    m
}

/// `o` as dotted `key=value` pairs under `prefix` (every scalar a string).
fn to_pairs(o: &BlockdevOptions, prefix: &str, out: &mut Vec<(String, String)>) {
    let mut put = |k: &str, v: &str| out.push((format!("{prefix}{k}"), v.to_owned()));
    put("driver", o.driver.name());
    if let Some(name) = &o.node_name {
        put("node-name", name);
    }
    let on = |b: bool| if b { "on" } else { "off" };
    put("read-only", on(o.read_only));
    put("discard", if o.discard { "unmap" } else { "ignore" });
    put("cache.direct", on(o.cache.direct));
    put("cache.no-flush", on(o.cache.no_flush));
    match &o.driver {
        Driver::File { filename } => put("filename", filename.to_str().expect("a string")),
        Driver::Raw {
            file: Child::Name(n),
        } => put("file", n),
        Driver::Raw {
            file: Child::Inline(c),
        } => to_pairs(c, &format!("{prefix}file."), out),
    }
}

/// Both spellings of `o` read back as `o`.
fn round_trip(text: &str, o: &BlockdevOptions) {
    let from_json = BlockdevOptions::from_json(&to_json(o));
    assert_eq!(from_json.as_ref(), Ok(o), "{text:?} as JSON");
    let mut pairs = Vec::new();
    to_pairs(o, "", &mut pairs);
    let dotted = Opts::from_pairs("-blockdev", pairs).to_string();
    let from_dotted = BlockdevOptions::parse("-blockdev", &dotted);
    assert_eq!(from_dotted.as_ref(), Ok(o), "{text:?} as {dotted:?}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    block_node::fuzz_parse(text);
    let parsed = BlockdevOptions::parse("-blockdev", text);
    if !text.trim_start().starts_with('{') {
        let dotted = BlockdevOptions::from_keyval("-blockdev", text);
        assert_eq!(parsed, dotted, "{text:?}");
    }
    match &parsed {
        Ok(o) => round_trip(text, o),
        Err(e) => assert!(!e.to_string().is_empty(), "{text:?}: {e:?}"),
    }
    if let Ok(Value::Object(map)) = serde_json::from_str(text) {
        if let Ok(o) = BlockdevOptions::from_json(&map) {
            round_trip(text, &o);
        }
    }
});
