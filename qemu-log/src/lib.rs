//! Diagnostics for a QEMU-style program: a `tracing` subscriber configured in the spirit
//! of QEMU's `-d` (what to log) and `-D` (where), and from `VMM_LOG`.
//!
//! Library crates report through the `tracing` macros; only a binary installs a
//! subscriber, with [`init`]. Its lines go to **stderr** (or the `-D` file), never to
//! stdout: in a VMM stdout is the guest's serial console and the QMP socket is the
//! monitor's, and neither may carry a log line.
//!
//! A line reads like QEMU's `error_report`/`warn_report`/`info_report`:
//!
//! ```text
//! vmm-bin: COM1: writing stdout failed (EPIPE); guest output is discarded     (error)
//! vmm-bin: warning: only the first -qmp is served                             (warn)
//! vmm-bin: info: ...                                                          (info)
//! vmm-bin: debug: qmp::client: qmp: client connected clients=1               (debug)
//! ```
//!
//! The program name (`vmm-bin`, `vmm-bin storage-daemon`) comes first, then the level
//! word (none for errors, as QEMU), then, for `debug`/`trace`, the event's target (the
//! module path, which is what a filter names), then the message and its fields as
//! `key=value`. No timestamps, no colours.
//!
//! What is logged: warnings and errors always reach stderr (a filter cannot hide them,
//! as nothing hides QEMU's `warn_report`). The filter (`VMM_LOG`, then each `-d` in
//! order, later directives overriding earlier ones for the same target) adds more:
//! `-d debug`, `-d qmp=debug,vhost_user_export=trace`, `-d trace:virtio_core`. With
//! `-D FILE` the filtered log goes to FILE (created or truncated, as QEMU's `-D`) and
//! stderr keeps only warnings and errors.
//!
//! ```
//! use qemu_log::LogConfig;
//!
//! // -d qmp=debug,trace:virtio_core -D /tmp/vmm.log
//! let mut config = LogConfig::default();
//! config.add_items("qmp=debug,trace:virtio_core")?;
//! config.file = Some("/tmp/vmm.log".into());
//! assert_eq!(config.directives, ["qmp=debug", "virtio_core=trace"]);
//! assert!(config.add_items("loud").is_err());
//! // A binary then calls `qemu_log::init("my-vmm", &config)` once, before its threads.
//! # Ok::<(), qemu_log::LogError>(())
//! ```

#![deny(missing_docs)]

pub mod boot_time;

use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{Directive, EnvFilter, FilterExt, LevelFilter};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// The environment variable with filter directives (`VMM_LOG=debug`,
/// `VMM_LOG=qmp=debug,virtio_core=trace`), read before the command line's `-d`.
pub const ENV: &str = "VMM_LOG";

/// What is logged when neither `VMM_LOG` nor `-d` says otherwise.
pub const DEFAULT_FILTER: &str = "warn";

/// The text of `-d help`.
pub const HELP: &str = "\
Log items (comma separated), for -d and VMM_LOG:
LEVEL           log every event at LEVEL or above: error, warn, info, debug, trace
TARGET=LEVEL    events of TARGET (a crate or module path, e.g. qmp, virtio_core::runner,
                vhost_user_export) at LEVEL or above
trace:PATTERN   trace events whose target starts with PATTERN (a trailing * is allowed)
off             nothing beyond warnings and errors (which are always printed)
trace:boot_time when each start-up phase ended (CLOCK_MONOTONIC seconds)

-D FILE writes the log to FILE instead of stderr (warnings and errors stay on stderr).
Later items override earlier ones for the same target; VMM_LOG comes before -d.
";

/// A bad `-d` item, or a `-D` file that cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An item that is neither a level, `TARGET=LEVEL`, nor `trace:PATTERN`.
    #[error("unknown log item '{0}' (see -d help)")]
    UnknownItem(String),
    /// A directive `tracing-subscriber` does not accept.
    #[error("invalid log item '{item}': {reason}")]
    Invalid {
        /// The item as given.
        item: String,
        /// What was wrong.
        reason: String,
    },
    /// The `-D` file.
    #[error("Error opening logfile {}: {source}", .path.display())]
    File {
        /// The path given to `-D`.
        path: PathBuf,
        /// Why it could not be opened.
        source: io::Error,
    },
    /// A subscriber was installed already (a second [`init`] in one process).
    #[error("a log subscriber is installed already")]
    AlreadyInstalled,
}

/// The log settings of the command line: `-d ITEMS` (any number) and `-D FILE`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogConfig {
    /// Filter directives from `-d`, in order, already translated
    /// (`trace:virtio_core` is `virtio_core=trace`).
    pub directives: Vec<String>,
    /// `-D FILE`.
    pub file: Option<PathBuf>,
    /// `-d help` was given: print [`HELP`] and exit.
    pub help: bool,
}

