//! `block_resize` through a monitor's command table, as a client calls it: the replies
//! and refusals are qemu-storage-daemon 10's (checked by hand: a daemon with
//! `--blockdev driver=file,node-name=f0,...`, `driver=raw,node-name=d0,file=f0` and a
//! read-only `ro`, and the same requests), and the users of the node hear of it.

use std::sync::{Arc, Mutex};

use block_node::{AttachOptions, NodeRegistry};
use qmp::{Commands, QmpError};
use serde_json::{Value, json};

fn call(c: &Commands, name: &str, args: Value) -> Result<Value, QmpError> {
    let Value::Object(map) = args else {
        panic!("arguments are an object")
    };
    c.call(name, &map)
}

fn err(c: &Commands, args: Value) -> String {
    let e = call(c, "block_resize", args).unwrap_err();
    assert_eq!(e.class, qmp::ErrorClass::GenericError, "{e:?}");
    e.desc
}

fn image(len: u64) -> tempfile::NamedTempFile {
    let img = tempfile::NamedTempFile::new().unwrap();
    img.as_file().set_len(len).unwrap();
    img
}

/// A registry with `f0` (file), `d0` (raw over f0) and `ro` (a read-only file).
fn daemon(a: &tempfile::NamedTempFile, b: &tempfile::NamedTempFile) -> (NodeRegistry, Commands) {
    let nodes = NodeRegistry::new();
    let c = Commands::new();
    block_node::qmp::register(&c, &nodes).unwrap();
    let add = |args: Value| call(&c, "blockdev-add", args).unwrap();
    add(json!({"driver": "file", "node-name": "f0", "filename": a.path()}));
    add(json!({"driver": "raw", "node-name": "d0", "file": "f0"}));
    add(json!({"driver": "file", "node-name": "ro", "filename": b.path(), "read-only": true}));
    (nodes, c)
}

fn virtual_size(c: &Commands, node: &str) -> u64 {
    let list = call(c, "query-named-block-nodes", json!({})).unwrap();
    let n = list
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node-name"] == node)
        .unwrap();
    n["image"]["virtual-size"].as_u64().unwrap()
}

#[test]
fn block_resize_errors_are_qemus() {
    let (a, b) = (image(1 << 20), image(1 << 20));
    let (_nodes, c) = daemon(&a, &b);
    assert_eq!(
        err(&c, json!({"size": 2 << 20})),
        "Cannot find device='' nor node-name=''"
    );
    assert_eq!(
        err(&c, json!({"node-name": "nope", "size": 2 << 20})),
        "Cannot find device='' nor node-name='nope'"
    );
    assert_eq!(
        err(&c, json!({"device": "nope", "size": 2 << 20})),
        "Cannot find device='nope' nor node-name=''"
    );
    assert_eq!(
        err(&c, json!({"node-name": "d0", "size": -512})),
        "Parameter 'size' expects a >0 size"
    );
    assert_eq!(
        err(&c, json!({"node-name": "ro", "size": 2 << 20})),
        "Image is read-only"
    );
    assert_eq!(
        err(&c, json!({"node-name": "d0"})),
        "Parameter 'size' is missing"
    );
    assert_eq!(
        err(&c, json!({"node-name": "d0", "size": "12"})),
        "Invalid parameter type for 'size', expected: integer"
    );
    assert_eq!(
        err(&c, json!({"node-name": "d0", "size": 1 << 20, "bogus": 1})),
        "Parameter 'bogus' is unexpected"
    );
    // Nothing changed.
    assert_eq!(std::fs::metadata(a.path()).unwrap().len(), 1 << 20);
    assert_eq!(std::fs::metadata(b.path()).unwrap().len(), 1 << 20);
}

