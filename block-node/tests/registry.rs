//! The node registry as the VMM and the storage daemon use it: `-drive` drives,
//! `-blockdev` nodes, devices attaching to either, and what `query-block` shows.

use block_node::{AttachOptions, BlockdevOptions, Error, NodeRegistry, drive};

fn image() -> tempfile::NamedTempFile {
    let img = tempfile::NamedTempFile::new().unwrap();
    img.as_file().set_len(1 << 20).unwrap();
    img
}

fn blockdev(nodes: &NodeRegistry, text: &str) -> Result<String, Error> {
    nodes.add(&BlockdevOptions::parse("-blockdev", text)?)
}

#[test]
fn a_drive_is_a_named_backend_over_anonymous_nodes() {
    let img = image();
    let nodes = NodeRegistry::new();
    let arg = format!(
        "file={},if=none,id=d0,cache=none,werror=stop",
        img.path().display()
    );
    let d = drive::parse("-drive", &arg, &[]).unwrap();
    nodes.add_drive(&d, "d0").unwrap();
    assert_eq!(
        nodes.add_drive(&d, "d0"),
        Err(Error::DuplicateDrive("d0".into()))
    );
    assert_eq!(nodes.node_names(), ["#block001", "#block002"]);
    assert_eq!(nodes.unused_drives(), ["d0"]);
    // A node may not take the drive's name, nor a drive a node's.
    let text = format!("driver=file,node-name=d0,filename={}", img.path().display());
    assert_eq!(
        blockdev(&nodes, &text).unwrap_err().to_string(),
        "node-name=d0 is conflicting with a device id"
    );
    blockdev(&nodes, &text.replace("d0", "n0")).unwrap();
    assert_eq!(
        nodes.add_drive(&d, "n0").unwrap_err().to_string(),
        "Device name 'n0' conflicts with an existing node name"
    );

    let how = AttachOptions {
        qdev: Some("/machine/peripheral/vblk0/virtio-backend".into()),
        ..Default::default()
    };
    let claim = nodes.attach("d0", how.clone()).unwrap();
    assert_eq!(claim.drive().policy().werror, block_dma::ErrorAction::Stop);
    assert!(
        claim.drive().backend().info().direct,
        "cache=none is O_DIRECT"
    );
    assert_eq!(
        nodes.attach("d0", how.clone()).unwrap_err().to_string(),
        "Drive 'd0' is already in use by another device"
    );
    let q = nodes.query_block();
    assert_eq!(q[0]["device"], "d0");
    assert_eq!(q[0]["qdev"], "/machine/peripheral/vblk0/virtio-backend");
    assert_eq!(q[0]["io-status"], "ok");
    assert_eq!(q[0]["inserted"]["node-name"], "#block001");
    assert_eq!(
        nodes.del("#block001"),
        Err(Error::NodeInUse("#block001".into()))
    );
    // QEMU deletes a -drive with its device; a -blockdev node stays.
    drop(claim);
    assert_eq!(nodes.node_names(), ["n0"]);
    assert_eq!(nodes.query_block(), serde_json::json!([]));
    let a = nodes.attach("n0", how.clone()).unwrap();
    assert_eq!(nodes.query_block()[0]["device"], "");
    drop(a);
    nodes.attach("n0", how).unwrap();
    assert_eq!(
        nodes.node_names(),
        ["n0"],
        "a node survives its device and can be used again"
    );
    assert_eq!(
        nodes
            .attach("nope", AttachOptions::default())
            .unwrap_err()
            .to_string(),
        "Cannot find device='nope' nor node-name='nope'"
    );
}

#[test]
fn read_only_and_discard_views_of_one_image() {
    let img = image();
    let nodes = NodeRegistry::new();
    let p = img.path().display();
    blockdev(
        &nodes,
        &format!("driver=file,node-name=f0,filename={p},discard=unmap"),
    )
    .unwrap();
    blockdev(&nodes, "driver=raw,node-name=d0,file=f0,discard=unmap").unwrap();
    blockdev(&nodes, "driver=raw,node-name=ro,file=f0,read-only=on").unwrap();
    let rw = nodes.attach("d0", AttachOptions::default()).unwrap();
    assert!(!rw.read_only() && rw.drive().backend().info().discard);
    let export = nodes
        .attach(
            "d0",
            AttachOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(export.read_only() && export.drive().backend().info().read_only);
    let ro = nodes.attach("ro", AttachOptions::default()).unwrap();
    assert!(ro.read_only() && !ro.drive().backend().info().discard);
    let q = nodes.query_named_block_nodes();
    assert_eq!(q[0]["node-name"], "ro");
    assert_eq!(q[0]["ro"], true);
}

#[test]
fn a_refused_add_leaves_nothing_behind() {
    let img = image();
    let nodes = NodeRegistry::new();
    let p = img.path().display();
    blockdev(&nodes, &format!("driver=file,node-name=f0,filename={p}")).unwrap();
    // The root's name is taken: its inline child is not opened either.
    let text = format!("driver=raw,node-name=f0,file.driver=file,file.filename={p}");
    assert_eq!(
        blockdev(&nodes, &text),
        Err(Error::DuplicateNode("f0".into()))
    );
    // The inline child's image is missing.
    let text = "driver=raw,node-name=d1,file.driver=file,file.filename=/nonexistent/x";
    assert_eq!(
        blockdev(&nodes, text).unwrap_err().to_string(),
        "Could not open '/nonexistent/x': No such file or directory"
    );
    assert_eq!(nodes.node_names(), ["f0"]);
}