impl LogConfig {
    /// Adds the items of one `-d` argument (comma separated).
    ///
    /// # Errors
    ///
    /// An item that is not a level, `TARGET=LEVEL` or `trace:PATTERN`.
    pub fn add_items(&mut self, arg: &str) -> Result<(), LogError> {
        for item in arg.split(',').filter(|i| !i.is_empty()) {
            if item == "help" || item == "trace:help" {
                self.help = true;
                continue;
            }
            self.directives.push(directive(item)?);
        }
        Ok(())
    }
}

/// One `-d` item as a filter directive.
fn directive(item: &str) -> Result<String, LogError> {
    let text = if let Some(pattern) = item.strip_prefix("trace:") {
        let target = pattern.strip_suffix('*').unwrap_or(pattern);
        if target.is_empty() || target.contains('*') {
            return Err(LogError::Invalid {
                item: item.to_owned(),
                reason: "the pattern is a target prefix (with at most a trailing *)".into(),
            });
        }
        format!("{target}=trace")
    } else if item.contains('=') || LevelFilter::from_str(item).is_ok() {
        item.to_owned()
    } else {
        // A bare word would be a target at every level: almost surely a QEMU item
        // (`int`, `guest_errors`) we do not have, which must not be accepted and ignored.
        return Err(LogError::UnknownItem(item.to_owned()));
    };
    Directive::from_str(&text).map_err(|e| LogError::Invalid {
        item: item.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(text)
}

/// The filter: [`DEFAULT_FILTER`], then `env` (the value of [`ENV`]), then the
/// command line's directives; for a target named twice the later directive wins.
/// Items of `env` that do not parse are returned (to be reported once logging works).
fn filter_directives(env: Option<&str>, config: &LogConfig) -> (Vec<String>, Vec<LogError>) {
    let mut all = vec![DEFAULT_FILTER.to_owned()];
    let mut bad = Vec::new();
    for item in env.unwrap_or_default().split(',').filter(|i| !i.is_empty()) {
        match directive(item) {
            Ok(d) => all.push(d),
            Err(e) => bad.push(e),
        }
    }
    all.extend(config.directives.iter().cloned());
    // `info,debug`: the key of a directive is what precedes its level.
    let key = |d: &str| d.rsplit_once('=').map(|(k, _)| k.to_owned());
    let mut kept: Vec<String> = Vec::new();
    for d in all {
        kept.retain(|k| key(k) != key(&d));
        kept.push(d);
    }
    (kept, bad)
}

fn env_filter(directives: &[String]) -> EnvFilter {
    let mut filter = EnvFilter::new("");
    for d in directives {
        // Checked by `directive` already.
        if let Ok(d) = Directive::from_str(d) {
            filter = filter.add_directive(d);
        }
    }
    filter
}

/// Formats an event as `PROGRAM: [LEVEL: ][TARGET: ]MESSAGE [key=value...]`.
struct QemuStyle {
    program: String,
}

impl<S, N> FormatEvent<S, N> for QemuStyle
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        write!(writer, "{}: ", self.program)?;
        match *meta.level() {
            Level::ERROR => {}
            Level::WARN => writer.write_str("warning: ")?,
            Level::INFO => writer.write_str("info: ")?,
            Level::DEBUG => write!(writer, "debug: {}: ", meta.target())?,
            Level::TRACE => write!(writer, "trace: {}: ", meta.target())?,
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// The subscriber for `program` with `config`'s filter: the log to `stderr`, or, when
/// `file` is given, the log to `file` and warnings and errors to `stderr`.
fn subscriber<E, F>(
    program: &str,
    directives: &[String],
    stderr: E,
    file: Option<F>,
) -> impl Subscriber + Send + Sync + 'static
where
    E: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    F: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let format = || QemuStyle {
        program: program.to_owned(),
    };
    let always = LevelFilter::WARN;
    let (stderr_filter, file_layer) = match file {
        None => (FilterExt::boxed(env_filter(directives).or(always)), None),
        Some(file) => (
            FilterExt::boxed(always),
            Some(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .event_format(format())
                    .with_writer(file)
                    .with_filter(env_filter(directives).or(always)),
            ),
        ),
    };
    let stderr_layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .event_format(format())
        .with_writer(stderr)
        .with_filter(stderr_filter);
    tracing_subscriber::registry()
        .with(stderr_layer)
        .with(file_layer)
}

/// Installs the process's subscriber: `program` prefixes every line (`vmm-bin`,
/// `vmm-bin storage-daemon`); the filter is [`DEFAULT_FILTER`], then `$VMM_LOG`, then
/// `config`'s `-d` directives; `-D` sends the log to its file. Bad items in `VMM_LOG`
/// are reported as warnings and skipped.
///
/// # Errors
///
/// [`LogError::File`] when the `-D` file cannot be created (logging then goes to
/// stderr, so the caller can report it); [`LogError::AlreadyInstalled`].
pub fn init(program: &str, config: &LogConfig) -> Result<(), LogError> {
    let env = std::env::var(ENV).ok();
    let (directives, bad_env) = filter_directives(env.as_deref(), config);
    let opened = config.file.as_deref().map(open_log);
    let (file, failed) = match opened {
        Some(Ok(f)) => (Some(f), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    let installed =
        tracing::subscriber::set_global_default(subscriber(program, &directives, io::stderr, file));
    installed.map_err(|_| LogError::AlreadyInstalled)?;
    for e in bad_env {
        tracing::warn!("{ENV}: {e}; ignored");
    }
    failed.map_or(Ok(()), Err)
}

/// Creates (or truncates) the `-D` file.
fn open_log(path: &Path) -> Result<Mutex<File>, LogError> {
    File::create(path)
        .map(Mutex::new)
        .map_err(|source| LogError::File {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;

    /// A writer that keeps what it gets.
    #[derive(Clone, Default)]
    pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Captured {
        type Writer = Captured;
        fn make_writer(&'w self) -> Captured {
            self.clone()
        }
    }

    impl Captured {
        pub(crate) fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// Emits one event of each level (and one of the `qmp` target), under a
    /// subscriber built from `env` and the `-d` arguments, with or without a `-D`
    /// file: (stderr, file).
    fn run(env: Option<&str>, d: &[&str], to_file: bool) -> (String, String) {
        let mut config = LogConfig::default();
        for arg in d {
            config.add_items(arg).unwrap();
        }
        let (directives, bad) = filter_directives(env, &config);
        assert!(bad.is_empty());
        let (stderr, file) = (Captured::default(), Captured::default());
        let sub = subscriber("vmm-bin", &directives, stderr.clone(), {
            to_file.then(|| file.clone())
        });
        tracing::subscriber::with_default(sub, || {
            tracing::error!("e {}", 1);
            tracing::warn!("w");
            tracing::info!("i");
            tracing::debug!(x = 3, "d");
            tracing::trace!("t");
            tracing::debug!(target: "qmp::client", "q");
        });
        (stderr.text(), file.text())
    }

    const ME: &str = module_path!();

    #[test]
    fn by_default_warnings_and_errors_in_qemus_words() {
        let (stderr, file) = run(None, &[], false);
        assert_eq!(stderr, "vmm-bin: e 1\nvmm-bin: warning: w\n");
        assert_eq!(file, "");
    }

    #[test]
    fn d_adds_levels_and_targets() {
        let (stderr, _) = run(None, &["debug"], false);
        assert_eq!(
            stderr,
            format!(
                "vmm-bin: e 1\nvmm-bin: warning: w\nvmm-bin: info: i\n\
                 vmm-bin: debug: {ME}: d x=3\nvmm-bin: debug: qmp::client: q\n"
            )
        );
        let (stderr, _) = run(None, &["qmp=debug"], false);
        assert!(
            stderr.ends_with("vmm-bin: debug: qmp::client: q\n"),
            "{stderr}"
        );
        assert!(!stderr.contains("info:"), "{stderr}");
        let (stderr, _) = run(None, &["trace:qmp*"], false);
        assert!(
            stderr.contains(": q\n") && !stderr.contains(": d "),
            "{stderr}"
        );
        // Errors and warnings cannot be filtered away.
        let (stderr, _) = run(None, &["off"], false);
        assert_eq!(stderr, "vmm-bin: e 1\nvmm-bin: warning: w\n");
    }

    #[test]
    fn the_command_line_overrides_the_environment() {
        let (stderr, _) = run(Some("trace"), &[], false);
        assert!(stderr.contains(": t\n"), "{stderr}");
        let (stderr, _) = run(Some("trace"), &["info"], false);
        assert!(
            stderr.contains("info: i") && !stderr.contains("debug:"),
            "{stderr}"
        );
        let (stderr, _) = run(Some("qmp=off"), &["debug,qmp=debug"], false);
        assert!(stderr.contains("qmp::client: q"), "{stderr}");
    }

    #[test]
    fn d_file_takes_the_log_and_stderr_keeps_warnings() {
        let (stderr, file) = run(None, &["debug"], true);
        assert_eq!(stderr, "vmm-bin: e 1\nvmm-bin: warning: w\n");
        assert!(
            file.starts_with("vmm-bin: e 1\nvmm-bin: warning: w\n"),
            "{file}"
        );
        assert!(
            file.contains(&format!("vmm-bin: debug: {ME}: d x=3\n")),
            "{file}"
        );
    }

    #[test]
    fn items_are_checked() {
        let mut c = LogConfig::default();
        assert!(matches!(c.add_items("int"), Err(LogError::UnknownItem(i)) if i == "int"));
        assert!(c.add_items("qmp=loud").is_err());
        assert!(c.add_items("trace:").is_err());
        assert!(c.add_items("trace:a*b").is_err());
        c.add_items("debug,trace:virtio_core*,help").unwrap();
        assert_eq!(c.directives, ["debug", "virtio_core=trace"]);
        assert!(c.help);
        assert_eq!(
            LogConfig::default()
                .add_items("int")
                .unwrap_err()
                .to_string(),
            "unknown log item 'int' (see -d help)"
        );
    }

    #[test]
    fn bad_environment_items_are_reported_not_fatal() {
        let (directives, bad) = filter_directives(Some("debug,bogus"), &LogConfig::default());
        assert_eq!(directives, ["debug"]);
        assert_eq!(bad.len(), 1);
    }
}

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
