//! The node registry: block nodes by node-name, drives (QEMU's named BlockBackends) by
//! id, and who uses what.
//!
//! QEMU's model, cut to the two drivers we have:
//! - a *node* is an opened `file` image or a `raw` node over a child node; nodes made
//!   by `-blockdev`/`blockdev-add` are owned by the monitor and deletable; inline
//!   children and `-drive`'s nodes are anonymous (`#block014`) and go with their owner;
//! - a *backend* is what a device or an export uses: a `-drive if=none,id=X` creates
//!   one named `X` over an anonymous `raw`+`file` pair; a device or export that names a
//!   node directly gets an anonymous one;
//! - a node with a user (a backend, or a parent node) cannot be deleted, and says why
//!   in QEMU's words.
//!
//! A [`Claim`] is one user's hold on a backend: it carries the [`Drive`] the device
//! runs on, and releasing it (drop) lets the node go again; a `-drive`'s backend is
//! then deleted with its nodes, as QEMU deletes a drive with its device.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use block_dma::{BlockBackend, Drive, ErrorPolicy, FileBackend, FileOptions};
use runstate::RunStateMachine;
use serde_json::{Value, json};

use crate::options::{BlockdevOptions, Child, Driver};
use crate::view::View;
use crate::{DriveOptions, Error, Result};

mod resize;
pub use resize::ResizeListener;

/// One block node.
struct Node {
    /// `file` or `raw`.
    driver: &'static str,
    /// The child (`raw`'s `file`).
    child: Option<String>,
    /// The child was defined inline: it goes with this node.
    owns_child: bool,
    /// Made by `-blockdev`/`blockdev-add` (only those can be deleted).
    monitor_owned: bool,
    /// The image below (shared by every node over it), opened once.
    image: Arc<dyn BlockBackend>,
    filename: PathBuf,
    /// This node's own `read-only` (the image may be writable below it).
    read_only: bool,
    /// Whether discards pass (every layer says `unmap`).
    discard: bool,
    /// `cache.direct` of the image.
    direct: bool,
    /// `cache.no-flush`.
    no_flush: bool,
    /// Nodes that use this one as their child.
    parents: usize,
    /// Backends on this node.
    users: usize,
    /// Creation order (listings are newest first, as QEMU's).
    serial: u64,
}

/// A BlockBackend: a drive (`-drive id=X`) or the anonymous one of a device or export
/// that names a node.
struct Backend {
    /// The drive id; empty for an anonymous backend.
    name: String,
    /// The root node.
    node: String,
    /// `werror`/`rerror` (a `-drive`'s; the default for a node).
    policy: ErrorPolicy,
    /// The device using it (its qdev path, for `query-block`), and its drive.
    attached: Option<(Option<String>, Drive)>,
    /// From `-drive`: deleted, with its nodes, when its user lets go.
    from_drive: bool,
}

#[derive(Default)]
struct Inner {
    nodes: BTreeMap<String, Node>,
    backends: BTreeMap<u64, Backend>,
    next_serial: u64,
    next_anonymous: u64,
    /// [`Claim::on_resize`] listeners by backend (removed with it).
    listeners: BTreeMap<u64, Vec<ResizeListener>>,
}

/// The registry (cheap to clone; clones share it). Used from the main thread (the
/// command line, the monitor); the [`Drive`]s it hands out run anywhere.
#[derive(Clone, Default)]
pub struct NodeRegistry {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for NodeRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeRegistry")
            .field("nodes", &self.node_names())
            .finish()
    }
}

/// Who attaches to a backend ([`NodeRegistry::attach`]).
#[derive(Clone, Debug, Default)]
pub struct AttachOptions {
    /// The name its I/O errors carry (`BLOCK_IO_ERROR`'s `device`); by default the
    /// drive id (empty for a node).
    pub device: Option<String>,
    /// The device's QOM path, for `query-block`'s `qdev` (none for an export).
    pub qdev: Option<String>,
    /// The user only reads (an export without `writable=on`).
    pub read_only: bool,
    /// The VM whose run state `werror=stop` stops.
    pub vm: Option<RunStateMachine>,
}

/// One user's hold on a backend; dropping it releases the node.
pub struct Claim {
    registry: Weak<Mutex<Inner>>,
    backend: u64,
    drive: Drive,
    node: String,
    device: String,
    read_only: bool,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim").field("node", &self.node).finish()
    }
}

impl Claim {
    /// The drive the device runs on.
    pub fn drive(&self) -> &Drive {
        &self.drive
    }

