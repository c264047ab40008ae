//! QEMU's `-object iothread,id=ID[,poll-max-ns=..][,poll-grow=..][,poll-shrink=..]`
//! (qemu-storage-daemon's `--object` too): an [`IoThread`] started with the polling
//! properties of the option. The VMM and the storage daemon build theirs here, so the
//! two read the properties, and word their errors, one way.

use std::io;

use crate::context::PollParams;
use crate::iothread::IoThread;

/// Why an `iothread` object could not be created. The messages name the option and the
/// object as the user wrote them (`-object iothread,id=io0: ...`), in QEMU's words.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IothreadObjectError {
    /// A polling property that is not an unsigned number.
    #[error("{option} iothread,id={id}: Parameter '{key}' expects uint64")]
    NotANumber {
        /// The option (`-object`, `--object`).
        option: String,
        /// The object's `id`.
        id: String,
        /// The property.
        key: &'static str,
    },
    /// The thread or its context could not start.
    #[error("{option} iothread,id={id}: {source}")]
    Spawn {
        /// The option (`-object`, `--object`).
        option: String,
        /// The object's `id`.
        id: String,
        /// What failed.
        #[source]
        source: io::Error,
    },
}

/// The polling properties an `iothread` object takes, in the order of the
/// [`PollParams`] fields they set (`max_ns`, `grow`, `shrink`).
const PROPERTIES: [&str; 3] = ["poll-max-ns", "poll-grow", "poll-shrink"];

impl IoThread {
    /// Starts the iothread of `OPTION iothread,id=ID` (`option` is `-object` or
    /// `--object`, for errors) with QEMU's polling properties read through `prop`:
    /// `poll-max-ns`, `poll-grow`, `poll-shrink`; absent ones keep
    /// [`PollParams::IOTHREAD`]'s. The thread is named `id`.
    ///
    /// # Errors
    ///
    /// A property that is not a number (nothing is started); a thread that cannot start.
    pub fn spawn_with_properties(
        option: &str,
        id: &str,
        prop: impl Fn(&str) -> Option<String>,
    ) -> Result<IoThread, IothreadObjectError> {
        let mut poll = PollParams::IOTHREAD;
        let fields = [&mut poll.max_ns, &mut poll.grow, &mut poll.shrink];
        for (key, field) in PROPERTIES.into_iter().zip(fields) {
            if let Some(v) = prop(key) {
                *field = v.parse().map_err(|_| IothreadObjectError::NotANumber {
                    option: option.to_owned(),
                    id: id.to_owned(),
                    key,
                })?;
            }
        }
        let thread = IoThread::spawn(id).map_err(|source| IothreadObjectError::Spawn {
            option: option.to_owned(),
            id: id.to_owned(),
            source,
        })?;
        if poll != PollParams::IOTHREAD {
            thread.set_poll_params(poll);
        }
        Ok(thread)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_set_the_polling_parameters() {
        let props = |k: &str| match k {
            "poll-max-ns" => Some("0".to_owned()),
            "poll-shrink" => Some("4".to_owned()),
            _ => None,
        };
        let t = IoThread::spawn_with_properties("-object", "io-props", props).unwrap();
        assert_eq!(t.name(), "io-props");
        let want = PollParams {
            max_ns: 0,
            grow: PollParams::IOTHREAD.grow,
            shrink: 4,
        };
        assert_eq!(t.poll_params(), want);
        let t = IoThread::spawn_with_properties("--object", "io-default", |_| None).unwrap();
        assert_eq!(t.poll_params(), PollParams::IOTHREAD);
    }

    #[test]
    fn a_bad_property_is_named_in_qemus_words() {
        let props = |k: &str| (k == "poll-grow").then(|| "-1".to_owned());
        let err = IoThread::spawn_with_properties("-object", "io0", props).unwrap_err();
        assert_eq!(
            err.to_string(),
            "-object iothread,id=io0: Parameter 'poll-grow' expects uint64"
        );
    }
}
