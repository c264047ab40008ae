//! The crate's one error type, worded as QEMU words the same failures.

/// What was wrong with a block option, a QMP block command or a node operation.
///
/// The messages are QEMU 10's (checked against `qemu-system-x86_64 -blockdev` and
/// `qemu-storage-daemon`'s QMP monitor), so the same input gets the same words. A
/// QMP client sees every one as a `GenericError` with this text, as QEMU sends them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The `key=value,...` string itself is malformed (qemu-opts' message).
    #[error("{0}")]
    Syntax(#[from] qemu_opts::Error),
    /// A `{...}` argument that is not JSON.
    #[error("JSON parse error, {0}")]
    Json(String),
    /// A required parameter is absent (`file.filename` for an inline child).
    #[error("Parameter '{0}' is missing")]
    Missing(String),
    /// A parameter the driver does not have.
    #[error("Parameter '{0}' is unexpected")]
    Unexpected(String),
    /// A value outside the parameter's enumeration.
    #[error("Parameter '{key}' does not accept value '{value}'")]
    BadValue {
        /// The parameter.
        key: String,
        /// The value given.
        value: String,
    },
    /// A JSON value of the wrong type.
    #[error("Invalid parameter type for '{key}', expected: {expected}")]
    Type {
        /// The parameter.
        key: String,
        /// QAPI's name of the type wanted (`string`, `boolean`, `object`).
        expected: &'static str,
    },
    /// A dotted-key boolean that is not `on`/`off` (QEMU's keyval words).
    #[error("Parameter '{0}' expects 'on' or 'off'")]
    NotBool(String),
    /// A dotted key used both as a value and as an object (`file=f0,file.driver=..`).
    #[error("Parameters '{0}.*' used inconsistently")]
    Inconsistent(String),
    /// A dotted key with an empty part (`.x`, `a..b`).
    #[error("Invalid parameter '{0}'")]
    InvalidKey(String),
    /// `blockdev-add` without `node-name`.
    #[error("'node-name' must be specified for the root node")]
    RootNodeName,
    /// A node name that is not an identifier (a letter, then letters, digits, `-._`).
    #[error("Invalid node-name: '{0}'")]
    InvalidNodeName(String),
    /// A node name already taken.
    #[error("Duplicate nodes with node-name='{0}'")]
    DuplicateNode(String),
    /// A node name that is a drive's (BlockBackend's) name.
    #[error("node-name={0} is conflicting with a device id")]
    NodeNameIsDrive(String),
    /// A drive id that is a node's name.
    #[error("Device name '{0}' conflicts with an existing node name")]
    DriveNameIsNode(String),
    /// A drive id already taken.
    #[error("Duplicate ID '{0}' for drive")]
    DuplicateDrive(String),
    /// A reference (a child, a device's `drive=`) to nothing.
    #[error("Cannot find device='{0}' nor node-name='{0}'")]
    NotFound(String),
    /// `block_resize` naming neither an existing drive nor an existing node (QEMU's
    /// `bdrv_lookup_bs`; an argument not given is empty).
    #[error("Cannot find device='{device}' nor node-name='{node_name}'")]
    NotFoundEither {
        /// The `device` argument.
        device: String,
        /// The `node-name` argument.
        node_name: String,
    },
    /// `block_resize` to a negative size.
    #[error("Parameter 'size' expects a >0 size")]
    NegativeSize,
    /// `block_resize` of a read-only node.
    #[error("Image is read-only")]
    ReadOnly,
    /// `block_resize` the image refused.
    #[error("{0}")]
    Resize(String),
    /// `blockdev-del` of a node that does not exist.
    #[error("Failed to find node with node-name='{0}'")]
    NoSuchNode(String),
    /// `blockdev-del` of a node a device, export or drive uses.
    #[error("Node {0} is in use")]
    NodeInUse(String),
    /// `blockdev-del` of a node another node uses as its child.
    #[error("Block device {0} is in use")]
    ChildInUse(String),
    /// `blockdev-del` of a node the monitor did not create (an inline child, a
    /// `-drive`'s anonymous node).
    #[error("Node {0} is not owned by the monitor")]
    NotOwned(String),
    /// A drive (`-drive id=..`) a device already uses.
    #[error("Drive '{0}' is already in use by another device")]
    DriveInUse(String),
    /// The image cannot be opened.
    #[error("Could not open '{path}': {reason}")]
    Open {
        /// The `filename`.
        path: String,
        /// Why (the OS's words where it has them).
        reason: String,
    },
    /// An option value QEMU has but this implementation does not (said, never ignored).
    #[error("{0}")]
    Unsupported(String),
    /// A `-drive` key with a bad value (the messages of `-drive`'s checks).
    #[error("{0}")]
    Drive(String),
}

/// `Result` with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Every block error is a `GenericError` in QEMU.
impl From<Error> for qmp::QmpError {
    fn from(e: Error) -> qmp::QmpError {
        qmp::QmpError::generic(e.to_string())
    }
}

/// The OS's words for an open failure, without Rust's `(os error N)` suffix.
pub(crate) fn open_error(path: &std::path::Path, e: &block_dma::OpenError) -> Error {
    use block_dma::OpenError;
    let reason = match e {
        OpenError::NotFound { .. } => "No such file or directory".to_owned(),
        OpenError::Open { source, .. } | OpenError::Os { source, .. } => {
            let text = source.to_string();
            match text.find(" (os error") {
                Some(cut) => text[..cut].to_owned(),
                None => text,
            }
        }
        other => other.to_string(),
    };
    Error::Open {
        path: path.display().to_string(),
        reason,
    }
}