    /// The name the drive's I/O errors carry (`BLOCK_IO_ERROR`'s `device`): the drive
    /// id, empty for a node (as QEMU), or [`AttachOptions::device`].
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The root node's name.
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// Whether writes are refused (by the node or by the user's wish).
    pub fn read_only(&self) -> bool {
        self.read_only
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(inner) = self.registry.upgrade() {
            let mut inner = lock(&inner);
            inner.release(self.backend);
        }
    }
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // A panic while holding the lock leaves counts that are still consistent (every
    // update is a single step): keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    fn name_taken(&self, name: &str) -> Result<()> {
        if self.nodes.contains_key(name) {
            return Err(Error::DuplicateNode(name.to_owned()));
        }
        if self.backends.values().any(|b| b.name == name) {
            return Err(Error::NodeNameIsDrive(name.to_owned()));
        }
        Ok(())
    }

    fn anonymous(&mut self) -> String {
        self.next_anonymous += 1;
        format!("#block{:03}", self.next_anonymous)
    }

    /// Adds `options` (and its inline child); returns the node's name.
    fn add(&mut self, options: &BlockdevOptions, monitor_owned: bool) -> Result<String> {
        let name = match &options.node_name {
            Some(name) => {
                self.name_taken(name)?;
                name.clone()
            }
            None => self.anonymous(),
        };
        let mut node = match &options.driver {
            Driver::File { filename } => {
                let file = FileOptions::new(filename)
                    .read_only(options.read_only)
                    .direct(options.cache.direct);
                let image =
                    FileBackend::open(&file).map_err(|e| crate::error::open_error(filename, &e))?;
                Node {
                    driver: "file",
                    child: None,
                    owns_child: false,
                    monitor_owned,
                    image: Arc::new(image),
                    filename: filename.clone(),
                    read_only: options.read_only,
                    discard: options.discard,
                    direct: options.cache.direct,
                    no_flush: options.cache.no_flush,
                    parents: 0,
                    users: 0,
                    serial: 0,
                }
            }
            Driver::Raw { file } => {
                let (child, owns_child) = match file {
                    Child::Name(n) => {
                        if !self.nodes.contains_key(n) {
                            return Err(Error::NotFound(n.clone()));
                        }
                        (n.clone(), false)
                    }
                    Child::Inline(child) => (self.add(child, false)?, true),
                };
                let below = &self.nodes[&child];
                Node {
                    driver: "raw",
                    child: Some(child.clone()),
                    owns_child,
                    monitor_owned,
                    image: below.image.clone(),
                    filename: below.filename.clone(),
                    read_only: options.read_only || below.read_only,
                    discard: options.discard && below.discard,
                    direct: below.direct,
                    no_flush: below.no_flush,
                    parents: 0,
                    users: 0,
                    serial: 0,
                }
            }
        };
        if let Some(child) = &node.child {
            if let Some(c) = self.nodes.get_mut(child) {
                c.parents += 1;
            }
        }
        self.next_serial += 1;
        node.serial = self.next_serial;
        self.nodes.insert(name.clone(), node);
        Ok(name)
    }

    /// Removes `name` and the inline children it owns (no checks).
    fn remove(&mut self, name: &str) {
        let Some(node) = self.nodes.remove(name) else {
            return;
        };
        if let Some(child) = node.child {
            let orphan = match self.nodes.get_mut(&child) {
                Some(c) => {
                    c.parents -= 1;
                    node.owns_child && c.parents == 0 && c.users == 0
                }
                None => false,
            };
            if orphan {
                self.remove(&child);
            }
        }
    }

    fn release(&mut self, id: u64) {
        let Some(backend) = self.backends.get_mut(&id) else {
            return;
        };
        backend.attached = None;
        self.listeners.remove(&id);
        // Every backend ends with its user: an anonymous one always, a -drive's as
        // QEMU deletes a drive with its device.
        let Some(backend) = self.backends.remove(&id) else {
            return;
        };
        let Some(node) = self.nodes.get_mut(&backend.node) else {
            return;
        };
        node.users -= 1;
        // A -drive's nodes are anonymous (nobody else can name them): they go too.
        if backend.from_drive && node.users == 0 && node.parents == 0 && !node.monitor_owned {
            self.remove(&backend.node);
        }
    }

    fn node_json(&self, name: &str, n: &Node) -> Value {
        let size = virtual_size(n);
        let mut image = json!({
            "virtual-size": size,
            "filename": n.filename.display().to_string(),
            "format": n.driver,
            "dirty-flag": false,
        });
        if n.driver == "file" {
            image["format-specific"] = json!({"type": "file", "data": {}});
        }
        // QEMU's member order.
        json!({
            "iops_rd": 0, "detect_zeroes": "off", "active": true, "image": image,
            "iops_wr": 0, "ro": n.read_only, "node-name": name, "backing_file_depth": 0,
            "drv": n.driver, "iops": 0, "bps_wr": 0, "write_threshold": 0,
            "encrypted": false, "bps": 0, "bps_rd": 0,
            "cache": {"no-flush": n.no_flush, "direct": n.direct, "writeback": true},
            "file": n.filename.display().to_string(),
        })
    }
}

