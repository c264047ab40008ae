//! The QMP block commands through a monitor's command table, as a client calls them:
//! the replies and the refusals are qemu-storage-daemon 10's (checked by hand with
//! `qemu-storage-daemon --chardev socket,... --monitor chardev=..` and the same
//! requests).

use block_node::{AttachOptions, NodeRegistry};
use qmp::{Commands, QmpError};
use serde_json::{Value, json};

fn call(c: &Commands, name: &str, args: Value) -> Result<Value, QmpError> {
    let Value::Object(map) = args else {
        panic!("arguments are an object")
    };
    c.call(name, &map)
}

fn err(c: &Commands, name: &str, args: Value) -> String {
    let e = call(c, name, args).unwrap_err();
    assert_eq!(e.class, qmp::ErrorClass::GenericError, "{e:?}");
    e.desc
}

fn names(c: &Commands) -> Vec<String> {
    let list = call(c, "query-named-block-nodes", json!({})).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|n| n["node-name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn blockdev_add_del_and_query_named_block_nodes() {
    let img = tempfile::NamedTempFile::new().unwrap();
    img.as_file().set_len(1 << 20).unwrap();
    let path = img.path().to_str().unwrap();
    let nodes = NodeRegistry::new();
    let c = Commands::new();
    block_node::qmp::register(&c, &nodes).unwrap();

    let add = |args: Value| call(&c, "blockdev-add", args);
    assert_eq!(
        add(json!({"driver": "file", "node-name": "f0", "filename": path})).unwrap(),
        json!({})
    );
    add(json!({"driver": "raw", "node-name": "d0", "file": "f0"})).unwrap();
    add(json!({"driver": "raw", "node-name": "d5",
               "file": {"driver": "file", "filename": path}}))
    .unwrap();
    assert_eq!(
        names(&c),
        ["d5", "#block001", "d0", "f0"],
        "newest first, as QEMU"
    );
    let list = call(&c, "query-named-block-nodes", json!({"flat": true})).unwrap();
    let d0 = &list[2];
    assert_eq!(d0["drv"], "raw");
    assert_eq!(d0["ro"], false);
    assert_eq!(d0["image"]["virtual-size"], 1 << 20);
    assert_eq!(d0["file"], path);
    assert_eq!(list[3]["image"]["format-specific"]["type"], "file");

    for (args, want) in [
        (
            json!({"driver": "raw", "node-name": "d0", "file": "f0"}),
            "Duplicate nodes with node-name='d0'".to_owned(),
        ),
        (
            json!({"driver": "raw", "node-name": "d1", "file": "nope"}),
            "Cannot find device='nope' nor node-name='nope'".to_owned(),
        ),
        (
            json!({"driver": "file", "node-name": "f1", "filename": "/nonexist/x"}),
            "Could not open '/nonexist/x': No such file or directory".to_owned(),
        ),
        (
            json!({"driver": "file", "node-name": "f2"}),
            "Parameter 'filename' is missing".to_owned(),
        ),
        (
            json!({"driver": "file", "node-name": "f3", "filename": path, "bogus": 1}),
            "Parameter 'bogus' is unexpected".to_owned(),
        ),
        (
            json!({"driver": "qcow9", "node-name": "f3"}),
            "Parameter 'driver' does not accept value 'qcow9'".to_owned(),
        ),
        (
            json!({"driver": "file", "filename": path}),
            "'node-name' must be specified for the root node".to_owned(),
        ),
        (
            json!({"driver": "file", "node-name": "1bad", "filename": path}),
            "Invalid node-name: '1bad'".to_owned(),
        ),
        (
            json!({"node-name": "x"}),
            "Parameter 'driver' is missing".to_owned(),
        ),
        (
            json!({"driver": "file", "node-name": "f5", "filename": path, "aio": "bogus"}),
            "Parameter 'aio' does not accept value 'bogus'".to_owned(),
        ),
    ] {
        assert_eq!(err(&c, "blockdev-add", args.clone()), want, "{args}");
    }
    assert_eq!(names(&c).len(), 4, "a refused blockdev-add adds nothing");

    // In use: by a parent node, then by an export (a claim).
    assert_eq!(
        err(&c, "blockdev-del", json!({"node-name": "f0"})),
        "Block device f0 is in use"
    );
    let export = nodes.attach("d0", AttachOptions::default()).unwrap();
    assert_eq!(
        err(&c, "blockdev-del", json!({"node-name": "d0"})),
        "Node d0 is in use"
    );
    assert_eq!(
        err(&c, "blockdev-del", json!({"node-name": "zz"})),
        "Failed to find node with node-name='zz'"
    );
    assert_eq!(
        err(&c, "blockdev-del", json!({})),
        "Parameter 'node-name' is missing"
    );
    assert_eq!(
        err(&c, "blockdev-del", json!({"node-name": "#block001"})),
        "Node #block001 is not owned by the monitor"
    );
    drop(export);
    call(&c, "blockdev-del", json!({"node-name": "d0"})).unwrap();
    call(&c, "blockdev-del", json!({"node-name": "f0"})).unwrap();
    // The inline child goes with its parent.
    call(&c, "blockdev-del", json!({"node-name": "d5"})).unwrap();
    assert!(names(&c).is_empty());
    assert_eq!(call(&c, "query-block", json!({})).unwrap(), json!([]));
}
