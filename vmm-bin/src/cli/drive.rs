//! `-drive`: the grammar and its checks live in the block-node crate
//! ([`block_node::drive`]); this puts its errors in the command line's form.

use super::{DriveConfig, Error, Result, invalid};

/// Parses one `-drive`; `earlier` are the drives before it (for its placement).
pub(super) fn parse(option: &str, arg: &str, earlier: &[DriveConfig]) -> Result<DriveConfig> {
    block_node::drive::parse(option, arg, earlier).map_err(|e| match e {
        block_node::Error::Syntax(e) => Error::from(e),
        e => invalid(option, e.to_string()),
    })
}
