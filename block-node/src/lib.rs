//! Block nodes, written once for the VMM and the storage daemon.
//!
//! The concept: QEMU's block graph, cut to what we run. A *node* is an opened image
//! (`driver=file`) or the raw format over another node (`driver=raw`), named by its
//! `node-name`; a *drive* (`-drive if=none,id=X`) is a named backend over anonymous
//! nodes. Devices and exports take a drive id or a node name and get a
//! [`block_dma::Drive`] to run on. The pieces:
//!
//! - [`BlockdevOptions`]: `-blockdev`/`--blockdev`/`blockdev-add` in dotted
//!   `key=value` form (`driver=raw,file.driver=file,file.filename=..`) and in JSON
//!   (`{"driver":"raw","file":{"driver":"file","filename":..}}`), libvirt's syntax;
//! - [`drive::parse`] and [`DriveOptions`]: `-drive` with QEMU's legacy placement;
//! - [`NodeRegistry`]: nodes by name, drives by id, reference counts; [`Claim`]s;
//! - [`qmp::register`]: `query-block`, `query-named-block-nodes`, `blockdev-add`,
//!   `blockdev-del` on a [`::qmp::Commands`] table;
//! - [`shutdown`]: QEMU's exit for drives on iothreads (drain, then flush, with a
//!   deadline).
//!
//! The invariant: a node in use (by a device, an export, a drive, or a parent node)
//! cannot be deleted, and every refusal uses QEMU's words. Parsers take hostile text
//! (a QMP client's, a command line's): errors, never panics ([`fuzz_parse`]).
//!
//! ```
//! use block_node::{AttachOptions, BlockdevOptions, NodeRegistry};
//!
//! let img = tempfile::NamedTempFile::new()?;
//! img.as_file().set_len(1 << 20)?;
//! let nodes = NodeRegistry::new();
//! let text = format!("driver=raw,node-name=disk0,file.driver=file,file.filename={}",
//!                    img.path().display());
//! nodes.add(&BlockdevOptions::parse("-blockdev", &text)?)?;
//! let claim = nodes.attach("disk0", AttachOptions::default())?;
//! assert_eq!(claim.drive().backend().info().size, 1 << 20);
//! assert_eq!(nodes.del("disk0").unwrap_err().to_string(), "Node disk0 is in use");
//! drop(claim);
//! nodes.del("disk0")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! See `DESIGN.md` for the model and where it departs from QEMU.
#![deny(missing_docs)]

pub mod drive;
mod error;
mod fuzz;
mod options;
pub mod qmp;
mod registry;
pub mod shutdown;
mod view;

pub use drive::{DriveOptions, DriveSettings};
pub use error::{Error, Result};
pub use fuzz::fuzz_parse;
pub use options::{BlockdevOptions, Cache, Child, Driver, valid_name};
pub use registry::{AttachOptions, Claim, NodeRegistry, ResizeListener};
pub use view::View;

/// The README's example, run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
