//! The one error type: what was wrong, with which option and which key.

/// What was wrong with an option string or one of its values.
///
/// Every message starts with the option it is about (`--blockdev: ...`), so it can be
/// printed as is; [`Error::reason`] gives the message without it, for callers that name
/// the option their own way.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An item with `=` but nothing before it (`=x`).
    #[error("{option}: empty key in '{item}'")]
    EmptyKey {
        /// The option (`-drive`).
        option: String,
        /// The item as written, after unescaping.
        item: String,
    },
    /// An empty item where a key is needed (`a=1,` ends with one).
    #[error("{option}: empty item")]
    EmptyItem {
        /// The option.
        option: String,
    },
    /// A bare word where the strict grammar ([`Grammar::keyval`](crate::Grammar::keyval))
    /// wants `key=value`.
    #[error("{option}: expected key=value, got '{item}'")]
    MissingEquals {
        /// The option.
        option: String,
        /// The item as written, after unescaping.
        item: String,
    },
    /// A key given twice where the grammar refuses repeats.
    #[error("{option}: parameter '{key}' given twice")]
    Duplicate {
        /// The option.
        option: String,
        /// The repeated key.
        key: String,
    },
    /// A required key that is absent.
    #[error("{option}: parameter '{key}' is missing")]
    Missing {
        /// The option.
        option: String,
        /// The missing key.
        key: String,
    },
    /// A key nobody asked for ([`Opts::finish`](crate::Opts::finish)).
    #[error("{option}: invalid parameter '{key}'")]
    Unknown {
        /// The option.
        option: String,
        /// The first key left unused.
        key: String,
    },
    /// A value that is not one of QEMU's boolean spellings.
    #[error("{option}: parameter '{key}' expects 'on' or 'off', not '{value}'")]
    NotBool {
        /// The option.
        option: String,
        /// The key.
        key: String,
        /// The value as given.
        value: String,
    },
    /// A value that is not a number, or not one that fits the type asked for.
    #[error("{option}: parameter '{key}' expects a number, not '{value}'")]
    NotNumber {
        /// The option.
        option: String,
        /// The key.
        key: String,
        /// The value as given.
        value: String,
    },
    /// A value that is not a size (`512M`, `1.5G`).
    #[error("{option}: parameter '{key}' expects a size, not '{value}'")]
    NotSize {
        /// The option.
        option: String,
        /// The key.
        key: String,
        /// The value as given.
        value: String,
    },
    /// A value the caller refused for its own reasons ([`Opts::invalid`](crate::Opts::invalid)).
    #[error("{option}: {message}")]
    Invalid {
        /// The option.
        option: String,
        /// What was wrong.
        message: String,
    },
}

impl Error {
    /// The option the error is about (`-drive`, `--export`).
    pub fn option(&self) -> &str {
        match self {
            Error::EmptyKey { option, .. }
            | Error::EmptyItem { option }
            | Error::MissingEquals { option, .. }
            | Error::Duplicate { option, .. }
            | Error::Missing { option, .. }
            | Error::Unknown { option, .. }
            | Error::NotBool { option, .. }
            | Error::NotNumber { option, .. }
            | Error::NotSize { option, .. }
            | Error::Invalid { option, .. } => option,
        }
    }

    /// The message without the leading `OPTION: `.
    pub fn reason(&self) -> String {
        let message = self.to_string();
        let prefix = format!("{}: ", self.option());
        match message.strip_prefix(&prefix) {
            Some(reason) => reason.to_owned(),
            None => message,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_option_and_the_key() {
        let e = Error::Missing {
            option: "--blockdev".into(),
            key: "filename".into(),
        };
        assert_eq!(e.to_string(), "--blockdev: parameter 'filename' is missing");
        assert_eq!(e.option(), "--blockdev");
        assert_eq!(e.reason(), "parameter 'filename' is missing");
    }
}