#[test]
fn block_resize_changes_the_file_and_what_queries_say() {
    let (a, b) = (image(1 << 20), image(1 << 20));
    let (nodes, c) = daemon(&a, &b);
    assert_eq!(
        call(
            &c,
            "block_resize",
            json!({"node-name": "d0", "size": 2 << 20})
        )
        .unwrap(),
        json!({})
    );
    assert_eq!(std::fs::metadata(a.path()).unwrap().len(), 2 << 20);
    assert_eq!(virtual_size(&c, "d0"), 2 << 20);
    assert_eq!(
        virtual_size(&c, "f0"),
        2 << 20,
        "the child shares the image"
    );
    // An unaligned size is accepted, as QEMU accepts it (the file gets it exactly).
    call(&c, "block_resize", json!({"node-name": "f0", "size": 1000})).unwrap();
    assert_eq!(std::fs::metadata(a.path()).unwrap().len(), 1000);
    // Queries report whole sectors, rounded up: qemu-storage-daemon 10 says 1024 for
    // both nodes here (and for 513).
    assert_eq!(virtual_size(&c, "d0"), 1024);
    assert_eq!(virtual_size(&c, "f0"), 1024);
    call(&c, "block_resize", json!({"node-name": "d0", "size": 513})).unwrap();
    assert_eq!(virtual_size(&c, "d0"), 1024);
    assert_eq!(std::fs::metadata(a.path()).unwrap().len(), 513);
    // query-block says the same for a device's backend.
    let _dev = nodes
        .attach(
            "d0",
            AttachOptions {
                qdev: Some("/machine/peripheral/disk0".into()),
                ..AttachOptions::default()
            },
        )
        .unwrap();
    let blocks = call(&c, "query-block", json!({})).unwrap();
    assert_eq!(blocks[0]["inserted"]["image"]["virtual-size"], 1024);
    // Both device and node-name: the device is looked up first, then the node.
    call(
        &c,
        "block_resize",
        json!({"device": "d0", "node-name": "d0", "size": 1 << 20}),
    )
    .unwrap();
    assert_eq!(std::fs::metadata(a.path()).unwrap().len(), 1 << 20);
}

#[test]
fn the_users_of_a_node_hear_of_its_resize_until_they_let_go() {
    let (a, b) = (image(1 << 20), image(1 << 20));
    let (nodes, c) = daemon(&a, &b);
    let heard: Arc<Mutex<Vec<(&str, u64)>>> = Arc::default();
    let on_d0 = nodes.attach("d0", AttachOptions::default()).unwrap();
    let h = heard.clone();
    on_d0.on_resize(move |size| h.lock().unwrap().push(("d0", size)));
    let on_ro = nodes.attach("ro", AttachOptions::default()).unwrap();
    let h = heard.clone();
    on_ro.on_resize(move |size| h.lock().unwrap().push(("ro", size)));

    // A resize of the child is a resize of the image under d0.
    nodes.resize(None, Some("f0"), 3 << 20).unwrap();
    assert_eq!(*heard.lock().unwrap(), [("d0", 3 << 20)]);
    assert_eq!(on_d0.drive().backend().size(), 3 << 20);
    // A refused resize tells nobody.
    nodes.resize(None, Some("ro"), 3 << 20).unwrap_err();
    assert_eq!(heard.lock().unwrap().len(), 1);

    drop(on_d0);
    call(
        &c,
        "block_resize",
        json!({"node-name": "d0", "size": 1 << 20}),
    )
    .unwrap();
    assert_eq!(
        heard.lock().unwrap().len(),
        1,
        "a released claim hears nothing"
    );
    drop(on_ro);
}

#[test]
fn a_read_only_user_cannot_resize_through_its_view() {
    let (a, b) = (image(1 << 20), image(1 << 20));
    let (nodes, _c) = daemon(&a, &b);
    let how = AttachOptions {
        read_only: true,
        ..AttachOptions::default()
    };
    let claim = nodes.attach("d0", how).unwrap();
    assert_eq!(
        claim.drive().backend().resize(2 << 20),
        Err(block_dma::Errno::EROFS)
    );
    // The node itself is writable: the monitor may resize it, and the view follows.
    nodes.resize(None, Some("d0"), 2 << 20).unwrap();
    assert_eq!(claim.drive().backend().size(), 2 << 20);
}
