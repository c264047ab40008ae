//! The crate's error type.

use std::path::PathBuf;

/// Errors building or running the machine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `/dev/kvm` is missing or unusable.
    #[error("cannot use KVM (/dev/kvm): {0}")]
    NoKvm(kvm_ioctls::Error),
    /// A KVM ioctl failed.
    #[error("{0} failed: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    /// KVM lacks something we need.
    #[error("KVM lacks {0}")]
    MissingCap(&'static str),
    /// Guest RAM.
    #[error("guest RAM: {0}")]
    Memory(#[from] ram_block::Error),
    /// A firmware image of a size the machine cannot map.
    #[error("BIOS: image of {size} bytes: must be a non-empty multiple of 4 KiB, at most 16 MiB")]
    BiosSize {
        /// The image's size in bytes.
        size: u64,
    },
    /// The firmware image could not be written into its ROM.
    #[error("BIOS: {0}")]
    Rom(#[source] vm_memory::GuestMemoryError),
    /// No RAM block at guest address 0 for the BIOS shadow area.
    #[error("BIOS: no RAM at guest address 0")]
    NoLowRam,
    /// Direct kernel boot: `what` (the kernel, the initrd, the command line, a table)
    /// could not be loaded.
    #[error("kernel boot: {what}: {source}")]
    Boot {
        /// What was being loaded.
        what: String,
        /// Why it failed.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A file we were told to use.
    #[error("{path}: {error}")]
    File {
        /// Which.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A memory slot over a range its block does not have.
    #[error("memory slot: {size:#x} bytes at offset {offset:#x} of {block} lie outside the block")]
    SlotRange {
        /// The block's name.
        block: String,
        /// The offset into the block.
        offset: u64,
        /// The slot's size.
        size: u64,
    },
    /// Two devices' port ranges collide (a debug-exit port over another device).
    #[error("device setup: {0}")]
    Ports(#[from] io_bus::Overlap),
    /// A device could not be plugged into its bus.
    #[error("device setup: {0}")]
    Plug(#[from] qdev_bus::Error),
    /// An ISA device could not be plugged.
    #[error("device setup: {0}")]
    Isa(#[from] pc_platform::isa::Error),
    /// A firmware configuration file was refused.
    #[error("device setup: {0}")]
    FwCfg(#[from] pc_platform::fw_cfg::BadFileName),
    /// A device's host resource (an eventfd, a file, the console) failed.
    #[error("device setup: {what}: {source}")]
    Io {
        /// What was being set up.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The PIIX3 function came up without its ISA bus.
    #[error("device setup: the PIIX3 has no ISA bus")]
    NoIsaBus,
    /// A test-hook environment variable that does not name a port.
    #[error("device setup: {var}={value}: not a port number")]
    BadPort {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

impl Error {
    /// [`Error::Io`] for `what`.
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
