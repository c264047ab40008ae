//! `block_resize`: changes a node's image size and tells the node's users.
//!
//! A node tells whoever attached it: a [`Claim`] holder (a device model's owner, an
//! export) subscribes with [`Claim::on_resize`], so this crate never knows the devices.
//! The listeners run on the resizing thread after the registry's lock is released (a
//! listener may call the registry), in the order they subscribed, once per resize of
//! the image under their node (a `raw` node and its `file` child share the image: a
//! resize of either is seen by the users of both).

use std::sync::Arc;

use block_dma::Errno;

use super::{Claim, Inner, NodeRegistry, lock};
use crate::{Error, Result};

/// What a resize listener is handed: the image's new size in bytes.
pub type ResizeListener = Arc<dyn Fn(u64) + Send + Sync>;

impl Claim {
    /// Calls `listener` with the new size after each resize of this claim's image
    /// (`block_resize` on its node or a node over the same image), until the claim is
    /// dropped.
    pub fn on_resize(&self, listener: impl Fn(u64) + Send + Sync + 'static) {
        if let Some(inner) = self.registry.upgrade() {
            lock(&inner)
                .listeners
                .entry(self.backend)
                .or_default()
                .push(Arc::new(listener));
        }
    }
}

impl Inner {
    /// The listeners of every backend whose node shares `image` with node `name`.
    fn resize_listeners(&self, name: &str) -> Vec<ResizeListener> {
        let Some(image) = self.nodes.get(name).map(|n| &n.image) else {
            return Vec::new();
        };
        self.backends
            .iter()
            .filter(|(_, b)| {
                self.nodes
                    .get(&b.node)
                    .is_some_and(|n| Arc::ptr_eq(&n.image, image))
            })
            .filter_map(|(id, _)| self.listeners.get(id))
            .flatten()
            .cloned()
            .collect()
    }

    /// QEMU's `bdrv_lookup_bs`: a drive (BlockBackend) named `device` first, then a
    /// node named `node_name`.
    fn lookup(&self, device: Option<&str>, node_name: Option<&str>) -> Result<String> {
        if let Some(d) = device {
            let drive = self
                .backends
                .values()
                .find(|b| !b.name.is_empty() && b.name == d);
            if let Some(b) = drive {
                return Ok(b.node.clone());
            }
        }
        if let Some(n) = node_name.filter(|n| self.nodes.contains_key(*n)) {
            return Ok(n.to_owned());
        }
        Err(Error::NotFoundEither {
            device: device.unwrap_or_default().to_owned(),
            node_name: node_name.unwrap_or_default().to_owned(),
        })
    }
}

impl NodeRegistry {
    /// `block_resize`: sets the size of the image under drive `device` or node
    /// `node_name` to `size` bytes (any size: the file driver truncates the file to
    /// it; devices see whole sectors), then calls the users' [`Claim::on_resize`]
    /// listeners.
    ///
    /// # Errors
    ///
    /// QEMU's checks, in its order: [`Error::NotFoundEither`], [`Error::NegativeSize`],
    /// [`Error::ReadOnly`] (a read-only node or image), [`Error::Resize`] (the
    /// operating system's refusal).
    pub fn resize(&self, device: Option<&str>, node_name: Option<&str>, size: i64) -> Result<()> {
        let (image, name, size) = {
            let inner = self.lock();
            let name = inner.lookup(device, node_name)?;
            let size_ok = u64::try_from(size).map_err(|_| Error::NegativeSize)?;
            let node = &inner.nodes[&name];
            if node.read_only || node.image.info().read_only {
                return Err(Error::ReadOnly);
            }
            (node.image.clone(), name, size_ok)
        };
        // Outside the lock: a shrink drains the image's requests first, and this
        // thread's own requests complete through it meanwhile (their completions may
        // report errors through the registry).
        image.resize(size).map_err(resize_error)?;
        let listeners = self.lock().resize_listeners(&name);
        let now = image.size();
        tracing::debug!(size = now, "block_resize: {} listener(s)", listeners.len());
        for listener in listeners {
            listener(now);
        }
        Ok(())
    }
}

fn resize_error(e: Errno) -> Error {
    match e {
        Errno::EROFS => Error::ReadOnly,
        Errno::EOPNOTSUPP => Error::Resize("Image format driver does not support resize".into()),
        e => Error::Resize(format!("Could not resize file: {e}")),
    }
}