impl NodeRegistry {
    /// An empty registry.
    pub fn new() -> NodeRegistry {
        NodeRegistry::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// `-blockdev` / `blockdev-add`: opens the image (a `file` node) or stacks a `raw`
    /// node on its child; returns the node name.
    ///
    /// # Errors
    ///
    /// No `node-name` ([`Error::RootNodeName`]), a name taken, a child that does not
    /// exist, an image that cannot be opened. Nothing is added on error.
    pub fn add(&self, options: &BlockdevOptions) -> Result<String> {
        let name = options.node_name.as_ref().ok_or(Error::RootNodeName)?;
        let mut inner = self.lock();
        // The root's name first: an inline child is not opened for nothing.
        inner.name_taken(name)?;
        inner.add(options, true)
    }

    /// `-drive if=none|virtio,id=ID`: a drive named `id` over anonymous `raw` and
    /// `file` nodes, with the drive's error policy.
    ///
    /// # Errors
    ///
    /// The `-drive` checks ([`DriveOptions::check`]), an id taken by a drive
    /// ([`Error::DuplicateDrive`]) or by a node ([`Error::DriveNameIsNode`]), an image
    /// that cannot be opened.
    pub fn add_drive(&self, drive: &DriveOptions, id: &str) -> Result<()> {
        let settings = drive.check(id)?;
        let mut inner = self.lock();
        if inner.backends.values().any(|b| b.name == id) {
            return Err(Error::DuplicateDrive(id.to_owned()));
        }
        if inner.nodes.contains_key(id) {
            return Err(Error::DriveNameIsNode(id.to_owned()));
        }
        let file = BlockdevOptions {
            node_name: None,
            read_only: drive.readonly,
            discard: drive.discard,
            cache: crate::Cache {
                direct: settings.direct,
                no_flush: drive.cache.as_deref() == Some("unsafe"),
            },
            driver: Driver::File {
                filename: settings.file,
            },
        };
        let raw = BlockdevOptions {
            driver: Driver::Raw {
                file: Child::Inline(Box::new(file.clone())),
            },
            ..file
        };
        let node = inner.add(&raw, false).map_err(|e| match e {
            // The VMM's words for an image a -drive cannot open.
            Error::Open { path, reason } => {
                Error::Drive(format!("-drive id={id}: Could not open '{path}': {reason}"))
            }
            e => e,
        })?;
        if let Some(n) = inner.nodes.get_mut(&node) {
            n.users += 1;
        }
        let key = inner.next_serial;
        inner.next_serial += 1;
        inner.backends.insert(
            key,
            Backend {
                name: id.to_owned(),
                node,
                policy: settings.policy,
                attached: None,
                from_drive: true,
            },
        );
        Ok(())
    }

    /// A device or export takes `reference`: a drive id, or else a node name (an
    /// anonymous backend is made on it). Returns the claim that holds it.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] for neither; [`Error::DriveInUse`] for a drive another
    /// device has.
    pub fn attach(&self, reference: &str, how: AttachOptions) -> Result<Claim> {
        let mut inner = self.lock();
        let found = inner
            .backends
            .iter()
            .find(|(_, b)| !b.name.is_empty() && b.name == reference)
            .map(|(k, b)| (*k, b.attached.is_some()));
        let key = match found {
            Some((_, true)) => return Err(Error::DriveInUse(reference.to_owned())),
            Some((key, false)) => key,
            None if inner.nodes.contains_key(reference) => {
                let key = inner.next_serial;
                inner.next_serial += 1;
                inner.backends.insert(
                    key,
                    Backend {
                        name: String::new(),
                        node: reference.to_owned(),
                        policy: ErrorPolicy::default(),
                        attached: None,
                        from_drive: false,
                    },
                );
                if let Some(n) = inner.nodes.get_mut(reference) {
                    n.users += 1;
                }
                key
            }
            None => return Err(Error::NotFound(reference.to_owned())),
        };
        let backend = &inner.backends[&key];
        let (node_name, policy, drive_name) =
            (backend.node.clone(), backend.policy, backend.name.clone());
        let node = &inner.nodes[&node_name];
        let read_only = node.read_only || how.read_only;
        let view = View::wrap(node.image.clone(), read_only, node.discard);
        let device = how.device.unwrap_or(drive_name);
        let drive = Drive::new(device.clone(), node_name.clone(), view, policy, how.vm);
        if let Some(b) = inner.backends.get_mut(&key) {
            b.attached = Some((how.qdev, drive.clone()));
        }
        Ok(Claim {
            registry: Arc::downgrade(&self.inner),
            backend: key,
            drive,
            node: node_name,
            device,
            read_only,
        })
    }

    /// `blockdev-del`: removes a node the monitor made, if nothing uses it.
    ///
    /// # Errors
    ///
    /// QEMU's checks, in its order: [`Error::NoSuchNode`], [`Error::NodeInUse`] (a
    /// device, export or drive), [`Error::NotOwned`], [`Error::ChildInUse`] (a parent
    /// node).
    pub fn del(&self, name: &str) -> Result<()> {
        let mut inner = self.lock();
        let node = inner
            .nodes
            .get(name)
            .ok_or_else(|| Error::NoSuchNode(name.to_owned()))?;
        if node.users > 0 {
            return Err(Error::NodeInUse(name.to_owned()));
        }
        if !node.monitor_owned {
            return Err(Error::NotOwned(name.to_owned()));
        }
        if node.parents > 0 {
            return Err(Error::ChildInUse(name.to_owned()));
        }
        inner.remove(name);
        Ok(())
    }

    /// The node names, sorted.
    pub fn node_names(&self) -> Vec<String> {
        self.lock().nodes.keys().cloned().collect()
    }

    /// Whether `name` is a drive id or a node name.
    pub fn contains(&self, name: &str) -> bool {
        let inner = self.lock();
        inner.nodes.contains_key(name) || inner.backends.values().any(|b| b.name == name)
    }

    /// The drive ids nobody has attached to (a `-drive if=none` without device).
    pub fn unused_drives(&self) -> Vec<String> {
        let inner = self.lock();
        inner
            .backends
            .values()
            .filter(|b| b.from_drive && b.attached.is_none())
            .map(|b| b.name.clone())
            .collect()
    }

    /// `query-named-block-nodes`: every node, newest first, in QEMU's form.
    pub fn query_named_block_nodes(&self) -> Value {
        let inner = self.lock();
        let mut nodes: Vec<(&String, &Node)> = inner.nodes.iter().collect();
        nodes.sort_by_key(|(_, n)| std::cmp::Reverse(n.serial));
        Value::Array(
            nodes
                .iter()
                .map(|(name, n)| inner.node_json(name, n))
                .collect(),
        )
    }

    /// `query-block`: every drive and every device's backend, in creation order.
    pub fn query_block(&self) -> Value {
        let inner = self.lock();
        let list = inner
            .backends
            .values()
            .filter(|b| !b.name.is_empty() || b.attached.is_some())
            .filter_map(|b| {
                let n = inner.nodes.get(&b.node)?;
                let file = n.filename.display().to_string();
                let mut entry = json!({"device": b.name});
                if let Some((qdev, drive)) = &b.attached {
                    if let Some(qdev) = qdev {
                        entry["qdev"] = json!(qdev);
                    }
                    entry["locked"] = json!(false);
                    entry["removable"] = json!(false);
                    entry["type"] = json!("unknown");
                    entry["io-status"] = json!(drive.io_status().qmp_name());
                } else {
                    entry["locked"] = json!(false);
                    entry["removable"] = json!(false);
                    entry["type"] = json!("unknown");
                }
                entry["inserted"] = json!({
                    "file": file,
                    "node-name": b.node,
                    "ro": n.read_only,
                    "drv": n.driver,
                    "encrypted": false,
                    "detect_zeroes": "off",
                    "cache": {"writeback": true, "direct": n.direct, "no-flush": n.no_flush},
                    "image": {
                        "filename": file,
                        "format": n.driver,
                        "virtual-size": virtual_size(n),
                    },
                });
                Some(entry)
            })
            .collect();
        Value::Array(list)
    }
}

/// The size queries report: whole 512-byte sectors, rounded up, as QEMU reports
/// `bdrv_getlength` (qemu-storage-daemon 10 says 1024 for a file `block_resize`d to
/// 1000 bytes, while the file keeps 1000).
fn virtual_size(n: &Node) -> u64 {
    n.image.size().next_multiple_of(512)
}
